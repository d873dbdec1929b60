"""The ``workbench`` command line: demo, train, evaluate."""
from __future__ import annotations

import json

import numpy as np
import pytest

from workbench import cli


@pytest.fixture()
def tiny_npz(tmp_path):
    rng = np.random.default_rng(0)

    def split(n):
        y = np.arange(n) % 2
        x = (rng.random((n, 16, 16)) * 120).astype(np.uint8)
        x[y == 1, 4:10, 4:10] += 120
        return x, y[:, None]

    arrays = {}
    for s, n in (("train", 48), ("val", 16), ("test", 24)):
        arrays[f"{s}_images"], arrays[f"{s}_labels"] = split(n)
    path = tmp_path / "tiny.npz"
    np.savez(path, **arrays)
    return path


def test_train_then_evaluate_roundtrip(tiny_npz, tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["train", "--data", str(tiny_npz), "--model", "vit_tiny", "--patch-size", "4", "--depth", "1",
                   "--out", str(out), "--epochs", "2", "--batch-size", "16", "--bootstrap", "20",
                   "--no-progress", "--device", "cpu"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    for f in ("model.safetensors", "model.json", "metrics.json", "training_curves.png", "training_curves.json"):
        assert (out / f).exists(), f
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"]["name"] == "vit_tiny" and len(metrics["history"]["rows"]) == 2
    rc = cli.main(["evaluate", "--checkpoint", str(out / "model"), "--data", str(tiny_npz), "--bootstrap", "20",
                   "--device", "cpu"])
    assert rc == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["n"] == 24 and ev["split"] == "test" and len(ev["auc_ci"]) == 2
    assert ev["auc"] == pytest.approx(printed["test"]["auc"])


def test_cli_errors_are_clear(tmp_path, capsys):
    rc = cli.main(["evaluate", "--checkpoint", str(tmp_path / "missing"), "--data", "phantom"])
    assert rc == 2 and "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["nonsense"])


@pytest.mark.slow
def test_demo_quick_writes_its_files(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--quick", "--no-progress", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["auc"] <= 1.0 and metrics["test"]["auc_ci"] is not None
    for f in ("model.safetensors", "model.json", "training_curves.png", *summary["figures"]):
        assert (out / f).exists(), f
    assert "gallery.png" in summary["figures"]
