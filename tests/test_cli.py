import json
from pathlib import Path

import numpy as np
import pytest

from sparsegauss import GridGaussian
from sparsegauss.cli import NOISE_CHECK, get_parser, main


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The whole default demo, once (about two minutes on 2 cores)."""
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    return out


def test_demo_writes_summary_report_figures_and_models(demo_run):
    summary = json.loads((demo_run / "summary.json").read_text())
    rows = {(r["estimator"], r["stencil"]): r for r in summary["rows"]}
    for stencil in (4, 8):
        assert {("mle", stencil), ("nce", stencil), ("cd", stencil)} <= set(rows)
        assert ("sm closed form", stencil) in rows or ("sm", stencil) in rows
        mle = rows["mle", stencil]
        model = GridGaussian.load(demo_run / f"mle-{stencil}.npz")
        np.testing.assert_allclose(model.log_partition_, mle["log_partition"])
        assert mle["kl_to_mle"] == 0.0
        # No estimator beats the MLE on the likelihood it maximizes.
        for (name, s), row in rows.items():
            if s == stencil and row["positive_definite"]:
                assert row["train_loglik"] <= mle["train_loglik"] + 1e-6, name
                assert row["kl_to_mle"] >= -1e-9, name
            # Every fit the demo shows converged to a Gaussian, except score matching's
            # closed form, which the report explains.
            if s == stencil and name != "sm closed form":
                assert row["positive_definite"] and row["converged"], name
    assert rows["mle", 8]["test_loglik"] > rows["mle", 4]["test_loglik"]
    # NCE with the adaptive noise: its learned log Z within 0.5 nats of the exact value
    # with 4 neighbours, and with 8 within NCE's finite-sample bias (between -0.5 and -3
    # p/N measured; p/N = 0.47 here).
    assert abs(rows["nce", 4]["log_partition_error"]) < 0.5
    nce = rows["nce", 8]
    assert abs(nce["log_partition_error"]) < 3 * nce["n_params"] / nce["n_train"]
    assert "noise=\"adaptive\"" in (demo_run / "report.md").read_text()
    assert [r["estimator"] for r in summary["noise_check"]] == list(NOISE_CHECK)
    report = (demo_run / "report.md").read_text()
    for name in summary["figures"]:
        assert (demo_run / name).stat().st_size > 10_000, name
    for heading in ("## NCE's log Z against the truth", "## Which noise for NCE",
                    "## 8 neighbours against 4", "## Score matching",
                    "## Contrastive divergence"):
        assert heading in report
    assert f"{rows['mle', 8]['test_loglik']:.2f}" in report
    # The table says which fits converged, not only which are positive definite.
    assert "| PD | converged |" in report and "| no | no |" in report
    # The reduced natural-image study: its own report, linked, with measured numbers.
    natural = summary["natural"]
    assert "## Natural images (reduced study)" in report and "natural/report.md" in report
    assert (demo_run / "natural" / "report.md").is_file()
    assert np.isfinite(natural["test_gain"]) and 0.9 < natural["auc_mnist"] <= 1.0


def test_demo_prints_the_table(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--quiet", "--methods", "mle",
                 "--natural-patches", "0"]) == 0
    table = capsys.readouterr().out
    assert table.count("mle ") == 2 and "KL(MLE||est)" in table


def test_demo_rejects_unknown_methods(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--methods", "mle,bogus"]) == 1
    assert "subset of mle,nce,cd,sm" in capsys.readouterr().err


def test_demo_full_uses_the_training_set(tmp_path, mnist_dir, capsys):
    assert main(["demo", "--full", "--data-home", str(mnist_dir), "--out", str(tmp_path),
                 "--methods", "mle", "--natural-patches", "0"]) == 0
    assert "60,000" in capsys.readouterr().out


def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["demo", "--out", str(blocker / "sub")]) == 1
    assert "cannot write to the output directory" in capsys.readouterr().err


def test_missing_training_data_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SPARSEGAUSS_DATA", raising=False)
    code = main(["demo", "--full", "--offline", "--data-home", str(tmp_path), "--out",
                 str(tmp_path / "out")])
    assert code == 1
    assert "train-images-idx3-ubyte(.gz) was not found" in capsys.readouterr().err


def test_usage_errors_and_help(capsys):
    assert main([]) == 2
    assert main(["demo", "--bogus"]) == 2
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert get_parser().prog == "sparsegauss"


def test_fit_mnist_saves_model_and_figures(tmp_path, capsys):
    out = tmp_path / "fit"
    assert main(["fit", "--method", "sm", "--sm-solver", "closed-form", "--train-size", "3000",
                 "--out", str(out)]) == 0
    assert "not positive definite" in capsys.readouterr().out
    model = GridGaussian.load(out / "model.npz")
    assert model.method == "sm" and not model.is_positive_definite_
    assert (out / "couplings.png").stat().st_size > 10_000
    assert not (out / "samples.png").exists()


def test_fit_user_array_and_sample_roundtrip(tmp_path, capsys):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((500, 6, 9))
    images = base + 0.5 * np.roll(base, 1, axis=2)
    np.savez(tmp_path / "images.npz", flat=images.reshape(500, -1))
    assert main(["fit", str(tmp_path / "images.npz"), "--shape", "6", "9", "--stencil", "8",
                 "--out", str(tmp_path / "fit"), "--quiet"]) == 0
    direct = GridGaussian((6, 9), stencil=8).fit(images)
    saved = GridGaussian.load(tmp_path / "fit" / "model.npz")
    np.testing.assert_allclose(saved.theta_, direct.theta_, rtol=1e-10)
    for name in ("couplings.png", "samples.png", "learning-curve.png"):
        assert (tmp_path / "fit" / name).stat().st_size > 5_000
    npy, png = tmp_path / "s" / "samples.npy", tmp_path / "s" / "samples.png"
    (tmp_path / "s").mkdir()
    assert main(["sample", str(tmp_path / "fit" / "model.npz"), "-n", "5", "--npy", str(npy),
                 "--png", str(png), "--seed", "3"]) == 0
    samples = np.load(npy)
    assert samples.shape == (5, 6, 9)
    np.testing.assert_allclose(samples.reshape(5, -1), saved.sample(5, random_state=3))
    assert png.stat().st_size > 5_000


@pytest.mark.parametrize("argv, message", [
    (["fit", "missing.npy"], "does not exist"),
    (["fit", "{tmp}/images.txt"], "expected a .npy or .npz"),
    (["fit", "{tmp}/flat.npy"], "give the image shape with --shape"),
    (["fit", "{tmp}/flat.npy", "--shape", "3", "3"], "has 9 pixels, but the images have 12"),
    (["fit", "{tmp}/cube.npy"], "expected images of shape"),
    (["fit", "{tmp}/two.npz"], "choose one with --key"),
    (["fit", "{tmp}/nan.npy"], "NaN"),
    (["fit", "{tmp}/negative.npy"], "hold negative values (the least is -3)"),
    (["sample", "{tmp}/nothing.npz", "--png", "{tmp}/x.png"], "There is no model file"),
    (["sample", "{tmp}/flat.npy", "--png", "{tmp}/x.png"], "Could not read a GridGaussian"),
    (["sample", "{tmp}/flat.npy"], "Nothing to write"),
])
def test_bad_inputs_are_clear_errors(tmp_path, capsys, argv, message):
    (tmp_path / "images.txt").write_text("1 2 3")
    np.save(tmp_path / "flat.npy", np.ones((10, 12)))
    np.save(tmp_path / "cube.npy", np.ones((2, 2, 2, 2)))
    np.savez(tmp_path / "two.npz", a=np.ones((3, 4, 4)), b=np.ones((3, 4, 4)))
    nan = np.random.default_rng(0).standard_normal((20, 4, 4))
    nan[3, 1, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "negative.npy", np.arange(-3, 29).reshape(2, 4, 4))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv + ["--out", str(tmp_path / "o")] if argv[0] == "fit" else argv) == 1
    assert message in capsys.readouterr().err


def test_sample_from_an_indefinite_model_says_why(tmp_path, capsys):
    rng = np.random.default_rng(0)
    model = GridGaussian((4, 4)).fit(rng.standard_normal((100, 16)))
    model.theta_[0] = -1.0
    model.save(tmp_path / "bad.npz")
    assert main(["sample", str(tmp_path / "bad.npz"), "--npy", str(tmp_path / "s.npy")]) == 1
    assert "not positive definite" in capsys.readouterr().err


def test_bench_quick(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert main(["bench", "--quick", "--filter", "MLEFit", "--out", str(tmp_path)]) == 0
    assert "MLEFit.time_fit" in (tmp_path / "results.md").read_text()


def test_fit_shard_directory(tmp_path, capsys):
    from sparsegauss.datasets import make_grid_gaussian

    truth, X = make_grid_gaussian((5, 7), 600, random_state=2)
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(3):
        np.save(shards / f"{i}.npy", X[200 * i:200 * (i + 1)].reshape(-1, 5, 7))
    assert main(["fit", str(shards), "--out", str(tmp_path / "fit"), "--quiet"]) == 1
    assert "--shape H W" in capsys.readouterr().err
    assert main(["fit", str(shards), "--shape", "5", "7", "--out", str(tmp_path / "fit"),
                 "--quiet"]) == 0
    saved = GridGaussian.load(tmp_path / "fit" / "model.npz")
    np.testing.assert_allclose(saved.theta_, GridGaussian((5, 7)).fit(X).theta_, rtol=1e-9)


def test_fit_reads_idx_files_like_mnist(tmp_path):
    """An IDX file of 8-bit images is scaled to [0, 1] and noised as the study does."""
    from sparsegauss.datasets import load_idx, scale_and_noise

    bundled = Path(__file__).resolve().parents[1] / "sparsegauss" / "data"
    path = bundled / "t10k-images-idx3-ubyte.gz"
    assert main(["fit", str(path), "--train-size", "2000", "--out", str(tmp_path / "fit"),
                 "--quiet"]) == 0
    images = load_idx(path)
    X = scale_and_noise(images, 0.1, np.random.default_rng(0))[:2000]
    direct = GridGaussian((28, 28)).fit(X)
    saved = GridGaussian.load(tmp_path / "fit" / "model.npz")
    np.testing.assert_allclose(saved.theta_, direct.theta_, rtol=1e-9)


def test_nce_fit_reports_its_learned_log_partition_and_noise_ratio(tmp_path, capsys):
    """300 white-noise images of 4×5 (p = 51): the default ν is 1 (600 ≥ 4p = 204)."""
    np.save(tmp_path / "x.npy", np.random.default_rng(2).standard_normal((300, 4, 5)))
    assert main(["fit", str(tmp_path / "x.npy"), "--method", "nce", "--max-iter", "200",
                 "--out", str(tmp_path / "nce")]) == 0
    printed = capsys.readouterr().out
    model = GridGaussian.load(tmp_path / "nce" / "model.npz")
    assert f"NCE's learned log Z {model.log_partition_estimate_:.3f}" in printed
    assert "(noise ratio nu = 1)" in printed


def test_fit_options_reach_the_estimator(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "x.npy", rng.standard_normal((300, 5, 6)))
    assert main(["fit", str(tmp_path / "x.npy"), "--method", "nce", "--optimizer", "adam",
                 "--max-iter", "30", "--tol", "0.001", "--nu", "2", "--learning-rate", "0.05",
                 "--batch-size", "64", "--out", str(tmp_path / "nce"), "--quiet"]) == 0
    loaded = GridGaussian.load(tmp_path / "nce" / "model.npz")
    params = loaded.get_params()
    assert loaded.nu_ == 2.0
    assert (params["nu"], params["learning_rate"], params["batch_size"], params["tol"],
            params["max_iter"]) == (2.0, 0.05, 64, 0.001, 30)
    assert main(["fit", str(tmp_path / "x.npy"), "--alpha", "0.2", "--out",
                 str(tmp_path / "mle"), "--quiet"]) == 0
    assert GridGaussian.load(tmp_path / "mle" / "model.npz").alpha == 0.2


@pytest.mark.parametrize("argv, message", [
    (["fit", "--noise-std", "-1"], "--noise-std: must be a finite number >= 0, got -1"),
    (["fit", "--nu", "0"], "--nu: must be > 0"),
    (["fit", "--alpha", "1"], "--alpha: must lie in [0, 1)"),
    (["fit", "--batch-size", "0"], "--batch-size: must be >= 1"),
    (["sample", "m.npz", "-n", "0", "--npy", "x.npy"], "-n/--n-samples: must be >= 1"),
])
def test_bad_option_values_are_usage_errors(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_user_files_are_checked_and_never_created_behind_the_users_back(tmp_path, capsys):
    np.save(tmp_path / "empty.npy", np.zeros((0, 4, 4)))
    assert main(["fit", str(tmp_path / "empty.npy"), "--out", str(tmp_path / "o")]) == 1
    assert "holds an empty array (shape (0, 4, 4))" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()           # nothing written for a failed input
    # Float arrays are used as given; --noise-std, when set, is applied, not ignored.
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.standard_normal((200, 4, 4)))
    assert main(["fit", str(tmp_path / "x.npy"), "--noise-std", "0.5", "--out",
                 str(tmp_path / "noisy")]) == 0
    assert "plus pixel noise std 0.5" in capsys.readouterr().out
    noisy = GridGaussian.load(tmp_path / "noisy" / "model.npz")
    plain = GridGaussian((4, 4)).fit(np.load(tmp_path / "x.npy"))
    assert np.all(noisy.theta_[:16] < plain.theta_[:16])   # more variance, less precision
    # --out may create its own directory, not a missing parent.
    assert main(["fit", str(tmp_path / "x.npy"), "--out", str(tmp_path / "no" / "such")]) == 1
    assert "its parent" in capsys.readouterr().err and not (tmp_path / "no").exists()
    model = tmp_path / "noisy" / "model.npz"
    for option in ("--npy", "--png"):
        target = tmp_path / "missing-dir" / "x"
        assert main(["sample", str(model), option, str(target)]) == 1
        assert "missing-dir does not exist" in capsys.readouterr().err
        assert not (tmp_path / "missing-dir").exists()


def test_sample_requests_are_checked_before_allocating(tmp_path, capsys):
    rng = np.random.default_rng(0)
    GridGaussian((5, 6)).fit(rng.standard_normal((100, 30))).save(tmp_path / "m.npz")
    assert main(["sample", str(tmp_path / "m.npz"), "-n", "1000000000000", "--npy",
                 str(tmp_path / "x.npy")]) == 1
    err = capsys.readouterr().err
    assert "1,000,000,000,000 samples of 30 pixels (float64) need 218.3 TiB" in err
    assert "available" in err and "Traceback" not in err
    assert not (tmp_path / "x.npy").exists()
    # A PNG of 1,000 samples shows the first 64, and says so.
    png = tmp_path / "many.png"
    assert main(["sample", str(tmp_path / "m.npz"), "-n", "1000", "--png", str(png)]) == 0
    assert "the PNG shows the first 64 of 1,000 samples" in capsys.readouterr().err
    from matplotlib.image import imread
    assert max(imread(png).shape[:2]) < 2000


def test_saved_models_and_load_errors(tmp_path):
    rng = np.random.default_rng(0)
    model = GridGaussian((3, 4)).fit(rng.standard_normal((50, 12)))
    path = model.save(tmp_path / "m.npz")
    figure = tmp_path / "f.png"
    figure.write_bytes(b"")
    assert (path.stat().st_mode & 0o777) == (figure.stat().st_mode & 0o777)
    with pytest.raises(FileNotFoundError, match="There is no model file .*missing.npz"):
        GridGaussian.load(tmp_path / "missing.npz")
    with pytest.raises(OSError, match=r"Could not save the model to .*nowhere.*m\.npz"):
        model.save(tmp_path / "nowhere" / "m.npz")


def test_integer_arrays_of_any_type_are_scaled_by_their_bit_depth(tmp_path, capsys):
    """An int64 array of 8-bit values (NumPy's default integer) is divided by 255, not by
    2⁶³ − 1, which left the pixel noise as the only signal; the fit says what it did."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(200, 5, 6))
    np.save(tmp_path / "int64.npy", images)
    np.save(tmp_path / "uint8.npy", images.astype(np.uint8))
    for name in ("int64", "uint8"):
        assert main(["fit", str(tmp_path / f"{name}.npy"), "--out", str(tmp_path / name),
                     "--seed", "1"]) == 0
        assert (f"({name} integers divided by 255 into [0, 1], pixel noise std 0.1)"
                in capsys.readouterr().out)
    same = [GridGaussian.load(tmp_path / name / "model.npz").theta_
            for name in ("int64", "uint8")]
    np.testing.assert_array_equal(same[0], same[1])
