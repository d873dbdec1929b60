"""Derived attention maps: CLS attention, rollout (vs a plain reference), Chefer relevance."""
from __future__ import annotations

import pytest
import timm
import torch

from workbench.attention import AttentionMaps, attention_maps, chefer_relevance, cls_attention, rollout, upsample
from workbench.capture import hook_count



@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8,
                             depth=3, embed_dim=48, num_heads=3).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def reference_rollout(attentions, discard_ratio=0.0):
    """Straightforward per-image loops (Abnar & Zuidema; discard as in jacobgil/vit-explain)."""
    out = []
    for b in range(attentions[0].shape[0]):
        n = attentions[0].shape[-1]
        result = torch.eye(n, dtype=torch.float64)
        for a in attentions:
            fused = a[b].double().mean(0)
            if discard_ratio:
                flat = fused.flatten().clone()
                k = int(flat.numel() * discard_ratio)
                flat[flat.argsort()[:k]] = 0
                fused = flat.view(n, n)
            fused = fused + torch.eye(n, dtype=torch.float64)
            for i in range(n):
                fused[i] = fused[i] / fused[i].sum()
            result = fused @ result
        out.append(result[0, 1:])
    return torch.stack(out).float()


def test_rollout_matches_reference(vit, images):
    maps = attention_maps(vit, images)
    for ratio in (0.0, 0.5):
        got = rollout(maps, discard_ratio=ratio)
        assert got.shape == (2, 4, 4)
        torch.testing.assert_close(got.reshape(2, -1), reference_rollout(maps.attentions, ratio), atol=1e-5, rtol=1e-4)
    assert rollout(maps, head_fusion="max").shape == (2, 4, 4)
    assert rollout(maps, start_layer=1).shape == (2, 4, 4)
    with pytest.raises(ValueError, match="head_fusion"):
        rollout(maps, head_fusion="median")


def test_cls_attention(vit, images):
    maps = attention_maps(vit, images)
    a = maps.attentions[-1]
    torch.testing.assert_close(cls_attention(maps, head=1).reshape(2, -1), a[:, 1, 0, 1:])
    torch.testing.assert_close(cls_attention(maps).reshape(2, -1), a.mean(1)[:, 0, 1:])
    assert cls_attention(maps, layer=0, upsample=True).shape == (2, 32, 32)
    assert cls_attention(maps, upsample=(8, 16)).shape == (2, 8, 16)
    with pytest.raises(ValueError, match="head 5"):
        cls_attention(maps, head=5)


def test_mean_pooled_model_uses_received_attention():
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=32, patch_size=8, depth=2,
                          embed_dim=48, num_heads=3, class_token=False, global_pool="avg")
    maps = attention_maps(m, torch.rand(1, 3, 32, 32))
    got = cls_attention(maps)
    torch.testing.assert_close(got.reshape(1, -1), maps.attentions[-1].mean(1).mean(1))
    torch.testing.assert_close(got.sum(), torch.tensor(1.0))  # mean of row-stochastic rows


def test_chefer_relevance(vit, images):
    rel = chefer_relevance(vit, images)
    assert rel.shape == (2, 4, 4) and (rel >= 0).all()
    assert hook_count(vit) == 0 and all(p.grad is None for p in vit.parameters())
    with torch.no_grad():
        pred = vit(images).argmax(1)
    torch.testing.assert_close(rel, chefer_relevance(vit, images, target=pred))
    other = chefer_relevance(vit, images, target=(pred + 1) % 3)
    assert not torch.allclose(rel, other)
    assert chefer_relevance(vit, images, target=0, upsample=True).shape == (2, 32, 32)
    with pytest.raises(ValueError, match="one per image"):
        chefer_relevance(vit, images, target=[0, 1, 2])


def test_chefer_single_layer_formula():
    """One layer: R = I + mean_h clamp(dA * A, 0); map = R[0, 1:]."""
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=16, patch_size=8, depth=1,
                          embed_dim=24, num_heads=2).eval()
    x = torch.rand(1, 3, 16, 16)
    from workbench.capture import capture_attention

    with capture_attention(m, grad=True) as rec:
        y = m(x)
    a = rec.attentions["blocks.0.attn"]
    (g,) = torch.autograd.grad(y[0, 1], [a])
    r = torch.eye(5) + (g * a).clamp(min=0).mean(1)[0]
    torch.testing.assert_close(chefer_relevance(m, x, target=1).reshape(-1), r[0, 1:].detach())


def test_upsample_and_dataclass():
    assert upsample(torch.rand(4, 4), 8).shape == (8, 8)
    assert upsample(torch.rand(2, 3, 4), (6, 8), mode="nearest").shape == (2, 6, 8)
    with pytest.raises(ValueError):
        upsample(torch.rand(1, 1, 2, 2), 4)
    maps = AttentionMaps(attentions=(torch.rand(1, 2, 5, 5),), grid=(2, 2), num_prefix_tokens=1,
                         layer_names=("x",), image_size=(8, 8))
    assert maps.num_heads == 2 and maps.num_tokens == 5 and maps.num_layers == 1
    with pytest.raises(Exception):
        maps.grid = (3, 3)


def test_plot(vit, images):
    pytest.importorskip("workbench.viz.overlays")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = attention_maps(vit, images, layers=[-1]).plot()
    assert fig is not None
    plt.close("all")
