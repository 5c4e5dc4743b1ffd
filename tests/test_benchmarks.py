"""The benchmark suite in --quick mode (what CI can afford), and the memory behaviour of
streamed fits: a pass over shards does not grow with the number of samples."""

import json
import math
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from sparsegauss import GridGaussian
from sparsegauss.datasets import make_grid_gaussian

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.__main__ import main
    finally:
        sys.path.remove(str(ROOT))
    out = tmp_path_factory.mktemp("bench")
    assert main(["--quick", "--module", "bench_scale", "--module", "bench_peers",
                 "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def medians(results, benchmark):
    return {r["params"]: r["median"] for r in results["results"] if r["benchmark"] == benchmark}


def test_quick_scale_run_writes_json_table_and_plot(quick_run):
    out, results = quick_run
    times = medians(results, "LargeGridFit.time_fit")
    assert set(times) == {"side=32, method=mle", "side=32, method=sm", "side=32, method=nce"}
    peaks = medians(results, "LargeGridFit.peakmem_fit")
    assert all(peak > 10 * 2**20 for peak in peaks.values())    # a real resident size
    kl = medians(results, "LargeGridFit.track_kl_truth")
    # The MLE's KL to the truth is about p / 2n (p = 3,008 parameters, n = 2,000).
    assert 0.5 < kl["side=32, method=mle"] / (3008 / 4000) < 1.5
    # NCE of the stationary model: 3 parameters from 500 images of 1,024 pixels.
    assert kl["side=32, method=nce"] < 0.05
    gap = medians(results, "LargeGridFit.track_log_partition_gap")["side=32, method=nce"]
    assert abs(gap) < 0.5
    table = (out / "results.md").read_text()
    assert "| 32×32 | 1,024 | 3,008 | mle |" in table
    assert (out / "scaling.png").stat().st_size > 10_000


def test_quick_peers_agree_and_torch_is_skipped_or_run(quick_run):
    out, results = quick_run
    kl = medians(results, "Peers.track_kl_truth")
    # The dense NumPy MLE is the same estimator: the same answer.
    assert math.isclose(kl["side=8, engine=dense-numpy"], kl["side=8, engine=sparsegauss"],
                        rel_tol=1e-6)
    # So is the exact-Hessian dense Newton peer.
    assert math.isclose(kl["side=8, engine=dense-newton"], kl["side=8, engine=sparsegauss"],
                        rel_tol=1e-6)
    assert kl["side=8, engine=graphical-lasso"] > 0
    table = (out / "results.md").read_text()
    assert "| 8×8 | dense-numpy |" in table and "× sparsegauss" in table
    try:
        import torch  # noqa: F401
        assert "side=8, engine=torch-nce" in kl
    except ImportError:
        assert "side=8, engine=torch-nce" not in kl


def test_quick_selected_inversion_peers_match_a_solve(quick_run):
    """Every engine's diag(Σ) against solves Λ x = e_p (the benchmark's own check), and
    SelInv runs exactly when it is installed."""
    out, results = quick_run
    errors = medians(results, "SelectedInversionPeers.track_diagonal_error")
    assert errors["side=64, engine=sparsegauss"] < 1e-12
    assert errors["side=64, engine=sparsegauss-refactor"] < 1e-12
    try:
        import selinv  # noqa: F401
        assert errors["side=64, engine=selinv-full"] < 1e-12
    except ImportError:
        assert "side=64, engine=selinv-diag" not in errors
    assert "| 64×64 | sparsegauss |" in (out / "results.md").read_text()


def test_streamed_fit_memory_does_not_grow_with_samples(tmp_path):
    """Traced (NumPy) allocations of a fit from shards: 10x the samples, the same peak, and
    far below the data's size."""
    truth, _ = make_grid_gaussian((64, 64), random_state=0)
    rng = np.random.default_rng(0)
    peaks = {}
    for n in (400, 4000):
        folder = tmp_path / str(n)
        folder.mkdir()
        for i in range(n // 200):
            np.save(folder / f"{i:03d}.npy", truth.sample(200, random_state=rng))
        GridGaussian((64, 64), assume_centered=True).fit(folder)      # warm-up
        tracemalloc.start()
        GridGaussian((64, 64), assume_centered=True).fit(folder)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    data_bytes = 4000 * 64 * 64 * 8
    assert peaks[4000] < 1.3 * peaks[400], peaks
    assert peaks[4000] < data_bytes / 8, (peaks, data_bytes)


def test_merge_replaces_re_run_cases_and_keeps_the_rest():
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.__main__ import merge
    finally:
        sys.path.remove(str(ROOT))

    def row(name, params, value):
        return dict(benchmark=name, params=params, median=value)

    earlier = [row("A.time_fit", "n=1", 1.0), row("A.track_kl", "n=1", 0.1),
               row("A.time_fit", "n=2", 2.0), row("A.track_kl", "n=2", 0.2),
               row("B.time_fit", "n=1", 3.0)]
    merged = merge(earlier, [row("A.time_fit", "n=2", 5.0), row("A.time_fit", "n=3", 7.0)])
    assert [(r["benchmark"], r["params"], r["median"]) for r in merged] == [
        ("A.time_fit", "n=1", 1.0), ("A.track_kl", "n=1", 0.1),
        ("A.time_fit", "n=2", 5.0),                     # the whole case is replaced
        ("B.time_fit", "n=1", 3.0), ("A.time_fit", "n=3", 7.0)]


@pytest.mark.parametrize("stencil", [4, 8])
def test_dense_newton_peer_reaches_the_sparse_optimum(stencil):
    """The strongest dense peer is only a fair peer if it solves the same problem."""
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.bench_core import dense_newton_mle
    finally:
        sys.path.remove(str(ROOT))
    from sparsegauss.datasets import make_grid_gaussian
    from sparsegauss.estimators.mle import fit_mle
    from sparsegauss.grid import GridParameterization
    from sparsegauss.stats import pattern_moments

    _, X = make_grid_gaussian((7, 6), 400, stencil=stencil, coupling=0.5, random_state=5)
    grid = GridParameterization((7, 6), stencil)
    moments = pattern_moments(X - X.mean(0), grid) / len(X)
    theta, loss, n_iter = dense_newton_mle(moments, grid)
    reference = fit_mle(moments, grid)
    np.testing.assert_allclose(theta, reference.x, rtol=1e-6, atol=1e-8)
    assert loss == pytest.approx(reference.fun, rel=1e-12) and n_iter <= 15


def test_exact_sampling_benchmark_times_the_same_draw_on_both_paths():
    """The sampling benchmark's two paths (the library's kernel; NumPy's normals and
    CHOLMOD's solve) both draw from the factor's Gaussian and give each sample's
    ``εᵀε = xᵀΛx``; the summary reports them per draw."""
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.bench_core import ExactSampling, summarize
    finally:
        sys.path.remove(str(ROOT))
    bench = ExactSampling()
    bench.draws = 1
    bench.setup(4)
    try:
        for path in (bench.time_sample, bench.time_numpy_and_cholmod):
            path(4)
            whitened = bench.factor.whiten(bench.out)
            np.testing.assert_allclose(np.sum(whitened ** 2, axis=1), bench.squared_norms,
                                       rtol=1e-10)
            assert abs(np.mean(bench.squared_norms) / bench.out.shape[1] - 1) < 0.02
    finally:
        bench.teardown(4)
    results = [dict(benchmark=f"ExactSampling.{name}", params="stencil=4", median=value)
               for name, value in (("time_sample", 0.01), ("time_numpy_and_cholmod", 0.07),
                                   ("time_normals", 0.007), ("time_numpy_normals", 0.037))]
    assert ("256 exact samples, 4-neighbour 28x28 grid: 0.50 ms; NumPy's normals + "
            "CHOLMOD's solve 3.50 ms (**7.0x**)") in summarize(results)


def test_scaling_figure_reads_every_row_of_the_large_grid_table(tmp_path):
    """The scaling figure is drawn from docs/performance.md's large-grid table: every size
    from 64² to 2048² for each of the three methods, marked rows (†, ‡, §) included."""
    from benchmarks.one_off.scaling_figure import table_results

    records = table_results()
    times = {r["params"]: r["median"] for r in records
             if r["benchmark"] == "LargeGridFit.time_fit"}
    expected = {f"side={side}, method={method}" for side in (64, 128, 256, 512, 1024, 2048)
                for method in ("mle", "sm", "nce")}
    assert set(times) == expected
    assert all(value > 0 for value in times.values())
    document = tmp_path / "performance.md"
    document.write_text("| 2048×2048 ‡ | 4,194,304 | 3 | nce | 12.5 ‡ | 100 | 42 | 1.0 |\n")
    (row_time, row_memory) = table_results(document)
    assert row_time["params"] == "side=2048, method=nce" and row_time["median"] == 12.5
    assert row_memory["median"] == 42 * 2**20
    document.write_text("| 512×512 | 262,144 | 785,408 | mle | 11.0 § | 1180 | 436 | 153.3 |\n")
    (row_time, row_memory) = table_results(document)
    assert row_time["params"] == "side=512, method=mle" and row_time["median"] == 11.0
