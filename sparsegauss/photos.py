"""Photographs as greyscale images in [0, 1], and random patches cut from them.

Two sources of photographs:

* :func:`load_natural_images`: photographs that scikit-image ships inside its wheel, all
  free of copyright restrictions (the licence of each, from its docstring, is in
  :data:`NATURAL_IMAGES`), so a study runs offline;
* :func:`load_images`: a user's own JPEG/PNG/TIFF files (a folder, a glob pattern or a
  list of paths), read with Pillow: EXIF orientation applied, any mode (RGB, RGBA,
  palette, 16-bit, greyscale, binary) converted to luminance in [0, 1], optionally
  downsampled so that the longer side is at most ``max_side`` (multi-megapixel holiday
  photographs otherwise give mostly flat 28×28 patches).

Luminance is ITU-R BT.601 luma, ``Y = 0.299 R + 0.587 G + 0.114 B`` (what Pillow's
``convert("L")`` computes), on the stored (gamma-encoded) values; an alpha channel is
ignored.

:func:`extract_patches` cuts ``n`` patches at positions drawn uniformly over every valid
position of every image (an image with more positions is chosen proportionally more
often), without a Python loop per patch; :func:`split_images` splits photographs, not
patches, into training and held-out sets, so that held-out patches come from photographs
the model never saw.
"""

import glob
import warnings
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_SUFFIXES", "ImageError", "NATURAL_IMAGES", "UnreadableImageError",
           "extract_patches", "integer_scale", "load_images", "load_natural_images",
           "split_images", "to_luminance"]

#: scikit-image's bundled photographs and their licences (from each loader's docstring).
NATURAL_IMAGES = {
    "astronaut": "public domain (NASA; no known copyright restrictions)",
    "camera": "CC0 (photographer Lav Varshney)",
    "chelsea": "CC0 (photographer Stefan van der Walt)",
    "coffee": "CC0 (photographer Rachel Michetti)",
    "rocket": "public domain (SpaceX)",
    "clock": "public domain (photographer Stefan van der Walt)",
    "grass": "CC0 (CC0Textures)",
    "gravel": "CC0 (CC0Textures)",
    "brick": "CC0 (CC0Textures)",
    "coins": "no known copyright restrictions (Brooklyn Museum)",
}
#: File suffixes :func:`load_images` reads from a folder (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp")
_LUMA = np.array([0.299, 0.587, 0.114])


class ImageError(ValueError):
    """A file that is not a readable image, or images too small for the patches."""


class UnreadableImageError(ImageError):
    """A file that cannot be read as an image: ``path`` and ``reason`` (the reader's
    own error), so that a caller can say how to skip such files in its own terms."""

    def __init__(self, path, reason, hint=""):
        self.path, self.reason = path, reason
        super().__init__(f"{path} is not a readable image ({reason}).{hint}")


def integer_scale(images):
    """The number integer images are divided by to lie in [0, 1].

    8- and 16-bit unsigned images (``uint8``, ``uint16``) by their dtype's maximum (255,
    65,535), as image libraries do. Any other integer type says nothing of the bit
    depth (NumPy's default ``int64`` would divide by 2⁶³ − 1, leaving every pixel below
    10⁻¹⁶ and the added noise as the only signal), so its images are divided by the
    smallest ``2ᵏ − 1 ≥`` their maximum, with ``k ≥ 8``: 255 for values up to 255, 1,023
    for 10-bit values.

    Parameters
    ----------
    images : ndarray of an integer dtype

    Returns
    -------
    float

    Raises
    ------
    ValueError
        Negative values (other than in ``uint8``/``uint16``, which have none): such
        images have no [0, 1] scale to guess.
    """
    images = np.asarray(images)
    if images.dtype in (np.uint8, np.uint16):
        return float(np.iinfo(images.dtype).max)
    if images.size == 0:
        return 255.0
    low, high = int(images.min()), int(images.max())
    if low < 0:
        raise ValueError(f"These {images.dtype} images hold negative values (the least is "
                         f"{low}), so they have no [0, 1] scale to guess: convert them to "
                         "floats in [0, 1] first.")
    return float(2 ** max(8, high.bit_length()) - 1)


def to_luminance(array):
    """Greyscale float64 in [0, 1] from an image array of any common layout.

    Parameters
    ----------
    array : ndarray, shape (H, W), (H, W, 1), (H, W, 2), (H, W, 3) or (H, W, 4)
        Greyscale, greyscale + alpha, RGB or RGBA; bool, integer (scaled by
        :func:`integer_scale`) or float (taken to be in [0, 1] already).

    Returns
    -------
    ndarray, shape (H, W), float64
    """
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.float64)
    elif np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float64) / integer_scale(array)
    else:
        array = array.astype(np.float64)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        array = array[..., :3] @ _LUMA
    elif array.ndim == 3 and array.shape[2] in (1, 2):
        array = array[..., 0]
    if array.ndim != 2:
        raise ImageError(f"An image must be (H, W) or (H, W, channels) with 1-4 channels. "
                         f"Got shape {array.shape} instead.")
    return np.clip(array, 0.0, 1.0)


def _downsample(image, max_side):
    """Shrink so that the longer side is ``max_side`` (Lanczos; never enlarges)."""
    if max_side is None or max(image.shape) <= max_side:
        return image
    from PIL import Image

    scale = max_side / max(image.shape)
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    small = Image.fromarray(image.astype(np.float32), mode="F").resize(
        size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(small, dtype=np.float64), 0.0, 1.0)


def _check_max_side(max_side):
    if max_side is not None and not (isinstance(max_side, (int, np.integer))
                                     and max_side >= 1):
        raise ValueError(f"The 'max_side' parameter must be an int >= 1 or None. Got "
                         f"{max_side!r} instead.")


def load_natural_images(names=None, *, max_side=None):
    """Photographs bundled with scikit-image, as greyscale float images in [0, 1].

    Parameters
    ----------
    names : list of str, optional
        Keys of :data:`NATURAL_IMAGES` (default: all ten).
    max_side : int, optional
        Downsample so that the longer side is at most this.

    Returns
    -------
    list of ndarray, each of shape (H, W), float64

    Raises
    ------
    ImportError
        scikit-image is not installed (``pip install "sparsegauss[images]"``).
    """
    _check_max_side(max_side)
    names = list(NATURAL_IMAGES) if names is None else list(names)
    unknown = [n for n in names if n not in NATURAL_IMAGES]
    if unknown:
        raise ValueError(f"Unknown natural image(s) {unknown}; choose from "
                         f"{sorted(NATURAL_IMAGES)}.")
    try:
        import skimage.data
    except ImportError as exc:
        raise ImportError("The bundled photographs come from scikit-image; install it with "
                          "pip install \"sparsegauss[images]\".") from exc
    return [_downsample(to_luminance(getattr(skimage.data, name)()), max_side)
            for name in names]


def _image_paths(path):
    """Files named by a folder, a glob pattern, one file or a list of any of these."""
    if isinstance(path, (list, tuple)):
        return [p for item in path for p in _image_paths(item)]
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ImageError(f"{path} holds no image files (looked for "
                             f"{', '.join(IMAGE_SUFFIXES)}).")
        return files
    if path.is_file():
        return [path]
    matches = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
    if not matches:
        raise FileNotFoundError(f"No image file, folder or glob match at {path}.")
    return matches


def _read_image(path):
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                return to_luminance(np.asarray(image, dtype=np.uint16))
            if image.mode in ("I", "F"):
                values = np.asarray(image, dtype=np.float64)
                top = 65535.0 if image.mode == "I" and values.max() > 255 else (
                    255.0 if image.mode == "I" else 1.0)
                return to_luminance(values / top)
            if image.mode not in ("L", "LA", "RGB", "RGBA", "1"):
                image = image.convert("RGBA" if "transparency" in image.info
                                      or image.mode in ("PA", "RGBa", "La") else "RGB")
            return to_luminance(np.asarray(image))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImageError(path, f"{type(exc).__name__}: {exc}") from exc


def load_images(path, *, max_side=None, on_error="raise", return_paths=False):
    """A user's photographs as greyscale float images in [0, 1].

    Parameters
    ----------
    path : str, Path or list of them
        A folder (its files with an image suffix, sorted by name), a glob pattern
        (``"holiday/*.jpg"``), one file, or a list of any of these.
    max_side : int, optional
        Downsample (Lanczos) so that the longer side is at most this many pixels.
    on_error : {"raise", "skip"}, default="raise"
        A file that cannot be read as an image raises :class:`ImageError` naming it, or
        is skipped with a warning.
    return_paths : bool, default=False
        Also return the path of each image read (skipped files left out), to name them.

    Returns
    -------
    images : list of ndarray, each of shape (H, W), float64
    paths : list of pathlib.Path
        Only with ``return_paths=True``.
    """
    _check_max_side(max_side)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"The 'on_error' parameter must be 'raise' or 'skip'. Got "
                         f"{on_error!r} instead.")
    images, paths = [], []
    for file in _image_paths(path):
        try:
            images.append(_downsample(_read_image(file), max_side))
            paths.append(Path(file))
        except UnreadableImageError as exc:
            if on_error == "raise":
                raise UnreadableImageError(
                    exc.path, exc.reason,
                    " Pass on_error='skip' to leave such files out.") from exc.__cause__
            warnings.warn(f"Skipped {exc.path}: not a readable image ({exc.reason}).",
                          UserWarning, stacklevel=2)
    if not images:
        raise ImageError(f"None of the files at {path} could be read as an image.")
    return (images, paths) if return_paths else images


def split_images(images, test_fraction=0.2, *, random_state=None):
    """Split photographs (not patches) into training and held-out lists.

    At least one image goes to each side; needs two images or more.
    """
    images = list(images)
    if len(images) < 2:
        raise ValueError("Splitting by image needs at least two images.")
    if not 0 < test_fraction < 1:
        raise ValueError(f"The 'test_fraction' parameter must lie in (0, 1). Got "
                         f"{test_fraction!r} instead.")
    order = np.random.default_rng(random_state).permutation(len(images))
    n_test = min(len(images) - 1, max(1, round(test_fraction * len(images))))
    return [images[i] for i in sorted(order[n_test:])], [images[i] for i in sorted(order[:n_test])]


def extract_patches(images, n_patches=50_000, patch_shape=(28, 28), *, random_state=None,
                    min_std=None):
    """Random patches from images, positions uniform over all valid positions.

    Parameters
    ----------
    images : list of 2-D arrays, or one array of shape (n, H, W) or (H, W)
    n_patches : int, default=50_000
    patch_shape : (int, int), default=(28, 28)
    random_state : None, int or numpy.random.Generator
    min_std : float, optional
        Drop patches whose pixel standard deviation is below this (near-flat sky or
        wall) and draw again until ``n_patches`` are kept.

    Returns
    -------
    ndarray, shape (n_patches, h * w), float32
        Row-major patches (pixel (r, c) at index r * w + c).

    Notes
    -----
    Image k has ``P_k = (H_k − h + 1)(W_k − w + 1)`` positions; a patch comes from image
    k with probability ``P_k / Σ P``, at a position uniform among its ``P_k``. The
    patches of one image are gathered with one fancy index into a strided view (no copy
    of the image, no loop over patches).
    """
    rng = np.random.default_rng(random_state)
    if isinstance(images, np.ndarray) and images.ndim == 2:
        images = [images]
    images = [np.asarray(image, dtype=np.float32) for image in images]
    height, width = (int(s) for s in patch_shape)
    if height < 1 or width < 1:
        raise ValueError(f"The 'patch_shape' parameter must be two ints >= 1. Got "
                         f"{patch_shape!r} instead.")
    if not (isinstance(n_patches, (int, np.integer)) and n_patches >= 1):
        raise ValueError(f"The 'n_patches' parameter must be an int >= 1. Got "
                         f"{n_patches!r} instead.")
    if any(image.ndim != 2 for image in images):
        raise ValueError("Every image must be a 2-D greyscale array (see to_luminance).")
    positions = np.array([max(0, image.shape[0] - height + 1) * max(0, image.shape[1] - width + 1)
                          for image in images], dtype=np.float64)
    if positions.sum() == 0:
        raise ImageError(f"No image is at least {height}×{width} pixels (largest: "
                         f"{max(image.shape for image in images)}).")
    kept, total = [], 0
    for _ in range(100):
        wanted = n_patches - total
        draw = wanted if min_std is None else max(wanted, 1024) * 2
        per_image = rng.multinomial(draw, positions / positions.sum())
        batch = []
        for image, count in zip(images, per_image):
            if count == 0:
                continue
            windows = np.lib.stride_tricks.sliding_window_view(image, (height, width))
            rows = rng.integers(0, windows.shape[0], count)
            cols = rng.integers(0, windows.shape[1], count)
            batch.append(windows[rows, cols].reshape(count, height * width))
        batch = np.concatenate(batch)[rng.permutation(draw)]
        if min_std is not None:
            batch = batch[batch.std(axis=1) >= min_std]
        batch = batch[:wanted]
        kept.append(batch)
        total += len(batch)
        if total >= n_patches:
            return np.concatenate(kept).astype(np.float32, copy=False)
    raise ImageError(f"Only {total:,} of {n_patches:,} patches had a standard deviation of "
                     f"at least min_std={min_std}; lower min_std or use busier images.")
