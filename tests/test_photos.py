"""Photographs and patches: files written here with Pillow, patches checked by position."""

import sys

import numpy as np
import pytest
from PIL import Image

from sparsegauss.datasets import (NATURAL_IMAGES, ImageError, extract_patches, load_images,
                                  load_natural_images, split_images, to_luminance)


def test_luminance_matches_pillow_and_handles_every_layout(rng):
    rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    pillow = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float64) / 255
    np.testing.assert_allclose(to_luminance(rgb), pillow, atol=1 / 255)   # Pillow rounds
    rgba = np.concatenate([rgb, rng.integers(0, 256, (6, 7, 1), dtype=np.uint8)], axis=2)
    np.testing.assert_array_equal(to_luminance(rgba), to_luminance(rgb))  # alpha ignored
    assert to_luminance(np.full((2, 2), 65535, np.uint16)).max() == 1.0
    # An int64 array of 8-bit values (NumPy's default integer) as its uint8 copy.
    np.testing.assert_array_equal(to_luminance(rgb.astype(np.int64)), to_luminance(rgb))
    np.testing.assert_array_equal(to_luminance(np.eye(3, dtype=bool)), np.eye(3))
    with pytest.raises(ImageError, match=r"Got shape \(2, 2, 5\)"):
        to_luminance(np.zeros((2, 2, 5)))


@pytest.fixture
def photo_folder(tmp_path, rng):
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a_rgb.png")
    Image.fromarray(np.dstack([rgb, np.full((40, 60), 128, np.uint8)])).save(tmp_path / "b_rgba.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "c_palette.png")
    grey16 = (rng.integers(0, 65536, (30, 20))).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "d_16bit.png")
    # A JPEG stored landscape (60 wide, 40 high) with EXIF orientation 6: shown rotated
    # by 90°, so it reads as 60 high and 40 wide.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "e_rotated.jpg", exif=exif.tobytes(), quality=95)
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path, rgb, grey16


def test_load_images_reads_every_mode_and_applies_exif(photo_folder):
    folder, rgb, grey16 = photo_folder
    images = load_images(folder)
    assert len(images) == 5                     # notes.txt is not an image suffix
    np.testing.assert_allclose(images[0], to_luminance(rgb))
    np.testing.assert_allclose(images[1], to_luminance(rgb))
    assert np.abs(images[2] - to_luminance(rgb)).mean() < 0.05     # palette quantizes
    np.testing.assert_allclose(images[3], grey16 / 65535.0)
    assert images[4].shape == (60, 40)           # EXIF rotation applied
    assert all(0 <= im.min() and im.max() <= 1 for im in images)
    assert [im.shape for im in load_images(str(folder / "*.png"))] == [(40, 60)] * 3 + [(30, 20)]
    assert len(load_images([folder / "a_rgb.png", folder / "d_16bit.png"])) == 2
    small = load_images(folder / "a_rgb.png", max_side=15)[0]
    assert small.shape == (10, 15) and 0 <= small.min() and small.max() <= 1


def test_unreadable_files_are_named_or_skipped(photo_folder):
    folder, _, _ = photo_folder
    fake = folder / "f_broken.jpg"
    fake.write_bytes(b"this is not a JPEG")
    with pytest.raises(ImageError, match=r"f_broken.jpg is not a readable image \(.*\)\. "
                       "Pass on_error='skip' to leave such files out."):
        load_images(folder)
    with pytest.warns(UserWarning, match="Skipped .*f_broken.jpg: not a readable image"):
        assert len(load_images(folder, on_error="skip")) == 5
    empty = folder / "empty"
    empty.mkdir()
    with pytest.raises(ImageError, match="holds no image files"):
        load_images(empty)
    with pytest.raises(FileNotFoundError):
        load_images(folder / "missing" / "*.jpg")
    with pytest.raises(ValueError, match="'max_side' parameter"):
        load_images(folder, max_side=0)


def test_patches_are_windows_at_uniform_positions(rng):
    """Each pixel value encodes its position, so a patch says where it was cut; positions
    are uniform over both images' windows together (chi-square on the image counts)."""
    big = np.arange(30 * 40, dtype=np.float64).reshape(30, 40)
    small = 10_000 + np.arange(12 * 9, dtype=np.float64).reshape(12, 9)
    patches = extract_patches([big, small], 20_000, (5, 4), random_state=0)
    assert patches.shape == (20_000, 20) and patches.dtype == np.float32
    from_big = patches[:, 0] < 10_000
    for patch in patches[:200]:
        image = big if patch[0] < 10_000 else small
        r, c = divmod(int(patch[0]) % 10_000, image.shape[1])
        np.testing.assert_array_equal(patch.reshape(5, 4), image[r:r + 5, c:c + 4])
    p_big = 26 * 37 / (26 * 37 + 8 * 6)
    se = np.sqrt(p_big * (1 - p_big) / 20_000)
    assert abs(from_big.mean() - p_big) < 4 * se
    # Uniform within the big image: every row offset about equally often.
    rows = (patches[from_big, 0] // 40).astype(int)
    counts = np.bincount(rows, minlength=26)
    expected = len(rows) / 26
    assert np.sum((counts - expected) ** 2 / expected) < 26 + 6 * np.sqrt(2 * 26)


def test_min_std_drops_flat_patches_and_errors_are_clear(rng):
    image = np.zeros((50, 50))
    image[:, 25:] = rng.random((50, 25))
    patches = extract_patches([image], 500, (8, 8), random_state=1, min_std=0.05)
    assert patches.shape == (500, 64) and patches.std(axis=1).min() >= 0.05
    with pytest.raises(ImageError, match="at least 8×8"):
        extract_patches([np.zeros((5, 5))], 10, (8, 8))
    with pytest.raises(ImageError, match="min_std"):
        extract_patches([np.zeros((20, 20))], 10, (8, 8), random_state=0, min_std=0.1)


def test_split_is_by_image():
    images = [np.full((3, 3), k, dtype=float) for k in range(10)]
    train, test = split_images(images, 0.3, random_state=0)
    assert len(train) == 7 and len(test) == 3
    assert {im[0, 0] for im in train}.isdisjoint({im[0, 0] for im in test})
    with pytest.raises(ValueError, match="at least two"):
        split_images(images[:1])


def test_bundled_photographs_load_offline(monkeypatch):
    images = load_natural_images()
    assert len(images) == len(NATURAL_IMAGES) == 10
    assert all(im.ndim == 2 and im.min() >= 0 and im.max() <= 1 and min(im.shape) >= 256
               for im in images)
    assert max(load_natural_images(["camera"], max_side=128)[0].shape) == 128
    with pytest.raises(ValueError, match="Unknown natural image"):
        load_natural_images(["mona lisa"])
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(ImportError, match=r"sparsegauss\[images\]"):
        load_natural_images()
