"""GridGaussian with the unnormalized estimators: MNIST behaviour, errors, persistence."""
import re
import warnings

import numpy as np
import pytest

from sparsegauss.models import GridGaussianEnergy

from sparsegauss import ConvergenceWarning, GridGaussian, NotPositiveDefiniteError
from sparsegauss.datasets import load_mnist, scale_and_noise
from sparsegauss.estimators.score_matching import sm_loss_grad


@pytest.fixture(scope="module")
def mnist_images(mnist_dir):
    images, _ = load_mnist("test", data_home=mnist_dir)
    return scale_and_noise(images[:4000], noise_std=0.1, random_state=0)


@pytest.mark.parametrize("stencil", [4, 8])
def test_score_matching_on_mnist_is_indefinite_and_the_barrier_fixes_it(mnist_images, stencil):
    with pytest.warns(UserWarning, match="not positive definite.*sm_solver='barrier'"):
        closed = GridGaussian((28, 28), stencil=stencil, method="sm").fit(mnist_images)
    assert not closed.is_positive_definite_
    assert closed.precision_.shape == (784, 784)          # the estimate is still returned
    for call in (lambda: closed.sample(1), lambda: closed.log_partition_,
                 lambda: closed.score_samples(mnist_images[:2])):
        with pytest.raises(NotPositiveDefiniteError, match="not positive definite"):
            call()
    # An independent check that it is indefinite: a negative eigenvalue.
    assert np.linalg.eigvalsh(closed.precision_.toarray())[0] < 0

    barrier = GridGaussian((28, 28), stencil=stencil, method="sm",
                           sm_solver="barrier").fit(mnist_images)
    assert barrier.is_positive_definite_ and barrier.converged_
    assert np.linalg.eigvalsh(barrier.precision_.toarray())[0] > 0
    centred = mnist_images - mnist_images.mean(axis=0)
    j_closed = sm_loss_grad(GridGaussianEnergy(closed._grid), closed.theta_, centred)[0]
    j_barrier = sm_loss_grad(GridGaussianEnergy(barrier._grid), barrier.theta_, centred)[0]
    # Constrained to the cone, the barrier estimate cannot beat the unconstrained minimum.
    assert j_barrier >= j_closed
    assert np.isfinite(barrier.score(mnist_images))
    assert barrier.history_[-1]["barrier_weight"] < 1e-3 * barrier.history_[0]["barrier_weight"]


def test_nce_on_mnist_reports_log_partition_and_saves_it(mnist_images, tmp_path):
    """With the default noise (adaptive, given only the pixel variances) NCE on MNIST is
    positive definite and its log Z gap stays within the finite-sample bias (≈ p/N, large
    here: p = 2,296, N = 4,000). tol=1e-4 stops the second phase at its first plateau
    (about 150 steps), while its learning rate is still high: the estimate returned is the
    mean of the plateau's window (its last iterate left the cone for 5 of random states
    0–21; the window's mean was PD, converged and within this gap for all 22)."""
    model = GridGaussian((28, 28), method="nce", tol=1e-4, random_state=0).fit(mnist_images)
    assert model.is_positive_definite_ and model.converged_
    gap = abs(model.log_partition_estimate_ - model.log_partition_)
    assert gap < 4 * model._grid.n_params / len(mnist_images)
    loaded = GridGaussian.load(model.save(tmp_path / "nce.npz"))
    assert loaded.log_partition_estimate_ == model.log_partition_estimate_
    assert loaded.get_params()["method"] == "nce" and loaded.get_params()["noise"] == "auto"
    # The adapting phase has no log Z estimate (NaN): equal as arrays, NaN included.
    np.testing.assert_array_equal([r["log_partition_estimate"] for r in loaded.history_],
                                  [r["log_partition_estimate"] for r in model.history_])
    assert any(r["adapting"] for r in model.history_)


@pytest.mark.parametrize("method", ["nce", "rnce"])
def test_nce_on_fewer_images_than_parameters_draws_noise_enough_not_to_separate(
        mnist_images, method, tmp_path):
    """2,000 images, p = 2,296: 2,000 noise points beside them (ν = 1; ranking NCE's pool
    of N) make 4,000 points in 2,296 dimensions, which a linear classifier separates, and
    the fit ended indefinite (MNIST training images, random states 0-9 for NCE, 0-2 for
    ranking NCE). The default takes N + M ≥ 4p: ν = 4, a pool of 7,184."""
    X = mnist_images[:2000]
    model = GridGaussian((28, 28), method=method, random_state=0).fit(X)
    assert model.is_positive_definite_ and model.converged_
    if method == "nce":
        assert model.nu_ == 4.0 and model.get_params()["nu"] is None
        assert GridGaussian.load(model.save(tmp_path / "nce.npz")).nu_ == 4.0
        with pytest.warns(UserWarning, match="not positive definite.*default \\(None; here 4\\)"):
            forced = GridGaussian((28, 28), method="nce", nu=1, random_state=0).fit(X)
        assert forced.nu_ == 1.0 and not forced.is_positive_definite_


def test_nce_defaults_on_white_noise_with_fewer_samples_than_parameters():
    """The issue's case: i.i.d. N(0, 1) pixels, N = 200 < p = 280 (10×10, 4 neighbours).
    With ν = 1 NCE ended indefinite; the default (ν = 5) is PD, converged and close to
    the identity."""
    X = np.random.default_rng(0).standard_normal((200, 100))
    model = GridGaussian((10, 10), method="nce", random_state=0).fit(X)
    assert model.nu_ == 5.0 and model.is_positive_definite_ and model.converged_
    precision = model.precision_.toarray()
    assert np.abs(np.diag(precision) - 1).mean() < 0.2
    with pytest.warns(UserWarning, match="not positive definite"):
        GridGaussian((10, 10), method="nce", nu=1, random_state=0).fit(X)


def test_default_noise_ratio_gives_four_points_per_parameter():
    from sparsegauss.estimators.nce import default_nu, noise_points_needed
    for n_samples, n_params in [(60_000, 2296), (4000, 2296), (2000, 2296), (2000, 3754),
                                (100, 2296), (9184, 2296), (9183, 2296), (5, 3)]:
        nu = default_nu(n_samples, n_params)
        assert nu == int(nu) >= 1
        assert (1 + nu) * n_samples >= 4 * n_params
        if nu > 1:      # the smallest such integer
            assert nu * n_samples < 4 * n_params
        assert noise_points_needed(n_samples, n_params) == max(0, 4 * n_params - n_samples)
    assert default_nu(60_000, 2296) == 1.0 and default_nu(2000, 2296) == 4.0


def test_adaptive_noise_history_saves_and_loads(mnist_images, tmp_path):
    """The two phases of the adaptive noise survive save/load: ``adapting`` flags, the
    NaN log Z estimates of the first phase, the losses."""
    model = GridGaussian((28, 28), method="nce", noise="adaptive", max_iter=40,
                         random_state=0).fit(mnist_images[:500])
    loaded = GridGaussian.load(model.save(tmp_path / "adaptive.npz"))
    for key in ("log_partition_estimate", "adapting", "loss", "iteration"):
        np.testing.assert_array_equal([r[key] for r in loaded.history_],
                                      [r[key] for r in model.history_])
    assert all(type(r["adapting"]) is bool for r in loaded.history_)


def test_cd_needs_a_stochastic_optimizer(rng):
    X = rng.normal(size=(100, 9))
    with pytest.raises(ValueError, match="stochastic gradient"):
        GridGaussian((3, 3), method="cd", optimizer="lbfgs").fit(X)


def test_mle_rejects_stochastic_optimizers(rng):
    with pytest.raises(ValueError, match="'mle' method uses optimizer"):
        GridGaussian((3, 3), optimizer="adam").fit(rng.normal(size=(100, 9)))


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="nce", nu=0), "'nu' parameter"), (dict(method="nce", noise="laplace"), "'noise'"),
    (dict(method="nce", normalization="none"), "'normalization'"),
    (dict(method="rnce", n_noise=0), "'n_noise'"), (dict(method="cnce", perturbation_std=-1.0), "perturbation_std"),
    (dict(method="cd", cd_steps=0), "'cd_steps'"), (dict(method="cd", sampler="hmc"), "'sampler'"),
    (dict(method="sm", sm_solver="cg"), "'sm_solver'"), (dict(optimizer="newton"), "'optimizer'"),
    (dict(method="cd", learning_rate=0), "'learning_rate'"), (dict(method="cd", schedule="linear"), "'schedule'"),
    (dict(method="cd", batch_size=1), "'batch_size'"),
])
def test_bad_estimator_parameters(kwargs, match, rng):
    with pytest.raises(ValueError, match=match):
        GridGaussian((3, 3), **kwargs).fit(rng.normal(size=(50, 9)))


@pytest.mark.parametrize("method", ["nce", "rnce", "cnce", "sm", "cd"])
def test_every_method_fits_images_and_reports_history(method, rng):
    X = rng.normal(size=(800, 4, 5)) * 0.5
    model = GridGaussian((4, 5), method=method, max_iter=300 if method == "cd" else None,
                         random_state=0).fit(X)
    assert model.theta_.shape == (model._grid.n_params,) and np.all(np.isfinite(model.theta_))
    assert all({"iteration", "loss", "time"} <= set(row) for row in model.history_)
    assert np.isfinite(model.score(X.reshape(800, -1)))


def test_verbose_prints_progress(rng, capsys):
    GridGaussian((3, 3), method="nce", verbose=True, random_state=0).fit(rng.normal(size=(300, 9)))
    assert "[GridGaussian nce] iteration" in capsys.readouterr().out


def test_score_matching_barrier_on_strongly_correlated_images():
    """300 Gaussian-smoothed 10×12 images: the barrier path's finite-difference Hessian
    products left the positive-definite cone and the fit crashed with
    NotPositiveDefiniteError; it now ends positive definite, and says it is degenerate."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    X = np.stack([gaussian_filter(rng.standard_normal((10, 12)), 1.5) for _ in range(300)])
    X = X.reshape(300, -1) / X.std()
    with pytest.warns(ConvergenceWarning, match="degenerate.*alpha > 0"):
        model = GridGaussian((10, 12), method="sm", sm_solver="barrier").fit(X)
    # Score matching has no PD minimizer here: the best PD estimate is on the boundary,
    # which the fit now says instead of calling it converged.
    assert model.is_positive_definite_ and not model.converged_
    shrunk = GridGaussian((10, 12), method="sm", sm_solver="barrier", alpha=0.3).fit(X)
    assert shrunk.converged_ and shrunk.is_positive_definite_
    assert np.isfinite(shrunk.score(X))


def test_cd_that_stops_short_of_the_likelihood_is_not_converged():
    """CD on blurred images with a loose plateau rule stops after two windows, far from the
    MLE, and its optimizer calls that success; the exact likelihood's Newton decrement
    proves the gap, and the fit says so. The bound it states is a lower bound on the
    KL from the MLE, computed here independently."""
    from benchmarks.bench_core import smoothed_images
    from sparsegauss.divergence import kl_divergence

    X = smoothed_images(2000, (10, 12), 1.5)
    with pytest.warns(ConvergenceWarning, match=r"at least ([0-9.]+) nats per sample") as caught:
        model = GridGaussian((10, 12), method="cd", tol=1.0, random_state=0).fit(X)
    assert model.n_iter_ == 100          # two windows of the plateau rule: far from done
    assert model.is_positive_definite_ and not model.converged_
    stated = float(re.search(r"at least ([0-9.]+) nats", str(caught[0].message)).group(1))
    kl = kl_divergence(GridGaussian((10, 12)).fit(X), model)
    assert 0.5 < stated <= kl


@pytest.mark.parametrize("method", ["nce", "rnce"])
def test_nce_with_a_noise_far_from_the_data_is_not_converged(method):
    """8-neighbour NCE and ranking NCE with the 4-neighbour grid noise on blurred images:
    the classifier wins, their own loss stops improving, and they ended at KL 58 / 57 from
    the MLE marked converged. The exact likelihood's Newton decrement proves the gap; the
    fit now says so, and the bound it states is below the KL computed independently."""
    from benchmarks.bench_core import smoothed_images
    from sparsegauss.divergence import kl_divergence

    X = smoothed_images(2000, (10, 12), 1.5)
    with pytest.warns(ConvergenceWarning, match=r"at least ([0-9.]+) nats per sample") as caught:
        model = GridGaussian((10, 12), stencil=8, method=method, noise="grid-untied",
                             random_state=0).fit(X)
    assert model.is_positive_definite_ and not model.converged_
    message = next(str(w.message) for w in caught if "nats per sample" in str(w.message))
    assert "noise='adaptive'" in message
    stated = float(re.search(r"at least ([0-9.]+) nats", message).group(1))
    mle = GridGaussian((10, 12), stencil=8).fit(X)
    kl = kl_divergence(mle, model)
    assert 0.5 < stated <= kl
    if method == "nce":
        # The default, adaptive noise does not reach such strongly correlated pixels
        # either (KL 75.5 here, 58.1 with the 4-neighbour MLE as noise); it too says so,
        # with advice for its own case.
        with pytest.warns(ConvergenceWarning, match="nats per sample") as caught:
            default = GridGaussian((10, 12), stencil=8, method=method, random_state=0).fit(X)
        assert not default.converged_
        message = next(str(w.message) for w in caught if "nats per sample" in str(w.message))
        assert "adaptive noise" in message and "noise='grid-untied'" in message
        stated = float(re.search(r"at least ([0-9.]+) nats", message).group(1))
        assert 0.5 < stated <= kl_divergence(mle, default)


def test_cd_at_the_likelihood_optimum_stays_converged(rng):
    """Data from a known grid model: CD's default fit lands near the MLE and the check
    (a rigorous lower bound) does not fire."""
    from sparsegauss.synthetic import make_grid_gaussian

    _, X = make_grid_gaussian((6, 7), 5000, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model = GridGaussian((6, 7), method="cd", random_state=0).fit(X)
    assert model.converged_


def test_nce_whose_log_z_misses_its_own_exact_value_is_not_converged():
    """On MNIST with 8 neighbours and the default 4-neighbour noise NCE's learned log Z
    ended 2.49 nats from the exact value (p/N = 0.063) while Adam reported success; a gap
    beyond 10 p/N + 0.1 nats now warns and clears converged_. Checked here by moving a
    converged synthetic fit's learned log Z: 5 nats off is flagged, its own gap is not."""
    from scipy.optimize import OptimizeResult

    from sparsegauss.datasets import make_grid_gaussian

    _, X = make_grid_gaussian((6, 6), 4000, random_state=0)
    model = GridGaussian((6, 6), method="nce", assume_centered=True, random_state=0).fit(X)
    assert model.converged_
    result = OptimizeResult(x=model.theta_, success=True, nit=1, residual=0.0, history=[],
                            message="", log_partition_estimate=model.log_partition_ + 5.0)
    with pytest.warns(ConvergenceWarning, match=r"\+5 nats from the exact log Z"):
        model._finish_fit(model._grid, result, model.location_, None, X.var(axis=0),
                          n_samples=len(X))
    assert not model.converged_


@pytest.mark.parametrize("stencil", [4, 8])
def test_cnce_defaults_on_mnist_are_positive_definite_and_near_the_mle(mnist_images, stencil):
    """CNCE with only its defaults perturbs along a pilot estimate's covariance (see
    sparsegauss.estimators.cnce): positive definite, converged, and its held-out
    log-likelihood within the issue's 5 nats/image of the exact MLE's. (With isotropic
    perturbations, the former default, the fit on all 60,000 images ended indefinite:
    score matching in the identity metric, which is indefinite on MNIST, test above.)"""
    train, test = mnist_images[:3000], mnist_images[3000:]
    model = GridGaussian((28, 28), stencil=stencil, method="cnce", random_state=0).fit(train)
    assert model.is_positive_definite_ and model.converged_
    mle = GridGaussian((28, 28), stencil=stencil).fit(train)
    assert mle.score(test) - model.score(test) < 5.0
    assert any(row["adapting"] for row in model.history_)
    assert model.perturbation_.sample(3, 0).shape == (3, 784)


def test_cnce_with_a_given_perturbation_std_perturbs_every_pixel_by_it(rng):
    """``perturbation_std=σ``: isotropic ε ~ N(0, σ²I) over all D pixels, no pilot."""
    X = rng.normal(size=(500, 4, 5))
    model = GridGaussian((4, 5), method="cnce", perturbation_std=0.3, random_state=0).fit(X)
    assert model.perturbation_std_ == 0.3 and not any(r["adapting"] for r in model.history_
                                                      if "adapting" in r)
    draws = model.perturbation_.sample(20_000, 1)
    assert draws.shape == (20_000, 20)
    np.testing.assert_allclose(draws.std(axis=0), 0.3, rtol=0.03)
    assert model.is_positive_definite_


def test_cnce_whose_pilot_misses_the_data_is_not_converged():
    """On strongly correlated pixels the pilot (stochastic maximum likelihood) does not
    reach the data, and CNCE, perturbing along it, stays as far: on 20,000 patches of the
    bundled photographs, KL 189 from the MLE, reported converged before the likelihood
    check covered CNCE. Now the check's lower bound (≤ the true KL) fires and the warning
    says what to do.

    400 steps (200 of pilot): at the default 4,000 the estimate ends either indefinite
    (warned as such; random states 0 and 2 on one machine) or positive definite and far
    (states 1 and 3), and which one depends on the set-up (this test's state 0 was PD in
    CI's run of 2026-12-01 and indefinite on a fresh install of 2026-12-02); after 400 steps it was PD and
    far for states 0-5, each bound 0.93-1.9 nats."""
    from sparsegauss.datasets import extract_patches, load_natural_images
    from sparsegauss.divergence import kl_divergence

    X = extract_patches(load_natural_images(), n_patches=20_000, random_state=0)
    with pytest.warns(ConvergenceWarning, match=r"at least ([0-9.]+) nats per sample") as caught:
        model = GridGaussian((28, 28), method="cnce", max_iter=400, random_state=0).fit(X)
    assert model.is_positive_definite_ and not model.converged_
    message = next(str(w.message) for w in caught if "nats per sample" in str(w.message))
    assert "pilot" in message and "method='mle'" in message
    stated = float(re.search(r"at least ([0-9.]+) nats", message).group(1))
    mle = GridGaussian((28, 28)).fit(X)
    assert 0.5 < stated <= kl_divergence(mle, model)


def test_cd_defaults_do_not_depend_on_a_lucky_random_stream(mnist_dir, monkeypatch):
    """The demo's 8,000 MNIST images, random state 0: with Adam's usual β₂ = 0.999 CD
    ended KL 1.22 from the MLE (states 1–4: 0.007–0.015); its default β₂ = 0.99 gives
    0.007. The bound leaves 14× margin over that and fails for the old default. Also
    checks that the fit hands CD's betas to the optimizer."""
    from sparsegauss import kl_divergence
    from sparsegauss.estimators.cd import CD_BETAS
    import sparsegauss.optimize as optimize

    images, _ = load_mnist("test", data_home=mnist_dir)
    train = scale_and_noise(images[:8000], noise_std=0.1, random_state=0)
    mle = GridGaussian((28, 28)).fit(train)
    seen = []
    real = optimize.minimize

    def recording(*args, **kwargs):
        seen.append(kwargs["betas"])
        return real(*args, **kwargs)

    monkeypatch.setattr("sparsegauss.estimators._driver.minimize", recording)
    cd = GridGaussian((28, 28), method="cd", random_state=0).fit(train)
    assert seen == [CD_BETAS] and CD_BETAS[1] == 0.99
    assert cd.converged_ and cd.is_positive_definite_
    assert kl_divergence(mle, cd) < 0.1
