"""Explorer widget: driven by setting control values and checking the rendered PNG changes."""
from __future__ import annotations

import hashlib
import json
import sys
import types

import pytest
import torch

from test_alignment import planted_masks
from test_communities import planted_maps
from workbench.data._base import ArrayDataset

pytest.importorskip("ipywidgets")


def _digest(w) -> str:
    return hashlib.sha1(bytes(w.image.value)).hexdigest()


@pytest.fixture
def model_and_data(monkeypatch):
    """A tiny timm ViT with the real workbench.attention when present, else a stand-in maps function."""
    n = 3
    masks = {k: v[:1].expand(n, -1, -1).clone() for k, v in planted_masks(b=1).items()}
    images = torch.rand(n, 1, 64, 64)
    ds = ArrayDataset(images, torch.tensor([0, 1, 0]), classes=("a", "b"), task="binary", masks=masks)
    try:
        import workbench.attention  # noqa: F401
        import timm
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=8,
                                  in_chans=1, num_classes=2, depth=2).eval()
    except ImportError:
        model = torch.nn.Linear(1, 1)
        stub = types.ModuleType("workbench.attention")
        stub.attention_maps = lambda m, x, **kw: planted_maps(b=x.shape[0], seed=int(x.sum() * 100) % 997,
                                                               strength=1.0)
        monkeypatch.setitem(sys.modules, "workbench.attention", stub)
    return model, ds


def test_explorer_redraws_on_controls(model_and_data, tmp_path):
    from workbench.widgets import explorer

    model, ds = model_and_data
    w = explorer(model, ds, k=3)
    assert w.last_error is None, w.last_error
    assert "wb-explorer" in w._dom_classes and "wb-overlay" in w.image._dom_classes
    seen = {_digest(w)}
    w.controls["index"].value = 1
    assert w.last_error is None and _digest(w) not in seen
    seen.add(_digest(w))
    w.controls["next"].click()
    assert w.controls["index"].value == 2 and _digest(w) not in seen
    seen.add(_digest(w))
    for name, value in [("alpha", 0.9), ("k", 4), ("method", "spectral"), ("layer", 0), ("head", 0),
                        ("soft", False), ("show_lt", False)]:
        before = _digest(w)
        w.controls[name].value = value
        assert w.last_error is None, (name, w.last_error)
        assert _digest(w) != before, name
    assert "C0" in w.legend.value
    # maps are cached per image: one entry per image seen
    assert len(w._maps) == 3
    # dcmm on a model without DCMM: an error in the status line, no exception
    w.controls["method"].value = "dcmm"
    assert "attention='dcmm'" in w.last_error and "dcmm" in w.status.value
    w.controls["method"].value = "kmeans"
    assert w.last_error is None
    w.controls["format"].value = "svg"
    w.controls["path"].value = str(tmp_path / "view")
    w.controls["export"].click()
    assert [p.suffix for p in w.last_export] == [".svg", ".json"]
    side = json.loads(w.last_export[1].read_text())
    assert side["params"]["method"] == "kmeans" and side["params"]["index"] == 2


def test_explorer_rejects_empty_indices(model_and_data):
    from workbench.widgets import explorer

    model, ds = model_and_data
    with pytest.raises(ValueError, match="indices"):
        explorer(model, ds, indices=[])
