"""Mask-of-truth variants, subgroup metrics and the shortcut audit on toy data with known answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from workbench.data._base import ArrayDataset
from workbench.evaluation import mask_of_truth, shortcut_audit, subgroup_metrics
from workbench.evaluation.shortcut import mask_of_truth_protocol


class CornerModel(nn.Module):
    """Predicts class 1 iff the top-left 2x2 corner (where the 'device' sits) is bright."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x[:, :, :2, :2].mean((1, 2, 3)) - 0.5) * 20
        return torch.stack([-z, z], 1)


def _toy(n: int = 40, seed: int = 0) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    device = (torch.arange(n) // 2) % 2 == 0  # independent of the label: 10 of each combination
    images = torch.rand(n, 1, 8, 8, generator=g) * 0.2 + 0.3
    images[device, :, :2, :2] = 1.0
    lung = torch.zeros(n, 8, 8, dtype=torch.bool)
    lung[:, 2:7, 2:7] = True
    lung[:, 4, 4] = False  # a hole, so the bounding box is larger than the mask
    dev_mask = torch.zeros(n, 8, 8, dtype=torch.bool)
    dev_mask[device, :2, :2] = True
    meta = [{"device": bool(d), "site": "A" if i < n // 2 else "B"} for i, d in enumerate(device)]
    return ArrayDataset(images, labels, classes=("normal", "abnormal"), task="binary",
                        masks={"lung": lung, "device": dev_mask},
                        mask_present={"lung": torch.ones(n, dtype=torch.bool), "device": device.clone()},
                        meta=meta)


def test_mask_of_truth_variants():
    ds = _toy()
    x = ds.images
    only = mask_of_truth(ds, "lung", variant="only", fill="zero")
    without = mask_of_truth(ds, "lung", variant="without", fill="zero")
    lung = ds.masks["lung"][:, None]
    assert torch.equal(only.images[lung.expand_as(x)], x[lung.expand_as(x)])  # keeps the lung pixels
    assert (only.images[~lung.expand_as(x)] == 0).all()  # removes the rest
    assert (without.images[lung.expand_as(x)] == 0).all()
    assert torch.equal(without.images[~lung.expand_as(x)], x[~lung.expand_as(x)])
    assert torch.equal(ds.images, x)  # input untouched
    box = mask_of_truth(ds, "lung", variant="without", box=True, fill="zero")
    assert (box.images[:, :, 2:7, 2:7] == 0).all()  # the whole bbox, hole included
    assert (box.images[:, :, 4, 4] == 0).all() and (without.images[:, :, 4, 4] != 0).all()
    full = mask_of_truth(ds, "lung", variant="full")
    assert torch.equal(full.images, x)
    mean_fill = mask_of_truth(ds, "lung", variant="only", fill="mean")
    torch.testing.assert_close(mean_fill.images[0, 0, 0, 7], x[0].mean())


def test_mask_of_truth_batch_dict_and_errors():
    ds = _toy()
    b = ds.batch(range(4))
    out = mask_of_truth(b, ["lung", "device"], variant="without", fill="blur")
    assert out["image"].shape == b["image"].shape and out is not b
    with pytest.raises(ValueError, match="available"):
        mask_of_truth(ds, "heart")
    with pytest.raises(ValueError, match="variant"):
        mask_of_truth(ds, "lung", variant="inverse")
    with pytest.raises(ValueError, match="fill"):
        mask_of_truth(ds, "lung", variant="only", fill="noise")


def test_subgroup_metrics_known_groups():
    ds = _toy()
    df = subgroup_metrics(CornerModel(), ds, "device", bootstrap=100)
    t = df.set_index("group")
    # the model says "abnormal" exactly when a device is present; labels are independent of devices
    assert t.loc[True, "positive_rate"] == 1.0 and t.loc[False, "positive_rate"] == 0.0
    assert t.loc[True, "accuracy"] == pytest.approx(0.5) and t.loc[False, "accuracy"] == pytest.approx(0.5)
    assert t.loc[True, "sensitivity"] == 1.0 and t.loc[False, "sensitivity"] == 0.0
    assert t.loc["all", "n"] == 40 and t.loc[True, "n"] == 20 and t.loc[True, "n_pos"] == 10
    assert t.loc["all", "accuracy_lo"] <= t.loc["all", "accuracy"] <= t.loc["all", "accuracy_hi"]
    pos = subgroup_metrics(CornerModel(), ds, "device", positives_only=True, bootstrap=0).set_index("group")
    assert pos.loc[True, "accuracy"] == 1.0 and pos.loc[False, "accuracy"] == 0.0
    assert np.isnan(pos.loc[True, "auc"])  # one class only: undefined
    by2 = subgroup_metrics(CornerModel(), ds, ["device", "site"], bootstrap=0)
    assert len(by2) == 5
    fn = subgroup_metrics(CornerModel(), ds, lambda m: m["site"], bootstrap=0)
    assert set(fn["group"]) == {"all", "A", "B"}
    with pytest.raises(ValueError, match="available keys"):
        subgroup_metrics(CornerModel(), ds, "scanner")


def test_protocol_and_audit_expose_the_shortcut():
    ds = _toy()
    mot = mask_of_truth_protocol(CornerModel(), ds, "lung", box=(False, True))
    assert list(mot["variant"]) == ["full", "only", "only", "without", "without"]
    t = mot.set_index(["variant", "box"])
    # the corner is outside the lung: removing the lung changes nothing, keeping only it kills the shortcut
    assert t.loc[("without", False), "accuracy"] == t.loc[("full", False), "accuracy"]
    assert t.loc[("only", False), "accuracy"] == pytest.approx(0.5)
    audit = shortcut_audit(CornerModel(), ds, structures=("lung",), groups=("device", "site", "absent"),
                           bootstrap=50)
    g = audit.gaps.set_index("by")
    assert g.loc["device", "gap"] == pytest.approx(1.0)
    assert audit.params["groups"] == ["device", "site"]
    import matplotlib

    matplotlib.use("Agg")
    fig = audit.plot()
    assert len(fig.axes) == 2


def test_protocol_retraining_arm():
    ds = _toy(16)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    mot = mask_of_truth_protocol(model, ds, "lung", variants=("full", "without"), box=False, train=True,
                                 train_data=ds, fit_kw={"epochs": 1, "batch_size": 8, "lr": 1e-2, "progress": False})
    assert set(mot["train"]) == {"original", "retrained"} and len(mot) == 4
    with pytest.raises(ValueError, match="train_data"):
        mask_of_truth_protocol(model, ds, "lung", train=True)
