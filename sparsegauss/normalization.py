"""The exact log-partition function of a grid Gaussian and its gradient.

For ``p(x) = exp(−½ xᵀΛx) / Z`` with ``Λ = Λ(θ)`` positive definite,

    log Z(θ) = (D/2) log 2π − ½ log det Λ(θ),
    ∂ log Z / ∂θ_k = −½ tr(Σ ∂Λ/∂θ_k),   Σ = Λ⁻¹,

and ``tr(Σ A_k)`` only reads ``Σ`` on Λ's pattern, which the selected inverse of the
sparse Cholesky factor gives at the cost of a factorization.
"""

import numpy as np

from ._blas import one_blas_thread
from .cholesky import SparseCholesky

__all__ = ["GridNormalizer", "LOG_2PI"]

LOG_2PI = float(np.log(2.0 * np.pi))


class GridNormalizer:
    """Exact ``log Z(θ)`` and its gradient for one :class:`~sparsegauss.grid.GridParameterization`.

    The symbolic Cholesky analysis of the grid's pattern is done once, here; every call
    refactors numerically.

    Parameters
    ----------
    grid : GridParameterization
    """

    def __init__(self, grid):
        self.grid = grid
        self.analysis = SparseCholesky(grid.pattern)
        self._rows, self._cols = grid.pair_indices()
        # Every Λ(θ) has the pattern's structure: its values' places in the factor are
        # looked up once.
        self._positions = self.analysis.value_positions(grid.pattern)
        self._pair_weights = grid.multiplicity[self.grid.pair_terms()]

    def factorize(self, theta):
        """Cholesky factor of Λ(θ); raises ``NotPositiveDefiniteError`` outside the cone."""
        data = self.grid.precision_data(theta)
        return self.analysis.factorize_values(data, self._positions,
                                              lambda: self.grid._csc(data))

    def log_partition(self, theta):
        """``(D/2) log 2π − ½ log det Λ(θ)``."""
        return self.log_partition_of(self.factorize(theta))

    def log_partition_of(self, factor):
        """log Z from a Cholesky factor of Λ."""
        return 0.5 * self.grid.n_pixels * LOG_2PI - 0.5 * factor.logdet()

    def covariance_fields(self, factor):
        """Σ = Λ⁻¹ on Λ's pattern, in the stencil layout, by selected inversion."""
        return self.grid.scatter_pairs(self._covariance_pairs(factor))

    def _covariance_pairs(self, factor):
        """Σ on the pattern's pairs, in :meth:`GridParameterization.pair_indices` order."""
        return factor.selected_inverse(self._rows, self._cols)

    def value_and_grad(self, theta):
        """``log Z(θ)``, its gradient, and Σ on the pattern (stencil layout).

        Returns
        -------
        log_z : float
        grad : ndarray, shape (n_params,)
            ``−½ adjoint(m ⊙ Σ_pattern)``.
        covariance : ndarray, shape (n_terms, D)
        """
        with one_blas_thread():     # once for both kernels
            return self.value_and_grad_of(self.factorize(theta))

    def value_and_grad_pairs(self, theta):
        """:meth:`value_and_grad` with Σ on the pattern's pairs, not scattered into the
        stencil layout (:meth:`value_and_grad_pairs_of`), in one kernel call
        (:meth:`~sparsegauss.cholesky.SparseCholesky.logdet_and_selected_inverse`): the
        gradient a fit evaluates hundreds of times."""
        logdet, pairs = self.analysis.logdet_and_selected_inverse(
            self.grid.precision_data(theta), self._positions, self._rows, self._cols)
        return self._value_and_grad_from(logdet, pairs)

    def value_and_grad_beside(self, theta, operands):
        """:meth:`value_and_grad`'s ``log Z(θ)`` and gradient, and a pass of pattern
        moments run beside the factorization and selected inversion
        (:meth:`~sparsegauss.cholesky.SparseCholesky.factorize_and_invert`): a step of
        stochastic maximum likelihood in one call.

        Parameters
        ----------
        theta : ndarray, shape (n_params,)
        operands : tuple
            :func:`sparsegauss.stats.moment_operands` of the samples.

        Returns
        -------
        log_z : float
        grad : ndarray, shape (n_params,)
        moments : ndarray, shape (n_terms, D)
            As :func:`sparsegauss.stats.pattern_moments` returns them.
        factor : CholeskyFactor
            Of Λ(θ).
        """
        data = self.grid.precision_data(theta)
        factor, moments = self.analysis.factorize_and_invert(
            data, self._positions, lambda: self.grid._csc(data), operands)
        moments[~self.grid.valid] = 0.0
        log_z, grad, _ = self.value_and_grad_pairs_of(factor)
        return log_z, grad, moments, factor

    def value_and_grad_of(self, factor):
        """:meth:`value_and_grad` from an existing Cholesky factor of Λ(θ)."""
        log_z, grad, pairs = self.value_and_grad_pairs_of(factor)
        return log_z, grad, self.grid.scatter_pairs(pairs)

    def value_and_grad_pairs_of(self, factor):
        """``log Z``, its gradient and Σ on the pattern's pairs (in
        :meth:`GridParameterization.pair_indices` order, not scattered into the stencil
        layout: callers that need only the gradient skip that)."""
        return self._value_and_grad_from(factor.logdet(), self._covariance_pairs(factor))

    def _value_and_grad_from(self, logdet, pairs):
        """``log Z``, ``−½ adjoint(m ⊙ Σ)`` and Σ's pairs, from ``log det Λ`` and Σ."""
        grad = -0.5 * self.grid.adjoint_pairs(self._pair_weights * pairs)
        return 0.5 * self.grid.n_pixels * LOG_2PI - 0.5 * logdet, grad, pairs
