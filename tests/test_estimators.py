"""Objectives of the unnormalized estimators against finite differences and dense NumPy."""

import numpy as np
import pytest

from sparsegauss.estimators.cd import cd_gradient
from sparsegauss._kernels import antithetic_pairs
from sparsegauss.estimators._driver import Batches, OptimizerOptions, run
from sparsegauss.estimators.cnce import PerturbationPool, cnce_loss_grad
from sparsegauss.estimators.nce import nce_loss_grad
from sparsegauss.estimators.rnce import rnce_loss_grad
from sparsegauss.estimators.score_matching import (fit_score_matching, score_matching_system,
                                                   sm_loss_grad)
from sparsegauss.exceptions import SparseGaussError
from sparsegauss.grid import GridParameterization
from sparsegauss.models import GridGaussianEnergy
from sparsegauss.models.grid_gaussian import colouring, gibbs_sample
from conftest import dense_precision, random_spd_theta

GRIDS = [(stencil, tying) for stencil in (4, 8) for tying in ("untied", "tied")]


def central_differences(fun, x, step=1e-6):
    return np.array([(fun(x + step * e)[0] - fun(x - step * e)[0]) / (2 * step)
                     for e in np.eye(len(x))])


def check_gradient(fun, x):
    """Central differences: truncation O(step²) + rounding O(eps·|f|/step) ≈ 1e-9 here."""
    loss, grad = fun(x)
    np.testing.assert_allclose(grad, central_differences(fun, x), rtol=1e-5, atol=1e-7)


@pytest.fixture
def problem(rng, request):
    stencil, tying = request.param
    grid = GridParameterization((3, 4), stencil, tying)
    theta = random_spd_theta(grid, rng, margin=0.4)
    data = rng.normal(size=(40, grid.n_pixels))
    noise = rng.normal(size=(60, grid.n_pixels)) * 1.2
    return grid, theta, data, noise


@pytest.mark.parametrize("problem", GRIDS, indirect=True)
def test_nce_learned_gradient(problem, rng):
    grid, theta, data, noise = problem
    log_pn = lambda Y: -0.5 * np.sum(Y ** 2, axis=1) / 1.44   # noqa: E731
    fun = lambda p: nce_loss_grad(GridGaussianEnergy(grid), p, data, noise, log_pn(data), log_pn(noise))  # noqa: E731
    check_gradient(fun, np.append(theta, 3.0))


@pytest.mark.parametrize("problem", GRIDS, indirect=True)
def test_nce_exact_gradient_and_loss(problem):
    grid, theta, data, noise = problem
    model = GridGaussianEnergy(grid)
    log_pn_data, log_pn_noise = -0.3 * np.sum(data ** 2, 1), -0.3 * np.sum(noise ** 2, 1)

    def fun(t):
        return nce_loss_grad(model, t, data, noise, log_pn_data, log_pn_noise,
                             normalization="exact")

    check_gradient(fun, theta)
    # Dense oracle of the loss: logistic loss with ν = 60/40.
    dense = dense_precision(grid, theta)
    log_z = 0.5 * grid.n_pixels * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(dense)[1]
    g = lambda Y, lpn: -0.5 * np.einsum("ni,ij,nj->n", Y, dense, Y) - log_z - lpn - np.log(1.5)  # noqa: E731
    expected = (np.sum(np.log1p(np.exp(-g(data, log_pn_data))))
                + np.sum(np.log1p(np.exp(g(noise, log_pn_noise))))) / 40
    np.testing.assert_allclose(fun(theta)[0], expected, rtol=1e-12)


@pytest.mark.parametrize("problem", GRIDS, indirect=True)
def test_rnce_gradient(problem):
    grid, theta, data, noise = problem
    noise = noise[:40 * 1].repeat(3, axis=0) * 0.9      # K = 3 per data sample
    check_gradient(lambda t: rnce_loss_grad(GridGaussianEnergy(grid), t, data, noise, -0.2 * np.sum(data ** 2, 1),
                                            -0.2 * np.sum(noise ** 2, 1)), theta)


@pytest.mark.parametrize("problem", GRIDS, indirect=True)
def test_cnce_gradient(problem, rng):
    grid, theta, data, _ = problem
    perturbed = np.repeat(data, 4, axis=0) + 0.3 * rng.normal(size=(160, grid.n_pixels))
    check_gradient(lambda t: cnce_loss_grad(GridGaussianEnergy(grid), t, data, perturbed), theta)


def test_minibatches_cover_every_row_each_epoch_and_all_rows_is_the_data_itself(rng):
    batches = Batches(10, 4, rng)
    epoch = np.concatenate([batches.next() for _ in range(2)])
    assert len(set(epoch)) == 8 and all(np.all(np.diff(batches.next()) > 0) for _ in range(5))
    assert Batches(10, 10, rng).next() is None and Batches(10, 256, rng).next() is None
    X = rng.normal(size=(10, 3))
    seen = []

    def draw(rows):
        return (X if rows is None else X[rows]), ()

    def objective(theta, batch, _drawn):
        seen.append(batch)
        return float(theta @ theta), 2 * theta

    run(objective, draw, len(X), np.ones(2), np.ones(2),
        OptimizerOptions(optimizer="adam", tol=0.0, max_iter=3), rng)
    assert all(batch is X for batch in seen)      # no copy of the data per step


@pytest.mark.parametrize("k", [1, 2, 3, 4, 10])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_antithetic_pairs_match_a_loop(k, dtype, rng):
    """Row i*k + j is x_i + ε for the first ⌈k/2⌉ copies and x_i − ε for the rest, the ε
    read from the pool in turn from ``start``, wrapping around."""
    X, pool = rng.normal(size=(7, 5)).astype(dtype), rng.normal(size=(9, 5)).astype(dtype)
    out = np.full((7 * k, 5), np.nan, dtype=dtype)
    antithetic_pairs(X, pool, 4, out)
    half = (k + 1) // 2
    for i in range(7):
        for j in range(k):
            e = pool[(4 + i * half + j % half) % 9]
            np.testing.assert_array_equal(out[i * k + j], X[i] + e if j < half else X[i] - e)


def test_perturbation_pool_keeps_the_data_dtype_and_moves_on(rng):
    class Draws:                                      # ε ~ N(0, diag(1, 4, 9))
        def sample(self, n, random_state=None):
            return np.random.default_rng(random_state).normal(size=(n, 3)) * [1, 2, 3]

    pool = PerturbationPool(Draws(), 40_000, 3, rng, np.float32)
    X = np.zeros((2, 3), dtype=np.float32)
    first = pool.pairs(X, 4).copy()
    second = pool.pairs(X, 4)
    assert first.dtype == np.float32 and first.shape == (8, 3)
    assert not np.array_equal(first, second)            # the next pool rows
    np.testing.assert_array_equal(first[:2], -first[2:4])   # ± pairs
    np.testing.assert_allclose(pool.samples.std(axis=0), [1, 2, 3], rtol=0.02)


@pytest.mark.parametrize("problem", GRIDS, indirect=True)
def test_score_matching_gradient_form_and_system(problem):
    grid, theta, data, _ = problem
    check_gradient(lambda t: sm_loss_grad(GridGaussianEnergy(grid), t, data), theta)
    A, b = score_matching_system(data, grid)
    dense = dense_precision(grid, theta)
    S = data.T @ data / len(data)
    dense_loss = -np.trace(dense) + 0.5 * np.trace(dense @ S @ dense)
    np.testing.assert_allclose(0.5 * theta @ (A @ theta) - b @ theta, dense_loss, rtol=1e-12)
    lower, b_again = score_matching_system(data, grid, triangle="lower")
    np.testing.assert_array_equal(b_again, b)
    np.testing.assert_allclose(lower.toarray(), np.tril(A.toarray()), rtol=1e-14, atol=0)
    np.testing.assert_allclose(sm_loss_grad(GridGaussianEnergy(grid), theta, data)[0], dense_loss,
                               rtol=1e-12)


@pytest.mark.parametrize("problem", GRIDS, indirect=True)
def test_score_matching_closed_form_is_the_gradient_form_minimizer(problem):
    grid, _, data, _ = problem
    theta, loss = fit_score_matching(data, grid)
    loss_at, grad_at = sm_loss_grad(GridGaussianEnergy(grid), theta, data)
    np.testing.assert_allclose(grad_at, 0, atol=1e-9)
    np.testing.assert_allclose(loss_at, loss, rtol=1e-12)


@pytest.mark.parametrize("problem", GRIDS, indirect=True)
def test_cd_gradient_is_the_moment_difference(problem, rng):
    grid, theta, data, noise = problem
    loss, grad = cd_gradient(GridGaussianEnergy(grid), theta, data, noise)
    dense = dense_precision(grid, theta)
    log_z = 0.5 * grid.n_pixels * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(dense)[1]
    np.testing.assert_allclose(loss, log_z + 0.5 * np.mean(np.einsum("ni,ij,nj->n", data, dense, data)))
    # ½ tr((S_data − S_neg) ∂Λ/∂θ_j) by dense products.
    diff = data.T @ data / len(data) - noise.T @ noise / len(noise)
    expected = [0.5 * np.sum(diff * dense_precision(grid, e)) for e in np.eye(grid.n_params)]
    np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-12)
    # Without negatives: the model expectation, S_neg = Σ = Λ⁻¹ (dense inverse).
    loss_exact, grad_exact = cd_gradient(GridGaussianEnergy(grid), theta, data, None)
    np.testing.assert_allclose(loss_exact, loss)
    diff = data.T @ data / len(data) - np.linalg.inv(dense)
    expected = [0.5 * np.sum(diff * dense_precision(grid, e)) for e in np.eye(grid.n_params)]
    np.testing.assert_allclose(grad_exact, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("stencil", [4, 8])
def test_colouring_separates_neighbours(stencil):
    grid = GridParameterization((5, 6), stencil)
    colours, n_colours = colouring(grid)
    assert n_colours == (2 if stencil == 4 else 4)
    rows, cols = grid.pair_indices()
    off_diagonal = rows != cols
    assert np.all(colours[rows[off_diagonal]] != colours[cols[off_diagonal]])


@pytest.mark.parametrize("stencil", [4, 8])
def test_gibbs_sampler_has_the_model_covariance(stencil, rng):
    grid = GridParameterization((3, 3), stencil)
    theta = random_spd_theta(grid, rng, margin=0.6)
    inverse = np.linalg.inv(dense_precision(grid, theta))
    n = 100_000
    # Chains started far from equilibrium; 30 sweeps mix a 3x3 grid completely.
    samples = gibbs_sample(np.full((n, 9), 3.0), grid, theta, 30, rng)
    empirical = samples.T @ samples / n
    se = np.sqrt((np.outer(np.diag(inverse), np.diag(inverse)) + inverse ** 2) / n)
    assert np.all(np.abs(empirical - inverse) < 5 * se)


def test_score_matching_closed_form_says_when_its_system_is_singular(rng):
    """Too few samples, or a constant pixel, make A singular: a clear error from the
    Cholesky solve, not a solution full of rounding."""
    grid = GridParameterization((6, 5), 4)
    for data in (rng.normal(size=(2, 30)), np.where(np.arange(30) == 7, 0.0,
                                                     rng.normal(size=(50, 30)))):
        with pytest.raises(SparseGaussError, match="score-matching system is singular"):
            fit_score_matching(data, grid)



def _dense_likelihood(grid, theta, X):
    """``log Z − mean f`` of the grid Gaussian with dense NumPy (the oracle)."""
    precision = dense_precision(grid, theta)
    log_z = 0.5 * grid.n_pixels * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(precision)[1]
    return log_z + 0.5 * np.mean(np.einsum("ni,ij,nj->n", X, precision, X))


@pytest.mark.parametrize("problem", GRIDS, indirect=True)
def test_cd_expectation_step_is_the_exact_likelihood_and_its_gradient(problem, rng):
    """The expectation step (the data's moments beside the factorization and selected
    inversion, one kernel call) against dense NumPy and central differences, and equal
    to the generic two passes in turn; on a selection of rows, float32 rows and one
    Numba thread too."""
    import numba

    from sparsegauss.models.base import EnergyModel
    from sparsegauss.stats import RowSelection

    grid, theta, data, _ = problem
    model = GridGaussianEnergy(grid)
    loss, grad = cd_gradient(model, theta, data, None)
    np.testing.assert_allclose(loss, _dense_likelihood(grid, theta, data), rtol=1e-12)
    check_gradient(lambda t: cd_gradient(model, t, data, None), theta)
    rows = rng.choice(len(data), 17)
    threads = numba.get_num_threads()
    for batch, dense in ((RowSelection(data, rows), data[rows]),
                         (data.astype(np.float32), data.astype(np.float32))):
        for n_threads in {1, threads}:
            numba.set_num_threads(n_threads)
            try:
                fused = model.likelihood_terms(theta, batch)
            finally:
                numba.set_num_threads(threads)
            generic = EnergyModel.likelihood_terms(model, theta, dense)
            np.testing.assert_allclose(fused[0], generic[0], rtol=1e-12)
            np.testing.assert_allclose(fused[1], generic[1], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("problem", GRIDS[:1], indirect=True)
def test_cd_expectation_step_raises_outside_the_cone_and_recovers(problem):
    """An indefinite θ raises NotPositiveDefiniteError (the optimizer backs off); the
    next step at a valid θ is exact again (no stale factor or inverse is reused), and
    log_partition after it reuses the step's factor."""
    from sparsegauss.exceptions import NotPositiveDefiniteError

    grid, theta, data, _ = problem
    model = GridGaussianEnergy(grid)
    first = model.likelihood_terms(0.9 * theta, data)
    with pytest.raises(NotPositiveDefiniteError):
        model.likelihood_terms(-theta, data)        # Λ(−θ) = −Λ(θ)
    loss, grad = model.likelihood_terms(theta, data)
    np.testing.assert_allclose(loss, _dense_likelihood(grid, theta, data), rtol=1e-12)
    assert not np.allclose(grad, first[1])
    analysis = model.normalizer.analysis
    generation, inverse_generation = analysis._generation, analysis._inverse_generation
    log_z, grad_log_z = model.log_partition(theta)
    assert (analysis._generation, analysis._inverse_generation) == (generation,
                                                                   inverse_generation)
    reference = GridGaussianEnergy(grid).log_partition(theta)
    np.testing.assert_allclose(log_z, reference[0], rtol=1e-14)
    np.testing.assert_allclose(grad_log_z, reference[1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape, stencil", [((7, 9), 4), ((24, 26), 8)])
def test_expectation_step_on_a_factor_split_over_two_threads(shape, stencil, rng,
                                                             split_threshold):
    """A factor large enough for the two-subtree kernels has no thread to spare: the grid
    Gaussian takes the generic two passes in turn (the same values), and the fused call
    refuses it."""
    from sparsegauss.models.base import EnergyModel

    split_threshold(0)
    grid = GridParameterization(shape, stencil)
    theta = random_spd_theta(grid, rng, margin=0.4)
    data = rng.normal(size=(50, grid.n_pixels))
    model = GridGaussianEnergy(grid)
    assert model.normalizer.analysis._schedule is not None
    fused = model.likelihood_terms(theta, data)
    generic = EnergyModel.likelihood_terms(GridGaussianEnergy(grid), theta, data)
    np.testing.assert_allclose(fused[0], generic[0], rtol=1e-12)
    np.testing.assert_allclose(fused[1], generic[1], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(fused[0], _dense_likelihood(grid, theta, data), rtol=1e-12)
    normalizer = model.normalizer
    with pytest.raises(ValueError, match="already run on both threads"):
        normalizer.analysis.factorize_and_invert(
            grid.precision_data(theta), normalizer._positions, None,
            (data, np.zeros(0, dtype=np.int64), np.zeros(grid.n_pixels),
             np.ones(len(data)), grid.shifts))


def test_score_matching_barrier_solves_its_stages_on_strongly_correlated_images():
    """300 Gaussian-smoothed 10×12 images, 8 neighbours: conjugate gradients with the
    diagonal preconditioner stall on the barrier's Σ ∘ Σ curvature, and the stages ended
    unsolved (707 Newton steps, the last stage's gradient 0.2 × ‖Aθ‖). With exact
    Newton steps once CG stalls, the last stage is solved: its gradient, computed here
    densely (``Aθ − b − 2μ c_j Σ_pq``, Σ by NumPy), is a small fraction of its terms."""
    from scipy.ndimage import gaussian_filter
    from sparsegauss.estimators.mle import independent_start
    from sparsegauss.estimators.score_matching import fit_score_matching_barrier
    from sparsegauss.stats import pattern_moments

    rng = np.random.default_rng(0)
    X = np.stack([gaussian_filter(rng.standard_normal((10, 12)), 1.5) for _ in range(300)])
    X = X.reshape(300, -1) / X.std()
    grid = GridParameterization((10, 12), 8)
    theta0 = independent_start(pattern_moments(X, grid) / len(X), grid)
    result = fit_score_matching_barrier(X, grid, theta0=theta0)
    A, b = score_matching_system(X, grid)
    A = 0.5 * (A + A.T)
    rows, cols = grid.pair_indices()
    c = np.where(rows == cols, 0.5, 1.0)
    sigma = np.linalg.inv(dense_precision(grid, result.x))
    gradient = A @ result.x - b - 2.0 * result.barrier_weight * c * sigma[rows, cols]
    assert np.linalg.norm(gradient) <= 1e-3 * np.linalg.norm(A @ result.x)
    assert len(result.history) < 400
