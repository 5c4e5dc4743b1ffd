import gzip
import hashlib
import shutil
import struct

import numpy as np
import pytest

from sparsegauss import datasets
from sparsegauss.datasets import (DataError, integer_scale, load_mnist, preprocess,
                                  scale_and_noise)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """No test reads or writes the user's real cache or $SPARSEGAUSS_DATA."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SPARSEGAUSS_DATA", raising=False)


def test_shared_files_match_the_published_checksums(mnist_dir):
    for line in (mnist_dir / "SHA256SUMS.raw").read_text().split("\n"):
        if line.strip():
            digest, name = line.split()
            assert datasets.MNIST_SHA256[name] == digest
            with gzip.open(mnist_dir / (name + ".gz"), "rb") as handle:
                assert hashlib.sha256(handle.read()).hexdigest() == digest


def test_load_train_and_test(mnist_dir):
    images, labels = load_mnist("train", data_home=mnist_dir)
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and set(np.unique(labels)) == set(range(10))
    test_images, _ = load_mnist("test", data_home=mnist_dir)
    assert test_images.shape == (10000, 28, 28)


def test_bundled_test_set_needs_no_network(mnist_dir):
    images, labels = load_mnist("test", download=False)
    reference, _ = load_mnist("test", data_home=mnist_dir)
    np.testing.assert_array_equal(images, reference)


def test_environment_variable_and_raw_files(mnist_dir, tmp_path, monkeypatch):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(mnist_dir / (name + ".gz"), "rb") as src:
            (tmp_path / name).write_bytes(src.read())
    monkeypatch.setenv("SPARSEGAUSS_DATA", str(tmp_path))
    images, _ = load_mnist("test", download=False)
    assert images.shape == (10000, 28, 28)


def _write_idx(path, array, compress):
    """An IDX file written independently of the reader: header by struct, data big-endian."""
    codes = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}
    kind = array.dtype.kind + str(array.dtype.itemsize)
    header = struct.pack(">BBBB", 0, 0, codes[kind], array.ndim)
    header += struct.pack(f">{array.ndim}i", *array.shape)
    content = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(content) if compress else content)
    return content


@pytest.mark.parametrize("dtype", ["u1", "i1", "<i2", "<i4", "<f4", "<f8"])
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 5), (2, 1, 3, 2)])
@pytest.mark.parametrize("compress", [True, False])
def test_load_idx_reads_every_type_and_rank(tmp_path, rng, dtype, shape, compress):
    array = (rng.normal(size=shape) * 50).astype(dtype)
    path = tmp_path / ("data.idx.gz" if compress else "data.idx")
    _write_idx(path, array, compress)
    loaded = datasets.load_idx(path)
    assert loaded.dtype == np.dtype(dtype).newbyteorder("=") and loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, array)
    assert datasets.is_idx_file(path)


@pytest.mark.parametrize("damage, match", [
    (lambda c: c[:-3], r"truncated: shape \(4, 5\) of int16 needs 40 bytes of data, the file has 37"),
    (lambda c: c + b"\x00\x01", "longer than its header says"),
    (lambda c: c[:10], "truncated: its header announces 2 dimensions"),
    (lambda c: b"\x01" + c[1:], "not an IDX file: it does not start with the IDX magic"),
    (lambda c: c[:2] + b"\x0A" + c[3:], "unknown element type 0x0A"),
])
def test_load_idx_names_the_file_and_the_problem(tmp_path, rng, damage, match):
    content = _write_idx(tmp_path / "ok.idx", rng.integers(0, 9, (4, 5)).astype("i2"), False)
    path = tmp_path / "damaged-images.idx"
    path.write_bytes(damage(content))
    with pytest.raises(DataError, match=match) as info:
        datasets.load_idx(path)
    assert str(path) in str(info.value)


def test_load_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        datasets.load_idx(tmp_path / "nothing.idx")
    assert not datasets.is_idx_file(tmp_path / "nothing.idx")


def test_another_idx_dataset_is_not_called_corrupt(mnist_dir, tmp_path, rng):
    """A dataset published in MNIST's format, with MNIST's names and sizes, is valid data:
    the message says so, points at load_idx, and never advises deleting it."""
    home = tmp_path / "fashion"
    home.mkdir()
    other = rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8)
    _write_idx(home / "t10k-images-idx3-ubyte.gz", other, True)
    shutil.copy(mnist_dir / "t10k-labels-idx1-ubyte.gz", home)
    before = (home / "t10k-images-idx3-ubyte.gz").read_bytes()
    with pytest.raises(DataError) as info:
        load_mnist("test", data_home=home)
    message = str(info.value)
    assert "is a valid IDX file (uint8, shape (10000, 28, 28)) but not the MNIST file" in message
    assert "load_idx" in message
    assert "delete" not in message.lower() and "corrupt" not in message.lower()
    assert (home / "t10k-images-idx3-ubyte.gz").read_bytes() == before
    np.testing.assert_array_equal(datasets.load_idx(home / "t10k-images-idx3-ubyte.gz"), other)


def test_damaged_file_in_the_cache_is_left_alone(mnist_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache" / "sparsegauss" / "mnist"     # XDG_CACHE_HOME is tmp/cache
    cache.mkdir(parents=True)
    (cache / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01junk"))
    with pytest.raises(DataError) as info:
        load_mnist("test", download=False)
    message = str(info.value)
    assert "is not a valid IDX file" in message and "download cache" in message
    assert "data_home=" in message and "delete" not in message.lower()
    assert (cache / "t10k-images-idx3-ubyte.gz").exists()


def test_truncated_gzip_is_a_clear_error(mnist_dir, tmp_path):
    data = (mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="damaged or truncated"):
        load_mnist("test", data_home=tmp_path)


def test_download_verifies_and_caches_atomically(mnist_dir, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_dir / name, mirror / name)
    home = tmp_path / "home"
    images, _ = load_mnist("train", data_home=home, mirrors=[mirror.as_uri() + "/"])
    assert images.shape == (60000, 28, 28)
    assert sorted(p.name for p in home.iterdir()) == ["train-images-idx3-ubyte.gz",
                                                      "train-labels-idx1-ubyte.gz"]


def test_corrupt_download_is_never_cached(mnist_dir, tmp_path):
    bad, good = tmp_path / "bad", tmp_path / "good"
    bad.mkdir()
    good.mkdir()
    (bad / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01junk"))
    shutil.copy(mnist_dir / "train-labels-idx1-ubyte.gz", good)
    home = tmp_path / "home"
    with pytest.raises(DataError, match="Could not download"):
        datasets._download("train-labels-idx1-ubyte", home, [bad.as_uri() + "/"])
    assert list(home.iterdir()) == []
    # The next mirror is tried after a bad one.
    content = datasets._download("train-labels-idx1-ubyte", home,
                                 [bad.as_uri() + "/", good.as_uri() + "/"])
    assert len(content) == 60008
    assert [p.name for p in home.iterdir()] == ["train-labels-idx1-ubyte.gz"]


def test_missing_files_without_download(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_mnist("train", data_home=tmp_path, download=False)
    with pytest.raises(ValueError, match="'subset'"):
        load_mnist("validation")


def test_preprocess(rng):
    images = rng.integers(0, 256, size=(4000, 6, 5), dtype=np.uint8)
    X, mean = preprocess(images, noise_std=0.1, random_state=0)
    assert X.shape == (4000, 30)
    np.testing.assert_allclose(X.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(mean, images.reshape(4000, -1).mean(axis=0) / 255, atol=0.01)
    # The noise adds 0.1² to every pixel's variance.
    expected = (images.reshape(4000, -1) / 255).var(axis=0) + 0.01
    np.testing.assert_allclose(X.var(axis=0), expected, rtol=0.1)
    again, _ = preprocess(images, noise_std=0.1, random_state=0)
    np.testing.assert_array_equal(X, again)


@pytest.mark.parametrize("images, match", [
    (np.full((3, 4), 2.0), r"\[0, 1\]"), (np.ones(5), "shape"),
    (np.array([["x"]]), "integer or float"),
])
def test_preprocess_rejects_bad_images(images, match):
    with pytest.raises((ValueError, TypeError), match=match):
        scale_and_noise(images)
    with pytest.raises(ValueError, match="noise_std"):
        scale_and_noise(np.zeros((2, 2)), noise_std=-1)


@pytest.mark.parametrize("dtype, values, scale", [
    (np.uint8, [0, 7], 255), (np.uint16, [0, 7], 65535), (np.int64, [0, 255], 255),
    (np.int64, [3, 999], 1023), (np.int32, [0, 4095], 4095), (np.int16, [0, 4096], 8191),
    (np.uint64, [0, 2 ** 40], 2 ** 41 - 1), (np.int8, [0, 1], 255),
])
def test_integer_images_are_scaled_by_their_bit_depth(dtype, values, scale):
    """uint8/uint16 by their dtype's maximum; other integer types by the smallest
    2ᵏ − 1 (k ≥ 8) holding their maximum, so an int64 array of 8-bit values lands in
    [0, 1] as its uint8 copy does."""
    images = np.array([values, values], dtype=dtype)
    assert integer_scale(images) == scale
    X = scale_and_noise(images, noise_std=0.0)
    np.testing.assert_array_equal(X, np.array([values, values], dtype=float) / scale)
    assert X.max() <= 1.0


def test_negative_integer_images_are_refused():
    with pytest.raises(ValueError, match=r"int32 images hold negative values \(the least is "
                                         r"-1\).*floats in \[0, 1\]"):
        scale_and_noise(np.array([[-1, 3]], dtype=np.int32))
