"""NCE (or ranking NCE, CNCE) at its defaults on MNIST with its adaptive schedule split
differently.

``python -m benchmarks.one_off.nce_split STENCIL STATES P+Q[,P+Q...] [METHOD]``, e.g.
``python -m benchmarks.one_off.nce_split 8 10 2000+2000,2500+1000``: for random states
0, …, STATES − 1 and each split, fits ``GridGaussian((28, 28), stencil=STENCIL,
method=METHOD, max_iter=P + Q, random_state=r)`` (METHOD ``nce`` by default, or
``rnce``, ``cnce``) to the 60,000 training images with P steps adapting the noise
(``sparsegauss.estimators.adaptive.ADAPTIVE_STEPS[METHOD]`` set to (P, Q)) and Q in the
second phase; every other parameter at its default (so NCE's estimate is the mean of the
last half of the Q steps, ``SECOND_PHASE_AVERAGE``). It
prints, per fit, the time, the KL divergence from the exact MLE, how far the held-out
log-likelihood (10,000 test images) is below the MLE's (nats/image), the learned minus
the exact log Z of the estimate, whether it converged and how many warnings it raised;
then per split the medians and the worst cases. What NCE is given: the data, and nothing
of the MLE (the MLE is fitted only to score the results).
"""

import json
import sys
import time
import warnings

import numpy as np

from sparsegauss.estimators.adaptive import ADAPTIVE_STEPS
from benchmarks._data import mnist
from sparsegauss import GridGaussian
from sparsegauss.divergence import kl_divergence


def _split(text):
    pilot, rest = text.split("+")
    return int(pilot), int(rest)


def _log_z_gap(model):
    """NCE's learned minus the exact log Z of its estimate; NaN for ranking NCE and
    CNCE, which learn none."""
    estimate = getattr(model, "log_partition_estimate_", None)
    return float("nan") if estimate is None else estimate - model.log_partition_


def main(stencil=8, states=10, splits="2500+1000", method="nce"):
    X, source = mnist("train")
    T, _ = mnist("test")
    splits = [_split(s) for s in splits.split(",")]
    print(f"{source}, {stencil} neighbours, {method} at its defaults but the split", flush=True)
    mle = GridGaussian((28, 28), stencil=stencil).fit(X)
    mle_score = mle.score(T)
    with warnings.catch_warnings():          # compile and warm up
        warnings.simplefilter("ignore")
        GridGaussian((28, 28), stencil=stencil, method=method, max_iter=20).fit(X[:3000])
    shipped = ADAPTIVE_STEPS[method]
    rows = []
    try:
        for random_state in range(states):
            for pilot, rest in splits:
                ADAPTIVE_STEPS[method] = (pilot, rest)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    start = time.perf_counter()
                    model = GridGaussian((28, 28), stencil=stencil, method=method,
                                         max_iter=pilot + rest,
                                         random_state=random_state).fit(X)
                    seconds = time.perf_counter() - start
                row = dict(state=random_state, split=f"{pilot}+{rest}",
                           time=round(seconds, 3), kl=kl_divergence(mle, model),
                           below_mle=mle_score - model.score(T),
                           log_z_gap=_log_z_gap(model),
                           converged=bool(model.converged_), warnings=len(caught))
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        ADAPTIVE_STEPS[method] = shipped
    for pilot, rest in splits:
        chosen = [row for row in rows if row["split"] == f"{pilot}+{rest}"]

        def column(key):
            return np.array([row[key] for row in chosen], dtype=float)

        gaps = np.abs(column("log_z_gap"))
        log_z = ("" if np.isnan(gaps).all()          # ranking NCE, CNCE: no learned log Z
                 else f", |learned − exact log Z| at most {gaps.max():.3f}")
        print(f"{pilot}+{rest}: time median {np.median(column('time')):.2f} s, "
              f"KL median {np.median(column('kl')):.3f} largest {column('kl').max():.3f}, "
              f"held-out at most {column('below_mle').max():.3f} nats/image below the "
              f"MLE's{log_z}, converged {int(column('converged').sum())}/{len(chosen)}, "
              f"warnings {int(column('warnings').sum())}")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main(*(int(a) for a in arguments[:2]), *arguments[2:4])
