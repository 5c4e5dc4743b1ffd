"""Fit MNIST by exact maximum likelihood and look at the couplings and samples.

Uses the 10,000 test images bundled with sparsegauss (offline): scaled to [0, 1],
N(0, 0.1²) pixel noise added, mean subtracted; 8,000 to fit, 2,000 held out.
"""

import sys
from pathlib import Path

from sparsegauss import GridGaussian
from sparsegauss.datasets import load_mnist, scale_and_noise
from sparsegauss.plotting import plot_couplings, plot_sampler_comparison

out = Path(sys.argv[1] if len(sys.argv) > 1 else "example-output")
out.mkdir(parents=True, exist_ok=True)

images, _ = load_mnist("test", download=False)
X = scale_and_noise(images, noise_std=0.1, random_state=0)
train, test = X[:8000], X[8000:]

model = GridGaussian((28, 28), stencil=4).fit(train)
print(f"{model.n_iter_} Newton steps; held-out log-likelihood {model.score(test):.2f} "
      f"nats/image; exact log Z = {model.log_partition_:.2f}")

plot_couplings(model).savefig(out / "mnist_mle_couplings.png", dpi=100)
plot_sampler_comparison(model, n_samples=16).savefig(out / "mnist_mle_samples.png", dpi=100)
print(f"wrote {out / 'mnist_mle_couplings.png'} and {out / 'mnist_mle_samples.png'}")
