"""Out-of-core fits: a Dask array (threads and a LocalCluster) and a directory of .npy
shards give the in-memory fit's numbers."""

import numpy as np
import pytest

from sparsegauss import GridGaussian
from sparsegauss.datasets import make_grid_gaussian
from sparsegauss.sources import ArraySource, as_source

SHAPE = (6, 7)


@pytest.fixture(scope="module")
def data():
    truth, X = make_grid_gaussian(SHAPE, 3000, stencil=8, random_state=3)
    return X + 0.25         # a non-zero mean, so that centring is exercised


def fitted_pair(X, source, **kwargs):
    memory = GridGaussian(SHAPE, **kwargs).fit(X)
    streamed = GridGaussian(SHAPE, **kwargs).fit(source)
    return memory, streamed


@pytest.mark.parametrize("kwargs", [dict(stencil=4), dict(stencil=8, tying="tied"),
                                    dict(stencil=8, method="sm"),
                                    dict(stencil=4, method="sm", sm_solver="barrier")])
def test_shard_directory_equals_in_memory(data, tmp_path, kwargs):
    for i, rows in enumerate(np.array_split(np.arange(len(data)), 4)):
        np.save(tmp_path / f"part-{i:03d}.npy", data[rows].reshape(-1, *SHAPE))
    memory, streamed = fitted_pair(data, tmp_path, **kwargs)
    np.testing.assert_allclose(streamed.location_, memory.location_, rtol=1e-12)
    np.testing.assert_allclose(streamed.theta_, memory.theta_, rtol=1e-9, atol=1e-12)


def test_dask_array_equals_in_memory(data):
    da = pytest.importorskip("dask.array")
    memory, streamed = fitted_pair(data, da.from_array(data, chunks=(700, 20)), stencil=8)
    np.testing.assert_allclose(streamed.theta_, memory.theta_, rtol=1e-9, atol=1e-12)


def test_dask_local_cluster_equals_in_memory(data):
    distributed = pytest.importorskip("distributed")
    da = pytest.importorskip("dask.array")
    X = da.from_array(data, chunks=(500, -1))
    with distributed.LocalCluster(n_workers=3, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 3
        memory, streamed = fitted_pair(data, X, stencil=4)
        sm_memory, sm_streamed = fitted_pair(data, X, stencil=4, method="sm")
    np.testing.assert_allclose(streamed.theta_, memory.theta_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sm_streamed.theta_, sm_memory.theta_, rtol=1e-9, atol=1e-12)


def test_chunked_sums_equal_one_pass():
    X = np.random.default_rng(0).standard_normal((50, 12))
    source = ArraySource(X, (3, 4))
    source_rows = []
    total = source.sum_over_chunks(lambda c: source_rows.append(len(c)) or c.sum(axis=0))
    np.testing.assert_allclose(total, X.sum(axis=0))
    assert sum(source_rows) == 50


def test_out_of_core_errors(data, tmp_path):
    with pytest.raises(ValueError, match="no .npy files"):
        GridGaussian(SHAPE).fit(tmp_path)
    np.save(tmp_path / "a.npy", data[:10])
    np.save(tmp_path / "b.npy", data[:10, :5])
    with pytest.raises(ValueError, match=r"Shard .*b\.npy has shape \(10, 5\)"):
        GridGaussian(SHAPE).fit(tmp_path)
    (tmp_path / "b.npy").unlink()
    bad = data[:10].copy()
    bad[3, 4] = np.nan
    np.save(tmp_path / "c.npy", bad)
    with pytest.raises(ValueError, match=r"shard c\.npy .*NaN or inf \(first at sample 3, pixel 4\)"):
        GridGaussian(SHAPE).fit(tmp_path)
    (tmp_path / "c.npy").unlink()
    with pytest.raises(ValueError, match="needs the samples in memory"):
        GridGaussian(SHAPE, method="nce").fit(tmp_path)
    with pytest.raises(ValueError, match="is not a directory"):
        as_source(str(tmp_path / "missing"), SHAPE)
    np.save(tmp_path / "d.npy", np.zeros((3, 42), dtype=np.complex64))
    with pytest.raises(TypeError, match="real numbers. Got dtype complex64"):
        GridGaussian(SHAPE).fit(tmp_path)


@pytest.mark.parametrize("layout", ["float32", "big-endian", "uint8", "fortran"])
def test_shards_read_in_several_chunks_give_every_row_once(tmp_path, monkeypatch, layout):
    """Shards are read by plain sequential reads into one reused buffer (Fortran-ordered
    ones through the memory map): every row reaches the statistic once, in any dtype."""
    import sparsegauss.sources as sources

    rng = np.random.default_rng(0)
    X = rng.standard_normal((23, 12))
    if layout == "uint8":
        X = rng.integers(0, 256, (23, 12)).astype(np.uint8)
    stored = {"float32": X.astype(np.float32), "big-endian": X.astype(">f8"),
              "uint8": X, "fortran": np.asfortranarray(X)}[layout]
    np.save(tmp_path / "a.npy", stored[:10])
    np.save(tmp_path / "b.npy", stored[10:])
    monkeypatch.setattr(sources, "_CHUNK_VALUES", 3 * 12)     # 3 rows per chunk
    source = as_source(str(tmp_path), (3, 4))
    seen = source.sum_over_chunks(
        lambda chunk: np.array([len(chunk), *chunk.sum(axis=0, dtype=np.float64)]))
    assert seen[0] == 23
    np.testing.assert_allclose(seen[1:], np.asarray(stored, dtype=np.float64).sum(axis=0),
                               rtol=1e-12)


def test_truncated_shard_is_named(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((5, 12)))
    data = (tmp_path / "a.npy").read_bytes()
    # Header intact, the last row cut off: the memory map refuses it, or the read does.
    (tmp_path / "a.npy").write_bytes(data[:-8 * 12])
    with pytest.raises(ValueError, match="a.npy"):
        as_source(str(tmp_path), (3, 4)).sum_over_chunks(lambda chunk: chunk.sum())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [(0, 0), (517, 11), (999, 19)])
def test_check_samples_names_the_first_non_finite_value(dtype, value, where):
    from sparsegauss.sources import check_samples

    X = np.ones((1000, 20), dtype=dtype)
    X[where] = value
    X[where[0], where[1] + 1:] = np.nan          # later in the same row: not the first
    if where[0] + 1 < 1000:
        X[where[0] + 1:, 3] = np.inf             # later rows: not the first either
    with pytest.raises(ValueError, match=rf"first at sample {where[0]}, pixel {where[1]}\)"):
        check_samples(X, (4, 5))


def test_check_samples_accepts_the_largest_finite_values():
    """Finiteness is not tested by summing the data (which overflows)."""
    from sparsegauss.sources import check_samples

    for dtype in (np.float32, np.float64):
        big = np.finfo(dtype).max
        X = np.full((7, 6), big, dtype=dtype)
        X[::2] = -big
        np.testing.assert_array_equal(check_samples(X, (2, 3)), X)


