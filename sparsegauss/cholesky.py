"""Sparse Cholesky engine: the only module that imports scikit-sparse (CHOLMOD).

One :class:`SparseCholesky` holds the symbolic analysis (fill-reducing ordering and the
factor's structure) of one sparsity pattern; :meth:`SparseCholesky.factorize` refactors
it numerically for new values on the same pattern, which is what every iteration of a
fit does. From a factorization ``P A Pᵀ = L Lᵀ`` it gives

* ``log det A = Σ_j log d_j`` with ``d_j = L_jj²``;
* solves ``A x = b``;
* exact samples ``x = Pᵀ L⁻ᵀ ε``, ``ε ~ N(0, I)``, whose covariance is ``A⁻¹``;
* the selected inverse: entries of ``Σ = A⁻¹`` on a requested pattern, by Takahashi's
  recursion over the supernodes of ``L``
  (:func:`sparsegauss._kernels.takahashi_supernodal`).

scikit-sparse 0.4.x's simplicial LDLᵀ factorization "succeeds" on an indefinite matrix
(``logdet()`` is then nan), so every factorization's pivots are checked here.
"""

import contextlib
import warnings

import numpy as np
import scipy.sparse as sp
from sksparse.cholmod import CholmodNotPositiveDefiniteError, analyze

from . import _kernels
from ._random import draw_seed, standard_normal
from .exceptions import NotPositiveDefiniteError

__all__ = ["SparseCholesky", "CholeskyFactor"]

#: Samples drawn per triangular solve, and the most values (D × block) one block holds.
_SAMPLE_BLOCK = 64
_SAMPLE_BLOCK_VALUES = 1 << 24
#: Grids up to this many pixels solve ``Lᵀ x = ε`` with :func:`_kernels.lower_transposed_
#: solve` on blocks of this many samples (one per column, contiguous across samples):
#: 256 samples of a 28×28 4-neighbour factor in 0.40 ms against CHOLMOD's 1.27 ms (8
#: neighbours 0.75 vs 1.63 ms); 64×64 6.8 vs 8.5 ms; level at 128×128, where CHOLMOD's
#: supernodal solve starts to gain from BLAS.
_KERNEL_SOLVE_MAX_PIXELS = 1 << 12
_KERNEL_SOLVE_BLOCK = 256


_BLAS_LIBRARIES = None


@contextlib.contextmanager
def _one_blas_thread():
    """A context that runs every loaded BLAS on one thread, around the supernodal
    Takahashi kernel.

    Its dense blocks (``dtrsm``, ``dpotri``, ``dsymm``, ``dgemm`` of SciPy's OpenBLAS,
    called from Numba) are mostly small, and OpenBLAS's threads spin while they wait:
    with another CPU-bound process on one of two cores, the earlier kernel took 2.9×
    (256²) and 2.0× (512²) its idle time with the default two BLAS threads, and 1.01×
    and 1.10× with one; the present one 1.08× and 1.00× (see the README's performance
    notes). The libraries are found once (threadpoolctl) and their thread counts set and
    restored directly: ``ThreadpoolController.limit`` re-reads every library's state on
    each call, 70 µs, a quarter of the kernel's time on a 28×28 grid.
    """
    global _BLAS_LIBRARIES
    if _BLAS_LIBRARIES is None:
        # The kernel calls SciPy's BLAS: load it first, so the controller, which lists
        # the libraries loaded when it is made, knows it.
        import scipy.linalg.cython_blas  # noqa: F401
        from threadpoolctl import ThreadpoolController

        _BLAS_LIBRARIES = [library for library in ThreadpoolController().lib_controllers
                           if library.user_api == "blas"]
    previous = [library.get_num_threads() for library in _BLAS_LIBRARIES]
    for library in _BLAS_LIBRARIES:
        library.set_num_threads(1)
    try:
        yield
    finally:
        for library, count in zip(_BLAS_LIBRARIES, previous):
            library.set_num_threads(count)


class SparseCholesky:
    """Symbolic Cholesky analysis of one symmetric sparsity pattern.

    Parameters
    ----------
    pattern : scipy.sparse matrix, shape (D, D)
        Symmetric matrix whose nonzero structure (both triangles, or the lower one)
        every later matrix shares.
    mode : {"auto", "simplicial", "supernodal"}, default="auto"
        CHOLMOD's factorization algorithm (see scikit-sparse's ``analyze``).

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> from sparsegauss.cholesky import SparseCholesky
    >>> A = sp.diags([[-1.0] * 3, [2.5] * 4, [-1.0] * 3], [-1, 0, 1], format="csc")
    >>> factor = SparseCholesky(A).factorize(A)
    >>> round(factor.logdet(), 6)
    3.059294
    """

    def __init__(self, pattern, mode="auto"):
        pattern = sp.csc_matrix(pattern, dtype=np.float64)
        if pattern.shape[0] != pattern.shape[1]:
            raise ValueError(f"The pattern must be square. Got shape {pattern.shape} instead.")
        pattern.sort_indices()
        self.n = pattern.shape[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._factor = analyze(pattern, mode=mode)
        self.permutation = np.asarray(self._factor.P(), dtype=np.int64)
        self.inverse_permutation = np.empty_like(self.permutation)
        self.inverse_permutation[self.permutation] = np.arange(self.n)
        self._lookup = None
        self._supernodes = None

    def factorize(self, matrix):
        """Refactor numerically for a matrix on the analyzed pattern.

        Parameters
        ----------
        matrix : scipy.sparse.csc_matrix, shape (D, D)
            Symmetric; only the lower triangle is read.

        Returns
        -------
        CholeskyFactor
            Valid until the next call of ``factorize`` on this object (the numeric
            factor is updated in place to avoid reallocating it every iteration).

        Raises
        ------
        NotPositiveDefiniteError
            When a pivot is not positive (or not finite); ``column`` names the pixel.
        """
        if not np.all(np.isfinite(matrix.data)):
            raise ValueError("The matrix to factorize contains NaN or inf entries.")
        try:
            self._factor.cholesky_inplace(matrix)
        except CholmodNotPositiveDefiniteError:
            # CHOLMOD's supernodal code stops at the first bad pivot; ask the pivots which.
            self._raise_not_pd(self._factor.D())
        pivots = self._factor.D()
        if not np.all(pivots > 0) or not np.all(np.isfinite(pivots)):
            self._raise_not_pd(pivots)
        return CholeskyFactor(self, pivots)

    def _raise_not_pd(self, pivots):
        bad = np.flatnonzero(~(np.isfinite(pivots) & (pivots > 0)))
        column = int(self.permutation[bad[0]]) if bad.size else None
        where = f" (first failing pivot at pixel {column})" if column is not None else ""
        raise NotPositiveDefiniteError(
            f"The precision matrix is not positive definite{where}: its Cholesky "
            "factorization has a pivot <= 0. The parameters lie outside the cone of valid "
            "Gaussian models.", column=column)

    def _positions(self, lower, rows, cols):
        """Positions of the original entries (rows, cols) in the permuted factor ``lower``.

        The factor's structure is fixed by the analysis, so the lookup for the same
        ``rows``/``cols`` arrays is computed once and reused by every refactorization.
        """
        cached = self._lookup
        if cached is not None and cached[0] is rows and cached[1] is cols:
            return cached[2]
        positions = _kernels.lower_positions(
            lower.indptr.astype(np.int64), lower.indices.astype(np.int64),
            self.inverse_permutation[rows], self.inverse_permutation[cols])
        if np.any(positions < 0):
            raise ValueError("Requested entries lie outside the factor's pattern; "
                             "the selected inverse covers only the analyzed pattern.")
        self._lookup = (rows, cols, positions)
        return positions


    def _selected_inverse_on_factor(self, lower):
        """Takahashi's recursion on the factor's full pattern, into a buffer kept for
        this pattern (its supernodes, too, are found once: the structure is fixed).

        The returned array is overwritten by the next call; callers read from it at
        once."""
        if self._supernodes is None or self._supernodes[0] != lower.nnz:
            starts = _kernels.supernode_starts(lower.indptr, lower.indices)
            self._supernodes = (lower.nnz, starts, np.empty(lower.nnz))
        _, starts, inverse = self._supernodes
        with _one_blas_thread():
            _kernels.takahashi_supernodal(lower.indptr, lower.indices, lower.data, starts,
                                          inverse)
        return inverse


class CholeskyFactor:
    """A numeric factorization ``P A Pᵀ = L Lᵀ`` of a positive-definite matrix.

    Obtained from :meth:`SparseCholesky.factorize`; it shares the factor's memory, so use
    it before the next refactorization.
    """

    def __init__(self, analysis, pivots):
        self._analysis = analysis
        self._factor = analysis._factor
        self.pivots = pivots
        self._lower = None

    def logdet(self):
        """``log det A``, the sum of the log pivots."""
        return float(np.sum(np.log(self.pivots)))

    def solve(self, b):
        """Solve ``A x = b`` for a vector or a (D, k) array."""
        return self._factor.solve_A(np.asarray(b, dtype=np.float64))

    def sample(self, n_samples, random_state=None):
        """Exact draws from ``N(0, A⁻¹)``.

        ``x = Pᵀ L⁻ᵀ ε`` with ``ε ~ N(0, I)``: then ``Cov(P x) = (L Lᵀ)⁻¹ = (P A Pᵀ)⁻¹``.

        Parameters
        ----------
        n_samples : int
        random_state : None, int or numpy.random.Generator

        Returns
        -------
        ndarray, shape (n_samples, D)
        """
        rng = np.random.default_rng(random_state)
        n = self._analysis.n
        out = np.empty((n_samples, n))
        # The normals come from the library's ziggurat (sparsegauss._random), 2–3× faster
        # than Generator.standard_normal here; one seed per call and one stream per
        # sample, so neither the path nor the block changes a sample.
        # Small grids: our own solve, 256 samples a block, one per column (the updates
        # run along contiguous rows of right-hand sides). Larger grids: CHOLMOD's
        # supernodal solve, a few dozen right-hand sides at a time: on a 28×28 grid one
        # solve with 60,000 columns cost 40 µs per sample (the block leaves the cache),
        # blocks of 64 cost 10 µs. On large grids the block shrinks so that it stays
        # near 128 MiB: a solve reads the whole factor whatever the number of right-hand
        # sides, so one sample per solve wastes it (1024×1024: 82 ms per sample with 4
        # per block, 64 ms with 16). Its normals are drawn one sample per row, so that
        # the (D, block) right-hand side is their transpose, already in Fortran order:
        # scikit-sparse copies a C-ordered one first, which was a third of the solve.
        seed = draw_seed(rng)
        if n <= _KERNEL_SOLVE_MAX_PIXELS:
            lower = self.lower()
            permutation = self._analysis.permutation
            for start in range(0, n_samples, _KERNEL_SOLVE_BLOCK):
                stop = min(start + _KERNEL_SOLVE_BLOCK, n_samples)
                columns = np.empty((n, stop - start))
                _kernels.standard_normal_rows(seed, columns, *_kernels.ZIGGURAT, start, True)
                _kernels.lower_transposed_solve(lower.indptr, lower.indices, lower.data,
                                                columns)
                _kernels.scatter_transposed(columns, permutation, out[start:stop])
            return out
        block = int(max(1, min(_SAMPLE_BLOCK, _SAMPLE_BLOCK_VALUES // n, n_samples)))
        normals = np.empty((block, n))
        for start in range(0, n_samples, block):
            stop = min(start + block, n_samples)
            eps = standard_normal(rng, (stop - start, n), out=normals[:stop - start],
                                  seed=seed, first_row=start)
            self.unwhiten(eps, out=out[start:stop])
        return out

    def whiten(self, X):
        """``z = Lᵀ P x`` for every row of ``X``: ``zᵀz = xᵀAx``, and ``Cov z = I`` when
        ``Cov x = A⁻¹``; ``O(nnz L)`` per row."""
        X = np.asarray(X, dtype=np.float64)
        return np.asarray((self.lower().T @ X[:, self._analysis.permutation].T).T)

    def whiten_adjoint(self, V):
        """``Pᵀ L v`` for every row ``v`` of ``V``: the adjoint of :meth:`whiten`, so that
        ``v · whiten(x) = whiten_adjoint(v) · x``. A linear feature of whitened data read
        as a feature of the pixels (a filter mapped back to pixel space)."""
        V = np.asarray(V, dtype=np.float64)
        out = np.empty(V.shape)
        out[:, self._analysis.permutation] = np.asarray(self.lower() @ V.T).T
        return out

    def unwhiten(self, Z, out=None):
        """The inverse of :meth:`whiten`, ``x = Pᵀ L⁻ᵀ z`` for every row of ``Z``
        (written into ``out`` when given)."""
        Z = np.asarray(Z, dtype=np.float64)
        permuted = self._factor.solve_Lt(Z.T, use_LDLt_decomposition=False)
        if out is None:
            out = np.empty(Z.shape)
        out[:, self._analysis.permutation] = permuted.T
        return out

    def lower(self):
        """The factor ``L`` (of the permuted matrix) as CSC with sorted indices."""
        if self._lower is None:
            lower = self._factor.L()
            if not lower.has_sorted_indices:
                lower.sort_indices()
            self._lower = lower
        return self._lower

    def selected_inverse(self, rows, cols):
        """Entries ``Σ[rows[t], cols[t]]`` of ``Σ = A⁻¹`` for pairs on ``A``'s pattern.

        Runs Takahashi's recursion over the whole factor (cost of the order of the
        factorization) and reads the requested entries.

        Parameters
        ----------
        rows, cols : ndarray of int64, shape (m,)
            Original (unpermuted) indices; each pair must lie on the analyzed pattern
            (or anywhere on the factor's filled pattern).

        Returns
        -------
        ndarray, shape (m,)
        """
        lower = self.lower()
        inverse = self._analysis._selected_inverse_on_factor(lower)
        return inverse[self._analysis._positions(lower, rows, cols)]
