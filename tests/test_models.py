"""workbench.models: factory over timm and safetensors+JSON checkpoints."""
from __future__ import annotations

import json

import pytest
import torch

import workbench.models as wm
from workbench.models import checkpoint as ckpt_mod

SMALL = {"vit_tiny": {"depth": 2}, "vit_small": {"depth": 1}}


FAST = ("vit_tiny", "resnet18", "convnext_atto")
NAMES = [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in wm.list_models()]


def test_every_short_name_is_a_timm_model():
    import timm

    assert set(wm.list_models()) >= {"vit_tiny", "vit_small", "resnet18", "resnet50", "densenet121",
                                      "convnext_atto", "convnext_nano", "convnext_tiny"}
    assert all(timm.is_model(t) for t in wm.SHORT_NAMES.values())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_create_every_short_name(name, in_chans):
    model = wm.create(name, num_classes=3, img_size=32, in_chans=in_chans, **SMALL.get(name, {}))
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, in_chans, 32, 32))
    assert out.shape == (2, 3)
    cfg = model.workbench_config
    assert cfg["name"] == name and cfg["num_classes"] == 3 and cfg["in_chans"] == in_chans
    assert cfg["img_size"] == [32, 32] and cfg["timm_name"] == wm.SHORT_NAMES[name]


@pytest.mark.parametrize("size,patch,grid", [(32, 4, (8, 8)), (64, 8, (8, 8)), (64, 16, (4, 4)),
                                             ((48, 64), 8, (6, 8)), ((28, 28), 4, (7, 7))])
def test_vit_patch_sizes_and_non_square_grid(size, patch, grid):
    model = wm.create("vit_tiny", 2, size, 1, patch_size=patch, depth=1)
    assert tuple(model.patch_embed.grid_size) == grid
    h, w = (size, size) if isinstance(size, int) else size
    assert model(torch.rand(1, 1, h, w)).shape == (1, 2)


def test_vit_default_patch_and_prefix_tokens():
    assert wm.create("vit_tiny", 2, 64, 1, depth=1).patch_embed.patch_size == (8, 8)
    assert wm.create("vit_tiny", 2, 28, 1, depth=1).patch_embed.patch_size == (4, 4)
    assert wm.create("vit_tiny", 2, 224, 1, depth=1).patch_embed.patch_size == (16, 16)
    m = wm.create("vit_tiny", 2, 32, 1, depth=1, reg_tokens=2)
    assert m.num_prefix_tokens == 3 and m.workbench_config["kw"]["reg_tokens"] == 2
    m = wm.create("vit_tiny", 2, 32, 1, depth=1, class_token=False, global_pool="avg")
    assert m.num_prefix_tokens == 0


def test_any_timm_name_and_errors():
    m = wm.create("resnet10t", 2, 32, 1).eval()
    assert m(torch.rand(1, 1, 32, 32)).shape == (1, 2)
    with pytest.raises(ValueError, match="short names are: .*vit_tiny.*timm.list_models"):
        wm.create("not_a_model", 2)
    with pytest.raises(ValueError, match="num_classes"):
        wm.create("resnet18", 0)
    with pytest.raises(ValueError, match="attention"):
        wm.create("vit_tiny", 2, 32, attention="fancy")
    with pytest.raises(ValueError, match="at least 32 px"):
        wm.create("convnext_atto", 2, 28, 1)
    with pytest.raises(ValueError, match="not divisible"):
        wm.create("vit_tiny", 2, 30, 1, patch_size=8, depth=1)


def test_save_load_roundtrip_identical_outputs(tmp_path):
    model = wm.create("vit_tiny", 2, (32, 48), 1, patch_size=8, depth=2, reg_tokens=1)
    model.eval()
    path = wm.save(model, tmp_path / "ckpt")
    assert path.name == "ckpt.safetensors" and (tmp_path / "ckpt.json").exists()
    cfg = json.loads((tmp_path / "ckpt.json").read_text())
    assert cfg["name"] == "vit_tiny" and cfg["img_size"] == [32, 48]
    x = torch.rand(3, 1, 32, 48)
    for p in (tmp_path / "ckpt", tmp_path / "ckpt.safetensors", str(tmp_path / "ckpt.json")):
        loaded = wm.load(p)
        assert not loaded.training
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_roundtrip_cnn(tmp_path):
    model = wm.create("resnet18", 3, 32, 3).eval()
    wm.save(model, tmp_path / "r")
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(wm.load(tmp_path / "r")(x), model(x), rtol=0, atol=0)


def test_architecture_mismatch_errors(tmp_path):
    vit = wm.create("vit_tiny", 2, 32, 1, depth=1)
    wm.save(vit, tmp_path / "v")
    # loading the weights into another architecture names both
    res = wm.create("resnet18", 2, 32, 1)
    with pytest.raises(ValueError, match=r"vit_tiny.*do not fit the model resnet18"):
        wm.load_weights(res, tmp_path / "v")
    # a JSON edited to describe another architecture names both
    cfg = json.loads((tmp_path / "v.json").read_text())
    cfg["name"], cfg["timm_name"] = "resnet18", "resnet18"
    (tmp_path / "v.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"resnet18.*vit_tiny"):
        wm.load(tmp_path / "v")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        wm.load(tmp_path / "nothing")
    wm.save(wm.create("resnet18", 2, 32, 1), tmp_path / "c")
    (tmp_path / "c.safetensors").write_bytes(b"garbage, not a safetensors file")
    with pytest.raises(ValueError, match="corrupt"):
        wm.load(tmp_path / "c")
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        wm.load(tmp_path / "c")
    with pytest.raises(TypeError, match="workbench_config"):
        wm.save(torch.nn.Linear(2, 2), tmp_path / "lin")


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    import safetensors.torch

    old = wm.create("resnet18", 2, 32, 1).eval()
    wm.save(old, tmp_path / "m")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    new = wm.create("vit_tiny", 2, 32, 1, depth=1)

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half-written")
        raise KeyboardInterrupt("disk unplugged")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(KeyboardInterrupt):
        wm.save(new, tmp_path / "m")
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files left either
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(wm.load(tmp_path / "m")(x), old(x))
    assert ckpt_mod.read_config(tmp_path / "m")["name"] == "resnet18"


def test_dcmm_config_is_stored():
    pytest.importorskip("workbench.models.dcmm")
    m = wm.create("vit_tiny", 2, 32, 1, depth=2, attention="dcmm", communities=3)
    assert m.workbench_config["attention"] == "dcmm" and m.workbench_config["communities"] == 3
    assert m(torch.rand(1, 1, 32, 32)).shape == (1, 2)


def test_models_standardise_their_input_in_the_first_convolution():
    """create() standardises [0, 1] images inside the model: same output as a plain model fed
    (x - 0.5) / 0.25, with unchanged parameter names (timm and older state dicts still load)."""
    torch.manual_seed(0)
    for name, first in (("vit_tiny", "patch_embed.proj"), ("resnet18", "conv1")):
        kw = {"depth": 2} if name == "vit_tiny" else {}
        m = wm.create(name, 2, 64, 1, **kw).eval()
        plain = wm.create(name, 2, 64, 1, normalize=None, **kw).eval()
        assert isinstance(m.get_submodule(first), wm.StandardizedConv2d)
        assert type(plain.get_submodule(first)) is torch.nn.Conv2d
        assert m.state_dict().keys() == plain.state_dict().keys()
        plain.load_state_dict(m.state_dict())
        x = torch.rand(3, 1, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(m(x), plain((x - 0.5) / 0.25))
        assert m.workbench_config["normalize"] == [[0.5], [0.25]]


def test_normalize_options_roundtrip_and_errors(tmp_path):
    m = wm.create("vit_tiny", 2, 32, 3, depth=1, normalize=((0.1, 0.2, 0.3), (0.5, 0.5, 0.25))).eval()
    conv = m.patch_embed.proj
    assert conv.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    wm.save(m, tmp_path / "m")
    back = wm.load(tmp_path / "m")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(x), m(x))
    # a checkpoint written before normalisation existed (no key) rebuilds an un-normalised model
    cfg = dict(wm.create("vit_tiny", 2, 32, 1, depth=1).workbench_config)
    cfg.pop("normalize")
    assert type(wm.create_from_config(cfg).patch_embed.proj) is torch.nn.Conv2d
    with pytest.raises(ValueError, match="std > 0"):
        wm.create("vit_tiny", 2, 32, 1, depth=1, normalize=(0.5, 0.0))
    with pytest.raises(ValueError, match="mean, std"):
        wm.create("vit_tiny", 2, 32, 1, depth=1, normalize="imagenet")
