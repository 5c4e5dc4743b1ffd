"""Compare estimators of the same 4-neighbour model on MNIST, scored exactly.

Exact MLE is the reference; NCE, conditional NCE and score matching (its closed form is
indefinite on MNIST, so the positive-definite barrier variant is used) are compared by
held-out log-likelihood and KL divergence to the MLE; an estimate that is not positive
definite (short CNCE runs can end there) is reported as such.
"""

import sys
import time
import warnings
from pathlib import Path

from sparsegauss import GridGaussian, kl_divergence
from sparsegauss.datasets import load_mnist, scale_and_noise
from sparsegauss.plotting import plot_comparison

out = Path(sys.argv[1] if len(sys.argv) > 1 else "example-output")
out.mkdir(parents=True, exist_ok=True)

images, _ = load_mnist("test", download=False)
X = scale_and_noise(images, noise_std=0.1, random_state=0)
train, test = X[:3000], X[8000:]

settings = {"mle": dict(method="mle"),
            "nce": dict(method="nce", optimizer="adam", max_iter=500),
            "cnce": dict(method="cnce", optimizer="adam", max_iter=300),
            "sm (barrier)": dict(method="sm", sm_solver="barrier")}
rows, mle = [], None
for name, params in settings.items():
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # short stochastic runs: no convergence claim
        model = GridGaussian((28, 28), random_state=0, **params).fit(train)
    seconds = time.perf_counter() - start
    mle = mle or model
    if not model.is_positive_definite_:
        # Unnormalized estimators are not constrained to the positive-definite cone.
        rows.append(dict(estimator=name, stencil=4, test_loglik=float("nan")))
        print(f"{name:<13} not positive definite: no likelihood ({seconds:.2f} s)")
        continue
    rows.append(dict(estimator=name, stencil=4, test_loglik=model.score(test)))
    print(f"{name:<13} held-out {model.score(test):8.2f}  KL to MLE "
          f"{kl_divergence(mle, model):7.3f}  {seconds:6.2f} s")

plot_comparison(rows, title="Estimators, 4 neighbours, 3,000 MNIST images").savefig(
    out / "compare_estimators.png", dpi=100)
print(f"wrote {out / 'compare_estimators.png'}")
