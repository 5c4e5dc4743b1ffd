"""The MLE solver's work on twelve data sets, easy and hard, for choosing its settings.

``python -m benchmarks.one_off.mle_solver_cases``: for MNIST (60,000 training images and
the first 2,000, re-centred), 500 white-noise 20 × 24 images blurred by 1.25 and 2
pixels, 30 of 40 × 40 blurred by 1 pixel (fewer images than parameters) and 3,000
white-noise 64 × 64 images, each with 4 and 8 neighbours: ``fit_mle`` from the pattern
moments at its defaults, printing the gradients evaluated (``nfev``: one factorization
and selected inversion each), Newton steps, direct (dense-Hessian) steps, the KKT
residual reached and the time (median of 3 after a warm-up for the MNIST rows, one
after a warm-up for the rest). A solver setting is worth changing when it saves
gradients on all of them, not on MNIST alone.
"""

import time

import numpy as np

from sparsegauss.estimators.mle import fit_mle
from sparsegauss.grid import GridParameterization
from sparsegauss.normalization import GridNormalizer
from sparsegauss.stats import pattern_moments

from .._data import mnist
from ..bench_core import smoothed_images


def cases():
    """``(name, X, shape)`` of the data sets, centred."""
    X, _ = mnist("train")
    few = X[:2000] - X[:2000].mean(axis=0)
    yield "mnist-60000", X, (28, 28)
    yield "mnist-2000", few, (28, 28)
    for n_images, shape, sigma in ((500, (20, 24), 1.25), (500, (20, 24), 2.0),
                                   (30, (40, 40), 1.0)):
        yield (f"smooth{n_images}-{shape[0]}x{shape[1]}-s{sigma}",
               smoothed_images(n_images, shape, sigma), shape)
    white = np.random.default_rng(0).standard_normal((3000, 64 * 64))
    yield "white3000-64x64", white - white.mean(axis=0), (64, 64)


def main():
    for name, X, shape in cases():
        for stencil in (4, 8):
            grid = GridParameterization(shape, stencil)
            moments = pattern_moments(X, grid) / len(X)
            normalizer = GridNormalizer(grid)
            repeats = 3 if name.startswith("mnist") else 1
            times = []
            for _ in range(repeats + 1):             # the first is a warm-up
                start = time.perf_counter()
                result = fit_mle(moments, grid, normalizer=normalizer)
                times.append(time.perf_counter() - start)
            print(f"{name + f'-{stencil}':<28} gradients {result.nfev:4d}  Newton steps "
                  f"{result.nit:3d}  direct {result.n_direct_steps:2d}  residual "
                  f"{result.residual:.1e}  time {np.median(times[1:]):.3f} s", flush=True)


if __name__ == "__main__":
    main()
