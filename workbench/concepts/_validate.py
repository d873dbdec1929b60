"""Input checks at the boundary of the concept verbs: images, models and common arguments through
``workbench._checks`` (the package's one validation layer); the checks only concepts need (concept
names and values, concept labels) here. Each raises a ValueError/TypeError saying what was received,
what was expected and what to do."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from workbench._checks import check_choice, check_int, check_model, check_number, check_output_path  # noqa: F401


def check_images(images: Any, name: str = "images", model: nn.Module | None = None) -> torch.Tensor:
    """A (B, C, H, W) float tensor in [0, 1] (uint8 is scaled; a batch dict gives its "image"), finite,
    fitting ``model`` (a CBM is checked against its backbone)."""
    from workbench._checks import check_images as _check

    if isinstance(images, Mapping) and "image" in images:
        images = images["image"]
    if model is not None:
        model = getattr(model, "backbone", model)
    x = _check(images, model, name=name, allow_uint8=True, single=False)
    return x.float() / 255.0 if x.dtype == torch.uint8 else x


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
