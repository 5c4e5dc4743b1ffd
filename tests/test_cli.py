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
        assert {("mle", stencil), ("nce", stencil), ("cnce", stencil)} <= set(rows)
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
    assert rows["mle", 8]["test_loglik"] > rows["mle", 4]["test_loglik"]
    nce = rows["nce", 4]
    assert abs(nce["log_partition_error"]) < 0.5
    assert [r["estimator"] for r in summary["noise_check"]] == list(NOISE_CHECK)
    report = (demo_run / "report.md").read_text()
    for name in summary["figures"]:
        assert (demo_run / name).stat().st_size > 10_000, name
    for heading in ("## NCE's log Z against the truth", "## Which noise for NCE",
                    "## 8 neighbours against 4", "## Score matching"):
        assert heading in report
    assert f"{rows['mle', 8]['test_loglik']:.2f}" in report


def test_demo_prints_the_table(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--quiet", "--methods", "mle"]) == 0
    table = capsys.readouterr().out
    assert table.count("mle ") == 2 and "KL(MLE||est)" in table


def test_demo_rejects_unknown_methods(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--methods", "mle,bogus"]) == 1
    assert "subset of mle,nce,cnce,sm" in capsys.readouterr().err


def test_demo_full_uses_the_training_set(tmp_path, mnist_dir, capsys):
    assert main(["demo", "--full", "--data-home", str(mnist_dir), "--out", str(tmp_path),
                 "--methods", "mle"]) == 0
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
    (["sample", "{tmp}/nothing.npz", "--png", "{tmp}/x.png"], "does not exist"),
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
