"""Sanity check for attribution methods: cascading model-parameter randomisation (Adebayo et al. 2018).

Layers are randomised one after another from the output towards the input ("top_down",
cumulative, as in the paper's cascading test) or one at a time ("independent"), always on a deep
copy of the model. After each step the attribution maps are recomputed and compared with the
original ones. A method whose maps stay similar while the weights are destroyed does not depend on
what the model learned (it fails the check).

Similarities, per image, then averaged:
- ``spearman``: Spearman rank correlation of the *absolute* maps (Adebayo et al. report both; the
  absolute version is the stricter one for sign-flipping methods). Constant maps give 0.
- ``ssim``: ``skimage.metrics.structural_similarity`` of the absolute maps after min-max scaling
  each to [0, 1] (data_range = 1).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._checks import check_images, check_model
from .._device import model_device
from ._common import as_maps

SIMILARITIES = ("spearman", "ssim")
_CONTAINERS = ("blocks", "stages", "layers", "features", "encoder", "layer")


def default_layers(model: nn.Module) -> list[str]:
    """Top-level blocks in forward order: the model's direct children that hold parameters, with
    block containers (``blocks``, ``stages``, ``layers``, ``features``) expanded one level
    (timm ViT: patch_embed, blocks.0..N, norm, head; ResNet: conv1, bn1, layer1..4, fc)."""
    names = []
    for name, child in model.named_children():
        if not any(True for _ in child.parameters()):
            continue
        kids = [(n, c) for n, c in child.named_children() if any(True for _ in c.parameters())]
        if name in _CONTAINERS and isinstance(child, (nn.Sequential, nn.ModuleList)) and len(kids) > 1:
            names.extend(f"{name}.{n}" for n, _ in kids)
        else:
            names.append(name)
    own = [n for n, _ in model.named_parameters(recurse=False)]
    if own:  # e.g. cls_token, pos_embed: randomised together with the first block
        names.insert(0, "")
    return names


def randomise_(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Re-initialise ``module`` in place: ``reset_parameters()`` where a submodule has one, normal
    noise with each remaining parameter's own std (0.02 if constant) otherwise. For copies only.

    The new values are drawn on the CPU and copied to the module's device, so a seed gives the
    same randomised model on a GPU as on a CPU (CUDA's generator draws other numbers)."""
    done: set[int] = set()
    for sub in module.modules():
        if not callable(getattr(sub, "reset_parameters", None)):
            continue
        own = list(sub.parameters(recurse=False)) + list(sub.buffers(recurse=False))
        if any(t.device.type != "cpu" for t in own):
            fresh = copy.deepcopy(sub).cpu()
            fresh.reset_parameters()
            with torch.no_grad():
                for t, new in zip(own, list(fresh.parameters(recurse=False)) + list(fresh.buffers(recurse=False))):
                    t.copy_(new)
        else:
            sub.reset_parameters()
        done.update(id(p) for p in sub.parameters(recurse=False))
    with torch.no_grad():
        for p in module.parameters():
            if id(p) in done:
                continue
            std = float(p.float().std()) if p.numel() > 1 else 0.0
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.device, p.dtype)
            p.copy_(noise * (std if std > 0 else 0.02))
    return module


def _rank(a: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(a, axis=1)


def spearman(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Spearman correlation per row of (B, N) arrays (average ranks for ties; constant rows -> 0)."""
    ra, rb = _rank(np.asarray(a, dtype=np.float64)), _rank(np.asarray(b, dtype=np.float64))
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1.0), 0.0)


def ssim(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """SSIM per image of (B, H, W) maps after min-max scaling each to [0, 1]."""
    from skimage.metrics import structural_similarity

    def scale(x: np.ndarray) -> np.ndarray:
        lo, hi = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
        return np.where(hi > lo, (x - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)

    a, b = scale(np.asarray(a, dtype=np.float64)), scale(np.asarray(b, dtype=np.float64))
    win = min(7, a.shape[-1], a.shape[-2])
    win = win if win % 2 == 1 else win - 1
    return np.array([structural_similarity(x, y, data_range=1.0, win_size=max(win, 3)) for x, y in zip(a, b)])


def _attributor(method: str | Callable, attr_kw: dict) -> Callable[[nn.Module, torch.Tensor, Any], torch.Tensor]:
    if callable(method):
        return lambda m, x, t: as_maps(method(m, x, t, **attr_kw))
    from ..attribution import attribute

    return lambda m, x, t: as_maps(attribute(m, x, target=t, method=method, **attr_kw))


def randomisation_test(model: nn.Module, images: torch.Tensor, method: str | Callable, target: Any = None, *,
                       order: str = "top_down", layers: Sequence[str] | None = None,
                       similarity: Sequence[str] = SIMILARITIES, seed: int = 0, progress: bool = True,
                       **attr_kw: Any) -> pd.DataFrame:
    """Cascading model-parameter randomisation test (Adebayo et al. 2018).

    Args:
        model: the trained model; never modified (a deep copy is randomised).
        images: (B, C, H, W) in [0, 1].
        method: an attribution method name for ``workbench.attribution.attribute`` or a callable
            ``(model, images, target) -> (B, H, W) maps or Attribution``.
        target: explained class per image; default the original model's prediction, kept fixed for
            every randomised model (so the same logit is explained throughout).
        order: "top_down" (cumulative from the output, the paper's cascade) or "independent"
            (one layer at a time, the others intact).
        layers: names of the modules to randomise (see ``default_layers``), in forward order.
        similarity: any of "spearman", "ssim".
        seed: seed for the re-initialisation.
        progress: show a progress bar.
        **attr_kw: passed to the attribution method.

    Returns:
        DataFrame with one row per step: ``step`` (0 = original model), ``layer`` (the module
        randomised at this step, "" for the original), ``randomised`` (how many layers are random),
        and per similarity the mean over images and its std (``spearman``, ``spearman_std``,
        ``ssim``, ``ssim_std``).
    """
    from tqdm.auto import tqdm

    check_model(model)
    images = check_images(images, model)
    if order not in ("top_down", "independent"):
        raise ValueError(f"order must be 'top_down' or 'independent'; got {order!r}.")
    sims = (similarity,) if isinstance(similarity, str) else tuple(similarity)
    bad = [s for s in sims if s not in SIMILARITIES]
    if bad:
        raise ValueError(f"unknown similarity {bad}; use any of {SIMILARITIES}.")
    names = list(layers) if layers is not None else default_layers(model)
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"model has no module(s) {missing}; valid top-level blocks: {default_layers(model)}.")
    attr = _attributor(method, attr_kw)
    was_training = model.training
    try:
        model.eval()
        if target is None:
            with torch.no_grad():
                target = model(images.to(model_device(model))).argmax(-1).cpu()
        ref = attr(model, images, target).abs()
    finally:
        model.train(was_training)
    gen = torch.Generator().manual_seed(seed)
    torch_state = torch.get_rng_state()
    rows = [{"step": 0, "layer": "", "randomised": 0,
             **{k: v for s in sims for k, v in ((s, 1.0), (f"{s}_std", 0.0))}}]
    try:
        torch.manual_seed(seed)
        work = copy.deepcopy(model).eval()
        seq = list(reversed(names))
        for step, name in enumerate(tqdm(seq, desc="randomising", disable=not progress), start=1):
            if order == "independent":
                work = copy.deepcopy(model).eval()
            target_mod = dict(work.named_modules())[name]
            if name == "":
                with torch.no_grad():
                    for p in work.parameters(recurse=False):
                        p.copy_(torch.randn(p.shape, generator=gen).to(p) * (float(p.std()) if p.numel() > 1 else 0.02))
            else:
                randomise_(target_mod, gen)
            cur = attr(work, images, target).abs()
            row: dict[str, Any] = {"step": step, "layer": name or "<model parameters>",
                                   "randomised": step if order == "top_down" else 1}
            for s in sims:
                v = spearman(ref.flatten(1).numpy(), cur.flatten(1).numpy()) if s == "spearman" else \
                    ssim(ref.numpy(), cur.numpy())
                row[s], row[f"{s}_std"] = float(np.mean(v)), float(np.std(v))
            rows.append(row)
    finally:
        torch.set_rng_state(torch_state)
    return pd.DataFrame(rows)


__all__ = ["randomisation_test", "default_layers", "randomise_", "spearman", "ssim"]
