"""Conditional NCE (Ceylan & Gutmann 2018).

Each data sample ``x`` is paired with K perturbations ``y = x ± ε``, ``ε ~ q``, for any
distribution ``q`` symmetric about zero. The perturbation's density then cancels from
the log-ratio and so does the normalizing constant: ``G(x, y) = f_θ(x) − f_θ(y)``. The
loss is

    J(θ) = (1/(NK)) Σ_{i,k} log(1 + exp(−G(x_i, y_ik))),
    ∂J/∂θ = −(1/(NK)) Σ_{i,k} σ(−G_ik) [∇_θ f(x_i) − ∇_θ f(y_ik)].

The perturbation's covariance decides what CNCE estimates. For small ε, with
perturbations in ± pairs, ``softplus(−G₊) + softplus(−G₋)`` expands to
``2 log 2 + ½ εᵀ(−∇²f)ε + ¼ (εᵀ∇f)² + …``, whose mean over ``ε ~ N(0, σ²C)`` is
``σ²/2 · [½ ∇fᵀ C ∇f + tr(C ∇²f)]``: score matching in the metric ``C``. For a Gaussian
model ``f = −½ xᵀΛx`` on a pattern its stationarity condition is
``P[½ (CΛS + SΛC) − C] = 0`` (``S`` the data's covariance, ``P`` the projection on the
pattern); with ``C = Σ̂ = Λ̂⁻¹`` of the exact MLE it holds at ``Λ = Λ̂`` exactly, because
the MLE matches ``S`` on the pattern. With ``C = I`` (isotropic ε) it is ordinary score
matching, whose estimate of MNIST's precision is indefinite. So the grid Gaussian's
default perturbs along a pilot estimate's covariance (see
:func:`sparsegauss.estimators.fitting.fit_estimator`), and any ``q`` with a ``sample``
method can be passed here.

Scale: the classification should be neither trivial nor hopeless. For whitened
perturbations ``ε = c z``, ``z ~ N(0, Λ_q⁻¹)``, at the model ``Λ = Λ_q`` the expected
log-ratio is ``½ c² tr(Λ_q Λ_q⁻¹) = ½ c² D``; :func:`whitened_perturbation_scale` picks
``c = √(2/D)``, so that it is 1 (for isotropic ε at the independent model the same rule
is ``σ = √(2 / Σ_p 1/S_pp)``, the former default). Measured on a 16×16 grid (10⁵
samples, K = 10, pilot perturbations, Adam's last iterate): c = 0.3 and 1 gave the same
KL to the truth; c = 3 twice as much; at c = 10 the classifier separates every pair, the
gradient vanishes and the fit stays where it starts.

Efficiency. The ``¼ (εᵀ∇f)²`` term's θ-gradient sums ``D`` products of random
coordinates for every parameter, so a pair carries relative noise ≈ D; K pairs per
sample give CNCE about ``(1 + D/K)`` × score matching's variance, whatever the
perturbation's covariance (measured: 4.3x for D = 64, K = 20; 11.6x for D = 100, K = 10;
with pilot perturbations on a 16×16 grid, 10⁵ samples, Adam's last iterate: 25x at
K = 10). That is CNCE's price for needing no derivative of ``f`` in ``x``. The grid
Gaussian's defaults pay it with K sized by D (:func:`default_n_perturbations`) and by
averaging the second phase's iterates (``OptimizerOptions.average``), which spreads the
noise over the phase: 2.1–2.3x at K = 48–64 on the same grid.

Perturbation pool. Drawing fresh perturbations at every step was most of the cost of a
stochastic fit (2,560 × 784 normals a step on MNIST; 2,000 Adam steps took 63 s, and
21 s with a pool).
One pool of perturbations is drawn once and served in turn, paired ± with the data rows;
the symmetrized pool is itself a symmetric perturbation distribution, so the estimator
stays valid; it holds ``min(N⌈K/2⌉, max(B⌈K/2⌉, 2²⁴/D))`` rows (21,399 for MNIST: 128
MiB in float64), ``N⌈K/2⌉`` (one distinct perturbation per pair, as before) for a full
batch. The ± copies are built by one parallel Numba pass
(:func:`sparsegauss._kernels.antithetic_pairs`) into a buffer reused across steps.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.special import expit

from .._kernels import antithetic_pairs
from ..noise import DiagonalNoise
from ._driver import OptimizerOptions, _writes_into, draw_samples, run, whole_data

__all__ = ["CNCEOptions", "PerturbationPool", "ScaledPerturbation",
           "cnce_loss_grad", "default_n_perturbations", "fit_cnce",
           "whitened_perturbation_scale"]

#: Values in a stochastic fit's perturbation pool (2²⁴: 128 MiB in float64).
POOL_VALUES = 1 << 24
#: Perturbed values per step that set the default K (see default_n_perturbations).
STEP_VALUES = 3 << 20


@dataclass(frozen=True)
class CNCEOptions:
    """Conditional NCE's own settings.

    Attributes
    ----------
    n_noise : int, optional
        K, perturbations per data sample (drawn in ± pairs); None sizes it by the batch
        and D (:func:`default_n_perturbations`).
    pool_values : int
        Size budget (in values) of a stochastic fit's perturbation pool.
    """

    n_noise: Optional[int] = None
    pool_values: int = POOL_VALUES


class ScaledPerturbation:
    """``ε = scale · z`` with ``z ~ base``, a zero-mean symmetric distribution with a
    ``sample(n, random_state)`` method (e.g. a frozen zero-mean grid Gaussian)."""

    def __init__(self, base, scale):
        self.base, self.scale = base, float(scale)

    def sample(self, n_samples, random_state=None, out=None):
        if out is not None and _writes_into(self.base.sample):
            out = self.base.sample(n_samples, random_state, out=out)
        else:
            drawn = np.asarray(self.base.sample(n_samples, random_state))
            if out is None:
                return self.scale * drawn
            np.copyto(out, drawn.reshape(out.shape))
        out *= self.scale
        return out

    def __repr__(self):
        return f"ScaledPerturbation({self.base!r}, scale={self.scale:.4g})"


def default_n_perturbations(batch_rows, n_features):
    """K such that a step's ``batch_rows · K`` perturbed rows of D values hold about
    ``STEP_VALUES = 2²²`` values, between 2 (one ± pair) and D.

    CNCE's perturbation noise is ≈ D/K times the data's (module docstring), so K should
    grow with D, while a step costs ∝ K·D. A fixed budget of values per step keeps the
    step's cost fixed (about 4–6 ms on 2 cores) and gives small grids the K they need:
    16×16 → K = 64, which measured 3.1x the MLE's KL to the truth (10⁵ samples; K = 10:
    14x, 30: 5.4x, 120: 2.0x in 30 s); MNIST (28×28) → K = 21 (K = 20: held-out
    log-likelihood 0.20 / 0.48 nats/image below the MLE with 4 / 8 neighbours in 21 /
    25 s; K = 10: 0.39 / 0.82 in 14 s). Beyond K = D the perturbation noise is below the
    data's.
    """
    k = int(round(STEP_VALUES / (max(1, batch_rows) * n_features)))
    return int(min(max(k, 2), max(n_features, 2)))


def whitened_perturbation_scale(n_features):
    """``c = √(2/D)``: expected log-ratio 1 for ``ε = c z``, ``z`` drawn from the model."""
    return float(np.sqrt(2.0 / n_features))


class PerturbationPool:
    """A fixed sample of perturbations, served in turn as the ± partners of data rows.

    Parameters
    ----------
    perturbation : object
        ``sample(n, random_state)`` returning ``(n, D)`` draws, symmetric about zero.
    size : int
        Rows in the pool.
    n_features : int
    rng : numpy.random.Generator
    dtype : numpy dtype
        The data's: the pairs are built in it.
    """

    def __init__(self, perturbation, size, n_features, rng, dtype=np.float64):
        self.samples = np.ascontiguousarray(
            draw_samples(perturbation, size, n_features, rng, dtype))
        self.position, self._buffer = 0, None

    def pairs(self, batch, k):
        """``(len(batch) * k, D)``: row ``i*k + j`` is ``batch[i] ± ε``, ⌈k/2⌉ pool rows per
        data row, + for the first ⌈k/2⌉ copies and − for the rest.

        The array is a buffer reused by the next call.
        """
        n, d = batch.shape
        shape = (n * k, d)
        if (self._buffer is None or self._buffer.shape != shape
                or self._buffer.dtype != self.samples.dtype):
            self._buffer = np.empty(shape, dtype=self.samples.dtype)
        antithetic_pairs(np.ascontiguousarray(batch, dtype=self.samples.dtype),
                         self.samples, self.position, self._buffer)
        self.position = (self.position + n * ((k + 1) // 2)) % len(self.samples)
        return self._buffer


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


def fit_cnce(model, X, *, theta0, scale, perturbation, options=CNCEOptions(),
             optimizer=OptimizerOptions(), rng=None):
    """Fit θ by conditional NCE.

    Parameters
    ----------
    model : EnergyModel
    X : ndarray, shape (N, D)
    theta0, scale : ndarray, shape (n_params,)
    perturbation : float, ndarray of shape (D,), or object
        The perturbation distribution ``q``: a σ (one, or one per pixel) for
        ``N(0, diag σ²)``, or any object with ``sample(n, random_state)`` returning
        ``(n, D)`` draws symmetric about zero (e.g. :class:`ScaledPerturbation`).
    options : CNCEOptions
    optimizer : OptimizerOptions
        A full-batch optimizer pairs every sample with one fixed set of ``⌈K/2⌉``
        perturbations; a stochastic one serves a pool (see the module docstring).
    rng : numpy.random.Generator

    Returns
    -------
    scipy.optimize.OptimizeResult
    """
    rng = np.random.default_rng(rng)
    n_samples, n_features = X.shape
    if not hasattr(perturbation, "sample"):
        std = np.broadcast_to(np.asarray(perturbation, dtype=np.float64), (n_features,))
        perturbation = DiagonalNoise(std ** 2)
    batch_rows = optimizer.batch_size if optimizer.stochastic else n_samples
    k = (default_n_perturbations(batch_rows, n_features) if options.n_noise is None
         else options.n_noise)
    half = (k + 1) // 2
    size = min(n_samples * half, max(batch_rows * half, options.pool_values // n_features))
    dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
    pool = PerturbationPool(perturbation, size, n_features, rng, dtype)

    def draw(rows):
        batch = whole_data(X) if rows is None else model.minibatch(X, rows)
        return batch, (pool.pairs(batch, k),)

    def objective(theta, batch, drawn):
        return cnce_loss_grad(model, theta, batch, *drawn)

    return run(objective, draw, n_samples, theta0, scale, optimizer, rng, name="cnce")
