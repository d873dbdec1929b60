"""burnt_in_marks: crosses and characters found, long bright lines and grainy texture left alone."""
from __future__ import annotations

import pytest
import torch

from workbench.evaluation import burnt_in_marks


def _scene() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    # ultrasound-like grain: 4 px blobs, upsampled smoothly, and a long bright tissue boundary
    x = torch.nn.functional.interpolate(torch.rand(1, 1, 64, 64, generator=g), size=256, mode="bilinear",
                                        align_corners=False)[0, 0] * 0.5
    x[150:153, 20:240] = 0.95  # a long horizontal boundary (3 px thick)
    x[60, 50:61] = 1.0  # a caliper cross, arms 11 px
    x[55:66, 55] = 1.0
    x[200:207, 100] = 1.0  # a character-like stroke group: an 'L'
    x[206, 100:105] = 1.0
    return x[None, None]


def test_marks_are_found_and_tissue_is_not():
    m = burnt_in_marks(_scene())[0]
    assert m.shape == (256, 256) and m.dtype == torch.bool
    assert m[60, 52] and m[57, 55] and m[203, 100]  # the cross's arms, the character
    assert not m[151, 30:230].any()  # the long boundary
    assert m.float().mean() < 0.01  # grain left alone (only the marks and their dilation)


def test_marks_scale_with_the_image_and_take_uint8_and_channels():
    x = _scene()
    small = torch.nn.functional.max_pool2d(x, 2)  # 128 px: strokes stay thin
    m = burnt_in_marks((small.repeat(1, 3, 1, 1) * 255).to(torch.uint8))[0]
    assert m[30, 26] and not m[75, 20:110].any()
    with pytest.raises(ValueError, match="expected"):
        burnt_in_marks(torch.rand(8, 8))
