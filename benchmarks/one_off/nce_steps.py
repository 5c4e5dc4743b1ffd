"""NCE at its defaults on MNIST with each of its step-level speed-ups switched off in turn.

``python -m benchmarks.one_off.nce_steps [STENCIL] [REPEATS]``: fits
``GridGaussian((28, 28), stencil=STENCIL, method="nce", random_state=r)`` to the 60,000
training images (as ``bench_estimators``) for r = 0, 1, ..., REPEATS − 1, each random
state under every variant in turn, and prints each fit's time and the medians:

* ``as shipped``;
* ``halves in turn``: the first phase's data pass and ∇ log Z one after the other
  (the generic ``EnergyModel.likelihood_terms``) instead of in one parallel region
  (``SparseCholesky.factorize_and_invert``);
* ``two reads a class``: NCE's classes by the generic ``EnergyModel.logistic_terms``
  (quadratic forms, then weighted moments) instead of the one-read kernel.

Alternating the variants in one process is the only comparison this virtual machine's
changing speed allows. Run it on an otherwise idle machine.
"""

import sys
import time
import warnings

import numpy as np

from benchmarks._data import mnist
from sparsegauss import GridGaussian
from sparsegauss.models.base import EnergyModel
from sparsegauss.models.grid_gaussian import GridGaussianEnergy

_SHIPPED = (GridGaussianEnergy.likelihood_terms, GridGaussianEnergy.logistic_terms)
VARIANTS = {
    "as shipped": _SHIPPED,
    "halves in turn": (EnergyModel.likelihood_terms, _SHIPPED[1]),
    "two reads a class": (_SHIPPED[0], EnergyModel.logistic_terms),
}


def _fit(X, stencil, variant, random_state, **options):
    GridGaussianEnergy.likelihood_terms, GridGaussianEnergy.logistic_terms = VARIANTS[variant]
    try:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            GridGaussian((28, 28), stencil=stencil, method="nce", random_state=random_state,
                         **options).fit(X)
        return time.perf_counter() - start
    finally:
        GridGaussianEnergy.likelihood_terms, GridGaussianEnergy.logistic_terms = _SHIPPED


def main(stencil=4, repeats=4):
    X, source = mnist("train")
    print(f"{source}, {stencil} neighbours, NCE at its defaults", flush=True)
    for variant in VARIANTS:                     # compile and warm up every path
        _fit(X[:5000], stencil, variant, 1, max_iter=20)
    times = {variant: [] for variant in VARIANTS}
    for random_state in range(repeats):
        for variant in VARIANTS:
            times[variant].append(_fit(X, stencil, variant, random_state))
        print(f"random_state={random_state}: " + ", ".join(
            f"{variant} {values[-1]:.2f} s" for variant, values in times.items()), flush=True)
    print("medians: " + ", ".join(f"{variant} {np.median(values):.2f} s"
                                  for variant, values in times.items()))


if __name__ == "__main__":
    arguments = [int(a) for a in sys.argv[1:]]
    main(*arguments)
