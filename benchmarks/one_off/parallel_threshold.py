"""One thread against two subtrees at once, by grid size: where the split starts to pay.

``python -m benchmarks.one_off.parallel_threshold [SIDE ...]``: for a random 4-neighbour
grid precision of SIDE² pixels, the library's refactorization plus selected inversion
(one gradient of log Z) with the supernodes on one thread and split between two
(:func:`sparsegauss._kernels.subtree_schedule`), the two settings alternated twice in one
process, medians of 5 batches. Sets :data:`sparsegauss.cholesky.PARALLEL_MIN_ENTRIES`.
Run it on an otherwise idle machine.
"""

import sys
import time

import numpy as np

import sparsegauss.cholesky as cholesky
from benchmarks.bench_peers import random_grid_precision
from sparsegauss.normalization import GridNormalizer

SIDES = (28, 64, 100, 128, 256, 512)


def _per_call(function, calls, batches=5):
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        times.append((time.perf_counter() - start) / calls)
    return float(np.median(times))


def main(sides=SIDES):
    default = cholesky.PARALLEL_MIN_ENTRIES
    try:
        for side in sides:
            grid, theta, _ = random_grid_precision(side)
            calls = max(3, 200_000 // grid.n_pixels)
            times = {"one thread": [], "two subtrees": []}
            for setting in 2 * list(times):
                cholesky.PARALLEL_MIN_ENTRIES = (np.inf if setting == "one thread" else 0)
                # A new analysis, not the shared one of the same pattern: the split is
                # decided when an analysis is made (with the last normalizer alive, both
                # settings timed whichever came first).
                normalizer = None
                cholesky._SymbolicAnalysis._cache.clear()
                normalizer = GridNormalizer(grid)
                assert normalizer.analysis.splits_over_threads == (setting != "one thread")
                gradient = lambda: normalizer.covariance_fields(normalizer.factorize(theta))
                gradient()                                   # warm-up: JIT, buffers
                times[setting].append(_per_call(gradient, calls))
            entries = normalizer.analysis.indices.size
            print(f"{side}² ({entries:,} factor entries): " + ", ".join(
                f"{name} {' / '.join(f'{1e3 * t:.2f}' for t in ts)} ms"
                for name, ts in times.items()), flush=True)
    finally:
        cholesky.PARALLEL_MIN_ENTRIES = default


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or SIDES)
