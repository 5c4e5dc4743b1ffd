"""Noise-contrastive estimation (Gutmann & Hyvärinen 2010, 2012).

A logistic classifier tells N data samples ``x_t`` from M = νN noise samples ``y_s`` with
the log-ratio ``G(u) = log p_m(u) − log p_n(u)``, where ``log p_m(u) = f_θ(u) − ζ``.
With ``h(u) = σ(G(u) − log ν)`` the loss is

    J(θ, ζ) = −(1/N) [Σ_t log h(x_t) + Σ_s log(1 − h(y_s))],

    ∂J/∂θ = −(1/N) [Σ_t (1 − h(x_t)) ∇_θ f(x_t) − Σ_s h(y_s) ∇_θ f(y_s)],
    ∂J/∂ζ =  (1/N) [Σ_t (1 − h(x_t)) − Σ_s h(y_s)].

``normalization="learned"``: ζ is a free parameter, NCE's estimate of log Z (consistent:
at the optimum it matches the exact log Z of the estimated Λ as N → ∞).
How close is ζ̂ to the exact log Z of the estimated Λ? Their gap is a finite-sample bias
of order −p/N (p parameters, N samples; on a 10×10 synthetic grid it measured −2.8 p/N at
N = 20,000 and shrank as 1/N; on an 8×8 grid −1.03 p/N at N = 5,000 and 20,000) plus a
sampling error about ten times smaller (its spread over 30 repeated 8×8 fits: 0.0035
nats at N = 5,000). The sandwich standard error of ζ given θ̂ understated that spread by
1.86× (it ignores θ̂'s own error), so none is reported.

``normalization="exact"``: ζ = log Z(θ) from the sparse Cholesky factor, and the chain
rule adds ``(∂J/∂ζ) ∂ log Z/∂θ = −½ (∂J/∂ζ) adjoint(m ⊙ Σ)`` (selected inversion); θ must
then stay positive definite.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np

from ._driver import NoisePool, OptimizerOptions, draw_noise, run

__all__ = ["NCEOptions", "chance_loss", "default_nu", "fit_nce", "nce_loss_grad",
           "noise_points_needed", "separated"]

# A final loss below this fraction of a know-nothing classifier's means separation.
_SEPARATED = 1e-3


@dataclass(frozen=True)
class NCEOptions:
    """NCE's own settings.

    Attributes
    ----------
    nu : float
        Noise samples per data sample (ν = M / N).
    normalization : {"learned", "exact"}
        ζ = log Z a free parameter, or the exact log Z of the model.
    noise_sampling : {"pool", "fresh"}
        Stochastic optimizers: minibatches of one pool of νN noise points drawn once,
        or fresh noise at every step.
    """

    nu: float = 1.0
    normalization: str = "learned"
    noise_sampling: str = "pool"


#: Points per parameter NCE's classifier is given at least, data and noise together.
_POINTS_PER_PARAMETER = 4


def noise_points_needed(n_samples, n_params):
    """The fewest noise points M with N + M ≥ 4p (see :func:`default_nu`): the size
    below which NCE's and ranking NCE's noise samples are not drawn."""
    return max(0, _POINTS_PER_PARAMETER * int(n_params) - int(n_samples))


def default_nu(n_samples, n_params):
    """The default noise ratio: 1, or the smallest integer ν with (1 + ν) N ≥ 4p.

    NCE is a logistic regression with one feature per parameter (``∇_θ f``, for the grid
    Gaussian the products of neighbouring pixels). N + M points in general position in p
    dimensions are linearly separable when N + M < 2p, and nearly always so well below
    it (Cover 1965): then the classifier separates data from noise, its loss goes to 0
    along a direction of θ that leaves the model's domain, and NCE has no finite estimate.
    Twice that bound leaves a margin. Measured (MNIST training images, 4 neighbours,
    p = 2,296, the default adaptive noise, random states 0–3 or 0–9): N = 2,000 with ν = 1
    (N + M = 1.7p) ended indefinite every time, ν = 2 (2.6p) PD at KL 1.3–1.7 from the MLE,
    ν = 4 (4.4p) PD at KL 0.33–0.38; N = 4,000 with ν = 1 (3.5p) PD at KL 0.82–0.97.
    """
    return float(max(1, -(-_POINTS_PER_PARAMETER * int(n_params) // int(n_samples)) - 1))


def chance_loss(nu=1.0):
    """NCE's loss when the model equals the noise: ``log(1 + ν) + ν log(1 + 1/ν)``."""
    return np.log1p(nu) + nu * np.log1p(1.0 / nu)


def separated(loss, reference):
    """Whether a final loss says the classifier separates data from noise.

    A convex classifier's loss only approaches 0 when the two samples are separable (then
    no finite estimate exists): below a thousandth of ``reference``, the know-nothing
    loss (:func:`chance_loss`, or ranking NCE's ``log(K + 1)``). The reference is not the
    starting loss: a fit started far from the noise starts at thousands of nats and may
    converge to a loss near chance.
    """
    return loss < _SEPARATED * reference


def nce_loss_grad(model, params, data, noise, log_noise_data, log_noise_noise, *,
                  normalization="learned"):
    """NCE loss and gradient.

    Parameters
    ----------
    model : EnergyModel
    params : ndarray
        ``[θ, ζ]`` (learned normalization) or ``θ`` (exact: needs
        ``model.log_partition``).
    data : ndarray, shape (N, D)
    noise : ndarray, shape (M, D)
        Noise samples; ν = M / N.
    log_noise_data, log_noise_noise : ndarray, shapes (N,) and (M,)
        ``log p_n`` of the data and of the noise samples.
    normalization : {"learned", "exact"}

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
        zeta, grad_log_z = model.log_partition(theta)
    # With a = G − log ν: −log σ(a) = softplus(−a) at the data (label +1) and
    # −log(1 − σ(a)) = softplus(a) at the noise (label −1); the model returns both
    # classes' loss, Σ (∂loss/∂a) ∇_θ f and Σ ∂loss/∂a, and ∂a/∂ζ = −1.
    loss, grad_theta, weight = model.logistic_terms(
        theta, data, zeta + log_noise_data + log_nu, noise, zeta + log_noise_noise + log_nu)
    loss = loss / n_data
    grad_theta = grad_theta / n_data
    grad_zeta = -weight / n_data
    if normalization == "learned":
        return float(loss), np.append(grad_theta, grad_zeta)
    return float(loss), grad_theta + grad_zeta * grad_log_z


def fit_nce(model, X, noise, *, theta0, scale, options=NCEOptions(),
            optimizer=OptimizerOptions(), rng=None, reference=None):
    """Fit θ (and ζ = log Z when learned) by NCE against one noise distribution.

    Parameters
    ----------
    model : EnergyModel
    X : ndarray, shape (N, D)
        Data, in the model's coordinates.
    noise : object
        ``sample(n, random_state)`` and ``score_samples(X)`` (log-density).
    theta0, scale : ndarray, shape (n_params,)
        Start and parameter scale (see :func:`sparsegauss.estimators._driver.run`). ζ
        starts at the exact log Z of ``theta0`` when the model has it, else at the value
        that balances the classifier at the start (the mean log-ratio of the data).
    options : NCEOptions
    optimizer : OptimizerOptions
    rng : numpy.random.Generator
    reference : ndarray, optional
        θ at which the relative stopping rule takes its reference gradient.

    Returns
    -------
    scipy.optimize.OptimizeResult
        ``x`` θ̂; ``log_partition_estimate`` (learned ζ);
        ``separated`` whether the classifier separated data from noise (then
        ``success`` is False).
    """
    rng = np.random.default_rng(rng)
    n_samples, n_pixels = X.shape
    nu = options.nu
    learned = options.normalization == "learned"
    log_noise_X = np.asarray(noise.score_samples(X), dtype=np.float64)   # scored once

    def noise_count(n):
        return max(1, int(round(nu * n)))

    pool = None
    if optimizer.stochastic and options.noise_sampling == "pool":
        pool = NoisePool(noise, noise_count(n_samples), n_pixels,
                         noise_count(optimizer.batch_size), rng, X.dtype)

    def draw(rows):
        batch = X if rows is None else model.minibatch(X, rows)
        if pool is not None:
            samples, log_noise_samples = pool.next()
        else:
            samples, log_noise_samples = draw_noise(noise, noise_count(len(batch)),
                                                    n_pixels, rng, X.dtype)
        log_noise_batch = log_noise_X if rows is None else log_noise_X[rows]
        return batch, (samples, log_noise_batch, log_noise_samples)

    def objective(params, batch, drawn):
        return nce_loss_grad(model, params, batch, *drawn,
                             normalization=options.normalization)

    x0, scale = np.asarray(theta0, dtype=np.float64), np.asarray(scale, dtype=np.float64)
    if learned:
        if model.has_log_partition:
            # The value alone, from a frozen copy that is dropped at once: the model's
            # own factor would be kept through a fit that needs no other (one factor's
            # size, 1.7 GB at 2048×2048; its gradient another, for the inverse).
            zeta0 = float(model.frozen(x0).log_partition)
        else:
            zeta0 = float(np.mean(model.log_density(x0, X[:1000]) - log_noise_X[:1000]))
        # ζ is in nats and its gradient is O(1): no rescaling.
        x0, scale = np.append(x0, zeta0), np.append(scale, 1.0)
        reference = None if reference is None else np.append(reference, zeta0)
    estimates = []

    def record(state):
        if learned:
            estimates.append(float(scale[-1] * state.x[-1]))
        if optimizer.callback is not None:
            optimizer.callback(state)

    result = run(objective, draw, n_samples, x0, scale,
                 dataclasses.replace(optimizer, callback=record), rng,
                 reference=reference, name="nce")
    result.separated = separated(result.fun, chance_loss(nu))
    if result.separated:
        # The loss of a convex classifier only approaches 0 when the data and the noise
        # are separable: then no finite estimate exists and θ̂ is wherever it stopped.
        result.success = False
        result.message = (
            f"the classifier separates the data from the noise (loss {result.fun:.3g}, "
            f"from {result.history[0]['loss']:.3g}): NCE has no finite estimate with "
            "this noise. Use noise closer to the data")
    if learned:
        params = result.x
        result.x = params[:-1]
        result.log_partition_estimate = float(params[-1])
        for row, value in zip(result.history, [float(x0[-1])] + estimates):
            row["log_partition_estimate"] = value
    return result
