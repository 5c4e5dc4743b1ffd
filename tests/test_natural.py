"""The natural-image study end to end (``sparsegauss natural``) on tiny settings: what it
writes, that every number it reports is finite and measured, and its errors."""

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from sparsegauss.cli import main
from sparsegauss.natural import StudySettings, filter_locality, run_study

TINY = ["--n-patches", "1500", "--n-test", "300", "--steps", "30", "--quiet"]


def smooth_photo(rng, shape=(90, 120)):
    """A smooth random field with a few step edges, 8-bit: a stand-in photograph."""
    field = rng.standard_normal(shape)
    for axis in (0, 1):
        field = np.cumsum(field, axis=axis)
        field -= field.mean(axis=axis, keepdims=True)
    field = field / np.abs(field).max()
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    field += 0.5 * ((rows * rng.uniform(-1, 1) + cols * rng.uniform(-1, 1)) > 0)
    return np.uint8(255 * (field - field.min()) / np.ptp(field))


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    rng = np.random.default_rng(0)
    photos = tmp_path_factory.mktemp("photos")
    for i in range(4):
        Image.fromarray(smooth_photo(rng)).save(photos / f"photo{i}.png")
    (photos / "readme.txt").write_text("not a photograph")
    # Narrower than a patch: no patch can come from it, so it is left out of the split
    # (were it the only held-out photograph, the held-out patches could not be cut).
    Image.fromarray(smooth_photo(rng, (6, 40))).save(photos / "strip.png")
    out = tmp_path_factory.mktemp("natural")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(["natural", "--images", str(photos), "--skip-unreadable",
                     "--patch-size", "8", "--out", str(out)] + TINY)
    assert "warning: strip.png is smaller than the 8×8 patches" in stderr.getvalue()
    return code, out


def test_study_on_a_folder_writes_report_summary_and_figures(folder_run):
    code, out = folder_run
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"]["n_patches"] == 1500 and summary["images"]["n_test"] == 300
    # The report names the user's files.
    assert sorted(summary["images"]["train"] + summary["images"]["test"]) == [
        f"photo{i}.png" for i in range(4)]
    assert summary["images"]["too_small"] == ["strip.png"]
    assert {r["model"] for r in summary["dem"]} == set(StudySettings.dem_configs)
    for row in summary["dem"]:
        for key in ("log_z_ais", "log_z_importance", "test_loglik", "train_loglik",
                    "test_gain", "filter_locality", "seconds"):
            assert np.isfinite(row[key]), (row["model"], key)
    # The held-out gain is the DEM's held-out log-likelihood minus the Gaussian's, and
    # that baseline is the 4-neighbour MLE row of the Gaussian table and the mean of the
    # discrimination table's natural column (three places, one number).
    mle4 = next(r for r in summary["gaussian"] if r["estimator"] == "mle" and r["stencil"] == 4)
    assert mle4["test_loglik"] == pytest.approx(summary["gaussian_test_loglik"])
    discrimination = {r["model"]: r for r in summary["discrimination"]}
    assert discrimination["grid Gaussian (4-nbr MLE)"]["natural (held out)"]["mean"] == \
        pytest.approx(summary["gaussian_test_loglik"])
    for row in summary["dem"]:
        assert row["test_loglik"] - row["test_gain"] == pytest.approx(
            summary["gaussian_test_loglik"])
        if row["model"] in discrimination:
            assert discrimination[row["model"]]["natural (held out)"]["mean"] == \
                pytest.approx(row["test_loglik"])
    for row in summary["discrimination"]:
        assert 0 <= row["auc_gaussian"] <= 1
    assert not summary["mnist"]                      # 8 × 8 patches: digits not scored
    report = (out / "report.md").read_text()
    for heading in ("## Patches", "## The grid Gaussian of the patches",
                    "## The deep energy model", "## Can the models tell", "## Modes"):
        assert heading in report
    assert "Does the DEM beat the Gaussian" in report and "not scored" in report
    assert "Left out, smaller than a patch: strip.png." in report
    assert "photo0.png" in report
    for name in summary["figures"]:
        with Image.open(out / name) as image:
            assert image.size[0] > 100
        assert f"({name})" in report


def test_bundled_photographs_and_mnist_digits():
    """28 × 28 patches of the bundled photographs: every licence listed, MNIST digits
    scored, and the digits are told from natural patches by the Gaussian."""
    from sparsegauss.photos import NATURAL_IMAGES, load_natural_images

    settings = StudySettings(n_patches=1500, n_test=300, dem_steps=20, n_hidden=4,
                             n_units=4, ais_chains=20, ais_temperatures=20)
    summary, figures = run_study(load_natural_images(max_side=256),
                                 image_names=list(NATURAL_IMAGES),
                                 licences=list(NATURAL_IMAGES.values()), settings=settings,
                                 say=lambda *a: None)
    assert summary["mnist"]
    gaussian_row = summary["discrimination"][0]
    assert gaussian_row["auc_mnist"] > 0.9
    from sparsegauss.report import render_natural

    report = render_natural(summary)
    assert all(licence in report for licence in NATURAL_IMAGES.values())
    assert "filters-nce-whitened-sigma1.png" in figures


def test_filter_locality_of_known_filters():
    filters = np.zeros((2, 28, 28))
    filters[0, 10:13, 5:8] = 1.0                     # inside one 7 × 7 box
    filters[1] = 1.0                                 # spread evenly, peak in the middle
    filters[1, 14, 14] = 1.0 + 1e-9
    np.testing.assert_allclose(filter_locality(filters), [1.0, 49 / 784])


def test_study_errors(tmp_path, capsys):
    rng = np.random.default_rng(1)
    Image.fromarray(smooth_photo(rng)).save(tmp_path / "only.png")
    assert main(["natural", "--images", str(tmp_path), "--out", str(tmp_path / "o")]
                + TINY) == 1
    assert "at least two" in capsys.readouterr().err
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(smooth_photo(rng)).save(tmp_path / "second.png")
    assert main(["natural", "--images", str(tmp_path), "--out", str(tmp_path / "o")]
                + TINY) == 1
    assert ("broken.jpg is not a readable image" in (err := capsys.readouterr().err)
            and "Pass --skip-unreadable to leave such files out." in err)
    assert main(["natural", "--images", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "o")] + TINY) == 1
    assert "missing" in capsys.readouterr().err
    few = tmp_path / "few"
    few.mkdir()
    Image.fromarray(smooth_photo(rng)).save(few / "big.png")
    Image.fromarray(smooth_photo(rng, (20, 20))).save(few / "tiny.png")
    assert main(["natural", "--images", str(few), "--out", str(tmp_path / "o")]
                + TINY) == 1
    err = capsys.readouterr().err
    assert "warning: tiny.png is smaller than the 28×28 patches" in err
    assert "at least two of at least 28×28 pixels; got 1 (tiny.png too small)" in err
    # From the library, the same as a UserWarning before the error.
    with pytest.warns(UserWarning, match="tiny is smaller than the 28×28 patches"), \
            pytest.raises(ValueError, match=r"got 1 \(tiny too small\)"):
        run_study([smooth_photo(rng) / 255.0, np.zeros((20, 20))],
                  image_names=["big", "tiny"], say=lambda *a: None)


def test_report_says_on_which_side_of_the_gaussian_the_other_fits_lie():
    """The raw and σ = 0.1 DEMs usually lie below the Gaussian, and the report says why;
    on held-out photographs unlike the training ones (seen on smooth synthetic photos,
    one of them palette-quantized) the Gaussian loses tens of thousands of nats a patch
    and some of them lie above it: the report must not call that "below"."""
    from sparsegauss.report import _other_dems_verdict

    below = [dict(model="nce raw σ=1", test_gain=-120.4),
             dict(model="nce whitened σ=0.1", test_gain=-3.2)]
    text = _other_dems_verdict(below, 530.0, 512.0)
    assert ("lie 3 (nce whitened σ=0.1) to 120 (nce raw σ=1) nats per patch below the "
            "Gaussian") in text
    mixed = [dict(model="nce raw σ=1", test_gain=46533.5),
             dict(model="nce whitened σ=0.1", test_gain=-5042979.7)]
    text = _other_dems_verdict(mixed, 3297.5, -47268.0)
    assert "below the Gaussian" not in text
    assert "range from -5042980 (nce whitened σ=0.1) to +46534 (nce raw σ=1)" in text
    assert "nce raw σ=1 lies above it" in text
    assert "3298 nats per patch on its training patches and -47268 on the held-out" in text
    # A tie with the Gaussian is not "above it" (no empty list of fits above).
    text = _other_dems_verdict([dict(model="nce raw σ=1", test_gain=0.0)], 530.0, 512.0)
    assert "lie 0 (nce raw σ=1) to 0 (nce raw σ=1) nats per patch below" in text
    assert "above it" not in text
