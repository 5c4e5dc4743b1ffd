import numpy as np
import pytest

from sparsegauss.datasets import load_mnist, preprocess
from sparsegauss import _kernels
from sparsegauss.estimators.mle import (fit_mle, hessian_diagonal, independent_start,
                                        kkt_residual, mle_loss_grad, sandwich_preconditioner)
from sparsegauss.grid import GridParameterization
from sparsegauss.normalization import GridNormalizer
from sparsegauss.stats import pattern_moments
from conftest import dense_precision, random_spd_theta


def synthetic(grid, rng, n=4000):
    """Samples from a known grid Gaussian, and their pattern moments."""
    truth = random_spd_theta(grid, rng, margin=0.5)
    normalizer = GridNormalizer(grid)
    X = normalizer.factorize(truth).sample(n, rng)
    return truth, X, pattern_moments(X, grid) / n


@pytest.mark.parametrize("stencil", [4, 8])
@pytest.mark.parametrize("tying", ["untied", "tied"])
def test_loss_and_gradient_against_dense_and_finite_differences(stencil, tying, rng):
    grid = GridParameterization((3, 4), stencil, tying)
    truth, X, moments = synthetic(grid, rng, n=300)
    theta = random_spd_theta(grid, rng, margin=0.3)
    normalizer = GridNormalizer(grid)
    loss, grad, _ = mle_loss_grad(theta, moments, normalizer)

    dense = dense_precision(grid, theta)
    S = X.T @ X / len(X)
    dense_loss = (0.5 * grid.n_pixels * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(dense)[1]
                  + 0.5 * np.trace(dense @ S))
    np.testing.assert_allclose(loss, dense_loss, rtol=1e-12)

    step = 1e-6
    numeric = np.array([(mle_loss_grad(theta + step * e, moments, normalizer)[0]
                         - mle_loss_grad(theta - step * e, moments, normalizer)[0]) / (2 * step)
                        for e in np.eye(grid.n_params)])
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("stencil", [4, 8])
def test_hessian_diagonal_matches_finite_differences(stencil, rng):
    grid = GridParameterization((3, 3), stencil)
    _, _, moments = synthetic(grid, rng, n=200)
    theta = random_spd_theta(grid, rng)
    normalizer = GridNormalizer(grid)
    _, _, covariance = mle_loss_grad(theta, moments, normalizer)
    step = 1e-5
    numeric = np.array([(mle_loss_grad(theta + step * e, moments, normalizer)[1][j]
                         - mle_loss_grad(theta - step * e, moments, normalizer)[1][j]) / (2 * step)
                        for j, e in enumerate(np.eye(grid.n_params))])
    np.testing.assert_allclose(hessian_diagonal(covariance, grid), numeric, rtol=1e-6)


@pytest.mark.parametrize("stencil", [4, 8])
@pytest.mark.parametrize("solver", ["newton-cg", "lbfgs"])
def test_untied_fit_matches_the_data_on_the_pattern(stencil, solver, rng):
    """Dempster's condition, checked with a dense inverse: Σ̂ = S on every pattern entry."""
    grid = GridParameterization((5, 6), stencil)
    _, X, moments = synthetic(grid, rng)
    result = fit_mle(moments, grid, solver=solver, max_iter=3000)
    assert result.success, result.message
    sigma = np.linalg.inv(dense_precision(grid, result.x))
    S = X.T @ X / len(X)
    rows, cols = grid.pair_indices()
    scale = np.sqrt(np.diag(S)[rows] * np.diag(S)[cols])
    assert np.max(np.abs(sigma[rows, cols] - S[rows, cols]) / scale) <= 1e-8


@pytest.mark.parametrize("stencil", [4, 8])
def test_tied_fit_is_a_stationary_point(stencil, rng):
    grid = GridParameterization((6, 5), stencil, "tied")
    _, X, moments = synthetic(GridParameterization((6, 5), stencil, "untied"), rng)
    result = fit_mle(moments, grid)
    assert result.success
    sigma = np.linalg.inv(dense_precision(grid, result.x))
    S = X.T @ X / len(X)
    # For each tie: Σ over its entries of (Σ̂ − S) vanishes.
    for k, (dr, dc) in enumerate(grid.offsets):
        owners = np.flatnonzero(grid.valid[k])
        gap = np.sum(sigma[owners, owners + grid.shifts[k]] - S[owners, owners + grid.shifts[k]])
        assert abs(gap) <= 1e-8 * np.sum(np.diag(S)[owners])


def test_fit_recovers_the_true_model(rng):
    grid = GridParameterization((4, 4), 4)
    truth, X, moments = synthetic(grid, rng, n=100_000)
    result = fit_mle(moments, grid)
    # θ̂ − θ is O(1/√n) ≈ 3e-3 per unit of Λ; 0.05 is a wide margin.
    np.testing.assert_allclose(result.x, truth, atol=0.05)


def test_mnist_kkt_residual(mnist_dir):
    images, _ = load_mnist("test", data_home=mnist_dir)
    X, _ = preprocess(images[:3000], random_state=0)
    grid = GridParameterization((28, 28), 4)
    moments = pattern_moments(X, grid) / len(X)
    result = fit_mle(moments, grid)
    assert result.success and result.nit <= 40
    # Independent check with dense linear algebra on the 784 pixels.
    sigma = np.linalg.inv(grid.precision(result.x).toarray())
    S = X.T @ X / len(X)
    rows, cols = grid.pair_indices()
    scale = np.sqrt(np.diag(S)[rows] * np.diag(S)[cols])
    assert np.max(np.abs(sigma[rows, cols] - S[rows, cols]) / scale) <= 1e-8
    assert kkt_residual(GridNormalizer(grid).covariance_fields(
        GridNormalizer(grid).factorize(result.x)), moments, grid) <= 1e-8


def test_independent_start_is_the_diagonal_fit(rng):
    grid = GridParameterization((3, 3), 4)
    _, X, moments = synthetic(grid, rng, n=50)
    fields = grid.fields(independent_start(moments, grid))
    np.testing.assert_allclose(fields[0], 1 / np.mean(X ** 2, axis=0), rtol=1e-12)
    assert np.all(fields[1:] == 0)


def dense_hessian(grid, theta):
    """``H_jl = ½ tr(Σ A_j Σ A_l)`` by dense inversion (untied): the oracle."""
    sigma = np.linalg.inv(dense_precision(grid, theta))
    rows, cols = grid.pair_indices()
    c = np.where(rows == cols, 0.5, 1.0)
    return np.outer(c, c) * (sigma[np.ix_(rows, rows)] * sigma[np.ix_(cols, cols)]
                             + sigma[np.ix_(rows, cols)] * sigma[np.ix_(cols, rows)])


@pytest.mark.parametrize("stencil", [4, 8])
@pytest.mark.parametrize("shape", [(5, 7), (1, 6), (6, 1), (2, 2), (1, 1)])
def test_sandwich_kernel_matches_dense_products(stencil, shape, rng):
    """Λ G Λ on the pattern, against the dense triple product (edges and corners)."""
    grid = GridParameterization(shape, stencil)
    a, b = rng.normal(size=(2, grid.n_params))
    expected = dense_precision(grid, a) @ dense_precision(grid, b) @ dense_precision(grid, a)
    offsets = np.array(grid.offsets, dtype=np.int64)
    planes, full_offsets = _kernels.symmetric_planes(grid.fields(a), offsets, *shape)
    terms, counts = _kernels.sandwich_terms(offsets, full_offsets)
    out = _kernels.sandwich_on_pattern(planes, grid.fields(b), offsets, full_offsets, terms,
                                       counts, *shape)
    rows, cols = grid.pair_indices()
    np.testing.assert_allclose(out[grid.valid], grid.scatter_pairs(
        expected[rows, cols])[grid.valid], rtol=1e-12, atol=1e-12)
    assert np.all(out[~grid.valid] == 0)


def test_sandwich_preconditioner_is_the_inverse_hessian_on_a_complete_pattern(rng):
    """On a 2×2 grid with 8 neighbours every entry of Λ is free: M = H⁻¹ exactly."""
    grid = GridParameterization((2, 2), 8)
    theta = random_spd_theta(grid, rng)
    apply = sandwich_preconditioner(theta, grid)
    M = np.column_stack([apply(e) for e in np.eye(grid.n_params)])
    np.testing.assert_allclose(M @ dense_hessian(grid, theta), np.eye(grid.n_params),
                               atol=1e-10)


@pytest.mark.parametrize("stencil", [4, 8])
def test_sandwich_preconditioner_bounds_the_inverse_hessian(stencil, rng):
    """On a sparse pattern M is SPD with M ⪰ H⁻¹: the spectrum of M H lies in [1, ∞)."""
    grid = GridParameterization((4, 5), stencil)
    theta = random_spd_theta(grid, rng, margin=0.1)
    apply = sandwich_preconditioner(theta, grid)
    M = np.column_stack([apply(e) for e in np.eye(grid.n_params)])
    np.testing.assert_allclose(M, M.T, atol=1e-12)
    eigenvalues = np.linalg.eigvals(M @ dense_hessian(grid, theta)).real
    assert eigenvalues.min() >= 1 - 1e-9
    assert eigenvalues.max() > 1.01          # not the exact inverse: the pattern is sparse


def test_sandwich_preconditioner_needs_an_untied_grid():
    grid = GridParameterization((3, 3), 4, "tied")
    with pytest.raises(ValueError, match="untied"):
        sandwich_preconditioner(np.ones(grid.n_params), grid)
