"""Core benchmarks (issue 2): data passes, exact MLE against dense NumPy, selected inversion.

Each class follows asv's conventions (``params``, ``setup`` that warms up the JIT,
``time_*``); ``python -m benchmarks`` runs them without asv and reports medians.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit, prange

from sparsegauss._random import standard_normal
from sparsegauss.estimators.mle import dense_hessian, fit_mle, kkt_residual
from sparsegauss.exceptions import NotPositiveDefiniteError
from sparsegauss.grid import GridParameterization
from sparsegauss.normalization import LOG_2PI, GridNormalizer
from sparsegauss.stats import pattern_moments, quadratic_forms

from ._data import mnist


@njit(parallel=True, cache=True)
def _stream_sum(X):
    """Read every element once: the attainable read bandwidth.

    Called on an unsigned-integer view of the data: integer sums are associative, so
    LLVM vectorizes them and the loop is limited by memory, not by a chain of additions.
    """
    total = 0
    for i in prange(X.shape[0]):
        acc = 0
        for j in range(X.shape[1]):
            acc += X[i, j]
        total += acc
    return total


class DataPasses:
    """One pass over MNIST's 60,000 x 784 training images, against a pure read of them."""

    params = [["float64", "float32"]]
    param_names = ["dtype"]
    quick_params = [["float64"]]

    def setup(self, dtype):
        X, self.source = mnist("train")
        self.X = np.ascontiguousarray(X.astype(dtype))
        self.raw = self.X.view(np.uint64 if dtype == "float64" else np.uint32)
        self.grid = GridParameterization((28, 28), 4)
        self.fields = self.grid.fields(np.ones(self.grid.n_params))
        self.bytes = self.X.nbytes
        self.time_read(dtype)
        self.time_pattern_moments(dtype)
        self.time_quadratic_forms(dtype)

    def track_gigabytes(self, dtype):
        return self.bytes / 1e9

    def time_read(self, dtype):
        _stream_sum(self.raw)

    def time_pattern_moments(self, dtype):
        pattern_moments(self.X, self.grid)

    def time_quadratic_forms(self, dtype):
        quadratic_forms(self.X, self.grid, self.fields)


class DenseNormalizer:
    """The same ``log Z`` and gradient with dense NumPy (what a student writes)."""

    def __init__(self, grid):
        self.grid = grid
        self.rows, self.cols = grid.pair_indices()

    def value_and_grad(self, theta):
        precision = self.grid.precision(theta).toarray()
        try:
            chol = np.linalg.cholesky(precision)
        except np.linalg.LinAlgError as exc:      # the line search backtracks on this
            raise NotPositiveDefiniteError(str(exc)) from exc
        logdet = 2.0 * np.sum(np.log(np.diag(chol)))
        sigma = np.linalg.inv(precision)
        covariance = self.grid.scatter_pairs(sigma[self.rows, self.cols])
        grad = -0.5 * self.grid.adjoint(self.grid.multiplicity[:, None] * covariance)
        return 0.5 * self.grid.n_pixels * LOG_2PI - 0.5 * logdet, grad, covariance

    def value_and_grad_pairs(self, theta):
        """:meth:`value_and_grad` with Σ in pair order (what ``fit_mle`` asks for)."""
        log_z, grad, covariance = self.value_and_grad(theta)
        return log_z, grad, covariance.reshape(-1)[self.grid._valid_flat]


def dense_newton_mle(moments, grid, *, tol=1e-8, max_iter=50):
    """The strongest dense MLE we could write: damped Newton with the exact Hessian.

    Untied grids only. With ``Λ(θ) = Σ_j θ_j A_j``, ``A_j = c_j (E_pq + E_qp)`` (``c = ½``
    on the diagonal, where p = q, and 1 on an edge), the loss ``−ℓ = −½ log det Λ +
    ½ tr(ΛS)`` has gradient ``c_j (S − Σ)_pq`` and Hessian
    ``H_jl = ½ tr(Σ A_j Σ A_l) = c_j c_l (Σ_pr Σ_qs + Σ_ps Σ_qr)`` for ``j = (p, q)``,
    ``l = (r, s)``: one dense inverse per step gives Σ, a compiled loop H
    (:func:`sparsegauss.estimators.mle.dense_hessian`; with four NumPy gathers instead,
    until 2026-12-03, the peer took 2.9–3.2 s and 10.1–10.2 s on MNIST, against
    1.8 s and 4.4–4.7 s), and one
    Cholesky solve the Newton step, backtracked until Λ stays positive definite and the
    loss decreases (Armijo). Stops at the same KKT residual as the sparse solver.

    Returns
    -------
    theta : ndarray
    loss : float
        Negative mean log-likelihood (the sparse solver's ``fun``).
    n_iter : int
    """
    from scipy.linalg import cho_factor, cho_solve

    if grid.tying != "untied":
        raise ValueError("dense_newton_mle handles untied grids only.")
    rows, cols = grid.pair_indices()
    c = np.where(rows == cols, 0.5, 1.0)
    s_pattern = np.asarray(moments, dtype=np.float64).reshape(-1)[grid._valid_flat]
    scale = np.sqrt(moments[0][rows] * moments[0][cols])
    constant = 0.5 * grid.n_pixels * LOG_2PI

    def loss_and_sigma(theta):
        try:
            chol = np.linalg.cholesky(grid.precision(theta).toarray())
        except np.linalg.LinAlgError:
            return np.inf, None
        inverse_chol = np.linalg.inv(chol)
        sigma = inverse_chol.T @ inverse_chol
        loss = (constant - np.sum(np.log(np.diag(chol)))
                + float(np.sum(theta * 2 * c * s_pattern)) / 2)
        return loss, sigma

    theta = np.zeros(grid.n_params)
    theta[rows == cols] = 1.0 / s_pattern[rows == cols]
    loss, sigma = loss_and_sigma(theta)
    for iteration in range(1, max_iter + 1):
        mismatch = s_pattern - sigma[rows, cols]
        if np.max(np.abs(mismatch) / scale) <= tol:
            return theta, loss, iteration - 1
        grad = c * mismatch
        step = -cho_solve(cho_factor(dense_hessian(sigma, grid), overwrite_a=True), grad)
        t, slope = 1.0, float(grad @ step)
        while True:
            trial_loss, trial_sigma = loss_and_sigma(theta + t * step)
            if trial_loss <= loss + 1e-4 * t * slope:
                break
            t *= 0.5
            if t < 1e-12:
                raise RuntimeError("dense Newton: the line search failed")
        theta, loss, sigma = theta + t * step, trial_loss, trial_sigma
    mismatch = s_pattern - sigma[rows, cols]
    if np.max(np.abs(mismatch) / scale) > tol:
        raise RuntimeError(f"dense Newton did not reach the KKT tolerance in {max_iter} steps")
    return theta, loss, max_iter


class MLEFit:
    """Exact MLE on MNIST's training set: sparse engine against dense NumPy.

    Engines: ``sparse`` (sparsegauss: truncated Newton-CG on CHOLMOD and selected
    inversion); ``dense-newton`` (:func:`dense_newton_mle`, exact-Hessian Newton with
    dense NumPy: the strongest dense peer); ``dense`` (sparsegauss's own Newton-CG with
    dense NumPy linear algebra: a weak peer, hundreds of dense inverses, kept to show
    what the sparse engine alone buys).
    """

    params = [[4, 8], ["sparse", "dense-newton", "dense"]]
    param_names = ["stencil", "engine"]
    quick_params = [[4], ["sparse"]]

    def setup(self, stencil, engine):
        X, self.source = mnist("train")
        self.grid = GridParameterization((28, 28), stencil)
        self.moments = pattern_moments(X, self.grid) / len(X)
        self.engine = engine
        self.time_fit(stencil, engine)

    def time_fit(self, stencil, engine):
        if engine == "dense-newton":
            theta, loss, n_iter = dense_newton_mle(self.moments, self.grid)
            self.result = dict(x=theta, fun=loss, nit=n_iter, nfev=n_iter + 1)
            return
        normalizer = (GridNormalizer(self.grid) if engine == "sparse"
                      else DenseNormalizer(self.grid))
        self.result = fit_mle(self.moments, self.grid, normalizer=normalizer)

    def track_loglik(self, stencil, engine):
        """Mean training log-likelihood per image at the optimum (nats)."""
        return -self.result["fun"]

    def track_iterations(self, stencil, engine):
        return self.result["nit"]

    def track_factorizations(self, stencil, engine):
        return self.result["nfev"]


def smoothed_images(n_images, shape, sigma, seed=0):
    """White-noise images blurred by a Gaussian of ``sigma`` pixels, centred, flattened:
    strongly correlated neighbours, the hard case for the MLE's Newton solver."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    images = gaussian_filter(rng.standard_normal((n_images, *shape)), sigma=(0, sigma, sigma))
    X = images.reshape(n_images, -1)
    return X - X.mean(axis=0)


class MLEHardData:
    """Exact MLE on strongly correlated data: smoothed images, many and few.

    ``smooth500-20x24-s1.25`` / ``-s2``: 500 white-noise 20 × 24 images blurred by a
    Gaussian of 1.25 / 2 pixels; ``smooth30-40x40-s1``: 30 images of 40 × 40 blurred by
    1 pixel (fewer images than the 8-neighbour model's 7,800 parameters). The dense peer
    runs on the 20 × 24 cases only (on 40 × 40 its p × p Hessian has 7,800² entries).
    ``track_residual`` is the KKT residual reached (tol 1e-8): a row above it did not
    converge in 100 Newton steps.
    """

    params = [["smooth500-20x24-s1.25", "smooth500-20x24-s2", "smooth30-40x40-s1"], [4, 8],
              ["sparse", "dense-newton"]]
    param_names = ["data", "stencil", "engine"]
    quick_params = [["smooth500-20x24-s1.25"], [4], ["sparse"]]
    _DATA = {"smooth500-20x24-s1.25": (500, (20, 24), 1.25),
             "smooth500-20x24-s2": (500, (20, 24), 2.0),
             "smooth30-40x40-s1": (30, (40, 40), 1.0)}

    def setup(self, data, stencil, engine):
        n_images, shape, sigma = self._DATA[data]
        if engine == "dense-newton" and shape == (40, 40):
            raise NotImplementedError("the dense peer's Hessian on 40 x 40 has 7,800² entries")
        X = smoothed_images(n_images, shape, sigma)
        self.grid = GridParameterization(shape, stencil)
        self.moments = pattern_moments(X, self.grid) / n_images
        self.time_fit(data, stencil, engine)

    def time_fit(self, data, stencil, engine):
        if engine == "dense-newton":
            theta, loss, n_iter = dense_newton_mle(self.moments, self.grid, max_iter=100)
            self.result = dict(x=theta, fun=loss, nit=n_iter)
            return
        self.result = fit_mle(self.moments, self.grid)

    def track_residual(self, data, stencil, engine):
        """The KKT residual of the returned θ, recomputed by the sparse engine for both."""
        normalizer = GridNormalizer(self.grid)
        covariance = normalizer.covariance_fields(normalizer.factorize(self.result["x"]))
        return kkt_residual(covariance, self.moments, self.grid)

    def track_iterations(self, data, stencil, engine):
        return self.result["nit"]

    def track_loglik(self, data, stencil, engine):
        return -self.result["fun"]


class SelectedInversion:
    """Refactorization + selected inversion against CHOLMOD's factorization alone.

    ``time_factorize``: CHOLMOD's numeric factorization (scikit-sparse's
    ``cholesky_inplace``, OpenBLAS's default threads), the reference of issue 13's goals;
    ``time_factorize_kernel``: the library's own supernodal refactorization into the same
    structure (one BLAS thread), what a fit pays; ``time_factorize_and_selected_inverse``:
    that plus Takahashi's recursion and reading Σ on the pattern (one gradient of log Z).
    """

    params = [[64, 128, 256, 512, 1024]]
    param_names = ["side"]
    quick_params = [[64]]

    def setup(self, side):
        if side >= 1024 and not os.environ.get("SPARSEGAUSS_BENCH_SLOW"):
            raise NotImplementedError("a minute of set-up; set SPARSEGAUSS_BENCH_SLOW=1 to run it")
        rng = np.random.default_rng(0)
        self.grid = GridParameterization((side, side), 4)
        fields = np.zeros((self.grid.n_terms, self.grid.n_pixels))
        fields[0] = 4.0 + rng.uniform(0, 1, self.grid.n_pixels)
        fields[1:] = -rng.uniform(0, 0.9, (self.grid.n_terms - 1, self.grid.n_pixels))
        self.theta = self.grid.project(fields * self.grid.valid)
        self.normalizer = GridNormalizer(self.grid)
        self.matrix = self.grid.precision(self.theta)
        self.time_factorize(side)
        self.time_factorize_kernel(side)
        self.time_factorize_and_selected_inverse(side)

    def time_factorize(self, side):
        self.normalizer.analysis.cholmod.cholesky_inplace(self.matrix)

    def time_factorize_kernel(self, side):
        self.normalizer.analysis.factorize(self.matrix)

    def time_factorize_and_selected_inverse(self, side):
        factor = self.normalizer.factorize(self.theta)
        self.normalizer.covariance_fields(factor)

    def track_factor_nnz(self, side):
        return self.normalizer.factorize(self.theta).lower().nnz


class ExactSampling:
    """256 exact samples of a 28×28 grid Gaussian (a step of fresh-noise NCE, or of CD
    with exact samples) and their squared norms, against the same draw made of NumPy's
    normals and CHOLMOD's solve (``GridGaussianDistribution``'s path for large grids:
    ``Generator.standard_normal`` and scikit-sparse's ``solve_Lt``, OpenBLAS's default
    threads). The peer draws its normals on both cores, half the rows each from its own
    Generator (NumPy releases the GIL while it fills an array: 1.8–1.9 ms on one thread,
    1.0–1.1 ms on two, 2026-12-03). ``time_normals`` / ``time_numpy_normals``: the
    200,704 normals alone, the library's ziggurat on one thread against NumPy's on two.
    Each call makes :attr:`draws` draws (one takes under a millisecond);
    :func:`summarize` reports the time of one."""

    params = [[4, 8]]
    param_names = ["stencil"]
    quick_params = [[4]]
    n_samples = 256
    draws = 20

    def setup(self, stencil):
        rng = np.random.default_rng(0)
        grid = GridParameterization((28, 28), stencil)
        fields = np.zeros((grid.n_terms, grid.n_pixels))
        # Couplings of either sign and a diagonal that dominates them: positive definite.
        fields[1:] = rng.uniform(-0.4, 0.4, (grid.n_terms - 1, grid.n_pixels))
        fields[0] = 1.0 + 2.0 * (grid.n_terms - 1) * 0.4
        self.factor = GridNormalizer(grid).factorize(grid.project(fields * grid.valid))
        self.out = np.empty((self.n_samples, grid.n_pixels))
        self.normals = np.empty_like(self.out)
        self.squared_norms = np.empty(self.n_samples)
        self.generators = np.random.default_rng(1).spawn(2)
        self.threads = ThreadPoolExecutor(2)
        half = self.n_samples // 2
        self.halves = [self.normals[:half], self.normals[half:]]
        self.time_sample(stencil)
        self.time_numpy_and_cholmod(stencil)
        self.time_normals(stencil)

    def time_sample(self, stencil):
        for seed in range(self.draws):
            self.factor.sample(self.n_samples, seed, out=self.out,
                               squared_norms=self.squared_norms)

    def teardown(self, stencil):
        self.threads.shutdown()

    def _numpy_normals(self):
        """NumPy's normals into ``self.normals``, half the rows on each thread."""
        list(self.threads.map(lambda k: self.generators[k].standard_normal(
            out=self.halves[k]), range(2)))

    def time_numpy_and_cholmod(self, stencil):
        for _ in range(self.draws):
            self._numpy_normals()
            np.einsum("ij,ij->i", self.normals, self.normals, out=self.squared_norms)
            self.factor.unwhiten(self.normals, out=self.out)

    def time_normals(self, stencil):
        for seed in range(self.draws):
            standard_normal(None, self.normals.shape, out=self.normals, seed=seed)

    def time_numpy_normals(self, stencil):
        for _ in range(self.draws):
            self._numpy_normals()


def summarize(results):
    """Ratios docs/performance.md quotes, from one run's medians."""
    lines = []
    med = {(r["benchmark"], r["params"]): r["median"] for r in results}
    for stencil in (4, 8):
        sparse = med.get(("MLEFit.time_fit", f"stencil={stencil}, engine=sparse"))
        ll_s = med.get(("MLEFit.track_loglik", f"stencil={stencil}, engine=sparse"))
        for engine, label in (("dense-newton", "dense exact-Newton NumPy (strongest peer)"),
                              ("dense", "dense NumPy with sparsegauss's Newton-CG")):
            dense = med.get(("MLEFit.time_fit", f"stencil={stencil}, engine={engine}"))
            ll_d = med.get(("MLEFit.track_loglik", f"stencil={stencil}, engine={engine}"))
            if sparse and dense:
                agreement = ("" if ll_s is None or ll_d is None else
                             f"; log-likelihood {ll_s:.6f} vs {ll_d:.6f} nats/image")
                lines.append(f"- {stencil}-neighbour MLE: sparse {sparse:.3f} s, {label} "
                             f"{dense:.3f} s: **{dense / sparse:.1f}x** faster{agreement}")
    for data in MLEHardData.params[0]:
        for stencil in (4, 8):
            label = f"data={data}, stencil={stencil}, engine="
            sparse = med.get(("MLEHardData.time_fit", label + "sparse"))
            if sparse is None:
                continue
            steps = med.get(("MLEHardData.track_iterations", label + "sparse"))
            residual = med.get(("MLEHardData.track_residual", label + "sparse"))
            dense = med.get(("MLEHardData.time_fit", label + "dense-newton"))
            peer = f"; dense exact-Newton {dense:.3f} s" if dense else ""
            lines.append(f"- {data}, {stencil}-neighbour MLE: {sparse:.3f} s, {steps:.0f} "
                         f"Newton steps, KKT residual {residual:.1e}"
                         f"{'' if residual <= 1e-8 else ' (NOT converged)'}{peer}")
    for side in (64, 128, 256, 512, 1024):
        fac = med.get(("SelectedInversion.time_factorize", f"side={side}"))
        both = med.get(("SelectedInversion.time_factorize_and_selected_inverse", f"side={side}"))
        own = med.get(("SelectedInversion.time_factorize_kernel", f"side={side}"))
        if fac and both:
            kernel = "" if own is None else f", the library's refactorization {own:.3f} s"
            lines.append(f"- {side}x{side} grid: CHOLMOD's factorization {fac:.3f} s{kernel}, "
                         f"refactorization + selected inversion {both:.3f} s: "
                         f"**{both / fac:.2f}x** CHOLMOD's factorization")
    for stencil in (4, 8):
        own = med.get(("ExactSampling.time_sample", f"stencil={stencil}"))
        peer = med.get(("ExactSampling.time_numpy_and_cholmod", f"stencil={stencil}"))
        normals = med.get(("ExactSampling.time_normals", f"stencil={stencil}"))
        numpy_normals = med.get(("ExactSampling.time_numpy_normals", f"stencil={stencil}"))
        if own and peer and normals and numpy_normals:
            per_draw = 1e3 / ExactSampling.draws
            lines.append(f"- 256 exact samples, {stencil}-neighbour 28x28 grid: "
                         f"{own * per_draw:.2f} ms; NumPy's normals + CHOLMOD's solve "
                         f"{peer * per_draw:.2f} ms (**{peer / own:.1f}x**); the normals "
                         f"alone {normals * per_draw:.2f} ms against NumPy's "
                         f"{numpy_normals * per_draw:.2f} ms")
    for dtype in ("float64", "float32"):
        read = med.get(("DataPasses.time_read", f"dtype={dtype}"))
        for name in ("pattern_moments", "quadratic_forms"):
            t = med.get((f"DataPasses.time_{name}", f"dtype={dtype}"))
            gb = med.get(("DataPasses.track_gigabytes", f"dtype={dtype}"))
            if read and t and gb:
                lines.append(f"- {name} ({dtype}): {t:.3f} s = {gb / t:.1f} GB/s; a pure read "
                             f"of the same array: {read:.3f} s = {gb / read:.1f} GB/s "
                             f"({read / t:.0%} of read bandwidth)")
    return "\n".join(lines)
