"""Refactorization and selected inversion idle, beside a busy process, and idle again.

``python -m benchmarks.one_off.busy_core SIDE [REPEATS]``: a random 4-neighbour grid
precision of SIDE² pixels; medians of REPEATS calls of the library's refactorization,
refactorization + selected inversion (one gradient of log Z), and CHOLMOD's own numeric
factorization, first idle, then with ``while True: pass`` running in another process,
then idle again. Prints each busy median over the smaller idle one (issue 13's goal:
≤ 1.3×).
"""

import subprocess
import sys
import time

import numpy as np

from benchmarks.bench_peers import random_grid_precision
from sparsegauss.normalization import GridNormalizer


def _median_time(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(side, repeats=5):
    grid, theta, matrix = random_grid_precision(side)
    normalizer = GridNormalizer(grid)
    cases = {
        "refactorization": lambda: normalizer.analysis.factorize(matrix),
        "refactorization + selected inversion":
            lambda: normalizer.covariance_fields(normalizer.factorize(theta)),
        "CHOLMOD's factorization": lambda: normalizer.analysis.cholmod.cholesky_inplace(matrix),
    }
    for function in cases.values():      # warm-up (JIT, BLAS threads)
        function()
    phases = {}
    for phase in ("idle", "busy", "idle again"):
        busy = (subprocess.Popen([sys.executable, "-c", "while True: pass"])
                if phase == "busy" else None)
        if busy:
            time.sleep(0.5)
        phases[phase] = {name: _median_time(f, repeats) for name, f in cases.items()}
        if busy:
            busy.kill()
            busy.wait()
    for name in cases:
        idle = min(phases["idle"][name], phases["idle again"][name])
        print(f"{side}² {name}: idle {phases['idle'][name]:.4f} / "
              f"{phases['idle again'][name]:.4f} s, busy {phases['busy'][name]:.4f} s: "
              f"{phases['busy'][name] / idle:.2f}×")


if __name__ == "__main__":
    main(int(sys.argv[1]), *(int(a) for a in sys.argv[2:3]))
