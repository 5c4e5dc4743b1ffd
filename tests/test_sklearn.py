"""GridGaussian among scikit-learn's tools: its estimator checks, clone, Pipeline, grid
search, cross-validation, and models that pickle (joblib, deepcopy, Dask workers)."""

import copy
import pickle
import warnings

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from sparsegauss import GridGaussian
from sparsegauss.datasets import make_grid_gaussian

SHAPE = (6, 5)

#: Checks of scikit-learn's suite that cannot apply, with the reason. ``shape=None``
#: (the default) takes the grid from the data, a ``1 × D`` chain for plain tables, so
#: every check that feeds arbitrary ``n_features`` applies and passes: none is declared.
EXPECTED_FAILED_CHECKS = {}


@parametrize_with_checks([GridGaussian()],
                         expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def eight_neighbour_data():
    """Samples of a known 8-neighbour model: the truth grid search should find."""
    truth, X = make_grid_gaussian(SHAPE, 1200, stencil=8, random_state=3)
    return truth, X


def test_default_shape_is_inferred_from_the_data(eight_neighbour_data):
    _, X = eight_neighbour_data
    images = GridGaussian().fit(X.reshape(-1, *SHAPE))
    assert images._grid.shape == SHAPE and images.n_features_in_ == 30
    table = GridGaussian().fit(X)
    assert table._grid.shape == (1, 30)
    explicit = GridGaussian(SHAPE).fit(X)
    np.testing.assert_allclose(images.theta_, explicit.theta_)
    with pytest.raises(ValueError, match="X has 29 features, but GridGaussian is expecting 30"):
        explicit.score(X[:, :29])
    with pytest.raises(ValueError, match=r"images of shape \(5, 6\), but the model was fitted"):
        explicit.score(X.reshape(-1, 5, 6))


def test_clone_keeps_parameters_and_drops_the_fit(eight_neighbour_data):
    _, X = eight_neighbour_data
    model = GridGaussian(SHAPE, stencil=8, alpha=0.05).fit(X)
    twin = clone(model)
    assert twin.get_params() == model.get_params() and not hasattr(twin, "theta_")


def test_grid_search_over_stencil_and_method_finds_the_truth(eight_neighbour_data):
    truth, X = eight_neighbour_data
    search = GridSearchCV(GridGaussian(SHAPE), {"stencil": [4, 8], "method": ["mle", "sm"]},
                          cv=3).fit(X)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores))
    assert search.best_params_["stencil"] == 8
    # Held-out log-likelihood of the selected model is close to the truth's own: it
    # falls short by KL(truth ‖ MLE) ≈ p / 2n = 119 / 2400 ≈ 0.05 nats on average (sd
    # about 0.006), plus the held-out set's own noise (sd about 0.005 for 4,000 samples):
    # twice the expected shortfall.
    held_out = make_grid_gaussian(SHAPE, 4000, stencil=8, random_state=4)[1]
    n_params = search.best_estimator_.theta_.size
    assert search.score(held_out) > truth.score(held_out) - 2 * n_params / (2 * len(X))


def test_cross_val_score_and_pipeline_give_finite_scores(eight_neighbour_data):
    _, X = eight_neighbour_data
    scores = cross_val_score(GridGaussian(SHAPE, stencil=8), X, cv=4)
    assert scores.shape == (4,) and np.all(np.isfinite(scores))
    pipeline = make_pipeline(StandardScaler(), GridGaussian(SHAPE))
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # no failed fit hidden behind a NaN score
        search = GridSearchCV(pipeline, {"gridgaussian__stencil": [4, 8]}, cv=3).fit(X)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.best_params_ == {"gridgaussian__stencil": 8}
    # The pipeline's score is the model's log-likelihood of the standardized data.
    scaler = StandardScaler().fit(X)
    direct = GridGaussian(SHAPE, stencil=8).fit(scaler.transform(X))
    assert search.best_estimator_.score(X) == pytest.approx(direct.score(scaler.transform(X)))


@pytest.mark.parametrize("roundtrip", [
    lambda m: pickle.loads(pickle.dumps(m)),
    copy.deepcopy,
    "joblib",
])
def test_fitted_models_pickle(eight_neighbour_data, tmp_path, roundtrip):
    _, X = eight_neighbour_data
    model = GridGaussian(SHAPE, stencil=8).fit(X)
    model.sample(2, random_state=0)                     # caches a CHOLMOD factor
    if roundtrip == "joblib":
        joblib.dump(model, tmp_path / "model.joblib")
        copy_ = joblib.load(tmp_path / "model.joblib")
    else:
        copy_ = roundtrip(model)
    np.testing.assert_array_equal(copy_.score_samples(X[:20]), model.score_samples(X[:20]))
    assert copy_.log_partition_ == model.log_partition_
    np.testing.assert_array_equal(copy_.sample(5, random_state=1),
                                  model.sample(5, random_state=1))
    assert copy_.get_params() == model.get_params()


def test_grid_search_in_two_processes(eight_neighbour_data):
    _, X = eight_neighbour_data
    grid = {"stencil": [4, 8], "alpha": [0.0, 0.1]}
    parallel = GridSearchCV(GridGaussian(SHAPE), grid, cv=3, n_jobs=2).fit(X)
    serial = GridSearchCV(GridGaussian(SHAPE), grid, cv=3, n_jobs=1).fit(X)
    np.testing.assert_allclose(parallel.cv_results_["mean_test_score"],
                               serial.cv_results_["mean_test_score"])
    assert parallel.best_estimator_.score(X) == serial.best_estimator_.score(X)


def test_fitted_model_travels_to_dask_workers(eight_neighbour_data):
    distributed = pytest.importorskip("distributed")
    _, X = eight_neighbour_data
    model = GridGaussian(SHAPE, stencil=8).fit(X)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        remote_scores = client.submit(model.score_samples, X[:50]).result()
        remote_fit = client.submit(lambda m, data: m.fit(data), clone(model), X).result()
    np.testing.assert_array_equal(remote_scores, model.score_samples(X[:50]))
    np.testing.assert_allclose(remote_fit.theta_, model.theta_)
