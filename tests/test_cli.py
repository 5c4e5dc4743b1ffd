import json

import numpy as np
import pytest

from sparsegauss import GridGaussian
from sparsegauss.cli import get_parser, main


def test_demo_writes_summary_and_models(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "4-neighbour MLE" in table and "8-neighbour MLE" in table
    summary = json.loads((tmp_path / "summary.json").read_text())
    by_stencil = {row["stencil"]: row for row in summary["rows"]}
    assert by_stencil[8]["test_loglik"] > by_stencil[4]["test_loglik"]
    for stencil, row in by_stencil.items():
        assert row["kkt_residual"] <= 1e-8
        model = GridGaussian.load(tmp_path / f"mle-{stencil}.npz")
        np.testing.assert_allclose(model.log_partition_, row["log_partition"])


def test_demo_full_uses_the_training_set(tmp_path, mnist_dir, capsys):
    assert main(["demo", "--full", "--data-home", str(mnist_dir), "--out", str(tmp_path)]) == 0
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
