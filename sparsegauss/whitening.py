"""Whitening transforms: the grid Gaussian's own, and the PCA / ZCA baselines.

A whitening map ``z = W (x − μ)`` with ``Wᵀ W = Λ`` sends ``N(μ, Λ⁻¹)`` to ``N(0, I)``.
Densities convert through the log-Jacobian: ``log p_x(x) = log p_z(z) + log |det W|``,
which every transformer here exposes as ``log_det_jacobian_``.

* :class:`GridWhitening` fits a :class:`~sparsegauss.GridGaussian` and whitens with its
  Λ: ``method="cholesky"`` ``z = Lᵀ P (x − μ)`` from the sparse factor ``P Λ Pᵀ = L Lᵀ``
  (``O(nnz L)`` per sample, any grid size; the components of z follow the fill-reducing
  order, not the pixel layout); ``method="symmetric"`` ``z = Λ^{1/2} (x − μ)`` (ZCA-like:
  keeps the pixel layout, so whitened images are still images; a dense eigendecomposition,
  D ≤ 4096). Both have ``log |det W| = ½ log det Λ``.
* :class:`EmpiricalWhitening` uses the empirical covariance ``S = V diag(λ) Vᵀ``,
  regularized by ε: PCA ``W = diag(λ + ε)^{-1/2} Vᵀ``, ZCA ``W = V diag(λ + ε)^{-1/2} Vᵀ``;
  ``log |det W| = −½ Σ log(λ_i + ε)``.
"""

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from .model import SYMMETRIC_SAMPLING_MAX_PIXELS, GridGaussian

__all__ = ["EmpiricalWhitening", "GridWhitening"]


class GridWhitening(TransformerMixin, BaseEstimator):
    """Whiten with a fitted grid Gaussian's precision matrix.

    Parameters
    ----------
    shape : (int, int), optional
        Image shape (default: from 3-D data, as :class:`~sparsegauss.GridGaussian`).
    stencil : {4, 8}, default=4
    tying : {"untied", "tied"}, default="untied"
    method : {"cholesky", "symmetric"}, default="cholesky"
    alpha : float, default=0.0
        Shrinkage of the couplings (see :class:`~sparsegauss.GridGaussian`).

    Attributes
    ----------
    model_ : GridGaussian
        The fitted Gaussian (exact MLE).
    log_det_jacobian_ : float
        ``log |det W| = ½ log det Λ``.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsegauss.whitening import GridWhitening
    >>> X = np.random.default_rng(0).standard_normal((500, 4, 5)).cumsum(axis=2)
    >>> Z = GridWhitening(method="symmetric").fit_transform(X)
    >>> Z.shape
    (500, 20)
    """

    def __init__(self, shape=None, *, stencil=4, tying="untied", method="cholesky",
                 alpha=0.0):
        self.shape = shape
        self.stencil = stencil
        self.tying = tying
        self.method = method
        self.alpha = alpha

    def fit(self, X, y=None):
        if self.method not in ("cholesky", "symmetric"):
            raise ValueError("The 'method' parameter of GridWhitening must be 'cholesky' or "
                             f"'symmetric'. Got {self.method!r} instead.")
        self.model_ = GridGaussian(self.shape, stencil=self.stencil, tying=self.tying,
                                   alpha=self.alpha).fit(X)
        self.n_features_in_ = self.model_.n_features_in_
        distribution = self.model_.distribution_
        self.mean_ = distribution.mean
        self.log_det_jacobian_ = 0.5 * distribution.logdet_precision
        if self.method == "symmetric":
            if self.n_features_in_ > SYMMETRIC_SAMPLING_MAX_PIXELS:
                raise ValueError(f"method='symmetric' needs a dense eigendecomposition of a "
                                 f"{self.n_features_in_}² matrix; it is limited to D <= "
                                 f"{SYMMETRIC_SAMPLING_MAX_PIXELS}. Use method='cholesky'.")
            eigenvalues, vectors = np.linalg.eigh(distribution.precision.toarray())
            self.components_ = (vectors * np.sqrt(eigenvalues)) @ vectors.T
            self._inverse = (vectors / np.sqrt(eigenvalues)) @ vectors.T
        return self

    def _flat(self, X):
        X = np.asarray(X, dtype=np.float64)
        return X.reshape(len(X), -1) if X.ndim == 3 else X

    def transform(self, X):
        """Whitened ``z`` for every row (images may be given as (n, H, W))."""
        check_is_fitted(self)
        X = validate_data(self, self._flat(X), reset=False)
        if self.method == "cholesky":
            return self.model_.distribution_.whiten(X)
        return (X - self.mean_) @ self.components_          # Λ^{1/2} is symmetric

    def pull_back(self, V):
        """Pixel-space filters of whitened-space filters: ``u = Wᵀ v`` for every row
        ``v`` of ``V``, so that ``v · z = u · (x − μ)`` (a unit that reads ``v · z``
        of whitened data reads ``u`` off the centred pixels)."""
        check_is_fitted(self)
        V = np.asarray(V, dtype=np.float64)
        if self.method == "cholesky":
            return self.model_.distribution_.whiten_adjoint(V)
        return V @ self.components_                           # symmetric: Wᵀ = W

    def inverse_transform(self, Z):
        """Pixels ``x`` from whitened ``z``."""
        check_is_fitted(self)
        Z = np.asarray(Z, dtype=np.float64)
        if self.method == "cholesky":
            return self.model_.distribution_.unwhiten(Z)
        return Z @ self._inverse + self.mean_


class EmpiricalWhitening(TransformerMixin, BaseEstimator):
    """PCA or ZCA whitening from the empirical covariance, regularized by ε.

    Parameters
    ----------
    kind : {"zca", "pca"}, default="zca"
    epsilon : float, default=1e-3
        Added to every eigenvalue: directions with variance below ε are not amplified
        beyond ``1/√ε`` (pixel noise of std 0.03 has variance 1e-3).

    Attributes
    ----------
    mean_, components_ (W), log_det_jacobian_ (``−½ Σ log(λ_i + ε)``)
    """

    def __init__(self, *, kind="zca", epsilon=1e-3):
        self.kind = kind
        self.epsilon = epsilon

    def fit(self, X, y=None):
        if self.kind not in ("zca", "pca"):
            raise ValueError("The 'kind' parameter of EmpiricalWhitening must be 'zca' or "
                             f"'pca'. Got {self.kind!r} instead.")
        if not (np.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError("The 'epsilon' parameter of EmpiricalWhitening must be > 0. "
                             f"Got {self.epsilon!r} instead.")
        X = validate_data(self, np.asarray(X, dtype=np.float64).reshape(len(X), -1),
                          reset=True)
        self.mean_ = X.mean(axis=0)
        centred = X - self.mean_
        eigenvalues, vectors = np.linalg.eigh(centred.T @ centred / len(X))
        scale = 1.0 / np.sqrt(np.maximum(eigenvalues, 0.0) + self.epsilon)
        self.components_ = scale[:, None] * vectors.T                  # PCA: rows = axes
        if self.kind == "zca":
            self.components_ = vectors @ self.components_
        self.log_det_jacobian_ = float(np.sum(np.log(scale)))
        self._inverse = np.linalg.inv(self.components_)
        return self

    def transform(self, X):
        check_is_fitted(self)
        X = validate_data(self, np.asarray(X, dtype=np.float64).reshape(len(X), -1),
                          reset=False)
        return (X - self.mean_) @ self.components_.T

    def inverse_transform(self, Z):
        check_is_fitted(self)
        return np.asarray(Z, dtype=np.float64) @ self._inverse.T + self.mean_
