"""BLAS thread counts around work whose dense blocks are small.

OpenBLAS's worker threads spin for a while after each call; next to Numba's own threads
on a 2-core machine they take cores from the next parallel kernel (a NumPy product of
30 × 2,296 in Newton-CG's recycling made the MNIST moment pass that followed 76 ms
instead of 26).
"""

import contextlib

_BLAS_LIBRARIES = None


_BLAS_DEPTH = 0
#: The thread counts :func:`one_blas_thread` found on entry (restored by
#: :func:`all_blas_threads` and on exit).
_SAVED_COUNTS = None


@contextlib.contextmanager
def one_blas_thread():
    """A context that runs every loaded BLAS on one thread, around the supernodal
    factorization and Takahashi kernels (nested contexts cost nothing: a gradient of
    log Z sets the counts once for both kernels).

    Its dense blocks (``dtrsm``, ``dpotri``, ``dsymm``, ``dgemm`` of SciPy's OpenBLAS,
    called from Numba) are mostly small, and OpenBLAS's threads spin while they wait:
    with another CPU-bound process on one of two cores, the earlier kernel took 2.9×
    (256²) and 2.0× (512²) its idle time with the default two BLAS threads, and 1.01×
    and 1.10× with one; the present one 1.08× and 1.00× (see docs/performance.md,
    notes). The libraries are found once (threadpoolctl) and their thread counts set and
    restored directly: ``ThreadpoolController.limit`` re-reads every library's state on
    each call, 70 µs, a quarter of the kernel's time on a 28×28 grid.
    """
    global _BLAS_LIBRARIES, _BLAS_DEPTH, _SAVED_COUNTS
    if _BLAS_DEPTH:
        yield
        return
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
    _BLAS_DEPTH += 1
    _SAVED_COUNTS = previous
    try:
        yield
    finally:
        _BLAS_DEPTH -= 1
        _SAVED_COUNTS = None
        for library, count in zip(_BLAS_LIBRARIES, previous):
            library.set_num_threads(count)


@contextlib.contextmanager
def all_blas_threads():
    """Inside :func:`one_blas_thread`, give the BLAS back the thread counts it had before,
    for one large dense operation (a Cholesky of a dense Hessian of thousands of
    parameters, which two threads do in about 0.6 of one's time); elsewhere, nothing.

    A solver whose every step calls small kernels holds one :func:`one_blas_thread`
    around the whole run (setting and restoring the counts costs about 20 µs, against
    a 28×28 grid's 0.4 ms gradient) and steps out of it here."""
    global _BLAS_DEPTH, _SAVED_COUNTS
    if not _BLAS_DEPTH:
        yield
        return
    depth, saved = _BLAS_DEPTH, _SAVED_COUNTS
    for library, count in zip(_BLAS_LIBRARIES, saved):
        library.set_num_threads(count)
    _BLAS_DEPTH, _SAVED_COUNTS = 0, None
    try:
        yield
    finally:
        _BLAS_DEPTH, _SAVED_COUNTS = depth, saved
        for library in _BLAS_LIBRARIES:
            library.set_num_threads(1)
