import numpy as np
import pytest
import scipy.sparse as sp

from sparsegauss.cholesky import SparseCholesky, solve_once
from sparsegauss.exceptions import NotPositiveDefiniteError
from sparsegauss.grid import GridParameterization
from sparsegauss.normalization import LOG_2PI, GridNormalizer
from conftest import SHAPES, dense_precision, random_spd_theta


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stencil", [4, 8])
@pytest.mark.parametrize("mode", ["simplicial", "supernodal"])
def test_logdet_solve_and_selected_inverse_match_numpy(shape, stencil, mode, rng):
    grid = GridParameterization(shape, stencil)
    theta = random_spd_theta(grid, rng)
    dense = dense_precision(grid, theta)
    factor = SparseCholesky(grid.pattern, mode=mode).factorize(grid.precision(theta))

    np.testing.assert_allclose(factor.logdet(), np.linalg.slogdet(dense)[1], rtol=1e-10)
    b = rng.normal(size=(grid.n_pixels, 3))
    np.testing.assert_allclose(factor.solve(b), np.linalg.solve(dense, b), rtol=1e-8, atol=1e-10)

    rows, cols = grid.pair_indices()
    inverse = np.linalg.inv(dense)
    np.testing.assert_allclose(factor.selected_inverse(rows, cols), inverse[rows, cols],
                               rtol=1e-9, atol=1e-12)


def test_selected_inverse_on_a_large_grid_against_solves(rng):
    """A 40x40 8-neighbour grid (supernodal factor with fill): spot-check columns by solves."""
    grid = GridParameterization((40, 40), 8)
    fields = np.zeros((grid.n_terms, grid.n_pixels))
    fields[0] = 4.0 + rng.uniform(0, 1, grid.n_pixels)
    fields[1:] = rng.uniform(-0.45, 0.45, (grid.n_terms - 1, grid.n_pixels))
    theta = grid.project(fields * grid.valid)
    analysis = SparseCholesky(grid.pattern, mode="supernodal")
    factor = analysis.factorize(grid.precision(theta))
    rows, cols = grid.pair_indices()
    values = factor.selected_inverse(rows, cols)
    picked = rng.choice(grid.n_pixels, 25, replace=False)
    columns = factor.solve(np.eye(grid.n_pixels)[:, picked])
    for j, col in enumerate(picked):
        mask = cols == col
        np.testing.assert_allclose(values[mask], columns[rows[mask], j], rtol=1e-9)


@pytest.mark.parametrize("mode", ["simplicial", "supernodal", "auto"])
def test_indefinite_matrix_raises_with_the_failing_pixel(mode):
    grid = GridParameterization((4, 5), 4)
    fields = np.zeros((grid.n_terms, grid.n_pixels))
    fields[0] = 2.0
    fields[0, 13] = -1.0       # one negative diagonal entry: indefinite
    theta = grid.project(fields)
    analysis = SparseCholesky(grid.pattern, mode=mode)
    with pytest.raises(NotPositiveDefiniteError, match="not positive definite") as info:
        analysis.factorize(grid.precision(theta))
    assert info.value.column == 13
    assert isinstance(info.value, np.linalg.LinAlgError)
    # The analysis stays usable after a failure.
    fields[0, 13] = 2.0
    assert np.isfinite(analysis.factorize(grid.precision(grid.project(fields))).logdet())


def test_singular_and_nonfinite_matrices_raise():
    grid = GridParameterization((3, 3), 4)
    analysis = SparseCholesky(grid.pattern)
    with pytest.raises(NotPositiveDefiniteError):
        analysis.factorize(grid.precision(np.zeros(grid.n_params)))
    theta = np.ones(grid.n_params)
    theta[0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        analysis.factorize(grid.precision(theta))


def test_sample_covariance_converges_to_the_inverse(rng):
    grid = GridParameterization((3, 3), 8)
    theta = random_spd_theta(grid, rng, margin=0.5)
    inverse = np.linalg.inv(dense_precision(grid, theta))
    n = 200_000
    samples = SparseCholesky(grid.pattern).factorize(grid.precision(theta)).sample(n, rng)
    empirical = samples.T @ samples / n
    # Standard error of a Gaussian second moment: √((Σ_ii Σ_jj + Σ_ij²) / n); 5 s.e. over
    # 45 distinct entries fails by chance with probability < 3e-5.
    se = np.sqrt((np.outer(np.diag(inverse), np.diag(inverse)) + inverse ** 2) / n)
    assert np.all(np.abs(empirical - inverse) < 5 * se)
    assert np.all(np.abs(samples.mean(axis=0)) < 5 * np.sqrt(np.diag(inverse) / n))


def test_samples_are_reproducible(rng):
    grid = GridParameterization((4, 4), 4)
    factor = SparseCholesky(grid.pattern).factorize(grid.precision(random_spd_theta(grid, rng)))
    np.testing.assert_array_equal(factor.sample(5, 7), factor.sample(5, 7))


@pytest.mark.parametrize("kernel_solve", [True, False])
def test_samples_are_written_into_a_given_array(rng, monkeypatch, kernel_solve):
    """``out=`` receives the same draws as a new array (a noise pool is then not copied),
    on both solve paths; an array of the wrong shape, dtype or layout is refused."""
    import sparsegauss.cholesky as cholesky

    grid = GridParameterization((4, 4), 4)
    factor = SparseCholesky(grid.pattern).factorize(grid.precision(random_spd_theta(grid, rng)))
    if not kernel_solve:
        monkeypatch.setattr(cholesky, "_KERNEL_SOLVE_MAX_PIXELS", 0)
    out = np.full((6, grid.n_pixels), np.nan)
    assert factor.sample(6, 7, out=out) is out
    np.testing.assert_array_equal(out, factor.sample(6, 7))
    for wrong in (np.empty((5, grid.n_pixels)), np.empty((6, grid.n_pixels), np.float32),
                  np.empty((grid.n_pixels, 6)).T):
        with pytest.raises(ValueError, match="C-contiguous float64 array of shape"):
            factor.sample(6, 7, out=wrong)


def test_samples_do_not_depend_on_the_solve_block(rng, monkeypatch):
    """Large grids solve for fewer samples at a time, with CHOLMOD instead of the
    library's kernel; the draws must be the same (up to the rounding of a different
    solve)."""
    import sparsegauss.cholesky as cholesky

    grid = GridParameterization((4, 4), 4)
    factor = SparseCholesky(grid.pattern).factorize(grid.precision(random_spd_theta(grid, rng)))
    whole = factor.sample(10, 7)
    monkeypatch.setattr(cholesky, "_KERNEL_SOLVE_BLOCK", 3)
    np.testing.assert_allclose(factor.sample(10, 7), whole, rtol=1e-12, atol=1e-14)
    # Nor on the number of threads the blocks are spread over.
    import numba
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        np.testing.assert_array_equal(factor.sample(10, 7), whole)
    finally:
        numba.set_num_threads(threads)
    # CHOLMOD's solve (the path of larger grids), in blocks of 3 too.
    monkeypatch.setattr(cholesky, "_KERNEL_SOLVE_MAX_PIXELS", 0)
    monkeypatch.setattr(cholesky, "_SAMPLE_BLOCK_VALUES", 3 * grid.n_pixels)
    np.testing.assert_allclose(factor.sample(10, 7), whole, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("stencil", [4, 8])
@pytest.mark.parametrize("tying", ["untied", "tied"])
def test_log_partition_and_gradient(stencil, tying, rng):
    grid = GridParameterization((4, 3), stencil, tying)
    theta = random_spd_theta(grid, rng)
    normalizer = GridNormalizer(grid)
    log_z, grad, _ = normalizer.value_and_grad(theta)
    dense = dense_precision(grid, theta)
    np.testing.assert_allclose(
        log_z, 0.5 * grid.n_pixels * LOG_2PI - 0.5 * np.linalg.slogdet(dense)[1], rtol=1e-12)
    step = 1e-6
    numeric = np.array([(normalizer.log_partition(theta + step * e)
                         - normalizer.log_partition(theta - step * e)) / (2 * step)
                        for e in np.eye(grid.n_params)])
    # Central differences: error O(step²·|f'''|) plus rounding O(eps·|f|/step) ≈ 1e-9.
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7)


def test_non_square_pattern_is_rejected():
    with pytest.raises(ValueError, match="square"):
        SparseCholesky(sp.csc_matrix(np.ones((2, 3))))


@pytest.mark.parametrize("mode", ["simplicial", "supernodal"])
@pytest.mark.parametrize("shape, stencil", [((1, 1), 4), ((1, 9), 4), ((9, 1), 8), ((7, 9), 4),
                                            ((12, 10), 8), ((30, 30), 4), ((24, 26), 8)])
def test_takahashi_kernel_matches_the_dense_inverse_on_the_whole_factor(shape, stencil, mode,
                                                                       rng):
    """Every entry of the selected inverse on L's filled pattern, against a dense inverse.

    The shapes give supernodes done in loops (chains, small grids) and by BLAS (30×30 and
    24×26 have blocks of hundreds of entries); CHOLMOD's supernodal factors carry
    relaxed supernodes with explicit zeros, its simplicial ones none.
    """
    from sparsegauss import _kernels
    grid = GridParameterization(shape, stencil)
    fields = np.zeros((grid.n_terms, grid.n_pixels))
    fields[0] = 4.0 + rng.uniform(0, 1, grid.n_pixels)
    fields[1:] = rng.uniform(-0.9, 0.9, (grid.n_terms - 1, grid.n_pixels)) * 4 / stencil
    theta = grid.project(fields * grid.valid)
    factor = SparseCholesky(grid.pattern, mode=mode).factorize(grid.precision(theta))
    lower = factor.lower()
    starts = factor._analysis.starts
    assert starts[0] == 0 and starts[-1] == grid.n_pixels
    sizes = np.diff(starts) * np.diff(lower.indptr)[starts[:-1]]
    if grid.n_pixels >= 600:
        # Both paths of the kernel run: blocks in loops and blocks by BLAS.
        assert sizes.min() <= _kernels._SMALL_BLOCK < sizes.max()
    # Into a buffer of NaNs: every entry must be written.
    perm = factor._analysis.permutation
    dense_inv = np.linalg.inv(grid.precision(theta).toarray())[np.ix_(perm, perm)]
    coo = lower.tocoo()
    split = _kernels.subtree_schedule(lower.indptr, lower.indices, starts)
    arguments = (lower.indptr, lower.indices, lower.data, starts)
    for run in (lambda z: _kernels.takahashi_supernodal(*arguments, z),  # one thread
                lambda z: _kernels.takahashi_supernodal_split(*arguments, z, *split)):
        inverse = np.full(lower.nnz, np.nan)
        run(inverse)
        np.testing.assert_allclose(inverse, dense_inv[coo.row, coo.col], rtol=1e-9,
                                   atol=1e-13)


def test_takahashi_kernel_refuses_a_pattern_that_is_not_closed_under_elimination():
    """A factor pattern missing a fill entry cannot be inverted by the recursion; the
    kernel says so instead of reading past a column."""
    from sparsegauss import _kernels
    # Column 0 couples rows 1 and 2, but column 1 lacks row 2 (the fill entry).
    lower = sp.csc_matrix(np.array([[2.0, 0, 0], [0.5, 2.0, 0], [0.5, 0, 2.0]]))
    lower.sort_indices()
    starts = np.array([0, 1, 2, 3], dtype=np.int64)
    with pytest.raises(ValueError, match="not closed under elimination"):
        _kernels.takahashi_supernodal(lower.indptr.astype(np.int64),
                                      lower.indices.astype(np.int64), lower.data, starts,
                                      np.empty(lower.nnz))


def test_takahashi_runs_on_one_blas_thread_and_restores_the_counts():
    """The kernel's BLAS calls must not spawn threads (they fight a busy core); the
    user's thread counts are restored afterwards, also after an error."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from sparsegauss._blas import all_blas_threads, one_blas_thread

    def blas_threads():
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        with one_blas_thread():
            assert set(blas_threads()) == {1}
        assert blas_threads() == before
        with pytest.raises(RuntimeError):
            with one_blas_thread():
                raise RuntimeError
        assert blas_threads() == before
        # Nested (a gradient of log Z around both kernels): one thread throughout, and
        # the counts come back only when the outer context ends.
        with one_blas_thread():
            with one_blas_thread():
                assert set(blas_threads()) == {1}
            assert set(blas_threads()) == {1}
        assert blas_threads() == before
        # A dense step inside a long one-thread run gets the user's counts back for
        # itself, and one thread again after (also after an error); outside any
        # one-thread context it changes nothing.
        with one_blas_thread():
            with all_blas_threads():
                assert blas_threads() == before
                with one_blas_thread():
                    assert set(blas_threads()) == {1}
                assert blas_threads() == before
            assert set(blas_threads()) == {1}
            with pytest.raises(RuntimeError):
                with all_blas_threads():
                    raise RuntimeError
            assert set(blas_threads()) == {1}
        assert blas_threads() == before
        with all_blas_threads():
            assert blas_threads() == before


@pytest.mark.parametrize("mode", ["simplicial", "supernodal"])
@pytest.mark.parametrize("shape, stencil", [((1, 1), 4), ((1, 9), 4), ((9, 1), 8), ((7, 9), 4),
                                            ((12, 10), 8), ((30, 30), 4), ((24, 26), 8)])
def test_factorization_kernel_matches_numpy_cholesky(shape, stencil, mode, rng):
    """The library's numeric factor against ``numpy.linalg.cholesky`` of ``P A Pᵀ``, entry
    by entry on the factor's structure, with zeros everywhere else (the structure holds
    all of L). Shapes as for the selected inverse: loops and BLAS blocks both run."""
    grid = GridParameterization(shape, stencil)
    theta = random_spd_theta(grid, rng)
    analysis = SparseCholesky(grid.pattern, mode=mode)
    factor = analysis.factorize(grid.precision(theta))
    perm = analysis.permutation
    dense = np.linalg.cholesky(dense_precision(grid, theta)[np.ix_(perm, perm)])
    lower = factor.lower().toarray()
    np.testing.assert_allclose(lower, dense, rtol=1e-10, atol=1e-12 * np.abs(dense).max())
    np.testing.assert_allclose(factor.pivots, np.diag(dense) ** 2, rtol=1e-12)


def test_factorization_reads_only_the_lower_triangle(rng):
    grid = GridParameterization((6, 7), 8)
    theta = random_spd_theta(grid, rng)
    full = grid.precision(theta)
    analysis = SparseCholesky(grid.pattern)
    expected = analysis.factorize(full).logdet()
    lower_only = analysis.factorize(sp.tril(full, format="csc")).logdet()
    garbage_above = sp.tril(full) + 7.0 * sp.triu(full, 1)
    assert lower_only == pytest.approx(expected, rel=1e-13)
    assert analysis.factorize(garbage_above).logdet() == pytest.approx(expected, rel=1e-13)


def test_indefinite_by_elimination_names_the_first_failing_pivot(rng):
    """Every diagonal entry positive, but strong couplings make a later pivot negative:
    the reported pixel is the first one, in elimination order, whose pivot fails, as in
    a dense Cholesky of ``P A Pᵀ``."""
    grid = GridParameterization((8, 9), 4)
    fields = np.zeros((grid.n_terms, grid.n_pixels))
    fields[0] = 1.0
    fields[1:] = -0.3
    fields[1:, 40:] = -0.9                       # too strong from here on
    theta = grid.project(fields * grid.valid)
    analysis = SparseCholesky(grid.pattern, mode="supernodal")
    dense = dense_precision(grid, theta)[np.ix_(analysis.permutation, analysis.permutation)]
    first_bad = None
    for k in range(1, grid.n_pixels + 1):        # leading minors in elimination order
        if np.linalg.eigvalsh(dense[:k, :k])[0] <= 0:
            first_bad = k - 1
            break
    assert first_bad is not None
    with pytest.raises(NotPositiveDefiniteError) as info:
        analysis.factorize(grid.precision(theta))
    assert info.value.column == analysis.permutation[first_bad]


def test_a_factor_overwritten_by_a_later_refactorization_says_so(rng):
    grid = GridParameterization((5, 6), 4)
    analysis = SparseCholesky(grid.pattern)
    theta1, theta2 = random_spd_theta(grid, rng), random_spd_theta(grid, rng)
    first = analysis.factorize(grid.precision(theta1))
    second = analysis.factorize(grid.precision(theta2))
    rows, cols = grid.pair_indices()
    with pytest.raises(RuntimeError, match="overwritten"):
        first.selected_inverse(rows, cols)
    # Its log-determinant and solves stay its own (the solve refactors CHOLMOD for it).
    b = rng.normal(size=grid.n_pixels)
    np.testing.assert_allclose(first.solve(b), np.linalg.solve(dense_precision(grid, theta1), b),
                               rtol=1e-9)
    assert first.logdet() == pytest.approx(np.linalg.slogdet(dense_precision(grid, theta1))[1])
    np.testing.assert_allclose(second.solve(b),
                               np.linalg.solve(dense_precision(grid, theta2), b), rtol=1e-9)
    np.testing.assert_allclose(second.selected_inverse(rows, cols),
                               np.linalg.inv(dense_precision(grid, theta2))[rows, cols],
                               rtol=1e-9)


def test_a_matrix_off_the_analyzed_pattern_is_refused():
    grid = GridParameterization((1, 16), 4)      # a chain: the exact factor has no fill
    analysis = SparseCholesky(grid.pattern, mode="simplicial")
    matrix = np.eye(16) * 3
    matrix[15, 0] = matrix[0, 15] = 1.0
    with pytest.raises(ValueError, match="outside the analyzed pattern"):
        analysis.factorize(sp.csc_matrix(matrix))
    with pytest.raises(ValueError, match="shape"):
        analysis.factorize(sp.eye(15, format="csc"))


def fundamental_supernode_starts(indptr, indices):
    """First column of each supernode of an exact (simplicial) factor structure, plus n:
    column j continues j − 1's supernode when its rows are j − 1's without j − 1 (a
    structural test, read from CHOLMOD's factor; the library's own definition also asks
    that j − 1 be j's only child)."""
    n = indptr.size - 1
    starts = [0]
    for j in range(1, n):
        previous = indices[indptr[j - 1] + 1:indptr[j]]
        if not np.array_equal(previous, indices[indptr[j]:indptr[j + 1]]):
            starts.append(j)
    return np.array(starts + [n])


@pytest.mark.parametrize("mode", ["simplicial", "supernodal"])
@pytest.mark.parametrize("shape, stencil", [((1, 1), 4), ((1, 9), 4), ((7, 9), 4), ((12, 10), 8),
                                            ((30, 30), 4), ((24, 26), 8), ((64, 64), 4)])
def test_symbolic_structure_is_cholmods(shape, stencil, mode, rng):
    """The library's symbolic factorization (elimination tree, column structures, relaxed
    amalgamation) gives exactly the structure of CHOLMOD's factor in the same mode: the
    pattern scikit-sparse's ``Factor.L()`` returns after a numeric factorization, with
    the relaxed supernodes' explicit zeros."""
    from sparsegauss import _kernels
    grid = GridParameterization(shape, stencil)
    analysis = SparseCholesky(grid.pattern, mode=mode)
    cholmod = analysis.cholmod
    cholmod.cholesky_inplace(grid.precision(random_spd_theta(grid, rng)))
    lower = cholmod.L()
    lower.sort_indices()
    np.testing.assert_array_equal(analysis.indptr, lower.indptr)
    np.testing.assert_array_equal(analysis.indices, lower.indices)
    if mode == "simplicial":
        np.testing.assert_array_equal(analysis.starts,
                                      fundamental_supernode_starts(lower.indptr, lower.indices))


def test_the_normalizers_factor_builds_its_matrix_only_for_solves(rng):
    """GridNormalizer refactors from θ's values without a SciPy matrix; a solve (CHOLMOD)
    builds the matrix of that θ, also after the normalizer has moved on."""
    grid = GridParameterization((6, 5), 8)
    normalizer = GridNormalizer(grid)
    theta = random_spd_theta(grid, rng)
    factor = normalizer.factorize(theta)
    assert callable(factor._matrix_source)
    b = rng.normal(size=grid.n_pixels)
    np.testing.assert_allclose(factor.solve(b),
                               np.linalg.solve(dense_precision(grid, theta), b), rtol=1e-10)
    bad = theta.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        normalizer.factorize(bad)


def _supernodal_parents(analysis):
    """Parent of each supernode in the supernodal elimination tree (-1 for a root)."""
    starts, indptr, indices = analysis.starts, analysis.indptr, analysis.indices
    owner = np.repeat(np.arange(starts.size - 1), np.diff(starts))
    parents = []
    for sn in range(starts.size - 1):
        f, width = starts[sn], starts[sn + 1] - starts[sn]
        below = indices[indptr[f] + width:indptr[f + 1]]
        parents.append(owner[below[0]] if below.size else -1)
    return np.array(parents)


@pytest.mark.parametrize("shape, stencil", [((7, 9), 4), ((30, 30), 4), ((24, 26), 8),
                                            ((40, 3), 8), ((1, 40), 4)])
def test_two_subtrees_at_once_give_the_one_thread_results(shape, stencil, split_threshold, rng):
    """With the supernodes split between two threads by subtrees (the second group's
    updates of the shared top chain kept in a private copy and added in after), the
    factor, the selected inverse and the first failing pivot are those of the dense
    oracle. The split itself: every supernode once, a group's supernodes have their
    ancestors in their own group or the chain, and both groups have work."""
    from sparsegauss import _kernels

    split_threshold(0)
    grid = GridParameterization(shape, stencil)
    theta = random_spd_theta(grid, rng)
    analysis = SparseCholesky(grid.pattern, mode="supernodal")
    n_super = analysis.starts.size - 1
    order, bounds, chain_first = _kernels.subtree_schedule(
        analysis.indptr, analysis.indices, analysis.starts)
    assert sorted([*order, *range(chain_first, n_super)]) == list(range(n_super))
    parents = _supernodal_parents(analysis)
    for g in range(2):
        members = set(order[bounds[g]:bounds[g + 1]])
        for sn in members:
            assert parents[sn] in members or parents[sn] >= chain_first
    # The chain is the root and its only-child descendants, down to the first
    # supernode with two or more children.
    children = np.bincount(parents[parents >= 0], minlength=n_super)
    assert parents[n_super - 1] == -1
    assert all(parents[sn] == sn + 1 for sn in range(chain_first, n_super - 1))
    assert all(children[sn] == 1 for sn in range(chain_first + 1, n_super))
    if shape == (1, 40):            # a path of supernodes has no two subtrees: one thread
        assert chain_first == 0 and analysis._schedule is None
    else:
        assert children[chain_first] >= 2
        assert 0 < bounds[1] < bounds[2]
        assert analysis._schedule is not None

    perm = analysis.permutation
    precision = dense_precision(grid, theta)[np.ix_(perm, perm)]
    factor = analysis.factorize(grid.precision(theta))
    dense = np.linalg.cholesky(precision)
    np.testing.assert_allclose(factor.lower().toarray(), dense, rtol=1e-10,
                               atol=1e-12 * np.abs(dense).max())
    inverse = analysis._selected_inverse_on_factor()
    coo = factor.lower().tocoo()
    np.testing.assert_allclose(inverse, np.linalg.inv(precision)[coo.row, coo.col],
                               rtol=1e-9, atol=1e-13)

    # Too strong couplings from the middle on: the first failing pivot in elimination
    # order, wherever it falls among the groups.
    fields = np.zeros((grid.n_terms, grid.n_pixels))
    fields[0] = 1.0
    fields[1:] = -0.2
    fields[1:, grid.n_pixels // 2:] = -0.9
    bad = grid.project(fields * grid.valid)
    dense_bad = dense_precision(grid, bad)[np.ix_(perm, perm)]
    first_bad = next((k - 1 for k in range(1, grid.n_pixels + 1)
                      if np.linalg.eigvalsh(dense_bad[:k, :k])[0] <= 0), None)
    if first_bad is not None:
        with pytest.raises(NotPositiveDefiniteError) as info:
            analysis.factorize(grid.precision(bad))
        assert info.value.column == perm[first_bad]


def test_solve_once_reads_the_lower_triangle_and_refuses_indefinite_matrices(rng):
    """The one-shot CHOLMOD solve (score matching's closed form): the dense solution
    from the lower triangle alone (an upper triangle of garbage is not read), several
    right-hand sides, and a clear error for an indefinite or non-finite matrix."""
    grid = GridParameterization((9, 7), 8)
    precision = grid.precision(random_spd_theta(grid, rng)).toarray()
    b = rng.normal(size=(grid.n_pixels, 3))
    expected = np.linalg.solve(precision, b)
    lower = np.tril(precision)
    np.testing.assert_allclose(solve_once(sp.csc_matrix(lower), b), expected, rtol=1e-10)
    garbage = lower + np.triu(rng.normal(size=lower.shape), 1)
    np.testing.assert_allclose(solve_once(sp.csr_matrix(garbage), b[:, 0]), expected[:, 0],
                               rtol=1e-10)
    indefinite = lower.copy()
    indefinite[30, 30] = -1.0
    with pytest.raises(NotPositiveDefiniteError, match="not positive definite"):
        solve_once(sp.csc_matrix(indefinite), b)
    lower[5, 2] = np.nan
    with pytest.raises(NotPositiveDefiniteError, match="NaN or inf"):
        solve_once(sp.csc_matrix(lower), b)


@pytest.mark.parametrize("stencil", [4, 8])
def test_factorize_and_invert_keeps_its_inverse_for_that_factor_only(stencil, rng):
    """The inverse computed beside the moments is the one the factor's selected_inverse
    returns (dense oracle); after a later refactorization the recursion runs again; the
    moments are those of the rows (dense sums); a failed factorization raises after the
    pass and leaves nothing stale."""
    grid = GridParameterization((6, 7), stencil)
    normalizer = GridNormalizer(grid)
    analysis = normalizer.analysis
    rows_, cols_ = grid.pair_indices()
    X = rng.normal(size=(30, grid.n_pixels))
    selected = np.array([3, 3, 8, 29], dtype=np.int64)
    weights = rng.uniform(0.5, 2.0, size=selected.size)
    first, second = random_spd_theta(grid, rng), random_spd_theta(grid, rng)
    data = grid.precision_data(first)
    factor, moments = analysis.factorize_and_invert(
        data, normalizer._positions, None, (X, selected, np.zeros(grid.n_pixels), weights,
                                            grid.shifts))
    sigma = np.linalg.inv(dense_precision(grid, first))
    np.testing.assert_allclose(factor.selected_inverse(rows_, cols_), sigma[rows_, cols_],
                               rtol=1e-10, atol=1e-13)
    Y = X[selected]
    for k, shift in enumerate(grid.shifts):
        partners = np.arange(grid.n_pixels) + shift
        inside = partners < grid.n_pixels
        expected = np.einsum("n,np,np->p", weights, Y[:, inside],
                             Y[:, partners[inside]])
        np.testing.assert_allclose(moments[k, inside], expected, rtol=1e-12)
    factor = analysis.factorize_values(grid.precision_data(second), normalizer._positions,
                                       None)
    sigma = np.linalg.inv(dense_precision(grid, second))
    np.testing.assert_allclose(factor.selected_inverse(rows_, cols_), sigma[rows_, cols_],
                               rtol=1e-10, atol=1e-13)
    with pytest.raises(NotPositiveDefiniteError):
        analysis.factorize_and_invert(-data, normalizer._positions, None,
                                      (X, selected, np.zeros(grid.n_pixels), weights,
                                       grid.shifts))
    factor = analysis.factorize_values(data, normalizer._positions, None)
    sigma = np.linalg.inv(dense_precision(grid, first))
    np.testing.assert_allclose(factor.selected_inverse(rows_, cols_), sigma[rows_, cols_],
                               rtol=1e-10, atol=1e-13)


def test_analyses_of_one_pattern_share_the_structure_not_the_values(rng):
    """Two SparseCholesky objects of one pattern share the factor's structure (one copy of
    the row indices, 1.7 GB at 2048×2048) and CHOLMOD's analysis, but not their numeric
    factors: each one's log det, solves (which refactor the shared CHOLMOD factor when the
    other used it last), samples' covariance and selected inverse stay its own matrix's,
    against dense NumPy. Another pattern or mode gets its own analysis."""
    grid = GridParameterization((9, 8), 8)
    a, b = SparseCholesky(grid.pattern), SparseCholesky(grid.pattern.copy())
    assert a.indices is b.indices and a.cholmod is b.cholmod
    assert SparseCholesky(grid.pattern, mode="simplicial").indices is not a.indices
    assert SparseCholesky(GridParameterization((8, 9), 8).pattern).indices is not a.indices
    A, B = (grid.precision(random_spd_theta(grid, rng)) for _ in range(2))
    factor_a, factor_b = a.factorize(A), b.factorize(B)
    rhs = rng.normal(size=grid.n_pixels)
    rows, cols = grid.pair_indices()
    for _ in range(2):                          # alternate users of CHOLMOD's factor
        for factor, matrix in ((factor_a, A), (factor_b, B)):
            dense = matrix.toarray()
            np.testing.assert_allclose(factor.solve(rhs), np.linalg.solve(dense, rhs),
                                       rtol=1e-10)
            np.testing.assert_allclose(factor.logdet(), np.linalg.slogdet(dense)[1],
                                       rtol=1e-12)
            np.testing.assert_allclose(factor.selected_inverse(rows, cols),
                                       np.linalg.inv(dense)[rows, cols], rtol=1e-9,
                                       atol=1e-12)
            z = rng.normal(size=(3, grid.n_pixels))
            x = factor.unwhiten(z)
            np.testing.assert_allclose(np.einsum("ni,ij,nj->n", x, dense, x),
                                       np.sum(z * z, axis=1), rtol=1e-9)
    # A released inverse buffer is computed again when asked for.
    a.release_inverse()
    np.testing.assert_allclose(factor_a.selected_inverse(rows, cols),
                               np.linalg.inv(A.toarray())[rows, cols], rtol=1e-9, atol=1e-12)
    # Whatever a caller factorizes into CHOLMOD's object directly is not taken for ours.
    a.cholmod.cholesky_inplace(B)
    np.testing.assert_allclose(factor_a.solve(rhs), np.linalg.solve(A.toarray(), rhs),
                               rtol=1e-10)


def test_shared_cholmod_factor_is_held_during_a_solve(rng):
    """Two threads solving with two factors of one pattern at once (CHOLMOD's numeric
    factor is shared, refactored for whichever solves): every solve is its own matrix's."""
    import threading

    grid = GridParameterization((12, 12), 4)
    matrices = [grid.precision(random_spd_theta(grid, rng)) for _ in range(2)]
    factors = [SparseCholesky(grid.pattern).factorize(m) for m in matrices]
    rhs = rng.normal(size=(grid.n_pixels, 4))
    expected = [np.linalg.solve(m.toarray(), rhs) for m in matrices]
    errors = []

    def solve_many(k):
        for _ in range(200):
            error = np.max(np.abs(factors[k].solve(rhs) - expected[k]))
            if error > 1e-8:
                errors.append(error)

    threads = [threading.Thread(target=solve_many, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("shape, stencil", [((6, 7), 4), ((24, 26), 8)])
def test_logdet_and_selected_inverse_in_one_call(shape, stencil, split, split_threshold,
                                                 rng):
    """The one-call gradient path (one thread) and its fallback (two-thread split): log
    det and Σ on the pattern against dense NumPy; an indefinite matrix raises with the
    failing pixel; factors made earlier become stale, and the normalizer's gradient by
    this path equals the one through a CholeskyFactor."""
    import sparsegauss.cholesky as cholesky

    split_threshold(0 if split else cholesky.PARALLEL_MIN_ENTRIES)
    grid = GridParameterization(shape, stencil)
    normalizer = GridNormalizer(grid)
    analysis = SparseCholesky(grid.pattern, mode="supernodal")
    assert analysis.splits_over_threads == split
    positions = analysis.value_positions(grid.precision(np.ones(grid.n_params)))
    rows, cols = grid.pair_indices()
    theta = random_spd_theta(grid, rng)
    earlier = analysis.factorize(grid.precision(theta))
    logdet, pairs = analysis.logdet_and_selected_inverse(grid.precision_data(theta),
                                                          positions, rows, cols)
    dense = dense_precision(grid, theta)
    np.testing.assert_allclose(logdet, np.linalg.slogdet(dense)[1], rtol=1e-12)
    np.testing.assert_allclose(pairs, np.linalg.inv(dense)[rows, cols], rtol=1e-10,
                               atol=1e-13)
    with pytest.raises(RuntimeError, match="overwritten"):
        earlier.selected_inverse(rows, cols)
    bad = theta.copy()
    bad[:grid.n_pixels] *= -1.0                  # negative diagonal: not PD at once
    with pytest.raises(NotPositiveDefiniteError, match="pixel"):
        analysis.logdet_and_selected_inverse(grid.precision_data(bad), positions, rows, cols)
    log_z, grad, pairs_again = normalizer.value_and_grad_pairs(theta)
    log_z_ref, grad_ref, pairs_ref = normalizer.value_and_grad_pairs_of(
        normalizer.factorize(theta))
    np.testing.assert_allclose([log_z, *grad, *pairs_again],
                               [log_z_ref, *grad_ref, *pairs_ref], rtol=1e-12, atol=1e-15)
