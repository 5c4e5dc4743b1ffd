"""Sparse Cholesky engine: the only module that imports scikit-sparse (CHOLMOD).

One :class:`SparseCholesky` holds the symbolic analysis (fill-reducing ordering and the
factor's structure) of one sparsity pattern; :meth:`SparseCholesky.factorize` refactors
it numerically for new values on the same pattern, which is what every iteration of a
fit does. The analysis itself is shared: every SparseCholesky of one pattern reads one
copy of the structure (and of CHOLMOD's factor), and owns only its numeric factor and
selected inverse (see :class:`_SymbolicAnalysis`). CHOLMOD chooses the fill-reducing
ordering; the factor's structure
(:func:`sparsegauss._kernels.symbolic_supernodal`: CHOLMOD's relaxed supernodes, the same
structure, tested) and the numeric refactorization
(:func:`sparsegauss._kernels.cholesky_supernodal`) are the library's own, writing into
arrays the library owns, so that the selected inversion reads the factor where it lies.
Through scikit-sparse the factor had to be copied out of CHOLMOD after every
refactorization (``Factor.L()``), which cost more than the refactorization itself on
large grids (1024×1024: refactor 3.0 s, with the copy 6.1 s; the kernel, on one thread,
1.6 s). CHOLMOD's own numeric factor is brought up to date only when a solve needs it
(:meth:`CholeskyFactor.solve`, :meth:`CholeskyFactor.unwhiten`, and so sampling on grids
above 4,096 pixels). From a factorization ``P A Pᵀ = L Lᵀ`` it gives

* ``log det A = Σ_j log d_j`` with ``d_j = L_jj²``;
* solves ``A x = b``;
* exact samples ``x = Pᵀ L⁻ᵀ ε``, ``ε ~ N(0, I)``, whose covariance is ``A⁻¹``;
* the selected inverse: entries of ``Σ = A⁻¹`` on a requested pattern, by Takahashi's
  recursion over the supernodes of ``L``
  (:func:`sparsegauss._kernels.takahashi_supernodal`).

Factors of :data:`PARALLEL_MIN_ENTRIES` entries or more run both kernels on two threads,
one per group of independent subtrees of the elimination tree
(:func:`sparsegauss._kernels.subtree_schedule`); smaller ones run both on one thread,
outside any parallel region. On this 2-core virtual machine the split gains 1.25–1.6× at
512² (and 1.3–1.5× from 48² to 256², where it is not used: see
:data:`PARALLEL_MIN_ENTRIES`).

scikit-sparse 0.4.x's simplicial LDLᵀ factorization "succeeds" on an indefinite matrix
(``logdet()`` is then nan), so every factorization's pivots are checked here.
"""

import contextlib
import hashlib
import itertools
import threading
import warnings
import weakref

import numpy as np
import scipy.sparse as sp
from sksparse.cholmod import (CholmodNotPositiveDefiniteError, CholmodTypeConversionWarning,
                              analyze, cholesky)

from . import _kernels
from ._blas import one_blas_thread
from ._random import draw_seed, standard_normal
from .exceptions import NotPositiveDefiniteError

__all__ = ["SparseCholesky", "CholeskyFactor", "solve_once"]

#: Samples drawn per triangular solve, and the most values (D × block) one block holds.
_SAMPLE_BLOCK = 64
_SAMPLE_BLOCK_VALUES = 1 << 24
#: Grids up to this many pixels solve ``Lᵀ x = ε`` with :func:`_kernels.lower_transposed_
#: solve` on blocks of this many samples (one per column, contiguous across samples):
#: 256 samples of a 28×28 4-neighbour factor in 0.40 ms against CHOLMOD's 1.27 ms (8
#: neighbours 0.75 vs 1.63 ms); 64×64 6.8 vs 8.5 ms; level at 128×128, where CHOLMOD's
#: supernodal solve starts to gain from BLAS. The blocks run on all threads at once
#: (:func:`_kernels.sample_transposed_solve`): 60,000 samples of a 28×28 factor in
#: 0.35–0.40 s on 2 threads against 0.58–1.0 s on one (2026-12-01).
_KERNEL_SOLVE_MAX_PIXELS = 1 << 12
_KERNEL_SOLVE_BLOCK = 256


#: Relaxed amalgamation (:func:`sparsegauss._kernels.symbolic_supernodal`): CHOLMOD's
#: defaults ``nrelax``, ``zrelax`` (modes "auto" and "supernodal"), and none (the exact
#: structure, fundamental supernodes only: mode "simplicial"). Relaxed is faster even
#: on 28×28, where CHOLMOD itself would choose its simplicial code: the default MNIST
#: MLE in 0.31–0.33 s against 0.34 s (4 neighbours) and 0.35–0.38 s against 0.43–0.50 s
#: (8), medians of 7, the two settings alternated (2026-12-01).
_RELAX = ((4, 16, 48), (0.8, 0.1, 0.05))
_NO_RELAX = ((0, 0, 0), (0.0, 0.0, 0.0))
#: Factors with at least this many entries split their supernodes between two threads
#: by subtrees of the elimination tree (:func:`sparsegauss._kernels.subtree_schedule`);
#: smaller ones run on one, without opening a parallel region (waking the second thread
#: costs 0.15–0.5 ms a call on this 2-core virtual machine). Refactorization plus
#: selected inversion, one thread / split, medians of 5, the two alternated twice in one
#: process (``python -m benchmarks.one_off.parallel_threshold 28 40 48 64 128 256 512``,
#: 2026-12-03): 28² (15,851 entries) 0.73, 0.58 / 0.64, 0.47 ms; 40² (37 k) 1.30, 1.15 /
#: 1.34, 0.92 ms; 48² (58 k) 2.13, 2.08 / 1.52, 1.67 ms; 64² (115 k) 2.90, 3.50 / 3.04,
#: 2.01 ms; 128² (590 k) 21.1, 20.8 / 15.3, 13.4 ms; 256² (2.8 M) 95, 106 / 75, 76 ms;
#: 512² (13.4 M) 703, 638 / 550, 409 ms. Idle, the split pays from about 50,000 entries
#: (a 45×45 grid). It stays for factors of a million entries (160²) and more because of
#: what it costs beside another CPU-bound process (``python -m benchmarks.one_off.busy_core
#: SIDE 5-7``, same day): a short split call waits for the scheduler, so at 128² the
#: split refactorization + selected inversion took 33 ms busy, against the one-thread
#: kernels' 21 ms idle (1.6× slower than not splitting at all), while at 512² it took
#: 0.75 s busy against their 0.64–0.70 s idle (about level). (Until 2026-12-03 the split
#: paid only from about a million entries even idle: an inlined helper opened a parallel
#: region per supernode, see :func:`sparsegauss._kernels._supernode_sizes`; that build,
#: same benchmark and day: 64² 3.61, 5.00 / 5.14, 7.32 ms, 256² 116, 125 / 121, 133 ms,
#: 512² 670, 647 / 612, 609 ms.)
PARALLEL_MIN_ENTRIES = 1_000_000


def solve_once(lower, b):
    """Solve ``A x = b`` for a symmetric positive-definite ``A`` factored only for this.

    CHOLMOD's supernodal ``L Lᵀ`` factor alone: :class:`SparseCholesky` keeps its own
    copy of the factor's structure and values for refactorization and selected
    inversion, which a single solve does not need. For score matching's closed form on a
    2048×2048 grid (12.6 M unknowns) the two copies did not fit in 24 GiB.

    Parameters
    ----------
    lower : scipy.sparse matrix, shape (n, n)
        ``A``'s lower triangle (with the diagonal); the upper one, if present, is not
        read.
    b : ndarray, shape (n,) or (n, k)

    Returns
    -------
    ndarray
        ``x``, like ``b``.

    Raises
    ------
    NotPositiveDefiniteError
        When ``A`` is not positive definite (a pivot ≤ 0), or has NaN or inf entries.
    """
    lower = sp.csc_matrix(lower, dtype=np.float64)
    if not np.all(np.isfinite(lower.data)):
        raise NotPositiveDefiniteError("The matrix to factorize contains NaN or inf "
                                       "entries.")
    with warnings.catch_warnings():
        # scikit-sparse's note that it converted the index type: expected, not the user's.
        warnings.simplefilter("ignore", CholmodTypeConversionWarning)
        try:
            # Supernodal: an L Lᵀ factor, which stops at the first pivot ≤ 0 (the
            # simplicial LDLᵀ of scikit-sparse 0.4 would go on through it).
            factor = cholesky(lower, mode="supernodal")
        except CholmodNotPositiveDefiniteError as exc:
            raise NotPositiveDefiniteError(
                f"The matrix is not positive definite ({exc}).") from exc
    return factor(np.asarray(b, dtype=np.float64))


#: Serial numbers of SparseCholesky objects (ids can be reused after collection).
_SERIALS = itertools.count()


class _SymbolicAnalysis:
    """The structure of one sparsity pattern's factor, shared by every
    :class:`SparseCholesky` of that pattern while one exists: CHOLMOD's ordering and
    symbolic analysis, the factor's supernodal structure and its two-thread schedule.

    A fit builds several analyses of one pattern: the model's, its noise's (NCE), the
    fitted distribution's, the likelihood check's. Each held its own copy of the
    structure, and the row indices alone are 8 bytes a factor entry: at 2048×2048 (215
    million entries) 1.7 GB each, beside CHOLMOD's own structure and numeric factor,
    which this object holds once (the SparseCholesky that last needed CHOLMOD's values
    is recorded in ``cholmod_holds``). Found by the pattern's structure and the mode;
    kept alive only by the SparseCholesky objects that use it.
    """

    _cache = weakref.WeakValueDictionary()
    _cache_lock = threading.Lock()

    def __init__(self, pattern, mode):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.cholmod = analyze(pattern, mode=mode)
        n = pattern.shape[0]
        self.permutation = np.asarray(self.cholmod.P(), dtype=np.int64)
        self.inverse_permutation = np.empty_like(self.permutation)
        self.inverse_permutation[self.permutation] = np.arange(n)
        # The factor's structure in relaxed supernodes (CHOLMOD's rule and defaults, so
        # the same blocks as CHOLMOD's supernodal factor), from the permuted pattern with
        # both triangles.
        ones = pattern.copy()
        ones.data[:] = 1.0                 # structure only: explicit zeros count, no cancelling
        ones = ones + ones.T
        permuted = ones[self.permutation][:, self.permutation].tocsc()
        permuted.sort_indices()
        nrelax, zrelax = _NO_RELAX if mode == "simplicial" else _RELAX
        self.indptr, self.indices, self.starts = _kernels.symbolic_supernodal(
            permuted.indptr.astype(np.int64), permuted.indices.astype(np.int64),
            np.asarray(nrelax, dtype=np.int64), np.asarray(zrelax, dtype=np.float64))
        # Two threads by subtrees (None: one thread, no parallel region to open).
        self.schedule = None
        if self.indices.size >= PARALLEL_MIN_ENTRIES:
            schedule = _kernels.subtree_schedule(self.indptr, self.indices, self.starts)
            if schedule[1][2] > 0:                       # a split exists
                self.schedule = schedule
        self.cholmod_holds = None          # (serial, generation) of CHOLMOD's values
        self.lock = threading.RLock()

    @classmethod
    def of(cls, pattern, mode):
        """The analysis of a CSC ``pattern`` (sorted indices) in ``mode``: the one that
        exists for the same structure, else a new one."""
        # A 128-bit digest of the structure as stored (no copy; the same structure in
        # other index dtypes is another key, and analyzed again).
        digest = hashlib.blake2b(digest_size=16)
        for array in (pattern.indptr, pattern.indices):
            digest.update(str(array.dtype).encode())
            digest.update(np.ascontiguousarray(array))
        key = (mode, pattern.shape[0], pattern.nnz, digest.hexdigest())
        with cls._cache_lock:
            found = cls._cache.get(key)
            if found is None:
                found = cls._cache[key] = cls(pattern, mode)
            return found


class SparseCholesky:
    """Symbolic Cholesky analysis of one symmetric sparsity pattern.

    Parameters
    ----------
    pattern : scipy.sparse matrix, shape (D, D)
        Symmetric matrix whose nonzero structure (both triangles, or the lower one)
        every later matrix shares.
    mode : {"auto", "simplicial", "supernodal"}, default="auto"
        The factor's structure: relaxed supernodes (CHOLMOD's supernodal structure:
        "auto" and "supernodal") or the exact one ("simplicial"). CHOLMOD orders the
        pattern and, for solves, factors with the same mode.

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
        self._symbolic = _SymbolicAnalysis.of(pattern, mode)
        # The structure, shared with every other SparseCholesky of the same pattern; the
        # numeric state below is this object's own.
        self.permutation = self._symbolic.permutation
        self.inverse_permutation = self._symbolic.inverse_permutation
        self.indptr, self.indices = self._symbolic.indptr, self._symbolic.indices
        self.starts, self._schedule = self._symbolic.starts, self._symbolic.schedule
        self._values = np.empty(self.indices.size)       # the numeric factor, reused
        self._inverse = None                             # the selected inverse, reused
        self._inverse_generation = None                  # whose inverse it holds
        self._matrix_lookup = None
        self._lookup = None
        self._generation = 0
        self._serial = next(_SERIALS)                    # names this object to CHOLMOD's

    def factorize(self, matrix):
        """Refactor numerically for a matrix on the analyzed pattern.

        Parameters
        ----------
        matrix : scipy.sparse matrix, shape (D, D)
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
        if not (sp.issparse(matrix) and matrix.format == "csc" and matrix.dtype == np.float64):
            matrix = sp.csc_matrix(matrix, dtype=np.float64)
        if matrix.shape != (self.n, self.n):
            raise ValueError(f"The matrix must have shape ({self.n}, {self.n}), the "
                             f"analyzed pattern's. Got {matrix.shape} instead.")
        return self.factorize_values(matrix.data, self.value_positions(matrix), matrix)

    def factorize_values(self, values, positions, matrix):
        """Refactor from the stored values of a matrix whose structure was looked up
        before: :meth:`factorize` without its checks of the matrix.

        For callers that refactor one structure many times (every gradient of a fit):
        SciPy's sparse-matrix construction and the structure lookup cost about 0.1 ms a
        call, a fifth of a 28×28 grid's gradient.

        Parameters
        ----------
        values : ndarray of float64, shape (nnz,)
            The matrix's stored values.
        positions : ndarray of int64, shape (nnz,)
            :meth:`value_positions` of the matrix's structure.
        matrix : scipy.sparse matrix or callable
            The matrix, or a function that builds it; only solves need it (CHOLMOD
            factors it again for them).

        Returns
        -------
        CholeskyFactor
        """
        _check_finite_values(values)
        with one_blas_thread():
            arguments = (self.indptr, self.indices, self._values, self.starts, positions,
                         values)
            if self._schedule is None:
                failed = _kernels.cholesky_supernodal(*arguments)
            else:
                failed = _kernels.cholesky_supernodal_split(*arguments, *self._schedule)
        return self._new_factor(failed, matrix)

    def factorize_and_invert(self, values, positions, matrix, beside):
        """:meth:`factorize_values` and the selected inverse of the factor, with a pass
        of pattern moments run beside them.

        Stochastic maximum likelihood with the exact expectation needs, at every step, a
        minibatch's moments and ``∇ log Z`` (a factorization and a selected inversion),
        which do not depend on each other. A small factor's kernels run on one thread,
        so the moments take the other, in one parallel region
        (:func:`sparsegauss._kernels.factor_invert_beside_moments`). A factor whose
        kernels split over both threads themselves (:attr:`splits_over_threads`) has no
        thread to spare: factorize it with :meth:`factorize_values` and pass over the
        rows after. The returned factor's :meth:`CholeskyFactor.selected_inverse` reads
        the inverse computed here instead of running the recursion again.

        Parameters
        ----------
        values, positions, matrix
            As for :meth:`factorize_values`.
        beside : tuple
            ``(X, rows, center, weights, shifts)``: the samples ``X[rows]`` (every row
            when ``rows`` is empty; float32 or float64, C-contiguous) and the rest as for
            :func:`sparsegauss.stats.pattern_moments`.

        Returns
        -------
        factor : CholeskyFactor
        moments : ndarray, shape (len(shifts), D)
            ``Σ_n w_n (x_np − c_p)(x_n,p+δ_k − c_{p+δ_k})``, including the pairs that
            wrap around a grid row (the caller zeroes those).

        Raises
        ------
        NotPositiveDefiniteError
            As :meth:`factorize_values`, after the pass has finished.
        ValueError
            For a factor that :attr:`splits_over_threads`.
        """
        if self.splits_over_threads:
            raise ValueError("This factor's kernels already run on both threads; use "
                             "factorize_values and a separate pass.")
        _check_finite_values(values)
        X, rows, center, weights, shifts = beside
        if self._inverse is None:
            self._inverse = np.empty(self.indices.size)
        moments = np.zeros((len(shifts), X.shape[1]))
        with one_blas_thread():
            failed = _kernels.factor_invert_beside_moments(
                self.indptr, self.indices, self._values, self.starts, positions, values,
                self._inverse, X, rows, center, weights, shifts, moments)
        return self._new_factor(failed, matrix, inverted=True), moments

    def logdet_and_selected_inverse(self, values, positions, rows, cols):
        """``log det A`` and entries of ``A⁻¹`` for a matrix given as in
        :meth:`factorize_values`, in one kernel call where the factor runs on one thread
        (:func:`sparsegauss._kernels.factor_and_select`): what a gradient of ``log Z``
        needs, without a :class:`CholeskyFactor`. Earlier factors of this object become
        stale, as after :meth:`factorize_values`.

        Parameters
        ----------
        values, positions
            As for :meth:`factorize_values`.
        rows, cols : ndarray of int64
            As for :meth:`CholeskyFactor.selected_inverse`.

        Returns
        -------
        logdet : float
        selected : ndarray, shape (len(rows),)

        Raises
        ------
        NotPositiveDefiniteError
            As :meth:`factorize_values`.
        """
        if self._schedule is not None:
            factor = self.factorize_values(values, positions, None)
            return factor.logdet(), factor.selected_inverse(rows, cols)
        _check_finite_values(values)
        selected = self._positions(rows, cols)
        if self._inverse is None:
            self._inverse = np.empty(self.indices.size)
        out = np.empty(selected.size)
        with one_blas_thread():
            failed, logdet = _kernels.factor_and_select(
                self.indptr, self.indices, self._values, self.starts, positions, values,
                self._inverse, selected, out)
        self._generation += 1
        if failed >= 0:
            self._raise_not_pd(failed)
        self._inverse_generation = self._generation
        return logdet, out

    @property
    def splits_over_threads(self):
        """Whether the factorization and selected inversion split over two threads
        (factors of :data:`PARALLEL_MIN_ENTRIES` entries or more with two subtrees)."""
        return self._schedule is not None

    def _new_factor(self, failed, matrix, inverted=False):
        """The factor a numeric kernel just wrote (``failed`` its result), checked; with
        ``inverted``, ``_inverse`` holds its selected inverse."""
        self._generation += 1
        diagonal = self._values[self.indptr[:-1]]
        if failed >= 0 or not np.all(np.isfinite(diagonal)):
            self._raise_not_pd(failed)
        if inverted:
            self._inverse_generation = self._generation
        return CholeskyFactor(self, matrix, diagonal * diagonal)

    def value_positions(self, matrix):
        """Where each stored value of a CSC ``matrix`` goes in the factor (``-1``: upper
        triangle, not read), found once per matrix structure: every iteration of a fit
        passes the same index arrays.

        Raises
        ------
        ValueError
            When the matrix has entries outside the analyzed pattern.
        """
        cached = self._matrix_lookup
        if cached is not None and (cached[0] is matrix.indices or (
                cached[0].size == matrix.indices.size
                and np.array_equal(cached[0], matrix.indices)
                and np.array_equal(cached[1], matrix.indptr))):
            return cached[2]
        rows = matrix.indices.astype(np.int64)
        cols = np.repeat(np.arange(self.n, dtype=np.int64), np.diff(matrix.indptr))
        lower = rows >= cols
        positions = np.full(rows.size, -1, dtype=np.int64)
        positions[lower] = self._factor_positions(rows[lower], cols[lower])
        if np.any(positions[lower] < 0):
            raise ValueError("The matrix has entries outside the analyzed pattern; "
                             "analyze its own pattern (SparseCholesky(matrix)).")
        self._matrix_lookup = (matrix.indices, matrix.indptr, positions)
        return positions

    def _raise_not_pd(self, failed):
        if failed < 0:                 # a non-finite pivot the kernel let through
            diagonal = self._values[self.indptr[:-1]]
            failed = int(np.flatnonzero(~np.isfinite(diagonal))[0])
        column = int(self.permutation[failed])
        raise NotPositiveDefiniteError(
            f"The precision matrix is not positive definite (first failing pivot at pixel "
            f"{column}): its Cholesky factorization has a pivot <= 0. The parameters lie "
            "outside the cone of valid Gaussian models.", column=column)

    @property
    def cholmod(self):
        """CHOLMOD's own factor object for this pattern (scikit-sparse's ``Factor``), for
        callers that time or use CHOLMOD directly (the benchmarks). Whatever they
        factorize into it, the library's solves afterwards refactor it first."""
        self._symbolic.cholmod_holds = None
        return self._symbolic.cholmod

    @contextlib.contextmanager
    def _cholmod_for(self, factor):
        """A context holding CHOLMOD's numeric factor of ``factor``'s matrix, refactored
        only when the last one CHOLMOD holds is another's. CHOLMOD's factor belongs to
        the shared analysis: the context holds its lock, so that another SparseCholesky
        of the pattern (on another thread) cannot refactor it while it is used."""
        symbolic = self._symbolic
        with symbolic.lock:
            holder = (self._serial, factor._generation)
            if symbolic.cholmod_holds != holder:
                symbolic.cholmod_holds = None
                try:
                    symbolic.cholmod.cholesky_inplace(factor._matrix)
                except CholmodNotPositiveDefiniteError as exc:   # rare: ours passed
                    raise NotPositiveDefiniteError(str(exc)) from exc
                symbolic.cholmod_holds = holder
            yield symbolic.cholmod

    def _check_current(self, factor):
        if factor._generation != self._generation:
            raise RuntimeError("This CholeskyFactor's values were overwritten by a later "
                               "factorize() on the same SparseCholesky; use a factor "
                               "before refactoring (or analyze the pattern twice).")

    def _factor_positions(self, rows, cols):
        """Positions in the factor's arrays of the original (unpermuted) entries
        ``(rows, cols)``; ``-1`` for an entry outside the factor's structure."""
        return _kernels.lower_positions(self.indptr, self.indices,
                                        self.inverse_permutation[rows],
                                        self.inverse_permutation[cols])

    def _positions(self, rows, cols):
        """Positions of the original entries (rows, cols) in the permuted factor.

        The factor's structure is fixed by the analysis, so the lookup for the same
        ``rows``/``cols`` arrays is computed once and reused by every refactorization.
        """
        cached = self._lookup
        if cached is not None and cached[0] is rows and cached[1] is cols:
            return cached[2]
        positions = self._factor_positions(rows, cols)
        if np.any(positions < 0):
            raise ValueError("Requested entries lie outside the factor's pattern; "
                             "the selected inverse covers only the analyzed pattern.")
        self._lookup = (rows, cols, positions)
        return positions

    def release_inverse(self):
        """Free the selected inverse's buffer (a factor's size: 1.7 GB at 2048×2048),
        kept between calls for the fits that invert at every step; the next selected
        inversion allocates it again."""
        self._inverse = None
        self._inverse_generation = None

    def _selected_inverse_on_factor(self):
        """Takahashi's recursion on the factor's full pattern, into a buffer kept for
        this pattern (run once per factorization). The returned array is overwritten by
        the next call after a refactorization; callers read from it at once."""
        if self._inverse_generation == self._generation:
            return self._inverse
        if self._inverse is None:
            self._inverse = np.empty(self.indices.size)
        with one_blas_thread():
            arguments = (self.indptr, self.indices, self._values, self.starts,
                         self._inverse)
            if self._schedule is None:
                _kernels.takahashi_supernodal(*arguments)
            else:
                _kernels.takahashi_supernodal_split(*arguments, *self._schedule)
        self._inverse_generation = self._generation
        return self._inverse


def _check_finite_values(values):
    if not np.all(np.isfinite(values)):
        raise ValueError("The matrix to factorize contains NaN or inf entries.")


def _sample_buffer(out, n_samples, n_pixels):
    """``out`` checked as a sample's destination, or a new (n_samples, D) array."""
    if out is None:
        return np.empty((n_samples, n_pixels))
    if (out.shape != (n_samples, n_pixels) or out.dtype != np.float64
            or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous float64 array of shape "
                         f"({n_samples}, {n_pixels}); got {out.dtype} {out.shape}.")
    return out


class CholeskyFactor:
    """A numeric factorization ``P A Pᵀ = L Lᵀ`` of a positive-definite matrix.

    Obtained from :meth:`SparseCholesky.factorize`; it shares the factor's memory, so use
    it before the next refactorization.
    """

    def __init__(self, analysis, matrix, pivots):
        self._analysis = analysis
        self._matrix_source = matrix
        self._generation = analysis._generation
        self.pivots = pivots
        self._lower = None

    @property
    def _matrix(self):
        """The factored matrix (built on first use when it was given as a function)."""
        if callable(self._matrix_source):
            self._matrix_source = self._matrix_source()
        return self._matrix_source

    def logdet(self):
        """``log det A``, the sum of the log pivots."""
        return float(np.sum(np.log(self.pivots)))

    def solve(self, b):
        """Solve ``A x = b`` for a vector or a (D, k) array."""
        b = np.asarray(b, dtype=np.float64)
        with self._analysis._cholmod_for(self) as cholmod:
            return cholmod.solve_A(b)

    def sample(self, n_samples, random_state=None, out=None, squared_norms=None):
        """Exact draws from ``N(0, A⁻¹)``.

        ``x = Pᵀ L⁻ᵀ ε`` with ``ε ~ N(0, I)``: then ``Cov(P x) = (L Lᵀ)⁻¹ = (P A Pᵀ)⁻¹``.

        Parameters
        ----------
        n_samples : int
        random_state : None, int or numpy.random.Generator
        out : ndarray, shape (n_samples, D), float64, C-contiguous, optional
            Written in place and returned (a noise pool of gigabytes is then not copied).
        squared_norms : ndarray, shape (n_samples,), float64, optional
            Receives ``εᵀε`` of every sample, which is its ``xᵀ A x``: a sample's
            log-density without a pass over it.

        Returns
        -------
        ndarray, shape (n_samples, D)
        """
        rng = np.random.default_rng(random_state)
        n = self._analysis.n
        out = _sample_buffer(out, n_samples, n)
        if squared_norms is None:
            squared_norms = np.empty(0)
        elif squared_norms.shape != (n_samples,) or squared_norms.dtype != np.float64:
            raise ValueError(f"squared_norms must be a float64 array of shape "
                             f"({n_samples},); got {squared_norms.dtype} "
                             f"{squared_norms.shape}.")
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
            # Groups of at most 256 samples, on all threads; at least one group per
            # thread once there are 64 samples a thread (256 samples of a 28×28 factor:
            # 1.47 ms on 2 threads against 1.74 ms on one, 2026-12-01). Counted by the
            # threads the process may run, not those in use (default_chunks, _threads).
            n_chunks = max(-(-n_samples // _KERNEL_SOLVE_BLOCK),
                           _kernels.default_chunks(n_samples // 64))
            lower = self.lower()
            _kernels.sample_transposed_solve(seed, 0, lower.indptr, lower.indices,
                                             lower.data, self._analysis.permutation, out,
                                             squared_norms, n_chunks)
            return out
        block = int(max(1, min(_SAMPLE_BLOCK, _SAMPLE_BLOCK_VALUES // n, n_samples)))
        normals = np.empty((block, n))
        for start in range(0, n_samples, block):
            stop = min(start + block, n_samples)
            eps = standard_normal(rng, (stop - start, n), out=normals[:stop - start],
                                  seed=seed, first_row=start)
            if squared_norms.size:
                squared_norms[start:stop] = np.einsum("ij,ij->i", eps, eps)
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
        with self._analysis._cholmod_for(self) as cholmod:
            permuted = cholmod.solve_Lt(Z.T, use_LDLt_decomposition=False)
        if out is None:
            out = np.empty(Z.shape)
        out[:, self._analysis.permutation] = permuted.T
        return out

    def lower(self):
        """The factor ``L`` (of the permuted matrix) as CSC with sorted indices; it shares
        the analysis's memory."""
        self._analysis._check_current(self)
        if self._lower is None:
            analysis = self._analysis
            lower = sp.csc_matrix((analysis._values, analysis.indices, analysis.indptr),
                                  shape=(analysis.n, analysis.n), copy=False)
            lower.has_sorted_indices = True
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
        self._analysis._check_current(self)
        inverse = self._analysis._selected_inverse_on_factor()
        return inverse[self._analysis._positions(rows, cols)]
