"""Class activation maps for CNN stages and ViT patch tokens: Grad-CAM (Selvaraju et al. 2017),
HiResCAM (Draelos & Carin 2020), LayerCAM (Jiang et al. 2021) and a multi-layer fusion.

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
``relu(sum_d w_d A_d)`` upsampled bilinearly, with ``w_d`` the mean gradient over positions
(Grad-CAM), the gradient at each position (HiResCAM) or its positive part (LayerCAM).
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
    in_chans = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if in_chans is None:
        raise ValueError(f"{type(model).__name__} has no convolution or ViT blocks, so there is no spatial layer for "
                         "Grad-CAM; pass layer=<module name> of a layer with (B, C, h, w) outputs, or use another method.")
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


def _layer_name(model: nn.Module, layer: str | nn.Module | None, size: tuple[int, int], min_side: int) -> str:
    if layer is None:
        return default_cam_layer(model, size, min_side)
    return layer if isinstance(layer, str) else _named(model, layer)


def _activations_and_grads(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None,
                           names: list[str]) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """One forward and one backward (stopping at the shallowest layer): ``(B, D, h, w)`` activations and
    gradients of the target logit at each named layer (ViT tokens reshaped to the patch grid)."""
    size = tuple(images.shape[-2:])
    with record_outputs(model, names) as rec:
        logits = model(images)
    t = select_target(logits, target)
    for name in names:
        if name not in rec:
            raise ValueError(f"layer {name!r} was not run by the model's forward; pick another layer.")
        if not rec[name].requires_grad:
            raise ValueError(f"layer {name!r} output does not depend on trainable parameters or inputs; pick another.")
    acts = [rec[n] for n in names]
    grads = list(torch.autograd.grad(logits.gather(1, t[:, None]).sum(), acts))
    for i, name in enumerate(names):
        if acts[i].ndim == 3 and is_vit(model):
            acts[i], grads[i] = _tokens_to_grid(acts[i], model, size), _tokens_to_grid(grads[i], model, size)
        if acts[i].ndim != 4:
            raise ValueError(f"layer {name!r} output has shape {tuple(acts[i].shape)}; a CAM needs (B, C, h, w) "
                             "or ViT tokens (B, N, D).")
    return [a.detach() for a in acts], [g.detach() for g in grads], t


def _weighted(act: torch.Tensor, grad: torch.Tensor, kind: str) -> torch.Tensor:
    """The CAM of one layer before ReLU, ``(B, h, w)``."""
    if kind == "gradcam":  # Selvaraju et al. 2017: channel weights = mean gradient over positions
        return (grad.mean((2, 3), keepdim=True) * act).sum(1)
    if kind == "hirescam":  # Draelos & Carin 2020: gradient x activation per position, summed over channels
        return (grad * act).sum(1)
    if kind == "layercam":  # Jiang et al. 2021: positive gradients as per-position weights
        return (grad.clamp_min(0) * act).sum(1)
    raise ValueError(f"cam {kind!r} is not one of 'gradcam', 'hirescam', 'layercam'.")


def _single_cam(kind: str, model: nn.Module, images: torch.Tensor, target: torch.Tensor | None,
                layer: str | nn.Module | None, min_side: int, relu: bool) -> MethodOutput:
    size = tuple(images.shape[-2:])
    name = _layer_name(model, layer, size, min_side)
    (act,), (grad,), t = _activations_and_grads(model, images, target, [name])
    cam = _weighted(act, grad, kind)
    if relu:
        cam = cam.clamp_min(0)
    coarse = tuple(cam.shape[-2:])
    if min(coarse) < min_side:
        warnings.warn(
            f"{kind} map at {name!r} is {coarse[0]}x{coarse[1]} for a {size[0]}x{size[1]} input, coarser than "
            f"{min_side} px a side: it will localise poorly; pick an earlier layer (layer=) or use "
            "integrated_gradients.", stacklevel=4)
    up = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return MethodOutput(maps=up, target=t, params={"layer": name, "cam_size": coarse})


@register_method("gradcam", own_target=True)
def gradcam(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None, *,
            layer: str | nn.Module | None = None, min_side: int = 7, relu: bool = True) -> MethodOutput:
    """Grad-CAM on a CNN layer or on ViT tokens; map ``(B, H, W)`` >= 0 (``relu=False`` keeps sign).

    Args:
        layer: module name or module; None picks :func:`default_cam_layer`.
        min_side: the smallest useful map side; used by the default rule and the warning.
        relu: clamp negative evidence as in the paper.
    """
    return _single_cam("gradcam", model, images, target, layer, min_side, relu)


@register_method("hirescam", own_target=True)
def hirescam(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None, *,
             layer: str | nn.Module | None = None, min_side: int = 7, relu: bool = True) -> MethodOutput:
    """HiResCAM (Draelos & Carin 2020): ``relu(sum_d grad_d * A_d)`` position by position.

    Grad-CAM averages each channel's gradient over positions before weighting, so a channel that
    fires on the lesion and elsewhere lights up everywhere; HiResCAM keeps the gradient per position
    (for a CNN ending in global average pooling and one linear layer it is exactly the layer's
    contribution to the logit). Same layers and arguments as :func:`gradcam`; one forward + backward.
    Equals pytorch-grad-cam's ``HiResCAM`` (tested).
    """
    return _single_cam("hirescam", model, images, target, layer, min_side, relu)


@register_method("layercam", own_target=True)
def layercam(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None, *,
             layer: str | nn.Module | None = None, min_side: int = 7, relu: bool = True) -> MethodOutput:
    """LayerCAM (Jiang et al. 2021): ``relu(sum_d relu(grad_d) * A_d)`` position by position.

    Positive gradients only, per position: usable on shallow, fine layers where Grad-CAM's averaged
    weights cancel out. Same layers and arguments as :func:`gradcam`; one forward + backward. Equals
    pytorch-grad-cam's ``LayerCAM`` (tested). Several layers at once: ``"cam_fusion"``.
    """
    return _single_cam("layercam", model, images, target, layer, min_side, relu)


def fusion_layers(model: nn.Module, image_size: tuple[int, int], min_side: int = 4, depth: int = 3) -> list[str]:
    """Default layers for :func:`cam_fusion`: the ``depth`` deepest stages whose map is at least
    ``min_side`` px (timm ``feature_info``; ResNet-18 at 128 px: layer1-layer3, 32/16/8 px; at 224 px
    layer2-layer4), or for a ViT the ``norm1`` of the last ``depth`` blocks (same grid, different depth)."""
    if is_vit(model):
        return [_named(model, b.norm1) for b in list(model.blocks)[-depth:]]
    info = getattr(model, "feature_info", None)
    names = dict(model.named_modules())
    stages = []
    if info is not None:
        try:
            stages = [(d["module"], int(d["reduction"])) for d in info if d.get("module") in names]
        except (TypeError, KeyError):
            stages = []
    if not stages:
        return [default_cam_layer(model, image_size, min_side)]
    ok = [n for n, r in stages if min(image_size) // r >= min_side] or [stages[0][0]]
    return ok[-depth:]


@register_method("cam_fusion", own_target=True)
def cam_fusion(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None, *,
               layers: list[str] | None = None, cam: str = "layercam", fusion: str = "max", gamma: float = 2.0,
               min_side: int = 4) -> MethodOutput:
    """Class activation maps of several layers fused into one map (one forward + one backward).

    Deep layers know *what* (class-specific, coarse), shallow ones *where* (fine, less specific);
    fusing them gives maps at the resolution of the shallowest layer that still follow the class.

    Args:
        layers: module names; None: :func:`fusion_layers` (three stages of a CNN, three last ViT blocks).
        cam: the per-layer map: ``"layercam"`` (default, the paper that proposed the fusion),
            ``"hirescam"`` or ``"gradcam"``.
        fusion: ``"max"``: LayerCAM's (Jiang et al. 2021, Sec. III-C): each map divided by its
            maximum, the shallower ones rescaled by ``tanh(gamma * map)`` (they are weaker), upsampled,
            element-wise maximum. ``"mean"``: pytorch-grad-cam's aggregation for a list of target layers
            (each map min-max scaled, upsampled, averaged; equal to it, tested).
        gamma: LayerCAM's scaling of shallow maps.
        min_side: smallest map side a default layer may have.

    Map ``(B, H, W)`` in [0, 1]; ``params["layers"]`` lists the layers used.
    """
    size = tuple(images.shape[-2:])
    names = fusion_layers(model, size, min_side) if layers is None else [
        _layer_name(model, n, size, min_side) for n in layers]
    if fusion not in ("max", "mean"):
        raise ValueError(f"fusion {fusion!r} is not 'max' or 'mean'.")
    acts, grads, t = _activations_and_grads(model, images, target, names)
    deepest = max(range(len(names)), key=lambda i: (-acts[i].shape[-1] * acts[i].shape[-2], i))
    ups = []
    for i, (a, g) in enumerate(zip(acts, grads)):
        c = _weighted(a, g, cam).clamp_min(0)
        flat = c.flatten(1)
        if fusion == "max":
            c = c / flat.amax(1).clamp_min(1e-12).view(-1, 1, 1)
            if i != deepest:
                c = torch.tanh(gamma * c)
        else:
            lo = flat.amin(1).view(-1, 1, 1)
            c = (c - lo) / ((flat.amax(1).view(-1, 1, 1) - lo) + 1e-7)
        ups.append(F.interpolate(c[:, None], size=size, mode="bilinear", align_corners=False)[:, 0])
    stack = torch.stack(ups)
    fused = stack.amax(0) if fusion == "max" else stack.clamp_min(0).mean(0)
    return MethodOutput(maps=fused, target=t, params={"layers": tuple(names), "cam": cam, "fusion": fusion})
