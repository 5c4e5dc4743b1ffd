"""DeepEnergyModel: trained on data with structure a Gaussian cannot hold, it must score
held-out data above the grid Gaussian it whitens with (in pixel-space nats)."""

import numpy as np
import pytest

from sparsegauss.deep import DeepEnergyModel


def edge_patches(n, rng, side=8):
    """Smooth Gaussian texture plus, in half the patches, a step edge of random
    orientation and position (amplitude 1): heavy-tailed, oriented structure."""
    smooth = rng.standard_normal((n, side, side))
    smooth = 0.15 * (smooth + np.roll(smooth, 1, 1) + np.roll(smooth, 1, 2)) / 3
    rows, cols = np.mgrid[0:side, 0:side] - (side - 1) / 2
    angle = rng.uniform(0, np.pi, n)
    offset = rng.uniform(-2, 2, n)
    proj = (np.cos(angle)[:, None, None] * rows + np.sin(angle)[:, None, None] * cols
            - offset[:, None, None])
    edges = (proj > 0) * (rng.random(n) < 0.5)[:, None, None]
    return (0.3 + smooth + 0.5 * edges).reshape(n, side * side)


@pytest.mark.parametrize("method", ["nce"])
def test_deep_energy_model_beats_its_gaussian_on_edges(method):
    rng = np.random.default_rng(0)
    X, held_out = edge_patches(6000, rng), edge_patches(2000, rng)
    model = DeepEnergyModel(16, 16, method=method, max_iter=3000, random_state=0).fit(X)
    gaussian = model.whitening_.model_
    gain = model.score_samples(held_out).mean() - gaussian.score(held_out)
    assert gain > 1.0, gain                     # nats per patch
    np.testing.assert_allclose(model.unnormalized_score_samples(held_out[:5])
                               - model.score_samples(held_out[:5]),
                               model.log_partition_estimate_)
    assert model.filters().shape == (16, 8, 8)


def test_score_matching_and_cd_train_and_refuse_a_log_partition():
    rng = np.random.default_rng(1)
    X = edge_patches(2000, rng)
    for method in ("sm", "cd"):
        model = DeepEnergyModel(8, 8, method=method, max_iter=200, random_state=0).fit(X)
        assert np.all(np.isfinite(model.unnormalized_score_samples(X[:10])))
        with pytest.raises(AttributeError, match="method='nce'"):
            model.score_samples(X[:2])
    with pytest.raises(ValueError, match="'method' parameter"):
        DeepEnergyModel(method="mle").fit(X)


def test_image_shape_comes_from_the_data():
    rng = np.random.default_rng(2)
    flat = edge_patches(500, rng)
    images = rng.standard_normal((500, 6, 10)) + np.linspace(0, 1, 10)
    for X, shape in ((flat, (8, 8)), (images, (6, 10))):
        model = DeepEnergyModel(4, 4, max_iter=5, random_state=0).fit(X)
        assert model.image_shape_ == shape and model.filters().shape == (4,) + shape
        assert model.whitening_.model_._grid.shape == shape
