"""SHAP methods: the Partition explainer with an image masker, and GradientExplainer.

Both explain the target *logit*. shap works channel-last in numpy; conversion happens here and
model calls stay batched on the model's device. Neither touches the caller's model: the
GradientExplainer gets a thin wrapper that does not register the model as a submodule (shap
calls ``.eval()`` and ``.zero_grad()`` on what it is given).
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import nn

from ._core import MethodOutput, default_batch, register_method
from .._image import gaussian_blur


def _masker(kind: Any, shape: tuple[int, int, int]):
    h, w, _ = shape
    if not isinstance(kind, str):
        return kind  # a shap masker object
    if kind == "blur":
        kind = f"blur({max(3, h // 2)},{max(3, w // 2)})"
    return _image_masker(kind, tuple(shape))


@functools.lru_cache(maxsize=8)
def _image_masker(kind: str, shape: tuple[int, int, int]):
    """shap's Image masker, kept between calls: building its pixel partition tree takes about a
    second at 224 px (as long as 40 forwards of a ViT-tiny), and the masker holds no per-image state.
    Blur maskers are a :func:`_mask_only_class` (the masking then runs on the model's device)."""
    import shap

    cls = _mask_only_class() if kind.startswith("blur(") else shap.maskers.Image
    return cls(kind, shape)


@functools.lru_cache(maxsize=1)
def _mask_only_class() -> type:
    """A ``shap.maskers.Image`` (same partition tree, same blur) that hands the model shap's boolean
    *masks* instead of masked images; ``shap_partition`` then blends image and blur on the model's
    device in one batched ``torch.where``: exactly shap's ``out[~mask] = blur[~mask]``.

    Why not shap's own ``__call__``: it copies and fills a full image in numpy for every masked
    sample, and its blur cache keys on ``id()`` of a temporary ``ravel()`` view, so it re-blurs the
    image for almost every sample (255 blurs for 256). With a GPU's fast forwards that per-sample
    numpy work was most of the time (a ViT-tiny at 224 px spent 27 % of SHAP Partition's time in
    the model); here each image is blurred once and masked on the device.
    """
    import shap

    class MaskOnly(shap.maskers.Image):
        def __call__(self, mask: np.ndarray | None, x: Any) -> tuple[np.ndarray]:
            n = int(np.prod(self.input_shape))
            if mask is None:
                return (np.zeros((1, n), dtype=bool),)
            return (np.array(mask, dtype=bool).reshape(1, n),)

    return MaskOnly


@register_method("shap_partition", chunk=False)
def shap_partition(model: nn.Module, images: torch.Tensor, target: torch.Tensor, *, max_evals: int = 500,
                   masker: Any = "blur", plan_batch: int = 100, internal_batch_size: int | None = None,
                   progress: bool = False) -> MethodOutput:
    """Partition SHAP (Owen values over a pixel hierarchy) with ``shap.maskers.Image``.

    ``masker="blur"`` hides regions by a box blur of half the image side (shap's own image
    examples use blur(128,128) at 224 px); ``"inpaint_telea"``, ``"inpaint_ns"`` (OpenCV
    inpainting, which works on 8-bit images: images in [0, 1] are handed to it scaled by 255),
    any shap masker string such as ``"blur(9,9)"``, or a masker object also work. Images keep
    their own channels: a grayscale radiograph is explained over ``H * W`` features, not three
    copies of them (a third of shap's per-image bookkeeping, identical values). Blur maskers mask
    on the model's device (see :func:`_mask_only_class`; same values as shap's own masker).

    Cost: ``max_evals`` model evaluations per image. shap plans them in steps of up to
    ``plan_batch`` (100, shap's usual size) masked images; the model gets each step in chunks of
    ``internal_batch_size``, so that setting bounds memory and changes speed, never the values.
    Its default is :func:`default_batch` (21 images at 1 x 224 x 224 on a CPU, the whole step on a
    GPU): on a 2-core CPU a ViT-tiny forward cost 0.72x per image at batch 21 and 0.93x at 100
    (relative to batch 4), a ResNet-18 1.06x and 1.33x. One explainer serves the whole batch
    (shap builds its sparse node-to-pixel matrix once, not per image).
    """
    import cv2
    import shap

    if not isinstance(plan_batch, int) or plan_batch < 1:
        raise ValueError(f"plan_batch must be a positive int (masked images shap evaluates per step), got {plan_batch!r}.")
    b, c, h, w = images.shape
    dev, dt = images.device, images.dtype
    shape = (h, w, c)
    bs = int(internal_batch_size or min(plan_batch, default_batch(images)))
    # OpenCV inpainting casts to uint8: give it 0-255 images and scale back before the model
    scale = 255.0 if isinstance(masker, str) and masker.startswith("inpaint") else 1.0
    mk = _masker(masker, shape)  # one masker (and its pixel hierarchy) for the whole batch
    mask_only = isinstance(mk, _mask_only_class())
    now: dict[str, Any] = {}  # the image being explained: its target (and image/blur on the device)
    evals = [0]

    def f(x: np.ndarray) -> np.ndarray:
        xt = torch.as_tensor(np.ascontiguousarray(x), device=dev)
        if mask_only:  # (N, H*W*C) masks -> masked images, on the device
            keep = xt.view(-1, h, w, c).permute(0, 3, 1, 2)
            xt = torch.where(keep, now["image"], now["blur"])
        else:
            xt = xt.to(dt).permute(0, 3, 1, 2)
            if scale != 1.0:
                xt = xt / scale
        evals[0] += len(xt)
        ti = now["target"]
        with torch.no_grad():
            return torch.cat([model(xt[j:j + bs])[:, ti:ti + 1] for j in range(0, len(xt), bs)]).float().cpu().numpy()

    ex = shap.explainers.Partition(f, mk)
    outs = []
    for i in range(b):
        x = images[i:i + 1].permute(0, 2, 3, 1).float().cpu().numpy() * scale
        now["target"] = int(target[i])
        if mask_only:  # shap's blur of this image (cv2.blur of the (H, W, C) float32 array), once
            blurred = cv2.blur(x[0], mk.blur_kernel).reshape(shape)
            now["image"] = images[i].to(dt)
            now["blur"] = torch.from_numpy(blurred).permute(2, 0, 1).to(dev, dt)
        sv = ex(x, max_evals=int(max_evals), batch_size=int(plan_batch), silent=not progress)
        v = np.asarray(sv.values)[0].reshape(h, w, c)
        outs.append(torch.from_numpy(v).permute(2, 0, 1))
    raw = torch.stack(outs).to(dev)
    return MethodOutput(raw=raw, params={"max_evals": int(max_evals), "model_evals": evals[0], "plan_batch": int(plan_batch), "masker": masker if isinstance(masker, str) else "custom"})


class _TargetLogit(nn.Module):
    """``model(x)[:, k:k+1]`` without registering ``model`` as a submodule."""

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self._fn = [model]
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn[0](x)[:, self.k:self.k + 1]


@register_method("shap_gradient", chunk=False)
def shap_gradient(model: nn.Module, images: torch.Tensor, target: torch.Tensor, *, background: Any = "zeros+blur",
                  n_samples: int = 32, seed: int = 0, internal_batch_size: int | None = None) -> MethodOutput:
    """shap's ``GradientExplainer`` (expected gradients) against a background set.

    ``background="zeros+blur"`` (default) is a black image plus the batch blurred with
    sigma = H/8; or pass a ``(N, C, H, W)`` tensor (e.g. training images). Images are grouped by
    target class (one explainer per class). ``n_samples`` gradient evaluations per image.
    """
    import shap

    if isinstance(background, str):
        if background != "zeros+blur":
            raise ValueError(f"background {background!r} is not 'zeros+blur' or a tensor.")
        bg = torch.cat([torch.zeros_like(images[:1]), gaussian_blur(images, max(1.0, images.shape[-2] / 8))])
    else:
        bg = torch.as_tensor(background).to(images)
    raw = torch.zeros_like(images, dtype=torch.float32)
    bs = int(internal_batch_size or 50)
    for k in target.unique().tolist():
        idx = (target == k).nonzero().flatten()
        ex = shap.GradientExplainer(_TargetLogit(model, int(k)), bg, batch_size=bs)
        sv = ex.shap_values(images[idx], nsamples=int(n_samples), rseed=seed)
        sv = np.asarray(sv[0] if isinstance(sv, list) else sv)
        if sv.ndim == 5:
            sv = sv[..., 0]
        raw[idx] = torch.from_numpy(sv).float().to(images.device)
    return MethodOutput(raw=raw, params={"n_background": int(bg.shape[0])})
