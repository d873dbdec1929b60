"""Registry, atomic IO, device selection, the dataset model and figure export."""
from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pytest
import torch

from workbench._device import resolve_device
from workbench._io import atomic_path, atomic_write_text
from workbench._registry import Registry
from workbench.data._base import ArrayDataset, collate, label_map
from workbench.viz import save_figure


def test_registry_duplicate_and_unknown():
    reg = Registry("method")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)
    with pytest.raises(ValueError, match="valid methods are: a"):
        reg.get("b")
    assert reg.get("a") == 1 and "a" in reg and reg.names() == ["a"]


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "x.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="not a valid torch device"):
        resolve_device("gpu-please")


def _toy(n=6, h=8, w=8):
    images = torch.randint(0, 256, (n, 1, h, w), dtype=torch.uint8)
    masks = {"a": torch.zeros(n, h, w, dtype=torch.bool), "b": torch.ones(n, h, w, dtype=torch.bool)}
    masks["a"][:, :4] = True
    present = {"a": torch.tensor([True, False] * (n // 2)), "b": torch.ones(n, dtype=torch.bool)}
    return ArrayDataset(images, torch.arange(n) % 2, classes=("neg", "pos"), task="binary",
                        masks=masks, mask_present=present, meta=[{"i": i} for i in range(n)])


def test_array_dataset_sample_and_batch_agree():
    ds = _toy()
    s = ds[1]
    assert s["image"].dtype == torch.float32 and 0 <= s["image"].min() and s["image"].max() <= 1
    assert "a" not in s["masks"] and "b" in s["masks"]  # a is not annotated for sample 1
    b = ds.batch([0, 1, 2])
    c = collate([ds[i] for i in [0, 1, 2]], structures=ds.structures)
    assert torch.equal(b["image"], c["image"]) and torch.equal(b["label"], c["label"])
    assert torch.equal(b["mask_present"]["a"], c["mask_present"]["a"])
    assert torch.equal(b["masks"]["a"][0], c["masks"]["a"][0])
    assert len(ds.subset([0, 2])) == 2 and ds.subset([0, 2]).meta[1] == {"i": 2}


@pytest.mark.parametrize("kwargs, match", [
    ({"labels": torch.zeros(6, 2)}, r"labels must be \(N,\) or \(N, 1\)"),
    ({"labels": torch.full((6,), 5)}, "labels must lie in"),
    ({"masks": {"a": torch.zeros(6, 4, 4, dtype=torch.bool)}}, "masks must have the image's geometry"),
    ({"task": "regression"}, "task must be one of"),
])
def test_array_dataset_bad_input(kwargs, match):
    args = dict(images=torch.zeros(6, 1, 8, 8), labels=torch.zeros(6), classes=("a", "b"), task="binary")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ArrayDataset(args.pop("images"), args.pop("labels"), **args)


def test_array_dataset_rejects_nan():
    x = torch.zeros(2, 1, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ArrayDataset(x, torch.zeros(2), classes=("a", "b"), task="binary")


def test_label_map_later_structures_win():
    m = {"a": torch.ones(2, 2, dtype=torch.bool), "b": torch.tensor([[True, False], [False, False]])}
    assert label_map(m, ["a", "b"]).tolist() == [[2, 1], [1, 1]]


def test_save_figure_writes_all_formats_and_sidecar(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    paths = save_figure(fig, tmp_path / "fig", params={"k": 4, "t": torch.tensor([1, 2])})
    plt.close(fig)
    assert sorted(p.suffix for p in paths) == [".json", ".pdf", ".png", ".svg"]
    side = json.loads((tmp_path / "fig.json").read_text())
    assert side["params"] == {"k": 4, "t": [1, 2]} and "torch" in side["versions"]
    with pytest.raises(ValueError, match="unsupported figure format"):
        save_figure(fig, tmp_path / "fig.bmp")


def test_atomic_write_uses_umask_mode(tmp_path):
    import os
    import stat

    target = tmp_path / "y.txt"
    atomic_write_text(target, "x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_verbs_sharing_a_submodule_name_stay_callable():
    import importlib

    import workbench as wb

    importlib.import_module("workbench.communities")
    importlib.import_module("workbench.viz.gallery")
    assert callable(wb.communities) and callable(wb.viz.gallery)
