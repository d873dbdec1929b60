"""explain_dataset / `workbench explain`: maps and per-image table, resume, refusals, unreadable images."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import workbench as wb
from workbench import cli
from workbench.attribution import attribute


def make_folder(root, n=10, hw=(24, 24)):
    """images with a bright square on positives; lung masks for all, heart masks for even ids."""
    for d in ("images", "masks/lung", "masks/heart"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["id,label"]
    for k in range(n):
        img = (rng.random(hw) * 100).astype(np.uint8)
        if k % 2:
            img[4:10, 4:10] += 150
        Image.fromarray(img).save(root / "images" / f"im{k:02d}.png")
        lung = np.zeros(hw, np.uint8)
        lung[2:14, 2:14] = 255
        Image.fromarray(lung).save(root / "masks" / "lung" / f"im{k:02d}.png")
        if k % 2 == 0:
            heart = np.zeros(hw, np.uint8)
            heart[12:20, 10:18] = 255
            Image.fromarray(heart).save(root / "masks" / "heart" / f"im{k:02d}.png")
        lines.append(f"im{k:02d},{k % 2}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def small_model():
    torch.manual_seed(0)
    return wb.models.create("vit_tiny", num_classes=2, img_size=24, in_chans=1, patch_size=8, depth=1,
                            embed_dim=32, num_heads=2)


class _Stop(Exception):
    pass


@pytest.fixture
def setup(tmp_path):
    root = make_folder(tmp_path / "ds")
    return wb.data.load(root, split=None, lazy=True), small_model(), root


def test_maps_and_table_equal_direct_attribution(setup, tmp_path):
    data, model, _ = setup
    res = wb.explain_dataset(model, data, out=tmp_path / "out", method="saliency", batch_size=3, shard_size=4,
                             num_workers=0, progress=False)
    t = res.table
    assert t["index"].tolist() == list(range(10)) and t["id"].tolist() == [f"im{k:02d}" for k in range(10)]
    assert res.maps.shape == (10, 24, 24) and res.maps.dtype == np.float16 and len(res.store.shards) == 3
    batch = data.batch(range(10))
    direct = attribute(model, batch["image"], method="saliency")
    np.testing.assert_allclose(res.maps[:].astype(np.float32), direct.maps.numpy(), rtol=2e-3, atol=1e-6)
    probs = wb.train.predict(model, data, num_workers=0)
    assert t["prediction"].tolist() == probs.argmax(1).tolist() and t["target"].tolist() == t["prediction"].tolist()
    np.testing.assert_allclose(t["prob"], probs.max(1).values.numpy(), rtol=1e-5)
    assert t["budget_heart"].isna().tolist() == [False, True] * 5 and t["budget_lung"].notna().all()
    share = direct.maps.clamp(min=0)[0][batch["masks"]["lung"][0]].sum() / direct.maps.clamp(min=0)[0].sum()
    assert t["budget_lung"][0] == pytest.approx(float(share), rel=1e-4)
    assert t["pointing_lung"].between(0, 1).all() and t["pointing_heart"].isna().tolist() == [False, True] * 5
    b = res.budget(bootstrap=50)
    assert set(b["structure"]) == {"lung", "heart", "outside"} and b.set_index("structure").loc["heart", "n"] == 5
    assert set(res.budget(by="label", bootstrap=0)["label"]) == {0, 1}


def test_interrupted_job_resumes_and_other_settings_are_refused(setup, tmp_path, monkeypatch):
    data, model, _ = setup
    import workbench.explain as ex
    calls, real, stop = [], ex._explain_batch, {"armed": True}

    def flaky(*a, **k):
        calls.append(int(a[1]["index"][0]))
        if len(calls) == 3 and stop["armed"]:
            stop["armed"] = False
            raise _Stop  # the job is killed in the second shard
        return real(*a, **k)

    monkeypatch.setattr(ex, "_explain_batch", flaky)
    kw = dict(out=tmp_path / "out", method="saliency", batch_size=2, shard_size=4, num_workers=0, progress=False)
    with pytest.raises(_Stop):
        wb.explain_dataset(model, data, **kw)
    assert (tmp_path / "out" / "shards" / "000000").is_dir() and not (tmp_path / "out" / "manifest.json").exists()
    calls.clear()
    res = wb.explain_dataset(model, data, **kw)
    assert calls == [4, 6, 8]                                # shard 0 was not redone
    monkeypatch.setattr(ex, "_explain_batch", real)
    fresh = wb.explain_dataset(model, data, **{**kw, "out": tmp_path / "fresh"})
    np.testing.assert_array_equal(res.maps[:], fresh.maps[:])
    pd_cols = [c for c in fresh.table.columns if c != "probs"]
    assert res.table[pd_cols].equals(fresh.table[pd_cols])
    with pytest.raises(ValueError, match=r"another job .*method"):
        wb.explain_dataset(model, data, **{**kw, "method": "input_x_gradient"})
    other = small_model()
    torch.nn.init.zeros_(other.get_classifier().weight)
    with pytest.raises(ValueError, match=r"another job .*spec\.model"):
        wb.explain_dataset(other, data, **kw)
    replaced = wb.explain_dataset(other, data, **kw, overwrite=True)     # explicitly: start over
    assert replaced.store.spec["model"] == wb.jobs.fingerprint(other) and len(replaced.table) == 10


def test_unreadable_image_is_named_or_skipped(setup, tmp_path):
    data, model, root = setup
    (root / "images" / "im03.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match=r"im03\.png"):
        wb.explain_dataset(model, data, out=tmp_path / "a", method="saliency", batch_size=4, num_workers=1,
                           progress=False)
    res = wb.explain_dataset(model, data, out=tmp_path / "b", method="saliency", batch_size=4, num_workers=1,
                             on_error="skip", progress=False)
    t = res.table
    assert t["error"].notna().tolist() == [k == 3 for k in range(10)] and "im03.png" in t["error"][3]
    assert np.isnan(t["budget_lung"][3]) and np.isnan(t["prob"][3]) and not res.maps[3].any()
    assert t["budget_lung"].drop(3).notna().all()
    with pytest.raises(ValueError, match="on_error must be one of"):
        wb.explain_dataset(model, data, out=tmp_path / "c", on_error="ignore")
    with pytest.raises(ValueError, match="target must be None"):
        wb.explain_dataset(model, data, out=tmp_path / "c", target="first")


def test_cli_explain_writes_and_resumes(setup, tmp_path, capsys):
    _, model, root = setup
    wb.models.save(model, tmp_path / "model")
    argv = ["explain", "--checkpoint", str(tmp_path / "model"), "--data", str(root), "--split", "all",
            "--method", "saliency", "--out", str(tmp_path / "out"), "--batch-size", "4", "--shard-size", "4",
            "--workers", "0", "--bootstrap", "20", "--no-progress", "--device", "cpu"]
    assert cli.main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["images"] == 10 and first["shards"] == 3 and first["errors"] == 0
    assert {r["structure"] for r in first["budget"]} == {"lung", "heart", "outside"}
    assert cli.main(argv) == 0                                # finished: nothing redone
    assert json.loads(capsys.readouterr().out) == first
    at = argv.index("saliency")
    assert cli.main([*argv[:at], "gradcam", *argv[at + 1:]]) == 2
    assert "another job" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
def test_on_cuda_lazy_data_in_pinned_workers_gives_the_cpu_results(setup, tmp_path):
    data, model, _ = setup
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        kw = dict(method="saliency", batch_size=4, num_workers=1, progress=False)
        cpu = wb.explain_dataset(model, data, out=tmp_path / "cpu", device="cpu", **kw)
        gpu = wb.explain_dataset(model, data, out=tmp_path / "gpu", device="cuda", **kw)
        a, b = cpu.maps[:].astype(np.float32), gpu.maps[:].astype(np.float32)
        assert np.abs(a - b).max() <= 1e-2 * np.abs(a).max()
        assert cpu.table["prediction"].tolist() == gpu.table["prediction"].tolist()
        m = small_model()
        h = wb.fit(m, data, epochs=1, batch_size=4, device="cuda", num_workers=1, progress=False)
        assert len(h.rows) == 1 and next(m.parameters()).is_cuda
        assert wb.evaluate(m, data, device="cuda", num_workers=1).n == 10
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
