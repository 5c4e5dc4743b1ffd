import numpy as np
import pytest
from scipy.stats import multivariate_normal

from sparsegauss.noise import make_noise


@pytest.fixture
def data(rng):
    mixing = rng.normal(size=(12, 12)) * 0.4 + np.eye(12)
    X = rng.normal(size=(5000, 12)) @ mixing.T
    return X - X.mean(axis=0)


@pytest.mark.parametrize("kind", ["isotropic", "diagonal", "empirical", "grid"])
def test_noise_density_and_samples(kind, data, rng):
    noise = make_noise(kind, data, (3, 4))
    samples = noise.sample(20000, rng)
    covariance = samples.T @ samples / len(samples)
    if kind == "isotropic":
        expected = np.eye(12) * np.mean(np.var(data, axis=0))
    elif kind == "diagonal":
        expected = np.diag(np.var(data, axis=0))
    elif kind == "empirical":
        expected = data.T @ data / len(data)
    else:
        expected = np.linalg.inv(noise.model.precision_.toarray())
    np.testing.assert_allclose(noise.score_samples(data[:20]),
                               multivariate_normal(np.zeros(12), expected).logpdf(data[:20]),
                               rtol=1e-6)
    # Sample covariance within sampling error (5 s.e. of a second moment).
    se = np.sqrt((np.outer(np.diag(expected), np.diag(expected)) + expected ** 2) / len(samples))
    assert np.all(np.abs(covariance - expected) < 5 * se)


def test_custom_noise_object_and_errors(data):
    class Custom:
        def sample(self, n, random_state=None):
            return np.zeros((n, 12))

        def score_samples(self, X):
            return np.zeros(len(X))

    custom = Custom()
    assert make_noise(custom, data, (3, 4)) is custom
    with pytest.raises(TypeError, match="sample"):
        make_noise(object(), data, (3, 4))
    with pytest.raises(ValueError, match="'noise' parameter"):
        make_noise("laplace", data, (3, 4))
