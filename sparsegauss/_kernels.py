"""Numba kernels: all of the library's per-sample and per-factor-entry loops.

Conventions (see STYLE.md): arrays in, arrays out; no validation here (the public
callers validate once); ``prange`` only over outer loops whose writes are disjoint;
never ``fastmath=True`` (it makes ``np.isnan`` lie) — only reassociation, see below. Kernels that call each other stay in this
file because Numba's cache does not see edits elsewhere.

The stencil layout (see :mod:`sparsegauss.grid`) is ``(n_terms, D)`` with term ``k``
pairing pixel ``p`` with ``p + shifts[k]``; ``shifts[0] == 0`` is the diagonal and every
other shift is positive. Kernels compute every pair (a partner past the end of the row
counts as zero) and leave it to the caller to zero the pairs that wrap around a grid row.

In a ``parallel=True`` kernel every array expression outside the ``prange`` loop
(``np.zeros``, ``a += b``, ``a.sum()``, a slice assignment) becomes a parallel region of
its own, which Numba's diagnostics do not always list: each costs a few microseconds with
the worker threads awake, and far more when they have gone to sleep. The kernels a
stochastic fit calls at every step (the passes, the logistic pass, the factorization
beside the moments) therefore keep their serial set-up and reductions in plain compiled
helpers (:func:`_sum_chunks`, :func:`_stencil_setup`) or inside the ``prange``, and no
parallel kernel inlines a helper that loops over such expressions
(:func:`_supernode_sizes`). The large-factor split kernels keep a few single regions
(``np.zeros``, ``np.arange``), which cost nothing next to their work.

Offsets into a row are added as unsigned integers (``y[q + s]`` with ``q = uint64(p)``).
With a signed index Numba emits a negative-index wraparound test on every access, and
that select stops LLVM from vectorizing the loop: a one-line ``row[p] += w*y[p]*y[p+s]``
kernel compiled to 3 AVX instructions with the signed index and 20 with an unsigned one,
and the pattern-moment and quadratic-form passes over MNIST ran twice as fast after the
change (docs/performance.md).
"""

import llvmlite.binding as llvm_binding
import numba
import numpy as np
from numba import njit, prange
from numba.extending import get_cython_function_address

__all__ = ["ZIGGURAT", "adam_step", "antithetic_pairs", "apply_stencil", "cholesky_supernodal",
           "cholesky_supernodal_split", "copy_rows_where", "factor_and_select",
           "first_non_finite_row", "gaussian_term_and_score", "gibbs_sweeps",
           "logistic_pattern_moments", "lower_positions", "lower_transposed_solve",
           "mala_propose", "mala_reverse", "pair_hessian",
           "pattern_cross_moments", "pattern_moments", "pattern_moments_tiled", "quadratic_forms",
           "sandwich_on_pattern", "sandwich_terms", "scatter_transposed", "subtree_schedule",
           "standard_normal_rows", "symbolic_supernodal", "symmetric_planes",
           "takahashi_supernodal", "takahashi_supernodal_split"]


# Reassociation (and FMA contraction) lets LLVM vectorize the floating-point sums below;
# unlike ``fastmath=True`` it keeps NaN/inf semantics ("nnan"/"ninf" stay off), so
# ``np.isnan`` still tells the truth. Results differ from sequential sums by rounding only.
_REASSOC = {"reassoc", "contract"}
# Samples a block of the centred, zero-padded buffer (:func:`_accumulate_block`: a
# pass's last rows, the pixels at a row's end, shift sets not read in place): the
# accumulator is loaded and stored once per block instead of once per sample.
_BLOCK = 4
# Rows a block read in place (:func:`_rows_forms`, :func:`_rows_terms`, in
# :func:`quadratic_forms`, the moment pass and the logistic pass): each field, centre
# value and accumulator is loaded once for eight rows. The 4-neighbour form pass over
# MNIST on 2 threads of an Intel Xeon, alternated five times with blocks of four: float32
# 13.5–14.4 against 13.9–15.6 ms, float64 15.7–16.2 against 16.6–17.4 ms; minibatches of
# 256 rows 71–75 against 83–87 µs (docs/performance.md). The moment products took eight
# rows only once a block's rows were spaced apart (:func:`_moments_of_rows`): with
# neighbouring rows eight were slower than four (float32 15.0–16.3 against 13.3–13.9 ms),
# spaced they are faster (9.6–10.2 against 11.1–12.2 ms; NCE's logistic pass, 256 + 256
# rows, 263–277 against 278–292 µs).
_WIDE = 8


@njit(fastmath=_REASSOC, inline="always")
def _center_into(y, x, center, d):
    for p in range(d):
        y[p] = x[p] - center[p]


@njit(fastmath=_REASSOC, inline="always")
def _add_block(total, y, w, d):
    """``total[p] += Σ_b w_b y[b, p]`` over a block of samples (one load and store of
    ``total`` a block: added sample by sample, the first moments cost as much again as
    a finiteness scan of the data)."""
    for p in range(d):
        t = 0.0
        for b in range(_BLOCK):
            t += w[b] * y[b, p]
        total[p] += t


@njit(fastmath=_REASSOC, inline="always")
def _three_terms(y, w, r0, r1, r2, s0, s1, s2, d):
    """``r_k[p] += Σ_b w_b y[b, p] y[b, p + s_k]`` for three terms over a block of samples.

    At most three accumulators per loop: all five terms of the 8-neighbour stencil in one
    loop ran at 51 ms on MNIST against 33 ms split three + two (the five-store loop was
    not vectorized; most likely too many runtime overlap checks for LLVM's limit). A
    group of one or two terms fills the rest with a scratch row at shift 0.
    """
    for p in range(d):
        q = np.uint64(p)
        t0 = 0.0
        t1 = 0.0
        t2 = 0.0
        for b in range(_BLOCK):
            wy = w[b] * y[b, q]
            t0 += wy * y[b, q + s0]
            t1 += wy * y[b, q + s1]
            t2 += wy * y[b, q + s2]
        r0[p] += t0
        r1[p] += t1
        r2[p] += t2


@njit(fastmath=_REASSOC, inline="always")
def _negative_term(y, w, r0, s, d):
    """One term with a negative shift (only on grids one or two pixels wide, from score
    matching's extended offsets): partners before pixel 0 contribute zero."""
    for b in range(_BLOCK):
        for p in range(-s, d):
            r0[p] += w[b] * y[b, p] * y[b, p + s]


@njit(fastmath=_REASSOC, inline="always")
def _accumulate_block(y, w, rows, shifts, unsigned, scratch, d):
    """``rows[k, p] += Σ_b w_b y[b, p] y[b, p + δ_k]`` for every term, up to three per loop
    (see :func:`_three_terms`); negative shifts take their own loop."""
    n_terms = shifts.size
    zero = np.uint64(0)
    k = 0
    while k < n_terms:
        if shifts[k] < 0:
            _negative_term(y, w, rows[k], shifts[k], d)
            k += 1
            continue
        group = 1                            # up to three non-negative terms per loop
        while group < 3 and k + group < n_terms and shifts[k + group] >= 0:
            group += 1
        second = rows[k + 1] if group > 1 else scratch[0]
        third = rows[k + 2] if group > 2 else scratch[1]
        _three_terms(y, w, rows[k], second, third, unsigned[k],
                     unsigned[k + 1] if group > 1 else zero,
                     unsigned[k + 2] if group > 2 else zero, d)
        k += group


@njit(inline="always")
def _padding(shifts):
    """Zeros a centred row needs past its end: the largest shift (0 if none is
    positive), so that partners past pixel D read zero."""
    pad = 0
    for k in range(shifts.size):
        pad = max(pad, shifts[k])
    return pad


@njit(inline="always")
def _row_of(X, rows, i):
    """Row ``i`` of the samples: ``X[rows[i]]`` for a selection (a minibatch read in
    place), ``X[i]`` when ``rows`` is empty."""
    return X[rows[i]] if rows.size else X[i]


@njit(inline="always")
def _eight_rows(X, rows, first, step):
    """Rows ``first, first + step, …, first + 7·step`` of the samples (see
    :func:`_row_of`): a block of :data:`_WIDE` rows read in place."""
    return (_row_of(X, rows, first), _row_of(X, rows, first + step),
            _row_of(X, rows, first + 2 * step), _row_of(X, rows, first + 3 * step),
            _row_of(X, rows, first + 4 * step), _row_of(X, rows, first + 5 * step),
            _row_of(X, rows, first + 6 * step), _row_of(X, rows, first + 7 * step))


@njit(parallel=True, fastmath=_REASSOC, cache=True, nogil=True)
def pattern_moments(X, rows, center, weights, shifts, n_chunks, sums):
    """Weighted second moments on the stencil pattern.

    ``out[k, p] = Σ_n w_n (x_np − c_p)(x_n,p+δ_k − c_{p+δ_k})`` for every ``p``, where a
    partner index ``p + δ_k ≥ D`` contributes zero (the caller zeroes the pairs that wrap
    around a grid row). With ``sums`` of shape ``(n_chunks, D)``, also the first moments
    ``Σ_n w_n (x_np − c_p)``, chunk by chunk, from the same read (a mean without a second
    pass over the data); give shape ``(n_chunks, 0)`` to skip them.

    Parameters
    ----------
    X : ndarray, shape (N, D), float32 or float64, C-contiguous
    rows : ndarray, shape (n,) or (0,), int64
        The samples are the rows ``X[rows]``, read in place (a minibatch: no gathered
        copy); all N rows when empty.
    center : ndarray, shape (D,), float64
    weights : ndarray, shape (n,), float64
    shifts : ndarray, shape (n_terms,), int64
        Any number of terms (3 or 5 for the stencils; score matching's extended offsets
        have more, negative ones on grids one or two pixels wide).
    n_chunks : int
        Number of sample chunks processed in parallel, each with its own accumulator
        (so no two threads write the same memory, and no (n × n_params) temporary).
    sums : ndarray, shape (n_chunks, D) or (n_chunks, 0), float64
        Zeros in, each chunk's first moments out.

    Returns
    -------
    ndarray, shape (n_terms, D), float64
    """
    n = rows.size if rows.size else X.shape[0]
    d = X.shape[1]
    acc = np.empty((n_chunks, shifts.size, d))
    for chunk in prange(n_chunks):
        acc[chunk] = 0.0
        _moments_of_rows(X, rows, chunk * n // n_chunks, (chunk + 1) * n // n_chunks,
                         center, weights, shifts, acc[chunk], sums[chunk])
    return _sum_chunks(acc)


@njit(fastmath=_REASSOC, inline="always")
def _partner_sum(x0, x1, x2, x3, x4, x5, x6, x7, t, c, v0, v1, v2, v3, v4, v5, v6, v7):
    """``Σ_b v_b (x_b[t] − c)`` over eight rows: one term's products at one pixel."""
    return (v0 * (x0[t] - c) + v1 * (x1[t] - c) + v2 * (x2[t] - c) + v3 * (x3[t] - c)
            + v4 * (x4[t] - c) + v5 * (x5[t] - c) + v6 * (x6[t] - c) + v7 * (x7[t] - c))


@njit(fastmath=_REASSOC, inline="always")
def _rows_terms(x0, x1, x2, x3, x4, x5, x6, x7, center, w, r0, r1, r2, total, s1, s2,
                stop):
    """``r_k[p] += Σ_b w_b (x_b[p] − c_p)(x_b[p + s_k] − c_{p+s_k})`` for ``p < stop``
    over eight rows, the diagonal (``s_0 = 0``) into ``r0`` and two shifted terms, read
    straight from the rows (the caller keeps ``p + s_k`` inside the row); and the first
    moments ``total[p] += Σ_b w_b (x_b[p] − c_p)`` (a scratch row when they are not
    wanted: a test inside the loop stopped LLVM from vectorizing it, 2.5× slower).

    Centring the rows into a buffer first (:func:`_center_into`) made the pass two
    passes in time: a memory-bound copy (10 ms of float32 MNIST) and then the
    arithmetic in L1 (5 ms), never overlapped. Here the loads of the rows and the
    arithmetic on them share one loop, and the out-of-order core overlaps them; the
    centring is recomputed for each partner, which costs less than the copy. Eight rows
    load and store each accumulator once for eight products (see ``_WIDE``).
    """
    w0, w1, w2, w3 = w[0], w[1], w[2], w[3]
    w4, w5, w6, w7 = w[4], w[5], w[6], w[7]
    for p in range(stop):
        q = np.uint64(p)
        c0 = center[q]
        u0 = x0[q] - c0
        u1 = x1[q] - c0
        u2 = x2[q] - c0
        u3 = x3[q] - c0
        u4 = x4[q] - c0
        u5 = x5[q] - c0
        u6 = x6[q] - c0
        u7 = x7[q] - c0
        v0 = w0 * u0
        v1 = w1 * u1
        v2 = w2 * u2
        v3 = w3 * u3
        v4 = w4 * u4
        v5 = w5 * u5
        v6 = w6 * u6
        v7 = w7 * u7
        r0[p] += (v0 * u0 + v1 * u1 + v2 * u2 + v3 * u3
                  + v4 * u4 + v5 * u5 + v6 * u6 + v7 * u7)
        total[p] += v0 + v1 + v2 + v3 + v4 + v5 + v6 + v7
        r1[p] += _partner_sum(x0, x1, x2, x3, x4, x5, x6, x7, q + s1, center[q + s1],
                              v0, v1, v2, v3, v4, v5, v6, v7)
        r2[p] += _partner_sum(x0, x1, x2, x3, x4, x5, x6, x7, q + s2, center[q + s2],
                              v0, v1, v2, v3, v4, v5, v6, v7)


@njit(fastmath=_REASSOC, inline="always")
def _rows_pair(x0, x1, x2, x3, x4, x5, x6, x7, center, w, r1, r2, s1, s2, stop):
    """:func:`_rows_terms` for two shifted terms without the diagonal (the rest of the
    8-neighbour stencil's five)."""
    w0, w1, w2, w3 = w[0], w[1], w[2], w[3]
    w4, w5, w6, w7 = w[4], w[5], w[6], w[7]
    for p in range(stop):
        q = np.uint64(p)
        c0 = center[q]
        v0 = w0 * (x0[q] - c0)
        v1 = w1 * (x1[q] - c0)
        v2 = w2 * (x2[q] - c0)
        v3 = w3 * (x3[q] - c0)
        v4 = w4 * (x4[q] - c0)
        v5 = w5 * (x5[q] - c0)
        v6 = w6 * (x6[q] - c0)
        v7 = w7 * (x7[q] - c0)
        r1[p] += _partner_sum(x0, x1, x2, x3, x4, x5, x6, x7, q + s1, center[q + s1],
                              v0, v1, v2, v3, v4, v5, v6, v7)
        r2[p] += _partner_sum(x0, x1, x2, x3, x4, x5, x6, x7, q + s2, center[q + s2],
                              v0, v1, v2, v3, v4, v5, v6, v7)


@njit(inline="always")
def _reads_in_place(shifts, d):
    """Whether the passes (:func:`_moments_of_rows`, :func:`quadratic_forms`,
    :func:`logistic_pattern_moments`) can read full blocks straight from the rows: the
    diagonal first, the other shifts positive and shorter than the row, and three or
    five terms (the stencils)."""
    if shifts.size != 3 and shifts.size != 5:
        return False
    if shifts[0] != 0:
        return False
    for k in range(1, shifts.size):
        if shifts[k] <= 0 or shifts[k] >= d:
            return False
    return True


@njit(cache=True, nogil=True)
def _sum_chunks(acc):
    """``Σ_c acc[c]``: the per-thread accumulators of a parallel pass added up (serial
    code of a parallel kernel, see the module docstring)."""
    out = np.zeros((acc.shape[1], acc.shape[2]))
    for chunk in range(acc.shape[0]):
        for k in range(acc.shape[1]):
            for p in range(acc.shape[2]):
                out[k, p] += acc[chunk, k, p]
    return out


@njit(cache=True, nogil=True)
def _stencil_setup(fields, shifts, multiplicity, d):
    """What the quadratic-form passes compute once a call: unsigned shifts, the fields
    times their multiplicities, the first pixel whose partners may lie past the row
    (``inner``) and the scaled fields from there on (serial code of a parallel kernel,
    see the module docstring)."""
    pad = _padding(shifts)
    unsigned = shifts.astype(np.uint64)
    scaled = _scaled_fields(fields, multiplicity)
    inner = d - pad if _reads_in_place(shifts, d) else d
    edge_scaled = np.ascontiguousarray(scaled[:, inner:])
    return pad, unsigned, scaled, inner, edge_scaled


@njit(fastmath=_REASSOC, cache=True, nogil=True)
def _moments_of_rows(X, rows, start, stop, center, weights, shifts, acc, sums):
    """:func:`pattern_moments` of the samples ``start, …, stop − 1`` on this thread,
    added into ``acc`` (shape ``(n_terms, D)``) and, when ``sums`` has D entries (not
    0), their first moments into ``sums``.

    For the stencils (:func:`_reads_in_place`) blocks of eight rows are read in place
    (:func:`_rows_terms`) on the pixels whose partners all lie inside the row, and only
    the last ``max(shifts)`` pixels of each row (whose partners may lie past D, where
    they count as zero) go through a centred, zero-padded buffer; the last rows (fewer
    than eight), and any other set of shifts, go through the buffer whole, four rows at
    a time.

    A block takes eight rows spaced ``m = (stop − start) // 8`` apart (``first``,
    ``first + m``, …), not eight neighbours: each of its cursors then walks on to the
    next row, which follows in memory, so the thread reads eight long sequential streams
    in pages of their own instead of short ones crossing the same pages, and the
    hardware prefetcher keeps up (Intel's L2 streamer follows one stream a 4 KiB page).
    Eight rows summed a block over float32 MNIST (scratch ``/tmp/exp24/streams.py``, 2
    threads of an Intel Xeon): 6.9–7.9 ms for neighbouring rows, 5.3–5.4 ms spaced; the
    4-neighbour moment pass, then four rows a block, 13.3–14.5 → 10.4–11.8 ms in float32,
    16.2–17.9 → 14.8–16.0 ms in float64, and with eight rows 9.6–10.2 ms in float32
    (docs/performance.md). The sums change only by rounding.
    """
    d = X.shape[1]
    pad = _padding(shifts)
    # Unsigned offsets (see the module docstring); negative shifts take their own loop.
    unsigned = np.maximum(shifts, 0).astype(np.uint64)
    y = np.zeros((_BLOCK, d + pad))      # zero padding: partners past D contribute 0
    w = np.zeros(_WIDE)                  # a block's weights; the first _BLOCK in the tail
    scratch = np.zeros((2, d))           # the unused accumulators of a short group
    first = start
    if _reads_in_place(shifts, d):
        inner = d - pad                  # pixels whose partners are all inside the row
        edge = np.zeros((_WIDE, 2 * pad))
        edge_acc = np.zeros((shifts.size, pad))
        edge_sums = np.zeros(pad if sums.size else 0)
        # Row b of a block is first + b·m: eight long streams (see the docstring).
        m = (stop - start) // _WIDE
        for first in range(start, start + m):
            for b in range(_WIDE):
                w[b] = weights[first + b * m]
            x0, x1, x2, x3, x4, x5, x6, x7 = _eight_rows(X, rows, first, m)
            _rows_terms(x0, x1, x2, x3, x4, x5, x6, x7, center, w, acc[0], acc[1],
                        acc[2], sums if sums.size else scratch[0], unsigned[1], unsigned[2],
                        inner)
            if shifts.size == 5:
                _rows_pair(x0, x1, x2, x3, x4, x5, x6, x7, center, w, acc[3], acc[4],
                           unsigned[3], unsigned[4], inner)
            for b in range(_WIDE):
                _center_into(edge[b], _row_of(X, rows, first + b * m)[inner:],
                             center[inner:], pad)
            for half in range(0, _WIDE, _BLOCK):        # the buffer takes four rows
                block, block_weights = edge[half:half + _BLOCK], w[half:half + _BLOCK]
                if sums.size:
                    _add_block(edge_sums, block, block_weights, pad)
                _accumulate_block(block, block_weights, edge_acc, shifts, unsigned, scratch,
                                  pad)
        first = start + _WIDE * m
        for k in range(shifts.size):
            for p in range(pad):
                acc[k, inner + p] += edge_acc[k, p]
        for p in range(edge_sums.size):
            sums[inner + p] += edge_sums[p]
    for first in range(first, stop, _BLOCK):
        for b in range(_BLOCK):
            if first + b < stop:
                w[b] = weights[first + b]
                _center_into(y[b], _row_of(X, rows, first + b), center, d)
            else:
                w[b] = 0.0
                y[b, :d] = 0.0
        if sums.size:
            _add_block(sums, y, w[:_BLOCK], d)
        _accumulate_block(y, w[:_BLOCK], acc, shifts, unsigned, scratch, d)


#: Pixels per tile of :func:`pattern_moments_tiled`: five float64 accumulators of 4,096
#: pixels (160 KiB) stay in a core's L2 cache for all the samples (2,048 to 16,384 were
#: within 10 % of each other on 1024² and 2048² chunks).
MOMENT_TILE = 4096


@njit(parallel=True, fastmath=_REASSOC, cache=True, nogil=True)
def pattern_moments_tiled(X, center, weights, shifts, tile, sums):
    """:func:`pattern_moments` for wide images, in parallel over tiles of pixels.

    Splitting the samples among threads gives each thread an accumulator of
    ``n_terms × D`` values; for a 1024×1024 image that is 24 MiB per thread, out of cache
    and read and written again for every block of samples, and allocated afresh for each
    chunk of a few rows that a shard reader passes (8 rows of 1024² float32 a chunk: 59 ms
    a call, 0.5 GB/s). Here each thread owns a tile of pixels: its accumulators stay in
    cache for all the samples, and the data are read once (plus the tile's overlap with
    its neighbour, ``max(shifts)`` values a row). Shifts must be non-negative. ``sums``,
    of shape ``(D,)`` (zeros in) or ``(0,)``, receives the first moments as in
    :func:`pattern_moments`.
    """
    n, d = X.shape
    with_sums = sums.shape[0] > 0
    n_terms = shifts.size
    pad = _padding(shifts)
    unsigned = shifts.astype(np.uint64)
    n_tiles = (d + tile - 1) // tile
    out = np.empty((n_terms, d))
    for t in prange(n_tiles):
        p0 = t * tile
        length = min(d, p0 + tile) - p0
        reach = min(d, p0 + length + pad) - p0     # values the tile reads; zeros past D
        y = np.zeros((_BLOCK, length + pad))
        w = np.zeros(_BLOCK)
        acc = np.zeros((n_terms, length))
        scratch = np.zeros((2, length))
        for first in range(0, n, _BLOCK):
            for b in range(_BLOCK):
                if first + b < n:
                    w[b] = weights[first + b]
                    _center_into(y[b], X[first + b, p0:], center[p0:], reach)
                else:
                    w[b] = 0.0
            if with_sums:
                _add_block(sums[p0:], y, w, length)
            _accumulate_block(y, w, acc, shifts, unsigned, scratch, length)
        for k in range(n_terms):
            for j in range(length):
                out[k, p0 + j] = acc[k, j]
    return out


@njit(parallel=True, fastmath=_REASSOC, cache=True)
def quadratic_forms(X, rows, center, fields, shifts, multiplicity, n_chunks):
    """Batched quadratic forms ``q_n = (x_n − c)ᵀ Λ (x_n − c)`` from the stencil weights.

    ``q_n = Σ_k m_k Σ_p F[k, p] (x_np − c_p)(x_n,p+δ_k − c_{p+δ_k})``; ``fields`` must
    be zero on pairs that leave the grid. For the stencils (:func:`_reads_in_place`)
    blocks of eight rows (spaced apart, see :func:`_forms_of_rows`) are read in place on
    the pixels whose partners lie inside the row (:func:`_rows_forms`, one load of the
    weights for eight rows) and their last
    ``max(shifts)`` pixels through a zero-padded buffer; the last rows (fewer than
    eight) and other shift sets are centred into a zero-padded copy of the row first
    (:func:`_stencil_form`).
    The samples are the rows ``X[rows]`` (all rows when ``rows`` is empty), as in
    :func:`pattern_moments`.

    Returns
    -------
    ndarray, shape (n,), float64
    """
    n = rows.size if rows.size else X.shape[0]
    d = X.shape[1]
    pad, unsigned, scaled, inner, edge_scaled = _stencil_setup(fields, shifts,
                                                               multiplicity, d)
    out = np.empty(n)
    for chunk in prange(n_chunks):      # the body on its own: see logistic_pattern_moments
        _forms_of_rows(X, rows, chunk * n // n_chunks, (chunk + 1) * n // n_chunks, center,
                       scaled, edge_scaled, unsigned, pad, inner, out)
    return out


@njit(fastmath=_REASSOC, cache=True, nogil=True)
def _forms_of_rows(X, rows, start, stop, center, scaled, edge_scaled, unsigned, pad, inner,
                   out):
    """:func:`quadratic_forms` of the samples ``start, …, stop − 1`` into ``out`` on this
    thread (``pad`` zeros past a row's end); blocks of eight read in place when
    ``inner < D``, the rest row by row through the buffer.

    A block's rows are spaced ``m = (stop − start) // 8`` apart, eight sequential
    streams (see :func:`_moments_of_rows`): the 4-neighbour pass over float32 MNIST
    13.6–14.7 → 8.9–9.2 ms, float64 14.7–16.7 → 13.8–14.6 ms (each row's form is summed
    as before, to the bit)."""
    d = X.shape[1]
    y = np.zeros(d + pad)
    edge = np.zeros(2 * pad)
    # Row b of a block is i + b·m, not i + b: eight long streams (see the docstring).
    m = (stop - start) // _WIDE if inner < d else 0
    for i in range(start, start + m):
        x0, x1, x2, x3, x4, x5, x6, x7 = _eight_rows(X, rows, i, m)
        forms = _rows_forms(x0, x1, x2, x3, x4, x5, x6, x7, center, scaled, unsigned, inner)
        for b in range(_WIDE):
            _center_into(edge, _row_of(X, rows, i + b * m)[inner:], center[inner:], pad)
            out[i + b * m] = forms[b] + _stencil_form(edge, edge_scaled, unsigned, pad)
    i = start + _WIDE * m
    for i in range(i, stop):
        _center_into(y, _row_of(X, rows, i), center, d)
        out[i] = _stencil_form(y, scaled, unsigned, d)


@njit(fastmath=_REASSOC, inline="always")
def _pixel_form(x, q, c0, g0, s1, c1, g1, s2, c2, g2):
    """``u_p (G₀ u_p + G₁ u_{p+s₁} + G₂ u_{p+s₂})`` with ``u = x − c``, for one row."""
    u = x[q] - c0
    return u * (g0 * u + g1 * (x[q + s1] - c1) + g2 * (x[q + s2] - c2))


@njit(fastmath=_REASSOC, inline="always")
def _pixel_pair(x, q, c0, s3, c3, g3, s4, c4, g4):
    """``u_p (G₃ u_{p+s₃} + G₄ u_{p+s₄})``: the 8-neighbour stencil's last two terms."""
    return (x[q] - c0) * (g3 * (x[q + s3] - c3) + g4 * (x[q + s4] - c4))


@njit(fastmath=_REASSOC, inline="always")
def _rows_forms(x0, x1, x2, x3, x4, x5, x6, x7, center, scaled, unsigned, stop):
    """:func:`_stencil_form` of eight rows on pixels ``p < stop``, read in place (the
    caller keeps ``p + δ_k`` inside the row): each weight ``G[k, p]`` and centre value
    is loaded once for the eight rows, and the loads of the rows overlap the arithmetic
    (see :func:`_rows_terms`). Three or five terms, the diagonal first. Returns the
    eight partial forms."""
    g0, g1, g2 = scaled[0], scaled[1], scaled[2]
    s1, s2 = unsigned[1], unsigned[2]
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    a3 = 0.0
    a4 = 0.0
    a5 = 0.0
    a6 = 0.0
    a7 = 0.0
    if unsigned.size == 3:
        for p in range(stop):
            q = np.uint64(p)
            c0, c1, c2 = center[q], center[q + s1], center[q + s2]
            h0, h1, h2 = g0[q], g1[q], g2[q]
            a0 += _pixel_form(x0, q, c0, h0, s1, c1, h1, s2, c2, h2)
            a1 += _pixel_form(x1, q, c0, h0, s1, c1, h1, s2, c2, h2)
            a2 += _pixel_form(x2, q, c0, h0, s1, c1, h1, s2, c2, h2)
            a3 += _pixel_form(x3, q, c0, h0, s1, c1, h1, s2, c2, h2)
            a4 += _pixel_form(x4, q, c0, h0, s1, c1, h1, s2, c2, h2)
            a5 += _pixel_form(x5, q, c0, h0, s1, c1, h1, s2, c2, h2)
            a6 += _pixel_form(x6, q, c0, h0, s1, c1, h1, s2, c2, h2)
            a7 += _pixel_form(x7, q, c0, h0, s1, c1, h1, s2, c2, h2)
    else:
        g3, g4 = scaled[3], scaled[4]
        s3, s4 = unsigned[3], unsigned[4]
        for p in range(stop):
            q = np.uint64(p)
            c0, c1, c2 = center[q], center[q + s1], center[q + s2]
            c3, c4 = center[q + s3], center[q + s4]
            h0, h1, h2, h3, h4 = g0[q], g1[q], g2[q], g3[q], g4[q]
            a0 += (_pixel_form(x0, q, c0, h0, s1, c1, h1, s2, c2, h2)
                   + _pixel_pair(x0, q, c0, s3, c3, h3, s4, c4, h4))
            a1 += (_pixel_form(x1, q, c0, h0, s1, c1, h1, s2, c2, h2)
                   + _pixel_pair(x1, q, c0, s3, c3, h3, s4, c4, h4))
            a2 += (_pixel_form(x2, q, c0, h0, s1, c1, h1, s2, c2, h2)
                   + _pixel_pair(x2, q, c0, s3, c3, h3, s4, c4, h4))
            a3 += (_pixel_form(x3, q, c0, h0, s1, c1, h1, s2, c2, h2)
                   + _pixel_pair(x3, q, c0, s3, c3, h3, s4, c4, h4))
            a4 += (_pixel_form(x4, q, c0, h0, s1, c1, h1, s2, c2, h2)
                   + _pixel_pair(x4, q, c0, s3, c3, h3, s4, c4, h4))
            a5 += (_pixel_form(x5, q, c0, h0, s1, c1, h1, s2, c2, h2)
                   + _pixel_pair(x5, q, c0, s3, c3, h3, s4, c4, h4))
            a6 += (_pixel_form(x6, q, c0, h0, s1, c1, h1, s2, c2, h2)
                   + _pixel_pair(x6, q, c0, s3, c3, h3, s4, c4, h4))
            a7 += (_pixel_form(x7, q, c0, h0, s1, c1, h1, s2, c2, h2)
                   + _pixel_pair(x7, q, c0, s3, c3, h3, s4, c4, h4))
    return a0, a1, a2, a3, a4, a5, a6, a7


@njit(inline="always")
def _softplus(z):
    """``log(1 + e^z)`` without overflow (``np.logaddexp(0, z)``)."""
    return max(z, 0.0) + np.log1p(np.exp(-abs(z)))


@njit(inline="always")
def _sigmoid(z):
    """``1 / (1 + e^−z)`` without overflow (``scipy.special.expit``)."""
    if z >= 0.0:
        return 1.0 / (1.0 + np.exp(-z))
    e = np.exp(z)
    return e / (1.0 + e)


@njit(inline="always")
def _scaled_fields(fields, multiplicity):
    """``G[k, p] = m_k F[k, p]``: each term's multiplicity applied once, not per row."""
    n_terms, d = fields.shape[0], fields.shape[1]
    scaled = np.empty((n_terms, d))
    for k in range(n_terms):
        for p in range(d):
            scaled[k, p] = multiplicity[k] * fields[k, p]
    return scaled


@njit(fastmath=_REASSOC, inline="always")
def _stencil_form(y, scaled, unsigned, d):
    """``Σ_k Σ_p G[k, p] y_p y_{p+δ_k}`` for a zero-padded row ``y`` (``G`` from
    :func:`_scaled_fields`, zero on pairs off the grid): the 4- and 8-neighbour stencils
    (3 and 5 terms) in one sweep, one accumulator a term; any other number of terms one
    sweep a term."""
    n_terms = unsigned.size
    if n_terms == 3 or n_terms == 5:
        g0, g1, g2 = scaled[0], scaled[1], scaled[2]
        s1, s2 = unsigned[1], unsigned[2]
        a0 = 0.0
        a1 = 0.0
        a2 = 0.0
        a3 = 0.0
        a4 = 0.0
        if n_terms == 3:
            for p in range(d):
                u = np.uint64(p)
                yp = y[u]
                a0 += g0[u] * yp * yp
                a1 += g1[u] * yp * y[u + s1]
                a2 += g2[u] * yp * y[u + s2]
        else:
            g3, g4 = scaled[3], scaled[4]
            s3, s4 = unsigned[3], unsigned[4]
            for p in range(d):
                u = np.uint64(p)
                yp = y[u]
                a0 += g0[u] * yp * yp
                a1 += g1[u] * yp * y[u + s1]
                a2 += g2[u] * yp * y[u + s2]
                a3 += g3[u] * yp * y[u + s3]
                a4 += g4[u] * yp * y[u + s4]
        return a0 + a1 + a2 + a3 + a4
    q = 0.0
    for k in range(n_terms):
        g = scaled[k]
        s = unsigned[k]
        for p in range(d):
            u = np.uint64(p)
            q += g[u] * y[u] * y[u + s]
    return q


@njit(parallel=True, fastmath=_REASSOC, cache=True)
def logistic_pattern_moments(X, x_rows, x_center, x_offsets, Y, y_rows, y_center,
                             y_offsets, fields, shifts, multiplicity, n_chunks):
    """NCE's logistic classifier of X's rows (label +1) against Y's (label −1) for a grid
    Gaussian, in one read of the rows of both.

    For every row ``a_n = −½ x_nᵀ Λ x_n − offsets[n]`` (the quadratic form as in
    :func:`quadratic_forms`, ``fields`` zero on pairs off the grid), its loss
    ``ℓ_n = softplus(−y_n a_n)`` and weight ``w_n = ∂ℓ_n/∂a_n = −y_n σ(−y_n a_n)``, with
    the class label ``y_n`` (+1 for X, −1 for Y). Blocks of eight rows of one class are
    read in place for the stencils (:func:`_logistic_block`): their quadratic forms,
    weights and weighted pattern products (as :func:`pattern_moments`) are computed
    while the block is in cache, where :func:`quadratic_forms` and
    :func:`pattern_moments` in turn read the rows twice; a class's last rows and other
    shift sets are centred into a zero-padded buffer first. (Centring every block into
    the buffer cost a quarter of the call: 0.44 against 0.33 ms for NCE's 256 + 256
    MNIST rows.)
    Both classes share one parallel region and one accumulator a thread: with the
    classes in two calls, NCE's step on MNIST paid two regions' start-up and two
    reductions (256 + 256 rows: 2 × 180 µs, against 300 µs for 512 rows in one call).

    Parameters
    ----------
    X, x_rows, x_center, Y, y_rows, y_center
        Each class's samples, ``X[x_rows] − x_center`` (every row when ``x_rows`` is
        empty); a class may have no rows.
    x_offsets, y_offsets : ndarray of float64
        One offset a selected row.

    Returns
    -------
    loss : float
        ``Σ_n ℓ_n`` over both classes.
    weight : float
        ``Σ_n w_n``.
    moments : ndarray, shape (n_terms, D)
        ``Σ_n w_n x_np x_n,p+δ_k`` (partners past D contribute zero; the caller zeroes
        the pairs that wrap around a grid row).
    """
    n_x = x_rows.size if x_rows.size else X.shape[0]
    n_y = y_rows.size if y_rows.size else Y.shape[0]
    n = n_x + n_y
    d = fields.shape[1]
    pad, unsigned, scaled, inner, edge_scaled = _stencil_setup(fields, shifts, multiplicity,
                                                               d)
    acc = np.empty((n_chunks, shifts.size, d))
    losses = np.empty(n_chunks)
    weights = np.empty(n_chunks)
    for chunk in prange(n_chunks):
        acc[chunk] = 0.0
        # The body is a compiled function of its own, and so is _logistic_block (its
        # two call sites, one per class, would otherwise be optimized twice): all of
        # it inlined into the parallel region took Numba 55 s to compile a signature,
        # against 17 s now (11 s before the in-place path); a call per block of eight
        # rows costs nothing measurable, where calls per helper lost a third of the gain.
        losses[chunk], weights[chunk] = _logistic_chunk(
            X, x_rows, x_center, x_offsets, Y, y_rows, y_center, y_offsets, n_x,
            chunk * n // n_chunks, (chunk + 1) * n // n_chunks, scaled, edge_scaled,
            shifts, unsigned, pad, inner, acc[chunk])
    loss = 0.0
    weight = 0.0
    for chunk in range(n_chunks):
        loss += losses[chunk]
        weight += weights[chunk]
    return loss, weight, _sum_chunks(acc)


@njit(fastmath=_REASSOC, cache=True, nogil=True)
def _logistic_chunk(X, x_rows, x_center, x_offsets, Y, y_rows, y_center, y_offsets, n_x,
                    start, stop, scaled, edge_scaled, shifts, unsigned, pad, inner, acc):
    """:func:`logistic_pattern_moments` of rows ``start, …, stop − 1`` of the two
    classes in turn (X's rows first) on this thread, added into ``acc``; returns
    ``(Σ loss, Σ weight)``."""
    d = scaled.shape[1]
    n_terms = shifts.size
    y = np.zeros((_BLOCK, d + pad))
    w = np.zeros(_WIDE)                  # a block's weights; the first _BLOCK in the tail
    scratch = np.zeros((2, d))
    edge = np.zeros((_WIDE, 2 * pad))
    edge_acc = np.zeros((n_terms, d - inner))
    in_place = inner < d
    loss = 0.0
    weight = 0.0
    i = start
    while i < stop:
        end = min(stop, n_x) if i < n_x else stop    # this class's rows in the chunk
        while in_place and i + _WIDE <= end:
            if i < n_x:
                part = _logistic_block(X, x_rows, x_center, x_offsets, 1.0, i, scaled,
                                       edge_scaled, shifts, unsigned, inner, edge, w,
                                       acc, edge_acc, scratch)
            else:
                part = _logistic_block(Y, y_rows, y_center, y_offsets, -1.0, i - n_x,
                                       scaled, edge_scaled, shifts, unsigned, inner, edge,
                                       w, acc, edge_acc, scratch)
            loss += part[0]
            weight += part[1]
            i += _WIDE
        while i < end:       # fewer than eight rows left, or shifts not read in place
            for b in range(_BLOCK):
                j = i + b
                row = y[b]
                if j >= end:
                    w[b] = 0.0
                    row[:] = 0.0
                    continue
                if j < n_x:
                    _center_into(row, _row_of(X, x_rows, j), x_center, d)
                    label = 1.0
                    offset = x_offsets[j]
                else:
                    _center_into(row, _row_of(Y, y_rows, j - n_x), y_center, d)
                    label = -1.0
                    offset = y_offsets[j - n_x]
                q = _stencil_form(row, scaled, unsigned, d)
                z = -label * (-0.5 * q - offset)
                loss += _softplus(z)
                w[b] = -label * _sigmoid(z)
                weight += w[b]
            _accumulate_block(y, w[:_BLOCK], acc, shifts, unsigned, scratch, d)
            i = min(i + _BLOCK, end)
    for k in range(n_terms):
        for p in range(d - inner):
            acc[k, inner + p] += edge_acc[k, p]
    return loss, weight


@njit(fastmath=_REASSOC, cache=True, nogil=True)
def _logistic_block(A, rows, center, offsets, label, first, scaled, edge_scaled, shifts,
                    unsigned, inner, edge, w, acc, edge_acc, scratch):
    """:func:`logistic_pattern_moments` of eight rows of one class, ``first`` to
    ``first + 7`` of ``A[rows]``, read in place: their quadratic forms
    (:func:`_rows_forms`, the last ``D − inner`` pixels through the zero-padded
    ``edge``), losses and weights ``w``, then their weighted pattern products
    (:func:`_rows_terms` re-reads the rows from cache) into ``acc`` and, for the last
    pixels, ``edge_acc``. Returns ``(Σ loss, Σ weight)`` of the eight. (Minibatch rows
    are scattered, so they are taken as they come, not spaced as in the full passes.)"""
    x0, x1, x2, x3, x4, x5, x6, x7 = _eight_rows(A, rows, first, 1)
    forms = _rows_forms(x0, x1, x2, x3, x4, x5, x6, x7, center, scaled, unsigned, inner)
    pad = edge.shape[1] // 2
    loss = 0.0
    weight = 0.0
    for b in range(_WIDE):
        _center_into(edge[b], _row_of(A, rows, first + b)[inner:], center[inner:], pad)
        q = forms[b] + _stencil_form(edge[b], edge_scaled, unsigned, pad)
        z = -label * (-0.5 * q - offsets[first + b])
        loss += _softplus(z)
        w[b] = -label * _sigmoid(z)
        weight += w[b]
    _rows_terms(x0, x1, x2, x3, x4, x5, x6, x7, center, w, acc[0], acc[1], acc[2],
                scratch[0], unsigned[1], unsigned[2], inner)
    if unsigned.size == 5:
        _rows_pair(x0, x1, x2, x3, x4, x5, x6, x7, center, w, acc[3], acc[4], unsigned[3],
                   unsigned[4], inner)
    for half in range(0, _WIDE, _BLOCK):       # _accumulate_block takes four rows
        _accumulate_block(edge[half:half + _BLOCK], w[half:half + _BLOCK], edge_acc, shifts,
                          unsigned, scratch, pad)
    return loss, weight


@njit(parallel=True, cache=True)
def antithetic_pairs(X, pool, start, out):
    """``out[i*K + k] = X[i] + s_k ε_j``: K perturbed copies of every row, in ± pairs.

    ``h = ⌈K/2⌉`` perturbations per row are read from ``pool`` in turn from row ``start``,
    wrapping around (row ``j = (start + i*h + k mod h) mod len(pool)``); copy ``k`` adds
    ``ε_j`` for ``k < h`` and subtracts it for ``k ≥ h``. One parallel pass: the same
    pairs built with NumPy (a concatenate, a repeat and an add, or two broadcast adds into
    a reused buffer) took 4.4–6.2 ms for 256 MNIST rows and K = 10, this 0.46 ms.
    """
    n, d = X.shape
    k_copies = out.shape[0] // n
    half = (k_copies + 1) // 2
    n_pool = pool.shape[0]
    for i in prange(n):
        for k in range(k_copies):
            j = (start + i * half + k % half) % n_pool
            row = out[i * k_copies + k]
            if k < half:
                for p in range(d):
                    row[p] = X[i, p] + pool[j, p]
            else:
                for p in range(d):
                    row[p] = X[i, p] - pool[j, p]


@njit(parallel=True, cache=True)
def apply_stencil(X, fields, shifts):
    """``U = X Λ`` row by row (Λ symmetric): ``u_p = Σ_q Λ_pq x_q`` from the stencil layout.

    ``u_p = F[0, p] x_p + Σ_{k ≥ 1} (F[k, p] x_{p+δ_k} + F[k, p−δ_k] x_{p−δ_k})``;
    ``fields`` must be zero on pairs that leave the grid.

    Returns
    -------
    ndarray, shape (n, D), float64
    """
    n, d = X.shape
    n_terms = shifts.size
    out = np.empty((n, d))
    for i in prange(n):
        for p in range(d):
            out[i, p] = fields[0, p] * X[i, p]
        row, x = out[i], X[i]
        for k in range(1, n_terms):
            s = shifts[k]
            offset = np.uint64(s)
            f = fields[k]
            # Two loops, each free of a write one iteration reads back, so both vectorize.
            for p in range(d - s):
                q = np.uint64(p)
                row[q] += f[q] * x[q + offset]
            for p in range(d - s):
                q = np.uint64(p)
                row[q + offset] += f[q] * x[q]
    return out


@njit(parallel=True, fastmath=_REASSOC, cache=True)
def pattern_cross_moments(X, U, weights, shifts, n_chunks):
    """Symmetrized cross moments ``Σ_n w_n (x_np u_n,p+δ + u_np x_n,p+δ)`` per stencil term.

    Term 0 gives ``2 Σ_n w_n x_np u_np``. Partners past the end of the row count as zero.

    Returns
    -------
    ndarray, shape (n_terms, D), float64
    """
    n, d = X.shape
    n_terms = shifts.size
    acc = np.empty((n_chunks, n_terms, d))
    for chunk in prange(n_chunks):
        rows = acc[chunk]
        rows[:] = 0.0
        for i in range(chunk * n // n_chunks, (chunk + 1) * n // n_chunks):
            w = weights[i]
            x = X[i]
            u = U[i]
            for k in range(n_terms):
                s = shifts[k]
                offset = np.uint64(s)
                row = rows[k]
                for p in range(d - s):
                    q = np.uint64(p)
                    row[p] += w * (x[q] * u[q + offset] + u[q] * x[q + offset])
    return _sum_chunks(acc)


@njit(parallel=True, cache=True)
def gibbs_sweeps(X, fields, shifts, colours, n_colours, normals):
    """Chromatic Gibbs sampling for ``N(0, Λ⁻¹)``, in place on the rows of ``X``.

    One sweep updates every colour class in turn; pixels of one colour share no edge, so
    each class is an exact block update: ``x_p ~ N(−Σ_{q∼p} Λ_pq x_q / Λ_pp, 1 / Λ_pp)``.
    Rows (chains) are independent and run in parallel.

    Parameters
    ----------
    X : ndarray, shape (n, D), float64, modified in place
    fields, shifts : stencil layout of Λ (zero off the grid); ``fields[0] > 0``
    colours : ndarray of int64, shape (D,)
        Colour of each pixel (checkerboard for 4 neighbours, 2×2 for 8).
    n_colours : int
    normals : ndarray, shape (n_sweeps, n, D)
        Standard normal draws (drawn in NumPy, so results follow ``random_state``).
    """
    n_sweeps = normals.shape[0]
    n, d = X.shape
    n_terms = shifts.size
    for i in prange(n):
        x = X[i]
        for sweep in range(n_sweeps):
            z = normals[sweep, i]
            for colour in range(n_colours):
                for p in range(d):
                    if colours[p] != colour:
                        continue
                    total = 0.0
                    for k in range(1, n_terms):
                        s = shifts[k]
                        if p + s < d:
                            total += fields[k, p] * x[p + s]
                        if p - s >= 0:
                            total += fields[k, p - s] * x[p - s]
                    precision = fields[0, p]
                    x[p] = -total / precision + z[p] / np.sqrt(precision)


# Dense BLAS/LAPACK on the supernodes' blocks, called from compiled code. SciPy exports
# the Fortran routines of the BLAS it ships (scipy.linalg.cython_blas / cython_lapack);
# registering each address under a symbol name lets Numba link to it by name, so the
# cached machine code stays valid across processes (a raw ctypes pointer would be baked
# into it). Every argument is a pointer (Fortran calling convention); matrices are
# column-major.
def _fortran_routine(module, name, n_args):
    symbol = "sparsegauss_" + name
    llvm_binding.add_symbol(symbol, get_cython_function_address("scipy.linalg." + module, name))
    return numba.types.ExternalFunction(symbol, numba.types.void(*[numba.types.voidptr] * n_args))


_dtrsm = _fortran_routine("cython_blas", "dtrsm", 11)
_dsymm = _fortran_routine("cython_blas", "dsymm", 12)
_dgemm = _fortran_routine("cython_blas", "dgemm", 13)
_dsyrk = _fortran_routine("cython_blas", "dsyrk", 10)
_dpotrf = _fortran_routine("cython_lapack", "dpotrf", 5)
_dpotri = _fortran_routine("cython_lapack", "dpotri", 5)

@njit(cache=True)
def _supernode_sizes(indptr, starts):
    """Supernode owning each column, and the largest block (columns × rows) and number
    of rows below any supernode (to size the work arrays once).

    Called, not inlined: inlined into a ``parallel=True`` kernel, the slice assignment
    ``owner[f:…] = sn`` became a parallel region of its own for every supernode (Numba
    turns array expressions in a parallel function's serial code into parfors, and its
    diagnostics do not list them): 119 regions a call of the two-thread factorization on
    a 28×28 grid, 0.15–0.4 ms, more than the factorization (0.15 ms); on 256×256 the
    split factorization took 42–46 ms instead of 27–34 (2026-12-03).
    """
    n = indptr.size - 1
    max_block = 1
    max_below = 1
    owner = np.empty(n, dtype=np.int64)
    for sn in range(starts.size - 1):
        f = starts[sn]
        ld = indptr[f + 1] - indptr[f]
        s = starts[sn + 1] - f
        max_block = max(max_block, s * ld)
        max_below = max(max_below, ld - s)
        owner[f:starts[sn + 1]] = sn
    return owner, max_block, max_below


@njit(cache=True, inline="always")
def _load_supernode(indptr, ldata, starts, sn, block):
    """Copy supernode ``sn``'s columns into the column-major ``block`` (leading dimension
    ``ld = s + r``: its ``s`` columns' rows, then the ``r`` rows below). Returns
    ``(f, s, p0, ld, r)``: first column, width, start of its first column in ``ldata``."""
    f = starts[sn]
    s = starts[sn + 1] - f
    p0 = indptr[f]
    ld = indptr[f + 1] - p0
    for c in range(s):
        # Unsigned offsets: the copy vectorizes (3.5× faster on a 28×28 grid).
        q = np.uint64(indptr[f + c])
        first = np.uint64(c * ld + c)
        for i in range(np.uint64(ld - c)):
            block[first + i] = ldata[q + i]
    return f, s, p0, ld, ld - s


@njit(cache=True, inline="always")
def _store_columns(indptr, f, s, ld, block, values):
    """Copy the column-major ``block`` (leading dimension ``ld``) back into the ``s``
    columns of ``values`` from ``f`` on: :func:`_load_supernode`'s inverse."""
    for c in range(s):
        q = np.uint64(indptr[f + c])
        first = np.uint64(c * ld + c)
        for i in range(np.uint64(ld - c)):
            values[q + i] = block[first + i]


@njit(cache=True, inline="always")
def _blas_arguments():
    """Character flags and integer cells for the Fortran BLAS/LAPACK calls (every
    argument is a pointer): "L", "R", "N", "T", three dimensions, ``info``."""
    flags = np.array([ord("L"), ord("R"), ord("N"), ord("T")], dtype=np.uint8)
    return (flags[0:1], flags[1:2], flags[2:3], flags[3:4], np.zeros(3, dtype=np.int32),
            np.zeros(1, dtype=np.int32))


@njit(cache=True, inline="always")
def _ancestor_run(indptr, indices, starts, owner, rows, b0, offset):
    """The run of rows ``rows[b0:b1]`` of ``R`` that are columns of one later supernode
    ``S'``, and where every later row of ``R`` sits in ``S'``'s columns.

    ``R`` (the rows below a supernode) is a clique of the filled graph, so the rows of
    ``R`` past the run all lie in the rows ``R'`` below ``S'``; ``offset[a]`` gets the
    position of ``rows[a]`` in ``S'``'s first column (one sorted merge). In column
    ``c2 = rows[b]`` of ``S'`` (``b`` in the run), row ``rows[a]`` then sits at
    ``indptr[c2] + rows[a] − c2`` for ``a`` in the run and at ``indptr[c2] − (c2 − f2) +
    offset[a]`` past it. Returns ``(b1, f2)``, ``f2`` the first column of ``S'``.
    """
    r = rows.size
    sn2 = owner[rows[b0]]
    f2 = starts[sn2]
    end2 = starts[sn2 + 1]
    b1 = b0 + 1
    while b1 < r and rows[b1] < end2:
        b1 += 1
    q2 = indptr[f2] + (end2 - f2)
    for a in range(b1, r):
        while q2 < indptr[f2 + 1] and indices[q2] != rows[a]:
            q2 += 1
        if q2 == indptr[f2 + 1]:
            raise ValueError("factor pattern is not closed under elimination")
        offset[a] = q2 - indptr[f2]
    return b1, f2


@njit(cache=True, inline="always")
def _exchange_below(indptr, indices, starts, owner, rows, offset, dense, values, gather,
                    shared_start, private):
    """Between the dense ``r × r`` lower triangle ``dense`` (column-major) and the
    factor-shaped ``values``, for the rows ``R`` below a supernode: gather
    ``dense[b, a] = values[R_a, R_b]`` (the selected inversion's ``Z_RR``) or, with
    ``gather`` false, scatter ``values[R_a, R_b] −= dense[b, a]`` (the factorization's
    Schur update), by relative indices (:func:`_ancestor_run`). A scattered entry at a
    position ``q >= shared_start`` goes to ``private[q − shared_start]`` instead (a
    thread's own copy of the columns another thread also updates; see
    :func:`subtree_schedule`)."""
    r = rows.size
    b0 = 0
    while b0 < r:
        b1, f2 = _ancestor_run(indptr, indices, starts, owner, rows, b0, offset)
        for b in range(b0, b1):
            c2 = rows[b]
            q0 = indptr[c2]
            shift = q0 - (c2 - f2)
            # Unsigned indices (all are >= 0 here: indptr[c2] >= c2) drop Numba's
            # wraparound tests: both exchanges 25–30 % faster on a 28×28 grid.
            u_base = np.uint64(q0 - c2)
            u_shift = np.uint64(shift)
            column = np.uint64(b * r)
            if gather:
                for a in range(np.uint64(b), np.uint64(b1)):
                    dense[column + a] = values[u_base + np.uint64(rows[a])]
                for a in range(np.uint64(b1), np.uint64(r)):
                    dense[column + a] = values[u_shift + np.uint64(offset[a])]
            elif q0 < shared_start:
                for a in range(np.uint64(b), np.uint64(b1)):
                    values[u_base + np.uint64(rows[a])] -= dense[column + a]
                for a in range(np.uint64(b1), np.uint64(r)):
                    values[u_shift + np.uint64(offset[a])] -= dense[column + a]
            else:                  # a shared column (all its entries lie past q0)
                q0 -= shared_start
                shift -= shared_start
                for a in range(b, b1):
                    private[q0 + rows[a] - c2] -= dense[b * r + a]
                for a in range(b1, r):
                    private[shift + offset[a]] -= dense[b * r + a]
        b0 = b1


#: Supernodes whose block (columns × rows) is at most this many entries are done in
#: loops: for them the BLAS calls' own overhead is most of the cost (measured on 28×28
#: to 256×256 grids: 16–64 are best, 0 is 1.7× slower on 28×28).
_SMALL_BLOCK = 32


@njit(cache=True, inline="always")
def _supernode_in_loops(block, ld, s, r, z_rr, z_rj):
    """The four dense steps of :func:`takahashi_supernodal` for a tiny supernode, in
    loops (same layouts, same results)."""
    # Y = L_RJ L_JJ⁻¹: solve Y L_JJ = L_RJ column by column, the last first.
    for c in range(s - 1, -1, -1):
        inv_pivot = 1.0 / block[c * ld + c]
        for a in range(r):
            v = block[c * ld + s + a]
            for k in range(c + 1, s):
                v -= block[k * ld + s + a] * block[c * ld + k]
            block[c * ld + s + a] = v * inv_pivot
    # (L_JJ L_JJᵀ)⁻¹ = Wᵀ W with W = L_JJ⁻¹ (lower triangular), into the lower triangle.
    w = np.zeros((s, s))
    for j in range(s):
        w[j, j] = 1.0 / block[j * ld + j]
        for i in range(j + 1, s):
            v = 0.0
            for k in range(j, i):
                v += block[k * ld + i] * w[k, j]
            w[i, j] = -v / block[i * ld + i]
    for j in range(s):
        for i in range(j, s):
            v = 0.0
            for k in range(i, s):
                v += w[k, i] * w[k, j]
            block[j * ld + i] = v
    if r > 0:
        # Z_RJ = −Z_RR Y, Z_RR given by its lower triangle.
        for c in range(s):
            for a in range(r):
                v = 0.0
                for b in range(r):
                    if b >= a:
                        v += z_rr[a * r + b] * block[c * ld + s + b]
                    else:
                        v += z_rr[b * r + a] * block[c * ld + s + b]
                z_rj[c * r + a] = -v
        # Z_JJ −= Z_RJᵀ Y, lower triangle.
        for j in range(s):
            for i in range(j, s):
                v = 0.0
                for a in range(r):
                    v += z_rj[i * r + a] * block[j * ld + s + a]
                block[j * ld + i] -= v


#: Supernodes at most this many columns wide (with rows below them) take
#: :func:`_supernode_stacked`'s three calls instead of ``dpotri`` and a separate update:
#: for narrow blocks each LAPACK call's own overhead outweighs the flops it saves
#: (``dpotri`` = ``dtrtri`` + ``dlauum`` was a third of the selected inversion on a
#: 28×28 grid, where most supernodes are 16 wide). For wide ones the stacked product's
#: extra ``5/3 s³`` flops would cost more than the call saved.
_STACKED_MAX_WIDTH = 32


@njit(cache=True, inline="always")
def _supernode_stacked(block, ld, s, r, z_rr, z_rj, stacked, triangle, dims, lower,
                       right, no_trans, trans, one, zero):
    """One step of :func:`takahashi_supernodal` for a narrow supernode with rows below,
    in three BLAS calls:

        [W; Y] = [I; L_RJ] L_JJ⁻¹                          (one dtrsm: W = L_JJ⁻¹)
        Z_JJ = Wᵀ W + (Z_RR Y)ᵀ Y = [W; Z_RR Y]ᵀ [W; Y]      (two dgemm)
        Z_RJ = −Z_RR Y

    (the same as ``(L_JJ L_JJᵀ)⁻¹ − Z_RJᵀ Y``: ``(L_JJ L_JJᵀ)⁻¹ = Wᵀ W``). Leaves ``Z_JJ``
    in ``block``'s lower triangle and ``Z_RJ`` in ``z_rj`` (``r × s``), as
    :func:`_supernode_in_loops` does."""
    u_s = np.uint64(s)
    u_ld = np.uint64(ld)
    u_r = np.uint64(r)
    # L_JJ aside (leading dimension s), the identity in its place.
    for c in range(u_s):
        column = c * u_ld
        for i in range(c, u_s):
            triangle[c * u_s + i] = block[column + i]
        for i in range(u_s):
            block[column + i] = 0.0
        block[column + c] = 1.0
    dims[0], dims[1], dims[2] = ld, s, r
    m_ld, m_s, m_r = dims[0:1], dims[1:2], dims[2:3]
    _dtrsm(right.ctypes, lower.ctypes, no_trans.ctypes, no_trans.ctypes, m_ld.ctypes,
           m_s.ctypes, one.ctypes, triangle.ctypes, m_s.ctypes, block.ctypes, m_ld.ctypes)
    # stacked = [W; Z_RR Y] (leading dimension ld); W's zeros above the diagonal are
    # exact (the identity's).
    for c in range(u_s):
        column = c * u_ld
        for i in range(u_s):
            stacked[column + i] = block[column + i]
    # Z_RR's upper triangle filled in, for dgemm: OpenBLAS's dsymm costs more per call
    # on these sizes (28×28 selected inversion 130 → 123 µs).
    for b in range(u_r):
        for a in range(b + np.uint64(1), u_r):
            z_rr[a * u_r + b] = z_rr[b * u_r + a]
    _dgemm(no_trans.ctypes, no_trans.ctypes, m_r.ctypes, m_s.ctypes, m_r.ctypes, one.ctypes,
           z_rr.ctypes, m_r.ctypes, block[s:].ctypes, m_ld.ctypes, zero.ctypes,
           stacked[s:].ctypes, m_ld.ctypes)
    # Z_JJ into z_rj first (s × s, leading dimension s): block is an operand.
    _dgemm(trans.ctypes, no_trans.ctypes, m_s.ctypes, m_s.ctypes, m_ld.ctypes, one.ctypes,
           stacked.ctypes, m_ld.ctypes, block.ctypes, m_ld.ctypes, zero.ctypes,
           z_rj.ctypes, m_s.ctypes)
    for c in range(u_s):
        column = c * u_ld
        for i in range(c, u_s):
            block[column + i] = z_rj[c * u_s + i]
    for c in range(u_s):
        column = c * u_ld + u_s
        for a in range(u_r):
            z_rj[c * u_r + a] = -stacked[column + a]


@njit(cache=True, nogil=True)
def takahashi_supernodal(indptr, indices, ldata, starts, z):
    """Selected inverse: entries of ``Z = (L Lᵀ)⁻¹`` on the pattern of ``L``, by
    Takahashi's recursion over supernodes.

    For a supernode with columns ``J`` and rows ``R`` below it, ``Z L = L⁻ᵀ`` (upper
    triangular) gives, with ``Y = L_RJ L_JJ⁻¹``::

        Z_RJ = −Z_RR Y
        Z_JJ = (L_JJ L_JJᵀ)⁻¹ − Z_RJᵀ Y

    processed from the last supernode to the first. ``R`` is a clique of the filled
    graph, so ``Z_RR`` lies on ``L``'s pattern and is already known (later supernodes);
    the cost is of the order of the factorization's flops, with no dense inverse.

    Each step is one LAPACK/BLAS call on the supernode's dense block, as in SelInv (Lin
    et al., ACM TOMS 37, 2011): ``Y`` by a triangular solve (``dtrsm``, r·s² flops),
    ``(L_JJ L_JJᵀ)⁻¹`` from the Cholesky factor (``dpotri``, ⅔ s³), ``Z_RJ`` by a
    symmetric product reading only ``Z_RR``'s lower triangle (``dsymm``, 2 r² s), the
    update of ``Z_JJ`` by ``dgemm`` (2 r s²). ``Z_RR`` is gathered by *relative indices*:
    the rows of ``R`` that are columns of one later supernode ``S'`` sit in each of
    those columns at offsets fixed by ``S'``'s structure (found once per run by merging
    two sorted lists), so each entry is read directly instead of by scanning the column
    (on a 512×512 grid the scan read 45 M entries for the 18 M it needed). Tiny
    supernodes (at most ``_SMALL_BLOCK`` entries in their block) are done in loops,
    narrow ones (at most ``_STACKED_MAX_WIDTH`` columns) in three calls instead of four
    (:func:`_supernode_stacked`; on a 28×28 grid 142 → 131 µs with 4 neighbours).

    Parameters
    ----------
    indptr, indices, ldata : ndarray
        Lower-triangular Cholesky factor ``L`` (``L Lᵀ = A``) in CSC form, row indices
        sorted within each column, the diagonal first, its pattern closed under
        elimination (any factor CHOLMOD returns).
    starts : ndarray of int64
        First column of each supernode, plus ``n`` (:func:`symbolic_supernodal`).
    z : ndarray, like ``ldata``
        Output: ``Z`` in the same CSC layout as ``L`` (every entry is written). The
        caller keeps one buffer per factor pattern: on a 1024×1024 grid a fresh one
        costs 0.2–0.4 s of page faults per call.

    See Also
    --------
    takahashi_supernodal_split : the same on two threads, for large factors.
    """
    owner, max_block, max_below = _supernode_sizes(indptr, starts)
    _invert_supernodes(indptr, indices, ldata, starts, z, owner, max_block, max_below,
                       np.arange(starts.size - 1))


@njit(parallel=True, cache=True, nogil=True)
def takahashi_supernodal_split(indptr, indices, ldata, starts, z, order, bounds,
                               chain_first):
    """:func:`takahashi_supernodal` on two threads, by subtrees of the elimination tree.

    Parameters
    ----------
    indptr, indices, ldata, starts, z
        As for :func:`takahashi_supernodal`.
    order, bounds, chain_first
        The split of the supernodes among two threads (:func:`subtree_schedule`): the
        top chain ``chain_first, …`` first, then the two groups at once; a supernode
        reads ``Z`` only on its ancestors, which are in its own group or the chain.

    Notes
    -----
    A parallel region costs 0.15–0.5 ms a call on the 2-core virtual machine, mostly
    waking the sleeping second thread (back to back, with the thread still spinning, it
    costs 2 µs): measured 2026-12-01 on a 28×28 grid, 0.23 → 0.50–0.82 ms for the
    factorization and 0.27 → 0.69–0.78 ms for the selected inversion. So
    :class:`~sparsegauss.cholesky.SparseCholesky` uses the split only for large factors
    (:data:`~sparsegauss.cholesky.PARALLEL_MIN_ENTRIES`).
    """
    n_super = starts.size - 1
    owner, max_block, max_below = _supernode_sizes(indptr, starts)
    _invert_supernodes(indptr, indices, ldata, starts, z, owner, max_block, max_below,
                       np.arange(chain_first, n_super))
    for g in prange(2):
        _invert_supernodes(indptr, indices, ldata, starts, z, owner, max_block, max_below,
                           order[bounds[g]:bounds[g + 1]])


@njit(cache=True, nogil=True)
def factor_and_select(indptr, indices, ldata, starts, positions, values, z, selected,
                      out):
    """:func:`cholesky_supernodal`, ``log det A`` and :func:`takahashi_supernodal` in one
    call, reading ``Z = A⁻¹`` at ``selected`` positions into ``out``: a gradient of
    ``log Z`` without returning to Python between the kernels (on a 28×28 grid the
    Python around them was 35–45 µs of a 0.38–0.47 ms gradient).

    Parameters
    ----------
    indptr, indices, ldata, starts, positions, values
        As for :func:`cholesky_supernodal`.
    z : ndarray, like ``ldata``
        Receives the selected inverse, as for :func:`takahashi_supernodal`.
    selected : ndarray of int64
        Positions in ``z`` to read.
    out : ndarray of float64, like ``selected``
        Receives ``z[selected]``.

    Returns
    -------
    failed : int
        ``-1``, or the first (permuted) column whose pivot is not positive or not
        finite (then ``z`` and ``out`` are not written).
    logdet : float
        ``Σ_j log L_jj²`` (0 when ``failed >= 0``).
    """
    failed = cholesky_supernodal(indptr, indices, ldata, starts, positions, values)
    if failed >= 0:
        return failed, 0.0
    logdet = 0.0
    for j in range(indptr.size - 1):
        pivot = ldata[indptr[j]]
        if not np.isfinite(pivot):
            return j, 0.0
        logdet += 2.0 * np.log(pivot)
    takahashi_supernodal(indptr, indices, ldata, starts, z)
    for t in range(selected.size):
        out[t] = z[np.uint64(selected[t])]
    return -1, logdet


@njit(parallel=True, cache=True, nogil=True)
def factor_invert_beside_moments(indptr, indices, ldata, starts, positions, values, z, X,
                                 rows, center, weights, shifts, moments):
    """:func:`cholesky_supernodal` and then :func:`takahashi_supernodal` on one thread,
    and :func:`pattern_moments` of ``X``'s rows on the other, in one parallel region.

    The two halves of a step of stochastic maximum likelihood with the exact
    expectation (``∇ log Z`` of a small grid, which one thread factorizes and inverts,
    and the minibatch's moments) do not depend on each other. Run in turn they cost
    their sum; run at once from two Python threads, each step also paid a hand-off of
    70–80 µs and contention for the GIL (the 28×28 step: factor and inverse 0.34 ms of
    kernels, the 256-image pass 0.17 ms on two threads). Here the two halves are the
    two iterations of one ``prange`` (on one Numba thread they run in turn).

    Parameters
    ----------
    indptr, indices, ldata, starts, positions, values
        As for :func:`cholesky_supernodal` (``ldata`` receives the factor).
    z : ndarray, like ``ldata``
        Receives the selected inverse, as for :func:`takahashi_supernodal`, when the
        factorization succeeded.
    X, rows, center, weights, shifts
        As for :func:`pattern_moments`.
    moments : ndarray, shape (n_terms, D), float64
        Zeros in, the weighted moments out (pairs that wrap around a grid row included,
        as :func:`pattern_moments` returns them).

    Returns
    -------
    int
        :func:`cholesky_supernodal`'s result: −1, or the first column whose pivot
        failed (then ``z`` is not written).
    """
    failed = np.empty(1, dtype=np.int64)     # not np.full: see the module docstring
    failed[0] = -1
    for half in prange(2):
        if half == 0:
            failed[0] = cholesky_supernodal(indptr, indices, ldata, starts, positions,
                                            values)
            if failed[0] < 0:
                takahashi_supernodal(indptr, indices, ldata, starts, z)
        else:
            n = rows.size if rows.size else X.shape[0]
            _moments_of_rows(X, rows, 0, n, center, weights, shifts, moments,
                             np.zeros(0))
    return failed[0]


@njit(cache=True)
def _invert_supernodes(indptr, indices, ldata, starts, z, owner, max_block, max_below,
                       supernodes):
    """:func:`takahashi_supernodal`'s recursion over ``supernodes`` (ascending), taken
    from the last to the first, with this thread's own work arrays."""
    # Column-major work arrays: the supernode's columns (leading dimension ld = s + r,
    # rows J then R), Z_RR (r × r, lower triangle) and Z_RJ (r × s).
    block = np.empty(max_block)
    z_rr = np.empty(max_below * max_below)
    z_rj = np.empty(max_block)
    stacked = np.empty(max_block)
    triangle = np.empty(max_block)
    offset = np.empty(max_below, dtype=np.int64)
    lower, right, no_trans, trans, dims, info = _blas_arguments()   # dims: r, s, ld
    scalars = np.array([1.0, -1.0, 0.0])
    one, minus_one, zero = scalars[0:1], scalars[1:2], scalars[2:3]
    nothing = np.empty(0)
    for k in range(supernodes.size - 1, -1, -1):
        sn = supernodes[k]
        f, s, p0, ld, r = _load_supernode(indptr, ldata, starts, sn, block)
        _exchange_below(indptr, indices, starts, owner, indices[p0 + s:p0 + ld], offset,
                        z_rr, z, True, z.size, nothing)
        if s * ld <= _SMALL_BLOCK:
            _supernode_in_loops(block, ld, s, r, z_rr, z_rj)
        elif r > 0 and s <= _STACKED_MAX_WIDTH:
            _supernode_stacked(block, ld, s, r, z_rr, z_rj, stacked, triangle, dims, lower,
                               right, no_trans, trans, one, zero)
        else:
            dims[0], dims[1], dims[2] = r, s, ld
            m_r, m_s, m_ld = dims[0:1], dims[1:2], dims[2:3]
            tail = block[s:]
            if r > 0:
                _dtrsm(right.ctypes, lower.ctypes, no_trans.ctypes, no_trans.ctypes,
                       m_r.ctypes, m_s.ctypes, one.ctypes, block.ctypes, m_ld.ctypes,
                       tail.ctypes, m_ld.ctypes)
            _dpotri(lower.ctypes, m_s.ctypes, block.ctypes, m_ld.ctypes, info.ctypes)
            if r > 0:
                _dsymm(lower.ctypes, lower.ctypes, m_r.ctypes, m_s.ctypes, minus_one.ctypes,
                       z_rr.ctypes, m_r.ctypes, tail.ctypes, m_ld.ctypes, zero.ctypes,
                       z_rj.ctypes, m_r.ctypes)
                _dgemm(trans.ctypes, no_trans.ctypes, m_s.ctypes, m_s.ctypes, m_r.ctypes,
                       minus_one.ctypes, z_rj.ctypes, m_r.ctypes, tail.ctypes, m_ld.ctypes,
                       one.ctypes, block.ctypes, m_ld.ctypes)
        for c in range(s):
            q = np.uint64(indptr[f + c])
            first = np.uint64(c * ld + c)
            for i in range(np.uint64(s - c)):
                z[q + i] = block[first + i]
            q += np.uint64(s - c)
            first = np.uint64(c * r)
            for a in range(np.uint64(r)):
                z[q + a] = z_rj[first + a]


@njit(cache=True, nogil=True)
def cholesky_supernodal(indptr, indices, ldata, starts, positions, values):
    """Numeric Cholesky factorization ``A = L Lᵀ`` into a fixed supernodal structure.

    Right-looking over supernodes, as a multifrontal code without frontal matrices: for
    a supernode with columns ``J`` and rows ``R`` below it, whose block already holds
    ``A``'s entries minus every earlier supernode's update,

        L_JJ = chol(B_JJ)                     (dpotrf, ⅓ s³ flops)
        L_RJ = B_RJ L_JJ⁻ᵀ                    (dtrsm, r s²)
        B_RR −= L_RJ L_RJᵀ                    (dsyrk, r² s; scattered into the columns
                                               of the later supernodes that own R)

    The scatter uses the same relative indices as :func:`takahashi_supernodal`'s gather
    (``R`` is a clique of the filled graph). Tiny supernodes (block ≤ ``_SMALL_BLOCK``
    entries) are done in loops; narrow ones (≤ ``_PANEL_LOOP_MAX_WIDTH`` columns) factor
    their panel in loops and call only ``dsyrk`` (:func:`_panel_in_loops`).

    Parameters
    ----------
    indptr, indices : ndarray of int64
        The factor's structure: lower-triangular CSC, sorted rows, diagonal first, closed
        under elimination (the structure CHOLMOD's symbolic analysis gives).
    ldata : ndarray of float64
        Output: the factor's values in that structure (every entry is written).
    starts : ndarray of int64
        First column of each supernode, plus ``n`` (:func:`symbolic_supernodal`).
    positions : ndarray of int64
        Where each value of ``A`` (already permuted) goes in ``ldata``; ``-1`` skips it
        (the upper triangle).
    values : ndarray of float64
        ``A``'s values, like ``positions``.

    Returns
    -------
    int
        ``-1`` on success; otherwise the first (permuted) column whose pivot is not
        positive (or not finite): ``A`` is not positive definite, and ``ldata`` is
        incomplete.

    See Also
    --------
    cholesky_supernodal_split : the same on two threads, for large factors.
    """
    _scatter_values(ldata, positions, values)
    owner, max_block, max_below = _supernode_sizes(indptr, starts)
    return _factor_supernodes(indptr, indices, ldata, starts, owner, max_block, max_below,
                              np.arange(starts.size - 1), ldata.size, np.empty(0))


@njit(cache=True)
def _scatter_values(ldata, positions, values):
    """``ldata`` := the values of ``A`` at their places in the factor, zero elsewhere."""
    ldata[:] = 0.0
    for t in range(positions.size):
        if positions[t] >= 0:
            ldata[positions[t]] = values[t]


@njit(parallel=True, cache=True, nogil=True)
def cholesky_supernodal_split(indptr, indices, ldata, starts, positions, values, order,
                              bounds, chain_first):
    """:func:`cholesky_supernodal` on two threads, by subtrees of the elimination tree.

    Parameters
    ----------
    indptr, indices, ldata, starts, positions, values
        As for :func:`cholesky_supernodal`.
    order, bounds, chain_first
        The split of the supernodes among two threads (:func:`subtree_schedule`): the
        two groups at once, then the top chain. Both groups' updates reach the chain's
        columns; the second group's go to a private copy, added in before the chain.

    Returns
    -------
    int
        As :func:`cholesky_supernodal`.

    Notes
    -----
    The parallel region's cost keeps this to large factors (see
    :func:`takahashi_supernodal_split`).
    """
    n_super = starts.size - 1
    _scatter_values(ldata, positions, values)
    owner, max_block, max_below = _supernode_sizes(indptr, starts)
    shared_start = indptr[starts[chain_first]] if chain_first < n_super else ldata.size
    private = np.zeros(ldata.size - shared_start if bounds[2] > bounds[1] else 0)
    failed = np.full(2, -1, dtype=np.int64)
    for g in prange(2):
        failed[g] = _factor_supernodes(indptr, indices, ldata, starts, owner, max_block,
                                       max_below, order[bounds[g]:bounds[g + 1]],
                                       shared_start if g == 1 else ldata.size, private)
    first = -1
    for g in range(2):
        if failed[g] >= 0 and (first < 0 or failed[g] < first):
            first = failed[g]
    if first >= 0:
        return first
    for q in range(private.size):
        ldata[shared_start + q] += private[q]
    return _factor_supernodes(indptr, indices, ldata, starts, owner, max_block, max_below,
                              np.arange(chain_first, n_super), ldata.size, private)


#: Supernodes at most this many columns wide have their panel ``[L_JJ; L_RJ]``
#: factored in loops (:func:`_panel_in_loops`) rather than by ``dpotrf`` and ``dtrsm``;
#: only the Schur update stays a BLAS call. On a 28×28 grid (most supernodes 16 wide) the
#: factorization took 107 → 85 µs with 4 neighbours and 129 → 106 µs with 8.
_PANEL_LOOP_MAX_WIDTH = 32


@njit(cache=True, inline="always")
def _panel_in_loops(block, ld, s):
    """Cholesky factorization of a supernode's panel in place, column by column:
    ``L_JJ = chol(B_JJ)`` and ``L_RJ = B_RJ L_JJ⁻ᵀ`` together (each column scaled by its
    pivot, then subtracted from the later columns: contiguous updates that vectorize).
    Returns ``-1``, or the first column (within the supernode) whose pivot is not
    positive or not finite."""
    u_s = np.uint64(s)
    u_ld = np.uint64(ld)
    for c in range(u_s):
        column = c * u_ld
        pivot = block[column + c]
        if not pivot > 0.0 or not np.isfinite(pivot):
            return np.int64(c)
        pivot = np.sqrt(pivot)
        block[column + c] = pivot
        inverse = 1.0 / pivot
        for i in range(c + np.uint64(1), u_ld):
            block[column + i] *= inverse
        for c2 in range(c + np.uint64(1), u_s):
            factor = block[column + c2]
            column2 = c2 * u_ld
            for i in range(c2, u_ld):
                block[column2 + i] -= block[column + i] * factor
    return np.int64(-1)


@njit(cache=True)
def _factor_supernodes(indptr, indices, ldata, starts, owner, max_block, max_below,
                       supernodes, shared_start, private):
    """:func:`cholesky_supernodal` over ``supernodes`` (ascending) with this thread's own
    work arrays; Schur updates of entries at ``shared_start`` or later go to
    ``private``. Returns ``-1`` or the first failing column."""
    block = np.empty(max_block)
    update = np.empty(max_below * max_below)
    offset = np.empty(max_below, dtype=np.int64)
    lower, right, no_trans, trans, dims, info = _blas_arguments()   # dims: r, s, ld
    scalars = np.array([1.0, 0.0])
    one, zero = scalars[0:1], scalars[1:2]
    for sn in supernodes:
        f, s, p0, ld, r = _load_supernode(indptr, ldata, starts, sn, block)
        if s * ld <= _SMALL_BLOCK:
            failed = _panel_in_loops(block, ld, s)
            if failed >= 0:
                return f + failed
            if s == 1:      # most supernodes of small grids: an outer product, no sum
                for b in range(r):
                    x = block[1 + b]
                    for a in range(b, r):
                        update[b * r + a] = block[1 + a] * x
            else:
                for b in range(r):
                    for a in range(b, r):
                        v = 0.0
                        for c in range(s):
                            v += block[c * ld + s + a] * block[c * ld + s + b]
                        update[b * r + a] = v
        elif s <= _PANEL_LOOP_MAX_WIDTH:
            failed = _panel_in_loops(block, ld, s)
            if failed >= 0:
                return f + failed
            if r > 0:
                # dgemm, not dsyrk: twice the flops, but OpenBLAS's dsyrk costs more per
                # call than they do on narrow blocks (28×28 factorization 87 → 74 µs).
                dims[0], dims[1], dims[2] = r, s, ld
                m_r, m_s, m_ld = dims[0:1], dims[1:2], dims[2:3]
                tail = block[s:]
                _dgemm(no_trans.ctypes, trans.ctypes, m_r.ctypes, m_r.ctypes, m_s.ctypes,
                       one.ctypes, tail.ctypes, m_ld.ctypes, tail.ctypes, m_ld.ctypes,
                       zero.ctypes, update.ctypes, m_r.ctypes)
        else:
            dims[0], dims[1], dims[2] = r, s, ld
            m_r, m_s, m_ld = dims[0:1], dims[1:2], dims[2:3]
            _dpotrf(lower.ctypes, m_s.ctypes, block.ctypes, m_ld.ctypes, info.ctypes)
            if info[0] != 0:
                return f + max(info[0] - 1, 0)
            tail = block[s:]
            if r > 0:
                _dtrsm(right.ctypes, lower.ctypes, trans.ctypes, no_trans.ctypes,
                       m_r.ctypes, m_s.ctypes, one.ctypes, block.ctypes, m_ld.ctypes,
                       tail.ctypes, m_ld.ctypes)
                _dsyrk(lower.ctypes, no_trans.ctypes, m_r.ctypes, m_s.ctypes, one.ctypes,
                       tail.ctypes, m_ld.ctypes, zero.ctypes, update.ctypes, m_r.ctypes)
        _store_columns(indptr, f, s, ld, block, ldata)
        _exchange_below(indptr, indices, starts, owner, indices[p0 + s:p0 + ld], offset,
                        update, ldata, False, shared_start, private)
    return -1


@njit(cache=True)
def subtree_schedule(indptr, indices, starts):
    """Split the supernodes of a factor between two threads by subtrees of the
    elimination tree.

    The supernodal elimination tree (the parent of a supernode owns the first row below
    it) is cut below its top *chain*: the root and its only-child descendants, down to
    the first supernode with two or more children (a nested-dissection ordering's top
    separator). The subtrees hanging from it are independent: the factorization and the
    selected inversion touch, from a supernode, only its ancestors. They are dealt to
    two groups, largest first to the lighter group (work ``s·ld²`` per supernode, the
    factorization's leading term). A forest (no common root) splits its trees the same
    way.

    Needs a postordered tree (CHOLMOD's ordering is), where each subtree is a range of
    supernodes ending at its root and the chain is the last supernodes; otherwise (and
    for a path, which has no two subtrees) everything is the chain: one thread.

    Returns
    -------
    order : ndarray of int64
        The first group's supernodes, ascending, then the second's.
    bounds : ndarray of int64, shape (3,)
        ``order[bounds[g]:bounds[g + 1]]`` is group ``g``.
    chain_first : int
        The chain is ``chain_first, …, n_super − 1``.
    """
    n_super = starts.size - 1
    owner, _, _ = _supernode_sizes(indptr, starts)
    parent = np.full(n_super, -1, dtype=np.int64)
    work = np.zeros(n_super)
    size = np.ones(n_super, dtype=np.int64)
    n_children = np.zeros(n_super, dtype=np.int64)
    serial = (np.empty(0, dtype=np.int64), np.zeros(3, dtype=np.int64), 0)
    for sn in range(n_super):
        f = starts[sn]
        s = starts[sn + 1] - f
        ld = indptr[f + 1] - indptr[f]
        work[sn] += s * ld * ld
        if ld > s:
            parent[sn] = owner[indices[indptr[f] + s]]
            if parent[sn] <= sn:
                return serial
    for sn in range(n_super):               # children before parents
        p = parent[sn]
        if p >= 0:
            work[p] += work[sn]
            size[p] += size[sn]
            n_children[p] += 1
    for sn in range(n_super):               # postorder: each subtree a range below its root
        p = parent[sn]
        if p >= 0 and sn - size[sn] + 1 < p - size[p] + 1:
            return serial
    n_roots = 0
    for sn in range(n_super):
        if parent[sn] < 0:
            n_roots += 1
    chain_first = n_super
    top = -1
    if n_roots == 1:
        if parent[n_super - 1] >= 0:
            return serial
        node = n_super - 1
        while True:
            chain_first = node
            if n_children[node] != 1:
                break
            node -= 1                       # an only child comes just before its parent
        top = chain_first
        if n_children[top] == 0:
            return serial
    heads = np.empty(n_super, dtype=np.int64)
    n_heads = 0
    for sn in range(n_super):
        if parent[sn] == top:
            heads[n_heads] = sn
            n_heads += 1
    heads = heads[:n_heads]
    ranked = heads[np.argsort(-work[heads])]
    load = np.zeros(2)
    group = np.zeros(n_super, dtype=np.int64)
    for head in ranked:
        g = 0 if load[0] <= load[1] else 1
        load[g] += work[head]
        group[head] = g
    order = np.empty(chain_first, dtype=np.int64)
    bounds = np.zeros(3, dtype=np.int64)
    k = 0
    for g in range(2):
        for head in heads:                  # ascending: each group in postorder
            if group[head] == g:
                for sn in range(head - size[head] + 1, head + 1):
                    order[k] = sn
                    k += 1
        bounds[g + 1] = k
    return order, bounds, chain_first


@njit(cache=True)
def _grow(array, needed):
    """``array``, or a copy at least twice as long when it holds fewer than ``needed``."""
    if needed <= array.size:
        return array
    grown = np.empty(max(needed, 2 * array.size), dtype=array.dtype)
    grown[:array.size] = array
    return grown


@njit(cache=True)
def symbolic_supernodal(indptr, indices, nrelax, zrelax):
    """Structure of the Cholesky factor of a (permuted) symmetric pattern, in relaxed
    supernodes.

    1. The elimination tree (Liu's algorithm with path compression, as in CSparse's
       ``cs_etree``).
    2. The column structures, ``struct(j) = {j} ∪ {i > j: A_ij ≠ 0} ∪ ⋃_children
       (struct(c) − {c})``, stored once per fundamental supernode: a column whose
       structure is its predecessor's minus the predecessor continues its supernode and
       is read as a suffix of the supernode's first column.
    3. Relaxed amalgamation (Ashcraft & Grimes 1989), with the rule CHOLMOD documents
       for its defaults: a supernode and its parent, when adjacent, are merged when
       ``ns ≤ nrelax[0]``, when merging adds no zero, or when ``ns ≤ nrelax[1]`` and
       ``z < zrelax[0]``, ``ns ≤ nrelax[2]`` and ``z < zrelax[1]``, or ``z < zrelax[2]``
       (``ns`` the merged supernode's columns, ``z`` the fraction of explicit zeros in
       its block). Bigger blocks are what make the dense BLAS calls pay; the merged
       column structures are supersets closed under elimination.

    Parameters
    ----------
    indptr, indices : ndarray of int64
        The permuted pattern, CSC, both triangles (only rows < k of column k are read
        for the tree, rows > j of column j for the structure).
    nrelax : ndarray of int64, shape (3,)
    zrelax : ndarray of float64, shape (3,)

    Returns
    -------
    l_indptr, l_indices : ndarray of int64
        The factor's structure: lower-triangular CSC, rows sorted, diagonal first.
    starts : ndarray of int64
        First column of each (relaxed) supernode, plus ``n``.
    """
    n = indptr.size - 1
    parent = np.full(n, -1, dtype=np.int64)
    ancestor = np.full(n, -1, dtype=np.int64)
    for k in range(n):
        for p in range(indptr[k], indptr[k + 1]):
            i = indices[p]
            while i != -1 and i < k:
                following = ancestor[i]
                ancestor[i] = k
                if following == -1:
                    parent[i] = k
                i = following
    first_child = np.full(n, -1, dtype=np.int64)
    sibling = np.full(n, -1, dtype=np.int64)
    for j in range(n - 1, -1, -1):
        if parent[j] >= 0:
            sibling[j] = first_child[parent[j]]
            first_child[parent[j]] = j
    mark = np.full(n, -1, dtype=np.int64)
    buffer = np.empty(n, dtype=np.int64)
    head = np.empty(n, dtype=np.int64)          # first column of j's fundamental supernode
    count = np.empty(n, dtype=np.int64)         # |struct(j)|
    list_start = np.empty(n, dtype=np.int64)
    store = np.empty(4 * indices.size + n, dtype=np.int64)
    used = 0
    for j in range(n):
        mark[j] = j
        buffer[0] = j
        size = 1
        for p in range(indptr[j], indptr[j + 1]):
            i = indices[p]
            if i > j and mark[i] != j:
                mark[i] = j
                buffer[size] = i
                size += 1
        c = first_child[j]
        while c != -1:
            h = head[c]
            for q in range(list_start[h] + (c - h) + 1, list_start[h] + count[h]):
                i = store[q]
                if mark[i] != j:
                    mark[i] = j
                    buffer[size] = i
                    size += 1
            c = sibling[c]
        count[j] = size
        # j continues j − 1's supernode when j − 1 is its only child and adds nothing.
        if (j > 0 and parent[j - 1] == j and size == count[j - 1] - 1
                and sibling[j - 1] == -1 and first_child[j] == j - 1):
            head[j] = head[j - 1]
        else:
            head[j] = j
            list_start[j] = used
            store = _grow(store, used + size)
            store[used:used + size] = np.sort(buffer[:size])
            used += size
    # Fundamental supernodes, and which one owns each column.
    n_fund = 0
    fund_start = np.empty(n + 1, dtype=np.int64)
    for j in range(n):
        if head[j] == j:
            fund_start[n_fund] = j
            n_fund += 1
    fund_start[n_fund] = n
    fund_of = np.empty(n, dtype=np.int64)
    for sn in range(n_fund):
        fund_of[fund_start[sn]:fund_start[sn + 1]] = sn
    columns = np.empty(n_fund, dtype=np.int64)
    leading = np.empty(n_fund, dtype=np.int64)     # entries in a group's first column
    zeros = np.zeros(n_fund, dtype=np.float64)     # explicit zeros in a group's block
    top = np.arange(n_fund)                        # a group's last fundamental supernode
    merged = np.full(n_fund, -1, dtype=np.int64)   # the group a supernode was merged into
    for sn in range(n_fund):
        columns[sn] = fund_start[sn + 1] - fund_start[sn]
        leading[sn] = count[fund_start[sn]]
    # From the top down, a supernode and the group just above it merge when that group
    # is (now) its parent: the group's rows below stay the merged block's.
    for sn in range(n_fund - 2, -1, -1):
        last = fund_start[sn + 1] - 1
        if parent[last] == -1:
            continue
        group = fund_of[parent[last]]
        while merged[group] != -1:
            group = merged[group]
        x = fund_of[parent[last]]
        while merged[x] != -1:                      # path compression
            following = merged[x]
            merged[x] = group
            x = following
        if group != sn + 1:
            continue
        ns = columns[sn] + columns[group]
        new_zeros = columns[sn] * (leading[group] + columns[sn] - leading[sn])
        if ns <= nrelax[0]:
            # Tiny: merged whatever the zeros, which (as in CHOLMOD, whose structures
            # the tests compare with) are then not counted against later merges.
            merge = True
            new_zeros = 0
        elif new_zeros == 0:
            merge = True
        else:
            size = ns * (ns + 1) / 2.0 + ns * (leading[group] - columns[group])
            z = (zeros[group] + new_zeros) / size
            merge = ((ns <= nrelax[1] and z < zrelax[0]) or (ns <= nrelax[2] and z < zrelax[1])
                     or z < zrelax[2])
        if merge:
            merged[group] = sn
            zeros[sn] = zeros[group] + new_zeros
            leading[sn] = columns[sn] + leading[group]
            columns[sn] = ns
            top[sn] = top[group]
    group_start = merged == -1
    n_super = 0
    starts = np.empty(n_fund + 1, dtype=np.int64)
    for sn in range(n_fund):
        if group_start[sn]:
            starts[n_super] = fund_start[sn]
            n_super += 1
    starts[n_super] = n
    starts = starts[:n_super + 1].copy()
    l_indptr = np.empty(n + 1, dtype=np.int64)
    l_indptr[0] = 0
    group_top = np.empty(n_super, dtype=np.int64)
    sn = 0
    for g in range(n_super):
        while fund_start[sn] != starts[g]:
            sn += 1
        group_top[g] = top[sn]
        f, l = starts[g], starts[g + 1]
        t = top[sn]
        r = count[fund_start[t]] - (fund_start[t + 1] - fund_start[t])
        for c in range(f, l):
            l_indptr[c + 1] = l_indptr[c] + (l - c) + r
    l_indices = np.empty(l_indptr[n], dtype=np.int64)
    for g in range(n_super):
        f, l = starts[g], starts[g + 1]
        t = group_top[g]
        h = fund_start[t]
        w = fund_start[t + 1] - h
        rows = store[list_start[h] + w:list_start[h] + count[h]]
        for c in range(f, l):
            q = l_indptr[c]
            for i in range(c, l):
                l_indices[q] = i
                q += 1
            for i in rows:
                l_indices[q] = i
                q += 1
    return l_indptr, l_indices, starts


@njit(cache=True)
def symmetric_planes(fields, offsets, height, width):
    """Both triangles of a stencil-layout symmetric matrix ``M``, one padded plane per
    offset.

    Returns ``planes[j, r + 1, c + 1] = M[(r, c), (r, c) + o_j]`` for the ``2K + 1``
    offsets ``o = (0, 0), δ_1, …, δ_K, −δ_1, …, −δ_K`` (``fields`` has ``K + 1`` terms),
    zero where the partner is off the grid and on the one-pixel border, so that kernels
    can read one step past the edge without a test; and the offsets.
    """
    n_terms = offsets.shape[0]
    n_full = 2 * n_terms - 1
    full_offsets = np.empty((n_full, 2), dtype=np.int64)
    planes = np.zeros((n_full, height + 2, width + 2))
    for j in range(n_full):
        k = j if j < n_terms else j - n_terms + 1
        sign = 1 if j < n_terms else -1
        dr, dc = sign * offsets[k, 0], sign * offsets[k, 1]
        full_offsets[j, 0], full_offsets[j, 1] = dr, dc
        for r in range(height):
            for c in range(width):
                pr, pc = r + dr, c + dc
                if pr < 0 or pr >= height or pc < 0 or pc >= width:
                    continue
                # A backward entry M[x, x − δ] is the forward entry stored at x − δ.
                owner = r * width + c if sign > 0 else pr * width + pc
                planes[j, r + 1, c + 1] = fields[k, owner]
    return planes, full_offsets


@njit(parallel=True, cache=True)
def pair_hessian(covariance, rows, cols, weights):
    """``H_jl = c_j c_l (Σ_pr Σ_qs + Σ_ps Σ_qr)`` for the pairs ``j = (p, q)``,
    ``l = (r, s)`` (``p = rows[j]``, ``q = cols[j]``, ``c = weights``): the dense exact
    Hessian of the Gaussian's negative log-likelihood (or of ``−½ log det Λ``) in its
    pair parameters, in parallel over rows of H.

    One read of two rows of Σ per row of H, which stay in cache, instead of four NumPy
    gathers into p × p temporaries: for MNIST's 4- and 8-neighbour models (p = 2,296 and
    3,754) 0.011–0.016 and 0.030–0.032 s against the gathers' 0.10 and 0.24 s (medians
    of 7 in a loop, scratch ``/tmp/exp24/dh2.py``); a process's first call at p = 3,754,
    page faults on the fresh arrays included, 0.16 against 0.68–1.1 s.
    """
    n = rows.size
    out = np.empty((n, n))
    for j in prange(n):
        sigma_p = covariance[rows[j]]
        sigma_q = covariance[cols[j]]
        cj = weights[j]
        h = out[j]
        for l in range(n):
            r = rows[l]
            s = cols[l]
            h[l] = cj * weights[l] * (sigma_p[r] * sigma_q[s] + sigma_p[s] * sigma_q[r])
    return out


@njit(cache=True)
def sandwich_terms(offsets, full_offsets):
    """The index triples ``(i, j, m)`` of :func:`sandwich_on_pattern`, per output term.

    For term ``k`` (partner ``q = p + δ_k``), ``a = p + o_i``, ``b = q + o_j``: the pair
    contributes ``Λ_pa G_ab Λ_bq`` when ``b − a = δ_k + o_j − o_i`` is an offset ``o_m``
    of the stencil (or zero). Returns ``terms`` of shape ``(n_terms, n_full², 3)`` and
    the count per term.
    """
    n_terms = offsets.shape[0]
    n_full = full_offsets.shape[0]
    terms = np.zeros((n_terms, n_full * n_full, 3), dtype=np.int64)
    counts = np.zeros(n_terms, dtype=np.int64)
    for k in range(n_terms):
        for i in range(n_full):
            for j in range(n_full):
                dr = offsets[k, 0] + full_offsets[j, 0] - full_offsets[i, 0]
                dc = offsets[k, 1] + full_offsets[j, 1] - full_offsets[i, 1]
                for m in range(n_full):
                    if full_offsets[m, 0] == dr and full_offsets[m, 1] == dc:
                        t = counts[k]
                        terms[k, t, 0], terms[k, t, 1], terms[k, t, 2] = i, j, m
                        counts[k] += 1
    return terms, counts


@njit(cache=True)
def sandwich_on_pattern(lam_planes, g, offsets, full_offsets, terms, counts, height,
                        width):
    """``Y = Λ G Λ`` read on the stencil pattern, for symmetric Λ and G on that pattern.

    ``Y[k, p] = Σ_{a, b} Λ_pa G_ab Λ_{b, p+δ_k}`` over ``a`` in the stencil of ``p`` (or
    ``p`` itself), ``b`` in that of ``p + δ_k`` and ``(a, b)`` on the pattern: the
    ``counts[k]`` triples of :func:`sandwich_terms`, O(K² D) in all, no matrix product.

    Parameters
    ----------
    lam_planes : ndarray, shape (2K + 1, height + 2, width + 2)
        :func:`symmetric_planes` of Λ.
    g : ndarray, shape (K + 1, D)
        Stencil layout (upper triangle) of G, zero on pairs off the grid.
    offsets, full_offsets, terms, counts
        The stencil's offsets, :func:`symmetric_planes`'s offsets, and
        :func:`sandwich_terms`.
    height, width : int

    Returns
    -------
    ndarray, shape (K + 1, D)
        Zero on pairs off the grid.
    """
    n_terms = offsets.shape[0]
    g_planes, _ = symmetric_planes(g, offsets, height, width)
    # Each plane is read flat: the pixels (r, c) of padded rows 1..height form one run
    # of indices (with the two border columns between rows, where every Λ plane is zero,
    # so they add nothing), and a shift by (dr, dc) is a shift by dr·(width + 2) + dc.
    # One long vectorized loop per triple instead of a short one per row: 2.3–2.6× faster
    # (28×28: 24 → 11 µs with 4 neighbours, 121 → 46 µs with 8, which a Newton-CG fit
    # applies about 160 times).
    padded = width + 2
    size = (height + 2) * padded
    lam = lam_planes.reshape(lam_planes.shape[0], size)
    g_flat = g_planes.reshape(g_planes.shape[0], size)
    first = padded + 1
    last = height * padded + width + 1
    n = last - first
    total = np.empty(n)
    partial = np.empty(n)
    out = np.empty((n_terms, height * width))
    for k in range(n_terms):
        shift_k = offsets[k, 0] * padded + offsets[k, 1]
        total[:] = 0.0
        # The triples come grouped by i (sandwich_terms' outer loop): Λ_pa is factored
        # out of each group, Y[k] = Σ_i Λ_i ⊙ (Σ_(j,m) G_m ⊙ Λ_j), two reads a triple.
        t = 0
        while t < counts[k]:
            i = terms[k, t, 0]
            shift_a = full_offsets[i, 0] * padded + full_offsets[i, 1]
            partial[:] = 0.0
            while t < counts[k] and terms[k, t, 0] == i:
                j, m = terms[k, t, 1], terms[k, t, 2]
                # An off-grid partner q has Λ_bq = 0 in every plane: no test needed.
                _add_product(partial, g_flat[m, first + shift_a:last + shift_a],
                             lam[j, first + shift_k:last + shift_k])
                t += 1
            _add_product(total, lam[i, first:last], partial)
        for r in range(height):
            for c in range(width):
                out[k, r * width + c] = total[r * padded + c]
    return out


@njit(cache=True, inline="always")
def _add_product(total, a, b):
    """``total += a ⊙ b`` for contiguous vectors of one length."""
    for x in range(total.size):
        total[x] += a[x] * b[x]

@njit(parallel=True, cache=True)
def lower_positions(indptr, indices, rows, cols):
    """Positions in a lower-triangular CSC structure of the entries ``(rows, cols)``.

    Each pair is looked up as ``(max, min)`` by binary search in column ``min``.
    A pair that is not in the structure gets ``-1``.
    """
    out = np.empty(rows.size, dtype=np.int64)
    for t in prange(rows.size):
        r = max(rows[t], cols[t])
        c = min(rows[t], cols[t])
        lo = indptr[c]
        hi = indptr[c + 1]
        while lo < hi:
            mid = (lo + hi) // 2
            if indices[mid] < r:
                lo = mid + 1
            else:
                hi = mid
        out[t] = lo if (lo < indptr[c + 1] and indices[lo] == r) else -1
    return out


@njit(parallel=True, fastmath=_REASSOC, cache=True)
def first_non_finite_row(X, n_chunks):
    """The index of the first row of ``X`` holding a NaN or an infinity (``X.shape[0]``
    if none), in parallel over chunks of rows.

    No temporary: ``np.isfinite(X)`` allocates a mask the size of the data (47 MB for
    MNIST in float64; 22–38 ms of a 0.3 s MLE fit). A row is finite when ``Σ 0·x`` is
    0, since ``0·inf`` and ``0·NaN`` are NaN (a plain sum may overflow for finite data
    near the dtype's largest value, so it cannot serve as the test). Reassociation
    alone does not let LLVM fold ``0·x`` to 0 (that needs "nnan" and "nsz").
    """
    n, d = X.shape
    found = np.empty(n_chunks, dtype=np.int64)
    for chunk in prange(n_chunks):
        found[chunk] = n
        for i in range(chunk * n // n_chunks, (chunk + 1) * n // n_chunks):
            total = 0.0
            row = X[i]
            for p in range(d):
                total += np.float64(row[p]) * 0.0
            if total != total:
                found[chunk] = i
                break
    first = n
    for chunk in range(n_chunks):
        first = min(first, found[chunk])
    return first


def default_chunks(n_samples):
    """Number of parallel accumulators for :func:`pattern_moments` and the other passes:
    one per thread the process may run (``numba.config.NUMBA_NUM_THREADS``), not per
    thread in use, so that a fit's numbers do not depend on the count in use
    (:mod:`sparsegauss._threads` changes it during a fit); fewer threads run the chunks
    in turn."""
    return max(1, min(numba.config.NUMBA_NUM_THREADS, n_samples))


@njit(cache=True, error_model="numpy")
def adam_step(grad, first, second, beta1, beta2, bias1, bias2, rate):
    """One Adam step (Kingma & Ba 2015): the moment estimates updated in place,

        m ← β₁ m + (1 − β₁) g,   v ← β₂ v + (1 − β₂) g²,

    and the step ``−rate · (m / b₁) / (√(v / b₂) + 10⁻⁸)`` returned (a new array), with
    the bias corrections ``b₁ = 1 − β₁ᵗ`` and ``b₂ = 1 − β₂ᵗ`` from the caller (Python's
    power, which Numba's differs from in the last bit), each entry computed as NumPy's
    expressions compute it. ``error_model="numpy"`` (IEEE division, no zero test) lets
    LLVM vectorize the divisions: 17 → 7 µs for 2,297 parameters, against 25–30 µs for
    the NumPy expressions."""
    step = np.empty_like(grad)
    for j in range(grad.size):
        i = np.uint64(j)
        g = grad[i]
        first[i] = beta1 * first[i] + (1.0 - beta1) * g
        second[i] = beta2 * second[i] + (1.0 - beta2) * g * g
        step[i] = -rate * (first[i] / bias1) / (np.sqrt(second[i] / bias2) + 1e-8)
    return step


# -- standard normal variates ----------------------------------------------------------
# NumPy's ``Generator.standard_normal`` costs ~10 ns a variate here and runs on one core:
# a MALA step on 256 × 784 pixels spent longer drawing its normals than in its matrix
# products. These kernels draw them with Marsaglia and Tsang's ziggurat (2000, 256
# layers) in the form of Doornik (2005: independent bits for the layer and the abscissa),
# on a counter-based SplitMix64 stream (Steele, Lea and Flood 2014) per row, seeded from
# the caller's Generator: rows are independent streams, so the numbers depend on the seed
# alone. The first try of a row's j-th variate uses the j-th output of the row's stream
# (SplitMix64 is counter-based: output j is a mix of ``start + j·γ``), so the loop over a
# row carries no state and the CPU overlaps consecutive variates; the ~1 % of first tries
# that fall outside their layer's rectangle are finished afterwards on a second stream of
# the row (the wedge or tail test, then fresh tries). 256 × 784 variates: 0.43–0.50 ms
# against 0.62–1.1 ms with one sequential stream a row (scratch timings, medians of 200
# calls, 2026-12-02). These kernels and the MALA ones below run on one thread on purpose: they
# alternate with BLAS calls on 2 threads, and Numba's OpenMP workers spinning after a
# parallel loop took the cores from OpenBLAS (5 MALA steps on 256 × 784: 70 ms with
# ``prange``, 18 ms without).
# The tables are module constants, not arguments: Numba bakes a global array into the
# compiled code as read-only data, so LLVM knows the kernels' stores cannot change it and
# vectorizes the table lookups as gathers. Passed as arguments they might alias the output,
# and the first tries stayed scalar: 128 columns of 784 variates took 0.25–0.30 ms, and
# 0.135 ms with the constant tables, the second tries moved out of the loop and the
# mixing in a loop of its own (scratch, medians of 7 × 300 calls, Intel Xeon with
# AVX-512, 2026-12-03; compiled for AVX2 alone the tries stay scalar, 0.20–0.23 ms).
_ZIGGURAT_R = 3.6541528853610088     # right edge of the base strip
_ZIGGURAT_V = 0.00492867323399       # area of every layer (for f(x) = exp(−x²/2))
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2⁻⁵³


def _ziggurat_tables():
    """Layer edges ``x_i`` (``x_0`` the base strip's virtual width ``v / f(r)``,
    ``x_1 = r``, ``x_256 = 0``), the ratios ``x_{i+1} / x_i`` below which a draw needs no
    density test, and ``f(x_i)``."""
    x = np.zeros(257)
    x[0] = _ZIGGURAT_V / np.exp(-0.5 * _ZIGGURAT_R ** 2)
    x[1] = _ZIGGURAT_R
    for i in range(1, 255):
        x[i + 1] = np.sqrt(-2.0 * np.log(_ZIGGURAT_V / x[i] + np.exp(-0.5 * x[i] ** 2)))
    return x, x[1:] / x[:-1], np.exp(-0.5 * x * x)


ZIGGURAT = _ziggurat_tables()
_ZIGGURAT_X, _ZIGGURAT_RATIO, _ZIGGURAT_F = ZIGGURAT


#: Mixed into a row's start to seed its second stream (the ziggurat's rare second tries).
_RETRY = np.uint64(0xD1B54A32D192ED03)


@njit(inline="always")
def _mix64(z):
    """SplitMix64's output function (Stafford's variant 13)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


@njit(inline="always")
def _splitmix(state):
    """The next state of a SplitMix64 stream and its 64 output bits."""
    state += _GOLDEN
    return state, _mix64(state)


@njit(inline="always")
def _row_stream(seed, row):
    """The starting state of row ``row``'s stream: both mixed, so nearby seeds and rows
    start far apart on the 2⁶⁴ cycle."""
    _, start = _splitmix(np.uint64(row) * _GOLDEN)
    _, start = _splitmix(np.uint64(seed) ^ start)
    return start


@njit(inline="always")
def _open_unit(bits):
    """A uniform variate in (0, 1] from the top 53 bits."""
    return ((bits >> np.uint64(11)) + np.uint64(1)) * _TO_UNIT


@njit(inline="always")
def _layer_and_abscissa(bits):
    """A try's layer ``i`` (the low 8 bits) and abscissa ``u`` in (−1, 1) (the top 53).
    The layer stays unsigned (no negative-index test) and the 53 bits go to float64 as a
    signed integer (exact below 2⁶³; one vector instruction where unsigned needs several),
    so that a loop of tries vectorizes."""
    return (bits & np.uint64(255),
            2.0 * (np.int64(bits >> np.uint64(11)) * _TO_UNIT) - 1.0)


@njit(inline="always")
def _tail_or_wedge(state, i, u):
    """The ziggurat after a try ``(i, u)`` outside its layer's rectangle: the tail beyond
    r for the base strip (Marsaglia 1964), else the wedge's test against the density,
    drawing from ``state``. Returns ``(state, value, accepted)``."""
    if i == 0:
        while True:
            state, bits = _splitmix(state)
            a = -np.log(_open_unit(bits)) / _ZIGGURAT_R
            state, bits = _splitmix(state)
            if -2.0 * np.log(_open_unit(bits)) > a * a:
                break
        return state, (_ZIGGURAT_R + a) if u > 0 else -(_ZIGGURAT_R + a), True
    x, f = _ZIGGURAT_X, _ZIGGURAT_F
    z = u * x[i]
    state, bits = _splitmix(state)
    return state, z, f[i + 1] + _open_unit(bits) * (f[i] - f[i + 1]) < np.exp(-0.5 * z * z)


@njit(inline="always")
def _standard_normal(state):
    """One N(0, 1) variate by the ziggurat; returns ``(state, value)``."""
    while True:
        state, bits = _splitmix(state)
        i, u = _layer_and_abscissa(bits)
        if abs(u) < _ZIGGURAT_RATIO[i]:       # inside the layer's rectangle: ~99 %
            return state, u * _ZIGGURAT_X[i]
        state, z, accepted = _tail_or_wedge(state, i, u)
        if accepted:
            return state, z


@njit(inline="always")
def _try_bits(start, j):
    """The 64 bits of variate ``j``'s first try on the row stream that starts at
    ``start`` (output ``j + 1`` of the counter-based stream)."""
    return _mix64(start + np.uint64(j + 1) * _GOLDEN)


@njit(inline="always")
def _first_try_of(bits):
    """The ziggurat try made of ``bits``: ``(value, outside)``. Not outside (~99 %) means
    inside the layer's rectangle, and the value is a N(0, 1) variate; otherwise
    :func:`_retry` finishes it.

    The kernels mix a row's bits in one loop and make the tries in a second: the mixing
    loop (64-bit multiplies) then unrolls on its own, and the tries vectorize as gathers
    (first tries of 128 × 784 in 0.08 against 0.10 ms as one loop; scratch, Intel Xeon)."""
    i, u = _layer_and_abscissa(bits)
    return u * _ZIGGURAT_X[i], abs(u) >= _ZIGGURAT_RATIO[i]


@njit(inline="always")
def _retry(state, start, j):
    """Variate ``j`` whose first try (:func:`_first_try_of`) fell outside its rectangle: the
    ziggurat goes on from that try, the tail or wedge test and any further tries drawing
    from the row's second stream ``state``. Returns ``(state, value)``."""
    i, u = _layer_and_abscissa(_try_bits(start, j))
    state, z, accepted = _tail_or_wedge(state, i, u)
    if accepted:
        return state, z
    return _standard_normal(state)


@njit(inline="always")
def _flags(n):
    """A zeroed boolean work array of at least ``n`` entries, padded to a multiple of 8,
    and the same memory as 64-bit words (for :func:`_flagged`)."""
    flags = np.zeros((n + 7) // 8 * 8, dtype=np.bool_)
    return flags, flags.view(np.uint64)


@njit(inline="always")
def _flagged(flags, words, n, found):
    """The positions of the set entries among the first ``n`` of ``flags`` (see
    :func:`_flags`), in ascending order, into ``found``; returns their number. Eight
    flags are tested at a time: about 1 % are set (the ziggurat's second tries)."""
    count = 0
    for w in range(words.size):
        if words[w]:
            for j in range(8 * w, min(8 * w + 8, n)):
                if flags[j]:
                    found[count] = j
                    count += 1
    return count


@njit(cache=True)
def standard_normal_rows(seed, out, first_row=0, transposed=False):
    """Fill the 2-D array ``out`` with N(0, 1) variates, row ``r`` from stream
    ``first_row + r`` of ``seed``: a large draw made in blocks gives the numbers of one
    draw. With ``transposed``, stream ``c`` fills column ``c`` instead (the layout of a
    solve with one right-hand side per column).

    The first tries of a row (or, transposed, of one variate of every stream) are made in
    one branch-free loop that vectorizes; the ~1 % outside their rectangle are flagged and
    finished afterwards, in each stream's order, on the stream's second generator."""
    if transposed:
        _normal_columns(seed, out, first_row)
        return
    n, d = out.shape
    outside, words = _flags(d)
    found = np.empty(d, dtype=np.intp)
    bits = np.empty(d, dtype=np.uint64)
    for r in range(n):
        start = _row_stream(seed, first_row + r)
        row = out[r]
        for j in range(d):
            bits[j] = _try_bits(start, j)
        for j in range(d):
            row[j], outside[j] = _first_try_of(bits[j])
        state = _mix64(start ^ _RETRY)
        for k in range(_flagged(outside, words, d, found)):
            state, row[found[k]] = _retry(state, start, found[k])


@njit(cache=True)
def _normal_columns(seed, out, first_row):
    """:func:`standard_normal_rows` transposed: stream ``first_row + c`` fills column
    ``c``. A row of ``out`` is one variate of every stream, drawn in one vectorized loop;
    its second tries are found eight flags at a time (a row of 128 has one in about 70 %
    of rows) and finished in column order, each stream's second generator kept in
    ``states`` (so every stream sees its second tries in the same order as untransposed)."""
    d, n = out.shape
    starts = np.empty(n, dtype=np.uint64)
    states = np.empty(n, dtype=np.uint64)
    for c in range(n):
        starts[c] = _row_stream(seed, first_row + c)
        states[c] = _mix64(starts[c] ^ _RETRY)
    outside, words = _flags(n)
    found = np.empty(n, dtype=np.intp)
    bits = np.empty(n, dtype=np.uint64)
    for j in range(d):
        row = out[j]
        for c in range(n):
            bits[c] = _try_bits(starts[c], j)
        for c in range(n):
            row[c], outside[c] = _first_try_of(bits[c])
        for k in range(_flagged(outside, words, n, found)):
            c = found[k]
            states[c], row[c] = _retry(states[c], starts[c], j)


# -- Metropolis-adjusted Langevin steps --------------------------------------------------
@njit(cache=True, fastmath={"reassoc"})
def mala_propose(seed, x, psi, eps, proposal):
    """``proposal = x + ε ψ + √(2ε) ξ`` with fresh normals ``ξ`` drawn in the same pass;
    returns the forward proposal's log-density up to a constant, ``−‖ξ‖²/2`` per row.
    (ξ is not stored: :func:`mala_reverse` needs only ``p − x``. Writing it too, this
    kernel took 2.0–2.1 ms a call on 256 × 784 chains inside a CD fit; without, 1.0 ms.)
    ``reassoc`` lets the sum of ``ξ²`` run in vector lanes, so that the loop vectorizes
    with the ziggurat's first tries (0.62–0.69 → 0.34 ms for 256 × 784 with the changes
    of :func:`standard_normal_rows`, 2026-12-03); it changes that sum in its last bits,
    not the proposals."""
    n, d = x.shape
    scale = np.sqrt(2.0 * eps)
    forward = np.empty(n)
    outside, words = _flags(d)
    bits = np.empty(d, dtype=np.uint64)
    for row in range(n):
        start = _row_stream(seed, row)
        total = 0.0
        for j in range(d):
            bits[j] = _try_bits(start, j)
        for j in range(d):
            z, outside[j] = _first_try_of(bits[j])
            total += z * z
            proposal[row, j] = x[row, j] + eps * psi[row, j] + scale * z
        # The rare first tries outside their rectangle: replace them by the finished
        # variates (the numbers of standard_normal_rows for this row and seed).
        state = _mix64(start ^ _RETRY)
        # Scanned in place rather than through _flagged: with the positions gathered
        # first this kernel measured 5–10 % slower (0.34–0.37 against 0.30–0.34 ms).
        for w in range(words.size):
            if words[w]:
                for j in range(8 * w, min(8 * w + 8, d)):
                    if outside[j]:
                        tried = _first_try_of(_try_bits(start, j))[0]
                        state, z = _retry(state, start, j)
                        total += z * z - tried * tried
                        proposal[row, j] += scale * (z - tried)
        forward[row] = -0.5 * total
    return forward


@njit(cache=True)
def mala_reverse(x, proposal, psi_p, eps):
    """The reverse proposal's log-density up to the same constant,
    ``−‖x − p − εψ(p)‖² / 4ε`` per row."""
    n, d = x.shape
    out = np.empty(n)
    for row in range(n):
        total = 0.0
        for j in range(d):
            r = proposal[row, j] - x[row, j] + eps * psi_p[row, j]
            total += r * r
        out[row] = -total / (4.0 * eps)
    return out


@njit(cache=True)
def copy_rows_where(mask, dst_a, src_a, dst_b, src_b):
    """``dst[mask] = src[mask]`` for two pairs of 2-D arrays, without the temporaries of
    boolean indexing."""
    for row in range(mask.size):
        if mask[row]:
            dst_a[row, :] = src_a[row, :]
            dst_b[row, :] = src_b[row, :]


@njit(cache=True)
def gaussian_term_and_score(X, b, inv_var, psi):
    """Per row, ``−‖x‖² / 2σ² + bᵀx`` (returned), and ``ψ += b − x / σ²`` in place: the
    Gaussian term of a model whose score already holds the rest."""
    n, d = X.shape
    out = np.empty(n)
    for row in range(n):
        square = 0.0
        linear = 0.0
        for j in range(d):
            v = X[row, j]
            square += v * v
            linear += v * b[j]
            psi[row, j] += b[j] - v * inv_var
        out[row] = -0.5 * square * inv_var + linear
    return out


@njit(cache=True)
def lower_transposed_solve(indptr, indices, data, rhs):
    """Solve ``Lᵀ X = rhs`` in place for a lower-triangular CSC ``L`` with sorted row
    indices (the diagonal first in each column) and ``rhs`` of shape (n, k), C-ordered:
    ``x_j = (z_j − Σ_{i>j} L_ij x_i) / L_jj`` for j from last to first, each update a
    contiguous row of k right-hand sides (an inner loop the compiler can vectorize).

    Zero entries are skipped: a supernodal factor stores its supernodes' padding as
    explicit zeros (7,335 of the 15,851 entries of a 28×28 4-neighbour factor), and
    ``x − 0·y`` is ``x`` for every finite ``y``, so the samples are the same to the bit."""
    n, k = rhs.shape
    for j in range(n - 1, -1, -1):
        start = indptr[j]
        for p in range(start + 1, indptr[j + 1]):
            value = data[p]
            if value == 0.0:
                continue
            i = indices[p]
            for c in range(k):
                rhs[j, c] -= value * rhs[i, c]
        inverse = 1.0 / data[start]
        for c in range(k):
            rhs[j, c] *= inverse


@njit(parallel=True, cache=True)
def sample_transposed_solve(seed, first_row, indptr, indices, data, permutation, out,
                            squared_norms, n_chunks):
    """Exact samples ``out[r] = Pᵀ L⁻ᵀ ε_r`` for the rows of ``out``, ``ε_r`` from stream
    ``first_row + r`` of ``seed``: :func:`standard_normal_rows` (transposed),
    :func:`lower_transposed_solve` and :func:`scatter_transposed` on ``n_chunks`` groups
    of rows at once, each on a thread of its own. The numbers depend on the seed and the
    row alone, not on ``n_chunks``. ``squared_norms`` (one entry a row, or empty)
    receives ``ε_rᵀ ε_r``, which is ``out[r]ᵀ A out[r]`` for ``A = P L Lᵀ Pᵀ``."""
    k, d = out.shape
    for chunk in prange(n_chunks):
        lo = chunk * k // n_chunks
        hi = (chunk + 1) * k // n_chunks
        columns = np.empty((d, hi - lo))
        standard_normal_rows(seed, columns, first_row + lo, True)
        if squared_norms.size:
            _column_squared_norms(columns, squared_norms[lo:hi])
        lower_transposed_solve(indptr, indices, data, columns)
        scatter_transposed(columns, permutation, out[lo:hi])


@njit(cache=True)
def _column_squared_norms(columns, out):
    """``out[c] = Σ_j columns[j, c]²``. A function of its own, not a loop in the
    parallel kernel that calls it: there the loop stayed scalar (0.1 ms of a 0.6 ms draw
    of 256 MNIST samples); here it vectorizes."""
    d, n = columns.shape
    out[:] = 0.0
    for j in range(d):
        for c in range(n):
            out[c] += columns[j, c] * columns[j, c]


@njit(cache=True)
def scatter_transposed(columns, permutation, out):
    """``out[c, permutation[j]] = columns[j, c]``: solutions in the factor's order, one
    per column, back to one sample per row in pixel order."""
    d, n = columns.shape
    # Eight columns at a time: one 64-byte line of ``columns`` per pixel, written into
    # eight rows of ``out`` that stay in L1 (all 128 rows at once spread the writes
    # over 800 KB: 0.135–0.140 ms for 128 × 784 against 0.076–0.079 ms; scratch, 2026-12-03).
    for first in range(0, n, 8):
        last = min(first + 8, n)
        for j in range(d):
            target = permutation[j]
            for c in range(first, last):
                out[c, target] = columns[j, c]
