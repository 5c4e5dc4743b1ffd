"""The grid Gaussian's estimators: the facade's parameters → an estimator module.

:class:`sparsegauss.GridGaussian` calls :func:`fit_estimator` with its own parameters;
this module turns them into a :class:`~sparsegauss.models.GridGaussianEnergy`, the
estimator's options and a start, and calls the estimator's module, each written once
against :class:`~sparsegauss.models.EnergyModel` (:mod:`.nce`, :mod:`.rnce`, :mod:`.cnce`,
:mod:`.score_matching`, :mod:`.cd`). The Gaussian-specific parts live here: every
estimator starts at the independent model ``Λ₀ = diag(1/S_pp)`` (NCE and ranking NCE at
their noise when the model family holds it) and works in parameters rescaled by
``1/√diag(H)``, with ``H`` the log-likelihood's Hessian at ``Λ₀`` (see
:func:`sparsegauss.estimators.mle.hessian_diagonal`): pixel scales that differ by
orders of magnitude would otherwise stall every first-order method. The exact shortcuts
(score matching's closed form and barrier) are called directly.
"""

import dataclasses
import time

import numpy as np
import scipy.sparse as sp
from scipy.optimize import OptimizeResult

from .._blas import one_blas_thread
from ..models import GridGaussianEnergy
from ..noise import DiagonalNoise, GridNoise, IsotropicNoise, make_noise
from ..stats import pattern_moments
from .adaptive import (ADAPT_LEARNING_RATE, ADAPT_STEPS_FULL_BATCH, adapting_share,
                       adapt_noise, join_phases)
from .cd import CD_BETAS, CDOptions, fit_cd
from .cnce import CNCEOptions, ScaledPerturbation, fit_cnce, whitened_perturbation_scale
from .mle import hessian_diagonal, independent_start
from .nce import NCEOptions, fit_nce
from .rnce import RNCEOptions, fit_rnce
from .score_matching import fit_score_matching, fit_score_matching_barrier, fit_sm_gradient
from ._driver import OptimizerOptions

__all__ = ["fit_estimator", "score_matching_closed_form", "METHODS", "DEFAULT_OPTIMIZER"]

METHODS = ("nce", "rnce", "cnce", "sm", "cd")
#: The optimizer each method uses unless told otherwise, chosen by measurement on MNIST
#: (60,000 images, 2 cores): NCE with full-batch L-BFGS took 139 s, with Adam (2,000
#: steps) 3.9 s to the same held-out likelihood (KL to the MLE 0.020, 4 neighbours);
#: ranking NCE 12 s with Adam.
DEFAULT_OPTIMIZER = {"nce": "adam", "rnce": "adam", "cnce": "adam", "sm": "lbfgs",
                     "cd": "adam"}

#: Share of a second phase's (stochastic) steps, after the adaptive pilot, averaged into
#: the estimate. CNCE, by measurement (16×16 grid Gaussian, 10⁵
#: samples, KL to the truth over the MLE's, 4 neighbours): K = 10, last iterate 25x, average of the last half 14x; K = 30, 10x →
#: 5.5x; K = 64, average of the last half 3.0x, of 75% 2.4x, of all 2.1x. MNIST, 4 / 8
#: neighbours, K = 21: held-out log-likelihood 0.21 / 0.45 nats/image below the MLE's
#: averaging half, 0.09 / 0.34 averaging all. CNCE's gradient noise is ≈ D/K times the
#: data's; the average spreads it over the phase instead of its last few hundred steps.
#:
#: NCE: the share of its second-phase steps after the adaptive pilot (1,000 of its default
#: 3,500) averaged into its estimate (θ and the learned log Z), by measurement
#: (2026-12-04, one fit per random state): on a 16×16 grid Gaussian with 10⁵ samples the
#: last iterate of 1,000 steps was 4.5–4.8× the MLE's KL to the truth (4 and 8
#: neighbours; 2.5–2.8× after the former 2,000), the average of the last half 2.6–2.9×,
#: of all 2.5–2.7×; on MNIST (random states 0–9, 8 neighbours) KL to the MLE median /
#: largest 0.101 / 0.138 for the last iterate, 0.115 / 0.151 averaging half, 0.157 /
#: 0.202 averaging all (the first steps still move away from the pilot), held-out at
#: most 0.18 / 0.19 / 0.25 nats/image below the MLE's; 4 neighbours 0.034 / 0.036 / —.
#:
#: Ranking NCE: the same half of its 1,000 second-phase steps (see ``ADAPTIVE_STEPS`` in
#: :mod:`.adaptive` for its figures).
SECOND_PHASE_AVERAGE = {"nce": 0.5, "rnce": 0.5, "cnce": 1.0}


def gaussian_start(moments, grid):
    """Start θ₀ (the independent model) and the Jacobi scale of θ at θ₀."""
    theta0 = independent_start(moments, grid)
    covariance = np.zeros_like(moments)
    covariance[0] = 1.0 / grid.fields(theta0)[0]
    return theta0, 1.0 / np.sqrt(hessian_diagonal(covariance, grid))


def noise_start(noise_model, grid):
    """θ of the noise distribution in the model's parameterization, or None.

    Defined for the Gaussian noises of :mod:`sparsegauss.noise` whose precision lies on
    the model's pattern with the model's tying (diagonal and isotropic noise always;
    4-neighbour grid noise in a 4- or 8-neighbour model).
    """
    if isinstance(noise_model, DiagonalNoise):
        precision = sp.diags(1.0 / noise_model.variances, format="csc")
    elif (isinstance(noise_model, GridNoise) and noise_model.distribution.is_positive_definite
          and not np.any(noise_model.distribution.mean)):
        precision = noise_model.distribution.precision
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
                  n_noise=10, perturbation_std=None, cd_steps=1, sampler="exact",
                  persistent=False, sm_solver="closed-form", noise_stencil=4,
                  moments=None):
    """Fit θ (and NCE's log Z) of a grid Gaussian to centred data ``X`` (an array, or a
    :class:`~sparsegauss.stats.RowSelection` whose centre the passes subtract as they
    read the rows: :class:`~sparsegauss.GridGaussian` passes its data so, uncopied).

    Parameters are those of :class:`sparsegauss.GridGaussian` (validated there);
    ``moments`` are X's second moments on the pattern (stencil layout, divided by
    ``len(X)``) when the caller has them, saving a pass over the data.

    Returns
    -------
    scipy.optimize.OptimizeResult
        ``x`` is θ̂; also ``log_partition_estimate`` (NCE with learned normalization),
        ``noise`` (NCE, ranking NCE), ``perturbation`` (CNCE), ``history``.
    """
    rng = np.random.default_rng(random_state)
    if method == "sm" and sm_solver == "closed-form":
        return score_matching_closed_form(X, grid)
    if moments is None:
        moments = pattern_moments(X, grid) / len(X)
    theta0, scale = gaussian_start(moments, grid)
    if method == "sm" and sm_solver == "barrier":
        return fit_score_matching_barrier(X, grid, theta0=theta0, tol=tol,
                                          max_iter=max_iter, callback=callback)
    model = GridGaussianEnergy(grid)
    run_options = OptimizerOptions(
        optimizer=optimizer or DEFAULT_OPTIMIZER[method], tol=tol, max_iter=max_iter,
        learning_rate=learning_rate, schedule=schedule,
        batch_size=min(batch_size, len(X)), callback=callback)
    common = dict(scale=scale, optimizer=run_options, rng=rng)
    adapted = None
    if method in ("nce", "rnce"):
        if noise in ("auto", "adaptive"):
            frozen, adapted, common["optimizer"] = pilot_phase(
                model, X, theta0=theta0, scale=scale, options=run_options, rng=rng,
                method=method)
            noise_model = GridNoise(frozen)
            start = adapted.x
        else:
            noise_model = make_noise(noise, X, grid.shape, stencil=noise_stencil)
            # NCE's loss is convex in (θ, ζ), so the start only sets the speed. From the
            # independent model the log-ratios of 784-pixel images are in the hundreds and
            # the logistic loss saturates (L-BFGS did not converge in 1000 steps on
            # MNIST). The usual start is the noise itself, when the model family holds it:
            # the log-ratio is then 0 and the classifier starts balanced, knowing nothing
            # of the data. The relative stopping rule keeps the independent model as its
            # reference.
            start = noise_start(noise_model, grid)
            start = theta0 if start is None else start
        if method == "nce":
            result = fit_nce(model, X, noise_model, theta0=start, reference=theta0,
                             options=NCEOptions(nu=nu, normalization=normalization,
                                                noise_sampling=noise_sampling), **common)
        else:
            result = fit_rnce(model, X, noise_model, theta0=start, reference=theta0,
                              options=RNCEOptions(n_noise=n_noise,
                                                  noise_sampling=noise_sampling), **common)
        result.noise = noise_model
    elif method == "cnce":
        if perturbation_std is None:
            # Perturb along the pilot's covariance (score matching in that metric for
            # small ε, whose answer for a Gaussian is the MLE when the metric is the
            # MLE's covariance; see the cnce module). On MNIST isotropic ε (the former
            # default) ended indefinite, and so did per-pixel ε of 0.1 and 0.3 × each
            # pixel's std (at 1 × the std: PD, but KL 202 from the MLE after 1,000 steps).
            frozen, adapted, common["optimizer"] = pilot_phase(
                model, X, theta0=theta0, scale=scale, options=run_options, rng=rng,
                method=method)
            perturbation = ScaledPerturbation(frozen,
                                              whitened_perturbation_scale(grid.n_pixels))
            start = adapted.x
        else:
            perturbation = IsotropicNoise(float(perturbation_std) ** 2, grid.n_pixels)
            start = theta0
        result = fit_cnce(model, X, theta0=start, perturbation=perturbation,
                          options=CNCEOptions(n_noise=n_noise), **common)
        result.perturbation = perturbation
    elif method == "sm":
        result = fit_sm_gradient(model, X, theta0=theta0, **common)
    else:
        # The grid Gaussian's stochastic maximum likelihood (CD's exact samples, and the
        # adaptive noise's first phase in pilot_phase) has its own Adam decay rates, by
        # measurement (CD_BETAS); set here, not in fit_cd, which the DEM also runs.
        common["optimizer"] = dataclasses.replace(run_options, betas=CD_BETAS)
        result = fit_cd(model, X, theta0=theta0,
                        options=CDOptions(cd_steps=cd_steps, sampler=sampler,
                                          persistent=persistent), **common)
    if adapted is not None:
        result = join_phases(adapted, result)
    return result


def pilot_phase(model, X, *, theta0, scale, options, rng, method):
    """The adaptive schedule's first phase (:func:`.adaptive.adapt_noise`): stochastic
    maximum likelihood from ``theta0`` with the model's exact expectation.

    A stochastic optimizer spends ``adapting_share(method)`` of its ``max_iter`` steps
    here and keeps the rest, whose iterates it averages by ``SECOND_PHASE_AVERAGE``
    (started at the pilot, the second phase has no transient to leave out); a full-batch one keeps its ``max_iter`` for the second phase, after
    ``ADAPT_STEPS_FULL_BATCH`` Adam steps at ``ADAPT_LEARNING_RATE``. The first phase
    takes all its steps: a plateau of its minibatch loss (tol > 0) came early, at KL 5
    from the MLE instead of 2.8 (4,000 MNIST images, tol 1e-4), and NCE against that
    noise left the cone.

    Returns
    -------
    frozen : object
        ``model.frozen(θ_A)``, the pilot estimate as a distribution.
    adapted : scipy.optimize.OptimizeResult
        The first phase.
    second : OptimizerOptions
        The options of the second phase.
    """
    if options.stochastic:
        steps = max(1, int(round(adapting_share(method) * options.max_iter)))
        adapting = dataclasses.replace(options, tol=0.0, betas=CD_BETAS)
        second = dataclasses.replace(options, max_iter=max(1, options.max_iter - steps),
                                     average=SECOND_PHASE_AVERAGE.get(method, 0.0))
    else:
        steps = ADAPT_STEPS_FULL_BATCH
        adapting = dataclasses.replace(options, optimizer="adam",
                                       learning_rate=ADAPT_LEARNING_RATE, tol=0.0,
                                       betas=CD_BETAS)
        second = options
    # Every step factorizes and inverts, each kernel on one BLAS thread: one context for
    # the phase instead of two a step (threadpoolctl's set and restore of the counts).
    with one_blas_thread():
        frozen, adapted = adapt_noise(model, X, theta0=theta0, steps=steps, scale=scale,
                                      optimizer=adapting, rng=rng)
    return frozen, adapted, second
