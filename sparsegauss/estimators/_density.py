"""The unnormalized model density and its gradient, shared by the estimators.

For centred data the model's unnormalized log-density is ``log φ(x; θ) = −½ xᵀΛ(θ)x``;
its gradient is ``∂ log φ / ∂θ = −½ adjoint(m ⊙ x x̃ᵀ)`` read on the stencil pattern, so
a weighted sum over samples is one weighted pattern-moment pass:
``Σ_n w_n ∂ log φ(x_n) / ∂θ = −½ adjoint(m ⊙ T_w)`` with ``T_w = pattern_moments(X, w)``.
"""

import numpy as np

from ..stats import pattern_moments, quadratic_forms

__all__ = ["log_phi", "weighted_log_phi_grad"]


def log_phi(fields, grid, X):
    """``−½ xᵀΛx`` for every row of centred ``X``."""
    return -0.5 * quadratic_forms(X, grid, fields)


def weighted_log_phi_grad(grid, X, weights):
    """``Σ_n w_n ∂ log φ(x_n) / ∂θ`` (no n_samples × n_params temporary)."""
    moments = pattern_moments(X, grid, weights=np.asarray(weights, dtype=np.float64))
    return -0.5 * grid.adjoint(grid.multiplicity[:, None] * moments)
