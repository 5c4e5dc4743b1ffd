"""Shared fixtures: random SPD grid precisions, and the MNIST files in ../shared."""

import os
from pathlib import Path

import numpy as np
import pytest

from sparsegauss.grid import GridParameterization

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = Path(os.environ.get("SPARSEGAUSS_TEST_DATA", REPO.parent / "shared" / "data" / "mnist"))

# Shapes that exercise degenerate grids (a single row or column) and non-square ones.
SHAPES = [(1, 1), (1, 7), (6, 1), (4, 4), (3, 5), (5, 3)]


def dense_precision(grid, theta):
    """Λ(θ) built entry by entry with Python loops: the independent oracle for grid.py."""
    height, width = grid.shape
    fields = grid.fields(theta)
    dense = np.zeros((grid.n_pixels, grid.n_pixels))
    for r in range(height):
        for c in range(width):
            p = r * width + c
            dense[p, p] = fields[0, p]
            for k, (dr, dc) in enumerate(grid.offsets[1:], start=1):
                if 0 <= r + dr < height and 0 <= c + dc < width:
                    q = (r + dr) * width + (c + dc)
                    dense[p, q] = dense[q, p] = fields[k, p]
    return dense


def random_spd_theta(grid, rng, margin=0.2):
    """θ with random couplings whose Λ(θ) is positive definite with λ_min = margin.

    The couplings are random in sign and size; the diagonal is then shifted by exactly
    what makes the smallest eigenvalue ``margin`` (computed densely), so the matrices are
    not merely diagonally dominant.
    """
    theta = rng.normal(size=grid.n_params)
    fields = grid.fields(theta)
    fields[0] = rng.uniform(0.5, 2.0, grid.n_pixels) if grid.tying == "untied" else 1.0
    theta = grid.project(fields)
    lowest = np.linalg.eigvalsh(dense_precision(grid, theta))[0]
    fields = grid.fields(theta)
    fields[0] += margin - lowest
    return grid.project(fields)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def split_threshold(monkeypatch):
    """Set ``sparsegauss.cholesky.PARALLEL_MIN_ENTRIES`` for one test, with a cache of
    symbolic analyses of its own: an analysis records its split when it is made and is
    shared by every later SparseCholesky of the same pattern while it lives, so one made
    under another threshold by an earlier test (alive until the garbage collector breaks
    its cycles) would otherwise be reused (seen once in ``make test``:
    ``test_logdet_and_selected_inverse_in_one_call[shape1-8-False]`` got a split one)."""
    import weakref

    import sparsegauss.cholesky as cholesky

    def set_threshold(entries):
        monkeypatch.setattr(cholesky, "PARALLEL_MIN_ENTRIES", entries)
        monkeypatch.setattr(cholesky._SymbolicAnalysis, "_cache",
                            weakref.WeakValueDictionary())

    return set_threshold


@pytest.fixture(scope="session")
def mnist_dir():
    if not (SHARED_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"MNIST test data not found in {SHARED_MNIST}; set SPARSEGAUSS_TEST_DATA "
                    "to a directory with the four IDX files.")
    return SHARED_MNIST


def all_grids():
    return [GridParameterization(shape, stencil, tying)
            for shape in SHAPES for stencil in (4, 8) for tying in ("untied", "tied")]
