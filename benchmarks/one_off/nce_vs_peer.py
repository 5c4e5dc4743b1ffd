"""NCE at its defaults against the dense exact-Newton MLE, the two fits alternated.

``python -m benchmarks.one_off.nce_vs_peer [STENCIL] [ROUNDS]``: on MNIST's 60,000
training images, each round times the peer of ``bench_estimators`` (the data pass and
``bench_core.dense_newton_mle``) and then ``GridGaussian((28, 28), stencil=STENCIL,
method="nce", random_state=0).fit(X)``, and prints both times and their ratio; at the
end the medians and the median of the per-round ratios.

``bench_estimators`` times all repeats of one case before the next, and this virtual
machine's speed drifts by 30 % within minutes: two medians taken a minute apart can
differ by more than the effect measured. Alternating the two fits round by round puts
both under the same drift, and the ratio of each round is a comparison made at one speed.
Run it on an otherwise idle machine.
"""

import sys
import time
import warnings

import numpy as np

from benchmarks._data import mnist
from benchmarks.bench_core import dense_newton_mle
from sparsegauss import GridGaussian
from sparsegauss.grid import GridParameterization
from sparsegauss.stats import pattern_moments


def _peer(X, stencil):
    start = time.perf_counter()
    grid = GridParameterization((28, 28), stencil)
    dense_newton_mle(pattern_moments(X, grid, center=X.mean(axis=0)) / len(X), grid)
    return time.perf_counter() - start


def _nce(X, stencil, **options):
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        GridGaussian((28, 28), stencil=stencil, method="nce", random_state=0,
                     **options).fit(X)
    return time.perf_counter() - start


def main(stencil=4, rounds=7):
    X, source = mnist("train")
    print(f"{source}, {stencil} neighbours: dense exact-Newton MLE (peer) and NCE at its "
          "defaults, alternated", flush=True)
    _peer(X[:5000], stencil)                      # compile and warm up both paths
    _nce(X[:5000], stencil, max_iter=20)
    peer, nce = [], []
    for round_ in range(rounds):
        peer.append(_peer(X, stencil))
        nce.append(_nce(X, stencil))
        print(f"round {round_}: peer {peer[-1]:.2f} s, NCE {nce[-1]:.2f} s, "
              f"ratio {nce[-1] / peer[-1]:.2f}", flush=True)
    ratios = np.array(nce) / np.array(peer)
    print(f"medians: peer {np.median(peer):.2f} s, NCE {np.median(nce):.2f} s; median "
          f"ratio {np.median(ratios):.2f} (NCE faster in {int(np.sum(ratios < 1))} of "
          f"{rounds} rounds)")


if __name__ == "__main__":
    arguments = [int(a) for a in sys.argv[1:]]
    main(*arguments)
