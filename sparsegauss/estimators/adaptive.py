"""The adaptive noise of NCE and ranking NCE (``noise="adaptive"``): a noise that needs
nothing but the data.

NCE is efficient only when its noise is close to the data, and the closest noise one can
name without fitting the model first is a frozen copy of the model itself. The adaptive
schedule therefore starts at the noise that needs only moments, ``N(0, diag S)`` (the
independent model, where the classifier is balanced), and replaces the noise by a frozen
copy of the current estimate ``p_θ`` at every step of a first phase; then it freezes the
noise at the estimate the first phase reached, and runs NCE (or ranking NCE) against
that fixed noise for the remaining steps, with ``log Z`` learned as usual.

With the noise refreshed at every step the first phase is exact in a simple way: against
``q = p_θ`` itself the log-ratio ``G(x) = f_θ(x) − ζ − log q(x) = log Z(θ) − ζ`` is the
same for every point, so the balanced classifier (``ζ = log Z(θ)``) gives every point the
weight ``½`` and NCE's gradient is half the log-likelihood gradient estimated with exact
samples of the current estimate:

    ∂J/∂θ = −½ [ (1/n) Σ_t ∇_θ f(x_t) − (1/m) Σ_s ∇_θ f(y_s) ],   y_s ~ p_θ.

That is contrastive divergence with exact negative samples. The first phase takes the
limit of infinitely many of them (ν → ∞ for the noise of each step): the noise average
``(1/m) Σ_s ∇_θ f(y_s)`` is replaced by its expectation under ``q = p_θ``, which is
``∇_θ log Z(θ)``, exact from the model. So the first phase is
:func:`~sparsegauss.estimators.cd.fit_cd` with ``sampler="expectation"``: stochastic-
gradient maximum likelihood, whose only noise is the data minibatch's. Adam's steps do
not depend on the factor ½. For the grid Gaussian ``∇ log Z`` is a selected inversion of
the factor each step already makes, cheaper than the 256 samples (see the CD module),
and it halved the default NCE fit's time (13.3 → 6.9 s with 4 neighbours, 17.0 → 7.8 s
with 8, same learning rate; 2026-12-01). Each step of either phase is a valid NCE
problem, and the final one is an ordinary one: a fixed noise, NCE's learned ``ζ``
compared with the exact log Z of its own estimate.

Why refresh at every step rather than in stages (scratch runs on MNIST, 60,000 images,
4 neighbours, from the diagonal noise, with ζ re-solved on every minibatch; KL to the
exact MLE):

* stages of 100 Adam steps with the noise refreshed between stages: against a noise more
  than a few nats away the classifier separates data from noise within a stage and the
  stage moves the estimate by a fixed fraction only (KL 166 → 10.7 after 10 stages,
  ×0.72 per stage), whatever the learning rate;
* a refresh every 4 steps (1,000 steps, then 1,000 against the fixed noise): KL 1.1; every
  step: KL 0.27, held-out log-likelihood 0.40 nats/image below the MLE's, learned log Z
  0.06 nats from the exact value of its own estimate.

As shipped (the model expectation, learning rate 0.03, 4,000 steps in all; MNIST,
60,000 images, one fit each, 2026-12-01 evening, 2 cores): KL to the exact MLE 0.035
with 4 neighbours and 0.18 with 8, held-out log-likelihood 0.034 / 0.25 nats/image below
the MLE's, learned log Z 0.035 / 0.017 nats from the exact value of its own estimate, in
7.4 / 9.1 s; the first phase ended at KL 0.030 / 0.39. The learning rate by measurement
(8 neighbours, 4,000 steps): 0.02 → KL 0.56, 0.03 → 0.18, 0.05 → 0.23, 0.1 → 1.2 and not
converged; with 4 neighbours 0.03 → 0.035, 0.05 → 0.043. With 3,000 steps at 0.05 the
8-neighbour fit ended at KL 0.77. (With sampled negatives and learning rate 0.02: KL
0.056 / 0.48 in 10.2–13.3 / 12.7–17.0 s; with 2,000 steps 0.086 and 3.3.)
Those fits used random state 0. Over random states 0–9 (2026-12-02, 8 neighbours) the
8-neighbour result depended on the stream: KL 0.17–0.90 (median 0.28), held-out up to
1.05 nats/image below the MLE's (two states of ten over the 0.5 goal). The first phase
now runs Adam with β₂ = 0.99 (:data:`~sparsegauss.estimators.cd.CD_BETAS`, as CD): KL
0.10–0.33 (median 0.12), at most 0.42 nats below; 4 neighbours 0.029–0.030.
Since 2026-12-04 NCE (not ranking NCE or CNCE) splits its default 3,500 steps 2,500 +
1,000 (:data:`ADAPTIVE_STEPS`): the pilot's steps are what the estimate's quality
rests on, and over random states 0–9 the 8-neighbour fit ended at KL 0.09–0.14 (at most
0.18 nats/image below the MLE held out) in an eighth fewer steps; returning the mean of
the last 500 iterates rather than the last keeps NCE's efficiency on a known grid
Gaussian (see ``SECOND_PHASE_AVERAGE`` in :mod:`.fitting`), at KL at most 0.15 on MNIST.
Conditional NCE uses the same first phase as a pilot: its default perturbations are
drawn from the frozen pilot (scaled), see :mod:`.cnce`.
It is NCE's and ranking NCE's default (``noise="auto"``) since 2026-12-01, because the
fixed default before it was the 4-neighbour model's own MLE. It fails on strongly
correlated data, where the fit is flagged as not converged: the first phase, like CD at
its defaults, moves far too slowly from the independent model. On 50,000 28×28 patches of
the bundled photographs (4 neighbours) the first phase ended at KL 406 from the MLE and
NCE at 400 (CD's defaults: 276–298 in two runs, with no warning); started at the tied
grid MLE with the Jacobi scale of that start, the first phase reached 80 and the second
left the cone. Adam is the bottleneck there, not the noise or the sampling: scratch runs
on the same patches (2026-12-01, 2,000 steps) ended at KL 342 in log-diagonal and
partial-correlation coordinates (``Λ = D^½ (I + C) D^½``, Adam on ``log D`` and ``C``), at
412 with the exact likelihood gradient in place of the sampled one, and at 87 from
Besag's pseudo-likelihood estimate (symmetrized, shrunk into the cone; KL 91 at the
start), which moved it hardly at all. The MLE's condition number there is 4·10⁴; what
converges is a Newton step with exact Hessian products, i.e. the MLE solver itself.

A learned ``ζ`` cannot follow a moving noise: Adam moves every rescaled coordinate by
about its learning rate per step, ζ included, while one step of all 2,296 precision
parameters moves log Z by several nats (in stages of 100 steps against a diagonal start,
ζ stayed within 0.1 nats of its start while log Z moved by 12). That is one more reason
the first phase needs no ζ: against the current estimate the balanced ζ is its log Z.

Common random numbers (one fixed set of normals pushed through each new factor) make the
refreshes cheaper but bias the first phase: it then matches the data's moments to those
of the fixed normals (KL 6.9 instead of 0.83 after 1,000 steps), so fresh normals are drawn.
"""

import dataclasses

from scipy.optimize import OptimizeResult

from .cd import CDOptions, fit_cd

__all__ = ["ADAPTIVE_STEPS", "ADAPT_LEARNING_RATE", "ADAPT_STEPS_FULL_BATCH",
           "adapt_noise", "adapting_share", "join_phases"]

#: Default minibatch steps of the fits that start with the adaptive pilot, as (adapting
#: the noise, after it): the default ``max_iter`` is their sum, and a ``max_iter`` a
#: user gives is split in the same proportion (:func:`adapting_share`). CNCE's pilot
#: keeps 2,000 + 2,000. NCE's 2,500 + 1,000 by measurement on MNIST (60,000
#: training images, random states 0–9, one fit each, 2026-12-04, ``GridGaussian(
#: method="nce", max_iter=P + Q)`` with P adapting steps; KL to the exact MLE median /
#: largest, held-out log-likelihood below the MLE's at most, in nats/image):
#:
#: ==============  =============================  =============================
#: P + Q           8 neighbours                   4 neighbours
#: ==============  =============================  =============================
#: 2,000 + 2,000   KL 0.116 / 0.211, 0.27 below   KL 0.029 / 0.030, 0.055 below
#: 1,500 + 1,500   KL 0.26 / 0.73, 0.88 below     —
#: 1,000 + 2,000   KL 0.63 / 5.1, 5.4 below       —
#: 2,000 + 1,000   KL 0.171 / 0.334, 0.39 below   KL 0.036 / 0.038, 0.062 below
#: 2,000 + 500     KL 0.250 / 0.503, 0.55 below   KL 0.054 / 0.056, 0.079 below
#: 2,500 + 500     KL 0.158 / 0.206, 0.25 below   —
#: 2,500 + 750     KL 0.120 / 0.161, 0.21 below   —
#: 2,500 + 1,000   KL 0.101 / 0.138, 0.18 below   KL 0.034 / 0.036, 0.039 below
#: 3,000 + 500     KL 0.131 / 0.207, 0.24 below   —
#: ==============  =============================  =============================
#:
#: The first phase is what the estimate's quality rests on (the noise NCE then needs only
#: to refine against); 2,500 + 1,000 beats the former 2,000 + 2,000 on every 8-neighbour
#: figure with an eighth fewer steps, and every learned log Z was within 0.1 nats of the
#: exact value. These fits returned the last iterate (a scratch loop, the same fits as
#: ``benchmarks.one_off.nce_split`` before the tail mean); the shipped fit returns the
#: mean of the second phase's last 500
#: (``estimators.fitting.SECOND_PHASE_AVERAGE``), which keeps a known 16×16 grid Gaussian's
#: KL to the truth at 2.6–2.9× the MLE's (4.5–4.8× for the last of 1,000 iterates) at
#: KL 0.036–0.037 / ≤ 0.151 from MNIST's MLE (4 / 8 neighbours; ``python -m
#: benchmarks.one_off.nce_split {4,8} 10 2500+1000``: held-out at most 0.037 / 0.191
#: nats/image below the MLE's, learned log Z within 0.059 / 0.117 nats of exact, medians
#: 1.68 / 2.07 s).
#:
#: Ranking NCE (5 noise images a data image) takes the same 2,500 + 1,000 and the same
#: mean of the last 500 iterates since 2026-12-04 evening (it had 2,000 + 2,000 and the
#: last iterate). MNIST (AMD EPYC): before, random states 0–4 (``python -m
#: benchmarks.one_off.nce_split {8,4} 5 2000+2000 rnce``), 8 neighbours KL to the MLE
#: median / largest 0.107 / 0.147, held-out at most 0.181 nats/image below the MLE's,
#: median time 3.66 s, 4 neighbours 0.026 / 0.027, 0.031 below, 2.96 s; now, random
#: states 0–9 (``... {8,4} 10 2500+1000 rnce``), 0.081 / 0.093, 0.099 below, 2.61 s and
#: 0.033 / 0.034, 0.021 below, 2.19 s (the last iterate instead of the mean, states
#: 0–4: 0.073 / 0.083 and 0.033 / 0.034). On the known 16×16 grid
#: Gaussian (10⁵ samples, ``benchmarks.one_off.synthetic_defaults``) its KL to the truth
#: is 2.39× / 2.56× the MLE's (4 / 8 neighbours; 2.55× / 2.53× before; the last of
#: 1,000 iterates 3.18× / 3.10×). CNCE's pilot keeps 2,000 + 2,000 (not studied).
ADAPTIVE_STEPS = {"nce": (2500, 1000), "rnce": (2500, 1000), "cnce": (2000, 2000)}
#: Adam's rate for both phases, by measurement (MNIST, 8 neighbours, 4,000 steps in all:
#: KL to the MLE 0.56 at 0.02, 0.18 at 0.03, 0.23 at 0.05; see the module docstring).
ADAPT_LEARNING_RATE = 3e-2
#: Adam steps of the first phase before a full-batch optimizer's second phase.
ADAPT_STEPS_FULL_BATCH = 1000


def adapting_share(method):
    """The share of a stochastic fit's steps that adapt the noise (or make CNCE's
    pilot): ``P / (P + Q)`` of ``ADAPTIVE_STEPS[method]``."""
    adapting, after = ADAPTIVE_STEPS[method]
    return adapting / (adapting + after)


def adapt_noise(model, X, *, theta0, scale, optimizer, rng, steps):
    """The adaptive schedule's first phase: ``steps`` NCE steps, each against a frozen
    copy of the current estimate (= CD with exact samples, see the module docstring).

    Parameters
    ----------
    model : EnergyModel
        Needs an exact sampler and an exact log Z (``model.frozen``).
    X : ndarray, shape (N, D)
    theta0 : ndarray
        The start: θ of the moment-only noise (for the grid Gaussian the independent
        model ``diag(1/S_pp)``).
    scale : ndarray
    optimizer : OptimizerOptions
        Its ``max_iter`` is replaced by ``steps``.
    rng : numpy.random.Generator
    steps : int

    Returns
    -------
    noise : object
        ``model.frozen(θ_A)``: the fixed noise of the second phase.
    result : scipy.optimize.OptimizeResult
        The first phase (``x`` = θ_A).
    """
    if not (model.has_exact_sampler and model.has_log_partition):
        raise TypeError(f"The adaptive noise needs exact samples and the exact log Z (with "
                        f"its gradient) of the model; {type(model).__name__} has not both. "
                        "Pass a noise distribution instead.")
    result = fit_cd(model, X, theta0=theta0, scale=scale,
                    options=CDOptions(sampler="expectation"),
                    optimizer=dataclasses.replace(optimizer, max_iter=steps), rng=rng)
    return model.frozen(result.x), result


def join_phases(first, second):
    """One optimizer result for the two phases: the second's estimate, both histories
    (iterations and times numbered on), and success only if both phases succeeded.

    Every row gets ``adapting`` (True in the first phase, whose loss is the exact
    negative log-likelihood; False in the second, whose loss is NCE's), and the keys of
    the second phase's rows that the first lacks (NCE's ``log_partition_estimate``) as
    NaN, so that all rows have the same keys."""
    steps, seconds = first.nit, first.history[-1]["time"]
    missing = {key: float("nan") for key in second.history[0] if key not in first.history[0]}
    history = ([dict(row, **missing, adapting=True) for row in first.history]
               + [dict(row, adapting=False, iteration=row["iteration"] + steps,
                       time=row["time"] + seconds) for row in second.history[1:]])
    joined = OptimizeResult(second)
    joined.update(nit=first.nit + second.nit, nfev=first.nfev + second.nfev,
                  history=history, success=bool(first.success and second.success),
                  message=(second.message if first.success else
                           f"adapting the noise: {first.message}"))
    return joined
