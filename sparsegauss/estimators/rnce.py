"""Ranking NCE (InfoNCE; Jozefowicz et al. 2016, van den Oord et al. 2018).

Each data sample ``x_i`` is ranked against K noise samples ``y_i1..y_iK``: with
``s_i0 = G(x_i)``, ``s_ik = G(y_ik)`` and ``G = log φ − log p_n`` (any normalizing
constant cancels in the softmax), the loss is the cross-entropy of picking the data,

    J(θ) = (1/N) Σ_i [logsumexp_k s_ik − s_i0],
    ∂J/∂θ = (1/N) Σ_i [(π_i0 − 1) ∂ log φ(x_i) + Σ_{k≥1} π_ik ∂ log φ(y_ik)],

with ``π_i = softmax(s_i)``.
"""

import numpy as np
from scipy.special import logsumexp, softmax

from ._density import log_phi, weighted_log_phi_grad

__all__ = ["rnce_loss_grad"]


def rnce_loss_grad(theta, grid, data, noise, log_noise_data, log_noise_noise):
    """Ranking-NCE loss and gradient.

    Parameters
    ----------
    theta : ndarray, shape (n_params,)
    grid : GridParameterization
    data : ndarray, shape (N, D)
    noise : ndarray, shape (N * K, D)
        Row ``i * K + k`` is the k-th noise sample ranked against ``data[i]``.
    log_noise_data, log_noise_noise : ndarray, shapes (N,) and (N * K,)

    Returns
    -------
    loss : float
    grad : ndarray, shape (n_params,)
    """
    n_data = len(data)
    fields = grid.fields(theta)
    scores = np.empty((n_data, len(noise) // n_data + 1))
    scores[:, 0] = log_phi(fields, grid, data) - log_noise_data
    scores[:, 1:] = (log_phi(fields, grid, noise) - log_noise_noise).reshape(n_data, -1)
    loss = np.mean(logsumexp(scores, axis=1) - scores[:, 0])
    weights = softmax(scores, axis=1) / n_data
    weights[:, 0] -= 1.0 / n_data
    grad = (weighted_log_phi_grad(grid, data, weights[:, 0])
            + weighted_log_phi_grad(grid, noise, weights[:, 1:].ravel()))
    return float(loss), grad
