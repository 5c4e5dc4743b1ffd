import numpy as np
import pytest

from sparsegauss.grid import GridParameterization
from conftest import SHAPES, dense_precision


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stencil", [4, 8])
@pytest.mark.parametrize("tying", ["untied", "tied"])
def test_precision_matches_dense_loops(shape, stencil, tying, rng):
    grid = GridParameterization(shape, stencil, tying)
    theta = rng.normal(size=grid.n_params)
    sparse = grid.precision(theta)
    assert sparse.format == "csc" and sparse.has_sorted_indices
    np.testing.assert_array_equal(sparse.toarray(), dense_precision(grid, theta))
    assert sparse.nnz == grid.nnz


def test_parameter_counts():
    # 28x28: 784 pixels, 2*28*27 = 1512 horizontal+vertical edges, 2*27*27 diagonals.
    assert GridParameterization((28, 28), 4).n_params == 784 + 1512
    assert GridParameterization((28, 28), 8).n_params == 784 + 1512 + 2 * 729
    assert GridParameterization((28, 28), 4, "tied").n_params == 3
    assert GridParameterization((28, 28), 8, "tied").n_params == 5
    # A single row has no vertical or diagonal couplings to tie.
    assert GridParameterization((1, 9), 8, "tied").n_params == 2
    assert GridParameterization((1, 1), 8, "untied").n_params == 1


@pytest.mark.parametrize("tying", ["untied", "tied"])
def test_adjoint_is_transpose_of_fields(tying, rng):
    grid = GridParameterization((5, 6), 8, tying)
    theta = rng.normal(size=grid.n_params)
    other = rng.normal(size=(grid.n_terms, grid.n_pixels))
    np.testing.assert_allclose(np.sum(grid.fields(theta) * other),
                               theta @ grid.adjoint(other), rtol=1e-12)


@pytest.mark.parametrize("tying", ["untied", "tied"])
def test_theta_round_trips_through_the_matrix(tying, rng):
    grid = GridParameterization((4, 7), 8, tying)
    theta = rng.normal(size=grid.n_params)
    np.testing.assert_allclose(grid.theta_from_precision(grid.precision(theta)), theta)


def test_row_major_ordering():
    grid = GridParameterization((2, 3), 4)
    theta = np.zeros(grid.n_params)
    fields = grid.fields(theta)
    fields[1, 1] = 7.0     # horizontal coupling owned by pixel (0, 1): pair (1, 2)
    fields[2, 2] = 5.0     # vertical coupling owned by pixel (0, 2): pair (2, 5)
    dense = grid.precision(grid.project(fields)).toarray()
    assert dense[1, 2] == dense[2, 1] == 7.0
    assert dense[2, 5] == dense[5, 2] == 5.0
    assert np.count_nonzero(dense) == 4


def test_no_wraparound_between_rows():
    grid = GridParameterization((3, 3), 8)
    dense = grid.precision(np.ones(grid.n_params)).toarray()
    assert dense[2, 3] == 0          # end of row 0 and start of row 1 are not neighbours
    assert dense[0, 5] == 0          # (0, 0) and (1, 2) are not neighbours
    assert dense[2, 4] == 1          # (0, 2) and (1, 1) are diagonal neighbours


@pytest.mark.parametrize("kwargs, match", [
    (dict(shape=(0, 3)), "shape"), (dict(shape=(2.5, 3)), "shape"), (dict(shape=5), "shape"),
    (dict(shape=(3, 3), stencil=6), "stencil"), (dict(shape=(3, 3), tying="banded"), "tying"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GridParameterization(**kwargs)


def test_bad_theta_shape():
    grid = GridParameterization((3, 3))
    with pytest.raises(ValueError, match="theta must have shape"):
        grid.precision(np.ones(grid.n_params + 1))


@pytest.mark.parametrize("tying", ["untied", "tied"])
def test_adjoint_of_pairs_is_adjoint_of_their_fields(tying, rng):
    grid = GridParameterization((5, 6), 8, tying)
    values = rng.normal(size=grid.pair_indices()[0].size)
    np.testing.assert_allclose(grid.adjoint_pairs(values),
                               grid.adjoint(grid.scatter_pairs(values)), rtol=1e-13)
    terms = grid.pair_terms()
    owners, partners = grid.pair_indices()
    np.testing.assert_array_equal(partners - owners, grid.shifts[terms])
