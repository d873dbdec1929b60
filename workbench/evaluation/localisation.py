"""Scoring attribution maps against masks: pointing game, relevance mass, rank accuracy, top-k IoU
and the per-structure relevance budget (per image and over a cohort with bootstrap CIs).

Conventions (all functions):

- ``maps``: an ``Attribution`` (its ``.maps``), or a (B, H, W) tensor/ndarray (a single (H, W) map
  is treated as B = 1). NaN/inf values count as 0.
- ``masks``: a (B, H, W) bool tensor/ndarray, a dict {structure: (B, H, W)}, or a batch dict from
  ``dataset.batch(...)`` (its ``masks`` and ``mask_present`` are used). The scalar metrics merge a
  dict into one region (the union); ``evaluate_localisation`` and the budgets score each structure.
- Masks must have the maps' spatial size; otherwise a ValueError asks to resize the masks with the
  images (``workbench.data.transforms.Resize``) or to pass ``resize=True``, which resamples the
  maps bilinearly to the masks' size (masks stay exact, so small findings do not vanish).
- Empty masks (and structures not annotated, ``mask_present`` False) cannot be scored: the image
  gets ``valid=False`` and score 0, means are over valid images only, and the count of excluded
  images is reported. No result is NaN except a mean over zero valid images, which is 0.0 with a
  warning.
- All-zero maps are defined: ties are resolved as described per metric, which gives chance level.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .._checks import check_int
from ._common import align, as_maps, broadcast, split_masks, union

TIES = ("fraction", "any", "all")


@dataclass(frozen=True)
class LocalisationScore:
    """Per-image scores of one localisation metric.

    Attributes:
        metric: the metric's name.
        scores: (B,) float; 0 where ``valid`` is False.
        valid: (B,) bool; False for empty / not-annotated masks (excluded from the mean).
        mean: mean over valid images (0.0 when there are none).
        n: number of valid images.
        n_excluded: number of images excluded (empty mask).
    """

    metric: str
    scores: torch.Tensor
    valid: torch.Tensor
    mean: float
    n: int
    n_excluded: int

    def __float__(self) -> float:
        return self.mean


def _score(metric: str, scores: torch.Tensor, valid: torch.Tensor) -> LocalisationScore:
    scores = torch.where(valid, scores, torch.zeros_like(scores)).float()
    n = int(valid.sum())
    if n == 0:
        warnings.warn(f"{metric}: every mask is empty, so no image could be scored; the mean is reported as 0.0.",
                      stacklevel=3)
        mean = 0.0
    else:
        mean = float(scores[valid].mean())
    return LocalisationScore(metric, scores, valid, mean, n, int(valid.numel() - n))


def _prepare2d(maps: Any, masks: Any, resize: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (maps (B, H, W), union of masks (B, H, W) bool, valid (B,) bool)."""
    m = as_maps(maps)
    md, present, _ = split_masks(masks)
    m = align(m, md, resize)
    region = union(md)
    m, region = broadcast(m, region)
    valid = region.flatten(1).any(1)
    if present is not None:
        anyp = torch.zeros_like(valid)
        for k in md:
            anyp |= present[k].expand_as(valid) if k in present else torch.ones_like(valid)
        valid &= anyp
    return m, region, valid


def _prepare(maps: Any, masks: Any, resize: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (maps (B, N), union mask (B, N) bool, valid (B,) bool)."""
    m, region, valid = _prepare2d(maps, masks, resize)
    return m.flatten(1), region.flatten(1), valid


def _dilate(mask: torch.Tensor, tolerance: int) -> torch.Tensor:
    """Dilate (B, H, W) bool masks by a disk of radius ``tolerance`` pixels."""
    if tolerance <= 0:
        return mask
    r = int(tolerance)
    yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    disk = ((yy ** 2 + xx ** 2) <= r * r).float()[None, None]
    out = F.conv2d(mask.float()[:, None], disk, padding=r)[:, 0]
    return out > 0.5


def pointing_game(maps: Any, masks: Any, *, tolerance: int = 0, ties: str = "fraction",
                  resize: bool = False) -> LocalisationScore:
    """Pointing game (Zhang et al. 2018): is the map's maximum inside the mask?

    Args:
        maps: (B, H, W) attribution maps or an Attribution.
        masks: (B, H, W) bool masks, a dict of them (union) or a batch dict.
        tolerance: dilate the mask by a disk of this radius in pixels (Zhang et al. use 15 px at
            224 px); 0 = exact, as in Quantus.
        ties: how several pixels sharing the maximum count. ``"fraction"`` (default): the share of
            maximal pixels inside the mask, i.e. the expected hit under random tie-breaking (an
            all-zero map scores the mask's area fraction, chance level). ``"any"``: a hit if any
            maximal pixel is inside (Quantus's definition; an all-zero map then always hits).
            ``"all"``: a hit only if all maximal pixels are inside.
        resize: resample maps to the masks' size instead of raising on a size mismatch.

    Returns:
        LocalisationScore with per-image hits in [0, 1].

    Examples:
        >>> m = torch.zeros(1, 4, 4); m[0, 1, 1] = 1.0
        >>> k = torch.zeros(1, 4, 4, dtype=torch.bool); k[0, :2, :2] = True
        >>> pointing_game(m, k).mean
        1.0
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}; got {ties!r}.")
    if int(tolerance) < 0:
        raise ValueError(f"tolerance must be >= 0 pixels; got {tolerance}.")
    m, region, valid = _prepare2d(maps, masks, resize)
    region = _dilate(region, int(tolerance))
    a, s = m.flatten(1), region.flatten(1)
    is_max = a == a.max(dim=1, keepdim=True).values
    inside = (is_max & s).sum(1).float()
    total = is_max.sum(1).float()
    if ties == "fraction":
        hit = inside / total
    elif ties == "any":
        hit = (inside > 0).float()
    else:
        hit = (inside == total).float()
    return _score("pointing_game", hit, valid)


def relevance_mass(maps: Any, masks: Any, *, positive_only: bool = True, resize: bool = False) -> LocalisationScore:
    """Relevance mass accuracy (Arras et al. 2022): share of relevance that falls inside the mask.

    ``sum(R * mask) / sum(R)`` with ``R = max(map, 0)`` (``positive_only=True``, Arras et al.'s
    definition on positive relevance). With ``positive_only=False`` the raw signed map is used,
    which is exactly Quantus's ``RelevanceMassAccuracy`` (abs=False; its max-normalisation cancels in
    the ratio). A map whose total (positive) relevance is 0 scores 0 (no relevance in the mask).

    Args:
        maps: (B, H, W) maps or an Attribution.
        masks: (B, H, W) bool masks, a dict (union) or a batch dict.
        positive_only: keep positive relevance only.
        resize: resample maps to the masks' size.

    Returns:
        LocalisationScore with per-image shares.
    """
    a, s, valid = _prepare(maps, masks, resize)
    if positive_only:
        a = a.clamp(min=0)
    inside = (a * s).sum(1)
    total = a.sum(1)
    share = torch.where(total != 0, inside / torch.where(total != 0, total, torch.ones_like(total)),
                        torch.zeros_like(total))
    return _score("relevance_mass", share, valid)


def _topk_expected_inside(a: torch.Tensor, s: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Expected number of mask pixels among the top-``k`` pixels of each row, ties broken at random.

    a: (B, N) scores; s: (B, N) bool; k: (B,) long with 1 <= k <= N (k = 0 gives 0).
    """
    srt = a.sort(dim=1, descending=True).values
    kk = k.clamp(min=1)
    thr = srt.gather(1, (kk - 1)[:, None])  # value of the k-th largest
    greater = a > thr
    equal = a == thr
    n_greater = greater.sum(1).float()
    n_equal = equal.sum(1).float()
    in_greater = (greater & s).sum(1).float()
    in_equal = (equal & s).sum(1).float()
    need = kk.float() - n_greater
    out = in_greater + need * in_equal / n_equal
    return torch.where(k > 0, out, torch.zeros_like(out))


def relevance_rank_accuracy(maps: Any, masks: Any, *, resize: bool = False) -> LocalisationScore:
    """Relevance rank accuracy (Arras et al. 2022): share of the top-K pixels inside the mask, K = |mask|.

    Pixels are ranked by the signed map (as Quantus, abs=False). Ties at the K-th value are
    resolved in expectation (each tied pixel equally likely to be chosen), so the result is
    deterministic; without ties it equals Quantus's ``RelevanceRankAccuracy`` exactly. An all-zero
    map scores the mask's area fraction.

    Args:
        maps: (B, H, W) maps or an Attribution.
        masks: (B, H, W) bool masks, a dict (union) or a batch dict.
        resize: resample maps to the masks' size.

    Returns:
        LocalisationScore with per-image accuracies in [0, 1].
    """
    a, s, valid = _prepare(maps, masks, resize)
    k = s.sum(1)
    hits = _topk_expected_inside(a, s, k)
    acc = hits / k.clamp(min=1).float()
    return _score("relevance_rank_accuracy", acc, valid)


def topk_iou(maps: Any, masks: Any, *, k: float = 0.05, resize: bool = False) -> LocalisationScore:
    """IoU between the top-k region of the map and the mask.

    The region is the ``k`` fraction (0 < k <= 1) or, for an integer ``k >= 1``, the ``k`` pixels with
    the highest map values; pixels tied with the k-th value are all included (so an all-zero map
    selects the whole image, IoU = mask area fraction).

    Args:
        maps: (B, H, W) maps or an Attribution.
        masks: (B, H, W) bool masks, a dict (union) or a batch dict.
        k: fraction of pixels (float in (0, 1]) or a pixel count (int).
        resize: resample maps to the masks' size.

    Returns:
        LocalisationScore with per-image IoUs in [0, 1].
    """
    a, s, valid = _prepare(maps, masks, resize)
    n = a.shape[1]
    if isinstance(k, bool) or not isinstance(k, (int, float)) or k <= 0 or (isinstance(k, float) and k > 1):
        raise ValueError(f"k must be a fraction in (0, 1] or a pixel count >= 1; got {k!r}.")
    if not isinstance(k, float) and k > n:
        raise ValueError(f"k={k} pixels is more than the {n} pixels of each map; pass a pixel count <= {n} or a "
                         "fraction in (0, 1] (e.g. k=0.05).")
    kk = max(1, min(n, int(round(k * n)) if isinstance(k, float) else int(k)))
    thr = a.topk(kk, dim=1).values[:, -1:]
    region = a >= thr
    inter = (region & s).sum(1).float()
    uni = (region | s).sum(1).float()
    return _score("topk_iou", inter / uni.clamp(min=1), valid)


def structure_budget(maps: Any, masks: Any, *, positive_only: bool = True, include_outside: bool = True,
                     resize: bool = False) -> pd.DataFrame:
    """Share of relevance that falls in each structure, per image.

    Each structure's share is computed independently as ``sum(R * mask) / sum(R)`` (R = positive
    relevance when ``positive_only``, else the absolute map), so overlapping structures (a nodule
    inside a lung) are both credited and shares can sum to more than 1. ``"outside"`` is the share
    outside the union of all structures; disjoint structures plus ``"outside"`` sum to 1.

    Args:
        maps: (B, H, W) maps or an Attribution.
        masks: dict {structure: (B, H, W) bool} or a batch dict (``mask_present`` is honoured).
        positive_only: use positive relevance (default) or the absolute map.
        include_outside: add an ``"outside"`` row per image.
        resize: resample maps to the masks' size.

    Returns:
        Tidy DataFrame with columns ``image`` (0..B-1), ``structure``, ``share``, ``present``
        (False for an empty or not-annotated mask; share 0 there) and ``total`` (the image's total
        relevance; when 0 every share is 0 and ``present`` is False).
    """
    m = as_maps(maps)
    md, present, _ = split_masks(masks)
    m = align(m, md, resize)
    b = max(m.shape[0], next(iter(md.values())).shape[0])
    a = (m.clamp(min=0) if positive_only else m.abs()).expand(b, *m.shape[1:]).flatten(1)
    total = a.sum(1)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    names, shares, pres = [], [], []
    for k, mk in md.items():
        mk = mk.expand(b, *mk.shape[1:]).flatten(1)
        names.append(k)
        shares.append((a * mk).sum(1) / safe)
        p = mk.any(1)
        if present is not None and k in present:
            p = p & present[k].expand(b)
        pres.append(p)
    if include_outside:
        u = union({k: v.expand(b, *v.shape[1:]) for k, v in md.items()}).flatten(1)
        names.append("outside")
        shares.append((a * ~u).sum(1) / safe)
        pres.append(torch.ones(b, dtype=torch.bool))
    sh = torch.stack(shares, 1)  # (B, S)
    pr = torch.stack(pres, 1) & (total > 0)[:, None]
    sh = torch.where(pr, sh, torch.zeros_like(sh))
    s_count = len(names)
    return pd.DataFrame({
        "image": np.repeat(np.arange(b), s_count),
        "structure": np.tile(np.array(names, dtype=object), b),
        "share": sh.reshape(-1).numpy().astype(float),
        "present": pr.reshape(-1).numpy(),
        "total": np.repeat(total.numpy().astype(float), s_count),
    })


def cohort_budget(maps: Any, masks: Any = None, *, bootstrap: int = 1000, ci: float = 0.95, seed: int = 0,
                  positive_only: bool = True, include_outside: bool = True, resize: bool = False) -> pd.DataFrame:
    """Mean relevance share per structure over a cohort, with percentile bootstrap CIs over images.

    Images where a structure is empty / not annotated (or whose map has no relevance) are left out
    of that structure's mean (``n`` counts those kept).

    Args:
        maps: (B, H, W) maps or an Attribution, or a DataFrame returned by ``structure_budget``
            (then ``masks`` is ignored).
        masks: dict {structure: (B, H, W) bool} or a batch dict.
        bootstrap: number of bootstrap resamples of images (0: no CI, lo = hi = mean).
        ci: confidence level of the interval.
        seed: seed of the resampling.
        positive_only, include_outside, resize: as in ``structure_budget``.

    Returns:
        DataFrame with one row per structure: ``structure``, ``mean``, ``lo``, ``hi``, ``std``, ``n``.

    Examples:
        >>> m = torch.ones(3, 2, 2); k = torch.zeros(3, 2, 2, dtype=torch.bool); k[:, 0] = True
        >>> cohort_budget(m, {"top": k}, bootstrap=10)["mean"].round(2).tolist()
        [0.5, 0.5]
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1); got {ci}.")
    check_int(bootstrap, "bootstrap", minimum=0)
    if isinstance(maps, pd.DataFrame):
        per = maps
    else:
        if masks is None:
            raise ValueError("cohort_budget needs masks (a dict {structure: (B, H, W)}) unless maps is a "
                             "structure_budget DataFrame.")
        per = structure_budget(maps, masks, positive_only=positive_only, include_outside=include_outside,
                               resize=resize)
    rng = np.random.default_rng(seed)
    rows = []
    alpha = (1 - ci) / 2
    for name in dict.fromkeys(per["structure"]):
        v = per.loc[(per["structure"] == name) & per["present"], "share"].to_numpy(float)
        n = len(v)
        if n == 0:
            rows.append({"structure": name, "mean": 0.0, "lo": 0.0, "hi": 0.0, "std": 0.0, "n": 0})
            continue
        mean = float(v.mean())
        lo = hi = mean
        if bootstrap and n > 1:
            idx = rng.integers(0, n, size=(int(bootstrap), n))
            bm = v[idx].mean(1)
            lo, hi = (float(x) for x in np.quantile(bm, [alpha, 1 - alpha]))
        rows.append({"structure": name, "mean": mean, "lo": lo, "hi": hi,
                     "std": float(v.std(ddof=1)) if n > 1 else 0.0, "n": n})
    return pd.DataFrame(rows)


def evaluate_localisation(maps: Any, masks: Any, *, tolerance: int = 0, ties: str = "fraction", k: float = 0.05,
                          positive_only: bool = True, resize: bool = False) -> pd.DataFrame:
    """All localisation metrics at once, one row per structure.

    Args:
        maps: (B, H, W) maps or an Attribution.
        masks: (B, H, W) bool (one row named ``"mask"``), a dict {structure: (B, H, W)} (one row each)
            or a batch dict.
        tolerance, ties: as in ``pointing_game``.
        k: top-k fraction for ``topk_iou``.
        positive_only: as in ``relevance_mass``.
        resize: resample maps to the masks' size.

    Returns:
        DataFrame indexed by structure with columns ``pointing_game``, ``relevance_mass``,
        ``rank_accuracy``, ``topk_iou`` (means over valid images), ``n`` (valid images) and
        ``n_excluded`` (empty masks).
    """
    md, present, _ = split_masks(masks)
    rows = {}
    for name, mk in md.items():
        sub: Any = {name: mk}
        if present is not None and name in present:
            sub = {"masks": {name: mk}, "mask_present": {name: present[name]}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pg = pointing_game(maps, sub, tolerance=tolerance, ties=ties, resize=resize)
            rm = relevance_mass(maps, sub, positive_only=positive_only, resize=resize)
            ra = relevance_rank_accuracy(maps, sub, resize=resize)
            iou = topk_iou(maps, sub, k=k, resize=resize)
        rows[name] = {"pointing_game": pg.mean, "relevance_mass": rm.mean, "rank_accuracy": ra.mean,
                      "topk_iou": iou.mean, "n": pg.n, "n_excluded": pg.n_excluded}
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "structure"
    return df


__all__ = ["LocalisationScore", "pointing_game", "relevance_mass", "relevance_rank_accuracy", "topk_iou",
           "structure_budget", "cohort_budget", "evaluate_localisation"]
