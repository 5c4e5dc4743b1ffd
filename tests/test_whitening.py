"""Whitening maps against their defining identities (dense NumPy on small grids)."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from sparsegauss.datasets import make_grid_gaussian
from sparsegauss.whitening import EmpiricalWhitening, GridWhitening


@pytest.fixture(scope="module")
def data():
    _, X = make_grid_gaussian((5, 6), 3000, stencil=8, random_state=0)
    return X + 0.5


@pytest.mark.parametrize("method", ["cholesky", "symmetric"])
def test_grid_whitening_is_exact_for_its_own_gaussian(data, method):
    """W Σ Wᵀ = I exactly (the fitted model's samples whiten to N(0, I)); the log-density
    of x equals that of z plus log |det W|; the inverse undoes the map."""
    white = GridWhitening((5, 6), stencil=8, method=method).fit(data)
    model = white.model_
    D = data.shape[1]
    W = white.transform(np.eye(D) + white.mean_).T            # column j = W e_j
    sigma = np.linalg.inv(model.precision_.toarray())
    np.testing.assert_allclose(W @ sigma @ W.T, np.eye(D), atol=1e-10)
    np.testing.assert_allclose(np.linalg.slogdet(W)[1], white.log_det_jacobian_, rtol=1e-10)
    Z = white.transform(data[:50])
    np.testing.assert_allclose(
        multivariate_normal(np.zeros(D)).logpdf(Z) + white.log_det_jacobian_,
        model.score_samples(data[:50]), rtol=1e-10)
    np.testing.assert_allclose(white.inverse_transform(Z), data[:50], atol=1e-10)
    samples = white.transform(model.sample(40_000, random_state=1))
    np.testing.assert_allclose(np.cov(samples.T), np.eye(D), atol=0.04)
    # Filters pulled back to pixels: v · z = (Wᵀ v) · (x − μ), W the dense map above.
    V = np.random.default_rng(2).standard_normal((3, D))
    np.testing.assert_allclose(white.pull_back(V), V @ W, atol=1e-10)
    np.testing.assert_allclose(Z @ V.T, (data[:50] - white.mean_) @ white.pull_back(V).T,
                               atol=1e-9)
    if method == "symmetric":                  # Λ^{1/2}: symmetric, keeps the layout
        np.testing.assert_allclose(W, W.T, atol=1e-12)


@pytest.mark.parametrize("kind", ["pca", "zca"])
def test_empirical_whitening(data, kind):
    white = EmpiricalWhitening(kind=kind, epsilon=1e-9).fit(data)
    Z = white.transform(data)
    np.testing.assert_allclose(np.cov(Z.T, bias=True), np.eye(data.shape[1]), atol=1e-5)
    np.testing.assert_allclose(white.inverse_transform(Z), data, atol=1e-8)
    S = np.cov(data.T, bias=True)
    np.testing.assert_allclose(white.log_det_jacobian_, -0.5 * np.linalg.slogdet(S)[1],
                               rtol=1e-6)
    if kind == "zca":
        np.testing.assert_allclose(white.components_, white.components_.T, atol=1e-8)
    with pytest.raises(ValueError, match="'epsilon' parameter"):
        EmpiricalWhitening(epsilon=0).fit(data)
