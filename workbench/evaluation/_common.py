"""Input coercion shared by the evaluation modules (maps, masks, targets)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F


def as_maps(maps: Any) -> torch.Tensor:
    """An ``Attribution`` (``.maps``), tensor or ndarray -> float32 CPU tensor (B, H, W).

    A single (H, W) map becomes (1, H, W); (B, 1, H, W) is squeezed.
    """
    if hasattr(maps, "maps") and not isinstance(maps, (torch.Tensor, np.ndarray)):
        maps = maps.maps
    if isinstance(maps, np.ndarray):
        maps = torch.from_numpy(np.ascontiguousarray(maps))
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"maps must be an Attribution, a torch.Tensor or a numpy array; got {type(maps).__name__}.")
    m = maps.detach().float().cpu()
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"maps must be (B, H, W) (or (H, W)); got shape {tuple(maps.shape)}. "
                         "Sum or average channels first (Attribution.maps already is (B, H, W)).")
    return torch.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)


def _as_mask_tensor(m: Any, name: str) -> torch.Tensor:
    if isinstance(m, np.ndarray):
        m = torch.from_numpy(np.ascontiguousarray(m))
    if not isinstance(m, torch.Tensor):
        raise TypeError(f"mask {name!r} must be a torch.Tensor or numpy array; got {type(m).__name__}.")
    m = m.detach().cpu()
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"mask {name!r} must be (B, H, W) (or (H, W)); got shape {tuple(m.shape)}.")
    return m.bool() if m.dtype == torch.bool else m > 0.5


def split_masks(masks: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, bool]:
    """Normalise masks to ``({name: (B, H, W) bool}, present or None, was_dict)``.

    Accepts a (B, H, W) tensor/ndarray (named ``"mask"``), a dict {structure: (B, H, W)}, or a
    batch dict from ``dataset.batch`` (keys ``"masks"`` and ``"mask_present"``).
    """
    present = None
    if isinstance(masks, Mapping) and "masks" in masks and isinstance(masks["masks"], Mapping):
        present = {k: torch.as_tensor(v).bool().cpu() for k, v in (masks.get("mask_present") or {}).items()}
        masks = masks["masks"]
    if isinstance(masks, Mapping):
        if len(masks) == 0:
            raise ValueError("masks is an empty dict; pass at least one {structure: (B, H, W) bool} entry.")
        return {str(k): _as_mask_tensor(v, str(k)) for k, v in masks.items()}, present, True
    return {"mask": _as_mask_tensor(masks, "mask")}, None, False


def align(maps: torch.Tensor, masks: dict[str, torch.Tensor], resize: bool) -> torch.Tensor:
    """Check that masks match the maps; with ``resize`` bilinearly resize maps to the masks' size."""
    ref = next(iter(masks.values()))
    for k, m in masks.items():
        if m.shape != ref.shape:
            raise ValueError(f"mask {k!r} has shape {tuple(m.shape)} but mask {next(iter(masks))!r} has "
                             f"{tuple(ref.shape)}; all masks must share one (B, H, W) shape.")
    if ref.shape[0] != maps.shape[0]:
        if maps.shape[0] == 1 or ref.shape[0] == 1:
            pass  # broadcast below
        else:
            raise ValueError(f"maps hold {maps.shape[0]} images but the masks {ref.shape[0]}; pass one mask per map.")
    if ref.shape[-2:] != maps.shape[-2:]:
        if not resize:
            raise ValueError(
                f"masks are {tuple(ref.shape[-2:])} pixels but the maps are {tuple(maps.shape[-2:])}; resize the "
                "masks together with the images (workbench.data.transforms.Resize) or pass resize=True to "
                "resample the maps bilinearly to the masks' size.")
        maps = F.interpolate(maps[:, None], size=tuple(ref.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    return maps


def broadcast(maps: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast a single map or a single mask over the other's batch."""
    b = max(maps.shape[0], mask.shape[0])
    return maps.expand(b, *maps.shape[1:]), mask.expand(b, *mask.shape[1:])


def union(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """Union of all masks in the dict, (B, H, W) bool."""
    it = iter(masks.values())
    out = next(it).clone()
    for m in it:
        out |= m
    return out
