"""Memory: what the machine can give, checked before an allocation a user asked for, and
the allocator's thresholds (:func:`tune_allocator`).

A request such as ``model.sample(10**8)`` on a 30-pixel model needs 24 GB: allocating it
first and failing later takes minutes and can push the machine into swap. The check
compares the request with the kernel's estimate of memory available without swapping.
"""

import math
import mmap
import os

import numpy as np

from .exceptions import InsufficientMemoryError

__all__ = ["allocator_state", "available_memory", "check_allocation", "format_bytes",
           "populated_empty", "tune_allocator"]

#: Share of the available memory one request may take: the rest is for temporaries,
#: the caller's own arrays and everything else running.
_USABLE_SHARE = 0.8


def available_memory():
    """Bytes that can be allocated without swapping (``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n_bytes):
    """``n_bytes`` in the largest binary unit that keeps it >= 1 (e.g. ``'22.4 GiB'``)."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} PiB"


def check_allocation(n_bytes, what, advice):
    """Raise :class:`InsufficientMemoryError` if ``n_bytes`` cannot fit in memory now.

    Parameters
    ----------
    n_bytes : int
        Size of the allocation.
    what : str
        What would be allocated, for the message (e.g. ``"10,000 samples of 784 pixels"``).
    advice : str
        What to do instead.
    """
    available = available_memory()
    if available is not None and n_bytes > _USABLE_SHARE * available:
        raise InsufficientMemoryError(
            f"{what} need {format_bytes(n_bytes)}, but this machine has "
            f"{format_bytes(available)} of memory available. {advice}")


# -- glibc's allocator ---------------------------------------------------------------
#: ``mallopt`` parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: The largest values glibc's own dynamic thresholds take (64-bit): after a process frees
#: one mmapped block of 32 MiB, glibc serves blocks below 32 MiB from its heap and keeps
#: up to 64 MiB of freed heap instead of returning it.
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 64 << 20
#: Set to "0" to leave glibc's allocator as it is.
ALLOCATOR_VARIABLE = "SPARSEGAUSS_TUNE_MALLOC"
_allocator_state = {"tuned": False, "reason": "not attempted"}


def tune_allocator():
    """Put glibc's malloc in the state its dynamic thresholds reach on their own after
    the first 32 MiB array is freed: blocks below 32 MiB from the heap, up to 64 MiB of
    freed heap kept.

    Why: until then every freed array above 128 KiB goes back to the kernel and the next
    one page-faults on every 4 KiB page, ~2.3 µs a fault on this project's machine. A
    stochastic fit allocates a few arrays of a minibatch's size per step (256 MNIST
    images are 1.6 MB): NCE with fresh noise on MNIST took 15.1 s in a new process and
    8.8–9.5 s once the thresholds had grown (816 faults per step → 2). Arrays of 32 MiB
    and more are still mapped and unmapped (large grids keep their peak memory).

    Done once at import, on glibc only; skipped when the user set glibc's own
    ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` or
    ``SPARSEGAUSS_TUNE_MALLOC=0``. :func:`sparsegauss.show_config` reports the outcome.

    Returns
    -------
    bool
        Whether the thresholds were set.
    """
    import ctypes
    import platform

    if os.environ.get(ALLOCATOR_VARIABLE, "1") == "0":
        reason = f"{ALLOCATOR_VARIABLE}=0"
    elif any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        reason = "glibc's MALLOC_*_THRESHOLD_ set by the user"
    elif platform.libc_ver()[0] != "glibc":
        reason = "not glibc"
    else:
        try:
            mallopt = ctypes.CDLL(None).mallopt
            done = (mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
                    and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1)
            reason = "at import" if done else "mallopt refused"
        except (OSError, AttributeError):
            done, reason = False, "mallopt not found"
        _allocator_state.update(tuned=done, reason=reason)
        return done
    _allocator_state.update(tuned=False, reason=reason)
    return False


def allocator_state():
    """``{"tuned": bool, "reason": str}`` of :func:`tune_allocator`."""
    return dict(_allocator_state)


#: Arrays from this size up are mapped and populated by :func:`populated_empty`: glibc
#: maps them anyway (the threshold :func:`tune_allocator` sets), so nothing smaller changes.
POPULATE_MIN_BYTES = 32 << 20


def populated_empty(shape, dtype=np.float64):
    """An uninitialized C-ordered array like ``np.empty(shape, dtype)`` whose pages are
    already mapped (``mmap`` with ``MAP_POPULATE``) when it is large.

    Why: NumPy asks for transparent huge pages on every large array
    (``madvise(MADV_HUGEPAGE)``), and on the virtual machines this was measured on the
    first touch of such pages is sometimes eight times slower than usual. NCE's default
    fit on MNIST writes a 376 MB noise pool once: touching it took 0.064–0.071 s in some
    fits and 0.52–0.71 s in others of the same process (2026-12-04, Intel Xeon, 2 vCPUs;
    the fit itself is about 1.7 s), while a populated mapping of ordinary pages took
    0.084–0.087 s in five fits of six (0.150 s in one). The memory is returned when the
    array is freed, as glibc's own mapping would be. Elsewhere than Linux, or below
    :data:`POPULATE_MIN_BYTES`, this is ``np.empty``.
    """
    dtype = np.dtype(dtype)
    shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(n) for n in shape)
    # Asked at every step of fresh-noise NCE (minibatch draws): plain integer arithmetic.
    n_bytes = math.prod(shape) * dtype.itemsize
    flags = getattr(mmap, "MAP_POPULATE", None)
    if n_bytes < POPULATE_MIN_BYTES or flags is None:
        return np.empty(shape, dtype=dtype)
    mapping = mmap.mmap(-1, n_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | flags)
    # The array keeps the mapping alive (its base); both go when the array is freed.
    return np.frombuffer(mapping, dtype=dtype).reshape(shape)
