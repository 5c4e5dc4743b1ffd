"""KL divergence between grid Gaussians against the dense closed form."""

import numpy as np
import pytest

from sparsegauss import GridGaussian, NotPositiveDefiniteError
from sparsegauss.divergence import kl_divergence


def dense_kl(p, q):
    lp, lq = p.precision_.toarray(), q.precision_.toarray()
    shift = q.location_ - p.location_
    return 0.5 * (np.trace(lq @ np.linalg.inv(lp)) + shift @ lq @ shift - lp.shape[0]
                  + np.linalg.slogdet(lp)[1] - np.linalg.slogdet(lq)[1])


@pytest.fixture(scope="module")
def fitted(rng_seed=3):
    rng = np.random.default_rng(rng_seed)
    base = rng.standard_normal((400, 6, 7))
    X1 = (base + 0.6 * np.roll(base, 1, axis=2) + 0.3 * np.roll(base, 1, axis=1)).reshape(400, -1)
    X2 = X1[:200] * 1.3 + 0.2
    models = {}
    for name, X in (("a", X1), ("b", X2)):
        for stencil in (4, 8):
            for tying in ("untied", "tied"):
                models[name, stencil, tying] = GridGaussian(
                    (6, 7), stencil=stencil, tying=tying).fit(X)
    return models


@pytest.mark.parametrize("p_key", [("a", 4, "untied"), ("a", 8, "tied"), ("b", 8, "untied")])
@pytest.mark.parametrize("q_key", [("b", 4, "tied"), ("a", 8, "untied"), ("b", 4, "untied")])
def test_kl_matches_dense(fitted, p_key, q_key):
    p, q = fitted[p_key], fitted[q_key]
    assert kl_divergence(p, q) == pytest.approx(dense_kl(p, q), rel=1e-9, abs=1e-10)


def test_kl_of_a_model_with_itself_is_zero(fitted):
    model = fitted["a", 8, "untied"]
    assert abs(kl_divergence(model, model)) < 1e-9


def test_kl_rejects_other_shapes_and_indefinite_models(fitted):
    other = GridGaussian((7, 6)).fit(np.random.default_rng(0).standard_normal((50, 42)))
    with pytest.raises(ValueError, match="same image shape"):
        kl_divergence(fitted["a", 4, "untied"], other)
    indefinite = GridGaussian((6, 7)).fit(np.random.default_rng(1).standard_normal((50, 42)))
    theta = indefinite.theta_.copy()
    theta[:42] = -1.0                       # negative diagonal: not a Gaussian
    indefinite._set_fitted(indefinite._grid, theta, indefinite.location_)
    with pytest.raises(NotPositiveDefiniteError, match="not positive definite"):
        kl_divergence(fitted["a", 4, "untied"], indefinite)
