"""Passes over the data: pattern second moments and batched quadratic forms.

These are the only places where the samples enter a fit; each reads ``X`` once, in
parallel (Numba), with no ``(n_samples × n_params)`` temporary. Both work on float32 and
float64 input and accumulate in float64.
"""

import numpy as np

from . import _kernels

__all__ = ["as_float_array", "pattern_moments", "quadratic_forms"]


def as_float_array(X):
    """C-contiguous float32/float64 view or copy of ``X`` (other dtypes become float64)."""
    X = np.asarray(X)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    return np.ascontiguousarray(X)


def pattern_moments(X, grid, *, center=None, weights=None):
    """Weighted second moments of ``X`` on the stencil pattern of ``grid``.

    Parameters
    ----------
    X : ndarray, shape (n_samples, D)
    grid : GridParameterization
    center : ndarray, shape (D,), optional
        Subtracted from every sample first (default: zero).
    weights : ndarray, shape (n_samples,), optional
        Per-sample weights ``w_n`` (default: one).

    Returns
    -------
    ndarray, shape (n_terms, D)
        ``T[k, p] = Σ_n w_n (x_np − c_p)(x_n,p+δ_k − c_{p+δ_k})`` on valid pairs, zero on
        pairs that leave the grid. ``T / n`` is the empirical covariance ``S`` read on Λ's
        pattern, so ``Σ_n w_n (x_n − c)ᵀ Λ(θ) (x_n − c) = Σ_k m_k Σ_p F[k, p] T[k, p]``.
    """
    X = as_float_array(X)
    n_samples = X.shape[0]
    center = (np.zeros(grid.n_pixels) if center is None
              else np.ascontiguousarray(center, dtype=np.float64))
    weights = (np.ones(n_samples) if weights is None
               else np.ascontiguousarray(weights, dtype=np.float64))
    moments = _kernels.pattern_moments(X, center, weights, grid.shifts,
                                       _kernels.default_chunks(n_samples))
    moments[~grid.valid] = 0.0
    return moments


def quadratic_forms(X, grid, fields, *, center=None):
    """``(x_n − c)ᵀ Λ (x_n − c)`` for every sample, from the stencil layout of Λ.

    Parameters
    ----------
    X : ndarray, shape (n_samples, D)
    grid : GridParameterization
    fields : ndarray, shape (n_terms, D)
        Stencil layout of Λ (``grid.fields(theta)``), zero on pairs off the grid.
    center : ndarray, shape (D,), optional

    Returns
    -------
    ndarray, shape (n_samples,)
    """
    X = as_float_array(X)
    center = (np.zeros(grid.n_pixels) if center is None
              else np.ascontiguousarray(center, dtype=np.float64))
    return _kernels.quadratic_forms(X, center, np.ascontiguousarray(fields, dtype=np.float64),
                                    grid.shifts, grid.multiplicity,
                                    _kernels.default_chunks(X.shape[0]))
