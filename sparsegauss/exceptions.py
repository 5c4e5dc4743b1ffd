"""Exceptions and warnings raised by sparsegauss."""

import numpy as np
from sklearn.exceptions import ConvergenceWarning as _SklearnConvergenceWarning

__all__ = ["ConvergenceWarning", "InsufficientMemoryError", "NotPositiveDefiniteError",
           "SampleSizeError", "SparseGaussError"]


class SparseGaussError(Exception):
    """Root of the exceptions that sparsegauss raises for numerical failures."""


class NotPositiveDefiniteError(SparseGaussError, np.linalg.LinAlgError):
    """A precision matrix is not positive definite.

    Parameters
    ----------
    message : str
        What failed and what to do about it.
    column : int or None
        Index of the pixel (in the original, unpermuted row-major ordering) whose pivot
        was not positive, when known.
    """

    def __init__(self, message, column=None):
        super().__init__(message)
        self.column = column


class InsufficientMemoryError(SparseGaussError, MemoryError):
    """A requested result would not fit in the memory the machine has available."""


class SampleSizeError(SparseGaussError, ValueError):
    """Too few samples for the requested estimate to exist or be computable."""


class ConvergenceWarning(_SklearnConvergenceWarning):
    """An iterative fit stopped before meeting its tolerance.

    A subclass of scikit-learn's ``ConvergenceWarning`` (itself a ``UserWarning``), so
    filters written for scikit-learn estimators apply to sparsegauss too.
    """
