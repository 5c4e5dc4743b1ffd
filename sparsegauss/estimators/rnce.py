"""Ranking NCE (InfoNCE; Jozefowicz et al. 2016, van den Oord et al. 2018).

Each data sample ``x_i`` is ranked against K noise samples ``y_i1..y_iK``: with
``s_i0 = G(x_i)``, ``s_ik = G(y_ik)`` and ``G = f_θ − log p_n`` (any normalizing
constant cancels in the softmax), the loss is the cross-entropy of picking the data,

    J(θ) = (1/N) Σ_i [logsumexp_k s_ik − s_i0],
    ∂J/∂θ = (1/N) Σ_i [(π_i0 − 1) ∇_θ f(x_i) + Σ_{k≥1} π_ik ∇_θ f(y_ik)],

with ``π_i = softmax(s_i)``.
"""

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp, softmax

from ._driver import NoisePool, OptimizerOptions, draw_noise, run, whole_data
from .nce import noise_points_needed, separated

__all__ = ["RNCEOptions", "fit_rnce", "rnce_loss_grad"]


@dataclass(frozen=True)
class RNCEOptions:
    """Ranking NCE's own settings.

    Attributes
    ----------
    n_noise : int
        K, noise samples ranked against each data sample.
    noise_sampling : {"pool", "fresh"}
        Stochastic optimizers: noise from one pool of max(N, K·batch) points drawn once
        (K N points would be K times the data's memory), or fresh at every step.
    """

    n_noise: int = 10
    noise_sampling: str = "pool"


def rnce_loss_grad(model, theta, data, noise, log_noise_data, log_noise_noise):
    """Ranking-NCE loss and gradient.

    Parameters
    ----------
    model : EnergyModel
    theta : ndarray, shape (n_params,)
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
    scores = np.empty((n_data, len(noise) // n_data + 1))
    f_data, vjp_data = model.log_density_vjp(theta, data)
    f_noise, vjp_noise = model.log_density_vjp(theta, noise)
    scores[:, 0] = f_data - log_noise_data
    scores[:, 1:] = (f_noise - log_noise_noise).reshape(n_data, -1)
    loss = np.mean(logsumexp(scores, axis=1) - scores[:, 0])
    weights = softmax(scores, axis=1) / n_data
    weights[:, 0] -= 1.0 / n_data
    grad = vjp_data(weights[:, 0]) + vjp_noise(weights[:, 1:].ravel())
    return float(loss), grad


def fit_rnce(model, X, noise, *, theta0, scale, options=RNCEOptions(),
             optimizer=OptimizerOptions(), rng=None, reference=None):
    """Fit θ by ranking NCE against one noise distribution.

    Parameters are those of :func:`sparsegauss.estimators.nce.fit_nce` (no ζ: the
    normalizing constant cancels in the softmax).

    Returns
    -------
    scipy.optimize.OptimizeResult
        ``separated`` says whether the ranking was perfect (no finite estimate).
    """
    rng = np.random.default_rng(rng)
    n_samples, n_pixels = X.shape
    k = options.n_noise
    log_noise_X = np.asarray(noise.score_samples(X), dtype=np.float64)
    pool = None
    if optimizer.stochastic and options.noise_sampling == "pool":
        # At least N points, and enough that data and noise together are not separable
        # (noise_points_needed): on 2,000 MNIST images a pool of 2,000 ended indefinite
        # for random states 0-2.
        size = max(n_samples, k * min(optimizer.batch_size, n_samples),
                   noise_points_needed(n_samples, model.n_params))
        pool = NoisePool(noise, size, n_pixels, k * min(optimizer.batch_size, n_samples),
                         rng, X.dtype)

    def draw(rows):
        batch = whole_data(X) if rows is None else model.minibatch(X, rows)
        if pool is not None:
            samples, log_noise_samples = pool.next()
        else:
            samples, log_noise_samples = draw_noise(noise, k * len(batch), n_pixels, rng,
                                                    X.dtype)
        log_noise_batch = log_noise_X if rows is None else log_noise_X[rows]
        return batch, (samples, log_noise_batch, log_noise_samples)

    def objective(theta, batch, drawn):
        return rnce_loss_grad(model, theta, batch, *drawn)

    result = run(objective, draw, n_samples, theta0, scale, optimizer, rng,
                 reference=reference, name="rnce")
    result.separated = separated(result.fun, np.log1p(k))
    if result.separated:
        result.success = False
        result.message = (
            f"the ranking separates the data from the noise (loss {result.fun:.3g}, "
            f"from {result.history[0]['loss']:.3g}): ranking NCE has no finite estimate "
            "with this noise. Use noise closer to the data")
    return result
