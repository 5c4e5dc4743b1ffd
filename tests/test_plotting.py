import copy
"""Figures are built, labelled and written; both square roots sample the same Gaussian."""

import matplotlib
import numpy as np
import pytest

from sparsegauss import GridGaussian
from sparsegauss import plotting

matplotlib.use("Agg")


def _correlated_images():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((600, 7, 8))
    return (base + 0.6 * np.roll(base, 1, axis=2)
            + 0.3 * np.roll(base, 1, axis=1)).reshape(600, -1)


@pytest.fixture(scope="module")
def models():
    X = _correlated_images()
    mle = GridGaussian((7, 8), stencil=8).fit(X)
    # A fixed noise: one objective, drawn on one axis (the adaptive default's two phases
    # are checked below).
    nce = GridGaussian((7, 8), method="nce", noise="grid-untied", optimizer="adam",
                       max_iter=50, random_state=0).fit(X)
    return mle, nce


@pytest.mark.parametrize("sqrt", ["cholesky", "symmetric"])
def test_both_square_roots_give_the_model_covariance(models, sqrt):
    mle = models[0]
    samples = mle.sample(40_000, random_state=1, method=sqrt)
    sigma = np.linalg.inv(mle.precision_.toarray())
    empirical = np.cov(samples, rowvar=False)
    # Standard error of a sample covariance entry: sqrt((Σ_ij² + Σ_ii Σ_jj) / n).
    se = np.sqrt((sigma ** 2 + np.outer(np.diag(sigma), np.diag(sigma))) / len(samples))
    assert np.max(np.abs(empirical - sigma) / se) < 5.0
    np.testing.assert_allclose(samples.mean(axis=0), mle.location_,
                               atol=5 * np.sqrt(np.diag(sigma).max() / len(samples)))


def test_symmetric_sampling_refuses_large_grids():
    model = GridGaussian((65, 64), tying="tied").fit(
        np.random.default_rng(0).standard_normal((50, 4160)))
    with pytest.raises(ValueError, match="limited to D <= 4096"):
        model.sample(2, method="symmetric")
    with pytest.raises(ValueError, match="'method' parameter"):
        model.sample(2, method="eigen")


def _saved_size(fig, tmp_path, name):
    path = tmp_path / name
    fig.savefig(path)
    return path.stat().st_size


def test_figures_are_written_and_labelled(models, tmp_path):
    mle, nce = models
    fig = plotting.plot_couplings(mle)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 5 and titles[0].startswith("diagonal")
    coupling_images = [ax.images[0] for ax in fig.axes[1:5] if ax.images]
    for image in coupling_images:           # red-blue scale centred at zero
        low, high = image.get_clim()
        assert low == pytest.approx(-high)
    assert _saved_size(fig, tmp_path, "c.png") > 10_000

    fig = plotting.plot_learning_curve(nce.history_, exact_log_partition=nce.log_partition_)
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "log Z (nats)"
    assert len(fig.axes[1].lines) == 2
    assert _saved_size(fig, tmp_path, "l.png") > 10_000
    # With the adaptive noise the noise adapts first: the two objectives (the exact
    # negative log-likelihood, then NCE's loss) are drawn on their own axes, split at the
    # switch.
    adaptive = GridGaussian((7, 8), method="nce", noise="adaptive", max_iter=50,
                            random_state=0).fit(_correlated_images())
    fig = plotting.plot_learning_curve(adaptive.history_,
                                       exact_log_partition=adaptive.log_partition_)
    assert len(fig.axes) == 3 and fig.axes[1].get_ylabel() == "log Z (nats)"
    adapting = sum(row["adapting"] for row in adaptive.history_)
    objective, fixed = fig.axes[0], fig.axes[2]
    assert "adapting" in objective.get_ylabel() and "NCE loss" in fixed.get_ylabel()
    assert len(objective.lines[0].get_xdata()) == adapting
    assert len(fixed.lines[0].get_xdata()) == len(adaptive.history_) - adapting
    assert objective.lines[1].get_xdata()[0] == adaptive.history_[adapting]["iteration"]
    assert _saved_size(fig, tmp_path, "l.png") > 10_000
    fig = plotting.plot_learning_curve(mle.history_, x="time")
    assert len(fig.axes) == 1 and fig.axes[0].get_xlabel() == "wall time (s)"

    fig = plotting.plot_samples(mle.sample(10, random_state=0), (7, 8), n_cols=5)
    assert _saved_size(fig, tmp_path, "s.png") > 5_000
    fig = plotting.plot_sampler_comparison(mle, n_samples=8)
    assert _saved_size(fig, tmp_path, "sc.png") > 5_000

    rows = [dict(estimator="mle", stencil=4, test_loglik=10.0),
            dict(estimator="nce", stencil=4, test_loglik=9.5, log_partition_error=0.1),
            dict(estimator="sm", stencil=8, test_loglik=float("nan"))]
    fig = plotting.plot_comparison(rows)
    assert _saved_size(fig, tmp_path, "cmp.png") > 10_000


def test_comparison_shows_differences_to_the_mle_from_zero(tmp_path):
    rows = [dict(estimator="mle", stencil=4, test_loglik=351.0),
            dict(estimator="mle", stencil=8, test_loglik=375.5),
            dict(estimator="nce", stencil=4, test_loglik=350.8, log_partition_error=-0.3),
            dict(estimator="nce", stencil=8, test_loglik=359.0, log_partition_error=0.02),
            dict(estimator="sm", stencil=4, test_loglik=float("nan"))]
    fig = plotting.plot_comparison(rows)
    left, right = fig.axes[:2]
    heights = sorted(round(p.get_height(), 6) for p in left.patches)
    assert heights == [-16.5, -0.2]                  # differences, not absolute values
    low, high = left.get_ylim()
    assert low < -16.5 and high >= 0                  # the bars start at zero
    assert [t.get_text().strip() for t in left.texts] == ["not PD"]
    assert [t.get_text() for t in right.get_xticklabels()] == ["nce"]   # no empty groups
    assert sorted(round(p.get_height(), 6) for p in right.patches) == [0.02, 0.3]
    assert not left.get_legend() and fig.legends      # the legend sits outside the axes


def test_couplings_of_an_indefinite_estimate_say_so(models):
    mle, _ = models
    assert "NOT POSITIVE DEFINITE" not in plotting.plot_couplings(mle)._suptitle.get_text()
    indefinite = copy.deepcopy(mle)
    indefinite.is_positive_definite_ = False
    title = plotting.plot_couplings(indefinite)._suptitle.get_text()
    assert "NOT POSITIVE DEFINITE: not a valid Gaussian" in title


def test_learning_curve_errors():
    with pytest.raises(ValueError, match="history is empty"):
        plotting.plot_learning_curve([])
    with pytest.raises(ValueError, match="'iteration' or 'time'"):
        plotting.plot_learning_curve([dict(iteration=1, time=0.0, loss=1.0)], x="seconds")
