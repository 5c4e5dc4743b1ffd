import numpy as np
import pytest
import scipy.sparse as sp

from sparsegauss.cholesky import SparseCholesky
from sparsegauss.exceptions import NotPositiveDefiniteError
from sparsegauss.grid import GridParameterization
from sparsegauss.normalization import LOG_2PI, GridNormalizer
from conftest import SHAPES, dense_precision, random_spd_theta


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stencil", [4, 8])
@pytest.mark.parametrize("mode", ["simplicial", "supernodal"])
def test_logdet_solve_and_selected_inverse_match_numpy(shape, stencil, mode, rng):
    grid = GridParameterization(shape, stencil)
    theta = random_spd_theta(grid, rng)
    dense = dense_precision(grid, theta)
    factor = SparseCholesky(grid.pattern, mode=mode).factorize(grid.precision(theta))

    np.testing.assert_allclose(factor.logdet(), np.linalg.slogdet(dense)[1], rtol=1e-10)
    b = rng.normal(size=(grid.n_pixels, 3))
    np.testing.assert_allclose(factor.solve(b), np.linalg.solve(dense, b), rtol=1e-8, atol=1e-10)

    rows, cols = grid.pair_indices()
    inverse = np.linalg.inv(dense)
    np.testing.assert_allclose(factor.selected_inverse(rows, cols), inverse[rows, cols],
                               rtol=1e-9, atol=1e-12)


def test_selected_inverse_on_a_large_grid_against_solves(rng):
    """A 40x40 8-neighbour grid (supernodal factor with fill): spot-check columns by solves."""
    grid = GridParameterization((40, 40), 8)
    fields = np.zeros((grid.n_terms, grid.n_pixels))
    fields[0] = 4.0 + rng.uniform(0, 1, grid.n_pixels)
    fields[1:] = rng.uniform(-0.45, 0.45, (grid.n_terms - 1, grid.n_pixels))
    theta = grid.project(fields * grid.valid)
    analysis = SparseCholesky(grid.pattern, mode="supernodal")
    factor = analysis.factorize(grid.precision(theta))
    rows, cols = grid.pair_indices()
    values = factor.selected_inverse(rows, cols)
    picked = rng.choice(grid.n_pixels, 25, replace=False)
    columns = factor.solve(np.eye(grid.n_pixels)[:, picked])
    for j, col in enumerate(picked):
        mask = cols == col
        np.testing.assert_allclose(values[mask], columns[rows[mask], j], rtol=1e-9)


@pytest.mark.parametrize("mode", ["simplicial", "supernodal", "auto"])
def test_indefinite_matrix_raises_with_the_failing_pixel(mode):
    grid = GridParameterization((4, 5), 4)
    fields = np.zeros((grid.n_terms, grid.n_pixels))
    fields[0] = 2.0
    fields[0, 13] = -1.0       # one negative diagonal entry: indefinite
    theta = grid.project(fields)
    analysis = SparseCholesky(grid.pattern, mode=mode)
    with pytest.raises(NotPositiveDefiniteError, match="not positive definite") as info:
        analysis.factorize(grid.precision(theta))
    assert info.value.column == 13
    assert isinstance(info.value, np.linalg.LinAlgError)
    # The analysis stays usable after a failure.
    fields[0, 13] = 2.0
    assert np.isfinite(analysis.factorize(grid.precision(grid.project(fields))).logdet())


def test_singular_and_nonfinite_matrices_raise():
    grid = GridParameterization((3, 3), 4)
    analysis = SparseCholesky(grid.pattern)
    with pytest.raises(NotPositiveDefiniteError):
        analysis.factorize(grid.precision(np.zeros(grid.n_params)))
    theta = np.ones(grid.n_params)
    theta[0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        analysis.factorize(grid.precision(theta))


def test_sample_covariance_converges_to_the_inverse(rng):
    grid = GridParameterization((3, 3), 8)
    theta = random_spd_theta(grid, rng, margin=0.5)
    inverse = np.linalg.inv(dense_precision(grid, theta))
    n = 200_000
    samples = SparseCholesky(grid.pattern).factorize(grid.precision(theta)).sample(n, rng)
    empirical = samples.T @ samples / n
    # Standard error of a Gaussian second moment: √((Σ_ii Σ_jj + Σ_ij²) / n); 5 s.e. over
    # 45 distinct entries fails by chance with probability < 3e-5.
    se = np.sqrt((np.outer(np.diag(inverse), np.diag(inverse)) + inverse ** 2) / n)
    assert np.all(np.abs(empirical - inverse) < 5 * se)
    assert np.all(np.abs(samples.mean(axis=0)) < 5 * np.sqrt(np.diag(inverse) / n))


def test_samples_are_reproducible(rng):
    grid = GridParameterization((4, 4), 4)
    factor = SparseCholesky(grid.pattern).factorize(grid.precision(random_spd_theta(grid, rng)))
    np.testing.assert_array_equal(factor.sample(5, 7), factor.sample(5, 7))


@pytest.mark.parametrize("stencil", [4, 8])
@pytest.mark.parametrize("tying", ["untied", "tied"])
def test_log_partition_and_gradient(stencil, tying, rng):
    grid = GridParameterization((4, 3), stencil, tying)
    theta = random_spd_theta(grid, rng)
    normalizer = GridNormalizer(grid)
    log_z, grad, _ = normalizer.value_and_grad(theta)
    dense = dense_precision(grid, theta)
    np.testing.assert_allclose(
        log_z, 0.5 * grid.n_pixels * LOG_2PI - 0.5 * np.linalg.slogdet(dense)[1], rtol=1e-12)
    step = 1e-6
    numeric = np.array([(normalizer.log_partition(theta + step * e)
                         - normalizer.log_partition(theta - step * e)) / (2 * step)
                        for e in np.eye(grid.n_params)])
    # Central differences: error O(step²·|f'''|) plus rounding O(eps·|f|/step) ≈ 1e-9.
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7)


def test_non_square_pattern_is_rejected():
    with pytest.raises(ValueError, match="square"):
        SparseCholesky(sp.csc_matrix(np.ones((2, 3))))


@pytest.mark.parametrize("shape, stencil", [((7, 9), 4), ((12, 10), 8), ((30, 30), 4)])
def test_supernodal_and_scalar_takahashi_agree_with_dense(shape, stencil, rng):
    """Both kernels on a supernodal factor (relaxed supernodes with explicit zeros)."""
    from sparsegauss import _kernels
    grid = GridParameterization(shape, stencil)
    theta = random_spd_theta(grid, rng) if grid.n_pixels <= 200 else None
    if theta is None:
        fields = np.zeros((grid.n_terms, grid.n_pixels))
        fields[0] = 4.0 + rng.uniform(0, 1, grid.n_pixels)
        fields[1:] = rng.uniform(-0.9, 0.9, (grid.n_terms - 1, grid.n_pixels))
        theta = grid.project(fields * grid.valid)
    factor = SparseCholesky(grid.pattern, mode="supernodal").factorize(grid.precision(theta))
    lower = factor.lower()
    starts = _kernels.supernode_starts(lower.indptr, lower.indices)
    assert starts[0] == 0 and starts[-1] == grid.n_pixels and starts.size - 1 < grid.n_pixels
    scalar = _kernels.takahashi_inverse(lower.indptr, lower.indices, lower.data)
    blocked = _kernels.takahashi_supernodal(lower.indptr, lower.indices, lower.data, starts)
    np.testing.assert_allclose(blocked, scalar, rtol=1e-10, atol=1e-14)
    # And against the dense inverse on the whole filled pattern of L.
    perm = factor._analysis.permutation
    dense_inv = np.linalg.inv(grid.precision(theta).toarray())[np.ix_(perm, perm)]
    coo = lower.tocoo()
    np.testing.assert_allclose(blocked, dense_inv[coo.row, coo.col], rtol=1e-9, atol=1e-13)
