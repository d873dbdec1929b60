"""Deletion / insertion curves on models whose behaviour is known by construction."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.evaluation import deletion_insertion
from workbench.evaluation.faithfulness import make_baseline


class PositiveLinear(nn.Module):
    """Two logits; logit 1 - logit 0 = sum(w * x) with w >= 0, so removing pixels (zero baseline)
    can only lower P(class 1)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x * self.w).flatten(1).sum(1, keepdim=True) - 0.5 * float(self.w.sum())
        return torch.cat([torch.zeros_like(z), z], 1)


@pytest.fixture()
def setup():
    torch.manual_seed(0)
    w = torch.rand(1, 1, 8, 8) * 0.5
    model = PositiveLinear(w)
    x = torch.rand(4, 1, 8, 8)
    true_map = (x * w)[:, 0]  # exact contribution of each pixel
    return model, x, true_map


def test_deletion_monotone_and_insertion_monotone(setup):
    model, x, true_map = setup
    f = deletion_insertion(model, x, true_map, target=1, steps=16, baseline="zero")
    assert f.deletion.shape == (4, 17) and f.insertion.shape == (4, 17)
    assert (f.deletion.diff(dim=1) <= 1e-6).all()
    assert (f.insertion.diff(dim=1) >= -1e-6).all()
    # first point is the full image (deletion) / the baseline (insertion); the last ones swap
    torch.testing.assert_close(f.deletion[:, 0], f.insertion[:, -1])
    torch.testing.assert_close(f.deletion[:, -1], f.insertion[:, 0])
    assert f.fractions[0] == 0 and f.fractions[-1] == 1


def test_true_map_beats_reversed_map(setup):
    model, x, true_map = setup
    good = deletion_insertion(model, x, true_map, target=1, steps=16, baseline="zero")
    bad = deletion_insertion(model, x, -true_map, target=1, steps=16, baseline="zero")
    assert (good.deletion_auc < bad.deletion_auc).all()
    assert (good.insertion_auc > bad.insertion_auc).all()
    assert good.mean_deletion_auc < bad.mean_deletion_auc


def test_batching_is_invisible_and_mode_restored(setup):
    model, x, true_map = setup
    model.train()
    a = deletion_insertion(model, x, true_map, target=1, steps=5, batch_size=3, mode="deletion")
    b = deletion_insertion(model, x, true_map, target=1, steps=5, batch_size=1000, mode="deletion")
    torch.testing.assert_close(a.deletion, b.deletion)
    assert a.insertion is None and model.training


def test_default_target_and_coarse_maps(setup):
    model, x, true_map = setup
    coarse = torch.nn.functional.avg_pool2d(true_map[:, None], 2)[:, 0]  # (4, 4, 4) -> resized
    f = deletion_insertion(model, x, coarse, steps=4, baseline="mean")
    assert f.target.shape == (4,) and f.deletion.shape == (4, 5)


def test_baselines_and_bad_input(setup):
    model, x, true_map = setup
    for b in ("blur", "zero", "mean", 0.3):
        assert make_baseline(x, b).shape == x.shape
    assert make_baseline(x, "blur").std() < x.std()
    with pytest.raises(ValueError, match="baseline"):
        make_baseline(x, "noise")
    with pytest.raises(ValueError, match="mode"):
        deletion_insertion(model, x, true_map, mode="lerf")
    with pytest.raises(ValueError, match="one map per image"):
        deletion_insertion(model, x, true_map[:2])
    with pytest.raises(ValueError, match="outside"):
        deletion_insertion(model, x, true_map, target=5, steps=2)


def test_deletion_curves_figure(setup):
    import matplotlib

    matplotlib.use("Agg")
    from workbench.viz.evaluation import deletion_curves

    model, x, true_map = setup
    f = deletion_insertion(model, x, true_map, target=1, steps=4)
    fig = deletion_curves({"true": f, "rev": deletion_insertion(model, x, -true_map, target=1, steps=4)})
    assert len(fig.axes[0].lines) == 4
    assert f.plot() is not None
