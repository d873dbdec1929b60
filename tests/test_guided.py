"""Mask-guided training (fit(..., guide_masks=...)): the penalty's value, who is guided, its effect on a
model that cannot dodge it, and clear errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import workbench as wb
from workbench._train_guide import make_guide
from workbench.data._base import ArrayDataset


def _toy(n: int, seed: int, flip: bool = False) -> ArrayDataset:
    """16 px noise; positives carry a faint 4 x 4 'lesion' (their mask) and, unless ``flip``, a bright
    2 x 2 shortcut in the corner; with ``flip`` the shortcut marks the negatives instead."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.3
    y = torch.arange(n) % 2
    masks = torch.zeros(n, 16, 16, dtype=torch.bool)
    for i in range(n):
        if y[i] == 1:
            r, c = torch.randint(4, 10, (2,), generator=g).tolist()
            x[i, 0, r:r + 4, c:c + 4] += 0.2
            masks[i, r:r + 4, c:c + 4] = True
        if (y[i] == 1) != flip:
            x[i, 0, 0:2, 14:16] = 1.0
    return ArrayDataset(x.clamp(0, 1), y, classes=("neg", "pos"), task="binary", masks={"lesion": masks},
                        mask_present={"lesion": y == 1})


def test_penalty_is_the_share_of_squared_gradient_outside_for_guided_samples_only():
    ds = _toy(4, 0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(256, 2))
    b = ds.batch(range(4))
    x = b["image"].clone().requires_grad_(True)
    p = make_guide(ds, "lesion", 1.0, "binary").penalty(lin(x), x, b)
    w = (lin[1].weight[1] - lin[1].weight[0]).detach().view(16, 16)  # d (z1 - z0) / dx; positives: 1 and 3
    expected = sum(float((w ** 2)[~b["masks"]["lesion"][i]].sum() / (w ** 2).sum()) for i in (1, 3)) / 4
    assert abs(float(p.detach()) - expected) < 1e-6 and p.requires_grad
    b["mask_present"]["lesion"][:] = False  # nobody guided: 0, and still differentiable
    x = b["image"].clone().requires_grad_(True)
    p = make_guide(ds, "lesion", 1.0, "binary").penalty(lin(x), x, b)
    assert float(p.detach()) == 0.0 and p.requires_grad


def test_guidance_moves_a_linear_model_off_the_shortcut():
    """A linear model has one gradient for every image, so it cannot dodge the penalty: guided training
    ends with less of its gradient outside the lesions and much less weight on the corner shortcut."""
    train = _toy(256, 0)
    guide = make_guide(train, "lesion", 1.0, "binary")
    b = train.batch(range(256))
    out = {}
    for w in (0.0, 30.0):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Flatten(), nn.Linear(256, 2))
        kw = {"guide_masks": "lesion", "guide_weight": w} if w else {}
        wb.fit(m, train, epochs=15, batch_size=32, lr=1e-2, progress=False, **kw)
        x = b["image"].clone().requires_grad_(True)
        wt = (m[1].weight[1] - m[1].weight[0]).detach().view(16, 16)  # the log-odds' gradient
        out[w] = (float(guide.penalty(m(x), x, b).detach()), float(wt[:2, 14:].abs().mean() / wt[4:13, 4:13].abs().mean()))
    assert out[30.0][0] < out[0.0][0] - 0.05  # what is penalised goes down
    assert out[30.0][1] < 0.5 * out[0.0][1]  # the corner loses weight relative to where lesions are


def test_bad_guide_arguments_raise_clearly():
    ds = _toy(8, 0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(256, 2))
    with pytest.raises(ValueError, match=r"no such structure; it has \['lesion'\]"):
        wb.fit(m, ds, epochs=1, progress=False, guide_masks="tumour")
    empty = ArrayDataset(ds.images, ds.labels, classes=ds.classes, task="binary",
                         masks={"lesion": torch.zeros(8, 16, 16, dtype=torch.bool)})
    with pytest.raises(ValueError, match="no training sample has a non-empty mask"):
        wb.fit(m, empty, epochs=1, progress=False, guide_masks="lesion")
    absent = ArrayDataset(ds.images, ds.labels, classes=ds.classes, task="binary", masks=ds.masks,
                          mask_present={"lesion": torch.zeros(8, dtype=torch.bool)})
    with pytest.raises(ValueError, match="no training sample"):
        wb.fit(m, absent, epochs=1, progress=False, guide_masks="lesion")
    for bad, err in ((-1.0, ValueError), (float("nan"), ValueError), ("high", TypeError)):
        with pytest.raises(err, match="guide_weight"):
            wb.fit(m, ds, epochs=1, progress=False, guide_masks="lesion", guide_weight=bad)
    with pytest.raises(TypeError, match="guide_masks"):
        wb.fit(m, ds, epochs=1, progress=False, guide_masks=3)
    with pytest.raises(ValueError, match="no masks at all"):
        wb.fit(m, (ds.images.float() / 255, ds.labels), epochs=1, progress=False, guide_masks="lesion")
