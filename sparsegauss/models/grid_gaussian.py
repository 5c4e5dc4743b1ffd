"""The zero-mean grid Gaussian as an energy model, on the library's Numba kernels.

For centred data ``f_θ(x) = −½ xᵀΛ(θ)x`` with Λ(θ) linear in θ (see
:mod:`sparsegauss.grid`). Every piece of :class:`~sparsegauss.models.EnergyModel` is a
pattern statistic of the batch:

* ``Σ_n w_n ∇_θ f(x_n) = −½ adjoint(m ⊙ T_w)`` with ``T_w`` the weighted second moments
  on the stencil pattern (one pass, :func:`sparsegauss.stats.pattern_moments`);
* score ``ψ(x) = −Λx`` (:func:`sparsegauss._kernels.apply_stencil`);
* Laplacian ``Δf = −tr Λ``, the same for every x, with gradient ``−adjoint(e_diag)``;
* ``Σ_n Σ_i V_ni ∇_θ ψ_i(x_n) = −∇_θ Σ_n v_nᵀΛx_n = −adjoint(C)``, ``C`` the
  symmetrized cross moments of V and X on the pattern;
* ``log Z = (D/2) log 2π − ½ log det Λ`` and ``∇ log Z = −½ adjoint(m ⊙ Σ)`` from the
  sparse Cholesky factor and its selected inverse; exact samples from the same factor;
  chromatic Gibbs sweeps as its MCMC.
"""

import numpy as np

from .. import _kernels
from ..distribution import GridGaussianDistribution
from ..normalization import GridNormalizer
from ..stats import (RowSelection, as_float_array, logistic_moments, moment_operands,
                     pattern_moments, quadratic_forms)
from .base import EnergyModel

__all__ = ["GridGaussianEnergy", "colouring", "gibbs_sample"]


def colouring(grid):
    """Colour of every pixel and the number of colours (no two neighbours share one).

    A checkerboard for 4 neighbours, a 2×2 pattern (4 colours) for 8.
    """
    rows, cols = np.divmod(np.arange(grid.n_pixels), grid.shape[1])
    if grid.stencil == 4:
        return ((rows + cols) % 2).astype(np.int64), 2
    return (2 * (rows % 2) + cols % 2).astype(np.int64), 4


def gibbs_sample(start, grid, theta, n_sweeps, random_state=None):
    """Run ``n_sweeps`` chromatic Gibbs sweeps for ``N(0, Λ(θ)⁻¹)`` from ``start``.

    Pixels of one colour share no edge, so each colour class is an exact block update
    ``x_p ~ N(−Σ_{q∼p} Λ_pq x_q / Λ_pp, 1 / Λ_pp)``, done in parallel over chains.

    Parameters
    ----------
    start : ndarray, shape (n, D)
        Chains' initial states (copied).
    theta : ndarray
        Must have a positive diagonal (the conditional precisions).

    Returns
    -------
    ndarray, shape (n, D)
    """
    rng = np.random.default_rng(random_state)
    chains = np.array(start, dtype=np.float64, order="C", copy=True)
    colours, n_colours = colouring(grid)
    normals = rng.standard_normal((n_sweeps,) + chains.shape)
    _kernels.gibbs_sweeps(chains, grid.fields(theta), grid.shifts, colours, n_colours, normals)
    return chains


class GridGaussianEnergy(EnergyModel):
    """``f_θ(x) = −½ xᵀΛ(θ)x`` for one :class:`~sparsegauss.grid.GridParameterization`.

    Parameters
    ----------
    grid : GridParameterization

    Notes
    -----
    The exact log Z, its gradient and exact samples exist only inside the cone of
    positive-definite Λ; outside it they raise
    :class:`~sparsegauss.NotPositiveDefiniteError`, which the optimizers treat as an
    infinite loss (their line searches back off).

    Examples
    --------
    >>> import numpy as np
    >>> from sparsegauss.grid import GridParameterization
    >>> from sparsegauss.models import GridGaussianEnergy
    >>> grid = GridParameterization((2, 2))
    >>> model = GridGaussianEnergy(grid)
    >>> theta = grid.project(np.vstack([np.full(4, 2.0), np.full(4, -0.5),
    ...                                 np.full(4, -0.5)]) * grid.valid)
    >>> float(model.log_density(theta, np.ones((1, 4)))[0])   # −½ 1ᵀΛ1 = −½ (8 − 4)
    -2.0
    """

    has_log_partition = True
    has_exact_sampler = True
    linear_in_params = True         # Λ(θ) is linear in θ

    def __init__(self, grid):
        self.grid = grid
        self.n_params = grid.n_params
        self.n_features = grid.n_pixels
        self._normalizer = None
        self._last_factor = None
        indicator = np.zeros((grid.n_terms, grid.n_pixels))
        indicator[0] = 1.0
        self._trace_gradient = grid.adjoint(indicator)     # ∂ tr Λ / ∂θ

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_normalizer"] = state["_last_factor"] = None   # CHOLMOD objects do not pickle
        return state

    def _factorize(self, theta):
        """Cholesky factor of Λ(θ), reused while θ is unchanged.

        CD asks for log Z, then samples, then the loss at one θ per step: one
        factorization serves all three. The factor lives in the analysis' memory, so
        the cache is cleared before any refactorization (a failed one overwrites it).
        """
        cached = self._last_factor
        if cached is not None and np.array_equal(cached[0], theta):
            return cached[1]
        self._last_factor = None
        factor = self.normalizer.factorize(theta)
        self._last_factor = (np.array(theta, dtype=np.float64), factor)
        return factor

    @property
    def normalizer(self):
        """The grid's :class:`~sparsegauss.normalization.GridNormalizer` (made at first use)."""
        if self._normalizer is None:
            self._normalizer = GridNormalizer(self.grid)
        return self._normalizer

    def minibatch(self, X, rows):
        """A :class:`~sparsegauss.stats.RowSelection`: the data passes read the rows in
        place (of a float32/float64 C-contiguous array, or of a selection, with its
        centre; anything else is gathered). ``rows`` are the optimizer's: valid indices,
        not checked again (:meth:`RowSelection.take`)."""
        if isinstance(X, RowSelection):
            return X.take(rows)
        if (isinstance(X, np.ndarray) and X.ndim == 2 and X.flags.c_contiguous
                and X.dtype in (np.float32, np.float64)):
            return RowSelection(X, rows)
        return X[rows]

    def log_density(self, theta, X):
        return -0.5 * quadratic_forms(X, self.grid, self.grid.fields(theta))

    def log_density_grad(self, theta, X, weights):
        moments = pattern_moments(X, self.grid, weights=np.asarray(weights, dtype=np.float64))
        return -0.5 * self.grid.adjoint(self.grid.multiplicity[:, None] * moments)

    def logistic_terms(self, theta, X, x_offsets, Y, y_offsets):
        # One read of the rows of both classes for the quadratic forms, the weights and
        # the weighted pattern products, in one kernel call, where log_density_vjp reads
        # each class twice (NCE's second phase).
        loss, weight, moments = logistic_moments(X, Y, self.grid, self.grid.fields(theta),
                                                 x_offsets, y_offsets)
        return loss, -0.5 * self.grid.adjoint(self.grid.multiplicity[:, None] * moments), weight

    def score(self, theta, X):
        return -_kernels.apply_stencil(as_float_array(X), self.grid.fields(theta),
                                       self.grid.shifts)

    def laplacian(self, theta, X):
        return np.full(len(X), -float(self.grid.fields(theta)[0].sum()))

    def laplacian_grad(self, theta, X, weights):
        return -float(np.sum(weights)) * self._trace_gradient

    def score_vjp(self, theta, X, V):
        X = as_float_array(X)
        V = np.ascontiguousarray(V, dtype=np.float64)
        cross = _kernels.pattern_cross_moments(X, V, np.ones(len(X)), self.grid.shifts,
                                               _kernels.default_chunks(len(X)))
        cross[0] *= 0.5                     # the kernel doubles the diagonal term
        cross[~self.grid.valid] = 0.0
        return -self.grid.adjoint(cross)

    def log_partition(self, theta):
        log_z, grad, _ = self.normalizer.value_and_grad_pairs_of(self._factorize(theta))
        return log_z, grad

    def log_partition_value(self, theta):
        return self.normalizer.log_partition_of(self._factorize(theta))

    def likelihood_terms(self, theta, X):
        # The minibatch's pass runs on one thread beside the factorization and selected
        # inversion of log Z on the other, in one kernel call (see
        # SparseCholesky.factorize_and_invert). NCE's default fit on MNIST, whose first
        # phase is this step (2026-12-02, alternated in one process, medians of 4):
        # 2.81–4.43 → 2.43–2.65 s (medians 3.53 → 2.56 s) against the two halves on two
        # Python threads. A large factor's kernels use both threads themselves: the two
        # halves in turn (the generic path, whose pass picks its own parallel split).
        if self.normalizer.analysis.splits_over_threads:
            return super().likelihood_terms(theta, X)
        n_samples = X.shape[0]
        self._last_factor = None            # the refactorization overwrites the cached one
        log_z, grad_log_z, moments, factor = self.normalizer.value_and_grad_beside(
            theta, moment_operands(X, self.grid,
                                   weights=np.full(n_samples, 1.0 / n_samples)))
        self._last_factor = (np.array(theta, dtype=np.float64), factor)
        mean_grad = -0.5 * self.grid.adjoint(self.grid.multiplicity[:, None] * moments)
        # f is linear in θ: mean f = θ · mean ∇f.
        return log_z - float(np.dot(theta, mean_grad)), grad_log_z - mean_grad

    def sample(self, theta, n_samples, random_state=None):
        return self._factorize(theta).sample(int(n_samples), random_state)

    def frozen(self, theta):
        """``N(0, Λ(θ)⁻¹)`` frozen, with its own factorization kept between draws."""
        return GridGaussianDistribution(self.grid, theta)

    def mcmc(self, theta, start, n_steps, random_state=None):
        return gibbs_sample(start, self.grid, theta, n_steps, random_state)
