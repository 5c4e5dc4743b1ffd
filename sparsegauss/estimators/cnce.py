"""Conditional NCE (Ceylan & Gutmann 2018).

Each data sample ``x`` is paired with K perturbations ``y = x + ε``, ``ε ~ N(0, σ²I)``.
The perturbation is symmetric, so its density cancels from the log-ratio and so does the
normalizing constant: ``G(x, y) = f_θ(x) − f_θ(y)``. The loss is

    J(θ) = (1/(NK)) Σ_{i,k} log(1 + exp(−G(x_i, y_ik))),
    ∂J/∂θ = −(1/(NK)) Σ_{i,k} σ(−G_ik) [∇_θ f(x_i) − ∇_θ f(y_ik)].

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

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.special import expit

from ._driver import OptimizerOptions, run

__all__ = ["CNCEOptions", "cnce_loss_grad", "default_perturbation_std", "fit_cnce",
           "perturbations"]


@dataclass(frozen=True)
class CNCEOptions:
    """Conditional NCE's own settings.

    Attributes
    ----------
    n_noise : int
        K, perturbations per data sample (drawn in ± pairs).
    perturbation_std : float or ndarray of shape (D,), optional
        σ of the perturbation ``ε ~ N(0, diag(σ²))`` (a scalar for isotropic); the
        caller's default when None.
    """

    n_noise: int = 10
    perturbation_std: Optional[object] = None


def default_perturbation_std(variances):
    """``σ = √(2 / Σ_p 1/S_pp)``: expected log-ratio 1 at the independent model."""
    return float(np.sqrt(2.0 / np.sum(1.0 / np.asarray(variances))))


def cnce_loss_grad(model, theta, data, perturbed):
    """Conditional-NCE loss and gradient.

    Parameters
    ----------
    model : EnergyModel
    theta : ndarray, shape (n_params,)
    data : ndarray, shape (N, D)
    perturbed : ndarray, shape (N * K, D)
        Row ``i * K + k`` is ``data[i] + ε_ik``.

    Returns
    -------
    loss : float
    grad : ndarray, shape (n_params,)
    """
    n_data, n_pairs = len(data), len(perturbed)
    f_data, vjp_data = model.log_density_vjp(theta, data)
    f_perturbed, vjp_perturbed = model.log_density_vjp(theta, perturbed)
    ratio = np.repeat(f_data, n_pairs // n_data) - f_perturbed
    loss = np.mean(np.logaddexp(0.0, -ratio))
    d_ratio = -expit(-ratio) / n_pairs                  # ∂J/∂G per pair
    per_data = d_ratio.reshape(n_data, -1).sum(axis=1)
    grad = vjp_data(per_data) - vjp_perturbed(d_ratio)
    return float(loss), grad


def perturbations(rng, n, k, sigma):
    """``n × k`` perturbations ``ε = σ ⊙ z ⊙ m``, ``z ~ N(0, I)``, in antithetic ± pairs.

    Row ``i * k + j`` perturbs sample i. The perturbation density is symmetric, so
    ``x − ε`` is as valid a partner of ``x`` as ``x + ε``; using both cancels the
    log-ratio's odd term ``xᵀΛε`` between the two, the main source of CNCE's sampling
    noise (on an 8×8 grid with 20,000 samples the KL to the truth fell from 0.096 to
    0.063 with K = 5, and from 0.024 to 0.017 with K = 20).

    Parameters
    ----------
    sigma : ndarray, shape (D,)
    """
    half_k = (k + 1) // 2
    z = rng.standard_normal((n, half_k, sigma.size))
    return np.concatenate([z, -z], axis=1)[:, :k].reshape(n * k, sigma.size) * sigma


def fit_cnce(model, X, *, theta0, scale, perturbation_std, options=CNCEOptions(),
             optimizer=OptimizerOptions(), rng=None):
    """Fit θ by conditional NCE.

    Parameters
    ----------
    model : EnergyModel
    X : ndarray, shape (N, D)
    theta0, scale : ndarray, shape (n_params,)
    perturbation_std : float or ndarray of shape (D,)
        σ of the perturbations (per pixel, or one for all).
    options : CNCEOptions
    optimizer : OptimizerOptions
    rng : numpy.random.Generator

    Returns
    -------
    scipy.optimize.OptimizeResult
    """
    rng = np.random.default_rng(rng)
    sigma = np.broadcast_to(np.asarray(perturbation_std, dtype=np.float64), (X.shape[1],))
    k = options.n_noise

    def draw(rows):
        batch = X if rows is None else X[rows]
        return batch, (np.repeat(batch, k, axis=0)
                       + perturbations(rng, len(batch), k, sigma),)

    def objective(theta, batch, drawn):
        return cnce_loss_grad(model, theta, batch, *drawn)

    result = run(objective, draw, len(X), theta0, scale, optimizer, rng, name="cnce")
    return result
