"""Per-latent analysis: top-activating images and patches, heatmaps, class latents, model reliance."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ._apply import batches, bind, check_call, first_images
from .autoencoders import SAE
from .latents import Latents, latents, upsample


# -- top activations and heatmaps ------------------------------------------------------------------
@dataclass(frozen=True)
class TopActivations:
    """The images on which each latent fires most, and where.

    Attributes:
        values: (d_sae, n) the latent's largest patch activation in each of its top images.
        images: (d_sae, n) dataset positions of those images (-1 where fewer images fired).
        patches: (d_sae, n) row-major patch index of the maximum on the ``grid``.
        grid: (h, w) patch grid.
        frequency: (d_sae,) share of images on which the latent fires at all.
    """

    values: torch.Tensor
    images: torch.Tensor
    patches: torch.Tensor
    grid: tuple[int, int]
    frequency: torch.Tensor

    def of(self, latent: int) -> list[tuple[int, int, float]]:
        """``[(image, patch, value), ...]`` for one latent, strongest first, skipping empty slots."""
        r = [(int(i), int(p), float(v)) for i, p, v in
             zip(self.images[latent], self.patches[latent], self.values[latent]) if i >= 0 and v > 0]
        return r

    def plot(self, latent: int, data: Any, sae: SAE | None = None, model: nn.Module | None = None, **kw: Any) -> Any:
        """The latent's top images with heatmaps and patch crops (``workbench.viz.latent_grid``)."""
        from workbench.viz.sae import latent_grid

        return latent_grid(self, latent, data, sae=sae, model=model, **kw)


def _region_weight(batch: dict[str, Any], region: str | None, grid: tuple[int, int]) -> torch.Tensor | None:
    """(B, h*w) share of each patch inside ``region`` (a structure name), or None."""
    if region is None:
        return None
    masks = batch.get("masks") or {}
    if region not in masks:
        raise ValueError(f"region {region!r} is not a structure of this dataset; structures: {sorted(masks)}.")
    return patch_fractions(masks[region], grid)


def patch_fractions(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) bool masks -> (B, h*w) share of each patch's pixels inside the mask (area pooling)."""
    m = masks.float()[:, None]
    return torch.nn.functional.adaptive_avg_pool2d(m, grid).flatten(1)


def top_activations(sae: SAE, model: nn.Module, data: Any, *, n: int = 9, region: str | None = None,
                    min_region: float = 0.5, layer: str | int | None = None, batch_size: int = 64,
                    device: str | torch.device | None = None, check_model: bool = True) -> TopActivations:
    """Per latent, the ``n`` images with its largest patch activation and that patch.

    Args:
        sae, model, data: the SAE, its model, and a dataset (or images).
        n: images kept per latent.
        region: a structure (e.g. "body"): only patches at least ``min_region`` inside it count, so
            activations outside the body can be left out.
        layer, batch_size, device, check_model: as in :func:`workbench.sae.latents`.
    """
    check_call(model, data, batch_size)
    from workbench._checks import check_int

    check_int(n, "n")
    b = bind(sae, model, layer=layer, device=device, check_model=check_model, probe=first_images(data))
    grid = b.layout.grid
    vals = torch.full((sae.d_sae, 0), -1.0)
    imgs = torch.zeros((sae.d_sae, 0), dtype=torch.long)
    pats = torch.zeros((sae.d_sae, 0), dtype=torch.long)
    fired = torch.zeros(sae.d_sae)
    n_img = 0
    for batch in batches(b, data, batch_size=batch_size, masks=region is not None):
        codes = b.layout.patch_tokens(batch["codes"])  # (B, P, d_sae)
        w = _region_weight(batch, region, grid)
        if w is not None:
            codes = codes * (w >= min_region)[..., None]
        mx, arg = codes.max(1)  # (B, d_sae)
        fired += (mx > 0).float().sum(0).cpu()
        n_img += codes.shape[0]
        vals = torch.cat([vals, mx.t().cpu()], 1)
        imgs = torch.cat([imgs, batch["index"].cpu()[None].expand(sae.d_sae, -1)], 1)
        pats = torch.cat([pats, arg.t().cpu()], 1)
        keep = vals.topk(min(n, vals.shape[1]), dim=1).indices
        vals, imgs, pats = vals.gather(1, keep), imgs.gather(1, keep), pats.gather(1, keep)
    imgs = torch.where(vals > 0, imgs, torch.full_like(imgs, -1))
    return TopActivations(values=vals.clamp_min(0), images=imgs, patches=pats, grid=grid, frequency=fired / max(n_img, 1))


def heatmaps(sae: SAE, model: nn.Module, images: torch.Tensor, latent: int | Sequence[int], *,
             size: tuple[int, int] | None = None, mode: str = "bilinear", layer: str | int | None = None,
             check_model: bool = True) -> torch.Tensor:
    """Where latents fire on images: ``(B, H, W)`` for one latent, ``(B, K, H, W)`` for K latents,
    upsampled to the image size (or ``size``) by ``mode`` ("bilinear" or "nearest")."""
    lat = latents(sae, model, images, maps=True, layer=layer, check_model=check_model)
    idx = [int(latent)] if isinstance(latent, (int, np.integer)) else [int(i) for i in latent]
    bad = [i for i in idx if not 0 <= i < sae.d_sae]
    if bad:
        raise ValueError(f"latent(s) {bad} out of range: the SAE has {sae.d_sae} latents (0..{sae.d_sae - 1}).")
    maps = upsample(lat.maps[:, idx], size or tuple(images.shape[-2:]), mode)
    return maps[:, 0] if isinstance(latent, (int, np.integer)) else maps


# -- class latents ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassLatents:
    """Per class, how each latent's per-image activation (pooled over patches) differs.

    Attributes:
        classes: class names.
        mean_in: (C, d_sae) mean activation over the images of each class (Mammo-SAE's score).
        mean_out: (C, d_sae) mean over the other images.
        contrast: (C, d_sae) standardised difference ``(mean_in - mean_out) / pooled sd`` (Cohen's d).
        auc: (C, d_sae) AUROC of the activation for "this class vs the rest".
        density: (d_sae,) share of images on which the latent fires (diffuse latents are near 1).
    """

    classes: tuple[str, ...]
    mean_in: torch.Tensor
    mean_out: torch.Tensor
    contrast: torch.Tensor
    auc: torch.Tensor
    density: torch.Tensor

    def _cls(self, c: int | str) -> int:
        if isinstance(c, str):
            if c not in self.classes:
                raise ValueError(f"unknown class {c!r}; classes are {list(self.classes)}.")
            return self.classes.index(c)
        if not -len(self.classes) <= int(c) < len(self.classes):
            raise ValueError(f"class index {c} out of range for classes {list(self.classes)}.")
        return int(c) % len(self.classes)

    def top(self, c: int | str, k: int = 10, method: str = "contrastive") -> list[int]:
        """The ``k`` latents ranked first for class ``c`` by "mean" activation (Mammo-SAE) or
        "contrastive" (Cohen's d against the other classes)."""
        i = self._cls(c)
        if method == "mean":
            score = self.mean_in[i]
        elif method == "contrastive":
            score = self.contrast[i]
        else:
            raise ValueError(f"method must be 'mean' (Mammo-SAE) or 'contrastive'; got {method!r}.")
        k = min(int(k), score.numel())
        return [int(j) for j in score.topk(k).indices]

    def table(self, k: int = 10, classes: Sequence[int | str] | None = None) -> Any:
        """A pandas DataFrame: per class and rank, the latent of each ranking with its density,
        mean in/out, contrast and AUROC (the mean ranking puts diffuse, high-density latents first)."""
        import pandas as pd

        rows = []
        for c in (classes if classes is not None else range(len(self.classes))):
            i = self._cls(c)
            for method in ("mean", "contrastive"):
                for rank, j in enumerate(self.top(i, k, method), start=1):
                    rows.append({"class": self.classes[i], "method": method, "rank": rank, "latent": j,
                                 "density": float(self.density[j]), "mean_in": float(self.mean_in[i, j]),
                                 "mean_out": float(self.mean_out[i, j]), "contrast": float(self.contrast[i, j]),
                                 "auc": float(self.auc[i, j])})
        return pd.DataFrame(rows)

    def summary(self, k: int = 10) -> Any:
        """Per class and ranking: mean density, contrast and AUROC of the top-k latents, and the
        overlap of the two top-k sets (how different Mammo-SAE's ranking is from the contrastive one)."""
        import pandas as pd

        t = self.table(k)
        rows = []
        for c, g in t.groupby("class", sort=False):
            mean_set = set(g[g.method == "mean"].latent)
            con_set = set(g[g.method == "contrastive"].latent)
            for method, gm in g.groupby("method", sort=False):
                rows.append({"class": c, "method": method, "k": k, "mean_density": gm.density.mean(),
                             "mean_contrast": gm.contrast.mean(), "mean_auc": gm.auc.mean(),
                             "overlap": len(mean_set & con_set) / max(1, k)})
        return pd.DataFrame(rows)


def _rank_auc(scores: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """(N, K) scores, (N,) bool -> (K,) AUROC per column (ties averaged; NaN without both classes)."""
    from scipy.stats import rankdata

    n1 = int(pos.sum())
    n0 = len(pos) - n1
    if n1 == 0 or n0 == 0:
        return torch.full((scores.shape[1],), float("nan"))
    r = torch.from_numpy(rankdata(scores.double().numpy(), axis=0))
    return ((r[pos].sum(0) - n1 * (n1 + 1) / 2) / (n1 * n0)).float()


def _class_targets(labels: torch.Tensor, classes: Sequence[str]) -> torch.Tensor:
    """(N, C) bool membership per class (multilabel labels are used as they are)."""
    if labels.ndim == 2:
        return labels > 0.5
    return torch.stack([labels == c for c in range(len(classes))], 1)


def class_latents(sae: SAE | None = None, model: nn.Module | None = None, data: Any = None, *,
                  precomputed: Latents | None = None, pool: str = "mean", classes: Sequence[str] | None = None,
                  layer: str | int | None = None, batch_size: int = 64, device: str | torch.device | None = None,
                  check_model: bool = True) -> ClassLatents:
    """Class-level latents, ranked two ways.

    Mammo-SAE ranks latents for a class by their mean activation over that class's images. That
    ranking favours diffuse latents that fire on every image (large mean everywhere); the
    class-contrastive ranking (Cohen's d of "this class vs the rest") puts latents that separate
    the classes first. Both are kept; :meth:`ClassLatents.summary` shows how they differ.

    Args:
        sae, model, data: the SAE, its model and a labelled dataset (or pass ``precomputed``).
        precomputed: precomputed :func:`workbench.sae.latents` of labelled data (skips the forward).
        pool: per-image pooling over patches ("mean", Mammo-SAE's; or "max").
        classes: class names (default: the dataset's).
    """
    lat = precomputed if precomputed is not None else latents(sae, model, data, pool=pool, layer=layer,
                                                        batch_size=batch_size, device=device, check_model=check_model)
    if lat.labels is None:
        raise ValueError("class latents need labels; pass a labelled dataset or an (images, labels) pair.")
    names = tuple(classes or getattr(data, "classes", ()) or ())
    y = lat.labels
    n_cls = y.shape[1] if y.ndim == 2 else max(len(names), int(y.max()) + 1)
    names = names if len(names) == n_cls else tuple(str(i) for i in range(n_cls))
    member = _class_targets(y, names)
    a = lat.pooled.double()
    mean_in, mean_out, contrast, auc = [], [], [], []
    for c in range(n_cls):
        m = member[:, c]
        if m.all() or not m.any():
            nan = torch.full((a.shape[1],), float("nan"))
            mi = a[m].mean(0).float() if m.any() else nan
            mo = a[~m].mean(0).float() if (~m).any() else nan
            mean_in.append(mi)
            mean_out.append(mo)
            contrast.append(nan)
            auc.append(nan)
            continue
        xi, xo = a[m], a[~m]
        sd = torch.sqrt(((xi.var(0, unbiased=False) * len(xi)) + (xo.var(0, unbiased=False) * len(xo))) / len(a))
        mean_in.append(xi.mean(0).float())
        mean_out.append(xo.mean(0).float())
        contrast.append(((xi.mean(0) - xo.mean(0)) / sd.clamp_min(1e-12)).float())
        auc.append(_rank_auc(a, m))
    return ClassLatents(classes=names, mean_in=torch.stack(mean_in), mean_out=torch.stack(mean_out),
                        contrast=torch.stack(contrast), auc=torch.stack(auc),
                        density=(lat.pooled > 0).float().mean(0))


# -- reliance: how much the model's output leans on each latent -------------------------------------
def reliance(sae: SAE, model: nn.Module, data: Any, *, target: int | None = None, layer: str | int | None = None,
             batch_size: int = 32, device: str | torch.device | None = None, check_model: bool = True) -> torch.Tensor:
    """(N, d_sae) per image and latent, the first-order contribution of the latent to the target's
    log-probability: ``sum over tokens of code x d log p / d code`` (attribution patching, as in
    sparse feature circuits; Marks et al. 2024). The layer's tokens are written as
    ``decode(codes) + error`` with the error held fixed, so the model's output is unchanged.

    Args:
        target: class whose evidence is attributed (default: class 1 of binary tasks, else 0).
    """
    check_call(model, data, batch_size, labels=True)
    b = bind(sae, model, layer=layer, device=device, check_model=check_model, probe=first_images(data))
    t = "default" if target is None else target
    return torch.cat([bt["reliance"].cpu() for bt in batches(b, data, batch_size=batch_size, attribute=t)])
