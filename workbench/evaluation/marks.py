"""Masks of burnt-in marks (calipers, measurement crosses, text, logos) found by their shape.

Ultrasound and radiograph files often carry annotations drawn into the pixels: calipers and crosses
on the lesion, dotted measurement lines, body-marker text. A classifier can learn them as a shortcut
(they are drawn where the sonographer saw a lesion). This detector gives a reproducible mask of them
so the shortcut audit can score relevance on the marks against the lesion.

How: marks are drawn one or two pixels wide, much brighter than the pixels just beside them, and
small, and their strokes run both ways (the two arms of a cross, the strokes of a character). A pixel
is a *horizontal stroke* pixel when it is brighter by more than ``threshold`` (in [0, 1]) than both
pixels ``d`` rows above and below it, a *vertical stroke* pixel likewise across columns; a connected
group of stroke pixels (8-connected) is a mark when its bounding box is at most ``max_size`` pixels
and it holds stroke pixels of both directions (which excludes the long, horizontal bright tissue
boundaries of ultrasound and the speckle, whose grains are several pixels wide). Marks are dilated
by ``dilate`` pixels. Defaults are for 256 px images (``d`` 2, ``max_size`` 18, ``dilate`` 1); other
sizes scale them. Checked by eye on 32 BUSI images (benchmarks/bench_lesions.py, "Shortcut audit"):
it finds most crosses, character groups and logos, misses faint dotted lines and some crosses drawn
over bright tissue, and marks a few bright speckle grains at the skin line.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _one(x: np.ndarray, threshold: float, d: int, max_size: int, dilate: int) -> np.ndarray:
    from scipy import ndimage as ndi

    p = np.pad(x, d, mode="edge")
    h_stroke = x - np.maximum(p[:-2 * d, d:-d], p[2 * d:, d:-d]) > threshold
    v_stroke = x - np.maximum(p[d:-d, :-2 * d], p[d:-d, 2 * d:]) > threshold
    lab, n = ndi.label(h_stroke | v_stroke, structure=np.ones((3, 3)))
    keep = np.zeros(n + 1, dtype=bool)
    for k, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None or max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) > max_size:
            continue
        comp = lab[sl] == k
        keep[k] = bool((h_stroke[sl] & comp).any() and (v_stroke[sl] & comp).any())
    m = keep[lab]
    return ndi.binary_dilation(m, iterations=dilate) if dilate > 0 and m.any() else m


def burnt_in_marks(images: Any, *, threshold: float = 0.2, d: int | None = None, max_size: int | None = None,
                   dilate: int | None = None) -> torch.Tensor:
    """Masks of burnt-in marks for ``(B, C, H, W)`` (or ``(B, H, W)``) images in [0, 1] (uint8: /255).

    Args:
        images: the images (channels are averaged).
        threshold: how much brighter than its neighbours ``d`` px away a stroke pixel is.
        d, max_size, dilate: stroke offset, largest mark (bounding box side) and dilation in pixels;
            None scales the 256 px defaults (2, 18, 1) to the image size.

    Returns:
        ``(B, H, W)`` bool masks.

    Examples:
        >>> img = torch.zeros(1, 1, 128, 128); img[0, 0, 30, 27:34] = 1.0; img[0, 0, 27:34, 30] = 1.0  # a cross
        >>> m = burnt_in_marks(img)
        >>> bool(m[0, 30, 28]), bool(m[0, 5, 5])
        (True, False)
    """
    from .._checks import check_images, check_int, check_number

    x = torch.as_tensor(images) if isinstance(images, np.ndarray) else images
    if isinstance(x, torch.Tensor) and x.ndim == 3:
        x = x.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
    x = check_images(x, allow_uint8=True, single=False)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float().mean(1)
    check_number(threshold, "threshold", low=0.0, high=1.0)
    for value, label in ((d, "d"), (max_size, "max_size")):
        if value is not None:
            check_int(value, label)
    if dilate is not None:
        check_int(dilate, "dilate", minimum=0)
    scale = min(x.shape[-2:]) / 256.0
    d = max(1, round(2 * scale)) if d is None else int(d)
    max_size = max(3, round(18 * scale)) if max_size is None else int(max_size)
    dilate = max(0, round(1 * scale)) if dilate is None else int(dilate)
    arr = x.detach().cpu().numpy()
    return torch.from_numpy(np.stack([_one(a, threshold, d, max_size, dilate) for a in arr]))
