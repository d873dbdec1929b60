"""Input checks at the boundary of the concept verbs, in one place (switch to ``workbench._checks``
when it lands). Each raises a ValueError/TypeError saying what was received, what was expected and
what to do."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch


def check_images(images: Any, name: str = "images", in_chans: int | None = None) -> torch.Tensor:
    """A (B, C, H, W) float tensor in [0, 1] (uint8 is scaled), finite."""
    if isinstance(images, Mapping) and "image" in images:
        images = images["image"]
    if not torch.is_tensor(images):
        raise TypeError(f"{name} must be a (B, C, H, W) tensor of images in [0, 1]; got {type(images).__name__}. "
                        "Use dataset.batch(indices)['image'].")
    if images.ndim == 3:
        raise ValueError(f"{name} has shape {tuple(images.shape)}; expected (B, C, H, W). For one image "
                         "use images[None].")
    if images.ndim != 4:
        raise ValueError(f"{name} must be (B, C, H, W); got shape {tuple(images.shape)}.")
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    elif not images.is_floating_point():
        raise TypeError(f"{name} must be float in [0, 1] or uint8; got {images.dtype}.")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is empty (batch of 0 images); pass at least one image.")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN/inf values; clean or drop those images.")
    if in_chans is not None and images.shape[1] != in_chans:
        raise ValueError(f"{name} have {images.shape[1]} channel(s) but the model takes {in_chans}; load the "
                         f"data with channels={in_chans}.")
    return images


def concept_index(names: Sequence[str], key: Any) -> int:
    """Index of concept ``key`` (a name or an int) in ``names``; unknown names list the valid ones."""
    if isinstance(key, bool):
        raise TypeError(f"concept keys are names or indices; got {key!r}.")
    if isinstance(key, int):
        if not -len(names) <= key < len(names):
            raise ValueError(f"concept index {key} is out of range for {len(names)} concepts {list(names)}.")
        return key % len(names)
    if not isinstance(key, str):
        raise TypeError(f"concept keys are names (str) or indices (int); got {type(key).__name__} {key!r}.")
    if key not in names:
        raise ValueError(f"unknown concept {key!r}; valid concepts are {list(names)}.")
    return list(names).index(key)


def check_unit_values(values: torch.Tensor, what: str) -> torch.Tensor:
    """Values in [0, 1] (a probability-like concept value), finite."""
    v = torch.as_tensor(values, dtype=torch.float32)
    if not torch.isfinite(v).all() or (v < 0).any() or (v > 1).any():
        bad = v[~(torch.isfinite(v) & (v >= 0) & (v <= 1))].flatten()[:3].tolist()
        raise ValueError(f"{what} must lie in [0, 1] (0 = absent, 1 = present); got {bad}. Pass probabilities, "
                         "or 'true' to use the true label.")
    return v


def check_concept_labels(concepts: Any, n: int, k: int, what: str = "concept labels") -> torch.Tensor:
    """(n, k) float with values in {[0, 1], NaN}; NaN marks a missing label."""
    if concepts is None:
        raise ValueError(f"{what} are needed but none were given; pass a dataset with concepts (the phantom, a "
                         "folder dataset loaded with concept_columns=) or concepts=(B, K) tensors.")
    c = torch.as_tensor(concepts, dtype=torch.float32)
    if c.shape != (n, k):
        raise ValueError(f"{what} have shape {tuple(c.shape)}; expected ({n}, {k}), one value per image and concept.")
    finite = c[torch.isfinite(c)]
    if torch.isinf(c).any() or (finite < 0).any() or (finite > 1).any():
        raise ValueError(f"{what} must be in [0, 1] (NaN for a missing label); got values from "
                         f"{float(finite.min()) if finite.numel() else 'nan'} to {float(finite.max()) if finite.numel() else 'nan'}.")
    return c


def check_output_path(path: Any) -> None:
    """A path whose parent can be created (checked before work starts)."""
    from pathlib import Path

    p = Path(path)
    if p.exists() and p.is_dir():
        raise ValueError(f"output path {p} is a folder; pass a file path without suffix, e.g. {p / 'figure'}.")
