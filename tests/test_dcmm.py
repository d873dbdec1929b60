"""DCMM attention: bias structure, fused == non-fused, capture of memberships, it trains."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from workbench.attention import attention_maps
from workbench.capture import hook_count
from workbench.models.dcmm import DCMMAttention, dcmm_modules, dcmm_parameters, enable_dcmm



def tiny_vit(**kw):
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=32, patch_size=8,
                             depth=2, embed_dim=48, num_heads=3, **kw)


@pytest.mark.parametrize("per_head", [True, False])
def test_bias_structure(per_head):
    attn = DCMMAttention(48, 3, communities=4, per_head=per_head)
    with torch.no_grad():
        attn.block_logits.normal_()
    q = torch.randn(2, 3, 17, 16)
    pi, theta = attn.membership(q)
    hd = 3 if per_head else 1
    assert pi.shape == (2, hd, 17, 4) and theta.shape == (2, hd, 17)
    torch.testing.assert_close(pi.sum(-1), torch.ones(2, hd, 17))
    assert (pi >= 0).all() and (theta > 0).all()
    b = attn.block()
    assert b.shape == (hd, 4, 4) and torch.equal(b, b.transpose(-1, -2)) and ((b > 0) & (b < 1)).all()
    bias = attn.dcmm_bias(q)
    assert bias.shape == (2, hd, 17, 17)
    p = torch.diag_embed(theta) @ pi @ b @ pi.transpose(-1, -2) @ torch.diag_embed(theta)
    torch.testing.assert_close(bias, attn.lam.view(1, -1, 1, 1) * p)


@pytest.mark.parametrize("per_head", [True, False])
def test_fused_and_unfused_agree(per_head):
    attn = DCMMAttention(48, 3, communities=3, per_head=per_head, lam_init=1.0).eval()
    x = torch.randn(2, 10, 48)
    attn.fused_attn = True
    a = attn(x)
    attn.fused_attn = False
    torch.testing.assert_close(a, attn(x), atol=1e-5, rtol=1e-4)


def test_from_attention_copies_weights():
    vit = tiny_vit().eval()
    x = torch.randn(2, 17, 48)
    ref = vit.blocks[0].attn(x)
    new = DCMMAttention.from_attention(vit.blocks[0].attn, communities=2, lam_init=0.0)
    assert torch.equal(new.qkv.weight, vit.blocks[0].attn.qkv.weight)
    assert new.qkv.weight.data_ptr() != vit.blocks[0].attn.qkv.weight.data_ptr()
    torch.testing.assert_close(new.eval()(x), ref, atol=1e-5, rtol=1e-4)


def test_enable_dcmm_and_capture():
    vit = tiny_vit(reg_tokens=2)
    out = enable_dcmm(vit, communities=3, layers=[-1])
    assert out is vit and list(dcmm_modules(vit)) == ["blocks.1.attn"]
    assert not isinstance(vit.blocks[0].attn, DCMMAttention)
    enable_dcmm(vit, communities=3, layers=["blocks.0"])
    maps = attention_maps(vit, torch.rand(2, 3, 32, 32))
    assert hook_count(vit) == 0
    n = 3 + 16
    for a, d in zip(maps.attentions, maps.dcmm):
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, n))
        assert d["pi"].shape == (2, 3, n, 3) and d["theta"].shape == (2, 3, n) and d["block"].shape == (3, 3, 3)
    params = dcmm_parameters(vit)
    assert params["blocks.0.attn"]["lam"].shape == (3,) and params["blocks.0.attn"]["communities"] == 3


def test_enable_dcmm_errors():
    with pytest.raises(ValueError, match="no timm.layers.Attention"):
        enable_dcmm(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="communities"):
        enable_dcmm(tiny_vit(), communities=0)
    with pytest.raises(ValueError, match="valid names"):
        enable_dcmm(tiny_vit(), layers=["head"])


def test_factory_dcmm():
    models = pytest.importorskip("workbench.models")
    if not hasattr(models, "create"):
        pytest.skip("workbench.models.create not available yet")
    m = models.create("vit_tiny", num_classes=2, img_size=32, in_chans=1, patch_size=8, depth=2,
                      attention="dcmm", communities=3)
    assert len(dcmm_modules(m)) == 2
    assert m(torch.rand(1, 1, 32, 32)).shape == (1, 2)


def test_dcmm_trains():
    torch.manual_seed(0)
    vit = enable_dcmm(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=16,
                                        patch_size=4, depth=1, embed_dim=24, num_heads=2), communities=3)
    x = torch.rand(8, 3, 16, 16)
    y = (x[:, 0, :8].mean((1, 2)) > x[:, 0, 8:].mean((1, 2))).long()
    opt = torch.optim.AdamW(vit.parameters(), lr=1e-3)
    losses = []
    vit.train()
    for _ in range(10):
        loss = nn.functional.cross_entropy(vit(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    attn = vit.blocks[0].attn
    for p in (attn.membership.w_pi, attn.membership.w_theta, attn.block_logits, attn.lam):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_shared_dcmm_capture_shapes():
    vit = enable_dcmm(tiny_vit(), communities=2, per_head=False, tau=0.5)
    maps = attention_maps(vit, torch.rand(1, 3, 32, 32), layers=[0], device="cpu")
    d = maps.dcmm[0]
    assert d["pi"].shape == (1, 1, 17, 2) and d["theta"].shape == (1, 1, 17) and d["block"].shape == (1, 2, 2)
    assert maps.attentions[0].shape == (1, 3, 17, 17)
