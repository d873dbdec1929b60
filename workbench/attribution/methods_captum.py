"""Gradient and perturbation methods (captum where it adds something, plain autograd otherwise).

Maps: gradient methods sum ``raw`` over channels (signed); perturbation methods (occlusion,
feature ablation) give every channel the same value and their map is the channel mean.
All methods explain the logit of ``target`` (not the softmax probability).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from ._core import MethodOutput, default_batch, image_chunks, register_method, select_target
from .. import _checks as ck
from .._image import gaussian_blur, reference_like, size_pair
from .baselines import BaselineSet, describe, resolve


def _grad(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None):
    x = images.detach().clone().requires_grad_(True)
    logits = model(x)
    t = select_target(logits, target)
    (g,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), x)
    return x.detach(), g, t


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Seed torch's generators (CPU and this CUDA device) and numpy's global one (captum's
    GradientShap draws its interpolation points with ``np.random``), restoring all afterwards."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed % 2 ** 32)
            yield
    finally:
        np.random.set_state(np_state)


def baseline_like(images: torch.Tensor, baseline: Any = 0.0) -> torch.Tensor:
    """A reference input: a number (constant image), ``"zero"``, ``"blur"`` (Gaussian, sigma = H/16),
    ``"mean"`` (per-image channel mean), or a tensor broadcastable to ``images``."""
    return reference_like(images, baseline)


@register_method("saliency", own_target=True)
def saliency(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None, *, abs: bool = True) -> MethodOutput:
    """Gradient of the target logit w.r.t. the input (Simonyan et al. 2014).

    ``raw`` = |d logit / d x| (``abs=True``, captum's ``Saliency`` default) or the signed gradient;
    map = sum over channels. One forward + backward per image.
    """
    _, g, t = _grad(model, images, target)
    return MethodOutput(raw=g.abs() if abs else g, target=t, params={"abs": abs})


@register_method("input_x_gradient", own_target=True)
def input_x_gradient(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None) -> MethodOutput:
    """Input times gradient (signed); map = sum over channels. One forward + backward."""
    x, g, t = _grad(model, images, target)
    return MethodOutput(raw=x * g, target=t)


@register_method("integrated_gradients", chunk=False)
def integrated_gradients(model: nn.Module, images: torch.Tensor, target: torch.Tensor, *, n_steps: int = 32,
                         baseline: Any = "blur", integration: str = "gausslegendre", seed: int | None = 0,
                         internal_batch_size: int | None = None) -> MethodOutput:
    """Integrated gradients (Sundararajan et al. 2017) via captum.

    ``baseline``: the image blurred (sigma = H/16) by default; ``0`` (black, captum's default),
    ``"mean"``, ``"uniform"``, a number, a tensor, or a
    :class:`~workbench.attribution.baselines.BaselineSet` (then expected gradients, Erion et al. 2021:
    ``n_steps`` random (reference, position on the path) pairs per image, captum's GradientShap with
    no noise; seeded by ``seed``). See :mod:`workbench.attribution.baselines`. ``params["delta"]``
    ``(B,)`` is captum's completeness error ``sum(raw) - (f(x) - f(baseline))`` for the target logit
    (deterministic baselines only); it shrinks with ``n_steps``. Cost: ``n_steps`` forward+backward
    per image plus two forwards, in passes of ``internal_batch_size`` inputs (default:
    ``default_batch``, about a million input values per pass on a CPU). Map = sum over channels (signed).

    Why blur: measured by ``bench_lesions.py --stages baselines`` (ResNet-18, the first 24 BUSI
    test lesions and 24 phantom nodules, true class; pointing game / relevance mass in the lesion /
    deletion AUC, lower is better; deletion fills with the blurred image too, so it favours this
    reference by construction, the other two do not): black 0.04 / 0.088 / 0.43 on BUSI and
    0.21 / 0.041 / 0.44 on the phantom; blur 0.25 / 0.165 / 0.05 and 0.54 / 0.096 / 0.04. Black cannot credit dark
    (hypoechoic) lesions; mean and uniform fail on the phantom (pointing 0.00); training images
    (a ``BaselineSet``) match blur (0.25 / 0.170 and 0.50 / 0.110) at the cost of needing them.
    """
    from captum.attr import GradientShap, IntegratedGradients

    ck.check_int(n_steps, "n_steps")
    base = resolve(images, baseline, seed=seed)
    ibs = internal_batch_size or default_batch(images)
    params = {"n_steps": int(n_steps), "baseline": describe(baseline)}
    attrs, deltas = [], []
    if isinstance(base, BaselineSet):
        refs = base.images.to(images.device, images.dtype)
        with _seeded(seed, images.device):
            gs = GradientShap(model)
            for sl in image_chunks(images.shape[0], int(n_steps), ibs):
                attrs.append(gs.attribute(images[sl], baselines=refs, target=target[sl], n_samples=int(n_steps),
                                          stdevs=0.0))
        return MethodOutput(raw=torch.cat(attrs), params=params)
    ig = IntegratedGradients(model)
    for sl in image_chunks(images.shape[0], 1, ibs):  # captum needs ibs >= images
        a, d = ig.attribute(images[sl], baselines=base[sl], target=target[sl], n_steps=int(n_steps),
                            method=integration, internal_batch_size=ibs, return_convergence_delta=True)
        attrs.append(a)
        deltas.append(d.detach())
    return MethodOutput(raw=torch.cat(attrs), params={"delta": torch.cat(deltas), **params})


@register_method("smoothgrad", chunk=False)
def smoothgrad(model: nn.Module, images: torch.Tensor, target: torch.Tensor, *, nt_samples: int = 16,
               stdevs: float = 0.05, base: str = "saliency", abs: bool = True, n_steps: int = 16,
               seed: int | None = 0, internal_batch_size: int | None = None) -> MethodOutput:
    """SmoothGrad (Smilkov et al. 2017): captum ``NoiseTunnel`` over saliency or IG.

    ``base="saliency"`` averages the signed gradient over ``nt_samples`` noisy copies and, with
    ``abs=True``, takes its magnitude afterwards (the paper's reference code; averaging |gradient|
    instead, captum's ``Saliency(abs=True)`` inside the tunnel, keeps the noise it should cancel).
    ``base="integrated_gradients"`` averages IG with ``n_steps`` (signed).

    ``stdevs`` is relative to the batch's input range. The paper's 10-20 % suits photographs; a
    small lesion on a radiograph is itself only 15-30 % brighter than its surroundings, and noise
    that strong drowns it. Nodule pointing game on the phantom at 64 px (40 images, n = 16,
    trained ResNet-18 / ViT): sigma 0.02: 0.38 / 0.38, 0.05: 0.43 / 0.43, 0.10: 0.25 / 0.18,
    0.15: 0.05 / 0.15; plain saliency 0.28 / 0.38. Hence the default 0.05. Seeded (``seed``)
    without touching the global RNG. Map = sum over channels.

    Passes hold about ``internal_batch_size`` inputs (default :func:`default_batch`; it was all
    images x ``nt_samples`` at once, 64 ViT-tiny inputs at 224 px for 4 images, unbounded memory
    for larger batches): 1.14x (ViT-tiny) and 1.24x (ResNet-18) faster at 224 px on a 2-core CPU.
    The noise is drawn per pass, so maps depend on the seed *and* this setting.
    """
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    ck.check_int(nt_samples, "nt_samples")
    ck.check_int(n_steps, "n_steps")
    ck.check_number(stdevs, "stdevs", low=0)
    span = float(images.amax() - images.amin()) or 1.0
    per = 1 if base == "saliency" else int(n_steps)
    ibs = internal_batch_size or default_batch(images)
    if base == "saliency":
        inner, extra = Saliency(model), {"abs": False}
    elif base == "integrated_gradients":
        inner, extra = IntegratedGradients(model), {"n_steps": int(n_steps)}
    else:
        raise ValueError(f"base {base!r} is not 'saliency' or 'integrated_gradients'.")
    outs = []
    with _seeded(seed, images.device):
        tunnel = NoiseTunnel(inner)
        for sl in image_chunks(images.shape[0], per, ibs):
            n_img = images[sl].shape[0]
            nsb = max(1, ibs // (n_img * per))  # noisy copies per pass: about ibs inputs per pass
            outs.append(tunnel.attribute(images[sl], nt_type="smoothgrad", nt_samples=int(nt_samples),
                                         nt_samples_batch_size=nsb, stdevs=stdevs * span, target=target[sl], **extra))
    attr = torch.cat(outs)
    if base == "saliency" and abs:
        attr = attr.abs()
    return MethodOutput(raw=attr, params={"stdevs_abs": stdevs * span, "abs": bool(abs and base == "saliency")})


@register_method("gradient_shap", chunk=False)
def gradient_shap(model: nn.Module, images: torch.Tensor, target: torch.Tensor, *, n_samples: int = 16,
                  baselines: Any = "zeros+blur", stdevs: float = 0.0, seed: int | None = 0,
                  internal_batch_size: int | None = None) -> MethodOutput:
    """GradientSHAP (captum): expected gradients over random points between x and baselines.

    ``baselines="zeros+blur"`` (default) draws from {black image} U {each image of the batch
    blurred with sigma = H/8}, a distribution of "anatomy without detail"; parts ``"zeros"``,
    ``"blur"``, ``"mean"``, ``"uniform"`` joined by ``+``, an ``(N, C, H, W)`` tensor of references,
    or a ``BaselineSet`` (training images: expected gradients) also work. Cost: ``n_samples`` forward+backward per image, in passes
    of whole images x ``n_samples`` up to ``internal_batch_size`` inputs (default
    :func:`default_batch`; all images at once before: 1.22-1.24x slower at 224 px on a 2-core CPU,
    unbounded memory). Samples are drawn per pass, so maps depend on the seed and this setting.

    The default is kept on measurement (``bench_lesions.py --stages baselines``, ResNet-18, 24 BUSI
    lesions / 24 phantom nodules, pointing game): zeros+blur 0.33 / 0.46, blur alone 0.38 / 0.33,
    training images 0.33 / 0.58, black alone 0.00 / 0.21, uniform 0.42 / 0.13: only black and the
    constant or noise references lose clearly; the rest differ by a few images of 24.
    """
    from captum.attr import GradientShap

    ck.check_int(n_samples, "n_samples")
    ck.check_number(stdevs, "stdevs", low=0)
    if isinstance(baselines, BaselineSet):
        bl = resolve(images, baselines).images.to(images.device, images.dtype)  # all references, checked
    elif isinstance(baselines, str):
        parts = []
        for p in baselines.split("+"):
            if p in ("zeros", "zero", "black"):
                parts.append(torch.zeros_like(images[:1]))
            elif p == "blur":
                parts.append(gaussian_blur(images, max(1.0, images.shape[-2] / 8)))
            elif p in ("uniform", "mean"):
                parts.append(resolve(images, p, seed=seed))
            else:
                raise ValueError(f"baselines part {p!r} is not 'zeros', 'blur', 'mean' or 'uniform' (join parts "
                                 "with '+'); for training images pass baseline_set(train).")
        bl = torch.cat(parts)
    elif isinstance(baselines, torch.Tensor):
        from .baselines import check_reference

        check_reference(baselines, images, "baselines", per_image=False)
        bl = baselines.to(images)
    else:
        raise TypeError(f"baselines must be a string, a tensor or a BaselineSet, got {type(baselines).__name__}.")
    outs = []
    with _seeded(seed, images.device):
        gs = GradientShap(model)
        for sl in image_chunks(images.shape[0], n_samples, internal_batch_size or default_batch(images)):
            outs.append(gs.attribute(images[sl], baselines=bl, target=target[sl], n_samples=int(n_samples), stdevs=stdevs))
    return MethodOutput(raw=torch.cat(outs), params={"n_baselines": int(bl.shape[0]), "baselines": describe(baselines)})


_INEXACT = (nn.GELU, nn.LayerNorm, nn.MultiheadAttention, nn.SiLU, nn.Hardswish)


@register_method("deeplift")
def deeplift(model: nn.Module, images: torch.Tensor, target: torch.Tensor, *, baseline: Any = "blur",
             n_references: int = 8, seed: int | None = 0, allow_inexact: bool = False) -> MethodOutput:
    """DeepLIFT rescale rule (captum ``DeepLift``); map = sum over channels.

    ``baseline`` as for integrated gradients (:mod:`workbench.attribution.baselines`; blurred by
    default, for the same reason: on the 24 BUSI lesions and 24 phantom nodules of the baselines
    benchmark, pointing game 0.08 / 0.13 with black, 0.33 / 0.54 with blur, deletion AUC 0.46 / 0.58
    vs 0.05 / 0.04); with a
    ``BaselineSet`` it is DeepLIFT-SHAP (captum ``DeepLiftShap``: DeepLIFT averaged over
    ``n_references`` references drawn from the set with ``seed``; cost x ``n_references``).

    Exact only for networks of ReLU-like nonlinearities, pooling and linear layers (CNNs such as
    ResNet). Transformers (GELU, LayerNorm, softmax attention computed functionally) get no
    DeepLIFT rule in captum, so the result is a gradient-times-delta mix: this raises
    ``ValueError`` unless ``allow_inexact=True`` (then warns). The model is copied with in-place
    activations turned off (captum's hooks need that); the caller's model is not touched.
    ``params["delta"]`` is the summation-to-delta error.
    """
    from captum.attr import DeepLift, DeepLiftShap

    bad = sorted({type(m).__name__ for m in model.modules()
                  if isinstance(m, _INEXACT) or type(m).__name__ == "Attention"})
    if bad:
        msg = (f"DeepLift has no rule for {bad} in this model, so its result is not a DeepLIFT attribution; "
               "use 'integrated_gradients' or 'gradient_shap' for transformers")
        if not allow_inexact:
            raise ValueError(msg + ", or pass allow_inexact=True to run it anyway.")
        warnings.warn(msg + ".", stacklevel=3)
    work = model
    if any(getattr(m, "inplace", False) for m in model.modules()):
        import copy

        work = copy.deepcopy(model)
        for m in work.modules():
            if getattr(m, "inplace", False):
                m.inplace = False
    with warnings.catch_warnings():  # captum's notices about its own (temporary) hooks
        warnings.filterwarnings("ignore", message=".*(hooks|require gradients).*")
        base = resolve(images, baseline, seed=seed)
        if isinstance(base, BaselineSet):
            refs = base.sample(int(n_references), images, seed)
            attr, delta = DeepLiftShap(work).attribute(images, baselines=refs, target=target,
                                                       return_convergence_delta=True)
            delta = delta.view(images.shape[0], -1).mean(1)
        else:
            attr, delta = DeepLift(work).attribute(images, baselines=base, target=target,
                                                   return_convergence_delta=True)
    return MethodOutput(raw=attr, params={"delta": delta.detach(), "baseline": describe(baseline)})


def default_window(h: int, w: int) -> tuple[int, int]:
    """Occlusion window: 1/8 of the side (8 px at 64 px, 28 px at 224 px), at least 2."""
    return max(2, round(h / 8)), max(2, round(w / 8))


@register_method("occlusion", chunk=False)
def occlusion(model: nn.Module, images: torch.Tensor, target: torch.Tensor, *, window: int | tuple[int, int] | None = None,
              stride: int | tuple[int, int] | None = None, baseline: Any = "blur",
              internal_batch_size: int | None = None) -> MethodOutput:
    """Occlusion (Zeiler & Fergus) via captum: logit drop when a window is set to ``baseline``.

    Defaults adapt to the input: window = H/8 x W/8 (:func:`default_window`) over all channels,
    stride = half the window, and the window is replaced by a blurred copy of the image
    (``baseline="blur"``, see :func:`baseline_like`; a number fills it with a constant). A black
    square inside a radiograph's lung looks like a finding of its own (air without markings), so
    with ``baseline=0`` the map shows the artefact, not the evidence: on the phantom at 64 px the
    nodule pointing game was 0.0. Map = channel mean (all channels share the value).
    ``internal_batch_size`` images per forward (default 64).
    """
    from captum.attr import Occlusion

    b, c, h, w = images.shape
    win = default_window(h, w) if window is None else size_pair(window, "window")
    if win[0] > h or win[1] > w:
        raise ValueError(f"window {win} is larger than the {h}x{w} images; pass a window of at most ({h}, {w}) "
                         f"(default: 1/8 of the side, {default_window(h, w)}).")
    st = (max(1, win[0] // 2), max(1, win[1] // 2)) if stride is None else size_pair(stride, "stride")
    ppe = max(1, (internal_batch_size or 64) // b)
    attr = Occlusion(model).attribute(images, sliding_window_shapes=(c, *win), strides=(c, *st),
                                      baselines=baseline_like(images, baseline), target=target,
                                      perturbations_per_eval=ppe)
    return MethodOutput(raw=attr, maps=attr.mean(1), params={"window": tuple(win), "stride": tuple(st),
                                                              "baseline": baseline if isinstance(baseline, (str, int, float)) else "tensor"})


def slic_segments(images: torch.Tensor, n_segments: int | None = None) -> torch.Tensor:
    """SLIC-zero superpixels per image (scikit-image), ``(B, 1, H, W)`` long labels from 0.

    ``n_segments`` defaults to H*W/64 (8x8 px cells) clipped to [16, 200].
    """
    from skimage.segmentation import slic

    b, c, h, w = images.shape
    ck.check_int(n_segments, "n_segments", none_ok=True)
    n = int(n_segments) if n_segments else int(min(200, max(16, h * w // 64)))
    arr = images.detach().float().cpu().numpy()
    out = np.zeros((b, 1, h, w), dtype=np.int64)
    for i in range(b):
        img = arr[i, 0] if c == 1 else arr[i].transpose(1, 2, 0)
        seg = slic(img.astype(np.float64), n_segments=n, slic_zero=True, start_label=0,
                   channel_axis=None if c == 1 else -1, convert2lab=False)
        out[i, 0] = np.unique(seg, return_inverse=True)[1].reshape(h, w)
    return torch.from_numpy(out)


@register_method("feature_ablation", chunk=False)
def feature_ablation(model: nn.Module, images: torch.Tensor, target: torch.Tensor, *, n_segments: int | None = None,
                     segments: torch.Tensor | None = None, baseline: Any = "blur",
                     internal_batch_size: int | None = None) -> MethodOutput:
    """Feature ablation on SLIC superpixels (captum ``FeatureAblation``).

    Each superpixel (all channels) is replaced by ``baseline`` (default a blurred copy of the image,
    as for :func:`occlusion`; a number fills it with a constant); its value is the target-logit drop.
    ``segments`` ``(B, 1, H, W)`` / ``(B, H, W)`` overrides SLIC (:func:`slic_segments`).
    Map = channel mean. ``params["n_features"]`` is the largest superpixel count.
    """
    from captum.attr import FeatureAblation

    b = images.shape[0]
    seg = slic_segments(images, n_segments) if segments is None else torch.as_tensor(segments).long()
    if seg.ndim == 3:
        seg = seg[:, None]
    seg = seg.to(images.device)
    ppe = max(1, (internal_batch_size or 64) // b)
    attr = FeatureAblation(model).attribute(images, baselines=baseline_like(images, baseline), target=target,
                                            feature_mask=seg.expand(-1, images.shape[1], -1, -1),
                                            perturbations_per_eval=ppe)
    return MethodOutput(raw=attr, maps=attr.mean(1), params={"n_features": int(seg.max()) + 1})
