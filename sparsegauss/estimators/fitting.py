"""Run any estimator of an unnormalized grid Gaussian with any optimizer.

Every estimator starts at the independent model ``Λ₀ = diag(1/S_pp)`` and works in
parameters rescaled by ``1/√diag(H)``, with ``H`` the log-likelihood's Hessian there
(see :func:`sparsegauss.estimators.mle.hessian_diagonal`): pixel scales that differ by
orders of magnitude would otherwise stall every first-order method. Full-batch optimizers
(``"lbfgs"``, ``"scipy-lbfgs"``, ``"newton-cg"``) see all the data and one fixed noise
sample; stochastic ones (``"adam"``, ``"sgd"``, ``"rmsprop"``) a fresh minibatch at every
step, with NCE's noise taken from one pool of νN noise points drawn once
(``noise_sampling="pool"``) or drawn afresh (``"fresh"``).
"""

import time

import numpy as np
import scipy.sparse as sp
from scipy.optimize import OptimizeResult

from ..exceptions import SparseGaussError
from ..noise import DiagonalNoise, GridNoise, make_noise
from ..normalization import GridNormalizer
from ..optimize import STOCHASTIC, minimize
from ..stats import pattern_moments
from .cd import cd_gradient, gibbs_sample
from .cnce import cnce_loss_grad, default_perturbation_std
from .mle import hessian_diagonal, independent_start
from .nce import log_partition_standard_error, nce_loss_grad
from .rnce import rnce_loss_grad
from .score_matching import fit_score_matching, fit_score_matching_barrier, sm_loss_grad

__all__ = ["fit_estimator", "score_matching_closed_form", "METHODS", "DEFAULT_OPTIMIZER"]

METHODS = ("nce", "rnce", "cnce", "sm", "cd")
# A final NCE loss below this fraction of a know-nothing classifier's means separation.
_SEPARATED = 1e-3
#: The optimizer each method uses unless told otherwise.
DEFAULT_OPTIMIZER = {"nce": "lbfgs", "rnce": "lbfgs", "cnce": "lbfgs", "sm": "lbfgs",
                     "cd": "adam"}


def _scaling(moments, grid):
    """Start θ₀, the variance per pixel, and the Jacobi scale of θ at θ₀."""
    theta0 = independent_start(moments, grid)
    covariance = np.zeros_like(moments)
    covariance[0] = 1.0 / grid.fields(theta0)[0]
    return theta0, moments[0], 1.0 / np.sqrt(hessian_diagonal(covariance, grid))


def _antithetic_normals(rng, n, k, d):
    """Standard normals for k perturbations per sample, in ± pairs.

    The perturbation density is symmetric, so ``x − ε`` is as valid a partner of ``x`` as
    ``x + ε``. Using both cancels the log-ratio's odd term ``xᵀΛε`` between the two, the
    main source of CNCE's sampling noise (on an 8×8 grid with 20,000 samples the KL to
    the truth fell from 0.096 to 0.063 with K = 5, and from 0.024 to 0.017 with K = 20).
    """
    half = rng.standard_normal((n, (k + 1) // 2, d))
    return np.concatenate([half, -half], axis=1)[:, :k].reshape(n * k, d)


def chance_loss(method, nu=1.0, n_noise=10):
    """NCE's or ranking NCE's loss when the model knows nothing (it equals the noise).

    NCE (per data sample, ν noise points each): ``log(1 + ν) + ν log(1 + 1/ν)``, 2 log 2
    for ν = 1; ranking NCE: ``log(K + 1)``.
    """
    return np.log1p(nu) + nu * np.log1p(1.0 / nu) if method == "nce" else np.log1p(n_noise)


def separated(loss, method, nu=1.0, n_noise=10):
    """Whether a final loss says the classifier separates data from noise.

    A convex classifier's loss only approaches 0 when the two samples are separable (then
    no finite estimate exists): below a thousandth of :func:`chance_loss`. The reference
    is the know-nothing loss, not the starting one: a fit started far from the noise
    starts at thousands of nats and may converge to a loss near chance.
    """
    return loss < _SEPARATED * chance_loss(method, nu, n_noise)


def noise_start(noise_model, grid):
    """θ of the noise distribution in the model's parameterization, or None.

    Defined for the Gaussian noises of :mod:`sparsegauss.noise` whose precision lies on
    the model's pattern with the model's tying (diagonal and isotropic noise always;
    4-neighbour grid noise in a 4- or 8-neighbour model).
    """
    if isinstance(noise_model, DiagonalNoise):
        precision = sp.diags(1.0 / noise_model.variances, format="csc")
    elif isinstance(noise_model, GridNoise) and noise_model.model.is_positive_definite_:
        precision = noise_model.model.precision_
    else:
        return None
    if precision.shape[0] != grid.n_pixels:
        return None
    theta = grid.theta_from_precision(precision)
    error = (grid.precision(theta) - precision).tocsr().data
    # Not representable (e.g. untied noise in a tied model) means errors of the order of
    # the couplings themselves; reading a tie back is a mean over up to D entries, whose
    # rounding grows with D (2e-14 relative on 32×32, beyond 1e-12 on 1024×1024).
    if np.max(np.abs(error), initial=0.0) > 1e-8 * np.max(np.abs(precision.data)):
        return None
    return theta


class _Batches:
    """Minibatches of row indices of ``n_rows`` rows: a fresh permutation every epoch."""

    def __init__(self, n_rows, batch_size, rng):
        self.n_rows, self.batch_size, self.rng = n_rows, min(batch_size, n_rows), rng
        self.order, self.position = rng.permutation(n_rows), 0

    def next(self):
        if self.position + self.batch_size > self.n_rows:
            self.order, self.position = self.rng.permutation(self.n_rows), 0
        rows = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return np.sort(rows)      # sorted: the gather reads memory in order


#: Values per block of a noise draw: the float64 transient of one block is 32 MiB.
_NOISE_BLOCK_VALUES = 1 << 22


def draw_noise(noise_model, n_samples, n_pixels, rng, dtype=np.float64):
    """``n_samples`` noise samples in ``dtype``, and their noise log-densities.

    Drawn block by block into one array of the data's dtype, so that float32 data get
    float32 noise without a float64 copy of the whole sample (at 512×512, 500 samples
    are 1 GiB in float64). The log-densities are those of the stored (rounded) samples,
    so that data and noise enter the classifier on the same footing.
    """
    out = np.empty((n_samples, n_pixels), dtype=dtype)
    block = int(max(1, _NOISE_BLOCK_VALUES // n_pixels))
    for start in range(0, n_samples, block):
        stop = min(start + block, n_samples)
        drawn = np.asarray(noise_model.sample(stop - start, rng))
        if drawn.size != (stop - start) * n_pixels:
            raise ValueError(f"The noise's sample({stop - start}, random_state) returned "
                             f"shape {drawn.shape}; expected ({stop - start}, {n_pixels}), "
                             "one row of H*W pixels per sample.")
        out[start:stop] = drawn.reshape(stop - start, n_pixels)
    return out, np.asarray(noise_model.score_samples(out), dtype=np.float64)


class _NoisePool:
    """A fixed sample from the noise and its log-densities, served in minibatches.

    NCE as Gutmann & Hyvärinen define it uses one sample of M = νN noise points. Drawing
    it once and scoring it once, instead of fresh noise at every step, removes the
    stochastic fits' main cost: on MNIST a grid-noise draw of 256 images took 4 ms of a
    6 ms Adam step, while the whole pool of 60,000 is drawn in about one second.
    """

    def __init__(self, noise_model, size, n_pixels, batch_size, rng, dtype=np.float64):
        self.samples, self.log_density = draw_noise(noise_model, size, n_pixels, rng, dtype)
        self.batches = _Batches(size, batch_size, rng)

    def next(self):
        rows = self.batches.next()
        return self.samples[rows], self.log_density[rows]


def score_matching_closed_form(X, grid, *, sums=None, n_samples=None):
    """The score-matching closed form as an optimizer result (one "iteration").

    ``X`` centred data, or ``None`` with the chunk-summed moments ``sums`` of
    :func:`~sparsegauss.estimators.score_matching.extended_moment_sums` and ``n_samples``.
    """
    start = time.perf_counter()
    theta, loss = fit_score_matching(X, grid, sums=sums, n_samples=n_samples)
    return OptimizeResult(x=theta, fun=loss, nit=1, success=True, residual=0.0,
                          message="solved the score-matching system exactly",
                          history=[dict(iteration=1, loss=loss,
                                        time=time.perf_counter() - start, residual=0.0,
                                        nfev=1)])


def fit_estimator(method, X, grid, *, random_state=None, optimizer=None, tol=1e-6,
                  max_iter=500, callback=None, learning_rate=1e-2, schedule="cosine",
                  batch_size=256, nu=1.0, noise="auto", noise_sampling="pool",
                  normalization="learned",
                  n_noise=10, perturbation_std=None, cd_steps=1, sampler="gibbs",
                  persistent=False, sm_solver="closed-form", noise_stencil=4,
                  moments=None):
    """Fit θ (and NCE's log Z) to centred data ``X`` with one estimator.

    Parameters are those of :class:`sparsegauss.GridGaussian` (validated there);
    ``moments`` are X's second moments on the pattern (stencil layout, divided by
    ``len(X)``) when the caller has them, saving a pass over the data.

    Returns
    -------
    scipy.optimize.OptimizeResult
        ``x`` is θ̂; also ``log_partition_estimate`` and ``log_partition_stderr`` (NCE
        with learned normalization),
        ``noise`` (NCE, ranking NCE), ``perturbation_std`` (CNCE), ``history``.
    """
    rng = np.random.default_rng(random_state)
    optimizer = optimizer or DEFAULT_OPTIMIZER[method]
    stochastic = optimizer in STOCHASTIC
    n_samples = len(X)
    if method == "sm" and sm_solver == "closed-form":
        return score_matching_closed_form(X, grid)
    if moments is None:
        moments = pattern_moments(X, grid) / n_samples
    theta0, variances, scale = _scaling(moments, grid)
    independent = theta0
    extras = {}

    if method == "sm" and sm_solver == "barrier":
        return fit_score_matching_barrier(X, grid, theta0=theta0, tol=tol,
                                          max_iter=max_iter, callback=callback)
    if method == "cd" and not stochastic:
        raise ValueError("Contrastive divergence has a stochastic gradient and no loss to "
                         f"line-search; use optimizer 'adam', 'sgd' or 'rmsprop', not "
                         f"{optimizer!r}.")

    normalizer = GridNormalizer(grid) if method in ("nce", "cd") else None
    x0 = theta0
    if method in ("nce", "rnce"):
        noise_model = make_noise(noise, X, grid.shape, stencil=noise_stencil)
        extras["noise"] = noise_model
        # NCE's loss is convex in (θ, ζ), so the start only sets the speed. From the
        # independent model the log-ratios of 784-pixel images are in the hundreds and the
        # logistic loss saturates (L-BFGS did not converge in 1000 steps on MNIST). The
        # usual start is the noise itself, when the model family holds it: the log-ratio
        # is then 0 and the classifier starts balanced, knowing nothing of the data.
        start = noise_start(noise_model, grid)
        if start is not None:
            theta0 = x0 = start
    if method == "nce" and normalization == "learned":
        # ζ (log Z) is in nats and its gradient is O(1): no rescaling.
        x0 = np.append(theta0, normalizer.log_partition(theta0))
        scale = np.append(scale, 1.0)
    if method == "cnce":
        sigma = (default_perturbation_std(variances) if perturbation_std is None
                 else float(perturbation_std))
        extras["perturbation_std"] = sigma

    batch_size = min(batch_size, n_samples)
    batches = _Batches(n_samples, batch_size, rng) if stochastic else None
    chains = {}
    if method in ("nce", "rnce"):
        log_noise_X = noise_model.score_samples(X)        # scored once, not every step
        per_sample = nu if method == "nce" else n_noise

        def noise_count(n):
            return max(1, int(round(per_sample * n)))

        pool = None
        if stochastic and noise_sampling == "pool":
            # NCE's M = νN noise points; ranking NCE reuses a pool of N (its K N points
            # would be K times the data's memory), at least one minibatch's K n.
            size = (noise_count(n_samples) if method == "nce"
                    else max(n_samples, noise_count(batch_size)))
            pool = _NoisePool(noise_model, size, X.shape[1], noise_count(batch_size), rng,
                              X.dtype)

    def draw(rows):
        """The random part of one objective (noise, pairs or negative samples) for the
        data rows ``rows`` (all of X when None)."""
        batch = X if rows is None else X[rows]
        if method in ("nce", "rnce"):
            if pool is not None:
                samples, log_noise_samples = pool.next()
            else:
                samples, log_noise_samples = draw_noise(
                    noise_model, noise_count(len(batch)), X.shape[1], rng, X.dtype)
            log_noise_batch = log_noise_X if rows is None else log_noise_X[rows]
            return batch, (samples, log_noise_batch, log_noise_samples)
        if method == "cnce":
            return batch, (np.repeat(batch, n_noise, axis=0)
                           + sigma * _antithetic_normals(rng, len(batch), n_noise,
                                                         batch.shape[1]),)
        return batch, ()

    def objective(theta_and_more, batch, drawn):
        if method == "nce":
            return nce_loss_grad(theta_and_more, grid, batch, *drawn,
                                 normalization=normalization, normalizer=normalizer)
        if method == "rnce":
            return rnce_loss_grad(theta_and_more, grid, batch, *drawn)
        if method == "cnce":
            return cnce_loss_grad(theta_and_more, grid, batch, *drawn)
        if method == "sm":
            return sm_loss_grad(theta_and_more, grid, batch)
        return _cd_objective(theta_and_more, batch)

    def _cd_objective(theta, batch):
        normalizer.factorize(theta)          # raises outside the cone before sampling
        if sampler == "exact":
            negatives = normalizer.factorize(theta).sample(len(batch), rng)
        elif persistent:
            start = chains.get("state")
            if start is None or len(start) != len(batch):
                start = batch
            negatives = gibbs_sample(start, grid, theta, cd_steps, rng)
            chains["state"] = negatives
        else:
            negatives = gibbs_sample(batch, grid, theta, cd_steps, rng)
        return cd_gradient(theta, grid, batch, negatives, normalizer)

    if stochastic:
        def fun(u):
            loss, grad = objective(scale * u, *draw(batches.next()))
            return loss, scale * grad
    else:
        fixed = draw(None)

        def fun(u):
            loss, grad = objective(scale * u, *fixed)
            return loss, scale * grad

    estimates = []

    def record(state):
        if method == "nce" and normalization == "learned":
            estimates.append(float(scale[-1] * state.x[-1]))
        if callback is not None:
            callback(state)

    first_gradient = []

    def relative_gradient(u, loss, grad):
        # Scale-free: the objectives' gradients differ by orders of magnitude (CNCE's is
        # O(σ²)), so full-batch fits stop when the largest rescaled gradient entry has
        # fallen by the factor ``tol`` below its value at the independent model.
        size = float(np.max(np.abs(grad)))
        if not first_gradient:
            first_gradient.append(max(size, np.finfo(float).tiny))
        return size / first_gradient[0]

    if not stochastic and x0.size and not np.array_equal(x0[:independent.size], independent):
        # Started elsewhere than the independent model (NCE at the grid MLE): the gradient
        # there is the reference scale, so that "relative" means the same for every start.
        reference = x0.copy()
        reference[:independent.size] = independent
        first_gradient.append(max(float(np.max(np.abs(fun(reference / scale)[1]))),
                                  np.finfo(float).tiny))
    result = minimize(fun, x0 / scale, method=optimizer, tol=tol, maxiter=max_iter,
                      callback=record, learning_rate=learning_rate, schedule=schedule,
                      convergence=relative_gradient)
    params = scale * result.x
    if not np.all(np.isfinite(params)):
        raise SparseGaussError(f"The {method} fit produced non-finite parameters.")
    if method in ("nce", "rnce") and separated(result.fun, method, nu, n_noise):
        # The loss of a convex classifier only approaches 0 when the data and the noise
        # are separable: then no finite estimate exists and θ̂ is wherever it stopped.
        result.success = False
        result.message = (
            f"the classifier separates the data from the noise (loss {result.fun:.3g}, "
            f"from {result.history[0]['loss']:.3g}): {method.upper()} has no finite "
            "estimate with this noise. Use noise closer to the data ('empirical' matches "
            "all second moments)")
    result.x = params
    if method == "nce" and normalization == "learned":
        result.x = params[:-1]
        extras["log_partition_estimate"] = float(params[-1])
        # Its standard error, on all the data and ν N noise points: the pool's or the
        # full-batch fit's fixed sample when the fit had one (the sandwich variance is
        # evaluated on the sample it was fitted to, and no second sample is held).
        if pool is not None:
            noise_sample, log_noise_sample = pool.samples, pool.log_density
        elif not stochastic:
            noise_sample, _, log_noise_sample = fixed[1]
        else:
            noise_sample, log_noise_sample = draw_noise(
                noise_model, noise_count(n_samples), X.shape[1], rng, X.dtype)
        extras["log_partition_stderr"] = log_partition_standard_error(
            params[:-1], params[-1], grid, X, noise_sample, log_noise_X, log_noise_sample)
        values = [float(x0[-1])] + estimates
        for row, value in zip(result.history, values):
            row["log_partition_estimate"] = value
    result.update(extras)
    return result
