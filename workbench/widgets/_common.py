"""Pieces every widget shares (no science here)."""
from __future__ import annotations

import io

import numpy as np


def png_bytes(rgb: np.ndarray, min_size: int = 0) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes, upscaled by pixel repetition to at least ``min_size`` px.

    Widgets show images as ``ipywidgets.Image`` PNG bytes: fast, and testable (the value changes
    when the view changes).
    """
    from PIL import Image

    f = max(1, int(np.ceil(min_size / max(rgb.shape[:2]))))
    if f > 1:
        rgb = np.repeat(np.repeat(rgb, f, 0), f, 1)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
