"""Large grids (issue 5): fits of a known untied 4-neighbour grid Gaussian at growing size.

The truth comes from :func:`sparsegauss.datasets.make_grid_gaussian`; its exact samples
are written in float32 ``.npy`` shards to a temporary directory during ``setup`` and the
fit streams them (``GridGaussian.fit(directory)``), so the timed fit reads its data from
disk chunk by chunk, as it would for data larger than memory. Each case reports the fit
time, its peak resident memory, the memory of the Cholesky factor for comparison, and
KL(truth ‖ estimate) so that speed is never bought with accuracy (for the MLE it is about
``n_params / (2 n_samples)``).

NCE needs its minibatches in memory and, with untied parameters, far more samples than
parameters (with 2,000 samples of a 64×64 grid, 12,160 parameters, the classifier
separates data from noise: no finite estimate). Its case is therefore the stationary
model: a *tied* truth, a tied model (3 parameters and log Z), 500 samples in memory (125
at 2048×2048, the same number of pixel values as 1024×1024: 500 would hold 16 GiB of data
and noise), and as noise the tied grid MLE: in D dimensions the log-ratio between data and any noise
grows like D times their per-pixel divergence, so only noise fitted to the data stays
within the few nats where the classifier learns (isotropic noise works on 64×64, KL 0.018,
and is separated completely on 256×256). It reports NCE's learned log Z against the exact
value, both of the order of D nats. NCE runs full-batch L-BFGS (``optimizer="lbfgs"``),
not the default Adam, whose 2,000 minibatch steps are made for many samples of few
pixels (MNIST) and took 489 s at 512×512 against L-BFGS's 44 s.

The 1024×1024 and 2048×2048 cases take tens of minutes each (at 2048×2048 most of it
drawing and writing the 2,000 samples, 32 GB of shards) and are run only with
``SPARSEGAUSS_BENCH_SLOW=1``.
"""

import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from sparsegauss import GridGaussian, kl_divergence
from sparsegauss.datasets import make_grid_gaussian

SIDES = [64, 128, 256, 512, 1024, 2048]
#: Samples per fit: enough for the untied MLE to exist on every grid (more than the side).
N_SAMPLES = 2000
#: Samples per shard file.
SHARD = 100
#: Samples of the NCE case (in memory, with a pool of as many noise samples).
N_NCE = 500
#: Most pixel values the NCE case holds: 500 samples of 1024×1024 (2 GiB in float32),
#: fewer samples beyond (125 at 2048×2048).
NCE_VALUES = N_NCE * 1024 * 1024


def nce_samples(side):
    """Samples of the NCE case on a ``side × side`` grid."""
    return min(N_NCE, NCE_VALUES // (side * side))


def _write_shards(truth, n_samples, directory, rng):
    for start in range(0, n_samples, SHARD):
        chunk = truth.sample(min(SHARD, n_samples - start), random_state=rng)
        np.save(Path(directory) / f"shard-{start // SHARD:05d}.npy", chunk.astype(np.float32))


def _slow_allowed(side):
    return side < 1024 or os.environ.get("SPARSEGAUSS_BENCH_SLOW")


class LargeGridFit:
    """MLE and score matching (closed form) from shards on disk, NCE (stationary model)
    in memory, at growing grid size."""

    params = [SIDES, ["mle", "sm", "nce"]]
    param_names = ["side", "method"]
    quick_params = [[32], ["mle", "sm", "nce"]]
    budget_seconds = 60.0

    def setup(self, side, method):
        if not _slow_allowed(side):
            raise NotImplementedError("tens of minutes; set SPARSEGAUSS_BENCH_SLOW=1 to run it")
        rng = np.random.default_rng(side)
        self.model, self.directory = None, None
        tying = "tied" if method == "nce" else "untied"
        self.truth, _ = make_grid_gaussian((side, side), stencil=4, tying=tying,
                                           random_state=rng)
        if method == "nce":
            self.X = self.truth.sample(nce_samples(side), random_state=rng).astype(np.float32)
        else:
            self.directory = tempfile.mkdtemp(prefix=f"sparsegauss-bench-{side}-")
            _write_shards(self.truth, N_SAMPLES, self.directory, rng)
        # Warm up the JIT (kernels, selected inversion) on a small grid.
        small, X = make_grid_gaussian((16, 16), 200, tying=tying, random_state=0)
        GridGaussian((16, 16), **self._options(method)).fit(X)

    def teardown(self, side, method):
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    @staticmethod
    def _options(method):
        if method == "nce":
            # Full-batch L-BFGS, as the table was measured: for 3 parameters and a few
            # hundred samples it needs tens of evaluations, where the default Adam takes
            # all its 2,000 minibatch steps (512²: 489 s against 44 s).
            return dict(method="nce", tying="tied", noise="grid", optimizer="lbfgs",
                        assume_centered=True, random_state=0)
        return dict(method=method, assume_centered=True)

    def _fit(self, side, method):
        data = self.X if method == "nce" else self.directory
        return GridGaussian((side, side), **self._options(method)).fit(data)

    def time_fit(self, side, method):
        self.model = self._fit(side, method)

    def peakmem_fit(self, side, method):
        self._fit(side, method)

    def track_factor_mib(self, side, method):
        """Memory of the truth's Cholesky factor, values and int32 row indices (12 bytes
        an entry, as CHOLMOD stores it; the library's own copy uses int64 rows), MiB."""
        nnz = self.truth._normalizer.factorize(self.truth.theta_).lower().nnz
        return nnz * 12 / 2**20

    def track_kl_truth(self, side, method):
        """KL(truth ‖ estimate), nats (NaN when the estimate is not positive definite)."""
        if self.model is None or not self.model.is_positive_definite_:
            return math.nan
        return kl_divergence(self.truth, self.model)

    def track_n_params(self, side, method):
        return float(self.truth.theta_.size)

    def track_log_partition_gap(self, side, method):
        """NCE's learned log Z minus the exact log Z of its estimate (nats)."""
        if self.model is None or not hasattr(self.model, "log_partition_estimate_"):
            return math.nan
        return self.model.log_partition_estimate_ - self.model.log_partition_

    def track_iterations(self, side, method):
        return float(self.model.n_iter_) if self.model is not None else math.nan


def _format(value, spec):
    return "—" if math.isnan(value) else format(value, spec)


def summarize(results):
    """One row per grid and method: time, peak memory against the factor's, KL."""
    values = {}
    for r in results:
        if r["benchmark"].startswith("LargeGridFit."):
            values.setdefault(r["params"], {})[r["benchmark"].split(".", 1)[1]] = r["median"]
            if "resident_before" in r:
                values[r["params"]]["resident_before"] = r["resident_before"]
    if not values:
        return ""
    lines = ["| grid | pixels | parameters | method | fit time (s) | peak memory (MiB) "
             "| of which the fit's own (MiB) | Cholesky factor (MiB) | KL(truth‖est) (nats) "
             "| KL × 2n / p | NCE: learned − exact log Z |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for params, v in values.items():
        side, method = (part.split("=", 1)[1] for part in params.split(", "))
        side = int(side)
        p = v.get("track_n_params", math.nan)
        kl = v.get("track_kl_truth", math.nan)
        lines.append(
            f"| {side}×{side} | {side * side:,} | {p:,.0f} | {method} "
            f"| {v.get('time_fit', math.nan):.2f} | {v.get('peakmem_fit', math.nan) / 2**20:.0f} "
            f"| {(v.get('peakmem_fit', math.nan) - v.get('resident_before', math.nan)) / 2**20:.0f} "
            f"| {v.get('track_factor_mib', math.nan):.1f} | {kl:.4g} "
            f"| {kl * 2 * (nce_samples(side) if method == 'nce' else N_SAMPLES) / p:.3f} "
            f"| {_format(v.get('track_log_partition_gap', math.nan), '.3g')} |")
    return "\n".join(lines)


def plot(results, info, out):
    """Log–log fit time and the fit's own peak memory (peak resident minus resident
    before the call; points of zero left out) against pixels, with the n^{3/2} line of
    nested-dissection Cholesky on a 2-D grid for reference."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return []
    series = {}
    for r in results:
        side_method = r["params"].split(", ")
        if r["benchmark"] == "LargeGridFit.time_fit":
            value = r["median"]
        elif r["benchmark"] == "LargeGridFit.peakmem_fit":
            value = (r["median"] - r.get("resident_before", 0.0)) / 2**20
        else:
            continue
        side, method = (part.split("=", 1)[1] for part in side_method)
        series.setdefault((r["benchmark"], method), []).append((int(side) ** 2, value))
    if not series:
        return []
    figure = Figure(figsize=(10, 4), layout="constrained")
    for ax, name, unit in zip(figure.subplots(1, 2),
                              ("LargeGridFit.time_fit", "LargeGridFit.peakmem_fit"),
                              ("fit time (s)", "fit's own peak memory (MiB)")):
        anchor = None
        for (bench, method), points in sorted(series.items()):
            if bench != name:
                continue
            pixels, value = np.array(sorted(points)).T
            # Small fits can stay below the resident-size resolution (a page the
            # set-up already touched is not counted again): a zero has no place on a
            # log axis, so such points are left out rather than drawn at the bottom.
            shown = value > 0
            ax.loglog(pixels[shown], value[shown], "o-", label=method)
            anchor = anchor or (pixels, value[-1])
        if anchor is not None:
            pixels, last = anchor
            ax.loglog(pixels, last * (pixels / pixels[-1]) ** 1.5, ":", color="grey",
                      label="$\\propto n^{3/2}$")
        ax.set_xlabel("pixels n")
        ax.set_ylabel(unit)
        ax.legend()
    figure.suptitle(f"4-neighbour grids. MLE, SM: untied, {N_SAMPLES:,} samples streamed "
                    f"from shards;\nNCE: tied, {N_NCE} samples in memory "
                    f"({nce_samples(SIDES[-1])} at {SIDES[-1]}²). "
                    f"{info['cpu']}, {info['cores']} cores", fontsize=10)
    path = Path(out) / "scaling.png"
    figure.savefig(path, dpi=110)
    return [path]
