"""The untied MLE solver's time in CHOLMOD numeric factorizations (issue 13: ≤ 30 at 512²).

``python -m benchmarks.one_off.mle_solver_factorizations SIDE``: 2,000 exact samples of
``make_grid_gaussian((SIDE, SIDE))``, their pattern moments, then in one process CHOLMOD's
numeric factorization of the truth's precision three times, ``fit_mle`` on the moments
(the solver alone: no data pass, no analysis), and CHOLMOD's factorization three times
more. Prints the fit's time over the median factorization.
"""

import sys
import time

import numpy as np

from sparsegauss.datasets import make_grid_gaussian
from sparsegauss.estimators.mle import fit_mle
from sparsegauss.grid import GridParameterization
from sparsegauss.normalization import GridNormalizer
from sparsegauss.stats import pattern_moments


def _times(function, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def main(side):
    # Warm up the kernels (Numba's compilation or cache load) on a small grid first.
    _, small = make_grid_gaussian((16, 16), 200, random_state=0)
    small_grid = GridParameterization((16, 16), 4)
    fit_mle(pattern_moments(small, small_grid) / len(small), small_grid)
    start = time.perf_counter()
    truth, X = make_grid_gaussian((side, side), 2000, random_state=side)
    print(f"sampled in {time.perf_counter() - start:.1f} s", flush=True)
    grid = GridParameterization((side, side), 4)
    moments = pattern_moments(X, grid) / len(X)
    del X
    normalizer = GridNormalizer(grid)
    matrix = grid.precision(truth.theta_)
    cholmod = lambda: normalizer.analysis.cholmod.cholesky_inplace(matrix)  # noqa: E731
    before = _times(cholmod)
    own = _times(lambda: normalizer.analysis.factorize(matrix))
    start = time.perf_counter()
    result = fit_mle(moments, grid, normalizer=normalizer)
    fit = time.perf_counter() - start
    after = _times(cholmod)
    factorization = float(np.median(before + after))
    print(f"{side}²: solver {fit:.2f} s, {result.nfev} evaluations, {result.nit} Newton "
          f"steps, residual {result.residual:.1e}; CHOLMOD factorization median "
          f"{factorization:.3f} s (before {np.median(before):.3f}, after "
          f"{np.median(after):.3f}) -> {fit / factorization:.1f} factorizations; the "
          f"library's refactorization {np.median(own):.3f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]))
