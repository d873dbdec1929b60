"""Communities: Mixed-SCORE, spectral and k-means recover planted structure; DCMM path; errors."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from workbench.communities import (METHODS, Communities, attention_graph, communities, mixed_score)


@dataclass(frozen=True)
class FakeMaps:
    """Stand-in for workbench.attention.AttentionMaps with the contract's fields."""
    attentions: tuple
    grid: tuple
    num_prefix_tokens: int
    layer_names: tuple
    image_size: tuple
    dcmm: tuple | None = None


def planted_labels(h: int = 8, w: int = 8) -> torch.Tensor:
    """(h, w) labels of 4 anatomical-ish blocks: left half top/bottom, right half top/bottom."""
    lab = torch.zeros(h, w, dtype=torch.long)
    lab[:, w // 2:] = 1
    lab[h // 2:, : w // 2] = 2
    lab[h // 2:, w // 2:] = 3
    return lab


def planted_maps(b: int = 2, heads: int = 2, layers: int = 2, h: int = 8, w: int = 8, prefix: int = 1,
                 strength: float = 4.0, seed: int = 0, dcmm_k: int | None = None, patch: int = 8) -> FakeMaps:
    """Post-softmax attention whose patch-to-patch logits carry the planted block structure."""
    g = torch.Generator().manual_seed(seed)
    lab = planted_labels(h, w).reshape(-1)
    same = (lab[:, None] == lab[None, :]).float()
    n = h * w + prefix
    atts = []
    for _ in range(layers):
        logits = 0.3 * torch.randn(b, heads, n, n, generator=g)
        logits[:, :, prefix:, prefix:] += strength * same
        atts.append(logits.softmax(-1))
    dcmm = None
    if dcmm_k is not None:
        pi = torch.full((b, heads, n, dcmm_k), 0.02)
        pi[:, :, prefix:, :] = 0.02
        pi[:, :, torch.arange(prefix, n), lab % dcmm_k] = 1.0
        pi = pi / pi.sum(-1, keepdim=True)
        dcmm = tuple({"pi": pi, "theta": torch.rand(b, heads, n, generator=g) + 0.5,
                      "block": torch.eye(dcmm_k).expand(heads, -1, -1)} for _ in range(layers))
    return FakeMaps(tuple(atts), (h, w), prefix, tuple(f"blocks.{i}.attn" for i in range(layers)),
                    (h * patch, w * patch), dcmm)


def test_mixed_score_recovers_planted_dcmm():
    rng = np.random.default_rng(0)
    n, k = 60, 3
    pi = np.eye(k)[np.repeat(np.arange(k), 20)]
    mix = rng.choice(n, 12, replace=False)
    pi[mix] = rng.dirichlet(np.ones(k), 12)
    theta = rng.uniform(0.5, 1.5, n)
    b = 0.1 + 0.8 * np.eye(k)
    a = (theta[:, None] * pi) @ b @ (theta[:, None] * pi).T
    est, deg = mixed_score(a, k)
    np.testing.assert_allclose(est.sum(1), 1.0, atol=1e-6)
    assert (est >= 0).all()
    err = min(np.abs(est[:, list(p)] - pi).mean() for p in permutations(range(k)))
    assert err < 0.02
    assert np.corrcoef(deg, theta)[0, 1] > 0.99


@pytest.mark.parametrize("method", ["mixed_score", "spectral", "kmeans"])
def test_posthoc_methods_find_planted_blocks(method):
    maps = planted_maps()
    c = communities(maps, k=4, method=method, layer=-1)
    assert isinstance(c, Communities)
    assert c.memberships.shape == (2, 64, 4) and c.hard.shape == (2, 8, 8) and c.degrees.shape == (2, 64)
    torch.testing.assert_close(c.memberships.sum(-1), torch.ones(2, 64))
    assert (c.memberships >= 0).all()
    assert c.grid == (8, 8) and c.k == 4 and c.method == method and c.layer == 1 and c.head is None
    assert c.image_size == (64, 64)
    truth = planted_labels().reshape(-1)
    for i in range(2):
        assert adjusted_rand_score(truth, c.hard[i].reshape(-1)) > 0.95
    torch.testing.assert_close(c.hard, c.memberships.argmax(-1).reshape(2, 8, 8))


def test_head_selection_and_graph_symmetry():
    maps = planted_maps(heads=3)
    g = attention_graph(maps, layer=0, head=2)
    assert g.shape == (2, 64, 64)
    torch.testing.assert_close(g, g.transpose(-1, -2))
    c = communities(maps, k=4, head=1, layer=0)
    assert c.head == 1 and c.layer == 0
    with pytest.raises(ValueError, match="head"):
        communities(maps, k=4, head=5)
    with pytest.raises(ValueError, match="layer"):
        communities(maps, k=4, layer=7)


def test_no_prefix_and_non_square_grid():
    maps = planted_maps(h=6, w=10, prefix=0)
    c = communities(maps, k=4)
    assert c.hard.shape == (2, 6, 10)
    assert adjusted_rand_score(planted_labels(6, 10).reshape(-1), c.hard[0].reshape(-1)) > 0.9


def test_dcmm_method_uses_model_memberships():
    maps = planted_maps(dcmm_k=4)
    c = communities(maps, k=None, method="dcmm")
    assert c.k == 4 and c.memberships.shape == (2, 64, 4)
    torch.testing.assert_close(c.memberships.sum(-1), torch.ones(2, 64))
    assert torch.equal(c.hard[0], planted_labels())
    torch.testing.assert_close(c.degrees.mean(-1), torch.ones(2))
    assert communities(maps, k=4, method="dcmm", head=0).head == 0
    with pytest.raises(ValueError, match="communities"):
        communities(maps, k=3, method="dcmm")


def test_errors_are_clear():
    maps = planted_maps()
    with pytest.raises(ValueError, match="mixed_score"):
        communities(maps, method="louvain")
    with pytest.raises(ValueError, match="more than the 64 patches"):
        communities(maps, k=65)
    with pytest.raises(ValueError, match=">= 2"):
        communities(maps, k=1)
    with pytest.raises(ValueError, match="attention='dcmm'"):
        communities(maps, k=4, method="dcmm")
    with pytest.raises(TypeError):
        communities("not maps")
    assert set(METHODS.names()) == {"dcmm", "kmeans", "mixed_score", "spectral"}


def test_inputs_not_mutated():
    maps = planted_maps()
    before = [a.clone() for a in maps.attentions]
    communities(maps, k=4)
    for a, b in zip(maps.attentions, before):
        assert torch.equal(a, b)


def test_on_a_real_vit():
    """Integration with workbench.attention (H4) on a tiny timm ViT; skipped until it exists."""
    attention = pytest.importorskip("workbench.attention")
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              in_chans=1, num_classes=2, depth=2).eval()
    x = torch.rand(2, 1, 32, 32)
    maps = attention.attention_maps(model, x)
    c = communities(maps, k=3, method="mixed_score")
    assert c.hard.shape == (2, 4, 4)
    c2 = communities(model, x, k=3, method="spectral")
    assert c2.memberships.shape == (2, 16, 3)
    with pytest.raises(ValueError, match="attention='dcmm'"):
        communities(maps, k=None, method="dcmm")
