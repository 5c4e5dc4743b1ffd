"""Passes over the data: pattern second moments and batched quadratic forms.

These are the only places where the samples enter a fit; each reads ``X`` once, in
parallel (Numba), with no ``(n_samples × n_params)`` temporary. Both work on float32 and
float64 input and accumulate in float64.
"""

import numpy as np

from . import _kernels

__all__ = ["RowSelection", "as_float_array", "moment_sums", "pattern_moments",
           "pattern_moments_about_mean", "quadratic_forms"]

#: Below this many rows per thread and term, :func:`moment_sums` splits the pixels among
#: the threads instead of the samples. Measured (float32, 4 neighbours, medians of 5,
#: 2 threads, tiles of 4,096 pixels): 1024² in chunks of 8 / 32 rows 43 / 71 ms by
#: samples against 9 / 29 ms by pixel tiles, 2048² in chunks of 8 rows 338 against 80
#: ms; but 512² with 500 rows 74 against 88 ms and 256² with 128 rows 3.6 against 4.1 ms
#: (the tiles read every row with a stride).
_TILED_ROWS_PER_TERM = 16
#: Rows whose mean is the provisional centre of :func:`pattern_moments_about_mean`.
_PROVISIONAL_ROWS = 64


#: An empty row index: the kernels then read every row.
_ALL_ROWS = np.empty(0, dtype=np.int64)


class RowSelection:
    """The rows ``rows`` of a 2-D array less a centre, ``X[rows] − c``, neither gathered
    nor centred: a minibatch, or centred data, that the passes of this module read in
    place.

    Gathering 256 random rows of MNIST (``X[rows]``, 1.6 MB) cost 0.2–0.6 ms, more than
    the pass over them that followed: each row is a random place in memory, read by one
    thread, and the copy was then read again. The kernels read the selected rows
    directly, on all threads (a quadratic-form pass over a selection: 0.15–0.17 ms
    against 0.29–0.31 ms for gather and pass; scratch timings, 2026-12-02).

    The centre spares the stochastic fits a centred copy of the data: the kernels
    subtract it from each row they read. That copy was as large as the data (376 MB for
    MNIST's training set, 2 GB for the 2048² benchmark's samples), and on a virtual
    machine that returns freed memory to its host, writing fresh memory cost more than
    the copy itself: NCE's default MNIST fit spent 1.2–1.9 s in the kernel, zeroing the
    pages of its two 376 MB arrays, when the process had not just freed as much (after
    a dense fit, or 8 s of sleep), against 0.05–0.09 s right after another NCE fit
    (``resource.getrusage``, ``perf``: ``clear_page_erms``; 2026-12-02).

    Anything else sees the selected rows, gathered and centred in the array's dtype,
    through ``np.asarray``.

    Parameters
    ----------
    array : ndarray, shape (N, D), float32 or float64, C-contiguous
    rows : array of int, shape (n,), optional
        Row indices in ``[0, N)`` (the kernels read them unchecked); default every row.
    center : array of float, shape (D,), optional
        Subtracted from every row (default: nothing).
    """

    __slots__ = ("array", "rows", "center")

    def __init__(self, array, rows=None, *, center=None):
        if not (isinstance(array, np.ndarray) and array.ndim == 2
                and array.dtype in (np.float32, np.float64) and array.flags.c_contiguous):
            raise TypeError("RowSelection needs a C-contiguous float32 or float64 2-D array.")
        self.array = array
        self.rows = None if rows is None else np.ascontiguousarray(rows, dtype=np.int64)
        if center is not None:
            center = np.ascontiguousarray(center, dtype=np.float64)
            if center.shape != (array.shape[1],):
                raise ValueError(f"center has shape {center.shape}; expected "
                                 f"({array.shape[1]},), one value per column.")
        self.center = center

    @property
    def shape(self):
        return (len(self), self.array.shape[1])

    @property
    def dtype(self):
        return self.array.dtype

    ndim = 2

    def __len__(self):
        return self.array.shape[0] if self.rows is None else self.rows.size

    def __getitem__(self, key):
        """The rows ``key`` (a slice, or an array of integer or boolean row indices) of
        this selection, as a selection of the same array with the same centre."""
        n = len(self)
        if isinstance(key, slice):
            selected = np.arange(*key.indices(n))
        elif isinstance(key, tuple):
            raise TypeError("A RowSelection is indexed by rows only: a slice or a 1-D "
                            f"array of row indices (got the tuple {key!r}).")
        else:
            key = np.asarray(key)
            if key.dtype == bool:
                if key.shape != (n,):
                    raise IndexError(f"A boolean row mask needs shape ({n},); got "
                                     f"{key.shape}.")
                selected = np.flatnonzero(key)
            elif key.ndim == 1 and np.issubdtype(key.dtype, np.integer):
                if key.size and (key.min() < -n or key.max() >= n):
                    raise IndexError(f"Row index out of range for {n} rows.")
                selected = np.where(key < 0, key + n, key)
            else:
                raise TypeError("A RowSelection is indexed by rows only: a slice or a "
                                f"1-D array of row indices (got {type(key).__name__} "
                                f"with shape {np.shape(key)}).")
        return self.take(selected)

    def take(self, rows):
        """The rows ``rows`` (integer indices in ``[0, len(self))``) of this selection,
        unchecked: the optimizer's minibatches, valid by construction, and
        :meth:`__getitem__`'s indices once it has checked them.

        :meth:`__getitem__`'s checks of the indices (their range, negative ones, a mask)
        and the constructor's cost 20–25 µs a step, 0.1 s of NCE's 4,000 steps on MNIST;
        the kernels read the rows unchecked either way, as for a plain array's
        selection (``RowSelection(array, rows)``).
        """
        selection = RowSelection.__new__(RowSelection)
        selection.array = self.array
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        selection.rows = rows if self.rows is None else self.rows[rows]
        selection.center = self.center
        return selection

    def __array__(self, dtype=None, copy=None):
        selected = self.array if self.rows is None else self.array[self.rows]
        if self.center is not None:
            selected = np.subtract(selected, self.center, dtype=self.array.dtype)
        elif self.rows is None and copy:
            selected = selected.copy()
        return selected if dtype is None else selected.astype(dtype, copy=False)


def as_float_array(X):
    """C-contiguous float32/float64 view or copy of ``X`` (other dtypes become float64)."""
    X = np.asarray(X)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    return np.ascontiguousarray(X)


def _samples(X, center=None):
    """``(array, rows, center)`` for the kernels: a selection's array and rows, read in
    place, or ``X`` as a float array and every row; the centre is the selection's plus
    ``center`` (float64, zero when neither is given)."""
    if isinstance(X, RowSelection):
        if X.rows is None:
            array, rows = X.array, _ALL_ROWS
        elif X.rows.size:
            array, rows = X.array, X.rows
        else:
            # The kernels read an empty ``rows`` as "every row": a selection of none is
            # an array of none.
            array, rows = X.array[:0], _ALL_ROWS
        own = X.center
    else:
        array, rows, own = as_float_array(X), _ALL_ROWS, None
    if center is not None:
        center = np.asarray(center, dtype=np.float64)
        if center.shape != (array.shape[1],):
            raise ValueError(f"center has shape {center.shape}; expected "
                             f"({array.shape[1]},), one value per pixel.")
        own = center if own is None else own + center
    total = np.zeros(array.shape[1]) if own is None else np.ascontiguousarray(own)
    return array, rows, total


def pattern_moments(X, grid, *, center=None, weights=None):
    """Weighted second moments of ``X`` on the stencil pattern of ``grid``.

    Parameters
    ----------
    X : ndarray or RowSelection, shape (n_samples, D)
    grid : GridParameterization
    center : ndarray, shape (D,), optional
        Subtracted from every sample first (default: zero).
    weights : ndarray, shape (n_samples,), optional
        Per-sample weights ``w_n`` (default: one).

    Returns
    -------
    ndarray, shape (n_terms, D)
        ``T[k, p] = Σ_n w_n (x_np − c_p)(x_n,p+δ_k − c_{p+δ_k})`` on valid pairs, zero on
        pairs that leave the grid. ``T / n`` is the empirical covariance ``S`` read on Λ's
        pattern, so ``Σ_n w_n (x_n − c)ᵀ Λ(θ) (x_n − c) = Σ_k m_k Σ_p F[k, p] T[k, p]``.
    """
    X, rows, center, weights, shifts = moment_operands(X, grid, center=center,
                                                       weights=weights)
    moments = moment_sums(X, center, weights, shifts, rows=rows)
    moments[~grid.valid] = 0.0
    return moments


def moment_operands(X, grid, *, center=None, weights=None):
    """The operands of :func:`pattern_moments`' pass as its kernels take them:
    ``(array, rows, center, weights, shifts)``, the rows read in place (every row when
    ``rows`` is empty). For a pass that another module schedules
    (:meth:`sparsegauss.cholesky.SparseCholesky.factorize_and_invert` runs one beside a
    factorization); the parameters are :func:`pattern_moments`'.

    Raises
    ------
    ValueError
        When ``weights`` has not one value per sample (the kernels read one a row,
        unchecked).
    """
    X, rows, center = _samples(X, center)
    n_samples = rows.size if rows.size else X.shape[0]
    weights = (np.ones(n_samples) if weights is None
               else np.ascontiguousarray(weights, dtype=np.float64))
    if weights.shape != (n_samples,):
        raise ValueError(f"weights has shape {weights.shape}; expected ({n_samples},), one "
                         "value per sample.")
    return X, rows, center, weights, grid.shifts


def pattern_moments_about_mean(X, grid):
    """Pattern moments about the samples' own mean, and that mean, from one read of X.

    The moments are summed about a provisional centre ``c``, the mean of up to
    :data:`_PROVISIONAL_ROWS` rows spread over X, together with the first moments
    ``s = Σ_n (x_n − c)``; then ``T[k, p] = Σ_n (x_np − c_p)(x_n,q − c_q) − n ȳ_p ȳ_q``
    with ``ȳ = s / n`` and ``q = p + δ_k``, and the mean is ``c + ȳ``. Since ``c`` lies
    within a few standard errors of the mean, the correction is small and cancels
    nothing (summing about zero would lose ``log10(μ²/σ²)`` digits for data with a large
    offset). One pass instead of two: the separate mean and finiteness read cost 24 ms
    of a 0.29 s MNIST MLE.

    NaN or inf in X makes some moment non-finite (a value's own square is a moment);
    the caller checks ``np.isfinite`` on the result and looks for the row only then.

    Parameters
    ----------
    X : ndarray, shape (n_samples, D), n_samples >= 1
    grid : GridParameterization

    Returns
    -------
    moments : ndarray, shape (n_terms, D)
        As :func:`pattern_moments` with ``center`` the mean.
    mean : ndarray, shape (D,), float64
    """
    X = as_float_array(X)
    n = X.shape[0]
    spread = X[::max(1, n // _PROVISIONAL_ROWS)][:_PROVISIONAL_ROWS]
    center = spread.mean(axis=0, dtype=np.float64)
    moments, sums = moment_sums(X, center, np.ones(n), grid.shifts, with_sums=True)
    with np.errstate(invalid="ignore", over="ignore"):   # the caller reports non-finite
        shift = sums / n
        moments -= n * grid.outer_fields(shift)
    moments[~grid.valid] = 0.0
    return moments, center + shift


def moment_sums(X, center, weights, shifts, *, with_sums=False, rows=_ALL_ROWS):
    """``out[k, p] = Σ_n w_n (x_np − c_p)(x_n,p+δ_k − c_{p+δ_k})`` (partners past ``D``
    contribute zero), by whichever parallel split suits the array's shape; with
    ``with_sums``, also ``Σ_n w_n (x_np − c_p)`` from the same read: ``(out, sums)``.
    The samples are the rows ``X[rows]`` (every row when ``rows`` is empty).

    Many samples (an array in memory): each thread sums its share of the samples into
    its own ``n_terms × D`` accumulator. Few wide rows (a chunk of a shard): each thread
    owns tiles of pixels, so that no thread holds a whole-image accumulator.
    """
    n, d = (rows.size if rows.size else X.shape[0]), X.shape[1]
    n_chunks = _kernels.default_chunks(n)
    if (d >= 2 * _kernels.MOMENT_TILE and np.all(shifts >= 0)
            and n < _TILED_ROWS_PER_TERM * len(shifts) * n_chunks):
        if rows.size:
            X = X[rows]         # the tiled split reads all rows of its array
        sums = np.zeros(d if with_sums else 0)
        out = _kernels.pattern_moments_tiled(X, center, weights, shifts,
                                             _kernels.MOMENT_TILE, sums)
    else:
        chunk_sums = np.zeros((n_chunks, d if with_sums else 0))
        out = _kernels.pattern_moments(X, rows, center, weights, shifts, n_chunks,
                                       chunk_sums)
        sums = chunk_sums.sum(axis=0)
    return (out, sums) if with_sums else out


def logistic_moments(X, Y, grid, fields, x_offsets, y_offsets):
    """NCE's logistic classifier of X (label +1) against Y (label −1) on
    ``a_n = −½ x_nᵀ Λ x_n − offsets_n`` (a selection's rows less its centre), from one read of both
    (:func:`sparsegauss._kernels.logistic_pattern_moments`).

    Parameters
    ----------
    X, Y : ndarray or RowSelection, shapes (n_x, D) and (n_y, D)
        The two classes' samples; either may have no rows.
    grid : GridParameterization
    fields : ndarray, shape (n_terms, D)
        Stencil layout of Λ (``grid.fields(theta)``), zero on pairs off the grid.
    x_offsets, y_offsets : ndarray, shapes (n_x,) and (n_y,)

    Returns
    -------
    loss : float
        ``Σ_n softplus(−y_n a_n)`` over both classes (``y_n`` the row's label).
    weight : float
        ``Σ_n w_n`` with ``w_n = ∂ loss_n / ∂ a_n = −y_n σ(−y_n a_n)``.
    moments : ndarray, shape (n_terms, D)
        ``Σ_n w_n x_np x_n,p+δ_k`` on valid pairs, zero on pairs that leave the grid (as
        :func:`pattern_moments` with these weights).
    """
    operands = []
    for name, samples, offsets in (("X", X, x_offsets), ("Y", Y, y_offsets)):
        samples, rows, center = _samples(samples)
        n = rows.size if rows.size else samples.shape[0]
        offsets = np.ascontiguousarray(offsets, dtype=np.float64)
        if offsets.shape != (n,):           # the kernel reads one offset a row, unchecked
            raise ValueError(f"The offsets of {name} have shape {offsets.shape}; expected "
                             f"({n},), one value per row of {name}.")
        if samples.shape[1] != grid.n_pixels:
            raise ValueError(f"{name} has {samples.shape[1]} columns; the grid has "
                             f"{grid.n_pixels} pixels.")
        operands += [samples, rows, center, offsets]
    n_rows = operands[3].size + operands[7].size
    loss, weight, moments = _kernels.logistic_pattern_moments(
        *operands, np.ascontiguousarray(fields, dtype=np.float64), grid.shifts,
        grid.multiplicity, _kernels.default_chunks(max(n_rows, 1)))
    moments[~grid.valid] = 0.0
    return float(loss), float(weight), moments


def quadratic_forms(X, grid, fields, *, center=None):
    """``(x_n − c)ᵀ Λ (x_n − c)`` for every sample, from the stencil layout of Λ.

    Parameters
    ----------
    X : ndarray or RowSelection, shape (n_samples, D)
    grid : GridParameterization
    fields : ndarray, shape (n_terms, D)
        Stencil layout of Λ (``grid.fields(theta)``), zero on pairs off the grid.
    center : ndarray, shape (D,), optional

    Returns
    -------
    ndarray, shape (n_samples,)
    """
    X, rows, center = _samples(X, center)
    return _kernels.quadratic_forms(X, rows, center,
                                    np.ascontiguousarray(fields, dtype=np.float64),
                                    grid.shifts, grid.multiplicity,
                                    _kernels.default_chunks(rows.size or X.shape[0]))
