"""Grad-CAM (Selvaraju et al. 2017) for CNN stages and for ViT patch tokens.

Hooks come only from ``workbench.capture.record_outputs``; gradients are taken with
``torch.autograd.grad`` w.r.t. the recorded activation, so the backward stops there (cheaper
than a full backward) and parameter ``.grad`` fields are never written.

Default layer (``layer=None``):

* ViT (a timm model with ``blocks`` and ``patch_embed``): ``blocks[-1].norm1``, the choice of
  pytorch-grad-cam's ViT tutorial; the prefix (CLS/register) tokens are dropped and the patch
  tokens reshaped to ``(B, D, h, w)``.
* CNN: the deepest stage of ``model.feature_info`` (timm) whose map is at least ``min_side``
  (default 7) pixels on its shorter side, e.g. ResNet-18 at 224 px -> ``layer4`` (7x7), at 64 px
  -> ``layer2`` (8x8) instead of ``layer4`` (2x2), which localises badly on small inputs.
  Without ``feature_info``, the last module with a 4-D output of at least ``min_side``.

A map coarser than ``min_side`` (user-chosen layer or tiny inputs) warns. Maps are
``relu(sum_d w_d A_d)`` with ``w_d`` the mean gradient over positions, upsampled bilinearly.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import record_outputs
from ._core import MethodOutput, register_method, select_target


def is_vit(model: nn.Module) -> bool:
    """True for timm-style vision transformers (``blocks`` + ``patch_embed``)."""
    return hasattr(model, "blocks") and hasattr(model, "patch_embed")


def _named(model: nn.Module, mod: nn.Module) -> str:
    for n, m in model.named_modules():
        if m is mod:
            return n
    raise ValueError("layer is not a submodule of the model.")


def default_cam_layer(model: nn.Module, image_size: tuple[int, int], min_side: int = 7) -> str:
    """Name of the default Grad-CAM layer for ``image_size`` (see the module docstring)."""
    if is_vit(model):
        return _named(model, model.blocks[-1].norm1)
    info = getattr(model, "feature_info", None)
    stages = []
    if info is not None:
        try:
            stages = [(d["module"], int(d["reduction"])) for d in info if d.get("module")]
        except (TypeError, KeyError):
            stages = []
    names = dict(model.named_modules())
    stages = [(n, r) for n, r in stages if n in names]
    if stages:
        side = min(image_size)
        ok = [n for n, r in stages if side // r >= min_side]
        return ok[-1] if ok else stages[0][0]
    return _probe_layer(model, image_size, min_side)


@torch.no_grad()
def _probe_layer(model: nn.Module, image_size: tuple[int, int], min_side: int) -> str:
    p = next(model.parameters())
    in_chans = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
    x = torch.zeros(1, in_chans, *image_size, device=p.device, dtype=p.dtype)
    names = [n for n, m in model.named_modules() if n and not isinstance(m, (nn.Sequential, nn.ModuleList))]
    with record_outputs(model, names, detach=True) as rec:
        model(x)
    order = [n for n in rec if rec[n].ndim == 4]  # insertion order = execution order
    if not order:
        raise ValueError("found no layer with a 4-D (B, C, h, w) output for Grad-CAM; pass layer=.")
    ok = [n for n in order if min(rec[n].shape[-2:]) >= min_side]
    return (ok or order)[-1]


def _tokens_to_grid(t: torch.Tensor, model: nn.Module, image_size: tuple[int, int]) -> torch.Tensor:
    """``(B, N, D)`` tokens -> ``(B, D, h, w)`` patch grid (prefix tokens dropped)."""
    npre = int(getattr(model, "num_prefix_tokens", 1))
    ps = model.patch_embed.patch_size
    ps = (ps, ps) if isinstance(ps, int) else tuple(ps)
    h, w = image_size[0] // ps[0], image_size[1] // ps[1]
    patches = t[:, npre:]
    if patches.shape[1] != h * w:
        raise ValueError(f"layer output has {t.shape[1]} tokens; expected {npre} prefix + {h}x{w} patches.")
    return patches.reshape(t.shape[0], h, w, -1).permute(0, 3, 1, 2)


@register_method("gradcam", own_target=True)
def gradcam(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None, *,
            layer: str | nn.Module | None = None, min_side: int = 7, relu: bool = True) -> MethodOutput:
    """Grad-CAM on a CNN layer or on ViT tokens; map ``(B, H, W)`` >= 0 (``relu=False`` keeps sign).

    Args:
        layer: module name or module; None picks :func:`default_cam_layer`.
        min_side: the smallest useful map side; used by the default rule and the warning.
        relu: clamp negative evidence as in the paper.
    """
    size = tuple(images.shape[-2:])
    name = default_cam_layer(model, size, min_side) if layer is None else (
        layer if isinstance(layer, str) else _named(model, layer))
    with record_outputs(model, [name]) as rec:
        logits = model(images)
    t = select_target(logits, target)
    if name not in rec:
        raise ValueError(f"layer {name!r} was not run by the model's forward; pick another layer.")
    act = rec[name]
    if not act.requires_grad:
        raise ValueError(f"layer {name!r} output does not depend on trainable parameters or inputs; pick another.")
    (grad,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), act)
    if act.ndim == 3 and is_vit(model):
        act, grad = _tokens_to_grid(act, model, size), _tokens_to_grid(grad, model, size)
    if act.ndim != 4:
        raise ValueError(f"layer {name!r} output has shape {tuple(act.shape)}; Grad-CAM needs (B, C, h, w) "
                         "or ViT tokens (B, N, D).")
    weights = grad.mean((2, 3), keepdim=True)
    cam = (weights * act).sum(1)
    if relu:
        cam = cam.clamp_min(0)
    coarse = tuple(cam.shape[-2:])
    if min(coarse) < min_side:
        warnings.warn(
            f"Grad-CAM map at {name!r} is {coarse[0]}x{coarse[1]} for a {size[0]}x{size[1]} input, coarser than "
            f"{min_side} px a side: it will localise poorly; pick an earlier layer (layer=) or use "
            "integrated_gradients.", stacklevel=3)
    up = F.interpolate(cam[:, None].detach(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return MethodOutput(maps=up, target=t, params={"layer": name, "cam_size": coarse})
