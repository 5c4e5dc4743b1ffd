"""Every estimator at its defaults on a known grid Gaussian (issue 12, part 3).

``python -m benchmarks.one_off.synthetic_defaults [SIDE] [N] [STENCIL]`` (default 16,
100000, 4): ``make_grid_gaussian((SIDE, SIDE), N, stencil=STENCIL)``, then for every
``method`` a ``GridGaussian`` given only the method (and ``assume_centered``, the truth's
mean being 0), scored by ``KL(truth ‖ estimate)`` against the exact MLE's on the same
samples. Prints one row per method: fit time, KL, ratio to the MLE's KL, positive
definite, converged. Every estimator starts where its docstring says (the independent
model ``diag(1/S_pp)``, or the adaptive pilot for NCE, ranking NCE and CNCE) and is given
nothing but the samples.
"""

import sys
import time
import warnings

from sparsegauss import GridGaussian, kl_divergence
from sparsegauss.datasets import make_grid_gaussian

METHODS = ("mle", "sm", "nce", "rnce", "cnce", "cd")


def main(side=16, n_samples=100_000, stencil=4):
    shape = (side, side)
    truth, X = make_grid_gaussian(shape, n_samples, stencil=stencil, random_state=0)
    # Warm up the kernels (Numba's compilation or cache load) on a few steps first.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in METHODS[1:]:
            GridGaussian(shape, stencil=stencil, method=method, max_iter=4,
                         assume_centered=True, random_state=0).fit(X[:500])
    print(f"{side}×{side}, {stencil} neighbours, N = {n_samples:,}")
    print("| method | fit time (s) | KL(truth‖est) | ratio to the MLE's | PD | converged |")
    print("|---|---|---|---|---|---|")
    kl_mle = None
    for method in METHODS:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = GridGaussian(shape, stencil=stencil, method=method,
                                 assume_centered=True, random_state=0).fit(X)
        seconds = time.perf_counter() - start
        kl = (kl_divergence(truth, model) if model.is_positive_definite_
              else float("nan"))
        kl_mle = kl if method == "mle" else kl_mle
        print(f"| {method} | {seconds:.2f} | {kl:.5f} | {kl / kl_mle:.2f} "
              f"| {model.is_positive_definite_} | {model.converged_} |", flush=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
