"""anatomy_alignment: perfect and random communities, mask_present, label maps, sizes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from test_communities import planted_labels, planted_maps
from workbench.communities import communities
from workbench.evaluation.alignment import Alignment, anatomy_alignment

NAMES = ["lt", "rt", "lb", "rb"]


def planted_masks(b: int = 2, size: int = 64) -> dict[str, torch.Tensor]:
    lab = planted_labels()
    up = torch.nn.functional.interpolate(lab[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()
    return {n: (up == i)[None].expand(b, -1, -1).clone() for i, n in enumerate(NAMES)}


def test_perfect_alignment():
    c = communities(planted_maps(), k=4, method="spectral")
    al = anatomy_alignment(c, planted_masks())
    assert isinstance(al, Alignment)
    assert al.ari == pytest.approx(1.0) and al.nmi == pytest.approx(1.0) and al.purity == pytest.approx(1.0)
    assert list(al.table.columns) == NAMES + ["background"]
    assert al.table.shape == (4, 5)
    # each community lies in exactly one structure
    np.testing.assert_allclose(np.sort(al.table.values[:, :4].max(1)), 1.0, atol=1e-6)
    assert len(al.per_image) == 2 and len(al.tables) == 2
    assert all(n.startswith("C") for n in al.names)


def test_random_communities_score_low():
    g = torch.Generator().manual_seed(0)
    c = communities(planted_maps(strength=0.0), k=4, method="kmeans")
    al = anatomy_alignment(c, planted_masks())
    assert al.ari < 0.3


def test_label_map_and_structures_subset():
    c = communities(planted_maps(), k=4, method="spectral")
    masks = planted_masks()
    lab = torch.zeros(2, 64, 64, dtype=torch.long)
    for i, n in enumerate(NAMES, start=1):
        lab[masks[n]] = i
    al = anatomy_alignment(c, lab, structures=NAMES)
    assert al.ari == pytest.approx(1.0)
    sub = anatomy_alignment(c, masks, structures=["lt", "rb"])
    assert list(sub.table.columns) == ["lt", "rb", "background"]
    assert sub.ari < 1.0  # lr and lb merged into background


def test_mask_present_and_batch_dict():
    c = communities(planted_maps(), k=4, method="spectral")
    masks = planted_masks()
    present = {n: torch.tensor([True, True]) for n in NAMES}
    present["rb"] = torch.tensor([True, False])
    masks["rb"][1] = False
    al = anatomy_alignment(c, {"masks": masks, "mask_present": present})
    assert np.isnan(al.tables[1]["rb"]).all()
    assert not np.isnan(al.table["rb"]).any()


def test_mask_size_errors_and_resize():
    c = communities(planted_maps(), k=4, method="spectral")
    small = planted_masks(size=32)
    with pytest.raises(ValueError, match="resize=True"):
        anatomy_alignment(c, small)
    assert anatomy_alignment(c, small, resize=True).ari == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not in masks"):
        anatomy_alignment(c, planted_masks(), structures=["heart"])
    with pytest.raises(ValueError, match="images"):
        anatomy_alignment(c, {k: v[:1] for k, v in planted_masks().items()})


def test_plot(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    from workbench.viz import save_figure
    al = anatomy_alignment(communities(planted_maps(), k=4), planted_masks())
    fig = al.plot()
    paths = save_figure(fig, tmp_path / "table.png")
    assert paths[0].exists()
