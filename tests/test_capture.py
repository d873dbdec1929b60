"""Attention capture: every timm ViT layout, no hook left, flags/mode/weights restored."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from workbench.attention import attention_maps, chefer_relevance
from workbench.capture import attention_modules, capture_attention, hook_count, record_outputs


CONFIGS = {
    "cls": dict(model_name="vit_tiny_patch16_224", img_size=32, patch_size=8),
    "no_cls_avg": dict(model_name="vit_tiny_patch16_224", img_size=32, patch_size=8, class_token=False, global_pool="avg"),
    "reg4": dict(model_name="vit_tiny_patch16_224", img_size=32, patch_size=8, reg_tokens=4),
    "deit_distilled": dict(model_name="deit_tiny_distilled_patch16_224", img_size=32, patch_size=8),
    "non_square": dict(model_name="vit_tiny_patch16_224", img_size=(48, 64), patch_size=16),
    "patch4": dict(model_name="vit_tiny_patch16_224", img_size=16, patch_size=4),
    "eva": dict(model_name="eva02_tiny_patch14_224", img_size=28, patch_size=7),
}
# (prefix tokens, readout tokens, grid)
EXPECTED = {"cls": (1, (0,), (4, 4)), "no_cls_avg": (0, (), (4, 4)), "reg4": (5, (0,), (4, 4)),
            "deit_distilled": (2, (0, 1), (4, 4)), "non_square": (1, (0,), (3, 4)), "patch4": (1, (0,), (4, 4)),
            "eva": (1, (), (4, 4))}


def make(cfg: dict, **kw) -> nn.Module:
    cfg = dict(cfg, **kw)
    return timm.create_model(pretrained=False, num_classes=3, depth=2, embed_dim=48, num_heads=3, **cfg)


def images_for(model: nn.Module, b: int = 2) -> torch.Tensor:
    h, w = model.patch_embed.img_size
    return torch.rand(b, 3, h, w)


def snapshot(model: nn.Module):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {n: m.training for n, m in model.named_modules()},
            {n: m.fused_attn for n, m in attention_modules(model).items()})


def assert_unchanged(model: nn.Module, snap) -> None:
    state, modes, flags = snap
    assert hook_count(model) == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: m.fused_attn for n, m in attention_modules(model).items()} == flags


@pytest.mark.parametrize("name", list(CONFIGS))
def test_capture_layouts(name):
    model = make(CONFIGS[name]).train()  # capture must switch to eval and back
    for mod in attention_modules(model).values():
        mod.fused_attn = True
    x = images_for(model)
    snap = snapshot(model)
    maps = attention_maps(model, x)
    assert_unchanged(model, snap)
    prefix, readout, grid = EXPECTED[name]
    n = prefix + grid[0] * grid[1]
    assert maps.grid == grid and maps.num_prefix_tokens == prefix and maps.readout_tokens == readout
    assert maps.layer_names == ("blocks.0.attn", "blocks.1.attn")
    assert maps.image_size == tuple(x.shape[-2:]) and maps.dcmm is None
    for a in maps.attentions:
        assert a.shape == (2, 3, n, n) and not a.requires_grad
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, n))
        assert (a >= 0).all()


def test_capture_equals_manual_recomputation():
    model = make(CONFIGS["reg4"]).eval()
    x = images_for(model)
    with record_outputs(model, ["blocks.1.norm1"], detach=True) as out:
        maps = attention_maps(model, x)
    assert hook_count(model) == 0
    attn = model.blocks[1].attn
    B, N, _ = out["blocks.1.norm1"].shape
    qkv = attn.qkv(out["blocks.1.norm1"]).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    ref = (q @ k.transpose(-1, -2) * attn.head_dim ** -0.5).softmax(-1)
    torch.testing.assert_close(maps.attentions[1], ref, atol=1e-5, rtol=1e-4)


def test_fused_forward_output_unchanged_by_capture():
    model = make(CONFIGS["cls"]).eval()
    x = images_for(model)
    with torch.no_grad():
        before = model(x)
        with capture_attention(model) as rec:
            during = model(x)
        after = model(x)
    assert len(rec.attentions) == 2
    torch.testing.assert_close(before, during, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(before, after)


def test_layer_selection():
    model = make(CONFIGS["cls"])
    x = images_for(model)
    maps = attention_maps(model, x, layers=[-1])
    assert maps.layer_names == ("blocks.1.attn",)
    first = attention_maps(model, x, layers="blocks.0")  # stops the forward after block 0
    assert first.layer_names == ("blocks.0.attn",)
    torch.testing.assert_close(first.attentions[0], attention_maps(model, x).attentions[0])
    assert attention_maps(model, x, layers=[1, 0]).layer_names == ("blocks.0.attn", "blocks.1.attn")
    with pytest.raises(ValueError, match="out of range"):
        attention_maps(model, x, layers=[5])
    with pytest.raises(ValueError, match="valid names"):
        attention_maps(model, x, layers=["head"])
    assert hook_count(model) == 0


def test_no_hook_left_after_exception_inside_capture():
    model = make(CONFIGS["cls"]).train()
    snap = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        with capture_attention(model):
            model(images_for(model))
            raise RuntimeError("boom")
    assert_unchanged(model, snap)
    # a forward that fails inside the capture (timm rejects the size)
    with pytest.raises(Exception):
        with capture_attention(model):
            model(torch.rand(1, 3, 40, 40))
    assert_unchanged(model, snap)


def test_no_hook_left_after_chefer_error():
    model = make(CONFIGS["cls"]).train()
    snap = snapshot(model)
    with pytest.raises(ValueError, match="out of range"):
        chefer_relevance(model, images_for(model), target=7)  # raises inside the capture block
    assert_unchanged(model, snap)
    assert all(p.grad is None for p in model.parameters())


def test_bad_inputs():
    model = make(CONFIGS["cls"])
    snap = snapshot(model)
    with pytest.raises(ValueError, match="has no supported attention"):
        attention_maps(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"built for 32x32"):
        attention_maps(model, torch.rand(2, 3, 48, 48))
    with pytest.raises(ValueError, match="takes 3"):
        attention_maps(model, torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="NaN"):
        attention_maps(model, torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        attention_maps(model, torch.rand(32, 32))
    with pytest.raises(TypeError, match="float"):
        attention_maps(model, torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown attention module"):
        with capture_attention(model, ["nope"]):
            pass
    assert_unchanged(model, snap)


def test_nan_weights_reported():
    model = make(CONFIGS["cls"])
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        attention_maps(model, images_for(model))
    assert hook_count(model) == 0


def test_frozen_model_chefer_and_grad_capture():
    model = make(CONFIGS["cls"]).requires_grad_(False)
    rel = chefer_relevance(model, images_for(model))
    assert rel.shape == (2, 4, 4) and hook_count(model) == 0
    assert all(not p.requires_grad for p in model.parameters())


def test_record_outputs_no_hook_left_after_exception():
    model = make(CONFIGS["cls"])
    with pytest.raises(RuntimeError, match="boom"):
        with record_outputs(model, ["blocks.0.norm1"], retain_grad=True) as out:
            model(images_for(model))
            assert out["blocks.0.norm1"].shape == (2, 17, 48)
            raise RuntimeError("boom")
    assert hook_count(model) == 0
