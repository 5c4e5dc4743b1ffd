"""The synthetic truth: a positive-definite grid Gaussian whose exact samples have Λ⁻¹ as
their covariance."""

import numpy as np
import pytest

from sparsegauss.datasets import make_grid_gaussian


@pytest.mark.parametrize("stencil", [4, 8])
def test_samples_have_the_inverse_precision_as_covariance(stencil):
    truth, X = make_grid_gaussian((5, 6), 40_000, stencil=stencil, random_state=0)
    sigma = np.linalg.inv(truth.precision_.toarray())
    covariance = X.T @ X / len(X)                     # zero mean is known
    # Standard error of a second moment of a Gaussian: √((Σ_pp Σ_qq + Σ_pq²) / n).
    se = np.sqrt((np.outer(np.diag(sigma), np.diag(sigma)) + sigma ** 2) / len(X))
    assert np.max(np.abs(covariance - sigma) / se) < 5
    # The couplings are really there: neighbours correlate.
    assert truth.precision_.nnz == (5 * 6 + 2 * (4 * 6 + 5 * 5)
                                    + (2 * 2 * 4 * 5 if stencil == 8 else 0))


def test_truth_is_positive_definite_reproducible_and_sized():
    a, Xa = make_grid_gaussian((40, 30), 3, coupling=0.5, random_state=7)
    b, Xb = make_grid_gaussian((40, 30), 3, coupling=0.5, random_state=7)
    np.testing.assert_array_equal(a.theta_, b.theta_)
    np.testing.assert_array_equal(Xa, Xb)
    assert a.is_positive_definite_ and Xa.shape == (3, 1200)
    assert make_grid_gaussian((4, 4))[1].shape == (0, 16)
    dense = a.precision_.toarray()
    assert np.all(np.diag(dense) > np.sum(np.abs(dense), axis=1) - np.diag(dense))


@pytest.mark.parametrize("kwargs, match", [
    (dict(stencil=6), "'stencil'"), (dict(coupling=0.7), "'coupling'"),
    (dict(n_samples=-1), "'n_samples'"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_grid_gaussian((4, 4), **kwargs)
