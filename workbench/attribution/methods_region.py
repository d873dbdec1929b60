"""Region methods: RISE (random masks) and XRAI-style region ranking.

Both answer "which *region* matters" rather than "which pixel": a lesion is a region, and pixel maps
of gradient methods peak on single noisy pixels. Written here (no peer library implements either
for torch models with our conventions; the PAIR ``saliency`` package's XRAI is numpy/TF-style and
not a dependency).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._core import MethodOutput, default_batch, register_method
from .methods_captum import baseline_like

RISE_BLOCK = 128  # masks drawn (and held in memory) at a time


def _rise_masks(n: int, grid: int, p: float, size: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """``n`` smooth random masks ``(n, H, W)`` in [0, 1] (Petsiuk et al. 2018): a ``grid x grid``
    Bernoulli(p) pattern upsampled bilinearly to ``(grid + 1)`` cells and cropped at a random shift
    within one cell, so mask edges fall anywhere, not on a fixed lattice."""
    h, w = size
    ch, cw = math.ceil(h / grid), math.ceil(w / grid)
    coarse = (torch.rand(n, 1, grid, grid, generator=gen) < p).float()
    up = F.interpolate(coarse, size=((grid + 1) * ch, (grid + 1) * cw), mode="bilinear", align_corners=False)
    dy = torch.randint(0, ch, (n,), generator=gen).tolist()
    dx = torch.randint(0, cw, (n,), generator=gen).tolist()
    return torch.stack([up[i, 0, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


@register_method("rise", chunk=False)
def rise(model: nn.Module, images: torch.Tensor, target: torch.Tensor, *, n_masks: int = 1000, grid: int = 8,
         p: float = 0.5, baseline: Any = "blur", score: str = "prob", seed: int | None = 0,
         internal_batch_size: int | None = None, progress: bool = False) -> MethodOutput:
    """RISE (Petsiuk et al. 2018): the mean score of randomly masked copies, weighted by each mask.

    ``map = sum_i f(x * M_i + ref * (1 - M_i)) * M_i / (n_masks * p)``: the expected score when a
    pixel is kept. Black-box (forwards only), no gradient; the map is >= 0 for ``score="prob"``.

    Args:
        n_masks: number of random masks (the paper used 4000-8000 at 224 px; the map's noise falls as
            ``1 / sqrt(n_masks)``). Cost: ``n_masks`` forwards per image.
        grid: cells per side of the random pattern (8: 16 px cells at 128 px; a lesion should span
            about a cell).
        p: probability that a cell is kept.
        baseline: what masked pixels become: ``"blur"`` (default, as occlusion here: black holes in an
            ultrasound or radiograph look like findings of their own), ``0`` (the paper's), ``"mean"``,
            a number or a tensor (:func:`~workbench.attribution.baseline_like`).
        score: ``"prob"`` (softmax probability of the target, the paper's) or ``"logit"``.
        seed: masks are drawn on the CPU from this seed (the same maps on any device and for any
            ``internal_batch_size``); None draws from torch's global generator.
        internal_batch_size: model inputs per forward (default :func:`default_batch`).

    Memory: masks are drawn ``RISE_BLOCK`` (128) at a time and the masked copies built per pass, so
    memory is about ``128 x H x W + internal_batch_size x C x H x W`` whatever ``n_masks``: any
    number of masks runs, in as many passes as needed.
    """
    from .._checks import check_choice, check_int, check_number

    check_int(n_masks, "n_masks")
    check_int(grid, "grid", minimum=2, maximum=min(images.shape[-2:]))
    check_number(p, "p (the probability that a cell is kept)", low=0, high=1, low_open=True, high_open=True)
    check_choice(score, "score", ("prob", "logit"))
    b, c, h, w = images.shape
    ref = baseline_like(images, baseline)
    ibs = internal_batch_size or default_batch(images)
    sal = torch.zeros(b, h, w, device=images.device, dtype=torch.float32)
    gen = torch.Generator()
    if seed is not None:
        gen.manual_seed(int(seed))
    else:
        gen.seed()
    blocks = range(0, n_masks, RISE_BLOCK)
    if progress:
        from tqdm.auto import tqdm

        blocks = tqdm(blocks, desc="rise")
    with torch.no_grad():
        for start in blocks:
            masks = _rise_masks(min(RISE_BLOCK, n_masks - start), grid, p, (h, w), gen).to(images.device)
            for i0 in range(0, b, max(1, ibs)):  # images per pass (more than ibs images: one at a time)
                xs, rs, ts = images[i0:i0 + ibs], ref[i0:i0 + ibs], target[i0:i0 + ibs]
                nb = xs.shape[0]
                per = max(1, ibs // nb)
                for m0 in range(0, masks.shape[0], per):
                    m = masks[m0:m0 + per].to(images.dtype)[None, :, None]  # (1, n, 1, H, W)
                    mixed = xs[:, None] * m + rs[:, None] * (1 - m)
                    out = model(mixed.flatten(0, 1)).float()
                    if score == "prob":
                        out = out.softmax(-1)
                    s = out.view(nb, -1, out.shape[-1]).gather(2, ts.view(nb, 1, 1).expand(-1, m.shape[1], 1))[..., 0]
                    sal[i0:i0 + nb] += torch.einsum("bn,nhw->bhw", s, m[0, :, 0].float())
    sal /= n_masks * p
    return MethodOutput(maps=sal, params={"n_masks": n_masks, "grid": grid, "p": p, "score": score})


# --------------------------------------------------------------------------- XRAI-style regions

def region_segments(image: np.ndarray, scales: tuple[float, ...] = (50, 100, 150, 250, 500, 1200),
                    dilation: int | None = None, min_size: int | None = None) -> np.ndarray:
    """Overlapping candidate regions of one image ``(H, W)`` or ``(H, W, C)`` in [0, 1]: Felzenszwalb
    segmentations at several ``scales`` (scikit-image), each segment dilated by ``dilation`` px, as
    XRAI does (Kapishnikov et al. 2019: scales 50-1200 at 224 px, 5 px dilation, min size 150 px;
    dilation and min size are scaled here with the image side / area).

    Returns:
        ``(N, H, W)`` bool, one row per candidate region.
    """
    from skimage.segmentation import felzenszwalb

    h, w = image.shape[:2]
    area = h * w / (224.0 * 224.0)
    dil = max(1, round(5 * math.sqrt(area))) if dilation is None else int(dilation)
    mins = max(4, round(150 * area)) if min_size is None else int(min_size)
    img = image.astype(np.float64) * 2.0 - 1.0  # XRAI segments images scaled to [-1, 1]
    offsets = [(dy, dx) for dy in range(-dil, dil + 1) for dx in range(-dil, dil + 1) if dy * dy + dx * dx <= dil * dil]
    pix = np.arange(h * w)
    out = []
    for s in scales:
        lab = felzenszwalb(img, scale=float(s), sigma=0.8, min_size=mins, channel_axis=None if img.ndim == 2 else -1)
        # dilation of every segment at once: pixel q is in dilated segment k if a pixel of k lies within the disk
        padded = np.pad(lab, dil, mode="edge")
        member = np.zeros((int(lab.max()) + 1, h * w), dtype=bool)
        for dy, dx in offsets:
            member[padded[dil + dy:dil + dy + h, dil + dx:dil + dx + w].reshape(-1), pix] = True
        out.append(member)
    return np.concatenate(out).reshape(-1, h, w)


def rank_regions(attr: np.ndarray, regions: np.ndarray, min_new: int = 1) -> tuple[np.ndarray, list[int]]:
    """XRAI's greedy ranking: repeatedly add the region with the highest attribution density (sum of
    ``attr`` over the pixels it adds / their count) until every region is used or adds fewer than
    ``min_new`` new pixels; pixels left uncovered form a last region.

    Args:
        attr: ``(H, W)`` pixel attribution.
        regions: ``(N, H, W)`` bool candidate regions (overlapping).
        min_new: a region must add at least this many uncovered pixels.

    Returns:
        ``(H, W)`` map in which each pixel holds the density of the region that first covered it
        (so sorting pixels by the map follows the ranking), and the order of region indices added.
    """
    p = attr.size
    a = attr.reshape(-1).astype(np.float64)
    m = regions.reshape(regions.shape[0], p)
    num = m.astype(np.float64) @ a
    den = m.sum(1).astype(np.float64)
    covered = np.zeros(p, dtype=bool)
    out = np.zeros(p, dtype=np.float64)
    order: list[int] = []
    alive = np.ones(len(m), dtype=bool)
    while alive.any():
        gain = np.where(alive & (den >= min_new), num / np.maximum(den, 1), -np.inf)
        k = int(np.argmax(gain))
        if not np.isfinite(gain[k]):
            break
        new = m[k] & ~covered
        out[new] = gain[k]
        covered |= new
        order.append(k)
        alive[k] = False
        cols = m[:, new]
        num -= cols.astype(np.float64) @ a[new]
        den -= cols.sum(1)
    if not covered.all():
        out[~covered] = a[~covered].mean()
    return out.reshape(attr.shape), order


@register_method("xrai", chunk=False)
def xrai(model: nn.Module, images: torch.Tensor, target: torch.Tensor, *, base: str = "integrated_gradients",
         base_kw: dict[str, Any] | None = None, scales: tuple[float, ...] = (50, 100, 150, 250, 500, 1200),
         dilation: int | None = None, min_new: int | None = None,
         internal_batch_size: int | None = None) -> MethodOutput:
    """Region attribution in the manner of XRAI (Kapishnikov et al. 2019): rank superpixels by the
    integrated attribution they contain.

    A pixel attribution (``base``, default integrated gradients as XRAI computes it: the mean of two
    runs, from a black and from a white image (each image's minimum and maximum), unless ``base_kw``
    names a ``baseline``; any registered method with ``base_kw``) is summed over overlapping
    Felzenszwalb regions at several
    scales (:func:`region_segments`); regions are added greedily by attribution density
    (:func:`rank_regions`). Map ``(B, H, W)``: each pixel holds its region's density, so the top
    k % of the map is the best-ranked regions covering k % of the image. ``min_new`` (default 50 px
    at 224 px, scaled with the area) drops regions that add almost nothing. Cost: the base method
    plus the segmentation (CPU, scikit-image) and the ranking (the default base runs integrated
    gradients twice).
    """
    from ._core import attribute

    kw = dict(base_kw or {})
    if base == "integrated_gradients" and "baseline" not in kw:
        # XRAI's recipe (Kapishnikov et al.): black and white references, attributions averaged
        refs = [images.amin(dim=(1, 2, 3), keepdim=True), images.amax(dim=(1, 2, 3), keepdim=True)]
        pixel = sum(attribute(model, images, target, method=base, internal_batch_size=internal_batch_size,
                              baseline=r.expand_as(images).contiguous(), **kw).maps for r in refs) / 2
    else:
        pixel = attribute(model, images, target, method=base, internal_batch_size=internal_batch_size, **kw).maps
    arr = images.detach().float().cpu().numpy()
    pix = pixel.detach().float().cpu().numpy()
    h, w = images.shape[-2:]
    mn = max(1, round(50 * h * w / (224.0 * 224.0))) if min_new is None else int(min_new)
    maps, counts = [], []
    for i in range(images.shape[0]):
        img = arr[i, 0] if arr.shape[1] == 1 else arr[i].transpose(1, 2, 0)
        regions = region_segments(img, tuple(scales), dilation)
        ranked, order = rank_regions(pix[i], regions, mn)
        maps.append(torch.from_numpy(ranked).float())
        counts.append(len(order))
    return MethodOutput(maps=torch.stack(maps).to(images.device),
                        params={"base": base, "n_regions": torch.tensor(counts)})
