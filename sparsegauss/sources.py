"""Where the samples live: in memory, in a directory of ``.npy`` shards, or in a Dask array.

The moment-based fits (exact MLE, score matching's closed form and barrier) see the data
only through sums over samples: the mean, and second moments on (or near) the pattern. A
:class:`DataSource` computes such a sum chunk by chunk, so the samples never need to fit
in memory at once:

* :class:`ArraySource`: a NumPy array, in chunks of rows (bounded temporaries).
* :class:`ShardSource`: every ``*.npy`` file of a directory, memory-mapped one at a time,
  each of shape ``(n_i, D)`` or ``(n_i, H, W)``.
* :class:`DaskSource`: a ``dask.array`` of shape ``(n, D)`` or ``(n, H, W)``; every
  block's partial sum is one Dask task, run by whatever scheduler is active (threads by
  default, a ``dask.distributed`` cluster when a ``Client`` exists), and the partial sums
  are added in a tree. Only the sums (a few times D numbers) come back to the client,
  where the Cholesky work happens.

All sums are accumulated in float64 whatever the data's float dtype.
"""

import os
from pathlib import Path

import numpy as np

from . import _kernels

__all__ = ["ArraySource", "DaskSource", "DataSource", "ShardSource", "as_source",
           "check_samples", "is_out_of_core"]

#: Values per chunk of an in-memory or memory-mapped pass: 32 rows of a 1024×1024 image,
#: 128 MiB in float32. Each chunk's statistic is an array the size of the pattern (three
#: or five values a pixel), allocated and added up once per chunk: with 2 rows of 2048²
#: a chunk, that cost more than reading the rows.
_CHUNK_VALUES = 1 << 25


def _is_dask_array(X):
    return type(X).__module__.startswith("dask.") and hasattr(X, "to_delayed")


def is_out_of_core(X):
    """Whether ``X`` names data that :func:`as_source` streams (a Dask array or a folder)."""
    return _is_dask_array(X) or (isinstance(X, (str, os.PathLike)) and Path(X).is_dir())


def check_samples(X, shape, where="X", *, finite=True):
    """``X`` as a C-contiguous float32/float64 array of shape ``(n, H·W)``, or a clear error.

    Accepts ``(n, H·W)`` and ``(n, H, W)``. Integers and booleans become float64, used as
    the numbers they are (scale 8-bit images yourself if you want [0, 1]; sparsegauss.
    datasets.preprocess does that and adds the pixel noise). Refuses other dtypes, and
    NaN or inf (naming the first offending sample and pixel) unless ``finite=False``: a
    caller that reads X anyway and can tell from its result (a fit's moments) skips this
    read and calls :func:`check_finite` when the result is not finite.
    """
    height, width = shape
    n_pixels = height * width
    X = np.asarray(X)
    if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool) \
            or np.issubdtype(X.dtype, np.complexfloating):
        raise TypeError(f"{where} must be an array of real numbers. Got dtype {X.dtype}.")
    if X.ndim == 3 and X.shape[1:] == (height, width):
        X = X.reshape(X.shape[0], n_pixels)
    if X.ndim != 2 or X.shape[1] != n_pixels:
        raise ValueError(
            f"{where} must have shape (n_samples, {n_pixels}) or (n_samples, {height}, "
            f"{width}) for a {height}x{width} grid. Got shape {X.shape} instead.")
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    X = np.ascontiguousarray(X)
    if finite:
        check_finite(X, where)
    return X


def check_finite(X, where="X"):
    """Raise ValueError naming the first sample and pixel of ``X`` (C-contiguous, float,
    2-D) that holds NaN or inf; one parallel read with no temporary."""
    row = _kernels.first_non_finite_row(X, _kernels.default_chunks(X.shape[0]))
    if row < X.shape[0]:
        pixel = int(np.flatnonzero(~np.isfinite(X[row]))[0])
        raise ValueError(f"{where} contains NaN or inf (first at sample {row}, pixel "
                         f"{pixel}). Remove or impute those values first.")


def _added(parts):
    """The sum of the arrays ``parts`` yields, added into the first (each part is a
    fresh array: no new array per addition)."""
    total = None
    for part in parts:
        if total is None:
            total = np.array(part, dtype=np.float64)
        else:
            total += part
    return 0 if total is None else total


class DataSource:
    """Samples read chunk by chunk. Subclasses define ``n_samples``, ``shape`` (H, W) and
    :meth:`sum_over_chunks`."""

    n_samples: int
    shape: tuple

    @property
    def n_pixels(self):
        return self.shape[0] * self.shape[1]

    def sum_over_chunks(self, func):
        """``Σ_chunks func(chunk)`` for an ndarray-valued ``func`` of a ``(n_i, D)`` chunk."""
        raise NotImplementedError

    def _row_chunks(self, X, where):
        rows = max(1, _CHUNK_VALUES // max(1, self.n_pixels))
        for start in range(0, len(X), rows):
            yield check_samples(X[start:start + rows], self.shape,
                                f"{where} rows {start}–{min(start + rows, len(X)) - 1}")


class ArraySource(DataSource):
    """An in-memory array, in chunks of rows."""

    def __init__(self, X, shape):
        self.X, self.shape, self.n_samples = X, tuple(shape), len(X)

    def sum_over_chunks(self, func):
        return _added(func(chunk) for chunk in self._row_chunks(self.X, "X"))


class ShardSource(DataSource):
    """Every ``*.npy`` file of a directory (sorted by name), memory-mapped in turn."""

    def __init__(self, directory, shape):
        self.paths = sorted(Path(directory).glob("*.npy"))
        if not self.paths:
            raise ValueError(f"{directory} holds no .npy files; a shard directory needs "
                             "one or more arrays of shape (n_i, D) saved with numpy.save.")
        self.shape = tuple(shape)
        self.n_samples = 0
        for path in self.paths:
            shard = self._open(path)
            if shard.shape[1:] not in ((self.n_pixels,), self.shape):
                raise ValueError(f"Shard {path} has shape {shard.shape}; every shard must "
                                 f"have shape (n, {self.n_pixels}) or (n, {self.shape[0]}, "
                                 f"{self.shape[1]}).")
            self.n_samples += shard.shape[0]

    @staticmethod
    def _open(path):
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"Could not read shard {path}: {exc}. Shards must be .npy "
                             "files written by numpy.save.") from exc

    def sum_over_chunks(self, func):
        def parts():
            for path in self.paths:
                shard = self._open(path)
                yield from (self._read_chunks(path, shard) if shard.flags.c_contiguous
                            else self._row_chunks(shard, f"shard {path.name}"))
        return _added(func(chunk) for chunk in parts())

    def _read_chunks(self, path, shard):
        """The rows of a C-ordered shard, read chunk by chunk into one buffer with plain
        sequential reads.

        Reading through the memory map faults the file in a page at a time: from a cold
        cache, 2 GiB of 1024×1024 float32 shards went at 193–252 MiB/s that way and at
        245–332 MiB/s with reads (2-core VM whose disk ``dd`` reads at 480 MB/s)."""
        rows = max(1, _CHUNK_VALUES // max(1, self.n_pixels))
        buffer = np.empty((min(rows, len(shard)),) + shard.shape[1:], dtype=shard.dtype)
        row_bytes = buffer[:1].nbytes
        with open(path, "rb") as file:
            file.seek(shard.offset)
            for start in range(0, len(shard), rows):
                chunk = buffer[:min(rows, len(shard) - start)]
                if file.readinto(memoryview(chunk).cast("B")) != chunk.shape[0] * row_bytes:
                    raise ValueError(f"Shard {path} is shorter than its header says "
                                     f"({len(shard)} rows); it may be truncated.")
                yield check_samples(chunk, self.shape, f"shard {path.name} rows {start}–"
                                    f"{start + len(chunk) - 1}")


class DaskSource(DataSource):
    """A ``dask.array``; one task per block, run by the active Dask scheduler."""

    def __init__(self, X, shape):
        self.shape = tuple(shape)
        if X.ndim == 3 and X.shape[1:] == self.shape:
            X = X.reshape(X.shape[0], self.n_pixels)
        if X.ndim != 2 or X.shape[1] != self.n_pixels:
            raise ValueError(f"The Dask array has shape {X.shape}; it must have shape "
                             f"(n, {self.n_pixels}) or (n, {self.shape[0]}, {self.shape[1]}).")
        if any(np.isnan(c) for c in X.chunks[0]):
            raise ValueError("The Dask array has unknown chunk sizes; call "
                             "X.compute_chunk_sizes() first.")
        # Whole rows per block: each task then sees complete images.
        self.X = X.rechunk({1: -1}) if len(X.chunks[1]) > 1 else X
        self.n_samples = int(X.shape[0])

    def sum_over_chunks(self, func):
        import dask

        def partial(block, index):
            return func(check_samples(block, self.shape, f"Dask block {index}"))

        blocks = self.X.to_delayed().ravel()
        parts = [dask.delayed(partial)(block, i) for i, block in enumerate(blocks)]
        while len(parts) > 1:           # a tree of additions, 8 at a time
            parts = [dask.delayed(sum)(parts[i:i + 8]) for i in range(0, len(parts), 8)]
        return dask.compute(parts[0])[0]


def as_source(X, shape):
    """The :class:`DataSource` for ``X`` (ndarray, Dask array or directory of shards) of
    images of ``shape = (H, W)``."""
    if _is_dask_array(X):
        return DaskSource(X, shape)
    if isinstance(X, (str, os.PathLike)):
        if not Path(X).is_dir():
            raise ValueError(f"{X} is not a directory. Pass an array, a dask.array, or a "
                             "directory of .npy shards.")
        return ShardSource(X, shape)
    return ArraySource(np.asarray(X), shape)
