"""Core benchmarks (issue 2): data passes, exact MLE against dense NumPy, selected inversion.

Each class follows asv's conventions (``params``, ``setup`` that warms up the JIT,
``time_*``); ``python -m benchmarks`` runs them without asv and reports medians.
"""

import os

import numpy as np
from numba import njit, prange

from sparsegauss.estimators.mle import fit_mle
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


class MLEFit:
    """Exact MLE on MNIST's training set: sparse engine against dense NumPy, same solver."""

    params = [[4, 8], ["sparse", "dense"]]
    param_names = ["stencil", "engine"]
    quick_params = [[4], ["sparse"]]

    def setup(self, stencil, engine):
        X, self.source = mnist("train")
        self.grid = GridParameterization((28, 28), stencil)
        self.moments = pattern_moments(X, self.grid) / len(X)
        self.engine = engine
        self.time_fit(stencil, engine)

    def time_fit(self, stencil, engine):
        normalizer = (GridNormalizer(self.grid) if engine == "sparse"
                      else DenseNormalizer(self.grid))
        self.result = fit_mle(self.moments, self.grid, normalizer=normalizer)

    def track_loglik(self, stencil, engine):
        """Mean training log-likelihood per image at the optimum (nats)."""
        return -self.result.fun

    def track_iterations(self, stencil, engine):
        return self.result.nit

    def track_factorizations(self, stencil, engine):
        return self.result.nfev


class SelectedInversion:
    """Refactorization + selected inversion against CHOLMOD's factorization alone."""

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
        self.time_factorize_and_selected_inverse(side)

    def time_factorize(self, side):
        self.normalizer.analysis._factor.cholesky_inplace(self.matrix)

    def time_factorize_and_selected_inverse(self, side):
        factor = self.normalizer.factorize(self.theta)
        self.normalizer.covariance_fields(factor)

    def track_factor_nnz(self, side):
        return self.normalizer.factorize(self.theta).lower().nnz


def summarize(results):
    """Ratios the README quotes, from one run's medians."""
    lines = []
    med = {(r["benchmark"], r["params"]): r["median"] for r in results}
    for stencil in (4, 8):
        sparse = med.get(("MLEFit.time_fit", f"stencil={stencil}, engine=sparse"))
        dense = med.get(("MLEFit.time_fit", f"stencil={stencil}, engine=dense"))
        ll_s = med.get(("MLEFit.track_loglik", f"stencil={stencil}, engine=sparse"))
        ll_d = med.get(("MLEFit.track_loglik", f"stencil={stencil}, engine=dense"))
        if sparse and dense:
            lines.append(f"- {stencil}-neighbour MLE: sparse {sparse:.3f} s, dense NumPy "
                         f"{dense:.3f} s: **{dense / sparse:.1f}x** faster; log-likelihood "
                         f"{ll_s:.6f} vs {ll_d:.6f} nats/image")
    for side in (64, 128, 256, 512, 1024):
        fac = med.get(("SelectedInversion.time_factorize", f"side={side}"))
        both = med.get(("SelectedInversion.time_factorize_and_selected_inverse", f"side={side}"))
        if fac and both:
            lines.append(f"- {side}x{side} grid: factorization {fac:.3f} s, refactorization + "
                         f"selected inversion {both:.3f} s: **{both / fac:.2f}x**")
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
