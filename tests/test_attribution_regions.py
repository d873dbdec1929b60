"""RISE and XRAI-style region attribution: what they compute, reproducibility, bounded memory."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import workbench.attribution.methods_region as R
from workbench.attribution import attribute


class _Quadrant(nn.Module):
    """Class 1's logit is 10 x the mean of the top-left 8 x 8 quadrant; class 0's is 0."""

    def forward(self, x):
        s = 10 * x[:, :, :8, :8].mean((1, 2, 3))
        return torch.stack([torch.zeros_like(s), s], 1)


def test_rise_finds_the_region_the_model_reads():
    x = torch.zeros(2, 1, 16, 16)
    x[:, :, :8, :8] = 1.0
    a = attribute(_Quadrant(), x, target=1, method="rise", n_masks=300, grid=4, baseline=0.0, score="logit")
    inside, outside = a.maps[:, :8, :8].mean(), a.maps[:, 8:, 8:].mean()
    # E[score | pixel kept]: far from the quadrant it is E[score] = 10 p = 5; inside, keeping a pixel keeps
    # its 4 x 4 cell (a quarter of the quadrant) too: about 10 (1/4 + 3/4 p) = 6.25
    assert abs(float(outside) - 5.0) < 0.5 and float(inside) > float(outside) + 0.7
    assert a.maps.min() >= 0 and torch.isfinite(a.maps).all()


def test_rise_is_reproducible_and_independent_of_batching():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                      nn.Linear(16, 3)).eval()
    x = torch.rand(3, 1, 16, 16)
    a = attribute(m, x, method="rise", n_masks=150)
    b = attribute(m, x, method="rise", n_masks=150, internal_batch_size=5)
    c = attribute(m, x, method="rise", n_masks=150, seed=1)
    assert torch.allclose(a.maps, b.maps, atol=1e-6) and not torch.allclose(a.maps, c.maps)


def test_rise_with_many_masks_runs_in_bounded_chunks(monkeypatch):
    """More masks than fit in memory at once: masks are drawn RISE_BLOCK at a time and every forward
    pass holds at most internal_batch_size images."""
    drawn, passes = [], []
    real = R._rise_masks
    monkeypatch.setattr(R, "_rise_masks", lambda n, *a: drawn.append(n) or real(n, *a))

    class Spy(nn.Module):
        def forward(self, x):
            passes.append(x.shape[0])
            return torch.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3))], 1)

    a = attribute(Spy(), torch.rand(2, 1, 8, 8), target=0, method="rise", n_masks=1000, grid=4, internal_batch_size=64)
    assert max(drawn) <= R.RISE_BLOCK and sum(drawn) == 1000
    assert max(passes[1:]) <= 64 and sum(passes[1:]) == 2 * 1000  # passes[0]: the verb's target check
    assert torch.isfinite(a.maps).all()


@pytest.mark.parametrize("kw, match", [({"n_masks": 0}, "n_masks"), ({"p": 1.0}, "probability that a cell"),
                                       ({"grid": 100}, "grid"), ({"score": "auc"}, "score")])
def test_rise_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        attribute(_Quadrant(), torch.rand(1, 1, 16, 16), target=1, method="rise", **kw)


def test_rank_regions_adds_the_densest_region_first():
    attr = np.zeros((8, 8))
    attr[0:2, 0:2] = 5.0  # a small, dense region
    attr[4:8, :] = 1.0   # a large, weaker one
    regions = np.zeros((3, 8, 8), dtype=bool)
    regions[0, 0:2, 0:2] = True
    regions[1, 4:8, :] = True
    regions[2, 0:4, 0:4] = True  # overlaps region 0; what it adds after region 0 has density 0
    out, order = R.rank_regions(attr, regions)
    assert order == [0, 1, 2]
    assert out[0, 0] == 5.0 and out[5, 5] == 1.0 and out[3, 3] == 0.0
    assert out[2, 6] == attr[0:4, 4:8].mean()  # never covered: its own mean


def test_region_segments_cover_the_image_at_every_scale():
    img = np.zeros((32, 32))
    img[8:20, 8:20] = 1.0
    regs = R.region_segments(img, scales=(50, 500))
    assert regs.dtype == bool and regs.shape[1:] == (32, 32)
    assert regs.any(0).all()
    # the bright square is (inside) one region: some region covers it and little else
    sq = np.zeros((32, 32), dtype=bool)
    sq[8:20, 8:20] = True
    iou = (regs & sq).sum((1, 2)) / (regs | sq).sum((1, 2))
    assert iou.max() > 0.6


def test_xrai_ranks_the_region_the_model_reads_first():
    x = torch.zeros(1, 1, 16, 16)
    x[:, :, :8, :8] = 0.5 + 0.5 * torch.rand(1, 1, 8, 8)
    a = attribute(_Quadrant(), x, target=1, method="xrai", base_kw={"n_steps": 8}, scales=(50, 200))
    top = a.maps[0] >= a.maps[0].flatten().quantile(0.75)
    assert top[:8, :8].float().mean() > 0.8 and int(a.params["n_regions"][0]) >= 1
