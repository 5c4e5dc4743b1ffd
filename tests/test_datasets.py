import gzip
import hashlib
import shutil

import numpy as np
import pytest

from sparsegauss import datasets
from sparsegauss.datasets import DataError, load_mnist, preprocess, scale_and_noise


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


def test_corrupt_local_file_is_reported_and_left_alone(mnist_dir, tmp_path):
    shutil.copy(mnist_dir / "t10k-labels-idx1-ubyte.gz", tmp_path)
    raw = gzip.decompress((mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    damaged = raw[:1000] + bytes([raw[1000] ^ 1]) + raw[1001:]
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(damaged))
    with pytest.raises(DataError, match="corrupt"):
        load_mnist("test", data_home=tmp_path)
    assert (tmp_path / "t10k-images-idx3-ubyte.gz").exists()     # the user's file is kept


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
