import itertools

import numpy as np
import pytest

from sparsegauss.grid import GridParameterization
from sparsegauss.stats import pattern_moments, quadratic_forms
from conftest import SHAPES, dense_precision


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stencil", [4, 8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pattern_moments_match_dense_products(shape, stencil, dtype, rng):
    grid = GridParameterization(shape, stencil)
    X = rng.normal(size=(37, grid.n_pixels)).astype(dtype)
    center = rng.normal(size=grid.n_pixels)
    weights = rng.uniform(0, 2, size=37)
    moments = pattern_moments(X, grid, center=center, weights=weights)
    Y = X.astype(np.float64) - center
    dense = (Y * weights[:, None]).T @ Y
    rows, cols = grid.pair_indices()
    np.testing.assert_allclose(moments[grid.valid], dense[rows, cols], rtol=1e-10, atol=1e-10)
    assert np.all(moments[~grid.valid] == 0)


@pytest.mark.parametrize("shape", SHAPES + [(5, 4)])
@pytest.mark.parametrize("stencil", [4, 8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_quadratic_forms_match_dense(shape, stencil, dtype, rng):
    """23 rows, and the kernel on one to three chunks of them (23, 11 + 12, 7 + 8 + 8
    rows): blocks of eight read in place and the rest row by row through the buffer;
    grids one pixel wide or tall, whose shifts reach past the row, through the buffer."""
    from sparsegauss import _kernels

    grid = GridParameterization(shape, stencil)
    theta = rng.normal(size=grid.n_params)
    X = rng.normal(size=(23, grid.n_pixels)).astype(dtype)
    center = rng.normal(size=grid.n_pixels)
    quad = quadratic_forms(X, grid, grid.fields(theta), center=center)
    Y = X.astype(np.float64) - center
    expected = np.einsum("ni,ij,nj->n", Y, dense_precision(grid, theta), Y)
    np.testing.assert_allclose(quad, expected, rtol=1e-10, atol=1e-10)
    for n_chunks in (1, 2, 3):
        np.testing.assert_allclose(
            _kernels.quadratic_forms(X, np.empty(0, dtype=np.int64), center,
                                     grid.fields(theta), grid.shifts, grid.multiplicity,
                                     n_chunks), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("stencil", [4, 8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_passes_read_a_row_selection_in_place(stencil, dtype, rng):
    """A minibatch given as a RowSelection (unsorted, repeated rows) gives the numbers of
    its gathered rows in both passes, weighted and centred; anything else sees the
    gathered array; and the grid Gaussian (only) hands out selections."""
    from sparsegauss.models import GridGaussianEnergy
    from sparsegauss.models.base import EnergyModel
    from sparsegauss.stats import RowSelection

    grid = GridParameterization((5, 4), stencil)
    X = rng.normal(size=(50, grid.n_pixels)).astype(dtype)
    rows = np.array([7, 3, 3, 49, 0, 12, 31, 8, 8, 20, 5])
    batch = RowSelection(X, rows)
    gathered = X[rows]
    theta = rng.normal(size=grid.n_params)
    center = rng.normal(size=grid.n_pixels)
    weights = rng.uniform(0, 2, size=rows.size)
    assert batch.shape == gathered.shape and len(batch) == rows.size
    assert batch.dtype == dtype and batch.ndim == 2
    np.testing.assert_array_equal(np.asarray(batch), gathered)
    assert np.asarray(batch, dtype=np.float64).dtype == np.float64
    np.testing.assert_array_equal(
        quadratic_forms(batch, grid, grid.fields(theta), center=center),
        quadratic_forms(gathered, grid, grid.fields(theta), center=center))
    np.testing.assert_allclose(
        pattern_moments(batch, grid, center=center, weights=weights),
        pattern_moments(gathered, grid, center=center, weights=weights), rtol=1e-13, atol=0)
    model = GridGaussianEnergy(grid)
    assert isinstance(model.minibatch(X, rows), RowSelection)
    assert isinstance(model.minibatch(X[:, ::-1], rows), np.ndarray)   # not C-contiguous
    assert isinstance(EnergyModel.minibatch(model, X, rows), np.ndarray)
    with pytest.raises(TypeError, match="C-contiguous float32 or float64"):
        RowSelection(X.astype(np.int64), rows)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_centred_selection_reads_as_its_centred_rows(dtype, rng):
    """RowSelection(X, rows, center=c) is X[rows] − c to every pass (quadratic forms with
    a centre of their own on top, moments, NCE's two-class pass with a centre for each
    class) and to NumPy; indexing it selects among its rows (slices, negative and boolean
    indices) and keeps the centre; the grid Gaussian's minibatch of it is a take of valid
    rows."""
    from sparsegauss.models import GridGaussianEnergy
    from sparsegauss.stats import RowSelection, logistic_moments

    grid = GridParameterization((5, 6), 8)
    X = (rng.normal(size=(40, grid.n_pixels)) + 5.0).astype(dtype)
    Y = (rng.normal(size=(30, grid.n_pixels)) - 3.0).astype(dtype)
    c_x, c_y = rng.normal(size=grid.n_pixels) + 5.0, rng.normal(size=grid.n_pixels) - 3.0
    extra = rng.normal(size=grid.n_pixels)
    theta = rng.normal(size=grid.n_params)
    fields = grid.fields(theta)
    whole = RowSelection(X, center=c_x)
    assert whole.shape == X.shape and len(whole) == 40 and whole.dtype == dtype
    rows = np.array([3, 3, 39, 0, 17, -1, -40])
    for selection, expected_rows in ((whole, np.arange(40)), (whole[rows], rows % 40),
                                     (whole[5:29:3], np.arange(5, 29, 3)),
                                     (whole[rows][1:4], (rows % 40)[1:4]),
                                     (whole[np.arange(40) % 3 == 0], np.arange(0, 40, 3))):
        dense = X[expected_rows].astype(np.float64) - c_x
        gathered = np.asarray(selection)
        assert gathered.dtype == dtype and selection.shape == dense.shape
        np.testing.assert_allclose(gathered, dense, rtol=0,
                                   atol=16 * np.finfo(dtype).eps * 8)
        u = dense - extra
        np.testing.assert_allclose(
            quadratic_forms(selection, grid, fields, center=extra),
            np.einsum("ni,ij,nj->n", u, dense_precision(grid, theta), u), rtol=1e-10)
        np.testing.assert_allclose(
            pattern_moments(selection, grid)[grid.valid],
            (dense.T @ dense)[grid.pair_indices()], rtol=1e-10, atol=1e-10)
        offsets = rng.normal(size=len(dense) + len(Y))
        centred_y = RowSelection(Y, center=c_y)
        got = logistic_moments(selection, centred_y, grid, fields, offsets[:len(dense)],
                               offsets[len(dense):])
        want = logistic_moments(dense, Y.astype(np.float64) - c_y, grid, fields,
                                offsets[:len(dense)], offsets[len(dense):])
        np.testing.assert_allclose(got[:2], want[:2], rtol=1e-10)
        np.testing.assert_allclose(got[2], want[2], rtol=1e-10, atol=1e-10)
    # The minibatch takes the optimizer's (valid) rows without __getitem__'s checks, and
    # a take of a selection selects among its rows.
    batch = GridGaussianEnergy(grid).minibatch(whole, rows % 40)
    assert isinstance(batch, RowSelection) and batch.center is whole.center
    np.testing.assert_array_equal(batch.rows, rows % 40)
    some = np.array([0, 7, 2, 2])
    taken = whole[5:29:3].take(some)
    np.testing.assert_array_equal(taken.rows, np.arange(5, 29, 3)[some])
    np.testing.assert_array_equal(np.asarray(taken), np.asarray(whole[5:29:3][some]))
    assert taken.center is whole.center
    # X itself is never written: the centre is subtracted as the rows are read.
    assert np.asarray(RowSelection(X), dtype=None) is X
    with pytest.raises(IndexError, match="out of range"):
        whole[np.array([40])]
    with pytest.raises(IndexError, match="boolean row mask"):
        whole[np.ones(39, dtype=bool)]
    with pytest.raises(TypeError, match="indexed by rows only"):
        whole[0, 1]
    with pytest.raises(ValueError, match="one value per column"):
        RowSelection(X, center=c_x[:-1])
    with pytest.raises(ValueError, match="one value per pixel"):
        quadratic_forms(whole, grid, fields, center=extra[:-1])


def test_iterative_fits_do_not_copy_the_data(rng):
    """GridGaussian's iterative estimators read the data centred on the fly: a CD fit
    (no noise pool) allocates far less than the data (a centred copy would be all of
    it), and its estimate equals the one from data that are not C-contiguous, which are
    centred by a copy."""
    import tracemalloc
    import warnings

    from sparsegauss import GridGaussian

    X = rng.normal(size=(20_000, 64)) + 3.0
    fortran = np.asfortranarray(X)
    # A first fit in the process loads Numba's registries (15 MB traced): warm up on a
    # few rows, or the test passes only after other tests have fitted something.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        GridGaussian((8, 8), method="cd", max_iter=1, random_state=0).fit(X[:500])
    fits = []
    for data in (X, fortran):
        tracemalloc.start()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits.append(GridGaussian((8, 8), method="cd", max_iter=5, random_state=0)
                        .fit(data))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if data is X:
            assert peak < 0.25 * X.nbytes, (peak, X.nbytes)
    np.testing.assert_allclose(fits[0].theta_, fits[1].theta_, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stencil", [4, 8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_x, n_y", [(37, 23), (37, 0), (0, 23)])
def test_logistic_moments_match_dense(shape, stencil, dtype, n_x, n_y, rng):
    """NCE's one-read pass of both classes against dense NumPy: a_n = −½ uᵀΛu − o_n, the
    loss Σ softplus(−y a), the weights w = −y σ(−y a) summed and on the pattern's
    products (y = +1 for X's rows, −1 for Y's); 37 + 23 rows (not a multiple of the
    kernel's blocks of eight, a block straddling the classes), each class alone,
    offsets that saturate the logistic both ways (no overflow, no NaN), a row selection
    read in place beside a contiguous array."""
    from scipy.special import expit

    from sparsegauss.stats import RowSelection, logistic_moments

    grid = GridParameterization(shape, stencil)
    theta = rng.normal(size=grid.n_params)
    X = rng.normal(size=(60, grid.n_pixels)).astype(dtype)
    rows = rng.choice(60, n_x, replace=False)
    Y = rng.normal(size=(n_y, grid.n_pixels)).astype(dtype)
    offsets = rng.normal(scale=3.0, size=n_x + n_y)
    offsets[:3] = [800.0, -800.0, 0.0]
    x_offsets, y_offsets = offsets[:n_x], offsets[n_x:]
    loss, weight, moments = logistic_moments(RowSelection(X, rows), Y, grid,
                                             grid.fields(theta), x_offsets, y_offsets)
    U = np.vstack([X[rows], Y]).astype(np.float64)
    labels = np.repeat([1.0, -1.0], [n_x, n_y])
    a = -0.5 * np.einsum("ni,ij,nj->n", U, dense_precision(grid, theta), U) - offsets
    w = -labels * expit(-labels * a)
    np.testing.assert_allclose(loss, np.sum(np.logaddexp(0.0, -labels * a)), rtol=1e-11)
    np.testing.assert_allclose(weight, np.sum(w), rtol=1e-11, atol=1e-14)
    dense = (U * w[:, None]).T @ U
    pairs = grid.pair_indices()
    np.testing.assert_allclose(moments[grid.valid], dense[pairs], rtol=1e-10, atol=1e-10)
    assert np.all(moments[~grid.valid] == 0)
    same = logistic_moments(X[rows], Y, grid, grid.fields(theta), x_offsets, y_offsets)
    np.testing.assert_allclose(same[2], moments, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="one value per row of X"):
        logistic_moments(X[rows], Y, grid, grid.fields(theta), x_offsets[:-1] if n_x
                         else [0.0], y_offsets)
    with pytest.raises(ValueError, match="one value per row of Y"):
        logistic_moments(X[rows], Y, grid, grid.fields(theta), x_offsets,
                         np.append(y_offsets, 0.0))
    with pytest.raises(ValueError, match="columns"):
        logistic_moments(X[rows], Y[:, 1:], grid, grid.fields(theta), x_offsets, y_offsets)


@pytest.mark.parametrize("stencil", [4, 8])
def test_grid_gaussian_logistic_terms_match_the_generic_ones(stencil, rng):
    """The grid Gaussian's one-pass logistic_terms give the generic ones (two passes a
    class, from log_density_vjp), which NCE used before."""
    from sparsegauss.models import GridGaussianEnergy
    from sparsegauss.models.base import EnergyModel

    grid = GridParameterization((6, 7), stencil)
    theta = rng.normal(size=grid.n_params)
    model = GridGaussianEnergy(grid)
    X = rng.normal(size=(41, grid.n_pixels))
    Y = rng.normal(size=(19, grid.n_pixels))
    x_offsets = rng.normal(scale=5.0, size=41)
    y_offsets = rng.normal(scale=5.0, size=19)
    fused = model.logistic_terms(theta, X, x_offsets, Y, y_offsets)
    generic = EnergyModel.logistic_terms(model, theta, X, x_offsets, Y, y_offsets)
    np.testing.assert_allclose(fused[0], generic[0], rtol=1e-12)
    np.testing.assert_allclose(fused[1], generic[1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fused[2], generic[2], rtol=1e-12)


def test_trace_identity(rng):
    """Σ_n xᵀΛx = Σ_k m_k Σ_p F[k,p] T[k,p]: the identity the likelihood relies on."""
    grid = GridParameterization((6, 5), 8)
    theta = rng.normal(size=grid.n_params)
    X = rng.normal(size=(40, grid.n_pixels))
    moments = pattern_moments(X, grid)
    lhs = quadratic_forms(X, grid, grid.fields(theta)).sum()
    rhs = np.sum(grid.multiplicity[:, None] * grid.fields(theta) * moments)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


def test_many_samples_chunked_like_one(rng):
    grid = GridParameterization((4, 4), 4)
    X = rng.normal(size=(1001, grid.n_pixels))
    whole = pattern_moments(X, grid)
    parts = pattern_moments(X[:500], grid) + pattern_moments(X[500:], grid)
    np.testing.assert_allclose(whole, parts, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_moment_kernel_any_shifts_against_numpy(dtype, rng):
    """The kernel groups non-negative shifts three to a loop and gives negative ones (score
    matching's extended offsets on grids one or two pixels wide) their own: every grouping
    and a shift past the row's end, against a direct NumPy sum (partners outside the row
    count as zero). 37 samples in one, two and three chunks: last blocks of four partial
    (one to three rows) or full. Three and five terms with the diagonal first and positive shifts shorter than the row are read
    from the rows in place, their last ``max(shifts)`` pixels through a zero-padded
    buffer (unsorted shifts, a shift of ``d − 1``); any other set goes through the
    buffer."""
    from sparsegauss import _kernels

    d = 11
    X = rng.normal(size=(37, d)).astype(dtype)
    center = rng.normal(size=d)
    weights = rng.uniform(0, 2, size=37)
    Y = X.astype(np.float64) - center
    every_row = np.empty(0, dtype=np.int64)
    for shifts, n_chunks in itertools.product(
            ([0], [0, 1], [0, 1, 3], [0, 1, 3, 4], [0, 1, 3, 4, 5], [0, 10, 1],
             [0, 5, 2, 10, 9], [1, 0, 3], [0, 2, -1, 1, 12, 5, -3]), (1, 2, 3)):
        shifts = np.array(shifts, dtype=np.int64)
        sums = np.zeros((n_chunks, d))
        moments = _kernels.pattern_moments(X, every_row, center, weights, shifts, n_chunks,
                                           sums)
        np.testing.assert_allclose(sums.sum(axis=0), weights @ Y, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(_kernels.pattern_moments(X, every_row, center, weights,
                                                            shifts, n_chunks,
                                                            np.zeros((n_chunks, 0))),
                                   moments)
        for k, s in enumerate(shifts):
            expected = np.zeros(d)
            for p in range(d):
                if 0 <= p + s < d:
                    expected[p] = np.sum(weights * Y[:, p] * Y[:, p + s])
            np.testing.assert_allclose(moments[k], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_moment_sums_by_pixel_tiles_against_numpy(dtype, rng):
    """Few wide rows (a shard's chunk) are summed by tiles of pixels: partners in the next
    tile, the last (short) tile, shifts past the end, a partial block of samples, and
    the split chosen by moment_sums."""
    from sparsegauss import _kernels
    from sparsegauss.stats import moment_sums

    d = 2 * 4096 + 1000
    X = rng.normal(size=(7, d)).astype(dtype)
    center = rng.normal(size=d)
    weights = rng.uniform(0, 2, size=7)
    Y = X.astype(np.float64) - center
    shifts = np.array([0, 1, 91, 92, 93, 4200], dtype=np.int64)
    expected = np.zeros((shifts.size, d))
    for k, s in enumerate(shifts):
        expected[k, :d - s] = (weights[:, None] * Y[:, :d - s] * Y[:, s:]).sum(axis=0)
    for tile in (4096, 1000, 97):
        sums = np.zeros(d)
        np.testing.assert_allclose(
            _kernels.pattern_moments_tiled(X, center, weights, shifts, tile, sums), expected,
            rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(sums, weights @ Y, rtol=1e-10, atol=1e-10)
    moments, sums = moment_sums(X, center, weights, shifts, with_sums=True)
    np.testing.assert_allclose(moments, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(sums, weights @ Y, rtol=1e-10, atol=1e-10)
    # Many rows of the same width take the split by samples, with the same sums.
    many = np.repeat(X, 40, axis=0)
    np.testing.assert_allclose(moment_sums(many, center, np.repeat(weights, 40), shifts),
                               40 * expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_samples, width, offset", [(2, 4, 0.0), (1001, 4, 0.0),
                                                      (1001, 5, 1e6), (9, 2 * 4096 + 3, 3.0)])
def test_moments_about_the_mean_from_one_read(dtype, n_samples, width, offset, rng):
    """Summed about a provisional centre and corrected: against NumPy's covariance about
    the mean, for data with a large offset (summing about zero would lose 12 digits),
    rows sorted by their mean (the provisional centre far from the mean), and wide rows
    (the split by pixel tiles)."""
    from sparsegauss.stats import pattern_moments_about_mean

    grid = GridParameterization((3, width), 8)
    X = rng.normal(size=(n_samples, grid.n_pixels)) + offset
    X = X[np.argsort(X.mean(axis=1))].astype(dtype)
    moments, mean = pattern_moments_about_mean(X, grid)
    X64 = X.astype(np.float64)
    np.testing.assert_allclose(mean, X64.mean(axis=0), rtol=1e-13)
    expected = pattern_moments(X64, grid, center=X64.mean(axis=0))
    if grid.n_pixels <= 100:
        covariance = np.cov(X64, rowvar=False, bias=True) * n_samples
        rows, cols = grid.pair_indices()
        np.testing.assert_allclose(expected[grid.valid], covariance[rows, cols], rtol=1e-9,
                                   atol=1e-9 * np.abs(covariance).max())
    np.testing.assert_allclose(moments, expected, rtol=1e-9,
                               atol=1e-11 * np.abs(expected).max())


def test_pattern_moments_refuse_weights_of_the_wrong_length(rng):
    """The kernels read one weight a row unchecked: a short weight vector is an error
    that says what was expected, not a read past its end."""
    grid = GridParameterization((4, 5), 4)
    X = rng.normal(size=(10, grid.n_pixels))
    with pytest.raises(ValueError, match=r"expected \(10,\), one value per sample"):
        pattern_moments(X, grid, weights=np.ones(9))
