"""Conditional NCE (Ceylan & Gutmann 2018).

Each data sample ``x`` is paired with K perturbations ``y = x + ε``, ``ε ~ N(0, σ²I)``.
The perturbation is symmetric, so its density cancels from the log-ratio and so does the
normalizing constant: ``G(x, y) = log φ(x) − log φ(y)``. The loss is

    J(θ) = (1/(NK)) Σ_{i,k} log(1 + exp(−G(x_i, y_ik))),
    ∂J/∂θ = −(1/(NK)) Σ_{i,k} σ(−G_ik) [∂ log φ(x_i) − ∂ log φ(y_ik)].

Default σ. The classification should be neither trivial nor hopeless: at the independent
model Λ₀ = diag(1/S_pp), ``E_ε[G] = ½ σ² tr Λ₀``; :func:`default_perturbation_std` picks
``σ = √(2 / tr Λ₀)`` so that this expected log-ratio is 1 (the log-ratios' spread is then
of order one too). Larger σ quickly costs accuracy (3x the default: twice the KL to the
truth on a 10×10 grid); smaller changes little.

Efficiency. For small σ, with perturbations in ± pairs, ``softplus(−G₊) + softplus(−G₋)``
expands to ``2 log 2 + σ² (−tr Λ + ½ xᵀΛ²x)/2 + …``: CNCE becomes score matching plus the
noise of the random ε, whose cross terms ``ε_p ε_q`` add relative variance ≈ D/K. Its KL to
the truth is then ≈ (1 + D/K) × score matching's (measured: 4.3x for D = 64, K = 20;
11.6x for D = 100, K = 10). In high dimension CNCE needs many perturbations per sample.
"""

import numpy as np
from scipy.special import expit

from ._density import log_phi, weighted_log_phi_grad

__all__ = ["cnce_loss_grad", "default_perturbation_std"]


def default_perturbation_std(variances):
    """``σ = √(2 / Σ_p 1/S_pp)``: expected log-ratio 1 at the independent model."""
    return float(np.sqrt(2.0 / np.sum(1.0 / np.asarray(variances))))


def cnce_loss_grad(theta, grid, data, perturbed):
    """Conditional-NCE loss and gradient.

    Parameters
    ----------
    theta : ndarray, shape (n_params,)
    grid : GridParameterization
    data : ndarray, shape (N, D)
        Centred data.
    perturbed : ndarray, shape (N * K, D)
        Row ``i * K + k`` is ``data[i] + ε_ik``.

    Returns
    -------
    loss : float
    grad : ndarray, shape (n_params,)
    """
    n_data, n_pairs = len(data), len(perturbed)
    fields = grid.fields(theta)
    log_phi_data = log_phi(fields, grid, data)
    ratio = (np.repeat(log_phi_data, n_pairs // n_data)
             - log_phi(fields, grid, perturbed))
    loss = np.mean(np.logaddexp(0.0, -ratio))
    d_ratio = -expit(-ratio) / n_pairs                  # ∂J/∂G per pair
    per_data = d_ratio.reshape(n_data, -1).sum(axis=1)
    grad = (weighted_log_phi_grad(grid, data, per_data)
            - weighted_log_phi_grad(grid, perturbed, d_ratio))
    return float(loss), grad
