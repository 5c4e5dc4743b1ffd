"""``GridGaussian``: the estimator users fit, score, sample and save."""

import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import validate_data

from .estimators.adaptive import ADAPT_LEARNING_RATE, ADAPTIVE_STEPS
from .estimators.cd import SAMPLERS
from .estimators.fitting import DEFAULT_OPTIMIZER, fit_estimator, score_matching_closed_form
from .estimators.nce import default_nu, noise_points_needed
from .estimators.mle import fit_mle, independent_start, likelihood_gap_bounds
from .estimators.score_matching import (extended_moment_sums, extended_offset_index,
                                        fit_score_matching_barrier)
from ._memory import check_allocation
from .exceptions import ConvergenceWarning, NotPositiveDefiniteError, SampleSizeError
from .noise import NOISES
from .optimize import METHODS as OPTIMIZERS
from .optimize import SCHEDULES, STOCHASTIC
from .sources import as_source, check_finite, check_samples, is_out_of_core
from .grid import STENCIL_OFFSETS, TYINGS, GridParameterization, check_grid_shape
from .distribution import GridGaussianDistribution
from .normalization import GridNormalizer
from .stats import RowSelection, pattern_moments, pattern_moments_about_mean

__all__ = ["GridGaussian", "NotFittedError"]

METHODS = ("mle", "nce", "rnce", "cnce", "sm", "cd")
NORMALIZATIONS = ("learned", "exact")
NOISE_SAMPLINGS = ("pool", "fresh")
SM_SOLVERS = ("closed-form", "barrier", "gradient")
#: Default ``tol`` per method: the MLE's KKT residual (correlation units); the largest
#: rescaled gradient entry for full-batch fits; the windowed loss plateau for stochastic.
DEFAULT_TOL = {"mle": 1e-8, "full-batch": 1e-6, "stochastic": 0.0}
DEFAULT_MAX_ITER = {"mle": 100, "full-batch": 1000, "stochastic": 5000}
#: Per-method defaults chosen by measurement (see the ``sampler`` parameter for CD's).
METHOD_DEFAULTS = {"cd": dict(max_iter=4000, learning_rate=2e-2),
                   "nce": dict(max_iter=2000), "rnce": dict(max_iter=2000, n_noise=5)}
#: Noise samples per data sample (ranking NCE), unless ``METHOD_DEFAULTS`` says
#: otherwise; CNCE sizes its own from the data (see ``n_noise``).
DEFAULT_N_NOISE = 10
#: Steps of the fits that start with the adaptive schedule's pilot (NCE and ranking NCE
#: with ``noise="adaptive"``, CNCE's default perturbations), by measurement on MNIST
#: (60,000 images, one fit each, 2026-12-01): at 2,000 (half adapting) the 8-neighbour
#: NCE ended KL 3.3 from the MLE and not converged (sampled negatives) and 0.77 (the
#: model expectation, learning rate 0.05); at 4,000 NCE reached KL 0.035 / 0.18 (4 / 8
#: neighbours), ranking NCE 0.028 / 0.11 in 14.1 / 14.7 s. NCE's 3,500 (2,500 adapting;
#: 2026-12-04, random states 0–9) are better than its 4,000 (2,000 adapting) on every
#: 8-neighbour figure and an eighth faster, and ranking NCE's the same (2026-12-04
#: evening) against its former 4,000: see
#: :data:`sparsegauss.estimators.adaptive.ADAPTIVE_STEPS`, which this sums.
ADAPTIVE_MAX_ITER = {method: sum(steps) for method, steps in ADAPTIVE_STEPS.items()}
DEFAULT_LEARNING_RATE = 1e-2
#: Largest D for dense symmetric-square-root sampling (a 4096² eigendecomposition, ~20 s).
SYMMETRIC_SAMPLING_MAX_PIXELS = 4096
#: Largest ``alpha``: 1 would drop every coupling from the moments (the independent model).
_MAX_ALPHA = 1.0
_FORMAT = "sparsegauss.GridGaussian"
_FORMAT_VERSION = 1


def _umask():
    """The process's file-creation mask: from /proc (Linux ≥ 4.7), else by setting it and
    putting it back (which briefly changes it for every thread)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _check_choice(value, name, choices, allow_none=False):
    if (value is None and allow_none) or (isinstance(value, str) and value in choices):
        return
    raise ValueError(f"The '{name}' parameter of GridGaussian must be one of {choices}"
                     f"{' or None' if allow_none else ''}. Got {value!r} instead.")


def _check_int(value, name, low):
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            and value >= low):
        raise ValueError(f"The '{name}' parameter of GridGaussian must be an int >= {low}. "
                         f"Got {value!r} instead.")


def _check_positive(value, name):
    if not (isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
            and np.isfinite(value) and value > 0):
        raise ValueError(f"The '{name}' parameter of GridGaussian must be a float > 0. "
                         f"Got {value!r} instead.")


class GridGaussian(DensityMixin, BaseEstimator):
    r"""Gaussian with a sparse, grid-structured precision matrix.

    ``p(x) = exp(−½ (x − μ)ᵀ Λ (x − μ)) / Z`` over images of ``H × W`` pixels flattened
    row-major (pixel ``(r, c)`` is index ``r * W + c``), where ``Λ`` couples each pixel
    only to its 4 or 8 grid neighbours and ``Z = (2π)^{D/2} det(Λ)^{-1/2}``.

    Parameters
    ----------
    shape : tuple of int, optional
        Image shape ``(H, W)``, ``H, W >= 1``. ``None`` (the default) takes it from the
        data at ``fit``: ``(H, W)`` from images of shape ``(n, H, W)``, and a ``1 × D``
        chain (each feature coupled to the next) from a plain ``(n, D)`` table.
    stencil : {4, 8}, default=4
        Neighbourhood of each pixel.
    tying : {"untied", "tied"}, default="untied"
        ``"untied"``: one parameter per pixel and per edge; ``"tied"``: stationary, one
        per stencil term.
    method : {"mle", "nce", "rnce", "cnce", "sm", "cd"}, default="mle"
        Estimator: exact maximum likelihood; noise-contrastive estimation; ranking NCE;
        conditional NCE; score matching; contrastive divergence (see
        :mod:`sparsegauss.estimators`).
    assume_centered : bool, default=False
        If True, ``μ = 0`` and the data are not centred; otherwise ``μ`` is the mean.
    alpha : float in [0, 1), default=0.0
        Shrinkage of the couplings, for few samples (``"mle"`` and ``"sm"``'s closed form
        and barrier). The fit uses the shrunk second moments
        ``S_α = (1 − α) S + α diag(S)``: variances are kept and every sample covariance
        on the pattern is scaled by ``1 − α``, so the MLE maximizes the penalized
        likelihood ``½ log det Λ − ½ tr(Λ S) − ½ α tr(Λ (diag S − S))``. ``S_α`` is
        positive definite for any ``α > 0``, so the MLE exists however few the samples;
        choose ``α`` by held-out :meth:`score` (e.g. with ``GridSearchCV``).
    tol : float, optional
        Stopping tolerance. Default: 1e-8 on the KKT residual
        ``max |Σ − S| / √(S_pp S_qq)`` for ``"mle"``; 1e-6 on the largest rescaled
        gradient entry relative to its value at the start for full-batch optimizers;
        0 for stochastic ones, which then take all ``max_iter`` steps while the cosine
        schedule anneals the step (a positive ``tol`` stops them at a plateau of the
        windowed mean loss and returns the mean of that window's iterates; an early
        plateau, before the schedule has annealed the step, gives a noisier estimate:
        MNIST NCE with ``tol=1e-6`` stopped after 150 of its 2,000 second-phase steps at
        KL 0.42 from the MLE against 0.03 with the default ``tol=0``).
    max_iter : int, optional
        Most iterations. Default: 100 Newton steps for ``"mle"``, 1000 steps for the
        full-batch optimizers and 5000 minibatch steps for the stochastic ones (4000 for
        ``"cd"``, see ``sampler``; 2000 for ``"nce"`` and ``"rnce"``: on MNIST NCE's
        held-out likelihood moved by 0.002 nats/image between 2000 and 5000 steps with a
        fixed noise; with the adaptive noise, the default, 3500 for NCE and ranking NCE,
        2500 of them adapting it, and 4000 for CNCE's pilot, half adapting).
    random_state : None, int or numpy.random.Generator, default=None
        Default source of randomness for :meth:`sample`.
    verbose : bool, default=False
        Print one line per iteration.
    optimizer : {"newton-cg", "lbfgs", "scipy-lbfgs", "adam", "sgd", "rmsprop"}, optional
        Default: ``"newton-cg"`` for MLE, ``"adam"`` for NCE, ranking NCE and CD (on
        MNIST NCE took 139 s with full-batch L-BFGS and 3.9 s with Adam to the same
        held-out likelihood), ``"lbfgs"`` otherwise.
    learning_rate : float, optional
        Step size of the stochastic optimizers (in rescaled parameters). Default 0.02 for
        ``"cd"`` (see ``sampler``), 0.03 for NCE and ranking NCE with the adaptive noise
        (see ``noise``) and 0.01 otherwise.
    schedule : {"constant", "cosine", "inverse-sqrt"}, default="cosine"
        Learning-rate schedule of the stochastic optimizers. A decaying step is what lets
        a minibatch fit settle: on an 8×8 synthetic grid, CD with a constant step stalls
        at 8x the MLE's KL to the truth, and with the cosine schedule matches it.
    batch_size : int, default=256
        Minibatch size of the stochastic optimizers.
    nu : float, optional
        NCE's noise ratio ν = M/N. Default: 1, or more when the samples are few against
        the parameters: the smallest integer with (1 + ν) N ≥ 4p (see
        :func:`sparsegauss.estimators.nce.default_nu`). NCE's classifier has p features;
        N + M points in p dimensions are linearly separable, and NCE then has no finite
        estimate, once N + M < 2p (Cover 1965). On 2,000 MNIST images (p = 2,296 with 4
        neighbours) ν = 1 ended indefinite for all of random states 0–9; ν = 4, the
        default there, was positive definite and KL 0.33–0.38 from the MLE. Each step
        then scores ν times the minibatch of noise points.
    noise : {"auto", "adaptive", "isotropic", "diagonal", "empirical", "grid", "grid-untied"} or object, default="auto"
        Noise distribution of NCE and ranking NCE (see :mod:`sparsegauss.noise`). It must
        be close to the data, or the classifier wins too easily and the gradient
        vanishes: on MNIST isotropic, diagonal and tied-grid noise are separable from the
        data (no finite estimate), and the empirical one saturates the loss.
        ``"auto"`` (the default) is ``"adaptive"``, which needs nothing but the data's
        variances: from the diagonal noise, the noise is a frozen copy of the current
        estimate at every step of a first phase of ``max_iter`` (NCE against the
        estimate itself with infinitely many noise samples, i.e. stochastic-gradient
        maximum likelihood with the model's exact expectation ``∇ log Z``), then fixed at
        the estimate reached for the rest, where NCE learns log Z as usual (learning
        rate 0.03; NCE and ranking NCE 3,500 steps by default, 2,500 of them adapting,
        the estimate the mean of the last 500 iterates; see
        :mod:`sparsegauss.estimators.adaptive`). On MNIST
        (60,000 images, random states 0–9, 2026-12-04 on 2 cores) NCE reaches KL
        0.036–0.037 to the exact MLE with 4 neighbours (held-out at most 0.037
        nats/image below the MLE, learned log Z within 0.06 nats of the exact value) in
        about 1.8 s, and KL at most 0.15 with 8 (at most 0.19 below, log Z within 0.12)
        in about 2.1 s. It
        fails on strongly correlated data, and says so: on 50,000 28×28
        patches of the bundled photographs its first phase (like CD's defaults) ends
        hundreds of nats from the MLE (KL 401 with 4 neighbours at 2,000 steps; not
        positive definite with 8), where the MLE's diagonal is 20–30 times the
        independent model's, its condition number 4·10⁴, and Adam's steps do not reach
        it (nor do they in log-diagonal and partial-correlation coordinates: KL 342
        after 2,000 steps, 412 with the exact gradient). ``"grid-untied"``, the untied
        4-neighbour grid Gaussian fitted by exact MLE, was the default until 2026-12-01:
        it matches the data's second moments on the pattern and scales to any grid, but
        for a 4-neighbour model it *is* the exact answer and NCE starts at it (and with
        8 neighbours on MNIST the classifier separates it from the data: KL 12.5).
        Either way the fit is checked: an NCE or ranking-NCE estimate provably far below
        the data's maximum likelihood is not marked converged, and says what to do. With
        a full-batch ``optimizer`` the noise adapts by 1,000 Adam steps first and
        ``max_iter`` counts the second phase's iterations; the first phase always takes
        all its steps (``tol`` stops only the second).
    noise_sampling : {"pool", "fresh"}, default="pool"
        Noise of NCE and ranking NCE under the stochastic optimizers. ``"pool"``: one
        sample of ``M = νN`` noise points (N for ranking NCE), drawn and scored once and
        served in minibatches like the data, which is NCE as Gutmann & Hyvärinen define
        it. ``"fresh"``: new noise at every step, never reused. On MNIST both reach the
        same held-out log-likelihood; drawing fresh grid noise is two thirds of the
        fit's time (see the estimator table in docs/performance.md).
    normalization : {"learned", "exact"}, default="learned"
        NCE's log Z: a free parameter (reported as ``log_partition_estimate_``) or the
        exact value from the Cholesky factor.
    n_noise : int, optional
        Noise samples per data sample (ranking NCE) or perturbations per sample (CNCE).
        Ranking NCE's default is 5, by measurement (MNIST, 60,000 images, adaptive
        noise, 2026-12-01): K = 5 reached held-out log-likelihoods 0.025 / 0.142
        nats/image below the MLE's (4 / 8 neighbours) in 14.1 / 14.7 s, K = 10 0.025 /
        0.121 in 18.0 / 21.1 s (most of a step is scoring and differentiating the K·256
        noise points). CNCE's default grows as the image shrinks: the K for which a
        step's ``batch_size · K`` perturbed images hold about 3·2²⁰ values, between 2
        and D (K = 16 for MNIST, 48 for 16×16 images;
        :func:`sparsegauss.estimators.cnce.default_n_perturbations`), because CNCE's
        perturbation noise is about D/K times the data's.
    perturbation_std : float, optional
        CNCE's perturbations. ``None`` (the default): ``ε = c z`` with ``z`` drawn from a
        pilot estimate (the adaptive noise's first phase, stochastic maximum likelihood
        from the independent model, given only the data) and ``c = √(2/D)`` (expected
        log-ratio 1); CNCE starts at the pilot, runs the second half of ``max_iter``
        (4,000 by default, learning rate 0.03) and returns the average of that half's
        iterates. For small ε this is score matching in the pilot's covariance, whose
        answer for a Gaussian is the MLE's when the pilot is the MLE, while isotropic
        ε is ordinary score matching (indefinite on MNIST). Measured with the defaults
        (2026-12-01, 2 cores): MNIST (60,000 images) positive definite, held-out
        log-likelihood 0.12 / 0.42 nats/image below the MLE's with 4 / 8 neighbours in
        21 / 26 s; 16×16 grid Gaussian with 10⁵ samples, KL to the truth 2.3× the MLE's
        (``python -m benchmarks.one_off.synthetic_defaults``). On strongly correlated
        pixels the pilot does not reach the data (photo patches: KL 189 from the MLE);
        the likelihood check then marks the fit not converged, with a warning. A
        float: isotropic ``ε ~ N(0, σ²I)`` from the independent model, without a pilot
        (the former default was ``σ = √(2 / Σ_p 1/S_pp)``, which ended indefinite on
        MNIST).
    cd_steps : int, default=1
        Gibbs sweeps per CD step.
    sampler : {"exact", "gibbs"}, default="exact"
        CD's negative samples: exact samples of the current estimate from its Cholesky
        factor (the limit of infinitely many Gibbs sweeps: CD is then maximum likelihood
        by stochastic approximation), or ``cd_steps`` Gibbs sweeps. The defaults (exact,
        Adam with β₂ = 0.99, learning rate 0.02, 4000 steps, cosine schedule) were chosen
        by measurement on MNIST (60,000 images, noise std 0.1; KL to the exact MLE, fit
        time on 2 cores): 0.008 nats in 5.8 s (4 neighbours), 0.080 in 6.6 s (8)
        (``bench_estimators``' "cd (defaults)" rows, 2026-12-02 15:51); and on a 16×16
        synthetic grid with 10⁵ samples, 1.8–2.1× the MLE's KL to the truth. Gibbs
        sweeps restarted at the data (CD-1, the former default) left KL 54 (4
        neighbours) and 133 (8) with degenerate Λ; CD-5 52 / 100; persistent chains
        (PCD-1) 1.06 / 15 in 27 / 112 s; PCD-5 0.25 in 73 s (4 neighbours). Adam's
        usual β₂ = 0.999 left one random state in three to five about 100× further
        from the MLE (8 neighbours, random state 2: KL 2.57, not converged); β₂ = 0.99
        gave 0.008–0.009 / 0.069–0.080 for states 0–2 (see
        :data:`sparsegauss.estimators.cd.CD_BETAS`).
    persistent : bool, default=False
        Persistent CD: Gibbs chains carried across steps.
    sm_solver : {"closed-form", "barrier", "gradient"}, default="closed-form"
        Score matching: the exact sparse linear solve; the positive-definite log-barrier
        path; or the minibatch gradient with ``optimizer``.

    Attributes
    ----------
    theta_ : ndarray, shape (n_params,)
        Fitted parameters (see :class:`~sparsegauss.grid.GridParameterization`).
    precision_ : scipy.sparse.csc_matrix, shape (D, D)
        Λ(θ̂).
    location_ : ndarray, shape (D,)
        μ.
    log_partition_ : float
        Exact ``log Z = (D/2) log 2π − ½ log det Λ``.
    n_iter_ : int
    history_ : list of dict
        Per iteration: ``iteration, loss, time, residual, nfev``.
    kkt_residual_ : float
    converged_ : bool
        Whether the stopping rule was met by a valid estimate: False when the optimizer
        stopped early, and when Λ̂ is not positive definite or is degenerate (a fitted
        pixel variance over 10⁶ times the data's), each with a warning.
    is_positive_definite_ : bool
        Whether Λ(θ̂) is positive definite; if not, ``log_partition_``, ``sample`` and
        ``score_samples`` raise ``NotPositiveDefiniteError``.
    log_partition_estimate_ : float
        NCE with learned normalization only: the estimated log Z. Its gap to the exact
        ``log_partition_`` of the same estimate is mostly a finite-sample bias of order
        −p/N (p parameters, N samples). No standard error is reported: the sandwich
        s.e. of ζ given θ̂ that earlier versions gave was checked on 30 repeated fits of
        an 8×8 grid Gaussian (N = 5,000 and 20,000) and understated the spread of the gap
        by 1.86× and its size by ~20× (the bias), so it was dropped.
    noise_ : object
        NCE and ranking NCE: the fitted noise distribution.
    perturbation_ : object
        CNCE: the perturbation distribution (``sample(n, random_state)``), e.g. the
        scaled pilot of the default.
    perturbation_std_ : float
        CNCE with a given ``perturbation_std``: that σ.
    nu_ : float
        NCE: the noise ratio ν the fit used (``nu``, or its default for the data's size).

    Notes
    -----
    The MLE maximizes ``ℓ(θ) = ½ log det Λ − ½ tr(ΛS) − (D/2) log 2π`` whose gradient is
    ``½ (Σ − S)`` on the pattern; ``Σ`` on the pattern comes from the selected inverse of
    the sparse Cholesky factor and ``S`` from one pass over the data, so the cost of the
    fit after that pass does not depend on the number of samples.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsegauss import GridGaussian
    >>> X = np.random.default_rng(0).standard_normal((500, 6 * 5))
    >>> model = GridGaussian((6, 5), stencil=4).fit(X)
    >>> model.converged_
    True
    >>> samples = model.sample(3, random_state=0)
    >>> samples.shape
    (3, 30)
    """

    def __init__(self, shape=None, *, stencil=4, tying="untied", method="mle",
                 assume_centered=False, alpha=0.0, tol=None, max_iter=None,
                 random_state=None,
                 verbose=False, optimizer=None, learning_rate=None, schedule="cosine",
                 batch_size=256, nu=None, noise="auto", noise_sampling="pool",
                 normalization="learned", n_noise=None, perturbation_std=None, cd_steps=1,
                 sampler="exact", persistent=False,
                 sm_solver="closed-form"):
        self.shape = shape
        self.stencil = stencil
        self.tying = tying
        self.method = method
        self.assume_centered = assume_centered
        self.alpha = alpha
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.verbose = verbose
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.schedule = schedule
        self.batch_size = batch_size
        self.nu = nu
        self.noise = noise
        self.noise_sampling = noise_sampling
        self.normalization = normalization
        self.n_noise = n_noise
        self.perturbation_std = perturbation_std
        self.cd_steps = cd_steps
        self.sampler = sampler
        self.persistent = persistent
        self.sm_solver = sm_solver

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags

    # -- pickling ---------------------------------------------------------------------
    def __getstate__(self):
        # The CHOLMOD analysis and factor are C objects that do not pickle; both are
        # rebuilt from theta_ at first use after unpickling (one symbolic analysis).
        state = super().__getstate__()
        state.pop("_distribution_cache", None)
        return state

    # -- validation --------------------------------------------------------------------
    def _validate_params(self):
        if self.shape is not None:
            check_grid_shape(self.shape)
        if self.stencil not in STENCIL_OFFSETS:
            raise ValueError("The 'stencil' parameter of GridGaussian must be 4 or 8. "
                             f"Got {self.stencil!r} instead.")
        if self.tying not in TYINGS:
            raise ValueError(f"The 'tying' parameter of GridGaussian must be one of {TYINGS}. "
                             f"Got {self.tying!r} instead.")
        if self.method not in METHODS:
            raise ValueError(f"The 'method' parameter of GridGaussian must be one of "
                             f"{METHODS}. Got {self.method!r} instead.")
        if not (isinstance(self.alpha, (int, float, np.integer, np.floating))
                and not isinstance(self.alpha, bool) and 0 <= self.alpha < _MAX_ALPHA):
            raise ValueError("The 'alpha' parameter of GridGaussian must be a float in "
                             f"[0, 1). Got {self.alpha!r} instead.")
        if self.alpha > 0 and not self._reads_moments():
            raise ValueError(
                f"alpha={self.alpha!r} shrinks the second moments that exact MLE and score "
                f"matching's closed form and barrier read; {self._method_label()} does not "
                "use them. Use method='mle' or 'sm' (closed form or barrier), or alpha=0.")
        if self.tol is not None and not (isinstance(self.tol, (int, float))
                                         and np.isfinite(self.tol) and self.tol >= 0):
            raise ValueError("The 'tol' parameter of GridGaussian must be a float >= 0 or "
                             f"None. Got {self.tol!r} instead.")
        if self.max_iter is not None:
            _check_int(self.max_iter, "max_iter", 1)
        _check_choice(self.optimizer, "optimizer", OPTIMIZERS, allow_none=True)
        if self.method == "mle" and self.optimizer not in (None, "newton-cg", "lbfgs"):
            raise ValueError("The 'mle' method uses optimizer 'newton-cg' or 'lbfgs'. "
                             f"Got {self.optimizer!r} instead.")
        if self.learning_rate is not None:
            _check_positive(self.learning_rate, "learning_rate")
        _check_choice(self.schedule, "schedule", SCHEDULES)
        _check_int(self.batch_size, "batch_size", 2)
        if self.nu is not None:
            _check_positive(self.nu, "nu")
        if isinstance(self.noise, str):
            _check_choice(self.noise, "noise", NOISES)
        _check_choice(self.noise_sampling, "noise_sampling", NOISE_SAMPLINGS)
        _check_choice(self.normalization, "normalization", NORMALIZATIONS)
        if self.n_noise is not None:
            _check_int(self.n_noise, "n_noise", 1)
        if self.perturbation_std is not None:
            _check_positive(self.perturbation_std, "perturbation_std")
        _check_int(self.cd_steps, "cd_steps", 1)
        _check_choice(self.sampler, "sampler", SAMPLERS)
        _check_choice(self.sm_solver, "sm_solver", SM_SOLVERS)

    def _grid_shape(self, n_features, image_shape=None):
        """The grid: the ``shape`` parameter, else the images' ``(H, W)``, else ``1 × D``."""
        if self.shape is not None:
            shape = check_grid_shape(self.shape)
            if image_shape is not None and tuple(image_shape) != shape:
                raise ValueError(f"X holds images of shape {tuple(image_shape)}, but the "
                                 f"GridGaussian's shape is {shape}.")
            if n_features is not None and n_features != shape[0] * shape[1]:
                raise ValueError(
                    f"X has {n_features} features, but a {shape[0]}x{shape[1]} grid has "
                    f"{shape[0] * shape[1]} pixels. Give X as (n_samples, {shape[0]}, "
                    f"{shape[1]}) or (n_samples, {shape[0] * shape[1]}) arrays, or set "
                    "shape to the images' shape.")
            return shape
        if image_shape is not None:
            return check_grid_shape(image_shape)
        return (1, int(n_features))

    def _validate_data(self, X, *, reset, min_samples=1, finite=True):
        """``(X, shape)``: X as a C-contiguous float ``(n, D)`` array and the grid shape.

        ``(n, H, W)`` images are flattened row-major; integers and booleans become
        float64 (as scikit-learn estimators take them); NaN and inf are refused with the
        first offending sample and pixel named (unless ``finite=False``: ``fit`` tells
        them from its moments instead, saving a read of the data). ``reset=True`` (in
        ``fit``) records ``n_features_in_``; otherwise X must match the fitted grid.
        """
        image_shape = None
        if not sp.issparse(X) and not hasattr(X, "columns"):
            X = np.asarray(X)
            if X.ndim == 3:
                image_shape = X.shape[1:]
                X = X.reshape(X.shape[0], -1)
        if reset:
            shape = None
        else:
            shape = self._grid.shape
            if image_shape is not None and tuple(image_shape) != tuple(shape):
                raise ValueError(f"X holds images of shape {tuple(image_shape)}, but the "
                                 f"model was fitted to images of shape {tuple(shape)}.")
        X = validate_data(self, X, reset=reset, dtype=(np.float64, np.float32), order="C",
                          ensure_all_finite=False, ensure_min_samples=min_samples)
        if reset:
            shape = self._grid_shape(X.shape[1], image_shape)
        return check_samples(X, shape, finite=finite), shape

    def _check_fitted(self):
        if not hasattr(self, "theta_"):
            raise NotFittedError("This GridGaussian is not fitted yet. Call 'fit' with "
                                 "data first, or load a saved model.")

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, X, y=None):
        """Fit the model to images ``X``.

        Parameters
        ----------
        X : array-like, dask.array or path, shape (n_samples, H * W) or (n_samples, H, W)
            Float images (float32 or float64; at least 2 samples). Exact MLE and score
            matching (closed form or barrier) also take data that need not fit in memory: a
            ``dask.array`` (each block's sums are one task of the active Dask scheduler,
            e.g. a ``dask.distributed`` cluster) or a directory of ``.npy`` shards (read
            one memory-mapped shard at a time); see :mod:`sparsegauss.sources`.
        y : ignored

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Bad shape, NaN/inf, fewer than 2 samples, or pixels with zero variance.
        SampleSizeError
            The untied model with too few samples for its parameters to be determined
            (any method; see :meth:`_check_sample_size`), or two neighbouring pixels
            that are perfectly correlated; use more samples, ``tying="tied"`` or (exact
            MLE and score matching) ``alpha > 0``.
        TypeError
            Non-numeric data.
        """
        self._validate_params()
        if is_out_of_core(X):
            return self._fit_out_of_core(X)
        X, shape = self._validate_data(X, reset=True, min_samples=2, finite=False)
        grid = GridParameterization(shape, self.stencil, self.tying)
        if self.assume_centered:
            location, moments = np.zeros(grid.n_pixels), pattern_moments(X, grid)
        else:
            moments, location = pattern_moments_about_mean(X, grid)
        moments /= X.shape[0]
        self._check_finite_moments(X, moments)
        self._check_variances(moments[0], shape)
        n_effective = X.shape[0] - (0 if self.assume_centered else 1)

        callback = self._progress if self.verbose else None
        if self.method == "mle":
            moments = self._shrunk_moments(moments, n_effective, grid)
            normalizer = GridNormalizer(grid)
            result = self._fit_mle_moments(moments, grid, normalizer)
        elif self.method == "sm" and self.sm_solver != "gradient":
            # Centred in the data's dtype: no float64 copy of a float32 array.
            centred = X if self.assume_centered else np.subtract(X, location, dtype=X.dtype)
            sums = extended_moment_sums(centred, grid)
            del centred
            normalizer = None
            result = self._fit_score_matching_sums(sums, X.shape[0], n_effective, grid,
                                                   moments)
        else:
            # The untied model's parameters are not determined by too few samples,
            # whatever the estimator: on two draws of 5 white-noise images of 16×16
            # (736 parameters) NCE and ranking NCE returned "converged" fits whose
            # held-out log-likelihood was 967–1,727 nats per image below the truth's
            # (-363), CD 739–1,095 below (marked converged on one draw).
            self._check_sample_size(n_effective, moments, grid)
            normalizer = None
            tol, max_iter = self._stopping()
            centred = X if self.assume_centered else self._centred(X, location)
            result = fit_estimator(
                self.method, centred, grid, random_state=self.random_state,
                optimizer=self.optimizer, tol=tol, max_iter=max_iter,
                callback=callback, learning_rate=self._learning_rate(),
                schedule=self.schedule, batch_size=self.batch_size,
                nu=self._noise_ratio(X.shape[0], grid),
                noise=self.noise, noise_sampling=self.noise_sampling,
                normalization=self.normalization, n_noise=self._n_noise(),
                perturbation_std=self.perturbation_std, cd_steps=self.cd_steps,
                sampler=self.sampler, persistent=self.persistent, sm_solver=self.sm_solver,
                moments=moments)
        return self._finish_fit(grid, result, location, normalizer, moments[0],
                                n_samples=X.shape[0], moments=moments)

    @staticmethod
    def _centred(X, location):
        """``X − location`` for the iterative estimators: a
        :class:`~sparsegauss.stats.RowSelection` whose rows the kernels centre as they
        read them, for a C-contiguous float array (no copy of the data: the copy was as
        large as the data, and on MNIST's default NCE fit it cost 0.5–0.9 s of writing
        fresh memory); otherwise a copy in the data's own dtype (no float64 temporary:
        at 512×512 with 500 float32 samples that temporary alone was 1 GiB)."""
        if X.flags.c_contiguous and X.dtype in (np.float32, np.float64):
            return RowSelection(X, center=location)
        return np.subtract(X, location, dtype=X.dtype)

    def _is_runaway(self, factor, variances):
        """Whether a positive-definite Λ̂ is near-singular against the data (and warn).

        Costs one selected inversion on ``factor``, the fit's own factorization of Λ̂.
        Skipped for the MLE, whose fitted variances equal the data's at its optimum
        (Dempster's condition).
        """
        if factor is None or self.method == "mle":
            return False
        fitted = self._normalizer.covariance_fields(factor)[0]
        ratio = fitted / np.asarray(variances, dtype=np.float64)
        worst = int(np.argmax(ratio))
        if not ratio[worst] > self._RUNAWAY_VARIANCE_RATIO:      # also catches NaN
            return False
        row, col = divmod(worst, self._grid.shape[1])
        advice = ("Score matching has no positive-definite minimizer on these data, so its "
                  "best positive-definite estimate lies on the boundary of the cone: shrink "
                  "the couplings with alpha > 0 (choose it by held-out score) or use "
                  "method='mle'." if self.method == "sm" else
                  "Use method='mle' (exact), or for this estimator more steps with a smaller "
                  "learning_rate.")
        warnings.warn(
            f"The {self.method!r} estimate is positive definite but degenerate: its "
            f"variance of pixel ({row}, {col}) is {ratio[worst]:.3g} times the data's, so "
            "Λ is nearly singular and its samples and likelihoods are meaningless. It is "
            f"not marked converged. {advice}", ConvergenceWarning, stacklevel=4)
        return True

    def _is_short_of_likelihood(self, grid, moments, n_samples):
        """Whether a CD, NCE, ranking-NCE or (pilot-perturbed) CNCE estimate is provably
        far below the maximum likelihood (and warn).

        This model has the exact likelihood, so "converged" can be checked instead of
        trusted: a lower bound on ``ℓ(θ̂_MLE) − ℓ(θ̂) = KL(MLE ‖ θ̂)`` from the Newton
        decrement (:func:`~sparsegauss.estimators.mle.likelihood_gap_bounds`, a few
        Hessian-vector products, each a refactorization and a selected inversion).

        CD with exact negative samples has the MLE as its fixed point. NCE and ranking NCE
        approach it when their noise is close to the data (on MNIST, 4 neighbours, KL 0.02
        to 0.09 from the MLE with the grid and adaptive noises); a noise the classifier
        separates from the data leaves them far away while their own loss has converged.
        Measured: on 50,000 photo patches CD at its defaults stopped on a plateau of its
        minibatch loss, reported convergence and lay KL 276 from the MLE (the bound passed
        1.9 after one product); 8-neighbour NCE with the 4-neighbour grid noise reported
        convergence at KL 68.7 on the same patches, and ranking NCE at KL 11.4 on MNIST.
        """
        limit = self._GAP_LIMIT
        if self.method != "cd":
            # NCE's own sampling error: KL(MLE ‖ θ̂) ≈ p/(2N) on average for a noise equal
            # to the data (asymptotic variance (1 + 1/ν) I⁻¹ with ν = 1); allowed twice.
            limit += grid.n_params / n_samples
        # Its own numeric factor (the symbolic analysis is shared): refactoring the
        # fitted model's would overwrite the factor that distribution_ holds.
        try:
            lower, _ = likelihood_gap_bounds(self.theta_, moments, grid, limit=limit,
                                             max_products=self._GAP_PRODUCTS)
        except NotPositiveDefiniteError:
            # θ̂ on the very boundary of the cone: the runaway check speaks for it.
            return False
        if not lower > limit:
            return False
        if self.method == "cd":
            why = ("CD stopped short of its answer (a plateau of its noisy gradient, or too "
                   "few steps for strongly correlated pixels) and is not marked converged. "
                   "Use method='mle' (exact), or more steps (max_iter) with tol=0.")
        elif self.method == "cnce":
            why = ("conditional NCE perturbs along a pilot estimate (stochastic maximum "
                   "likelihood), which had too few steps to reach the data, and its answer "
                   "stays near the pilot's; it is not marked converged. Use more steps "
                   "(max_iter); on strongly correlated pixels (photo patches) the pilot's "
                   "Adam steps do not reach the data at any length tried: use "
                   "method='mle' (exact), or give perturbation_std (isotropic "
                   "perturbations, score matching's answer for small σ).")
        else:
            name = "NCE" if self.method == "nce" else "Ranking NCE"
            if self._runs_pilot():
                why = (f"{name} with the adaptive noise had too few steps to bring its noise "
                       "and estimate to the data; it is not marked converged. Use more "
                       "steps (max_iter); on strongly correlated pixels (photo patches) "
                       "its Adam steps do not reach the data at any length tried: give it "
                       "a fixed noise close to the data (noise='grid-untied', the "
                       "4-neighbour MLE; say so when you report it), or use method='mle' "
                       "(exact).")
            else:
                why = (f"{name}'s own loss may have converged, but against a noise this far "
                       "from the data the classifier separates them by features the model "
                       "cannot match, and the estimate says more about the noise than about "
                       "the data; it is not marked converged. Use the default adaptive "
                       "noise (noise='adaptive' or 'auto'; with more steps, max_iter, if "
                       "this persists; on strongly correlated pixels such as photo patches "
                       "it does not reach the data either, see GridGaussian's noise "
                       "parameter), or method='mle' (exact).")
        warnings.warn(
            f"The {self.method!r} estimate's log-likelihood is at least {lower:.3g} nats "
            "per sample below the maximum likelihood of these data (a lower bound from the "
            f"Newton decrement of the exact likelihood): {why}", ConvergenceWarning,
            stacklevel=4)
        return True

    def _shrink(self, moments, diagonal_rows):
        """``S_α = (1 − α) S + α diag(S)`` in a moment layout whose first
        ``diagonal_rows`` rows are the variances (a copy; ``moments`` when α = 0)."""
        if self.alpha == 0:
            return moments
        shrunk = np.array(moments, dtype=np.float64)
        shrunk[diagonal_rows:] *= 1.0 - self.alpha
        return shrunk

    def _shrunk_moments(self, moments, n_effective, grid):
        """The pattern moments as the fit uses them (``S_α``), once the sample size and
        the correlations have been checked (:meth:`_check_sample_size`)."""
        moments = self._shrink(moments, diagonal_rows=1)
        self._check_sample_size(n_effective, moments, grid)
        return moments

    def _fit_score_matching_sums(self, sums, n_samples, n_effective, grid, moments):
        """Score matching's closed form or barrier from the extended moment sums."""
        self._shrunk_moments(moments, n_effective, grid)          # the checks
        # Row 0 of the extended sums is the zero offset, the variances.
        sums = self._shrink(sums, diagonal_rows=1)
        if self.sm_solver == "closed-form":
            return score_matching_closed_form(None, grid, sums=sums, n_samples=n_samples)
        tol, max_iter = self._stopping()
        return fit_score_matching_barrier(
            None, grid, sums=sums, n_samples=n_samples,
            theta0=independent_start(sums[:1] / n_samples, grid), tol=tol,
            max_iter=max_iter, callback=self._progress if self.verbose else None)

    #: Untied fits need this many effective samples more than the stencil has neighbours.
    _SAMPLES_BEYOND_NEIGHBOURS = 5

    def _check_sample_size(self, n_effective, moments, grid):
        """Refuse, in well under a second, an untied moment fit that is ill-posed.

        In the untied model each pixel's row of Λ is, up to scale, the regression of the
        pixel on its ``k`` stencil neighbours (``k`` = 4 or 8), estimated from
        ``n_eff`` = n − 1 centred samples (n with ``assume_centered``). Its residual
        variance has ``n_eff − k`` degrees of freedom, and the precision ``Λ_pp`` (its
        inverse, a scaled inverse-χ²) has a finite variance only when
        ``n_eff − k > 4``. Below that the MLE, when it exists at all, is so
        ill-conditioned that Newton's method needs minutes where it needs seconds
        (5 white-noise images of 70×70: > 10 minutes; 11 images: 20 s). Perfectly
        correlated neighbours make Λ infinite whatever ``n``. With ``alpha > 0`` the
        shrunk moments are positive definite and no count is needed.
        """
        edges = self._perfectly_correlated_edge(moments, grid)
        if edges is not None:
            raise SampleSizeError(
                f"Pixels {edges[0]} and {edges[1]} (row, col) are perfectly correlated in X "
                "(sample correlation ±1), so their precision would be infinite. Add noise "
                "to the data, or use alpha > 0 to shrink the couplings.")
        if self.tying != "untied" or self.alpha > 0:
            return
        neighbours = 2 * len(STENCIL_OFFSETS[self.stencil])
        needed = neighbours + self._SAMPLES_BEYOND_NEIGHBOURS
        if n_effective < needed:
            n_needed = needed + (0 if self.assume_centered else 1)
            raise SampleSizeError(
                f"The untied {self.stencil}-neighbour model has {grid.n_params:,} parameters "
                f"and needs at least {n_needed} samples to estimate them (each pixel is "
                f"regressed on its {neighbours} neighbours); X has "
                f"{n_effective + (0 if self.assume_centered else 1)}. Use more samples, "
                "tying='tied' (one parameter per stencil term), or "
                + ("shrink the couplings" if self._reads_moments() else
                   "method='mle', which shrinks the couplings")
                + " with alpha > 0 (e.g. alpha=0.1; choose it by held-out score with "
                "GridSearchCV)"
                + ("." if self._reads_moments() else
                   f"; {self._method_label()} has no alpha."))

    def _reads_moments(self):
        """Whether the method fits from the second moments (exact MLE, score matching's
        closed form and barrier): the fits that ``alpha`` shrinks."""
        return self.method == "mle" or (self.method == "sm" and self.sm_solver != "gradient")

    def _method_label(self):
        """``method='nce'``, or ``method='sm' with sm_solver='gradient'``, for messages."""
        solver = f" with sm_solver={self.sm_solver!r}" if self.method == "sm" else ""
        return f"method={self.method!r}{solver}"

    @staticmethod
    def _perfectly_correlated_edge(moments, grid):
        """The first pair (as two (row, col)) of neighbours with |correlation| ≈ 1, or None."""
        scale = grid.outer_fields(np.sqrt(moments[0]))
        with np.errstate(divide="ignore", invalid="ignore"):
            correlation = np.abs(moments[1:]) / scale[1:]
        bad = np.argwhere(grid.valid[1:] & (correlation > 1 - 1e-12))
        if not bad.size:
            return None
        term, pixel = bad[0]
        dr, dc = grid.offsets[term + 1]
        row, col = divmod(int(pixel), grid.shape[1])
        return (row, col), (row + dr, col + dc)

    #: A fitted pixel variance (Σ_pp) this many times the data's means a near-singular Λ:
    #: samples then run far outside the data (a CD fit on smoothed images had Σ_pp of
    #: 1e16 times S_pp and samples of ±4e8 for data of std 1).
    _RUNAWAY_VARIANCE_RATIO = 1e6

    #: NCE's learned log Z may differ from the exact log Z of its own estimate by its
    #: finite-sample bias, measured between −0.5 and −3 p/N on synthetic grids and MNIST;
    #: a gap beyond this many p/N (plus 0.1 nats) means the fit did not reach NCE's answer.
    _LOG_Z_GAP_LIMIT = 10.0

    #: A CD, NCE or ranking-NCE fit whose log-likelihood is provably more than this many
    #: nats per sample below the MLE's (KL(MLE ‖ θ̂), bounded below from the Newton
    #: decrement) did not reach the answer those estimators share when they work: CD at
    #: its defaults reaches KL 0.008 / 0.09 on MNIST (4 / 8 neighbours), NCE with a noise
    #: near the data 0.02–0.09 (4 neighbours). The bound is rigorous but loose for
    #: large gaps (it grows like the square root of the decrement): at 0.5 it caught a
    #: default CD fit at KL 3.2 (2,000 blurred 10×12 images) that a limit of 1 missed.
    #: NCE and ranking NCE are allowed p/N more: their own sampling error (see
    #: :meth:`_is_short_of_likelihood`), which on MNIST's 8,000-image demo split is 0.3–0.5.
    _GAP_LIMIT = 0.5
    #: Hessian-vector products the bound may spend (each a refactorization and a
    #: selected inversion: 30 ms on MNIST's 28×28 grid).
    _GAP_PRODUCTS = 30

    def _finish_fit(self, grid, result, location, normalizer, variances, n_samples=None,
                    moments=None):
        """Set the fitted attributes from an optimizer result; warn about what is off.

        ``variances`` are the data's pixel variances, against which a positive-definite
        but degenerate estimate (near-singular Λ) is recognized: it is not converged.
        ``moments`` (the data's pattern moments), when given, let a CD, NCE or
        ranking-NCE fit be checked against the exact likelihood
        (:meth:`_is_short_of_likelihood`).
        """
        if not result.success:
            warnings.warn(f"GridGaussian did not converge: {result.message}. Increase "
                          "max_iter or tol.", ConvergenceWarning, stacklevel=3)
        factor = self._set_fitted(grid, result.x, location, normalizer)
        self.n_iter_ = int(result.nit)
        self.history_ = result.history
        self.residual_ = float(result.residual)
        # Converged means the stopping rule was met by a valid estimate: an indefinite or
        # degenerate Λ̂ is not a Gaussian, however exactly its criterion was solved.
        self.converged_ = (bool(result.success) and self.is_positive_definite_
                           and not self._is_runaway(factor, variances))
        if factor is not None:
            # The fit and the runaway check are done with Σ: its buffer (one factor's
            # size) is not kept for the model's lifetime, nor beside the likelihood
            # check's own (2048×2048: 1.7 GB each; the NCE fit's peak 23.4 GB with it).
            self._normalizer.analysis.release_inverse()
        # CNCE with its default pilot perturbations belongs here too: for small ε it is
        # score matching in the pilot's metric, whose answer is the MLE's when the pilot
        # reached it, and a pilot that did not (photo patches: KL 189 from the MLE,
        # reported converged before this check) leaves CNCE as far.
        checked = ("cd", "nce", "rnce") + (("cnce",) if self._runs_pilot() else ())
        if self.converged_ and self.method in checked and moments is not None:
            self.converged_ = not self._is_short_of_likelihood(grid, moments, n_samples)
        for name in ("kkt_residual_", "log_partition_estimate_", "noise_",
                     "perturbation_", "perturbation_std_"):
            self.__dict__.pop(name, None)
        if self.method == "mle":
            self.kkt_residual_ = float(result.residual)
        if "log_partition_estimate" in result:
            self.log_partition_estimate_ = result.log_partition_estimate
            if self.is_positive_definite_ and n_samples:
                gap = self.log_partition_estimate_ - self.log_partition_
                limit = self._LOG_Z_GAP_LIMIT * grid.n_params / n_samples + 0.1
                if abs(gap) > limit:
                    self.converged_ = False
                    warnings.warn(
                        f"NCE's learned log Z is {gap:+.3g} nats from the exact log Z of its "
                        f"own estimate (its finite-sample bias is about p/N = "
                        f"{grid.n_params / n_samples:.3g}): the fit has not reached NCE's "
                        "answer. Use a noise closer to the data or more steps (max_iter).",
                        ConvergenceWarning, stacklevel=3)
        if "noise" in result:
            self.noise_ = result.noise
        if "perturbation" in result:
            self.perturbation_ = result.perturbation
            if self.perturbation_std is not None:
                self.perturbation_std_ = float(self.perturbation_std)
        if not self.is_positive_definite_:
            warnings.warn(
                f"The {self.method!r} estimate of the precision matrix is not positive "
                "definite, so it is not a Gaussian: precision_ is kept, but log_partition_, "
                "sample and score_samples will raise NotPositiveDefiniteError. "
                + self._indefinite_advice(grid, n_samples), UserWarning, stacklevel=3)
        return self

    def _indefinite_advice(self, grid, n_samples):
        """What to do about an indefinite estimate, by method."""
        nu = getattr(self, "nu_", None)
        if (self.method == "nce" and nu is not None and n_samples
                and noise_points_needed(n_samples, grid.n_params) > nu * n_samples):
            return (f"With nu={nu:g}, NCE's {n_samples:,} data and {nu * n_samples:,.0f} "
                    f"noise points are too few for its {grid.n_params:,} parameters: a "
                    "linear classifier can separate them, and NCE has no finite estimate. "
                    f"Leave nu at its default (None; here "
                    f"{default_nu(n_samples, grid.n_params):g}).")
        if self.method == "sm":
            return ("Use sm_solver='barrier' for the best positive-definite score-matching "
                    "estimate.")
        if self.method == "mle":
            return "Shrink the sample covariance (alpha > 0)."
        # The stochastic estimators' losses are defined outside the cone, and their
        # iterates can end there when their noise or pilot is far from the data (CNCE on
        # photo patches: 2 of random states 0-3) or the run stopped on an early plateau.
        return ("Its stochastic optimization ended outside the cone: use method='mle' "
                "(exact), or more steps (max_iter) with the default tol=0"
                + (", or isotropic perturbations (perturbation_std)"
                   if self.method == "cnce" else "") + ".")

    def _fit_out_of_core(self, X):
        """Moment-based fits from a Dask array or shard directory, in passes over chunks.

        Two passes (the mean, then centred moments) rather than one with ``E[xxᵀ] − μμᵀ``,
        which loses digits when the mean is large against the spread.
        """
        if not self._reads_moments():
            raise ValueError(
                f"{self._method_label()} needs the samples in memory: only exact MLE and "
                "score matching (method='sm', closed form or barrier) run on a Dask array "
                "or a shard directory. Load the data first (X.compute(), or "
                "numpy.concatenate of the shards).")
        if self.shape is not None:
            shape = check_grid_shape(self.shape)
        elif hasattr(X, "shape") and len(X.shape) in (2, 3):      # a Dask array
            shape = self._grid_shape(X.shape[1] if len(X.shape) == 2 else None,
                                     X.shape[1:] if len(X.shape) == 3 else None)
        else:
            raise ValueError(f"{X} is a directory of shards: give the image shape with "
                             "GridGaussian(shape=(H, W)).")
        grid = GridParameterization(shape, self.stencil, self.tying)
        source = as_source(X, grid.shape)
        n_samples = source.n_samples
        if n_samples < 2:
            raise ValueError(f"X has {n_samples} sample(s); at least 2 are needed.")
        self.n_features_in_ = grid.n_pixels
        n_effective = n_samples - (0 if self.assume_centered else 1)
        location = (np.zeros(grid.n_pixels) if self.assume_centered else
                    source.sum_over_chunks(lambda c: c.sum(axis=0, dtype=np.float64)) / n_samples)
        if self.method == "sm":
            sums = source.sum_over_chunks(lambda c: extended_moment_sums(c, grid, location))
            self._check_variances(sums[0] / n_samples, grid.shape)
            # The pattern moments are the extended sums' rows at the stencil offsets.
            moments = grid.valid * np.stack([sums[extended_offset_index(grid, offset)]
                                             for offset in grid.offsets]) / n_samples
            result = self._fit_score_matching_sums(sums, n_samples, n_effective, grid,
                                                   moments)
            normalizer = None
        else:
            moments = source.sum_over_chunks(
                lambda c: pattern_moments(c, grid, center=location)) / n_samples
            self._check_variances(moments[0], grid.shape)
            moments = self._shrunk_moments(moments, n_effective, grid)
            normalizer = GridNormalizer(grid)
            result = self._fit_mle_moments(moments, grid, normalizer)
        return self._finish_fit(grid, result, location, normalizer, moments[0])

    def _stopping(self):
        """``(tol, max_iter)``: the user's, else the defaults of the method's kind of
        optimizer (exact MLE's Newton-CG, full-batch or stochastic)."""
        if self.method == "mle":
            kind = "mle"
        else:
            optimizer = self.optimizer or DEFAULT_OPTIMIZER[self.method]
            kind = "stochastic" if optimizer in STOCHASTIC else "full-batch"
        return (DEFAULT_TOL[kind] if self.tol is None else self.tol,
                self._default_max_iter(kind) if self.max_iter is None else self.max_iter)

    def _runs_pilot(self):
        """Whether the fit starts with the adaptive schedule's pilot phase: NCE / ranking
        NCE with ``noise="auto"`` or ``"adaptive"``, CNCE without a ``perturbation_std``."""
        if self.method == "cnce":
            return self.perturbation_std is None
        return (self.method in ("nce", "rnce") and isinstance(self.noise, str)
                and self.noise in ("auto", "adaptive"))

    def _default_max_iter(self, kind):
        default = DEFAULT_MAX_ITER[kind]
        if kind == "stochastic":
            if self._runs_pilot():
                return ADAPTIVE_MAX_ITER[self.method]
            default = METHOD_DEFAULTS.get(self.method, {}).get("max_iter", default)
        return default

    def _noise_ratio(self, n_samples, grid):
        """NCE's ν: the user's, else :func:`~sparsegauss.estimators.nce.default_nu`."""
        self.__dict__.pop("nu_", None)      # from an earlier fit
        if self.method != "nce":
            return 1.0
        nu = float(self.nu) if self.nu is not None else default_nu(n_samples, grid.n_params)
        self.nu_ = nu
        return nu

    def _n_noise(self):
        """K of ranking NCE, or None for CNCE's default (sized by the minibatch and D, see
        :func:`sparsegauss.estimators.cnce.default_n_perturbations`)."""
        if self.n_noise is not None or self.method == "cnce":
            return self.n_noise
        return METHOD_DEFAULTS.get(self.method, {}).get("n_noise", DEFAULT_N_NOISE)

    def _learning_rate(self):
        if self.learning_rate is not None:
            return self.learning_rate
        if self._runs_pilot():
            return ADAPT_LEARNING_RATE
        return METHOD_DEFAULTS.get(self.method, {}).get("learning_rate", DEFAULT_LEARNING_RATE)

    def _fit_mle_moments(self, moments, grid, normalizer):
        """Exact MLE from the pattern moments (in memory or summed over chunks)."""
        tol, max_iter = self._stopping()
        return fit_mle(moments, grid, tol=tol, max_iter=max_iter,
                       solver=self.optimizer or "newton-cg",
                       callback=self._progress if self.verbose else None,
                       normalizer=normalizer)

    @staticmethod
    def _check_finite_moments(X, moments):
        """NaN or inf in X shows in the moments (each value's square is one of them); only
        then is X read again, to name the first bad sample."""
        if np.all(np.isfinite(moments)):
            return
        check_finite(X)
        raise ValueError("X's second moments overflow float64 (values of magnitude "
                         f"{np.max(np.abs(X)):.3g}). Rescale the data first.")

    @staticmethod
    def _check_variances(variances, shape):
        scale = np.max(variances)
        # Below this relative level a pixel is numerically constant: Λ_pp → ∞.
        flat = np.flatnonzero(variances <= 1e-12 * scale) if scale > 0 else np.arange(variances.size)
        if flat.size:
            where = ", ".join(str(tuple(int(v) for v in divmod(p, shape[1]))) for p in flat[:5])
            raise ValueError(
                f"X has {flat.size} pixel(s) with zero variance (first at (row, col) {where}); "
                "their precision would be infinite. Add noise (e.g. sparsegauss.datasets."
                "preprocess(noise_std=0.1)) or crop those pixels.")

    def _progress(self, state):
        label = "KKT residual" if self.method == "mle" else "residual"
        print(f"[GridGaussian {self.method}] iteration {state.nit:4d}  loss {state.fun:.10g}  "
              f"{label} {state.residual:.3e}", flush=True)

    def _set_fitted(self, grid, theta, location, normalizer=None):
        """Store the estimate; returns its Cholesky factor (owned by ``distribution_``),
        or None when Λ̂ is not positive definite."""
        self._grid = grid
        self.theta_ = np.asarray(theta, dtype=np.float64)
        self.location_ = np.asarray(location, dtype=np.float64)
        self.precision_ = grid.precision(self.theta_)
        self._distribution_cache = GridGaussianDistribution(grid, self.theta_, self.location_,
                                                            normalizer=normalizer)
        self.is_positive_definite_ = bool(self._distribution_cache.is_positive_definite)
        return self._distribution_cache.factor() if self.is_positive_definite_ else None

    @property
    def distribution_(self):
        """The fitted distribution ``N(location_, Λ(theta_)⁻¹)``, frozen
        (:class:`~sparsegauss.distribution.GridGaussianDistribution`): what noise,
        divergences and plots use. Rebuilt (with the same symbolic analysis) if
        ``theta_`` or ``location_`` were changed, never stale."""
        self._check_fitted()
        cached = self.__dict__.get("_distribution_cache")
        if (cached is None or not np.array_equal(cached.theta, self.theta_)
                or not np.array_equal(cached.mean, self.location_)):
            normalizer = None if cached is None else cached._normalizer
            cached = self._distribution_cache = GridGaussianDistribution(
                self._grid, self.theta_, self.location_, normalizer=normalizer)
        return cached

    @property
    def _normalizer(self):
        """The grid's symbolic Cholesky analysis (the fitted distribution's)."""
        return self.distribution_.normalizer

    # -- using the fitted model --------------------------------------------------------------
    @property
    def log_partition_(self):
        """Exact ``log Z = (D/2) log 2π − ½ log det Λ``."""
        self._check_fitted()
        self._require_pd("log_partition_")
        return self.distribution_.log_partition

    def _require_pd(self, what):
        if not self.is_positive_definite_:
            raise NotPositiveDefiniteError(
                f"{what} is undefined: the estimated precision matrix is not positive "
                "definite, so the model is not a normalizable Gaussian.")

    def score_samples(self, X):
        """Exact log-density of each sample.

        ``log p(x) = −½ (x − μ)ᵀ Λ (x − μ) − log Z``.

        Parameters
        ----------
        X : array-like, shape (n_samples, H * W) or (n_samples, H, W)

        Returns
        -------
        ndarray, shape (n_samples,)
        """
        self._check_fitted()
        self._require_pd("score_samples")
        X, _ = self._validate_data(X, reset=False)
        return self.distribution_.score_samples(X)

    def score(self, X, y=None):
        """Mean log-likelihood per sample (nats)."""
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples=1, random_state=None, method="cholesky"):
        """Exact samples ``x = μ + A ε`` with ``ε ~ N(0, I)`` and ``A Aᵀ = Σ = Λ⁻¹``.

        Parameters
        ----------
        n_samples : int, default=1
        random_state : None, int or numpy.random.Generator
            Defaults to the estimator's ``random_state``.
        method : {"cholesky", "symmetric"}, default="cholesky"
            The square root ``A``. ``"cholesky"``: ``A = Pᵀ L⁻ᵀ`` from the sparse factor
            ``P Λ Pᵀ = L Lᵀ`` (one sparse triangular solve per sample, any grid size).
            ``"symmetric"``: ``A = Σ^{1/2} = V diag(λ^{-1/2}) Vᵀ`` from a dense
            eigendecomposition of Λ — the textbook recipe, ``O(D³)``, allowed for
            ``D ≤ 4096``. Both give the same distribution; different draws.

        Returns
        -------
        ndarray, shape (n_samples, H * W)

        Raises
        ------
        NotPositiveDefiniteError
            The fitted Λ is not positive definite.
        InsufficientMemoryError
            The samples would not fit in the memory available now (checked before
            anything is allocated).
        """
        self._check_fitted()
        self._require_pd("sample")
        if not (isinstance(n_samples, (int, np.integer)) and not isinstance(n_samples, bool)
                and n_samples >= 1):
            raise ValueError("The 'n_samples' parameter of GridGaussian.sample must be an "
                             f"int >= 1. Got {n_samples!r} instead.")
        _check_choice(method, "method", ("cholesky", "symmetric"))
        n_pixels = self._grid.n_pixels
        check_allocation(int(n_samples) * n_pixels * 8,
                         f"{int(n_samples):,} samples of {n_pixels:,} pixels (float64)",
                         "Draw fewer at a time: call sample() in blocks and write each "
                         "block out (e.g. to .npy shards) before drawing the next.")
        rng = np.random.default_rng(self.random_state if random_state is None else random_state)
        if method == "symmetric":
            if n_pixels > SYMMETRIC_SAMPLING_MAX_PIXELS:
                raise ValueError(
                    f"method='symmetric' needs a dense {n_pixels}x{n_pixels} "
                    f"eigendecomposition; it is limited to D <= {SYMMETRIC_SAMPLING_MAX_PIXELS}."
                    " Use method='cholesky', which samples any grid exactly.")
            eigenvalues, vectors = np.linalg.eigh(self.precision_.toarray())
            root = (vectors / np.sqrt(eigenvalues)) @ vectors.T
            return self.location_ + rng.standard_normal((int(n_samples), n_pixels)) @ root
        return self.distribution_.sample(int(n_samples), rng)

    def couplings(self):
        """The fitted Λ in the image-shaped stencil layout.

        Returns
        -------
        dict
            Term name (``"diagonal"``, ``"horizontal"``, ...) → array of shape ``(H, W)``
            holding ``Λ_{p, p+δ}`` at the pixel ``p`` that owns the pair.
        """
        self._check_fitted()
        fields = self._grid.fields(self.theta_)
        return {name: fields[k].reshape(self._grid.shape)
                for k, name in enumerate(self._grid.term_names)}

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path):
        """Save the fitted model to ``path`` (``.npz``, no pickle), atomically.

        The file is written next to ``path`` and renamed over it only when complete, so
        an existing file is never left half-written.
        """
        self._check_fitted()
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"Model files use the .npz extension. Got {str(path)!r}.")
        history_keys = sorted(self.history_[0]) if self.history_ else []
        arrays = dict(
            format=np.array(_FORMAT), format_version=np.array(_FORMAT_VERSION),
            shape=np.array(self._grid.shape), stencil=np.array(self.stencil),
            tying=np.array(self.tying), method=np.array(self.method),
            assume_centered=np.array(self.assume_centered),
            theta=self.theta_, location=self.location_,
            n_iter=np.array(self.n_iter_), residual=np.array(self.residual_),
            converged=np.array(self.converged_),
            history_keys=np.array(history_keys),
            history=np.array([[row[k] for k in history_keys] for row in self.history_],
                             dtype=np.float64).reshape(len(self.history_), len(history_keys)),
        )
        for name in ("kkt_residual_", "log_partition_estimate_", "perturbation_std_"):
            if hasattr(self, name):
                arrays[name.rstrip("_")] = np.array(getattr(self, name))
        if hasattr(self, "nu_"):       # not "nu": that key would shadow the parameter's
            arrays["noise_ratio"] = np.array(self.nu_)
        for name in self._get_param_names():
            value = getattr(self, name)
            if name not in arrays and isinstance(value, (int, float, str, bool)):
                arrays[f"param_{name}"] = np.array(value)
        directory = path.parent if str(path.parent) else Path(".")
        if not directory.is_dir():
            raise FileNotFoundError(f"Could not save the model to {path}: the directory "
                                    f"{directory} does not exist.")
        tmp = None
        try:
            handle, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.",
                                           suffix=".tmp")
            with os.fdopen(handle, "wb") as out:
                np.savez(out, **arrays)
            # mkstemp creates 0600 files; a saved model gets the permissions of any new
            # file (0666 less the umask), like the figures written beside it.
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except OSError as exc:
            raise OSError(exc.errno, f"Could not save the model to {path}: "
                                     f"{exc.strerror or exc}") from exc
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path):
        """Load a model written by :meth:`save`.

        Raises
        ------
        FileNotFoundError
            There is no such file.
        ValueError
            The file is not a sparsegauss model, or is damaged.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"There is no model file {path}.")
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory, not a model file.")
        try:
            data = np.load(path, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):   # a plain .npy array
                raise ValueError("it holds a single array, not a model archive")
            with data:
                content = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"Could not read a GridGaussian model from {path}: {exc}. "
                             "The file is damaged or not a .npz file.") from exc
        if content.get("format", np.array("")).item() != _FORMAT:
            raise ValueError(f"{path} is not a sparsegauss GridGaussian model file.")
        if int(content["format_version"]) > _FORMAT_VERSION:
            raise ValueError(f"{path} was written by a newer sparsegauss (format version "
                             f"{int(content['format_version'])}); upgrade sparsegauss.")
        extra = {key[len("param_"):]: content[key].item() for key in content
                 if key.startswith("param_") and key[len("param_"):] in cls._get_param_names()}
        model = cls(tuple(int(s) for s in content["shape"]), stencil=int(content["stencil"]),
                    tying=str(content["tying"]), method=str(content["method"]),
                    assume_centered=bool(content["assume_centered"]),
                    **extra)
        grid = GridParameterization(model.shape, model.stencil, model.tying)
        theta = content["theta"]
        if theta.shape != (grid.n_params,) or content["location"].shape != (grid.n_pixels,):
            raise ValueError(f"{path} is damaged: its parameters do not fit a "
                             f"{model.shape} grid with stencil {model.stencil}.")
        model._set_fitted(grid, theta, content["location"])
        model.n_features_in_ = grid.n_pixels
        model.n_iter_ = int(content["n_iter"])
        model.residual_ = float(content["residual"])
        model.converged_ = bool(content["converged"])
        for name in ("kkt_residual", "log_partition_estimate",
                     "perturbation_std"):
            if name in content:
                setattr(model, name + "_", float(content[name]))
        if "noise_ratio" in content:
            model.nu_ = float(content["noise_ratio"])
        keys = [str(k) for k in content["history_keys"]]
        kinds = dict(iteration=int, nfev=int, adapting=bool)
        model.history_ = [{k: kinds.get(k, float)(v) for k, v in zip(keys, row)}
                          for row in content["history"]]
        return model
