"""Localisation metrics on hand-made maps and masks with answers worked out by hand."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.evaluation import (cohort_budget, evaluate_localisation, pointing_game, relevance_mass,
                                  relevance_rank_accuracy, structure_budget, topk_iou)


def _mask(h=4, w=4, cells=()):
    m = torch.zeros(h, w, dtype=torch.bool)
    for r, c in cells:
        m[r, c] = True
    return m


def test_pointing_game_hit_miss_and_batch():
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 1] = 5.0  # inside
    maps[1, 3, 3] = 5.0  # outside
    masks = torch.stack([_mask(cells=[(1, 1), (1, 2)])] * 2)
    s = pointing_game(maps, masks)
    assert s.scores.tolist() == [1.0, 0.0]
    assert s.mean == pytest.approx(0.5) and s.n == 2 and s.n_excluded == 0


def test_pointing_game_ties():
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0] = maps[0, 3, 3] = 1.0  # two maxima, one inside
    mask = _mask(cells=[(0, 0)])[None]
    assert pointing_game(maps, mask, ties="fraction").mean == pytest.approx(1 / 2)
    assert pointing_game(maps, mask, ties="any").mean == 1.0
    assert pointing_game(maps, mask, ties="all").mean == 0.0
    with pytest.raises(ValueError, match="ties"):
        pointing_game(maps, mask, ties="random")


def test_pointing_game_tolerance():
    maps = torch.zeros(1, 9, 9)
    maps[0, 4, 6] = 1.0  # two pixels right of the mask pixel (4, 4)
    mask = _mask(9, 9, cells=[(4, 4)])[None]
    assert pointing_game(maps, mask, tolerance=1).mean == 0.0
    assert pointing_game(maps, mask, tolerance=2).mean == 1.0


def test_empty_masks_are_excluded_and_counted():
    maps = torch.rand(3, 4, 4)
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0] = True  # everything: always a hit
    s = pointing_game(maps, masks)
    assert s.valid.tolist() == [True, False, False]
    assert s.n == 1 and s.n_excluded == 2 and s.mean == 1.0
    assert not torch.isnan(s.scores).any()
    with pytest.warns(UserWarning, match="empty"):
        r = relevance_mass(maps, torch.zeros(3, 4, 4, dtype=torch.bool))
    assert r.mean == 0.0 and r.n == 0


def test_all_zero_maps_are_chance_level_not_nan():
    maps = torch.zeros(2, 4, 4)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, :2, :] = True  # half the image
    assert pointing_game(maps, mask).mean == pytest.approx(0.5)  # 8 of 16 tied maxima inside
    assert relevance_rank_accuracy(maps, mask).mean == pytest.approx(0.5)
    assert relevance_mass(maps, mask).mean == 0.0  # no relevance at all
    assert topk_iou(maps, mask, k=0.25).mean == pytest.approx(8 / 16)  # all tied -> whole image selected
    df = evaluate_localisation(maps, mask)
    assert not df.isna().any().any()


def test_relevance_mass_by_hand():
    a = torch.tensor([[[3.0, -2.0], [1.0, 4.0]]])
    mask = torch.tensor([[[True, True], [False, False]]])
    # positive relevance: 3 + 1 + 4 = 8, inside: 3 -> 3/8
    assert relevance_mass(a, mask).mean == pytest.approx(3 / 8)
    # signed: (3 - 2) / (3 - 2 + 1 + 4) = 1/6
    assert relevance_mass(a, mask, positive_only=False).mean == pytest.approx(1 / 6)


def test_rank_accuracy_and_topk_iou_by_hand():
    a = torch.arange(16, dtype=torch.float32).view(1, 4, 4)  # top-3 = cells 15, 14, 13
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, [15, 13, 0]] = True
    mask = mask.view(1, 4, 4)
    assert relevance_rank_accuracy(a, mask).mean == pytest.approx(2 / 3)
    # top-4 region {12..15} vs mask {0, 13, 15}: intersection 2, union 5
    assert topk_iou(a, mask, k=4).mean == pytest.approx(2 / 5)
    assert topk_iou(a, mask, k=0.25).mean == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="k must"):
        topk_iou(a, mask, k=1.5)


def test_rank_accuracy_tie_expectation():
    a = torch.tensor([[[2.0, 1.0, 1.0, 1.0]]])
    mask = torch.tensor([[[True, True, False, False]]])
    # top-2: pixel 0 (inside) + one of three tied pixels, 1 of which is inside -> (1 + 1/3) / 2
    assert relevance_rank_accuracy(a, mask).mean == pytest.approx((1 + 1 / 3) / 2)


def test_size_mismatch_error_and_resize():
    maps = torch.rand(2, 8, 8)
    mask = torch.ones(2, 16, 16, dtype=torch.bool)
    with pytest.raises(ValueError, match="Resize"):
        pointing_game(maps, mask)
    assert pointing_game(maps, mask, resize=True).mean == 1.0


def test_numpy_and_single_map_inputs():
    a = np.zeros((4, 4), np.float32)
    a[1, 1] = 1
    m = np.zeros((4, 4), bool)
    m[1, 1] = True
    assert pointing_game(a, m).mean == 1.0
    with pytest.raises(TypeError):
        pointing_game([[1.0]], m)


def test_structure_budget_sums_to_one_for_disjoint_structures():
    torch.manual_seed(0)
    maps = torch.rand(3, 6, 6) - 0.3
    left = torch.zeros(3, 6, 6, dtype=torch.bool)
    left[:, :, :2] = True
    right = torch.zeros(3, 6, 6, dtype=torch.bool)
    right[:, :, 4:] = True
    df = structure_budget(maps, {"left": left, "right": right})
    assert set(df.columns) >= {"image", "structure", "share", "present"}
    sums = df.groupby("image")["share"].sum()
    assert np.allclose(sums.to_numpy(), 1.0)
    pos = maps.clamp(min=0)
    expect = float((pos[0] * left[0]).sum() / pos[0].sum())
    got = df[(df.image == 0) & (df.structure == "left")]["share"].item()
    assert got == pytest.approx(expect, rel=1e-5)


def test_structure_budget_overlap_and_presence():
    maps = torch.ones(2, 2, 2)
    lung = torch.ones(2, 2, 2, dtype=torch.bool)
    nodule = torch.zeros(2, 2, 2, dtype=torch.bool)
    nodule[:, 0, 0] = True
    batch = {"masks": {"lung": lung, "nodule": nodule},
             "mask_present": {"lung": torch.tensor([True, True]), "nodule": torch.tensor([True, False])}}
    df = structure_budget(maps, batch)
    row = df[(df.image == 0)].set_index("structure")["share"]
    assert row["lung"] == 1.0 and row["nodule"] == 0.25 and row["outside"] == 0.0  # overlap: both credited
    assert not df[(df.image == 1) & (df.structure == "nodule")]["present"].item()
    cb = cohort_budget(df, bootstrap=0).set_index("structure")
    assert cb.loc["nodule", "n"] == 1 and cb.loc["lung", "n"] == 2


def test_cohort_budget_ci_contains_mean_and_is_seeded():
    torch.manual_seed(1)
    maps = torch.rand(20, 8, 8)
    a = torch.zeros(20, 8, 8, dtype=torch.bool)
    a[:, :4] = True
    cb = cohort_budget(maps, {"a": a}, bootstrap=300, seed=3)
    r = cb.set_index("structure").loc["a"]
    assert r["lo"] <= r["mean"] <= r["hi"] and r["lo"] < r["hi"]
    per = structure_budget(maps, {"a": a})
    assert r["mean"] == pytest.approx(per[per.structure == "a"]["share"].mean())
    pd.testing.assert_frame_equal(cb, cohort_budget(maps, {"a": a}, bootstrap=300, seed=3))


def test_evaluate_localisation_table_and_attribution_input():
    from workbench.attribution import Attribution

    maps = torch.zeros(2, 4, 4)
    maps[:, 0, 0] = 1.0
    masks = {"corner": _mask(cells=[(0, 0)]).expand(2, 4, 4), "far": _mask(cells=[(3, 3)]).expand(2, 4, 4)}
    att = Attribution(maps=maps, raw=None, method="x", target=torch.zeros(2, dtype=torch.long))
    df = evaluate_localisation(att, masks)
    assert list(df.index) == ["corner", "far"]
    assert df.loc["corner", "pointing_game"] == 1.0 and df.loc["far", "pointing_game"] == 0.0
    assert df.loc["corner", "relevance_mass"] == 1.0 and df.loc["far", "n"] == 2


def test_budget_bars_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from workbench.viz import save_figure
    from workbench.viz.evaluation import budget_bars

    torch.manual_seed(0)
    maps = torch.rand(5, 8, 8)
    m = {"left_lung": torch.rand(5, 8, 8) > 0.5, "device": torch.rand(5, 8, 8) > 0.8}
    cb = cohort_budget(maps, m, bootstrap=50)
    fig = budget_bars({"cnn": cb, "vit": cb})
    assert len(fig.axes[0].patches) >= 6
    paths = save_figure(fig, tmp_path / "budget.png")
    assert all(p.exists() for p in paths)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        budget_bars(cb)
