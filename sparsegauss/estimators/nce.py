"""Noise-contrastive estimation (Gutmann & Hyvärinen 2010, 2012).

A logistic classifier tells N data samples ``x_t`` from M = νN noise samples ``y_s`` with
the log-ratio ``G(u) = log p_m(u) − log p_n(u)``, where ``log p_m(u) = log φ(u; θ) − ζ``.
With ``h(u) = σ(G(u) − log ν)`` the loss is

    J(θ, ζ) = −(1/N) [Σ_t log h(x_t) + Σ_s log(1 − h(y_s))],

    ∂J/∂θ = −(1/N) [Σ_t (1 − h(x_t)) ∂ log φ(x_t) − Σ_s h(y_s) ∂ log φ(y_s)],
    ∂J/∂ζ =  (1/N) [Σ_t (1 − h(x_t)) − Σ_s h(y_s)].

``normalization="learned"``: ζ is a free parameter, NCE's estimate of log Z (consistent:
at the optimum it matches the exact log Z of the estimated Λ as N → ∞).
How close is ζ̂ to the exact log Z of the estimated Λ? Their gap is a finite-sample bias
of order −p/N (p parameters, N samples; on a 10×10 synthetic grid it measured −2.8 p/N at
N = 20,000 and shrank as 1/N) plus a sampling error whose size
:func:`log_partition_standard_error` estimates.

``normalization="exact"``: ζ = log Z(θ) from the sparse Cholesky factor, and the chain
rule adds ``(∂J/∂ζ) ∂ log Z/∂θ = −½ (∂J/∂ζ) adjoint(m ⊙ Σ)`` (selected inversion); θ must
then stay positive definite.
"""

import numpy as np
from scipy.special import expit

from ._density import log_phi, weighted_log_phi_grad

__all__ = ["log_partition_standard_error", "nce_loss_grad"]


def nce_loss_grad(params, grid, data, noise, log_noise_data, log_noise_noise, *,
                  normalization="learned", normalizer=None):
    """NCE loss and gradient.

    Parameters
    ----------
    params : ndarray
        ``[θ, ζ]`` (learned normalization) or ``θ`` (exact).
    grid : GridParameterization
    data : ndarray, shape (N, D)
        Centred data samples.
    noise : ndarray, shape (M, D)
        Noise samples (centred coordinates); ν = M / N.
    log_noise_data, log_noise_noise : ndarray, shapes (N,) and (M,)
        ``log p_n`` of the data and of the noise samples.
    normalization : {"learned", "exact"}
    normalizer : GridNormalizer
        Needed for ``"exact"``.

    Returns
    -------
    loss : float
    grad : ndarray, like ``params``
    """
    n_data, n_noise = len(data), len(noise)
    log_nu = np.log(n_noise / n_data)
    if normalization == "learned":
        theta, zeta = params[:-1], params[-1]
    else:
        theta = params
        log_z, grad_log_z, _ = normalizer.value_and_grad(theta)
        zeta = log_z
    fields = grid.fields(theta)
    a_data = log_phi(fields, grid, data) - zeta - log_noise_data - log_nu
    a_noise = log_phi(fields, grid, noise) - zeta - log_noise_noise - log_nu
    # −log σ(a) = softplus(−a) and −log(1 − σ(a)) = softplus(a), computed stably.
    loss = (np.sum(np.logaddexp(0.0, -a_data)) + np.sum(np.logaddexp(0.0, a_noise))) / n_data
    d_data = -(1.0 - expit(a_data)) / n_data        # ∂J/∂G at the data
    d_noise = expit(a_noise) / n_data               # ∂J/∂G at the noise
    grad_theta = (weighted_log_phi_grad(grid, data, d_data)
                  + weighted_log_phi_grad(grid, noise, d_noise))
    grad_zeta = -(np.sum(d_data) + np.sum(d_noise))
    if normalization == "learned":
        return float(loss), np.append(grad_theta, grad_zeta)
    return float(loss), grad_theta + grad_zeta * grad_log_z


def log_partition_standard_error(theta, zeta, grid, data, noise, log_noise_data,
                                 log_noise_noise):
    """Standard error of NCE's learned ζ (log Z), from its estimating equation.

    At the optimum ``∂J/∂ζ = 0``: ``Σ_t (1 − h(x_t)) = Σ_s h(y_s)``, an M-estimating
    equation for ζ given θ. Its sandwich variance is

        SE(ζ̂)² = [Σ_t (ψ_t − ψ̄_x)² + Σ_s (ψ_s − ψ̄_y)²] / [Σ_t h_t(1−h_t) + Σ_s h_s(1−h_s)]²

    with ``ψ_t = 1 − h(x_t)``, ``ψ_s = h(y_s)``. It is large when the noise overlaps the
    data little (the classifier is sure) and shrinks as ``1/√N``; the gap between ζ̂ and
    the exact log Z of the estimated Λ is of this size.
    """
    n_data, n_noise = len(data), len(noise)
    fields = grid.fields(theta)
    log_nu = np.log(n_noise / n_data)
    h_data = expit(log_phi(fields, grid, data) - zeta - log_noise_data - log_nu)
    h_noise = expit(log_phi(fields, grid, noise) - zeta - log_noise_noise - log_nu)
    spread = np.sum((h_data - h_data.mean()) ** 2) + np.sum((h_noise - h_noise.mean()) ** 2)
    slope = np.sum(h_data * (1 - h_data)) + np.sum(h_noise * (1 - h_noise))
    return float(np.sqrt(spread) / slope)
