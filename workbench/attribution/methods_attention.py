"""Attention-based maps for ViTs, wrapping ``workbench.attention`` (attention rollout and
Chefer et al.'s gradient-weighted relevance) and upsampling the patch grid to the image.

Rollout is class-agnostic (``target`` is only recorded); Chefer relevance explains ``target``.
Both maps are >= 0 and have no per-channel ``raw``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._core import MethodOutput, register_method
from .methods_cam import is_vit


def _attention():
    try:
        from .. import attention
    except ImportError as e:  # pragma: no cover - depends on the attention module being present
        raise ImportError("attention-based attribution needs workbench.attention, which failed to import: "
                          f"{e}") from e
    return attention


def _check_vit(model: nn.Module, name: str) -> None:
    if not is_vit(model):
        raise ValueError(f"method {name!r} needs a vision transformer (timm ViT with blocks/patch_embed), got "
                         f"{type(model).__name__}; use 'gradcam' or 'integrated_gradients' for CNNs.")


def _up(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(m[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


@register_method("attention_rollout")
def attention_rollout(model: nn.Module, images: torch.Tensor, target: torch.Tensor, **kw: Any) -> MethodOutput:
    """Attention rollout (Abnar & Zuidema 2020) of the CLS token over all layers; ``**kw`` go to
    ``workbench.attention.rollout`` (e.g. ``head_fusion``, ``discard_ratio`` where supported)."""
    _check_vit(model, "attention_rollout")
    att = _attention()
    maps = att.attention_maps(model, images)
    r = att.rollout(maps, **kw)
    return MethodOutput(maps=_up(r.to(images.device), tuple(images.shape[-2:])))


@register_method("chefer")
def chefer(model: nn.Module, images: torch.Tensor, target: torch.Tensor, **kw: Any) -> MethodOutput:
    """Gradient-weighted attention relevance (Chefer et al. 2021) for ``target``; ``**kw`` go to
    ``workbench.attention.chefer_relevance``."""
    _check_vit(model, "chefer")
    r = _attention().chefer_relevance(model, images, target=target, **kw)
    return MethodOutput(maps=_up(r.to(images.device), tuple(images.shape[-2:])))
