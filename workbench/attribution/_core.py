"""The ``attribute`` verb, the ``Attribution`` result and the method registry.

A method is one registered function ``fn(model, images, target, **kw)`` returning either a raw
per-channel attribution ``(B, C, H, W)``, a map ``(B, H, W)``, or a :class:`MethodOutput` (raw
and/or maps, the target actually used, extra params such as a convergence delta). The verb
does everything else once: input checks, device and dtype, eval mode (restored afterwards),
target resolution and validation, batching, shape checks, and moving results back.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from .._checks import check_images, check_model
from .._device import model_on
from .._registry import Registry

METHODS: Registry[Callable[..., Any]] = Registry("attribution method")

# Keyword arguments the verb itself passes to methods that declare them.
_VERB_KW = ("internal_batch_size", "progress")


class MethodOutput(NamedTuple):
    """What a method may return instead of a bare tensor.

    Attributes:
        raw: ``(B, C, H, W)`` per-channel attribution, or None.
        maps: ``(B, H', W')`` map (upsampled by the verb when coarser), or None to use
            ``raw.sum(1)``.
        target: ``(B,)`` classes the method explained (for methods that pick the predicted class
            from their own forward pass), or None when the verb resolved it.
        params: extra values to store in ``Attribution.params`` (e.g. ``delta``).
    """

    raw: torch.Tensor | None = None
    maps: torch.Tensor | None = None
    target: torch.Tensor | None = None
    params: dict[str, Any] = {}


def register_method(name: str, *, own_target: bool = False, chunk: bool = True) -> Callable:
    """Register an attribution method under ``name``.

    Args:
        name: the name passed as ``attribute(..., method=name)``.
        own_target: the method runs its own forward pass and accepts ``target=None`` (it then
            explains the predicted class and returns the classes in ``MethodOutput.target``).
            Saves the extra forward the verb would otherwise spend on finding the prediction.
        chunk: the verb splits the batch into chunks of ``internal_batch_size`` images (for
            methods whose cost is one or two passes per image). Methods that expand each
            image into many model inputs (integrated gradients, occlusion, SHAP) take
            ``internal_batch_size`` themselves and use ``chunk=False``.

    Examples:
        A method that attributes by the input's sign (``raw`` (B, C, H, W); map = channel sum)::

            @register_method("sign")
            def sign(model, images, target):
                return torch.sign(images)
    """

    def deco(fn: Callable) -> Callable:
        fn._wb_own_target = own_target  # type: ignore[attr-defined]
        fn._wb_chunk = chunk  # type: ignore[attr-defined]
        METHODS.register(name, fn)
        return fn

    return deco


@dataclass(frozen=True)
class Attribution:
    """Result of :func:`attribute`.

    Attributes:
        maps: ``(B, H, W)`` float maps at the input's spatial size, signed (positive = evidence
            for ``target``). Gradient methods sum ``raw`` over channels; see each method.
        raw: ``(B, C, H, W)`` per-channel values, or None for maps-only methods (Grad-CAM,
            attention).
        method: the registered method name.
        target: ``(B,)`` long, the explained class per image.
        params: the method's settings and diagnostics (e.g. ``delta`` for integrated gradients).
    """

    maps: torch.Tensor
    raw: torch.Tensor | None
    method: str
    target: torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    def smoothed(self, sigma: float = 1.0) -> "Attribution":
        """A copy whose maps are Gaussian-blurred with ``sigma`` pixels (``raw`` is kept as is).

        Pixel-level gradient maps are dominated by high-frequency noise; a light blur (about one
        pixel at 64 px) lets localisation metrics see the region a method points at instead of its
        noisiest pixel. Report the sigma with the scores (it is stored in ``params["smooth_sigma"]``).

        Examples:
            >>> a = Attribution(torch.zeros(1, 16, 16), None, "saliency", torch.zeros(1, dtype=torch.long))
            >>> a.maps[0, 8, 8] = 1.0
            >>> s = a.smoothed(1.0)
            >>> bool(s.maps[0, 8, 8] < 1.0), round(float(s.maps.sum()), 3), s.params["smooth_sigma"]
            (True, 1.0, 1.0)
        """
        from .._image import gaussian_blur

        if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or sigma < 0:
            raise ValueError(f"sigma must be a non-negative number of pixels; got {sigma!r}.")
        maps = gaussian_blur(self.maps.unsqueeze(1).float(), float(sigma))[:, 0].to(self.maps.dtype)
        return Attribution(maps, self.raw, self.method, self.target, {**self.params, "smooth_sigma": float(sigma)})

    def plot(self, index: int = 0, ax: Any = None, *, image: torch.Tensor | None = None, **style: Any) -> Any:
        """Draw map ``index`` (over ``image`` when given); delegates to ``workbench.viz``."""
        from ..viz.attribution import attribution_map

        return attribution_map(self, index=index, ax=ax, image=image, **style)


def normalise(maps: torch.Tensor, mode: str = "maxabs", eps: float = 1e-12) -> torch.Tensor:
    """Scale each map of ``(B, H, W)`` (or an Attribution's maps) for display or comparison.

    Args:
        maps: ``(B, H, W)`` tensor or an :class:`Attribution`.
        mode: ``"maxabs"`` divides by the largest absolute value (keeps sign, range [-1, 1]);
            ``"minmax"`` maps to [0, 1]; ``"positive"`` clamps negatives to 0 then divides by the
            max; ``"sum"`` divides by the sum of absolute values (a relevance budget).
        eps: all-zero (or constant) maps stay zero instead of dividing by zero.

    Returns:
        ``(B, H, W)`` float tensor, finite.
    """
    if isinstance(maps, Attribution):
        maps = maps.maps
    m = maps.float()
    flat = m.flatten(1)
    if mode == "maxabs":
        d = flat.abs().amax(1)
    elif mode == "minmax":
        lo = flat.amin(1)
        m = m - lo.view(-1, 1, 1)
        d = (flat.amax(1) - lo)
    elif mode == "positive":
        m = m.clamp_min(0)
        d = m.flatten(1).amax(1)
    elif mode == "sum":
        d = flat.abs().sum(1)
    else:
        raise ValueError(f"mode {mode!r} is not one of 'maxabs', 'minmax', 'positive', 'sum'.")
    d = torch.where(d > eps, d, torch.ones_like(d))
    return m / d.view(-1, 1, 1)


# --------------------------------------------------------------------------- targets

def num_classes(model: nn.Module) -> int | None:
    """The model's number of outputs if it states it (timm's ``num_classes``), else None."""
    n = getattr(model, "num_classes", None)
    return int(n) if isinstance(n, (int, np.integer)) and n > 0 else None


def select_target(logits: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Validate ``target`` against ``logits`` ``(B, K)``, or take the argmax when None."""
    if logits.ndim != 2:
        raise ValueError(
            f"the model returned outputs of shape {tuple(logits.shape)}; attribution expects "
            "(B, num_classes) logits. Wrap the model so that it returns a 2-D tensor."
        )
    if target is None:
        return logits.detach().argmax(1)
    _check_range(target, logits.shape[1])
    return target.to(logits.device)


def _check_range(target: torch.Tensor, k: int) -> None:
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= k):
        bad = target[(target < 0) | (target >= k)].unique().tolist()
        raise ValueError(
            f"target contains class(es) {bad} but the model has {k} outputs (valid 0..{k - 1}); "
            "pass target=None to explain the predicted class."
        )


def _as_target(target: Any, b: int) -> torch.Tensor | None:
    if target is None:
        return None
    if isinstance(target, (bool, np.bool_)):
        raise TypeError("target must be an int class index or a (B,) tensor of them, got a bool.")
    if isinstance(target, (int, np.integer)):
        return torch.full((b,), int(target), dtype=torch.long)
    t = torch.as_tensor(np.asarray(target) if not isinstance(target, torch.Tensor) else target)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {t.dtype}.")
    if t.ndim == 0:
        return torch.full((b,), int(t), dtype=torch.long)
    if t.shape != (b,):
        raise ValueError(f"target has shape {tuple(t.shape)}; expected an int or a ({b},) tensor, one class per image.")
    return t.long().cpu()


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, bs: int | None) -> torch.Tensor:
    bs = bs or x.shape[0]
    return torch.cat([model(x[i:i + bs]) for i in range(0, x.shape[0], bs)])


# --------------------------------------------------------------------------- inputs

def _prepare_images(images: Any, model: nn.Module) -> tuple[torch.Tensor, torch.device, bool]:
    """Boundary checks (``workbench._checks.check_images``): shape, dtype (uint8 allowed), NaN/inf,
    value range, and channels / size against the model."""
    squeeze = getattr(images, "ndim", None) == 3
    images = check_images(images, model, allow_uint8=True)
    return images, images.device, squeeze


def _to_model(images: torch.Tensor, dev: torch.device, dtype: torch.dtype) -> torch.Tensor:
    x = images.detach()
    if x.dtype == torch.uint8:  # dataset storage format: [0, 255] -> [0, 1]
        x = x.float() / 255.0
    elif not x.is_floating_point():
        raise TypeError(f"images must be float (or uint8) tensors, got {x.dtype}.")
    return x.to(device=dev, dtype=dtype).contiguous()


def _param_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _check_kw(fn: Callable, name: str, kw: dict[str, Any]) -> None:
    sig = inspect.signature(fn)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    allowed = [p for p in list(sig.parameters)[3:] if p not in _VERB_KW]
    bad = [k for k in kw if k not in allowed]
    if bad:
        raise TypeError(
            f"method {name!r} got unknown keyword argument(s) {bad}; it accepts {allowed or 'none'}."
        )


def _call(fn: Callable, model: nn.Module, x: torch.Tensor, target: torch.Tensor | None,
          kw: dict[str, Any], verb_kw: dict[str, Any]) -> MethodOutput:
    params = inspect.signature(fn).parameters
    extra = {k: v for k, v in verb_kw.items() if k in params}
    out = fn(model, x, target, **kw, **extra)
    if isinstance(out, MethodOutput):
        return out
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"attribution method returned {type(out).__name__}; expected a tensor or MethodOutput.")
    return MethodOutput(raw=out) if out.ndim == 4 else MethodOutput(maps=out)


def _finish(out: MethodOutput, size: tuple[int, int], name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    raw = out.raw
    maps = out.maps
    if raw is not None and raw.ndim != 4:
        raise ValueError(f"method {name!r} returned raw of shape {tuple(raw.shape)}; expected (B, C, H, W).")
    if maps is None:
        if raw is None:
            raise ValueError(f"method {name!r} returned neither raw values nor maps.")
        maps = raw.sum(1)
    if maps.ndim != 3:
        raise ValueError(f"method {name!r} returned maps of shape {tuple(maps.shape)}; expected (B, H, W).")
    if tuple(maps.shape[-2:]) != size:
        maps = torch.nn.functional.interpolate(maps[:, None].float(), size=size, mode="bilinear",
                                               align_corners=False)[:, 0]
    return maps.detach().float(), (raw.detach().float() if raw is not None else None)


# --------------------------------------------------------------------------- the verb

def attribute(model: nn.Module, images: torch.Tensor, target: Any = None,
              method: str = "integrated_gradients", *, internal_batch_size: int | None = None,
              device: str | torch.device | None = None, progress: bool = False, **kw: Any) -> Attribution:
    """Explain ``model``'s output for ``target`` on ``images`` with a registered ``method``.

    Args:
        model: a classifier returning ``(B, num_classes)`` logits. Never modified: it runs in eval
            mode inside the call and every module's train/eval flag is restored afterwards;
            methods use ``torch.autograd.grad`` so parameter ``.grad`` fields are untouched.
        images: ``(B, C, H, W)`` (or one ``(C, H, W)``) float in [0, 1] (uint8 is scaled by 1/255).
            They are moved to the model's device and dtype; results come back on the images'
            original device as float32. Checked first (``workbench._checks.check_images``): NaN/inf,
            values outside [0, 1] (0-255 or standardised images), channels and size the model does
            not take raise a ValueError before any work.
        target: class per image: None (the predicted class), an int, or a ``(B,)`` sequence.
            A class outside ``0..num_classes-1`` raises ``ValueError``.
        method: one of ``METHODS.names()`` (see ``workbench.attribution`` for the list).
        internal_batch_size: at most this many model inputs per forward pass (captum's
            meaning); None runs each method's default: passes of :func:`default_batch` inputs
            for integrated gradients, SmoothGrad, GradientSHAP and SHAP Partition, 64 perturbed
            images for occlusion and feature ablation, the whole batch for the rest.
        device: run on this device instead of the model's: the model is *copied* there (the
            caller's model stays where it is). None uses the model's device.
        progress: show a tqdm progress bar over chunks (methods with their own loops too).
        **kw: method settings, e.g. ``n_steps`` for integrated gradients, ``layer`` for Grad-CAM.

    Returns:
        An :class:`Attribution` with ``maps`` ``(B, H, W)`` at the input size.

    Raises:
        ValueError: unknown method (the valid ones are listed), bad target, bad images (shape,
            NaN/inf, range, channels, size).
        TypeError: a keyword argument the method does not take.

    Examples:
        >>> import timm
        >>> m = timm.create_model("resnet18", num_classes=2, in_chans=1, pretrained=False)
        >>> a = attribute(m, torch.rand(2, 1, 32, 32), method="saliency")
        >>> tuple(a.maps.shape), a.target.shape
        ((2, 32, 32), torch.Size([2]))
    """
    fn = METHODS.get(method)
    _check_kw(fn, method, kw)
    if internal_batch_size is not None and (not isinstance(internal_batch_size, int) or internal_batch_size < 1):
        raise ValueError(f"internal_batch_size must be a positive int or None, got {internal_batch_size!r}.")
    check_model(model)
    images, home, squeeze = _prepare_images(images, model)
    b = images.shape[0]
    tgt = _as_target(target, b)

    run_model, dev = model_on(model, device)
    x = _to_model(images, dev, _param_dtype(run_model))

    modes = [(m, m.training) for m in run_model.modules()]
    try:
        run_model.eval()
        with torch.enable_grad():
            own = getattr(fn, "_wb_own_target", False)
            if tgt is None and not own:
                tgt = select_target(_predict(run_model, x, internal_batch_size), None).cpu()
            elif tgt is not None:
                k = num_classes(run_model)
                if k is None:
                    k = _predict(run_model, x[:1], 1).shape[-1]
                _check_range(tgt, k)
            tgt_dev = tgt.to(dev) if tgt is not None else None
            verb_kw = {"internal_batch_size": internal_batch_size, "progress": progress}
            chunk = internal_batch_size if getattr(fn, "_wb_chunk", True) and internal_batch_size else b
            starts = range(0, b, chunk)
            if progress and len(starts) > 1:
                from tqdm.auto import tqdm

                starts = tqdm(starts, desc=method)
            maps_l, raw_l, tg_l, params = [], [], [], {}
            for s in starts:
                t_s = tgt_dev[s:s + chunk] if tgt_dev is not None else None
                out = _call(fn, run_model, x[s:s + chunk], t_s, kw, verb_kw)
                mp, rw = _finish(out, tuple(x.shape[-2:]), method)
                maps_l.append(mp.to(home))
                raw_l.append(rw.to(home) if rw is not None else None)
                used = out.target if out.target is not None else t_s
                if used is None:
                    raise ValueError(f"method {method!r} did not report which target it explained.")
                tg_l.append(used.detach().long().cpu())
                for k_, v in out.params.items():
                    params.setdefault(k_, []).append(v.detach().cpu() if isinstance(v, torch.Tensor) else v)
    finally:
        for m, flag in modes:
            m.training = flag

    merged = {}
    for k_, vs in params.items():
        merged[k_] = torch.cat(vs) if all(isinstance(v, torch.Tensor) and v.ndim > 0 for v in vs) else vs[0]
    merged.update({k_: v for k_, v in kw.items() if isinstance(v, (int, float, str, bool, tuple, type(None)))})
    maps = torch.cat(maps_l)
    raw = torch.cat(raw_l) if all(r is not None for r in raw_l) else None
    if not torch.isfinite(maps).all():
        raise FloatingPointError(
            f"method {method!r} produced non-finite values; check the model's outputs on these images "
            "(NaN/inf logits) or use another method."
        )
    target_out = torch.cat(tg_l)  # a single (C, H, W) image still gives (1, H, W) maps
    return Attribution(maps=maps, raw=raw, method=method, target=target_out, params=merged)


def default_batch(images: torch.Tensor) -> int:
    """Inputs per forward pass when a method evaluates many variants of each image and the caller
    gave no ``internal_batch_size``: about 2**20 input values per pass on a CPU (21 images at
    1 x 224 x 224, 256 at 1 x 64 x 64), 2**24 on an accelerator (memory, not speed: not measured
    on a GPU here). On a 2-core CPU one huge pass is slower than passes of that size: integrated
    gradients with 32-64 steps took 1.2-1.6x longer all at once (ViT-tiny and ResNet-18 at 224 px,
    a small ViT and ResNet-18 at 64 px), and its memory grows with images x steps.
    """
    budget = 2 ** 20 if images.device.type == "cpu" else 2 ** 24
    return max(1, budget // max(1, images[0].numel()))


def image_chunks(b: int, per_image: int, internal_batch_size: int | None) -> Sequence[slice]:
    """Slices over ``b`` images so that ``len * per_image <= internal_batch_size`` (>= 1 image)."""
    n = b if internal_batch_size is None else max(1, internal_batch_size // max(1, per_image))
    return [slice(i, i + n) for i in range(0, b, n)]
