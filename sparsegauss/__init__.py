"""sparsegauss: Gaussian models with sparse grid-structured precision matrices.

Fit ``p(x) ∝ exp(−½ (x − μ)ᵀ Λ (x − μ))`` to images, with Λ coupling each pixel to its
4 or 8 grid neighbours, by exact maximum likelihood through sparse Cholesky (CHOLMOD)
and selected inversion.
"""

from ._config import config, show_config
from .divergence import kl_divergence
from .exceptions import ConvergenceWarning, NotPositiveDefiniteError, SparseGaussError
from .grid import GridParameterization
from .model import GridGaussian

__version__ = "0.1.0"

__all__ = sorted([
    "ConvergenceWarning",
    "GridGaussian",
    "GridParameterization",
    "NotPositiveDefiniteError",
    "SparseGaussError",
    "config",
    "kl_divergence",
    "show_config",
])
