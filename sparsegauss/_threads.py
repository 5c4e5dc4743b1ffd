"""A second thread for the two independent halves of an estimator's step.

Some steps are two computations that do not depend on each other: stochastic maximum
likelihood's data pass and ``∇ log Z`` (a factorization and a selected inversion). For a
model whose passes are Numba kernels that release the
GIL (:attr:`~sparsegauss.models.EnergyModel.overlaps_passes`), the estimator hands one
half to :func:`side_thread` and computes the other itself, and the step takes the longer
of the two rather than their sum.

The worker runs its kernels on one Numba thread (``numba.set_num_threads`` is per
thread), so that the two halves together ask for two cores. It pays where one half is a
one-thread kernel that leaves a core idle (the 28×28 factorization and selected
inversion, 0.5–0.6 ms, beside a weighted pattern-moment pass over 256 images of 0.17 ms
on one thread, 0.10–0.12 ms on two), not where both
halves are passes that already split over the cores: NCE's data and noise halves side by
side, each on one thread, took its default MNIST fit from 3.50 to 4.28 s (medians of 4,
alternated in one process, 2026-12-02), so NCE runs them in turn.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba

__all__ = ["side_thread", "both_halves"]

_SIDE = None
_SIDE_LOCK = threading.Lock()


def side_thread():
    """The process's one worker thread (made at first use), on one Numba thread."""
    global _SIDE
    with _SIDE_LOCK:
        # A child made by fork inherits the executor but not its thread: it gets its own.
        if _SIDE is None or _SIDE[0] != os.getpid():
            _SIDE = (os.getpid(),
                     ThreadPoolExecutor(max_workers=1, thread_name_prefix="sparsegauss-side",
                                        initializer=numba.set_num_threads, initargs=(1,)))
        return _SIDE[1]


def both_halves(first, second, overlap=True):
    """``(first(), second())``, with ``first`` on the side thread while this thread runs
    ``second`` when ``overlap``; in turn on this thread otherwise.

    An exception from either is raised here, after both have finished (so the worker is
    free for the next step).
    """
    if not overlap:
        return first(), second()
    pending = side_thread().submit(first)
    try:
        result = second()
    finally:
        done = pending.result()
    return done, result
