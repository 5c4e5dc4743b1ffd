"""Data: IDX files (MNIST and any other dataset in its format), MNIST, preprocessing.

``load_idx`` reads any IDX file (gzip or raw; every IDX element type; any number of
dimensions), checking its header against its length.

``load_mnist`` looks for the canonical file names (gzip or raw, e.g.
``train-images-idx3-ubyte.gz``) in, in order: ``data_home``; ``$SPARSEGAUSS_DATA``;
the user cache (``$XDG_CACHE_HOME/sparsegauss/mnist``, default ``~/.cache/...``); for the
test set, the copy bundled in the package (so the main job runs offline). Failing those,
it downloads from a public mirror into ``data_home`` (or the cache). Every file's
*decompressed* content is checked against its SHA-256 (the same for every correct copy
of MNIST, whatever its compression); a corrupt or truncated download is never cached.
A file the user points at that is a valid IDX file with other content is reported as
such (read it with ``load_idx``); sparsegauss never deletes or overwrites it.
"""

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from .photos import (NATURAL_IMAGES, ImageError, extract_patches,  # noqa: F401
                     integer_scale, load_images, load_natural_images, split_images,
                     to_luminance)
from .synthetic import make_grid_gaussian

__all__ = ["DataError", "IDX_DTYPES", "ImageError", "MNIST_SHA256", "NATURAL_IMAGES",
           "extract_patches", "integer_scale", "is_idx_file", "load_idx", "load_images",
           "load_mnist", "load_natural_images", "make_grid_gaussian", "parse_idx",
           "preprocess", "scale_and_noise", "split_images", "to_luminance"]

#: SHA-256 of the decompressed IDX files.
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
_SUBSETS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
#: Public mirrors serving the gzip files under their canonical names.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_BUNDLED = Path(__file__).parent / "data"


class DataError(ValueError):
    """A data file is missing, corrupt or not in the expected format."""


def _cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sparsegauss" / "mnist"


def _candidate_dirs(data_home, subset):
    dirs = []
    if data_home is not None:
        dirs.append(Path(data_home))
    if os.environ.get("SPARSEGAUSS_DATA"):
        dirs.append(Path(os.environ["SPARSEGAUSS_DATA"]))
    dirs.append(_cache_dir())
    if subset == "test":
        dirs.append(_BUNDLED)
    return dirs


#: IDX element types: type byte → big-endian NumPy dtype.
IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _open(path):
    """``path`` opened for reading, decompressed when it is gzip (by its magic bytes,
    whatever its name)."""
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _read_bytes(path):
    """Content of ``path`` (decompressed), or ``DataError`` naming the file."""
    path = Path(path)
    try:
        with _open(path) as handle:
            return handle.read()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist.") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory, not an IDX file.") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"Could not read {path}: {exc}. The file is damaged or "
                        "truncated.") from exc


def parse_idx(content, name="<bytes>"):
    """Array from the bytes of an IDX file.

    The IDX format (LeCun et al., used by MNIST and many datasets that copy it): two zero
    bytes, one type byte (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int, 0x0D float,
    0x0E double), one byte ``ndim``, ``ndim`` big-endian int32 sizes, then the values
    in C order, big-endian.

    Parameters
    ----------
    content : bytes
        The decompressed file.
    name : str
        How errors name the file.

    Returns
    -------
    ndarray
        Of the file's shape, in native byte order (uint8, int8, int16, int32, float32 or
        float64).

    Raises
    ------
    DataError
        Not an IDX file, an unknown type byte, or a length that does not match the header.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsegauss.datasets import parse_idx
    >>> header = bytes([0, 0, 0x0B, 2]) + np.array([2, 3], dtype=">i4").tobytes()
    >>> parse_idx(header + np.arange(6, dtype=">i2").tobytes())
    array([[0, 1, 2],
           [3, 4, 5]], dtype=int16)
    """
    if len(content) < 4 or content[:2] != b"\x00\x00":
        raise DataError(f"{name} is not an IDX file: it does not start with the IDX magic "
                        "number (two zero bytes, a type byte and the number of dimensions).")
    type_byte, ndim = content[2], content[3]
    if type_byte not in IDX_DTYPES:
        raise DataError(f"{name} is not an IDX file: unknown element type 0x{type_byte:02X} "
                        f"(IDX knows {', '.join(f'0x{t:02X}' for t in IDX_DTYPES)}).")
    header = 4 + 4 * ndim
    if len(content) < header:
        raise DataError(f"{name} is truncated: its header announces {ndim} dimensions but "
                        f"the file has only {len(content)} bytes.")
    dims = tuple(int(d) for d in np.frombuffer(content[4:header], dtype=">i4"))
    if any(d < 0 for d in dims):
        raise DataError(f"{name} is not a valid IDX file: negative size in {dims}.")
    dtype = IDX_DTYPES[type_byte]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(content) - header
    if found != expected:
        raise DataError(
            f"{name} is {'truncated' if found < expected else 'longer than its header says'}"
            f": shape {dims} of {dtype.name} needs {expected:,} bytes of data, the file has "
            f"{found:,}.")
    data = np.frombuffer(content, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def load_idx(path):
    """Read any IDX file, gzip-compressed or raw.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    ndarray
        See :func:`parse_idx`.

    Raises
    ------
    DataError
        The file is missing, unreadable, not IDX, or its length does not match its header
        (the message names the file).

    Examples
    --------
    >>> from sparsegauss.datasets import load_idx
    >>> from pathlib import Path
    >>> import sparsegauss
    >>> bundled = Path(sparsegauss.__file__).parent / "data" / "t10k-labels-idx1-ubyte.gz"
    >>> load_idx(bundled)[:5]
    array([7, 2, 1, 0, 4], dtype=uint8)
    """
    return parse_idx(_read_bytes(path), str(path))


def is_idx_file(path):
    """Whether ``path`` starts like an IDX file (gzip or raw); reads a few bytes only."""
    try:
        with _open(path) as handle:
            head = handle.read(4)
    except (OSError, EOFError):
        return False
    return len(head) == 4 and head[:2] == b"\x00\x00" and head[2] in IDX_DTYPES


def _read_verified(path, name, in_cache):
    """Decompressed bytes of ``path``, or ``DataError`` if they are not MNIST's ``name``.

    A file that is a well-formed IDX file with other content is not "corrupt": it is
    another dataset in MNIST's format, and the message says so and points at
    :func:`load_idx`. Nothing is deleted, and deleting is never advised: the file may be
    the user's own data.
    """
    content = _read_bytes(path)
    digest = hashlib.sha256(content).hexdigest()
    if digest == MNIST_SHA256[name]:
        return content
    try:
        array = parse_idx(content, str(path))
    except DataError as exc:
        what = f"is not a valid IDX file ({exc})"
    else:
        what = (f"is a valid IDX file ({array.dtype}, shape {array.shape}) but not the "
                f"MNIST file {name}: the SHA-256 of its content is {digest}, MNIST's is "
                f"{MNIST_SHA256[name]}. To read it as it is, use "
                f"sparsegauss.datasets.load_idx({str(path)!r})")
    where = ("It is in sparsegauss's download cache, where only verified downloads are "
             "stored, so it changed after it was downloaded; load_mnist will not overwrite "
             "it. Pass data_home=<another directory> to download a verified copy there."
             if in_cache else
             "load_mnist never modifies it. Point data_home (or $SPARSEGAUSS_DATA) at a "
             "directory holding the MNIST files to load MNIST.")
    raise DataError(f"{path} {what}. {where}")


def _download(name, target_dir, mirrors):
    """Fetch ``name.gz`` into ``target_dir`` atomically, verifying it before it lands."""
    target_dir.mkdir(parents=True, exist_ok=True)
    errors = []
    for mirror in mirrors:
        url = mirror + name + ".gz"
        handle, tmp = tempfile.mkstemp(dir=target_dir, prefix=f".{name}.", suffix=".part.gz")
        os.close(handle)
        tmp = Path(tmp)
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out)
            content = _read_bytes(tmp)
            if hashlib.sha256(content).hexdigest() != MNIST_SHA256[name]:
                raise DataError(f"the downloaded {name} fails its SHA-256 check")
            final = target_dir / (name + ".gz")
            os.replace(tmp, final)
            return content
        except (OSError, DataError) as exc:
            errors.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(f"Could not download MNIST file {name}. Tried:\n  " + "\n  ".join(errors)
                    + "\nPut the canonical IDX files in a directory and pass it as "
                    "data_home or set SPARSEGAUSS_DATA.")


def _load_file(name, subset, data_home, download, mirrors):
    cache = _cache_dir()
    for directory in _candidate_dirs(data_home, subset):
        for candidate in (directory / (name + ".gz"), directory / name):
            if candidate.is_file():
                content = _read_verified(candidate, name, in_cache=directory == cache)
                return parse_idx(content, str(candidate))
    if not download:
        raise DataError(f"MNIST file {name}(.gz) was not found in "
                        f"{[str(d) for d in _candidate_dirs(data_home, subset)]} and "
                        "download=False. Pass data_home or set SPARSEGAUSS_DATA.")
    target = Path(data_home) if data_home is not None else cache
    return parse_idx(_download(name, target, mirrors), name)


def load_mnist(subset="train", data_home=None, *, download=True, mirrors=MNIST_MIRRORS):
    """Load MNIST images and labels.

    Parameters
    ----------
    subset : {"train", "test"}, default="train"
        60,000 training or 10,000 test images.
    data_home : str or Path, optional
        Directory searched first, and where a download is stored.
    download : bool, default=True
        Whether to fetch missing files from a public mirror.
    mirrors : sequence of str
        Base URLs tried in turn.

    Returns
    -------
    images : ndarray of uint8, shape (n, 28, 28)
    labels : ndarray of uint8, shape (n,)

    Raises
    ------
    DataError
        A file is missing (and cannot be downloaded), corrupt or truncated.

    Examples
    --------
    >>> from sparsegauss.datasets import load_mnist
    >>> images, labels = load_mnist("test")   # bundled, works offline
    >>> images.shape
    (10000, 28, 28)
    """
    if subset not in _SUBSETS:
        raise ValueError("The 'subset' parameter of load_mnist must be 'train' or 'test'. "
                         f"Got {subset!r} instead.")
    image_name, label_name = _SUBSETS[subset]
    images = _load_file(image_name, subset, data_home, download, mirrors)
    labels = _load_file(label_name, subset, data_home, download, mirrors)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise DataError(f"MNIST {subset} files disagree: images {images.shape}, "
                        f"labels {labels.shape}.")
    return images, labels


def scale_and_noise(images, noise_std=0.1, random_state=None):
    """Scale images to [0, 1] and add independent N(0, noise_std²) noise to every pixel.

    Parameters
    ----------
    images : array-like, shape (n, H, W) or (n, D)
        Integer images (divided by :func:`integer_scale`: 255 for uint8, 65,535 for
        uint16, else the smallest ``2ᵏ − 1`` holding their maximum) or floats already
        in [0, 1].
    noise_std : float, default=0.1
    random_state : None, int or numpy.random.Generator

    Returns
    -------
    ndarray of float64, shape (n, D)
    """
    images = np.asarray(images)
    if images.ndim not in (2, 3) or images.shape[0] < 1:
        raise ValueError("images must have shape (n, H, W) or (n, D). "
                         f"Got shape {images.shape} instead.")
    if not (np.isfinite(noise_std) and noise_std >= 0):
        raise ValueError("The 'noise_std' parameter must be >= 0. "
                         f"Got {noise_std!r} instead.")
    if np.issubdtype(images.dtype, np.integer):
        X = images.reshape(len(images), -1) / integer_scale(images)
    elif np.issubdtype(images.dtype, np.floating):
        X = images.reshape(len(images), -1).astype(np.float64)
        if not np.all(np.isfinite(X)) or X.min() < 0 or X.max() > 1:
            raise ValueError("Float images must be finite and lie in [0, 1]; scale them "
                             "first or pass the raw integer images.")
    else:
        raise TypeError(f"images must be integer or float. Got dtype {images.dtype}.")
    rng = np.random.default_rng(random_state)
    return X + noise_std * rng.standard_normal(X.shape)


def preprocess(images, noise_std=0.1, random_state=None):
    """Scale images to [0, 1], add pixel noise and subtract the empirical mean.

    Parameters
    ----------
    images : array-like, shape (n, H, W) or (n, D)
        Integer images (divided by :func:`integer_scale`) or floats already in [0, 1].
    noise_std : float, default=0.1
        Standard deviation of the independent N(0, noise_std²) noise added to every pixel
        (it makes the data's covariance full rank: MNIST's border pixels are always 0).
    random_state : None, int or numpy.random.Generator

    Returns
    -------
    X : ndarray of float64, shape (n, D)
        Centred data, one flattened image per row.
    mean : ndarray of float64, shape (D,)
        The subtracted empirical mean (of the noisy, scaled images).

    Examples
    --------
    >>> from sparsegauss.datasets import load_mnist, preprocess
    >>> images, _ = load_mnist("test")
    >>> X, mean = preprocess(images[:100], random_state=0)
    >>> X.shape, bool(abs(X.mean()) < 1e-12)
    ((100, 784), True)
    """
    X = scale_and_noise(images, noise_std, random_state)
    mean = X.mean(axis=0)
    X -= mean
    return X, mean
