"""Overlays: shapes, contours, legend names, grids and export (Agg backend)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from test_alignment import NAMES, planted_masks  # noqa: E402
from test_communities import planted_maps  # noqa: E402
from workbench.communities import communities  # noqa: E402
from workbench.viz import save_figure  # noqa: E402
from workbench.viz.overlays import (attention_grid, community_grid, community_overlay, community_rgb,  # noqa: E402
                                    draw_contours)


@pytest.fixture
def setup():
    maps = planted_maps()
    comm = communities(maps, k=4, method="mixed_score")
    images = torch.rand(2, 1, 64, 64)
    return maps, comm, images, planted_masks()


def test_community_rgb(setup):
    _, comm, images, masks = setup
    rgb = community_rgb(images, comm, 1, alpha=0.5)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    only_img = community_rgb(images, comm, 1, alpha=0.0)
    np.testing.assert_allclose(only_img[..., 0] / 255.0, images[1, 0].numpy(), atol=1 / 255 + 1e-6)
    with_c = community_rgb(images, comm, 1, masks=masks, structures=["lt"])
    assert (with_c != rgb).any()
    hard = community_rgb(images, comm, 1, soft=False, alpha=1.0)
    assert len(np.unique(hard.reshape(-1, 3), axis=0)) <= 4
    with pytest.raises(ValueError, match="alpha"):
        community_rgb(images, comm, 0, alpha=2)


def test_overlay_legend_names_dominant_structure(setup, tmp_path):
    _, comm, images, masks = setup
    fig = community_overlay(images, comm, 0, masks=masks)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sum(any(n in lab for n in NAMES) for lab in labels[:4]) == 4
    assert set(labels[4:]) == set(NAMES)  # contour entries
    paths = save_figure(fig, tmp_path / "overlay", formats=["png", "svg"], params={"k": 4})
    assert all(p.exists() for p in paths)
    plt.close(fig)
    _, ax2 = plt.subplots()
    assert community_overlay(images, comm, 1, ax=ax2, legend=False) is ax2
    plt.close("all")
    assert comm.plot(images, 0) is not None
    plt.close("all")


def test_draw_contours(setup):
    _, _, _, masks = setup
    fig, ax = plt.subplots()
    ax.imshow(np.zeros((64, 64)))
    lines = draw_contours(ax, masks, ["lt", "rb"], index=1)
    assert len(lines) >= 2
    plt.close(fig)


def test_grids(setup):
    maps, _, images, masks = setup
    fig = community_grid(images, maps, layers=[0, 1], heads=[None, 0], index=1, masks=masks, k=3)
    assert len(fig.axes) == 4
    plt.close(fig)
    fig = attention_grid(maps, 0, layers=[0, 1])
    assert len(fig.axes) == 2 * 3
    plt.close(fig)
    fig = attention_grid(maps, 1, image=images, heads=[None])
    assert len(fig.axes) == 2
    plt.close(fig)


def test_attention_grid_in_ax(setup):
    maps = setup[0]
    fig, ax = plt.subplots()
    assert attention_grid(maps, 0, layers=[-1], heads=[None], ax=ax) is ax
    with pytest.raises(ValueError, match="ax=None"):
        attention_grid(maps, 0, ax=ax)
    plt.close("all")


def test_community_shares_exclusive_vs_alignment_table(setup):
    from workbench.evaluation.alignment import anatomy_alignment
    from workbench.viz.overlays import community_shares

    _, comm, _, masks = setup
    masks = {"all": torch.ones(2, 64, 64, dtype=torch.bool), **masks}  # an enclosing structure, like "body"
    overl = community_shares(comm, 1, masks, exclusive=False)
    table = anatomy_alignment(comm, masks).tables[1]
    for s in ["all", *NAMES]:
        np.testing.assert_allclose(overl[s], table[s].values, atol=1e-5)
    excl = community_shares(comm, 1, masks)
    np.testing.assert_allclose(excl["all"], 0.0, atol=1e-6)  # every pixel is in a later structure
    total = sum(excl.values())
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
