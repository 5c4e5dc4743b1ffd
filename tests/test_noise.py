import numpy as np
import pytest
from scipy.stats import multivariate_normal

from sparsegauss.noise import make_noise


@pytest.fixture
def data(rng):
    mixing = rng.normal(size=(12, 12)) * 0.4 + np.eye(12)
    X = rng.normal(size=(5000, 12)) @ mixing.T
    return X - X.mean(axis=0)


@pytest.mark.parametrize("kind", ["isotropic", "diagonal", "empirical", "grid"])
def test_noise_density_and_samples(kind, data, rng):
    noise = make_noise(kind, data, (3, 4))
    samples = noise.sample(20000, rng)
    covariance = samples.T @ samples / len(samples)
    if kind == "isotropic":
        expected = np.eye(12) * np.mean(np.var(data, axis=0))
    elif kind == "diagonal":
        expected = np.diag(np.var(data, axis=0))
    elif kind == "empirical":
        expected = data.T @ data / len(data)
    else:
        expected = np.linalg.inv(noise.distribution.precision.toarray())
    np.testing.assert_allclose(noise.score_samples(data[:20]),
                               multivariate_normal(np.zeros(12), expected).logpdf(data[:20]),
                               rtol=1e-6)
    # Sample covariance within sampling error (5 s.e. of a second moment).
    se = np.sqrt((np.outer(np.diag(expected), np.diag(expected)) + expected ** 2) / len(samples))
    assert np.all(np.abs(covariance - expected) < 5 * se)


@pytest.mark.parametrize("kind", ["grid", "grid-untied"])
def test_grid_noise_keeps_its_factor_but_not_the_fit_s_selected_inverse(kind, data, rng):
    """The grid noise's exact-MLE fit inverts at every step into a buffer as large as
    the factor; sampling and scoring need only the factor, so the noise does not keep
    the buffer (at 2048×2048 it sat beside NCE's whole fit: 1.7 GB). The noise still
    scores its samples exactly (against the dense density)."""
    noise = make_noise(kind, data, (3, 4))
    analysis = noise.distribution.normalizer.analysis
    assert analysis._inverse is None
    samples = noise.sample(5, rng)
    expected = multivariate_normal(
        np.zeros(12), np.linalg.inv(noise.distribution.precision.toarray())).logpdf(samples)
    np.testing.assert_allclose(noise.score_samples(samples), expected, rtol=1e-10)
    assert analysis._inverse is None


def test_custom_noise_object_and_errors(data):
    class Custom:
        def sample(self, n, random_state=None):
            return np.zeros((n, 12))

        def score_samples(self, X):
            return np.zeros(len(X))

    custom = Custom()
    assert make_noise(custom, data, (3, 4)) is custom
    with pytest.raises(TypeError, match="sample"):
        make_noise(object(), data, (3, 4))
    with pytest.raises(ValueError, match="'noise' parameter"):
        make_noise("laplace", data, (3, 4))


def test_nce_starts_at_the_noise_when_the_model_family_holds_it():
    from sparsegauss.estimators.fitting import noise_start
    from sparsegauss.grid import GridParameterization
    from sparsegauss.noise import make_noise

    rng = np.random.default_rng(0)
    base = rng.standard_normal((300, 5, 6))
    X = (base + 0.5 * np.roll(base, 1, axis=2)).reshape(300, -1)
    X -= X.mean(axis=0)
    shape = (5, 6)
    diagonal = make_noise("diagonal", X, shape)
    grid4 = GridParameterization(shape, 4)
    theta = noise_start(diagonal, grid4)
    np.testing.assert_allclose(grid4.precision(theta).diagonal(), 1 / diagonal.variances)
    assert np.count_nonzero(grid4.precision(theta).data) == X.shape[1]
    untied = make_noise("grid-untied", X, shape)
    grid8 = GridParameterization(shape, 8)
    theta8 = noise_start(untied, grid8)       # 4-neighbour noise inside an 8-neighbour model
    dense = untied.distribution.precision.toarray()
    np.testing.assert_allclose(grid8.precision(theta8).toarray(), dense, atol=1e-12)
    # Untied couplings cannot be written with tied parameters, nor a dense covariance.
    assert noise_start(untied, GridParameterization(shape, 4, "tied")) is None
    assert noise_start(make_noise("empirical", X, shape), grid4) is None


class CountingNoise:
    """Diagonal noise that records the size of every draw and every scoring."""

    def __init__(self, X):
        self.noise = make_noise("diagonal", X, None)
        self.draws, self.scored = [], []

    def sample(self, n, random_state=None):
        self.draws.append(n)
        return self.noise.sample(n, random_state)

    def score_samples(self, X):
        self.scored.append(len(X))
        return self.noise.score_samples(X)


@pytest.mark.parametrize("method, per_step", [("nce", 2 * 32), ("rnce", 3 * 32)])
def test_noise_pool_is_drawn_once_and_fresh_noise_every_step(method, per_step):
    """The pool holds M = νN points (N for ranking NCE), drawn and scored once; fresh
    sampling draws a minibatch's worth at every step (and one start evaluation)."""
    from sparsegauss import GridGaussian

    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 12))
    pooled, fresh = CountingNoise(X), CountingNoise(X)
    kwargs = dict(method=method, optimizer="adam", max_iter=7, batch_size=32, nu=2.0,
                  n_noise=3, random_state=0, assume_centered=True)
    GridGaussian((3, 4), noise=pooled, **kwargs).fit(X)
    GridGaussian((3, 4), noise=fresh, noise_sampling="fresh", **kwargs).fit(X)
    assert pooled.draws == [400 if method == "nce" else 200]
    assert pooled.scored == [200, pooled.draws[0]]        # the data once, the pool once
    assert fresh.draws[:8] == [per_step] * 8 and fresh.scored[0] == 200


def test_ranking_nce_pool_holds_at_least_one_minibatch():
    """K n noise points per step even when the data are fewer than that."""
    from sparsegauss import GridGaussian

    X = np.random.default_rng(1).standard_normal((40, 12))
    noise = CountingNoise(X)
    GridGaussian((3, 4), method="rnce", optimizer="adam", max_iter=3, batch_size=32,
                 n_noise=3, noise=noise, assume_centered=True).fit(X)
    assert noise.draws == [96]


def test_separation_is_judged_against_the_know_nothing_loss():
    """A fit started thousands of nats from the noise that ends near 2 log 2 converged; a
    loss near 0 is separation (regression: the start's loss was the reference, and a
    1024×1024 NCE ending at 1.39 from 3,180 was called separated)."""
    from sparsegauss.estimators.nce import chance_loss, separated

    assert np.isclose(chance_loss(1.0), 2 * np.log(2))
    assert np.isclose(chance_loss(4.0), np.log(5) + 4 * np.log(1.25))
    assert not separated(1.39, chance_loss(1.0))
    assert separated(4e-7, chance_loss(1.0)) and separated(1e-3, np.log(11))


def test_noise_start_tolerates_rounding_of_tied_means():
    """Reading a tie back averages up to D entries: rounding of 1e-11 relative still
    starts at the noise; couplings that really differ do not."""
    from sparsegauss.datasets import make_grid_gaussian
    from sparsegauss.estimators.fitting import noise_start
    from sparsegauss.grid import GridParameterization
    from sparsegauss.noise import GridNoise

    truth, _ = make_grid_gaussian((16, 16), tying="tied", random_state=0)
    grid = GridParameterization((16, 16), 4, "tied")
    rounded = GridNoise(truth)

    class Rounded(type(rounded.distribution)):
        @property
        def precision(self):
            rounding = super().precision
            rounding.data *= 1 + 1e-11 * np.random.default_rng(0).standard_normal(rounding.nnz)
            return rounding

    rounded.distribution.__class__ = Rounded
    np.testing.assert_allclose(noise_start(rounded, grid), truth.theta_, rtol=1e-9)
    untied, _ = make_grid_gaussian((16, 16), random_state=0)
    assert noise_start(GridNoise(untied), grid) is None


def test_grid_noise_is_drawn_straight_into_the_pool(monkeypatch):
    """A float64 draw from a noise whose ``sample`` takes ``out=`` (the library's grid
    Gaussians, and CNCE's scaled perturbations of them) is one call writing the result,
    whatever the block size: the same numbers as the noise's own ``sample``."""
    from sparsegauss.datasets import make_grid_gaussian
    from sparsegauss.estimators import _driver as driver
    from sparsegauss.estimators.cnce import ScaledPerturbation
    from sparsegauss.noise import GridNoise

    truth, _ = make_grid_gaussian((3, 4), random_state=0)
    noise = GridNoise(truth)
    calls = []
    original = noise.distribution.sample

    def sample(n, random_state=None, out=None):
        calls.append((n, out is not None))
        return original(n, random_state, out=out)

    noise.distribution.sample = sample
    monkeypatch.setattr(driver, "_NOISE_BLOCK_VALUES", 12 * 16)     # 16 rows per block
    drawn = driver.draw_samples(noise, 50, 12, np.random.default_rng(1))
    assert calls == [(50, True)] and drawn.flags.c_contiguous
    np.testing.assert_array_equal(drawn, original(50, np.random.default_rng(1)))
    # float32 data still take the block path (no float64 copy of the whole sample).
    calls.clear()
    assert driver.draw_samples(noise, 50, 12, np.random.default_rng(1),
                               np.float32).dtype == np.float32
    assert [out for _, out in calls] == [False] * 4
    scaled = ScaledPerturbation(noise, 0.5)
    np.testing.assert_array_equal(driver.draw_samples(scaled, 50, 12, np.random.default_rng(1)),
                                  0.5 * drawn)
    assert scaled.sample(50, np.random.default_rng(1)).shape == (50, 12)


def test_noise_is_drawn_in_blocks_in_the_data_dtype(monkeypatch):
    """float32 data get float32 noise, drawn block by block (no float64 copy of the whole
    sample), scored as stored; a noise returning the wrong shape is named."""
    from sparsegauss.estimators import _driver as driver

    X = np.random.default_rng(0).standard_normal((50, 12))
    noise = CountingNoise(X)
    monkeypatch.setattr(driver, "_NOISE_BLOCK_VALUES", 12 * 16)     # 16 rows per block
    samples, log_density = driver.draw_noise(noise, 50, 12, np.random.default_rng(1),
                                              np.float32)
    assert samples.dtype == np.float32 and noise.draws == [16, 16, 16, 2]
    np.testing.assert_array_equal(log_density, noise.noise.score_samples(samples))
    assert np.all(np.isfinite(samples)) and np.std(samples) > 0.5

    class Wrong(CountingNoise):
        def sample(self, n, random_state=None):
            return super().sample(n, random_state)[:, :5]

    with pytest.raises(ValueError, match=r"returned shape \(16, 5\); expected \(16, 12\)"):
        driver.draw_noise(Wrong(X), 50, 12, np.random.default_rng(1))


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_nce_on_float32_data_holds_one_float32_noise_sample(optimizer):
    """Full-batch NCE reuses its fixed noise sample for log Z's standard error (one draw of
    M = νN points, not two); the stochastic fit's pool likewise. Both in float32 for
    float32 data, and the estimate matches the float64 fit's."""
    from sparsegauss import GridGaussian
    from sparsegauss.datasets import make_grid_gaussian

    _, X = make_grid_gaussian((4, 5), 2000, random_state=0)
    noise = CountingNoise(X)
    noise.noise = make_noise("grid-untied", X, (4, 5))
    dtypes = []
    original = noise.score_samples

    def score(samples):
        dtypes.append(samples.dtype)
        return original(samples)

    noise.score_samples = score
    kwargs = dict(method="nce", optimizer=optimizer, random_state=0, assume_centered=True,
                  max_iter=300)
    single = GridGaussian((4, 5), noise=noise, **kwargs).fit(X.astype(np.float32))
    assert noise.draws == [2000] and dtypes == [np.float32, np.float32]
    double = GridGaussian((4, 5), noise=noise, **kwargs).fit(X)
    assert np.isfinite(single.log_partition_estimate_)
    # The same random stream: only float32 rounding of data and noise separates the two
    # (measured 1e-8 on θ of size 2).
    np.testing.assert_allclose(single.theta_, double.theta_, rtol=0, atol=1e-5)
    assert abs(single.log_partition_estimate_ - double.log_partition_estimate_) < 1e-5


def test_adaptive_noise_is_a_schedule_not_a_distribution():
    from sparsegauss import GridGaussian
    X = np.random.default_rng(0).normal(size=(200, 12))
    with pytest.raises(ValueError, match="schedule"):
        make_noise("adaptive", X, (3, 4))
    # A full-batch optimizer runs NCE's second phase; the noise still adapts by Adam.
    model = GridGaussian((3, 4), method="nce", noise="adaptive", optimizer="lbfgs",
                         random_state=0).fit(X)
    from sparsegauss.estimators.adaptive import ADAPT_STEPS_FULL_BATCH
    adapting = [row["adapting"] for row in model.history_]
    assert sum(adapting) == ADAPT_STEPS_FULL_BATCH + 1 and not adapting[-1]
    assert model.converged_


def test_adaptive_noise_adapts_for_all_its_steps_whatever_the_tolerance():
    """A plateau of the first phase's minibatch loss is no reason to stop adapting the
    noise (stopped early on 4,000 MNIST images, the noise stayed at KL 5 from the MLE
    instead of 2.8 and NCE against it left the cone); ``tol`` stops the second phase."""
    from sparsegauss import GridGaussian
    X = np.random.default_rng(0).normal(size=(2000, 12))
    model = GridGaussian((3, 4), method="nce", noise="adaptive", tol=0.5, max_iter=700,
                         random_state=0).fit(X)
    adapting = [row["adapting"] for row in model.history_]
    assert sum(adapting) == 500 + 1         # NCE adapts for 5/7 of its steps
    assert len(adapting) < 700 + 1          # the second phase stopped at its plateau


@pytest.mark.parametrize("method, steps, adapting_steps",
                         [("nce", 3500, 2500), ("rnce", 3500, 2500)])
def test_adaptive_noise_takes_its_own_default_steps(method, steps, adapting_steps):
    """With the adaptive noise — the default — and no max_iter, NCE and ranking NCE
    take 3,500 steps, 2,500 adapting (2,000 in all left MNIST's
    8-neighbour NCE KL 3.3 from the MLE, not converged); with a fixed noise they keep
    their 2,000."""
    from sparsegauss import GridGaussian
    from sparsegauss.model import ADAPTIVE_MAX_ITER
    X = np.random.default_rng(0).normal(size=(300, 12))
    model = GridGaussian((3, 4), method=method, noise="adaptive", random_state=0).fit(X)
    adapting = [row["adapting"] for row in model.history_]
    assert ADAPTIVE_MAX_ITER[method] == steps
    assert model.n_iter_ == steps and sum(adapting) == adapting_steps + 1
    default = GridGaussian((3, 4), method=method, random_state=0).fit(X)
    assert default.n_iter_ == steps
    assert [row["adapting"] for row in default.history_] == adapting
    fixed = GridGaussian((3, 4), method=method, noise="grid-untied", random_state=0).fit(X)
    assert fixed.n_iter_ == 2000


def test_whether_a_sampler_writes_into_out_is_asked_once_per_function():
    """draw_samples asks each sample function's signature once (it was asked at every
    fresh-noise step), for bound methods of any instance, and still answers for an
    unhashable callable."""
    from sparsegauss.estimators import _driver

    class WithOut:
        def sample(self, n, random_state=None, out=None):
            return out

    class Without:
        def sample(self, n, random_state=None):
            return None

    class Unhashable:
        __hash__ = None

        def __call__(self, n, random_state=None, out=None):
            return out

    _driver._takes_out.cache_clear()
    assert _driver._writes_into(WithOut().sample) and _driver._writes_into(WithOut().sample)
    assert not _driver._writes_into(Without().sample)
    assert _driver._takes_out.cache_info().hits == 1
    assert _driver._writes_into(Unhashable())
