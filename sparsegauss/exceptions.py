"""Exceptions and warnings raised by sparsegauss."""

import numpy as np

__all__ = ["ConvergenceWarning", "NotPositiveDefiniteError", "SparseGaussError"]


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


class ConvergenceWarning(UserWarning):
    """An iterative fit stopped before meeting its tolerance."""
