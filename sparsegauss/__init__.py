"""sparsegauss: Gaussian models with sparse grid-structured precision matrices.

Fit ``p(x) ∝ exp(−½ (x − μ)ᵀ Λ (x − μ))`` to images, with Λ coupling each pixel to its
4 or 8 grid neighbours, by exact maximum likelihood through sparse Cholesky (CHOLMOD)
and selected inversion.
"""

from ._memory import tune_allocator as _tune_allocator

# Before any array work: see tune_allocator (page faults of freed minibatch arrays).
_tune_allocator()

from ._config import config, show_config  # noqa: E402
from .divergence import kl_divergence  # noqa: E402
from .exceptions import ConvergenceWarning, NotPositiveDefiniteError, SparseGaussError  # noqa: E402
from .grid import GridParameterization  # noqa: E402
from .model import GridGaussian  # noqa: E402

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
