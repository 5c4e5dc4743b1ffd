"""A fitted grid Gaussian as a distribution of its own, apart from how it was fitted.

:class:`GridGaussianDistribution` is ``N(μ, Λ(θ)⁻¹)`` frozen at one θ (as
``scipy.stats.multivariate_normal(mean, cov)`` is a frozen distribution): it holds θ, μ,
the sparse Λ and, made at first use and kept, its sparse Cholesky factor
``P Λ Pᵀ = L Lᵀ``. Everything that needs a distribution rather than an estimator (NCE's
noise, :func:`~sparsegauss.kl_divergence`, plots and reports) takes one of these;
:class:`~sparsegauss.GridGaussian` is the scikit-learn estimator that produces it
(``GridGaussian(...).fit(X).distribution_``).

With the factor,

* ``log p(x) = −½ (x − μ)ᵀ Λ (x − μ) − log Z``,  ``log Z = (D/2) log 2π − ½ log det Λ``;
* exact samples ``x = μ + Pᵀ L⁻ᵀ ε``, ``ε ~ N(0, I)``;
* whitening ``z = Lᵀ P (x − μ)``: ``zᵀz = (x − μ)ᵀ Λ (x − μ)`` and
  ``Cov z = Lᵀ P Σ Pᵀ L = I``, at ``O(nnz L)`` per sample on any grid; the map's
  log-Jacobian is ``log |det Lᵀ P| = ½ log det Λ``.
"""

import numpy as np

from .exceptions import NotPositiveDefiniteError
from .normalization import LOG_2PI, GridNormalizer
from .stats import as_float_array, quadratic_forms

__all__ = ["GridGaussianDistribution"]


class GridGaussianDistribution:
    """``N(mean, Λ(θ)⁻¹)`` for a grid-structured precision Λ(θ), frozen.

    Parameters
    ----------
    grid : GridParameterization
    theta : ndarray, shape (grid.n_params,)
    mean : ndarray, shape (D,), optional
        Default zero.
    normalizer : GridNormalizer, optional
        A symbolic analysis of ``grid``'s pattern to reuse; the distribution then owns
        it (its factor lives in the analysis' memory, so nobody else may refactor it).

    Examples
    --------
    >>> import numpy as np
    >>> from sparsegauss.distribution import GridGaussianDistribution
    >>> from sparsegauss.grid import GridParameterization
    >>> grid = GridParameterization((8, 8))
    >>> fields = np.vstack([np.full(64, 1.0), np.full((2, 64), -0.2)]) * grid.valid
    >>> p = GridGaussianDistribution(grid, grid.project(fields))
    >>> x = p.sample(20_000, random_state=0)
    >>> z = p.whiten(x)
    >>> bool(np.allclose(np.cov(z.T), np.eye(64), atol=0.05))
    True
    """

    def __init__(self, grid, theta, mean=None, *, normalizer=None):
        self.grid = grid
        self.theta = grid.check_theta(theta).copy()
        self.mean = (np.zeros(grid.n_pixels) if mean is None
                     else np.asarray(mean, dtype=np.float64).reshape(grid.n_pixels))
        self._normalizer = normalizer
        self._factor = None
        self._positive_definite = None

    def __repr__(self):
        return (f"GridGaussianDistribution(shape={self.grid.shape}, stencil={self.grid.stencil},"
                f" tying={self.grid.tying!r})")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_normalizer"] = state["_factor"] = None   # CHOLMOD objects do not pickle
        return state

    @property
    def precision(self):
        """Λ as a ``scipy.sparse`` CSC matrix."""
        return self.grid.precision(self.theta)

    @property
    def n_features(self):
        return self.grid.n_pixels

    @property
    def normalizer(self):
        if self._normalizer is None:
            self._normalizer = GridNormalizer(self.grid)
        return self._normalizer

    def factor(self):
        """The Cholesky factor of Λ, made at first use and kept.

        Callers that sample in blocks (NCE's noise, shards of a large sample) would
        otherwise refactorize at every call: 6 s each at 1024×1024, where drawing 500
        noise samples four at a time once cost 750 s of factorizations.

        Raises
        ------
        NotPositiveDefiniteError
            Λ is not positive definite: this θ is not a Gaussian.
        """
        if self._factor is None:
            if self._positive_definite is False:
                self._raise_not_pd()
            try:
                self._factor = self.normalizer.factorize(self.theta)
            except NotPositiveDefiniteError:
                self._positive_definite = False
                self._raise_not_pd()
            self._positive_definite = True
        return self._factor

    def _raise_not_pd(self):
        raise NotPositiveDefiniteError(
            "The precision matrix is not positive definite, so this is not a normalizable "
            "Gaussian: it has no log-density, samples or whitening.")

    @property
    def is_positive_definite(self):
        """Whether Λ is positive definite (factorizes once to find out)."""
        if self._positive_definite is None:
            try:
                self.factor()
            except NotPositiveDefiniteError:
                pass
        return self._positive_definite

    @property
    def logdet_precision(self):
        """``log det Λ``."""
        return self.factor().logdet()

    @property
    def log_partition(self):
        """``log Z = (D/2) log 2π − ½ log det Λ``."""
        return 0.5 * self.grid.n_pixels * LOG_2PI - 0.5 * self.logdet_precision

    def unnormalized_log_density(self, X):
        """``−½ (x − μ)ᵀ Λ (x − μ)`` for every row (defined for any θ)."""
        # A RowSelection (centred data, a minibatch) is read in place.
        return -0.5 * quadratic_forms(X, self.grid,
                                      self.grid.fields(self.theta), center=self.mean)

    def score_samples(self, X):
        """``log p(x)`` for every row of ``X`` (shape (n, D)), in nats."""
        return self.unnormalized_log_density(X) - self.log_partition

    logpdf = score_samples

    def sample(self, n_samples, random_state=None, out=None):
        """``n_samples`` exact samples, shape (n_samples, D), float64 (written into
        ``out`` when given: C-contiguous float64 of that shape)."""
        return self._draw(n_samples, random_state, out, None)

    def _draw(self, n_samples, random_state, out, squared_norms):
        samples = self.factor().sample(int(n_samples), random_state, out=out,
                                       squared_norms=squared_norms)
        if np.any(self.mean):         # fresh-noise NCE draws 2,000 times from mean zero
            samples += self.mean      # in place: the samples may be gigabytes
        return samples

    def sample_and_score(self, n_samples, random_state=None, out=None):
        """:meth:`sample` and the samples' log-densities (:meth:`score_samples`), the
        latter without a pass over the samples: ``x = μ + Pᵀ L⁻ᵀ ε`` has
        ``(x − μ)ᵀ Λ (x − μ) = εᵀε``. The same samples as :meth:`sample` for the same
        ``random_state``; the log-densities agree with :meth:`score_samples` of them up
        to the rounding of the triangular solve.

        Returns
        -------
        samples : ndarray, shape (n_samples, D)
        log_density : ndarray, shape (n_samples,)
        """
        squared_norms = np.empty(int(n_samples))
        samples = self._draw(n_samples, random_state, out, squared_norms)
        return samples, -0.5 * squared_norms - self.log_partition

    def whiten(self, X):
        """``z = Lᵀ P (x − μ)`` for every row: N(0, I) exactly when x follows this
        distribution; ``log |det ∂z/∂x| = ½ log det Λ`` (:attr:`logdet_precision` / 2)."""
        return self.factor().whiten(as_float_array(X) - self.mean)

    def whiten_adjoint(self, V):
        """``Pᵀ L v`` for every row: ``v · whiten(x) = whiten_adjoint(v) · (x − μ)``."""
        return self.factor().whiten_adjoint(V)

    def unwhiten(self, Z):
        """The inverse of :meth:`whiten`: ``x = μ + Pᵀ L⁻ᵀ z``."""
        out = self.factor().unwhiten(Z)
        out += self.mean
        return out
