"""What every estimator of an unnormalized model shares: minibatches, noise samples, and
one optimization loop over rescaled parameters.

An estimator supplies ``objective(params, batch, drawn) -> (loss, grad)`` and
``draw(rows) -> (batch, drawn)`` (the random part of its objective for the data rows
``rows``, all of them when ``rows`` is None); :func:`run` does the rest. It works in
``u = params / scale``: pixel scales that differ by orders of magnitude would otherwise
stall every first-order method, and the caller knows the right scale (for the grid
Gaussian, ``1/√diag(H)`` of the log-likelihood's Hessian at the independent model).
Full-batch optimizers (``"lbfgs"``, ``"scipy-lbfgs"``, ``"newton-cg"``) see all the data
and one fixed draw; stochastic ones (``"adam"``, ``"sgd"``, ``"rmsprop"``) a fresh
minibatch and a fresh draw at every step.
"""

import functools
import inspect
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .._memory import check_allocation, populated_empty
from ..exceptions import SparseGaussError
from ..optimize import STOCHASTIC, minimize

__all__ = ["Batches", "NoisePool", "OptimizerOptions", "draw_noise", "draw_samples",
           "run"]


@dataclass(frozen=True)
class OptimizerOptions:
    """How an estimator's objective is minimized (see :func:`sparsegauss.optimize.minimize`).

    ``tol`` is relative for full-batch methods (the largest rescaled gradient entry
    against its value at the reference point) and the plateau test of the stochastic
    ones. ``average`` is the stochastic methods' share of tail-averaged steps, ``betas``
    Adam's decay rates of its moment estimates (β₂ also RMSProp's; see
    :func:`sparsegauss.optimize.minimize`).
    """

    optimizer: str = "lbfgs"
    tol: float = 1e-6
    max_iter: int = 500
    learning_rate: float = 1e-2
    schedule: str = "cosine"
    batch_size: int = 256
    callback: Optional[Callable] = None
    average: float = 0.0
    betas: tuple = (0.9, 0.999)

    @property
    def stochastic(self):
        return self.optimizer in STOCHASTIC


class Batches:
    """Minibatches of row indices of ``n_rows`` rows: a fresh permutation every epoch.

    A batch of every row is ``None`` (the estimators' ``draw(None)``, the whole data as
    it is): gathering all rows copied the data at every step (2 GiB a step for NCE's 125
    samples of a 2048×2048 grid, whose default batch of 256 holds them all).
    """

    def __init__(self, n_rows, batch_size, rng):
        self.n_rows, self.batch_size, self.rng = n_rows, min(batch_size, n_rows), rng
        self.order, self.position = rng.permutation(n_rows), 0

    def next(self):
        if self.batch_size == self.n_rows:
            return None
        if self.position + self.batch_size > self.n_rows:
            self.order, self.position = self.rng.permutation(self.n_rows), 0
        rows = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return np.sort(rows)      # sorted: the gather reads memory in order


#: Values per block of a noise draw: the float64 transient of one block is 32 MiB.
_NOISE_BLOCK_VALUES = 1 << 22


def whole_data(X):
    """The data for a full-batch objective that reads it through NumPy at every
    evaluation: a lazily centred :class:`~sparsegauss.stats.RowSelection` is centred
    here, once, instead of at every evaluation (an array is returned as it is)."""
    return np.asarray(X)


def _writes_into(sample):
    """Whether a ``sample`` method takes an ``out`` array to write into (asked once per
    function: ``inspect.signature`` took 0.1 ms, at every step of fresh-noise NCE)."""
    function = getattr(sample, "__func__", sample)
    try:
        return _takes_out(function)
    except TypeError:                   # an unhashable callable: asked every time
        return _takes_out.__wrapped__(function)


@functools.lru_cache(maxsize=64)
def _takes_out(function):
    try:
        return "out" in inspect.signature(function).parameters
    except (TypeError, ValueError):     # builtins without a signature
        return False


def draw_samples(distribution, n_samples, n_pixels, rng, dtype=np.float64):
    """``n_samples`` draws of ``distribution.sample`` in ``dtype``, shape (n, n_pixels).

    Drawn block by block into one array of the data's dtype, so that float32 data get
    float32 noise without a float64 copy of the whole sample (at 512×512, 500 samples
    are 1 GiB in float64). A float64 draw from a distribution whose ``sample`` takes
    ``out=`` (the library's grid Gaussians) is written straight into the result: copying
    MNIST's 60,000-sample pool block by block took 0.4–0.8 s of a 6 s NCE fit.
    """
    if np.dtype(dtype) == np.float64 and _writes_into(distribution.sample):
        out = populated_empty((n_samples, n_pixels))
        drawn = distribution.sample(n_samples, rng, out=out)
        if drawn is not out:
            raise ValueError(f"{type(distribution).__name__}.sample(n, random_state, out=) "
                             "must return the array it was given.")
        return out
    block = int(max(1, _NOISE_BLOCK_VALUES // n_pixels))
    out = None
    for start in range(0, n_samples, block):
        stop = min(start + block, n_samples)
        drawn = np.asarray(distribution.sample(stop - start, rng))
        if drawn.size != (stop - start) * n_pixels:
            raise ValueError(f"{type(distribution).__name__}.sample({stop - start}, "
                             f"random_state) returned shape {drawn.shape}; expected "
                             f"({stop - start}, {n_pixels}), one row of H*W pixels per "
                             "sample.")
        if stop - start == n_samples and drawn.dtype == dtype:
            # One block already in the data's dtype (every minibatch draw): use it as it
            # is rather than copy it (1.6 MB per fresh-noise NCE step on MNIST).
            return drawn.reshape(n_samples, n_pixels)
        if out is None:
            out = populated_empty((n_samples, n_pixels), dtype)
        out[start:stop] = drawn.reshape(stop - start, n_pixels)
    return out


def draw_noise(noise_model, n_samples, n_pixels, rng, dtype=np.float64):
    """``n_samples`` noise samples in ``dtype`` (see :func:`draw_samples`), and their
    noise log-densities: those of the stored (rounded) samples, so that data and noise
    enter the classifier on the same footing.

    A float64 draw from a noise with ``sample_and_score`` (the library's grid Gaussians)
    gets its log-densities with the samples, without a pass over them: fresh-noise NCE
    on MNIST spent 0.2 s of its 4 s scoring 256 new samples at each of 2,000 steps.
    """
    sample_and_score = getattr(noise_model, "sample_and_score", None)
    if np.dtype(dtype) == np.float64 and sample_and_score is not None:
        out = populated_empty((n_samples, n_pixels))
        drawn, log_density = sample_and_score(n_samples, rng, out=out)
        if drawn is not out or np.shape(log_density) != (n_samples,):
            raise ValueError(f"{type(noise_model).__name__}.sample_and_score(n, "
                             "random_state, out=) must return the array it was given and "
                             "one log-density a sample.")
        return out, np.asarray(log_density, dtype=np.float64)
    out = draw_samples(noise_model, n_samples, n_pixels, rng, dtype)
    return out, np.asarray(noise_model.score_samples(out), dtype=np.float64)


class NoisePool:
    """A fixed sample from the noise and its log-densities, served in minibatches.

    NCE as Gutmann & Hyvärinen define it uses one sample of M = νN noise points. Drawing
    it once and scoring it once, instead of fresh noise at every step, removes the
    stochastic fits' main cost: on MNIST a grid-noise draw of 256 images took 4 ms of a
    6 ms Adam step, while the whole pool of 60,000 is drawn in about one second.

    The pool's points are independent draws, so consecutive blocks are as random as any:
    a minibatch is a slice (a view) taken in turn, wrapping around, not a gather of random
    rows (gathering 256 rows of 784 from a 50,000-row pool cost 0.5 ms per step, as much
    as a DEM's forward pass). Each epoch pairs the blocks with differently permuted data.
    """

    def __init__(self, noise_model, size, n_pixels, batch_size, rng, dtype=np.float64):
        # Checked here, once, not in every minibatch draw: the pool is what grows (as
        # 4p − N for few samples of many parameters, see nce.noise_points_needed).
        check_allocation(
            np.dtype(dtype).itemsize * size * n_pixels,
            f"A noise pool of {size:,} images of {n_pixels:,} pixels",
            "NCE and ranking NCE need at least 4p − N noise images (p parameters, N "
            "samples) so that their classifier cannot separate the data from the noise. "
            "Use more samples, tied parameters (tying='tied'), or method='mle' (exact).")
        self.samples, self.log_density = draw_noise(noise_model, size, n_pixels, rng, dtype)
        self.batch_size, self.position = min(batch_size, size), 0

    def next(self):
        if self.position + self.batch_size > len(self.samples):
            self.position = 0
        block = slice(self.position, self.position + self.batch_size)
        self.position += self.batch_size
        return self.samples[block], self.log_density[block]


def run(objective, draw, n_samples, x0, scale, options, rng, *, reference=None, name="fit"):
    """Minimize an estimator's objective; returns the optimizer's result in ``params``.

    Parameters
    ----------
    objective : callable
        ``objective(params, batch, drawn) -> (loss, grad)``.
    draw : callable
        ``draw(rows) -> (batch, drawn)``; ``rows`` is None for the full batch.
    n_samples : int
        Rows of the data.
    x0, scale : ndarray, shape (n_params,)
        Start and the scale of each parameter (the optimizer sees ``params / scale``).
    options : OptimizerOptions
    rng : numpy.random.Generator
    reference : ndarray, optional
        Where the full-batch methods' relative stopping rule takes its reference gradient
        (default: the start). Estimators started elsewhere than their usual reference
        (NCE at its noise) pass the usual one, so that "relative" means the same for
        every start.

    Returns
    -------
    result : scipy.optimize.OptimizeResult
        ``x`` in the original parameters.
    """
    scale = np.asarray(scale, dtype=np.float64)
    fixed = None
    if options.stochastic:
        batches = Batches(n_samples, options.batch_size, rng)

        def fun(u):
            loss, grad = objective(scale * u, *draw(batches.next()))
            return loss, scale * grad
    else:
        fixed = draw(None)

        def fun(u):
            loss, grad = objective(scale * u, *fixed)
            return loss, scale * grad

    first_gradient = []

    def relative_gradient(u, loss, grad):
        # Scale-free: the objectives' gradients differ by orders of magnitude (CNCE's is
        # O(σ²)), so full-batch fits stop when the largest rescaled gradient entry has
        # fallen by the factor ``tol`` below its value at the reference point.
        size = float(np.max(np.abs(grad)))
        if not first_gradient:
            first_gradient.append(max(size, np.finfo(float).tiny))
        return size / first_gradient[0]

    if not options.stochastic and reference is not None and not np.array_equal(reference, x0):
        first_gradient.append(max(float(np.max(np.abs(fun(reference / scale)[1]))),
                                  np.finfo(float).tiny))
    result = minimize(fun, x0 / scale, method=options.optimizer, tol=options.tol,
                      maxiter=options.max_iter, callback=options.callback,
                      learning_rate=options.learning_rate, schedule=options.schedule,
                      convergence=relative_gradient, betas=options.betas,
                      average=options.average if options.stochastic else 0.0)
    params = scale * result.x
    if not np.all(np.isfinite(params)):
        raise SparseGaussError(f"The {name} fit produced non-finite parameters.")
    result.x = params
    return result
