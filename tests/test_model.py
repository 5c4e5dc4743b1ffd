import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import multivariate_normal

from sparsegauss import ConvergenceWarning, GridGaussian, NotPositiveDefiniteError
from sparsegauss.datasets import make_grid_gaussian
from sparsegauss.exceptions import SampleSizeError
from sparsegauss.grid import GridParameterization
from sparsegauss.normalization import GridNormalizer
from conftest import random_spd_theta


@pytest.fixture
def data(rng):
    grid = GridParameterization((5, 4), 8)
    truth = random_spd_theta(grid, rng, margin=0.5)
    X = GridNormalizer(grid).factorize(truth).sample(3000, rng) + rng.normal(size=20)
    return X


def test_params_protocol():
    model = GridGaussian((5, 4), stencil=8, tol=1e-6)
    params = model.get_params()
    assert params["stencil"] == 8 and params["tol"] == 1e-6 and params["shape"] == (5, 4)
    assert model.set_params(stencil=4) is model and model.stencil == 4
    with pytest.raises(ValueError, match="Invalid parameter"):
        model.set_params(bogus=1.0)
    assert "stencil" not in repr(GridGaussian((2, 2)))
    with pytest.raises(TypeError):
        GridGaussian((5, 4), 8)           # keyword-only beyond shape


@pytest.mark.parametrize("stencil", [4, 8])
@pytest.mark.parametrize("tying", ["untied", "tied"])
def test_fit_score_against_dense_gaussian(data, stencil, tying):
    model = GridGaussian((5, 4), stencil=stencil, tying=tying).fit(data)
    assert model.converged_ and model.kkt_residual_ <= 1e-8
    dense_cov = np.linalg.inv(model.precision_.toarray())
    reference = multivariate_normal(model.location_, dense_cov).logpdf(data[:50])
    np.testing.assert_allclose(model.score_samples(data[:50]), reference, rtol=1e-9)
    np.testing.assert_allclose(model.score(data[:50]), reference.mean(), rtol=1e-9)
    np.testing.assert_allclose(model.location_, data.mean(axis=0))
    np.testing.assert_allclose(
        model.log_partition_, 0.5 * 20 * np.log(2 * np.pi) + 0.5 * np.linalg.slogdet(dense_cov)[1])
    assert model.history_[-1]["residual"] == model.kkt_residual_


def test_image_shaped_input_and_float32(data):
    a = GridGaussian((5, 4)).fit(data)
    b = GridGaussian((5, 4)).fit(data.reshape(-1, 5, 4).astype(np.float32))
    np.testing.assert_allclose(a.theta_, b.theta_, rtol=1e-4)
    np.testing.assert_allclose(a.score_samples(data[:3]), a.score_samples(data[:3].reshape(3, 5, 4)))


def test_assume_centered(data):
    model = GridGaussian((5, 4), assume_centered=True).fit(data - data.mean(axis=0))
    assert np.all(model.location_ == 0)
    np.testing.assert_allclose(model.theta_, GridGaussian((5, 4)).fit(data).theta_, rtol=1e-7)


def test_sample_is_reproducible_and_has_the_model_covariance(data):
    model = GridGaussian((5, 4), random_state=3).fit(data)
    np.testing.assert_array_equal(model.sample(4), model.sample(4))
    np.testing.assert_array_equal(model.sample(4, random_state=9), model.sample(4, random_state=9))
    samples = model.sample(40_000, random_state=1)
    refit = GridGaussian((5, 4)).fit(samples)
    # A refit on the model's own samples recovers it to O(1/√n).
    np.testing.assert_allclose(refit.theta_, model.theta_, atol=0.08 * np.abs(model.theta_).max())


def test_sampling_in_blocks_factorizes_once_and_follows_a_changed_estimate(data):
    """The factor is kept between calls (drawing large samples block by block must not
    refactorize every block) but never outlives the θ it was computed for."""
    model = GridGaussian((5, 4), random_state=3).fit(data)
    calls = []
    factorize = model._normalizer.factorize
    model._normalizer.factorize = lambda theta: calls.append(1) or factorize(theta)
    blocks = np.concatenate([model.sample(4, random_state=np.random.default_rng(5))
                             for _ in range(3)])
    # The fit's own factorization is kept: no refactorization for any block.
    assert len(calls) == 0 and blocks.shape == (12, 20)
    model.theta_ = model.theta_ * 2.0         # Λ doubled: the covariance halves
    samples = model.sample(20_000, random_state=0)
    model.sample(5)
    assert len(calls) == 1
    np.testing.assert_allclose(np.cov(samples.T), np.linalg.inv(2.0 * model.precision_.toarray()),
                               atol=0.05 * np.abs(np.linalg.inv(model.precision_.toarray())).max())


def test_save_load_round_trip(data, tmp_path):
    model = GridGaussian((5, 4), stencil=8, random_state=0).fit(data)
    path = model.save(tmp_path / "model.npz")
    loaded = GridGaussian.load(path)
    assert loaded.get_params()["stencil"] == 8
    np.testing.assert_array_equal(loaded.theta_, model.theta_)
    np.testing.assert_array_equal(loaded.score_samples(data[:5]), model.score_samples(data[:5]))
    np.testing.assert_array_equal(loaded.sample(3, random_state=1), model.sample(3, random_state=1))
    assert loaded.history_ == model.history_
    assert (loaded.precision_ != model.precision_).nnz == 0


def test_save_never_corrupts_an_existing_file(data, tmp_path):
    model = GridGaussian((5, 4)).fit(data)
    path = model.save(tmp_path / "model.npz")
    before = path.read_bytes()
    with pytest.raises(ValueError, match=".npz"):
        model.save(tmp_path / "model.pkl")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def test_load_rejects_foreign_and_damaged_files(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="not a sparsegauss"):
        GridGaussian.load(tmp_path / "other.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ValueError, match="Could not read"):
        GridGaussian.load(tmp_path / "broken.npz")


@pytest.mark.parametrize("X, error, match", [
    (np.full((10, 20), np.nan), ValueError, "NaN or inf"),
    (np.full((10, 20), np.inf), ValueError, "NaN or inf"),
    (np.ones((10, 21)), ValueError, "shape"),
    (np.ones((10, 4, 5)), ValueError, "shape"),
    (np.ones((1, 20)), ValueError, "minimum of 2"),
    (np.ones((0, 20)), ValueError, "0 sample"),
    (np.ones((10, 20), dtype=np.uint8), ValueError, "zero variance"),
    (np.array([["a"] * 20] * 3), ValueError, "convert string"),
    (np.ones((10, 20), dtype=complex), ValueError, "Complex"),
])
def test_bad_data(X, error, match):
    with pytest.raises(error, match=match):
        GridGaussian((5, 4)).fit(X)


def test_integer_data_are_used_as_numbers(data):
    """scikit-learn's convention: integers are numbers, fitted as float64."""
    counts = np.round(data * 10).astype(np.int32)
    as_int = GridGaussian((5, 4)).fit(counts)
    as_float = GridGaussian((5, 4)).fit(counts.astype(np.float64))
    np.testing.assert_allclose(as_int.theta_, as_float.theta_)


def test_zero_variance_pixels_are_named(rng):
    X = rng.normal(size=(50, 20))
    X[:, 6] = 0.5
    with pytest.raises(ValueError, match=r"1 pixel\(s\) with zero variance.*\(1, 2\)"):
        GridGaussian((5, 4)).fit(X)


@pytest.mark.parametrize("kwargs, match", [
    (dict(stencil=6), "'stencil' parameter"), (dict(tying="x"), "'tying' parameter"),
    (dict(method="magic"), "'method' parameter"), (dict(tol=-1.0), "'tol' parameter"),
    (dict(max_iter=0), "'max_iter' parameter"),
    (dict(method="nce", noise_sampling="reuse"), "'noise_sampling' parameter"),
])
def test_bad_parameters(kwargs, match, data):
    with pytest.raises(ValueError, match=match):
        GridGaussian((5, 4), **kwargs).fit(data)


def test_not_fitted_and_bad_sample_arguments(data):
    with pytest.raises(AttributeError, match="not fitted"):
        GridGaussian((5, 4)).sample(2)
    model = GridGaussian((5, 4)).fit(data)
    with pytest.raises(ValueError, match="n_samples"):
        model.sample(0)


def test_non_converged_fit_warns(data):
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        model = GridGaussian((5, 4), max_iter=1).fit(data)
    assert not model.converged_


def test_indefinite_model_refuses_density_and_sampling(data):
    model = GridGaussian((5, 4)).fit(data)
    theta = model.theta_.copy()
    theta[:20] = -1.0          # negative diagonal: not a Gaussian
    model._set_fitted(model._grid, theta, model.location_)
    assert not model.is_positive_definite_
    for call in (lambda: model.log_partition_, lambda: model.sample(1),
                 lambda: model.score_samples(data[:2])):
        with pytest.raises(NotPositiveDefiniteError, match="not positive definite"):
            call()


def test_couplings_are_image_shaped(data):
    maps = GridGaussian((5, 4), stencil=8).fit(data).couplings()
    assert list(maps) == ["diagonal", "horizontal", "vertical", "diagonal down-right",
                          "diagonal down-left"]
    assert all(m.shape == (5, 4) for m in maps.values())
    assert np.all(maps["horizontal"][:, -1] == 0)     # no right neighbour in the last column


# -- small samples: fail fast, or shrink ----------------------------------------------------
@pytest.mark.parametrize("stencil, n_needed", [(4, 10), (8, 14)])
def test_too_few_samples_for_the_untied_model_fail_fast(rng, stencil, n_needed):
    """5 images of 70×70 once ran for over 10 CPU-minutes; now the count is refused
    before any factorization, with what to do."""
    X = rng.standard_normal((n_needed - 1, 70 * 70))
    with pytest.raises(SampleSizeError, match=rf"needs at least {n_needed} samples.*"
                                              r"X has \d+.*tying='tied'.*alpha > 0"):
        GridGaussian((70, 70), stencil=stencil).fit(X)
    with pytest.raises(SampleSizeError, match="needs at least"):
        GridGaussian((70, 70), stencil=stencil, method="sm").fit(X)
    # Centred data keep one more degree of freedom.
    with pytest.raises(SampleSizeError, match=rf"needs at least {n_needed - 1} samples"):
        GridGaussian((70, 70), stencil=stencil, assume_centered=True).fit(X[:-1])
    # The tied model has a handful of parameters and needs no such count.
    assert GridGaussian((70, 70), stencil=stencil, tying="tied").fit(X[:5]).converged_


@pytest.mark.parametrize("method", ["nce", "rnce", "cnce", "cd", "sm-gradient"])
def test_too_few_samples_are_refused_by_every_estimator(rng, method):
    """The untied model's parameters are not determined by too few samples, whatever
    estimates them: NCE at its defaults returned "converged" fits of 5 white-noise
    images of 16×16 whose held-out log-likelihood was 967–1,727 nats per image below
    the truth's (two draws). The
    remedy named is one the method has (no alpha for the stochastic estimators)."""
    options = dict(method="sm", sm_solver="gradient") if method == "sm-gradient" else dict(
        method=method)
    label = "method='sm' with sm_solver='gradient'" if method == "sm-gradient" else (
        f"method='{method}'")
    with pytest.raises(SampleSizeError, match=rf"needs at least 10 samples.*X has 9.*"
                                              rf"method='mle'.*{label} has no alpha"):
        GridGaussian((16, 16), **options).fit(rng.standard_normal((9, 256)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)   # 20 steps: only not refused
        tied = GridGaussian((16, 16), tying="tied", max_iter=20, **options).fit(
            rng.standard_normal((9, 256)))
    assert tied.theta_.shape == (3,)


def test_perfectly_correlated_neighbours_are_refused(rng):
    X = rng.standard_normal((200, 20))
    X[:, 6] = 2 * X[:, 5] + 1                       # pixels (1, 1) and (1, 2)
    with pytest.raises(SampleSizeError, match=r"\(1, 1\) and \(1, 2\).*perfectly correlated"):
        GridGaussian((5, 4)).fit(X)
    assert GridGaussian((5, 4), alpha=0.1).fit(X).is_positive_definite_


def test_shrinkage_fits_five_large_images(rng):
    """With alpha > 0 the shrunk moments are positive definite: the MLE exists and the
    solver reaches its tolerance (3.4 s here at alpha=0.3, 13 s at 0.1; see the README)."""
    X = rng.standard_normal((5, 70 * 70))
    model = GridGaussian((70, 70), alpha=0.3).fit(X)
    assert model.converged_ and model.is_positive_definite_


def test_shrinkage_solves_the_penalized_likelihood(data):
    """The α-fit is the MLE of S_α = (1 − α) S + α diag(S): Σ = S_α on the pattern."""
    alpha = 0.2
    model = GridGaussian((5, 4), stencil=8, alpha=alpha).fit(data)
    S = np.cov(data.T, bias=True)
    S_alpha = (1 - alpha) * S + alpha * np.diag(np.diag(S))
    sigma = np.linalg.inv(model.precision_.toarray())
    on_pattern = model.precision_.toarray() != 0
    np.testing.assert_allclose(sigma[on_pattern], S_alpha[on_pattern], atol=1e-7)


@pytest.mark.parametrize("method", ["mle", "sm"])
def test_held_out_score_has_an_interior_optimum_in_alpha(method):
    truth, X = make_grid_gaussian((10, 10), 3150, coupling=0.5, random_state=1)
    train, test = X[:150], X[150:]
    alphas = [0.0, 0.1, 0.4, 0.95]
    scores = [GridGaussian((10, 10), method=method, alpha=a).fit(train).score(test)
              for a in alphas]
    best = int(np.argmax(scores))
    assert 0 < best < len(alphas) - 1, scores
    assert scores[best] > scores[0] + 0.2 and scores[best] < truth.score(test)


@pytest.mark.parametrize("kwargs", [dict(alpha=-0.1), dict(alpha=1.0), dict(alpha="big"),
                                    dict(alpha=0.1, method="nce"),
                                    dict(alpha=0.1, method="sm", sm_solver="gradient")])
def test_bad_alpha(kwargs, data):
    with pytest.raises(ValueError, match="alpha"):
        GridGaussian((5, 4), **kwargs).fit(data)


def test_sample_refuses_what_memory_cannot_hold(data, monkeypatch):
    """model.sample(10**8) on a 30-pixel model once ran 125 s and took 22 of 23 GiB."""
    from sparsegauss import _memory
    from sparsegauss.exceptions import InsufficientMemoryError

    model = GridGaussian((5, 4)).fit(data)
    monkeypatch.setattr(_memory, "available_memory", lambda: 1 << 30)     # 1 GiB free
    with pytest.raises(InsufficientMemoryError,
                       match=r"100,000,000 samples of 20 pixels \(float64\) need 14\.9 GiB, "
                             r"but this machine has 1\.0 GiB .*in blocks"):
        model.sample(10 ** 8)
    assert model.sample(1000, random_state=0).shape == (1000, 20)    # 160 kB is fine
    assert _memory.available_memory() == 1 << 30
    monkeypatch.undo()
    assert _memory.available_memory() > 0           # /proc/meminfo is read on Linux


def test_nce_refuses_a_noise_pool_memory_cannot_hold(data, monkeypatch):
    """A pool of 4p − N noise images grows with the parameters: it is checked before it
    is drawn, with advice, and nothing is drawn."""
    from sparsegauss import _memory
    from sparsegauss.exceptions import InsufficientMemoryError

    monkeypatch.setattr(_memory, "available_memory", lambda: 100_000)   # 100 kB free
    with pytest.raises(InsufficientMemoryError,
                       match=r"noise pool of [0-9,]+ images of 20 pixels .*4p − N"):
        GridGaussian((5, 4), method="nce", random_state=0).fit(data)
    monkeypatch.undo()
    assert GridGaussian((5, 4), method="nce", max_iter=50, random_state=0).fit(data).nu_ >= 1


def test_a_degenerate_positive_definite_estimate_is_not_converged(data):
    """A CD fit once returned λ_min(Λ) = 1e-16 (the MLE's 3e-3), samples of ±4e8, and
    converged_=True. An estimate whose variances run away from the data's now warns."""
    from scipy.optimize import OptimizeResult

    mle = GridGaussian((5, 4), stencil=8).fit(data)
    dense = mle.precision_.toarray()
    shift = np.linalg.eigvalsh(dense)[0] * (1 - 1e-10)      # λ_min → 1e-10 · λ_min
    theta = mle._grid.theta_from_precision(mle.precision_ - shift * sp.eye(20, format="csc"))
    result = OptimizeResult(x=theta, nit=7, history=[], residual=0.0, success=True,
                            message="")
    model = GridGaussian((5, 4), stencil=8, method="cd")
    with pytest.warns(ConvergenceWarning, match=r"positive definite but degenerate: its "
                                                r"variance of pixel \(\d, \d\) is .* times"):
        model._finish_fit(mle._grid, result, mle.location_, None, data.var(axis=0))
    assert model.is_positive_definite_ and not model.converged_
    # The same path leaves a sound estimate alone.
    sound = GridGaussian((5, 4), stencil=8, method="cd")
    sound._finish_fit(mle._grid, OptimizeResult(x=mle.theta_, nit=7, history=[], residual=0.0,
                                                success=True, message=""),
                      mle.location_, None, data.var(axis=0))
    assert sound.converged_


def test_an_indefinite_estimate_is_not_converged():
    """Score matching's closed form solves its system exactly, but on MNIST Λ̂ is
    indefinite, not a Gaussian: the fit warns and is not converged."""
    from sparsegauss.datasets import load_mnist, scale_and_noise

    X = scale_and_noise(load_mnist("test")[0][:2000], 0.1, random_state=0)
    with pytest.warns(UserWarning, match="not positive definite"):
        model = GridGaussian((28, 28), method="sm").fit(X)
    assert not model.is_positive_definite_ and not model.converged_


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("assume_centered", [False, True])
def test_fit_finds_non_finite_values_from_its_moments(bad, assume_centered, rng):
    """fit reads X once (the moments); NaN or inf shows there, and only then is X read
    again to name the first bad sample, which need not be among the rows the provisional
    centre was taken from."""
    X = rng.normal(size=(200, 12))
    X[137, 5] = X[150, 2] = bad
    with pytest.raises(ValueError, match=r"NaN or inf \(first at sample 137, pixel 5\)"):
        GridGaussian((3, 4), assume_centered=assume_centered).fit(X)


def test_fit_refuses_data_whose_moments_overflow(rng):
    X = rng.normal(size=(50, 12)) * 1e200
    with pytest.raises(ValueError, match="overflow float64.*Rescale"):
        GridGaussian((3, 4)).fit(X)
