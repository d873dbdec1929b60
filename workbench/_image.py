"""Small image operations shared by attribution, evaluation and the audit (torch, batched)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def size_pair(size: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    """``(H, W)`` from an int or a pair; ``name`` is the argument named in the error."""
    if isinstance(size, int) and not isinstance(size, bool):
        out = (size, size)
    elif isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2:
        out = (int(size[0]), int(size[1]))
    else:
        raise TypeError(f"{name} must be an int or an (H, W) pair; got {size!r}.")
    if min(out) < 1:
        raise ValueError(f"{name} must be positive; got {size!r}.")
    return out


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` with reflect padding (3 sigma taps).

    Own code rather than torchvision's ``gaussian_blur``: that one needs an odd kernel size, pads
    by the full radius (fails on images smaller than the kernel) and is not batched per channel
    group the way the attribution baselines use it.
    """
    if sigma <= 0:
        return x
    r = max(1, int(round(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad_h, pad_w = min(r, x.shape[-2] - 1), min(r, x.shape[-1] - 1)
    y = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect" if pad_w > 0 else "replicate")
    y = F.conv2d(y, k[r - pad_w: r + pad_w + 1].view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    y = F.pad(y, (0, 0, pad_h, pad_h), mode="reflect" if pad_h > 0 else "replicate")
    return F.conv2d(y, k[r - pad_h: r + pad_h + 1].view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


REFERENCES = ("zero", "mean", "blur")


def reference_like(images: torch.Tensor, spec: object, *, blur_divisor: float = 16, name: str = "baseline") -> torch.Tensor:
    """A reference image for ``images`` ``(B, C, H, W)``: a number (constant), ``"zero"``,
    ``"mean"`` (per-image channel mean), ``"blur"`` (Gaussian, sigma = H / ``blur_divisor``, at
    least 1 px) or a tensor broadcastable to ``images``. ``name`` labels the argument in errors.

    One helper behind attribution baselines, deletion/insertion baselines and the audit's fills.
    """
    if isinstance(spec, torch.Tensor):
        return spec.to(images.device, images.dtype).expand_as(images).contiguous()
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return torch.full_like(images, float(spec))
    if spec == "zero":
        return torch.zeros_like(images)
    if spec == "mean":
        return images.mean(dim=(-2, -1), keepdim=True).expand_as(images).contiguous()
    if spec == "blur":
        return gaussian_blur(images, max(1.0, images.shape[-2] / blur_divisor))
    raise ValueError(f"{name} must be one of {REFERENCES}, a number or a tensor; got {spec!r}.")
