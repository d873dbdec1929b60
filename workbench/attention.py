"""Attention maps of timm vision transformers and the maps derived from them.

``attention_maps(model, images)`` captures the post-softmax attention of every layer and head
(``workbench.capture`` switches the selected modules to timm's non-fused path for one forward
and restores everything afterwards). Derived ``(B, h, w)`` maps:

- :func:`cls_attention`: attention from the readout token(s) to each patch, per layer/head;
- :func:`rollout`: attention rollout (Abnar & Zuidema 2020);
- :func:`chefer_relevance`: gradient-weighted relevance (Chefer, Gur & Wolf 2021);
- :func:`upsample`: to the image size.

Token layout (timm): prefix tokens first (CLS, then register or distillation tokens), then the
``h * w`` patches in row-major order. The *readout tokens* are the tokens whose output the
classifier reads: the CLS token (plus the distillation token of DeiT-distilled models, whose
two heads are averaged at inference). Models without a CLS readout (``class_token=False`` or
``global_pool="avg"``) have none; there the derived maps use the mean attention/relevance each
patch *receives* from all patch queries.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workbench._checks import check_choice, check_images
from workbench._image import size_pair
from workbench._device import model_on
from workbench.capture import SUPPORTED_ATTENTION, StopForward, attention_modules, capture_attention, select_layers

__all__ = ["AttentionMaps", "attention_maps", "cls_attention", "rollout", "chefer_relevance", "upsample"]


@dataclass(frozen=True, eq=False)
class AttentionMaps:
    """Post-softmax attention of a ViT for a batch of images.

    Attributes:
        attentions: one ``(B, heads, N, N)`` tensor per captured layer (rows sum to 1), on the
            model's device; ``N = num_prefix_tokens + h * w``.
        grid: patch grid ``(h, w)``.
        num_prefix_tokens: CLS/register/distillation tokens before the patches.
        layer_names: module names, e.g. ``("blocks.0.attn", ...)``.
        image_size: ``(H, W)`` of the images.
        dcmm: None, or per layer a dict ``{"pi": (B, Hd, N, K), "theta": (B, Hd, N),
            "block": (Hd, K, K), "lam": (Hd,)}`` for DCMM layers (None for other layers);
            ``pi``/``theta`` cover all N tokens (slice ``[..., num_prefix_tokens:, :]`` for patches).
        readout_tokens: indices of the tokens the classifier reads (``(0,)`` for CLS,
            ``(0, 1)`` for DeiT-distilled, ``()`` for mean-pooled models).
    """

    attentions: tuple[torch.Tensor, ...]
    grid: tuple[int, int]
    num_prefix_tokens: int
    layer_names: tuple[str, ...]
    image_size: tuple[int, int]
    dcmm: tuple[dict[str, torch.Tensor] | None, ...] | None = None
    readout_tokens: tuple[int, ...] = (0,)

    @property
    def num_layers(self) -> int:
        return len(self.attentions)

    @property
    def num_heads(self) -> int:
        return int(self.attentions[0].shape[1])

    @property
    def num_tokens(self) -> int:
        return int(self.attentions[0].shape[-1])

    def plot(self, ax: Any = None, **style: Any) -> Any:
        """Per layer/head attention grid (delegates to ``workbench.viz.attention_grid``)."""
        from workbench.viz import attention_grid

        return attention_grid(self, ax=ax, **style)


# ------------------------------------------------------------------------------------------
# model / input checks
# ------------------------------------------------------------------------------------------
def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _prepare(model: nn.Module, images: torch.Tensor, device: Any) -> tuple[nn.Module, torch.Tensor]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module; got {type(model).__name__}.")
    if not attention_modules(model):
        raise ValueError(f"{type(model).__name__} has no supported attention modules. Attention maps need a timm "
                         f"vision transformer (vit_*, deit_*, eva_*; workbench.models.create('vit_tiny', ...)) or "
                         f"attention modules of these types: {', '.join(SUPPORTED_ATTENTION)}.")
    # shape, dtype, NaN/inf, [0, 1] range, channels and size against the model (workbench._checks)
    images = check_images(images, model)
    model, dev = model_on(model, device)  # never move the caller's model
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), images.dtype)
    return model, images.to(dev, dtype)


def _model_info(model: nn.Module, images: torch.Tensor) -> tuple[tuple[int, int], int | None, tuple[int, ...]]:
    """Validate images against the model's patch embedding; return (grid, prefix tokens, readout tokens)."""
    pe = getattr(model, "patch_embed", None)
    H, W = int(images.shape[-2]), int(images.shape[-1])
    if pe is None or not hasattr(pe, "patch_size"):
        raise ValueError(f"{type(model).__name__} has no timm patch_embed; attention maps need a timm ViT-style model.")
    proj = getattr(pe, "proj", None)
    in_chans = getattr(proj, "in_channels", None)
    if in_chans is not None and images.shape[1] != in_chans:
        raise ValueError(f"images have {images.shape[1]} channels (shape {tuple(images.shape)}) but the model expects "
                         f"{in_chans}: pass (B, {in_chans}, H, W) images (e.g. workbench.data.transforms.ToChannels).")
    ph, pw = _pair(pe.patch_size)
    img_size = getattr(pe, "img_size", None)
    dynamic = bool(getattr(model, "dynamic_img_size", False) or getattr(pe, "dynamic_img_size", False))
    strict = bool(getattr(pe, "strict_img_size", True))
    if img_size is not None and strict and not dynamic and (H, W) != _pair(img_size):
        eh, ew = _pair(img_size)
        raise ValueError(f"images have shape {tuple(images.shape)} but the model was built for {eh}x{ew}: pass "
                         f"(B, {in_chans or 'C'}, {eh}, {ew}) images (resize them, e.g. workbench.data.transforms.Resize).")
    pad = bool(getattr(pe, "dynamic_img_pad", False))
    if not pad and (H % ph or W % pw):
        raise ValueError(f"image size {H}x{W} is not divisible by the patch size {ph}x{pw}; resize the images.")
    grid = (math.ceil(H / ph), math.ceil(W / pw))
    prefix = getattr(model, "num_prefix_tokens", None)
    pool = getattr(model, "global_pool", "token")
    readout: tuple[int, ...] = ()
    if getattr(model, "cls_token", None) is not None and pool == "token":
        readout = (0, 1) if getattr(model, "dist_token", None) is not None else (0,)
    return grid, prefix, readout


def _select_layers(model: nn.Module, layers: Any) -> list[str]:
    return select_layers(attention_modules(model), layers)


def _check_attention(name: str, a: torch.Tensor, batch: int, tokens: int | None) -> None:
    if a.ndim != 4 or a.shape[0] != batch or a.shape[-1] != a.shape[-2] or (tokens is not None and a.shape[-1] != tokens):
        raise ValueError(f"captured attention of {name} has shape {tuple(a.shape)}; expected (B={batch}, heads, N, N)"
                         + (f" with N={tokens}" if tokens is not None else "") + ". This attention type is not supported.")
    if torch.isnan(a.sum()):  # one reduction, no boolean copy of the maps
        raise ValueError(f"attention of {name} contains NaN: the model produces NaN activations for these images "
                         "(check the weights and inputs).")


# ------------------------------------------------------------------------------------------
# capture
# ------------------------------------------------------------------------------------------
def attention_maps(model: nn.Module, images: torch.Tensor, *, layers: Sequence[int | str] | int | str | None = None,
                   device: Any = None) -> AttentionMaps:
    """Post-softmax attention of all (or the selected) layers and heads.

    The model runs once in eval mode without gradients; its fused-attention flags, train/eval
    mode and weights are unchanged afterwards and no hook is left behind.

    Args:
        model: a timm ViT (CLS or not, register/distillation tokens, any grid size) or a model
            with supported attention modules (``workbench.capture.SUPPORTED_ATTENTION``).
        images: ``(B, C, H, W)`` floats in [0, 1] of the size the model was built for.
        layers: indices into the attention layers (negative allowed) or names such as
            ``"blocks.3.attn"`` / ``"blocks.3"``; None = all.
        device: where to run (default: the model's device; another device runs a copy).

    Returns:
        :class:`AttentionMaps` with ``attentions[l]`` of shape ``(B, heads, N, N)``.

    Examples:
        >>> import timm
        >>> m = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=2)
        >>> maps = attention_maps(m, torch.rand(2, 3, 32, 32))
        >>> tuple(maps.attentions[0].shape), maps.grid
        ((2, 3, 17, 17), (4, 4))
    """
    model, images = _prepare(model, images, device)
    names = _select_layers(model, layers)
    grid, prefix, readout = _model_info(model, images)
    with capture_attention(model, names, stop_early=True) as rec, torch.no_grad():
        try:
            model(images)
        except StopForward:  # everything requested was recorded: skip the rest of the forward
            pass
    tokens = None if prefix is None else prefix + grid[0] * grid[1]
    missing = [n for n in names if n not in rec.attentions]
    if missing:
        raise ValueError(f"no attention was recorded for {missing}; their forward did not run the softmax path.")
    attns = tuple(rec.attentions[n] for n in names)
    for n, a in zip(names, attns):
        _check_attention(n, a, images.shape[0], tokens)
    if prefix is None:
        prefix = int(attns[0].shape[-1]) - grid[0] * grid[1]
    dcmm = None
    if rec.memberships:
        mods = attention_modules(model)
        dcmm = tuple(_dcmm_entry(mods[n], rec.memberships[n]) if n in rec.memberships else None for n in names)
    return AttentionMaps(attentions=attns, grid=grid, num_prefix_tokens=int(prefix), layer_names=tuple(names),
                         image_size=(int(images.shape[-2]), int(images.shape[-1])), dcmm=dcmm,
                         readout_tokens=readout)


def _dcmm_entry(mod: nn.Module, memb: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    entry = {"pi": memb[0], "theta": memb[1]}
    with torch.no_grad():
        if hasattr(mod, "block"):
            entry["block"] = mod.block().detach().clone()
        if hasattr(mod, "lam"):
            entry["lam"] = mod.lam.detach().clone()
    return entry


# ------------------------------------------------------------------------------------------
# derived maps
# ------------------------------------------------------------------------------------------
def _readout(mat: torch.Tensor, prefix: int, readout: Sequence[int], grid: tuple[int, int]) -> torch.Tensor:
    """(B, N, N) token-to-token matrix -> (B, h, w): readout rows (or mean over patch rows) over patch columns."""
    rows = mat[:, list(readout)] if readout else mat[:, prefix:]
    return rows[:, :, prefix:].mean(dim=1).reshape(mat.shape[0], *grid)


def _maybe_upsample(m: torch.Tensor, flag: Any, image_size: tuple[int, int]) -> torch.Tensor:
    if flag is False or flag is None:
        return m
    size = image_size if flag is True else _pair(flag)
    return upsample(m, size)


def cls_attention(maps: AttentionMaps, layer: int = -1, head: int | None = None,
                  upsample: bool | tuple[int, int] = False) -> torch.Tensor:
    """Attention from the readout token(s) to every patch.

    For models without a CLS readout (mean pooling) this is the mean attention each patch
    receives from all patch queries.

    Args:
        maps: from :func:`attention_maps`.
        layer: index into ``maps.attentions``.
        head: one head, or None for the mean over heads.
        upsample: False, True (to ``maps.image_size``) or an ``(H, W)`` size.

    Returns:
        ``(B, h, w)`` (or ``(B, H, W)`` when upsampled).
    """
    _check_maps(maps)
    if not -maps.num_layers <= layer < maps.num_layers:
        raise ValueError(f"layer {layer} out of range for {maps.num_layers} captured layers.")
    a = maps.attentions[layer]
    if head is None:
        a = a.mean(dim=1)
    else:
        if not -a.shape[1] <= head < a.shape[1]:
            raise ValueError(f"head {head} out of range: the layer has {a.shape[1]} heads.")
        a = a[:, head]
    out = _readout(a.float(), maps.num_prefix_tokens, maps.readout_tokens, maps.grid)
    return _maybe_upsample(out, upsample, maps.image_size)


_FUSIONS = ("mean", "max", "min")


def rollout(maps: AttentionMaps, head_fusion: str = "mean", discard_ratio: float = 0.0, start_layer: int = 0,
            upsample: bool | tuple[int, int] = False) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020).

    Per layer: fuse heads, optionally zero the lowest ``discard_ratio`` share of entries, add
    the identity (residual path), row-normalise; multiply across layers (``R = A_L ... A_s``);
    read the readout row(s) over the patch columns. Layers are the captured ones, in order.

    Args:
        maps: from :func:`attention_maps` (all layers, ideally).
        head_fusion: "mean", "max" or "min" over heads.
        discard_ratio: share in [0, 1) of the smallest fused attention entries set to 0.
        start_layer: first captured layer included.
        upsample: False, True (to the image size) or an ``(H, W)`` size.

    Returns:
        ``(B, h, w)`` rollout map (not normalised).
    """
    _check_maps(maps)
    if head_fusion not in _FUSIONS:
        raise ValueError(f"head_fusion {head_fusion!r} is not one of {_FUSIONS}.")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1); got {discard_ratio}.")
    if not -maps.num_layers <= start_layer < maps.num_layers:
        raise ValueError(f"start_layer {start_layer} out of range for {maps.num_layers} captured layers.")
    result = None
    for a in maps.attentions[start_layer:]:
        a = a.float()
        a = a.mean(1) if head_fusion == "mean" else a.amax(1) if head_fusion == "max" else a.amin(1)
        if discard_ratio > 0:
            flat = a.reshape(a.shape[0], -1)
            k = int(flat.shape[1] * discard_ratio)
            if k:
                idx = flat.topk(k, dim=1, largest=False).indices
                a = flat.scatter(1, idx, 0.0).reshape_as(a)
        a = a + torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else torch.bmm(a, result)
    out = _readout(result, maps.num_prefix_tokens, maps.readout_tokens, maps.grid)
    return _maybe_upsample(out, upsample, maps.image_size)


def _check_maps(maps: Any) -> None:
    if not isinstance(maps, AttentionMaps):
        raise TypeError(f"maps must be an AttentionMaps result (workbench.attention_maps(model, images)); got "
                        f"{type(maps).__name__}.")


def _resolve_target(target: Any, logits: torch.Tensor) -> torch.Tensor:
    b, c = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    if isinstance(target, int) and not isinstance(target, bool):
        t = torch.full((b,), target, dtype=torch.long, device=logits.device)
    else:
        t = torch.as_tensor(target, device=logits.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,) or t.is_floating_point():
            raise ValueError(f"target must be None, an int or {b} class indices (one per image); got shape "
                             f"{tuple(t.shape)} dtype {t.dtype}.")
        t = t.long()
    if (t < 0).any() or (t >= c).any():
        raise ValueError(f"target {t.tolist()} out of range: the model has {c} outputs (0..{c - 1}).")
    return t


def chefer_relevance(model: nn.Module, images: torch.Tensor, target: Any = None, *, device: Any = None,
                     start_layer: int = 0, upsample: bool | tuple[int, int] = False) -> torch.Tensor:
    """Gradient-weighted attention relevance (Chefer, Gur & Wolf, CVPR 2021).

    One forward and one backward (to the attention probabilities only; parameter ``.grad`` is
    never touched). Per layer ``A_bar = mean_heads(clamp(dy_t/dA * A, 0))``, then
    ``R <- R + A_bar @ R`` starting from the identity; the readout row(s) of ``R`` over the
    patch columns give the map (mean over patch rows for mean-pooled models).

    Args:
        model: a timm ViT (see :func:`attention_maps`).
        images: ``(B, C, H, W)`` floats in [0, 1].
        target: the logit explained: None (the predicted class), an int, or ``(B,)`` indices.
        device: where to run (default: the model's device).
        start_layer: first attention layer included.
        upsample: False, True (to the image size) or an ``(H, W)`` size.

    Returns:
        ``(B, h, w)`` non-negative relevance.
    """
    model, images = _prepare(model, images, device)
    names = _select_layers(model, None)
    if not -len(names) <= start_layer < len(names):
        raise ValueError(f"start_layer {start_layer} out of range for {len(names)} attention layers.")
    grid, prefix, readout = _model_info(model, images)
    with capture_attention(model, names, grad=True) as rec, torch.enable_grad():
        logits = model(images)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        if logits.ndim != 2:
            raise ValueError(f"model output has shape {tuple(logits.shape)}; expected (B, classes) logits.")
        t = _resolve_target(target, logits)
        attns = [rec.attentions[n] for n in names][start_layer:]
        for n, a in zip(names[start_layer:], attns):
            _check_attention(n, a, images.shape[0], None)
        grads = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), attns)
    if prefix is None:
        prefix = int(attns[0].shape[-1]) - grid[0] * grid[1]
    with torch.no_grad():
        n_tok = attns[0].shape[-1]
        rel = torch.eye(n_tok, device=images.device).expand(images.shape[0], n_tok, n_tok)
        for a, g in zip(attns, grads):
            cam = (g.float() * a.detach().float()).clamp(min=0).mean(dim=1)
            rel = rel + torch.bmm(cam, rel)
        out = _readout(rel, prefix, readout, grid)
    return _maybe_upsample(out, upsample, (int(images.shape[-2]), int(images.shape[-1])))


_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")


def upsample(maps: torch.Tensor, size: int | tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize ``(B, h, w)`` (or ``(h, w)``) maps to ``size`` = ``(H, W)``.

    Examples:
        >>> upsample(torch.rand(2, 4, 4), (32, 32)).shape
        torch.Size([2, 32, 32])
    """
    if not isinstance(maps, torch.Tensor) or maps.ndim not in (2, 3):
        raise ValueError(f"maps must be a (B, h, w) or (h, w) tensor; got "
                         f"{tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__}.")
    check_choice(mode, "mode", _MODES)
    size = size_pair(size, "size")
    squeeze = maps.ndim == 2
    x = maps[None, None] if squeeze else maps[:, None]
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(x.float(), size=size, mode=mode, **kw)[:, 0]
    return out[0] if squeeze else out
