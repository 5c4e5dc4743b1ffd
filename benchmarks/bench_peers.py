"""Peers side by side (issue 5): what users would otherwise pick, on the same data.

Data: a known untied 4-neighbour grid Gaussian (:func:`sparsegauss.datasets.make_grid_gaussian`),
2,000 training and 1,000 test samples. Every engine is scored by the exact held-out
log-likelihood of its precision matrix and by KL(truth ‖ estimate), computed densely
(the grids here are small enough).

* ``sparsegauss``: exact MLE, Newton-CG on the sparse Cholesky engine, to KKT residual 1e-8.
* ``dense-numpy``: the same MLE and the same solver on dense NumPy (``np.linalg.cholesky``
  and ``np.linalg.inv`` of the D×D precision at every evaluation): what the exercise's
  students write. Same stopping accuracy, so the same answer.
* ``dense-newton``: the strongest dense MLE we could write
  (:func:`benchmarks.bench_core.dense_newton_mle`: damped Newton with the exact p × p
  Hessian, about ten steps); the ratio that says what the sparse engine gains.
* ``graphical-lasso``: scikit-learn's ``GraphicalLasso`` (what a scikit-learn user picks
  for a sparse precision). It estimates a *dense-pattern* L1-penalized precision, not the
  grid model, so it answers a different question; ``alpha`` is small (0.01) so that it is
  close to the unpenalized MLE, tolerance 1e-4. Limited to D ≤ 1024 (minutes beyond).
* ``torch-nce``: NCE with a dense precision built from θ and gradients by PyTorch autograd
  (the "gradient tape" approach), Adam, the same noise and steps as ``sparsegauss-nce``.
  Skipped when torch is not installed.
* ``sparsegauss-nce``: NCE in sparsegauss (Adam, 2,000 steps, diagonal noise drawn afresh
  at every step, one noise point per data point (ν = 1), as in the torch loop). Not the
  library's default ν: for so few samples of so many parameters that is the smallest
  integer with (1 + ν) N ≥ 4p (:func:`sparsegauss.estimators.nce.default_nu`: 1, 6
  and 13 on the 16², 32² and 48² grids), which makes each step draw and score ν times
  as much noise. Left at its default, this row timed ν = 1, 6 and 13 against the torch
  loop's 1 (2.4, 41 and 266 s, 2026-12-04, AMD EPYC).

The two NCE rows are there to compare the cost of the same 2,000 Adam steps with and
without a gradient tape (their ratio is to sparsegauss's NCE), not accuracy: against the
diagonal noise, with n/p ≈ 2.7, 0.7 and 0.3 on the 16², 32² and 48² grids, the
estimates beyond 16² are far from the MLE (KL to the truth of 6–26 nats where the MLE's
is 0.75–1.7). That is the noise's limit, not NCE's: at its defaults (the adaptive noise,
the default ν) sparsegauss's NCE reaches KL 0.75 on the 32² data (the MLE's 0.745) and
2.46 on the 48² (1.72 with fresh noise; the MLE's 1.71), one random state each,
2026-12-04 (scratch runs of ``GridGaussian((s, s), method="nce", assume_centered=True,
random_state=0).fit(X)`` on this class's data).
"""

import math
import os
import warnings

import numpy as np
import scipy.sparse as sp

from sparsegauss import GridGaussian
from sparsegauss.cholesky import SparseCholesky
from sparsegauss.datasets import make_grid_gaussian
from sparsegauss.estimators.mle import fit_mle
from sparsegauss.grid import GridParameterization
from sparsegauss.stats import pattern_moments

from .bench_core import DenseNormalizer, dense_newton_mle

ENGINES = ["sparsegauss", "dense-numpy", "dense-newton", "graphical-lasso", "sparsegauss-nce",
           "torch-nce"]
N_TRAIN, N_TEST = 2000, 1000
NCE_STEPS = 2000
#: Adam steps of the NCE engines' warm-up (JIT, autograd graph): a full fit would triple
#: the time of the dense autograd case for nothing.
WARMUP_STEPS = 20
GLASSO_ALPHA = 0.01
GLASSO_MAX_PIXELS = 1024
LOG_2PI = math.log(2 * math.pi)


def _dense_logdet(precision):
    """log det of a positive-definite matrix, NaN if it is not positive definite (a
    positive determinant is not enough: two negative eigenvalues have one)."""
    try:
        return 2.0 * float(np.sum(np.log(np.diag(np.linalg.cholesky(precision)))))
    except np.linalg.LinAlgError:
        return math.nan


def _dense_scores(precision, X):
    """Mean exact log-density of the rows of X under N(0, precision⁻¹); NaN if not PD."""
    logdet = _dense_logdet(precision)
    quad = np.einsum("ij,jk,ik->i", X, precision, X)
    return float(np.mean(-0.5 * quad + 0.5 * logdet - 0.5 * X.shape[1] * LOG_2PI))


def _dense_kl(true_precision, precision):
    """KL(N(0, Λ_t⁻¹) ‖ N(0, Λ_e⁻¹)), dense; NaN if Λ_e is not positive definite."""
    sigma = np.linalg.inv(true_precision)
    return 0.5 * (float(np.sum(precision * sigma)) - len(sigma)
                  + _dense_logdet(true_precision) - _dense_logdet(precision))


def torch_nce(X, grid, noise, steps, batch_size=256, learning_rate=1e-2, seed=0):
    """NCE with learned log Z, dense precision and autograd (PyTorch); returns Λ̂ (dense).

    The model is the same untied grid family: θ scattered into a dense D×D matrix (each
    entry of Λ(θ) is one parameter), ``log φ(x) = −½ xᵀΛx`` by dense products, the
    logistic loss of data against fresh ``noise`` samples at every step, Adam with a
    cosine schedule, started at the noise (diagonal) as sparsegauss starts.
    """
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_pixels = grid.n_pixels
    # Where each parameter lands: Λ(1, 2, …, p) holds j + 1 at the entries of θ_j.
    basis = grid.precision(np.arange(1, grid.n_params + 1, dtype=float)).tocoo()
    which = torch.as_tensor(np.rint(basis.data).astype(np.int64) - 1)
    where = torch.as_tensor(basis.row.astype(np.int64) * n_pixels + basis.col)
    variances = X.var(axis=0)
    theta0 = np.zeros(grid.n_params)
    theta0[np.rint(grid.precision(np.arange(1, grid.n_params + 1, dtype=float))
                   .diagonal()).astype(np.int64) - 1] = 1.0 / variances
    theta = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    zeta = torch.tensor(0.5 * n_pixels * LOG_2PI + 0.5 * float(np.sum(np.log(variances))),
                        dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([theta, zeta], lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        batch = X[np.sort(rng.choice(len(X), batch_size, replace=False))]
        y = noise.sample(batch_size, rng)
        precision = torch.zeros(n_pixels * n_pixels, dtype=torch.float64)
        precision = precision.index_add(0, where, theta[which]).reshape(n_pixels, n_pixels)

        def log_ratio(samples):
            u = torch.as_tensor(samples)
            quad = torch.einsum("ij,jk,ik->i", u, precision, u)
            return -0.5 * quad - zeta - torch.as_tensor(noise.score_samples(samples))

        loss = (torch.nn.functional.softplus(-log_ratio(batch)).mean()
                + torch.nn.functional.softplus(log_ratio(y)).mean())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return grid.precision(theta.detach().numpy()).toarray()


class Peers:
    """sparsegauss against dense NumPy, scikit-learn and PyTorch on one synthetic grid."""

    params = [[16, 32, 48], ENGINES]
    param_names = ["side", "engine"]
    quick_params = [[8], ["sparsegauss", "dense-numpy", "dense-newton", "graphical-lasso",
                          "torch-nce"]]
    budget_seconds = 60.0

    def setup(self, side, engine):
        shape = (side, side)
        if engine == "torch-nce":
            try:
                import torch  # noqa: F401
            except ImportError:
                raise NotImplementedError("PyTorch is not installed (pip install torch)")
        if engine == "graphical-lasso":
            try:
                import sklearn  # noqa: F401
            except ImportError:
                raise NotImplementedError("scikit-learn is not installed "
                                          "(pip install scikit-learn)")
            if side * side > GLASSO_MAX_PIXELS:
                raise NotImplementedError(f"GraphicalLasso takes minutes beyond D = "
                                          f"{GLASSO_MAX_PIXELS}")
        self.truth, X = make_grid_gaussian(shape, N_TRAIN + N_TEST, random_state=side)
        self.X, self.X_test = X[:N_TRAIN], X[N_TRAIN:]
        self.grid = GridParameterization(shape, 4)
        self.engine, self.precision = engine, None
        self._fit(engine, WARMUP_STEPS)      # warm-up (JIT, BLAS threads, autograd)

    def time_fit(self, side, engine):
        self._fit(engine, NCE_STEPS)

    def _fit(self, engine, nce_steps):
        if engine == "sparsegauss":
            model = GridGaussian(self.grid.shape, assume_centered=True).fit(self.X)
            self.precision = model.precision_.toarray()
        elif engine == "dense-numpy":
            moments = pattern_moments(self.X, self.grid) / len(self.X)
            result = fit_mle(moments, self.grid, normalizer=DenseNormalizer(self.grid))
            self.precision = self.grid.precision(result.x).toarray()
        elif engine == "dense-newton":
            moments = pattern_moments(self.X, self.grid) / len(self.X)
            theta, _, _ = dense_newton_mle(moments, self.grid)
            self.precision = self.grid.precision(theta).toarray()
        elif engine == "graphical-lasso":
            from sklearn.covariance import GraphicalLasso

            model = GraphicalLasso(alpha=GLASSO_ALPHA, assume_centered=True, tol=1e-4,
                                   max_iter=200).fit(self.X)
            self.precision = model.precision_
        elif engine == "sparsegauss-nce":
            with warnings.catch_warnings():       # separation, indefinite: see above
                warnings.simplefilter("ignore")
                # Fresh noise at every step, as the torch loop draws it: with n/p ≤ 2.7
                # a fixed pool of noise points is overfitted (indefinite on 16×16).
                # ν = 1: the torch loop's noise per step (see the module docstring).
                model = GridGaussian(self.grid.shape, method="nce", optimizer="adam",
                                     max_iter=nce_steps, noise="diagonal", nu=1.0,
                                     noise_sampling="fresh",
                                     assume_centered=True, random_state=0).fit(self.X)
            self.precision = model.precision_.toarray()
        else:
            from sparsegauss.noise import make_noise

            noise = make_noise("diagonal", self.X, self.grid.shape)
            self.precision = torch_nce(self.X, self.grid, noise, nce_steps)

    def peakmem_fit(self, side, engine):
        self.time_fit(side, engine)

    def track_heldout_loglik(self, side, engine):
        return _dense_scores(self.precision, self.X_test)

    def track_kl_truth(self, side, engine):
        return _dense_kl(self.truth.precision_.toarray(), self.precision)


SELINV_ENGINES = ["sparsegauss", "sparsegauss-refactor", "selinv-diag", "selinv-full"]


def random_grid_precision(side, seed=0):
    """A random diagonally dominant 4-neighbour grid precision (side² pixels), as in
    ``bench_core.SelectedInversion``: the parameters and the sparse matrix."""
    rng = np.random.default_rng(seed)
    grid = GridParameterization((side, side), 4)
    fields = np.zeros((grid.n_terms, grid.n_pixels))
    fields[0] = 4.0 + rng.uniform(0, 1, grid.n_pixels)
    fields[1:] = -rng.uniform(0, 0.9, (grid.n_terms - 1, grid.n_pixels))
    theta = grid.project(fields * grid.valid)
    return grid, theta, sp.csc_matrix(grid.precision(theta))


class SelectedInversionPeers:
    """Selected inversion (entries of Σ = Λ⁻¹) against the specialized peers (issue 13).

    Matrix: a random 4-neighbour grid precision, side² pixels. Every engine starts from
    the matrix and ends with Σ's entries; none is given anything another computed.

    * ``sparsegauss``: CHOLMOD's fill-reducing ordering, the library's symbolic and
      numeric supernodal factorization, and Takahashi's recursion on the factor's whole
      pattern (:class:`sparsegauss.cholesky.SparseCholesky`) — what SelInv does in one
      call, except that SelInv is given the ordering.
    * ``sparsegauss-refactor``: the same without the analysis, kept from before — what
      every iteration of a fit pays.
    * ``selinv-diag`` / ``selinv-full``: SelInv (Lin et al. 2011, ``pip install selinv``,
      which needs ``gfortran``, ``cmake`` and ``liblapack-dev`` to build): its own
      symbolic and LDLᵀ factorization and selected inverse, given CHOLMOD's fill-reducing
      permutation so that both factor the same reordered matrix; the diagonal of Σ only,
      or Σ on the whole factor pattern. Skipped when not installed.

    MUMPS (entries of A⁻¹ by ICNTL(30)), which the issue measured 20–118× slower than
    sparsegauss, is not here: ``python-mumps`` 0.0.4 does not build from its sdist
    (its ``_version.py`` fails outside a git checkout) and 0.0.2 built against Debian's
    ``libmumps-seq-dev`` fails to import under NumPy 2.

    SelInv calls the system BLAS (``sparsegauss info`` names it); the library's
    factorization and Takahashi kernels call SciPy's, on one thread. ``track_diagonal_error`` is the largest
    relative difference of the engine's diag(Σ) from a dense-free check, the solve
    ``Λ x = e_p`` for 50 random pixels ``p``.
    """

    params = [[256, 512, 1024], SELINV_ENGINES]
    param_names = ["side", "engine"]
    quick_params = [[64], SELINV_ENGINES]
    budget_seconds = 60.0

    def setup(self, side, engine):
        if side >= 1024 and not os.environ.get("SPARSEGAUSS_BENCH_SLOW"):
            raise NotImplementedError("a minute of set-up; set SPARSEGAUSS_BENCH_SLOW=1 to run it")
        if engine.startswith("selinv"):
            try:
                import selinv  # noqa: F401
            except ImportError:
                raise NotImplementedError("SelInv is not installed (apt-get install gfortran "
                                          "cmake liblapack-dev; pip install selinv)")
        self.grid, self.theta, self.matrix = random_grid_precision(side)
        self.analysis = SparseCholesky(self.matrix)
        self.permutation = self.analysis.permutation.astype(np.int32)
        self.lower_triangle = sp.tril(self.matrix, format="csc")
        pixels = np.random.default_rng(1).choice(self.grid.n_pixels, 50, replace=False)
        factor = self.analysis.factorize(self.matrix)
        unit = np.zeros((self.grid.n_pixels, pixels.size))
        unit[pixels, np.arange(pixels.size)] = 1.0
        self.check = (pixels, factor.solve(unit)[pixels, np.arange(pixels.size)])
        self.diagonal = None
        self.time_selected_inverse(side, engine)           # warm-up (JIT, BLAS threads)

    def time_selected_inverse(self, side, engine):
        n = self.grid.n_pixels
        if engine.startswith("sparsegauss"):
            analysis = SparseCholesky(self.matrix) if engine == "sparsegauss" else self.analysis
            factor = analysis.factorize(self.matrix)
            diagonal = np.arange(n, dtype=np.int64)
            self.diagonal = factor.selected_inverse(diagonal, diagonal)
        elif engine == "selinv-diag":
            from selinv import selinv

            self.diagonal = selinv(self.lower_triangle, self.permutation)
        else:
            from selinv import fullselinv, selinvfull

            self.diagonal = fullselinv(*selinvfull(self.lower_triangle,
                                                   self.permutation)).diag()

    def track_diagonal_error(self, side, engine):
        pixels, exact = self.check
        return float(np.max(np.abs(self.diagonal[pixels] - exact) / exact))


def summarize(results):
    """Time, memory and accuracy of each engine, with ratios to sparsegauss's MLE."""
    values = {}
    for r in results:
        if r["benchmark"].startswith("Peers."):
            side, engine = (part.split("=", 1)[1] for part in r["params"].split(", "))
            entry = values.setdefault(int(side), {}).setdefault(engine, {})
            entry[r["benchmark"].split(".", 1)[1]] = r["median"]
            if "resident_before" in r:
                entry["own_memory"] = r["median"] - r["resident_before"]
    lines = []
    if values:
        lines += _fit_table(values)
    selected = _selected_inversion_table(results)
    if selected:
        lines += ([""] if lines else []) + selected
    return "\n".join(lines)


def _selected_inversion_table(results):
    values = {}
    for r in results:
        if r["benchmark"].startswith("SelectedInversionPeers."):
            side, engine = (part.split("=", 1)[1] for part in r["params"].split(", "))
            values.setdefault(int(side), {}).setdefault(engine, {})[
                r["benchmark"].split(".", 1)[1]] = r["median"]
    if not values:
        return []
    lines = ["| grid | engine | time (s) | × sparsegauss (analysis included) "
             "| max rel. error of diag(Σ) |", "|---|---|---|---|---|"]
    for side, engines in sorted(values.items()):
        reference = engines.get("sparsegauss", {}).get("time_selected_inverse")
        for engine, v in engines.items():
            t = v.get("time_selected_inverse", math.nan)
            ratio = f"{t / reference:.2f}×" if reference else "—"
            lines.append(f"| {side}×{side} | {engine} | {t:.3f} | {ratio} "
                         f"| {v.get('track_diagonal_error', math.nan):.1e} |")
    return lines


def _fit_table(values):
    lines = ["| grid | engine | fit time (s) | × sparsegauss (same estimator) "
             "| fit's own memory (MiB) | held-out LL (nats/sample) | KL(truth‖est) |",
             "|---|---|---|---|---|---|---|"]
    for side, engines in sorted(values.items()):
        for engine, v in engines.items():
            # MLE engines against sparsegauss's MLE, NCE engines against its NCE.
            same = "sparsegauss-nce" if engine.endswith("-nce") else "sparsegauss"
            reference = engines.get(same, {}).get("time_fit")
            t = v.get("time_fit", math.nan)
            ratio = f"{t / reference:.1f}×" if reference else "—"
            lines.append(f"| {side}×{side} | {engine} | {t:.3f} | {ratio} "
                         f"| {v.get('own_memory', math.nan) / 2**20:.0f} "
                         f"| {v.get('track_heldout_loglik', math.nan):.3f} "
                         f"| {v.get('track_kl_truth', math.nan):.4g} |")
    return lines
