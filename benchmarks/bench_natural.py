"""The natural-image study's costs (issue 11): patch extraction, and one epoch of deep
energy model training per method against the floor of its matrix products.

An epoch is ⌈50,000 / 256⌉ = 196 Adam steps (NCE's noise pool drawn beforehand, as it
is once per fit) of the estimator's objective on patches
whitened by their grid Gaussian (H = K = 64, D = 784). The floor of a method is the same
step's matrix products (shapes counted from :class:`~sparsegauss.models.DeepEnergy`'s
code) on random arrays, done by BLAS alone, timed in the same run: how far the
estimator's NumPy code is from the matrix arithmetic it cannot avoid.

* NCE: the forward pass (``XVᵀ``, ``gWᵀ``) and the gradient (``qW``, ``mᵀX``, ``qᵀg``)
  on the 256 data and 256 noise rows.
* CD: the same gradient on the data and 256 negatives, plus 5 MALA steps on 256 rows,
  each a forward pass and a score (``XVᵀ``, ``gWᵀ``, ``mV``).
* score matching: forward pass, score, the Gram ``VVᵀ``, the Laplacian's ``(nK × H)(H ×
  H)`` and ``(H × nK)(nK × H)`` products, and the score's vector-Jacobian products.
"""

import math

import numpy as np

from sparsegauss.estimators._driver import OptimizerOptions
from sparsegauss.estimators.cd import CDOptions, fit_cd
from sparsegauss.estimators.nce import NCEOptions, fit_nce
from sparsegauss.estimators.score_matching import fit_sm_gradient
from sparsegauss.models import DeepEnergy
from sparsegauss.noise import DiagonalNoise
from sparsegauss.photos import extract_patches, load_natural_images
from sparsegauss.whitening import GridWhitening

N_PATCHES = 50_000
BATCH = 256
H = K = 64
CD_STEPS = 5


def _patches(n_patches):
    return extract_patches(load_natural_images(), n_patches, random_state=0)


class PatchExtraction:
    """50,000 random 28 × 28 patches from the ten bundled photographs."""

    params = [[N_PATCHES]]
    param_names = ["n_patches"]
    quick_params = [[5_000]]

    def setup(self, n_patches):
        self.images = load_natural_images()

    def time_extract(self, n_patches):
        extract_patches(self.images, n_patches, random_state=0)


class _Predrawn:
    """N(0, I) noise whose samples were drawn in set-up: NCE's pool of νN points is
    drawn once per fit (0.4 s for 50,000 × 784), not once per epoch, so the epoch is
    timed without it."""

    def __init__(self, samples):
        self.samples = samples
        self._noise = DiagonalNoise(np.ones(samples.shape[1]))

    def sample(self, n_samples, random_state=None):
        return self.samples[:n_samples]

    def score_samples(self, X):
        return self._noise.score_samples(X)


def _floor_step(method, rng, D):
    """The matrix products of one step of ``method`` on random arrays (see the module
    docstring); returns a function that does them."""
    V, W = rng.standard_normal((H, D)), rng.standard_normal((K, H))
    X, X2 = rng.standard_normal((BATCH, D)), rng.standard_normal((BATCH, D))
    g, m = rng.random((BATCH, H)), rng.standard_normal((BATCH, H))
    q = rng.random((BATCH, K))
    A = rng.standard_normal((BATCH * K, H))

    def gradient(rows):
        rows @ V.T
        g @ W.T
        q @ W                             # back through W
        m.T @ rows
        q.T @ g

    def forward_and_score(rows):
        rows @ V.T
        g @ W.T
        m @ V

    if method == "nce":
        return lambda: (gradient(X), gradient(X2))
    if method == "cd":
        def step():
            gradient(X)
            gradient(X2)
            for _ in range(CD_STEPS):
                forward_and_score(X2)
        return step

    def score_matching():
        forward_and_score(X)              # score
        V @ V.T                           # Gram
        A @ (V @ V.T)                     # A G
        A.T @ A                           # Σ_n Σ_k q' a aᵀ
        X @ V.T                           # V y
        m.T @ X                           # V̄ of the vjp and of the Laplacian
        m.T @ X
    return score_matching


class DEMEpoch:
    """One epoch of DEM training per method, and the BLAS floor of the same products."""

    params = [["nce", "sm", "cd"], [N_PATCHES]]
    param_names = ["method", "n_patches"]
    quick_params = [["nce", "sm", "cd"], [2_000]]
    budget_seconds = 120.0

    def setup(self, method, n_patches):
        patches = _patches(n_patches)
        self.Z = GridWhitening((28, 28), method="symmetric").fit_transform(patches)
        self.n_steps = math.ceil(len(self.Z) / BATCH)
        self.model = DeepEnergy(self.Z.shape[1], H, K)
        self.theta0 = self.model.initial_params(0)
        self.floor = _floor_step(method, np.random.default_rng(0), self.Z.shape[1])
        self.noise = _Predrawn(np.random.default_rng(1).standard_normal(self.Z.shape))
        self.steps_seconds = []

    def time_epoch(self, method, n_patches):
        optimizer = OptimizerOptions(optimizer="adam", tol=0.0, max_iter=self.n_steps,
                                     batch_size=BATCH)
        scale = np.ones(self.model.n_params)
        rng = np.random.default_rng(0)
        if method == "nce":
            result = fit_nce(self.model, self.Z, self.noise, theta0=self.theta0, scale=scale,
                             options=NCEOptions(), optimizer=optimizer, rng=rng)
        elif method == "sm":
            result = fit_sm_gradient(self.model, self.Z, theta0=self.theta0, scale=scale,
                                     optimizer=optimizer, rng=rng)
        else:
            result = fit_cd(self.model, self.Z, theta0=self.theta0, scale=scale,
                            options=CDOptions(cd_steps=CD_STEPS), optimizer=optimizer,
                            rng=rng)
        times = [row["time"] for row in result.history]
        self.steps_seconds.append((times[-1] - times[0]) * len(times) / (len(times) - 1))

    def track_steps_seconds(self, method, n_patches):
        """The epoch's steps alone, median over the timed epochs (from each fit's own
        per-step clock, first to last step, scaled to all steps): without the
        once-per-fit set-up (NCE scores the data and its noise pool under the noise
        density, ~0.15 s here)."""
        return float(np.median(self.steps_seconds))

    def time_blas_floor(self, method, n_patches):
        for _ in range(self.n_steps):
            self.floor()


def summarize(results):
    """Epoch against floor, per method (docs/performance.md's table)."""
    values = {}
    for r in results:
        if r["benchmark"].startswith("DEMEpoch."):
            values.setdefault(r["params"], {})[r["benchmark"].split(".", 1)[1]] = r["median"]
    if not values:
        return ""
    lines = ["| method | epoch with set-up (s) | its steps (s) | BLAS floor (s) | ratio "
             "(steps / floor) |", "|---|---|---|---|---|"]
    for params, v in values.items():
        epoch, floor = v.get("time_epoch"), v.get("time_blas_floor")
        steps = v.get("track_steps_seconds")
        if epoch is None or floor is None or steps is None:
            continue
        method = params.split(", ")[0].split("=", 1)[1]
        lines.append(f"| {method} | {epoch:.2f} | {steps:.2f} | {floor:.2f} "
                     f"| {steps / floor:.1f}× |")
    return "\n".join(lines)
