"""Data shared by the benchmarks: MNIST, preprocessed as in the study."""

import functools
import os
from pathlib import Path

from sparsegauss.datasets import DataError, load_mnist, preprocess

_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


@functools.lru_cache(maxsize=None)
def mnist(subset="train"):
    """Preprocessed MNIST (noise std 0.1, mean subtracted) and a note on its source.

    Looks in $SPARSEGAUSS_DATA, ../shared/data/mnist, the cache, then the bundled test
    set; never downloads (benchmarks must not depend on the network).
    """
    homes = [os.environ.get("SPARSEGAUSS_DATA"), _SHARED if _SHARED.is_dir() else None]
    for home in [h for h in homes if h] + [None]:
        try:
            images, _ = load_mnist(subset, data_home=home, download=False)
            X, _ = preprocess(images, noise_std=0.1, random_state=0)
            return X, f"MNIST {subset} ({len(X):,} x {X.shape[1]})"
        except DataError:
            continue
    images, _ = load_mnist("test", download=False)
    X, _ = preprocess(images, noise_std=0.1, random_state=0)
    return X, f"MNIST test ({len(X):,} x {X.shape[1]}; training set not found)"
