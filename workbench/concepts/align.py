"""Training-free alignment of a new site's images to the source: undo its acquisition style at the input.

A site's acquisition differs from the training sites' in ways an X-ray chain can set: field of view
(collimation, magnification), contrast and brightness (window width and level), gamma (the detector's
or the viewer's look-up table), blur and noise. The first four can be undone by a map of the image;
``test_time_align`` finds that map without labels and without training: it searches the parameters of

    x -> zoom_f( ((x ** (1 / gamma)) - 0.45 - brightness) / contrast + 0.45 )      (clipped to [0, 1])

(the inverse of the phantom's acquisition model, ``workbench.data._phantom_render``; ``f`` zooms about
the image centre) that bring the model's own feature statistics on images of the new site back to
the source's: per channel, the mean and standard deviation of the patch embedding and of every
block's tokens for a ViT, of every batch norm's output for a CNN (the layers of
``test_time_normalise``), measured on source images. The distance is the mean over layers and channels
of the squared standardised mean difference plus the squared log ratio of standard deviations;
scipy's Nelder-Mead minimises it from the identity (4 parameters, a few hundred forward passes of the
given images; no gradient, no weight changes). The adapted copy applies the map in front of its first
convolution (the stem: a ViT's patch embedding, a CNN's ``conv1``), which receives the [0, 1] image.

What it cannot undo: blur and noise (no map of intensities inverts them), and anything beyond the
family (rotation, a different anatomy). Measured on the phantom (benchmarks/README.md, "Site repair:
aligning the input"). Use the images of one site; the aligned model is for that site's images, and
on a site that needs no repair the search stays near the identity (the benchmark's "source change").

Written here rather than taken from a library: test-time adaptation libraries adapt weights or
normalisation statistics by gradient steps (TENT, its successors) or by generative models (diffusion-
driven input adaptation); a four-parameter search over an acquisition model is a few lines of scipy.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._validate import check_images, check_int, check_model
from .normalise import _bn_layers, _replace, _source_stats, _token_layers

PARAMS = ("fov", "contrast", "gamma", "brightness")
_MID = 0.45  # the intensity the phantom's contrast pivots on


class InputAlignment(nn.Module):
    """The map ``x -> zoom_fov(((x ** (1 / gamma)) - 0.45 - brightness) / contrast + 0.45)`` on [0, 1]
    images (the identity at fov = contrast = gamma = 1, brightness = 0)."""

    def __init__(self, fov: float = 1.0, contrast: float = 1.0, gamma: float = 1.0, brightness: float = 0.0) -> None:
        super().__init__()
        self.fov, self.contrast, self.gamma, self.brightness = float(fov), float(contrast), float(gamma), float(brightness)

    @property
    def params(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in PARAMS}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.gamma != 1.0 or self.contrast != 1.0 or self.brightness != 0.0:
            y = x.clamp_min(1e-4) ** (1.0 / self.gamma)
            y = ((y - _MID - self.brightness) / self.contrast + _MID).clamp(0, 1)
        if self.fov != 1.0:
            s = 1.0 / self.fov
            theta = torch.tensor([[s, 0.0, 0.0], [0.0, s, 0.0]], dtype=y.dtype, device=y.device).expand(len(y), 2, 3)
            grid = F.affine_grid(theta, list(y.shape), align_corners=False)
            y = F.grid_sample(y, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return y

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v:.3f}" for k, v in self.params.items())


class AlignedStem(nn.Module):
    """The model's first convolution, fed the aligned image."""

    def __init__(self, stem: nn.Module, alignment: InputAlignment) -> None:
        super().__init__()
        self.alignment, self.stem = alignment, stem
        self.enabled = True   # off while source statistics are measured (``test_time_normalise`` of an aligned model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(self.alignment(x) if self.enabled else x)


def _stem(model: nn.Module) -> str:
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return n
    raise ValueError(f"{type(model).__name__} has no Conv2d to align the input of; test_time_align needs a model "
                     "whose first convolution receives the image (timm ViTs and CNNs do).")


def _theta_to_params(theta: np.ndarray) -> dict[str, float]:
    lf, lc, lg, b = (float(v) for v in theta)
    return {"fov": math.exp(lf), "contrast": math.exp(lc), "gamma": math.exp(lg), "brightness": b}


def test_time_align(model: nn.Module, source: Any, images: Any, *, layers: Sequence[str] | str = "auto",
                    max_evals: int = 300, batch_size: int = 64, device: Any = None,
                    progress: bool = True) -> nn.Module:
    """A copy of ``model`` that first maps each image by the acquisition-style inverse that best brings
    the model's feature statistics on ``images`` (a new site's, unlabelled) back to those on ``source``
    (see the module docstring); the model itself is not changed.

    Args:
        model: any model whose first Conv2d receives the image (a CBM included).
        source: source-site images (a dataset or (N, C, H, W) in [0, 1]), e.g. the validation split.
        images: images of the new site (a dataset, a batch dict or (N, C, H, W) in [0, 1]); labels are not
            used. 24 (a support set's) to a few hundred; more is slower and steadier.
        layers: "auto" (every BatchNorm; else the patch embedding and every ``blocks.N``) or layer names.
        max_evals: the most forward passes of ``images`` the search may take.
        batch_size, device: forward passes.
        progress: show a tqdm progress bar over the search's forward passes.

    Returns:
        The adapted copy, in eval mode, with ``test_time_alignment`` = {"params" (fov, contrast, gamma,
        brightness), "distance_before", "distance_after", "evals", "layers", "stem"}. For this session's
        predictions of that site: save the original model and align again after loading.

    Raises:
        ValueError: no source, images that do not fit the model, a model without a Conv2d, unknown layers.
    """
    from scipy.optimize import minimize
    from tqdm.auto import tqdm

    check_model(model)
    check_int(max_evals, "max_evals", minimum=10)
    if source is None:
        raise ValueError("test_time_align needs source=: images of the training site(s) (a dataset, e.g. the "
                         "validation split) whose feature statistics the new site's are brought back to.")
    x = _as_images(images, model)
    if layers == "auto":
        layers = _bn_layers(model) or _token_layers(model)
    layers = [layers] if isinstance(layers, str) else list(layers)
    names = dict(model.named_modules())
    unknown = [n for n in layers if n not in names]
    if unknown:
        raise ValueError(f"unknown layer(s) {unknown}; the model's layers include {[n for n in names if n][:12]}.")
    target = _source_stats(model, source, layers, batch_size, device)
    stem = _stem(model)
    adapted = copy.deepcopy(model).eval()
    alignment = InputAlignment()
    _replace(adapted, stem, AlignedStem(dict(adapted.named_modules())[stem], alignment))
    ref = {n: (m.double(), sd.double().clamp_min(1e-6)) for n, (m, sd) in target.items()}

    bar = tqdm(total=int(max_evals) + 2, desc="align", unit="pass", disable=not progress)

    def distance(theta: np.ndarray) -> float:
        for k, v in _theta_to_params(theta).items():
            setattr(alignment, k, v)
        bar.update(1)
        got = _source_stats(adapted, x, layers, batch_size, device, unaligned=False)
        return sum(float((((got[n][0].double() - m0) / sd0) ** 2).mean() +
                         (torch.log(got[n][1].double().clamp_min(1e-6) / sd0) ** 2).mean())
                   for n, (m0, sd0) in ref.items()) / len(layers)

    before = distance(np.zeros(4))
    res = minimize(distance, np.zeros(4), method="Nelder-Mead",
                   options={"maxfev": int(max_evals), "xatol": 1e-3, "fatol": 1e-5,
                            "initial_simplex": np.vstack([np.zeros(4), 0.15 * np.eye(4)])})
    best = res.x if res.fun < before else np.zeros(4)
    after = distance(best)
    bar.close()
    adapted.test_time_alignment = {"params": alignment.params, "distance_before": before, "distance_after": after,
                                   "evals": int(res.nfev) + 2, "layers": layers, "stem": stem}
    return adapted


def _as_images(images: Any, model: nn.Module) -> torch.Tensor:
    """A dataset's images, or a batch dict's / a tensor, checked (check_images takes the last two)."""
    if not torch.is_tensor(images) and hasattr(images, "batch") and hasattr(images, "__len__"):
        images = images.batch(range(len(images)))["image"]
    return check_images(images, "images of the new site", model=model)

