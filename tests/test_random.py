"""The library's own normal variates (`sparsegauss._random`, ziggurat on SplitMix64
streams) against the normal distribution, and their reproducibility."""

import numpy as np
import pytest
from scipy import stats

from sparsegauss import _kernels
from sparsegauss._random import standard_normal


@pytest.fixture(scope="module")
def draws():
    return standard_normal(np.random.default_rng(20261130), (2000, 2500))


def test_ziggurat_tables_tile_the_density():
    """Every layer has the same area v, and the top layer ends at x = 0."""
    x, ratio, f = _kernels.ZIGGURAT
    r, v = x[1], _kernels._ZIGGURAT_V
    tail = stats.norm.sf(r) * np.sqrt(2 * np.pi)        # ∫_r^∞ exp(−t²/2) dt
    assert r * f[1] + tail == pytest.approx(v, rel=1e-9)
    areas = x[1:256] * (f[2:257] - f[1:256])            # layers 1 … 255
    np.testing.assert_allclose(areas, v, rtol=1e-8)
    assert x[256] == 0.0 and np.all(np.diff(x[1:]) < 0)


def test_variates_follow_the_normal_distribution(draws):
    """Five million variates: histogram (χ² over 200 bins to ±5), the two tails the
    ziggurat treats apart (beyond its base strip r ≈ 3.65, and beyond 4.5), the first
    four moments and the correlation of neighbours, within their sampling error."""
    z = draws.ravel()
    n = z.size
    edges = np.linspace(-5.0, 5.0, 201)
    counts, _ = np.histogram(z, edges)
    expected = n * np.diff(stats.norm.cdf(edges))
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert stats.chi2.sf(chi2, len(counts) - 1) > 1e-3
    for threshold in (_kernels.ZIGGURAT[0][1], 4.5):
        p = 2 * stats.norm.sf(threshold)
        observed = np.count_nonzero(np.abs(z) > threshold)
        assert abs(observed - n * p) < 4.5 * np.sqrt(n * p)
    assert abs(z.mean()) < 4.5 / np.sqrt(n)
    assert abs(z.var() - 1.0) < 4.5 * np.sqrt(2.0 / n)
    assert abs(stats.skew(z)) < 4.5 * np.sqrt(6.0 / n)
    assert abs(stats.kurtosis(z)) < 4.5 * np.sqrt(24.0 / n)
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 4.5 / np.sqrt(n)
    # Rows are separate streams: row r against row r + 1.
    rows = draws[:-1].ravel(), draws[1:].ravel()
    assert abs(np.corrcoef(*rows)[0, 1]) < 4.5 / np.sqrt(rows[0].size)


def test_the_generator_state_alone_decides_the_numbers():
    """Same Generator state, same numbers (filled in place or not); the draw advances
    the Generator, so the next call differs."""
    a = standard_normal(np.random.default_rng(3), (4, 5))
    out = np.empty((4, 5))
    rng = np.random.default_rng(3)
    b = standard_normal(rng, (4, 5), out=out)
    assert b is out
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, standard_normal(rng, (4, 5)))
    assert standard_normal(np.random.default_rng(3), 7).shape == (7,)


def test_a_draw_in_row_blocks_equals_the_whole_draw():
    """With one seed, blocks of rows given their first row's index reproduce the rows
    of a single draw (what sampling in solve-sized blocks relies on)."""
    whole = standard_normal(None, (10, 6), seed=123)
    parts = [standard_normal(None, (b - a, 6), seed=123, first_row=a)
             for a, b in ((0, 3), (3, 4), (4, 10))]
    np.testing.assert_array_equal(np.vstack(parts), whole)


@pytest.mark.parametrize("n_streams", [1, 13, 64])
def test_a_transposed_draw_is_the_draw_transposed(n_streams):
    """Stream ``c`` in column ``c`` (the layout the samplers solve in) gives the numbers
    of the row layout to the bit: the first tries are made across streams and the second
    tries found eight flags at a time, so the column counts here include ones that are not
    a multiple of 8; 2,500 variates a stream hold about 25 second tries each."""
    rows = np.empty((n_streams, 2500))
    _kernels.standard_normal_rows(77, rows, 5)
    columns = np.empty((2500, n_streams))
    _kernels.standard_normal_rows(77, columns, 5, True)
    np.testing.assert_array_equal(columns, rows.T)


def test_mala_proposals_carry_the_same_normals():
    """MALA's proposal kernel draws its normals in the pass that forms ``x + εψ + √(2ε)ξ``
    and finishes the ziggurat's rare second tries afterwards: with ε = ½ (√(2ε) = 1) and
    x = ψ = 0 the proposals are the rows of ``standard_normal_rows`` for the same seed,
    and the forward log-density is −‖ξ‖²/2 per row. 64 rows of 2,500 variates hold
    about 1,600 second tries."""
    x = np.zeros((64, 2500))
    proposal = np.empty_like(x)
    forward = _kernels.mala_propose(99, x, x, 0.5, proposal)
    rows = standard_normal(None, x.shape, seed=99)
    np.testing.assert_allclose(proposal, rows, rtol=0, atol=1e-15)
    np.testing.assert_allclose(forward, -0.5 * np.sum(rows ** 2, axis=1), rtol=1e-12)
    first = np.array([[_first_try_value(99, r, j) for j in range(50)] for r in range(3)])
    assert np.count_nonzero(first != rows[:3, :50]) < 10     # mostly first tries


def _first_try_value(seed, row, j):
    """A row's j-th first try, in Python (the counter-based stream of the kernels)."""
    mask = (1 << 64) - 1

    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    golden = 0x9E3779B97F4A7C15
    start = mix((row * golden + golden) & mask)             # the row's stream ...
    start = mix(((seed ^ start) + golden) & mask)           # ... under this seed
    bits = mix((start + (j + 1) * golden) & mask)
    x = _kernels.ZIGGURAT[0]
    u = 2.0 * ((bits >> 11) * 2.0 ** -53) - 1.0
    return u * x[bits & 255]
