"""Latent activations of a model's images: pooled per image and as maps (SAE latents as concepts).

``latents(sae, model, data)`` runs the model up to the SAE's layer and encodes every image's
tokens; the pooled ``(N, d_sae)`` matrix is what a concept bottleneck can take as label-free
concepts (``workbench.concepts`` wraps it as a concept source), the maps ``(N, d_sae, h, w)`` are
where each latent fires on the patch grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._apply import batches, bind, check_call, first_images
from .autoencoders import SAE

POOLS = ("mean", "max", "sum", "cls")


@dataclass(frozen=True)
class Latents:
    """Latent activations of N images.

    Attributes:
        pooled: (N, d_sae) per-image activations, pooled over the kept tokens by ``pool``.
        maps: (N, d_sae, h, w) activations on the patch grid, or None (``maps=False``).
        labels: (N,) or (N, L) labels when the data has them, else None.
        ids: image ids (dataset ids or positions).
        pool: how tokens were pooled.
        layer: the layer read.
        grid: (h, w) of the patch grid (``(0, 0)`` without one).
    """

    pooled: torch.Tensor
    maps: torch.Tensor | None
    labels: torch.Tensor | None
    ids: tuple[str, ...]
    pool: str
    layer: str
    grid: tuple[int, int]

    @property
    def names(self) -> tuple[str, ...]:
        """Concept-style names of the latents (``"latent_17"``)."""
        return tuple(f"latent_{i}" for i in range(self.pooled.shape[1]))

    def heatmaps(self, latent: int, size: tuple[int, int] | None = None, mode: str = "bilinear") -> torch.Tensor:
        """(N, H, W) maps of one latent, upsampled to ``size`` (the grid when None)."""
        if self.maps is None:
            raise ValueError("these latents were computed without maps; call latents(..., maps=True).")
        m = self.maps[:, int(latent)].float()
        return m if size is None else upsample(m, size, mode)


def upsample(maps: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """(N, h, w) or (N, K, h, w) grid maps -> the same at ``size`` (H, W)."""
    x = maps[:, None] if maps.ndim == 3 else maps
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(x.float(), size=tuple(int(s) for s in size), mode=mode, **kw)
    return out[:, 0] if maps.ndim == 3 else out


def pool_codes(codes: torch.Tensor, layout: Any, pool: str) -> torch.Tensor:
    """(B, T, d_sae) codes of the kept tokens -> (B, d_sae) by ``pool``."""
    if pool == "mean":
        return codes.mean(1)
    if pool == "max":
        return codes.amax(1)
    if pool == "sum":
        return codes.sum(1)
    if pool == "cls":
        if layout.tokens == "patch" or "cls" not in layout.prefix:
            raise ValueError("pool='cls' needs the class token among the SAE's tokens (a store cached with "
                             "tokens='all' or 'prefix' of a ViT with a class token); use pool='mean' or 'max'.")
        return codes[:, layout.prefix.index("cls")]
    raise ValueError(f"pool must be one of {POOLS}; got {pool!r}.")


def latents(sae: SAE, model: nn.Module, data: Any, *, pool: str = "mean", maps: bool = False,
            layer: str | int | None = None, batch_size: int = 64, device: str | torch.device | None = None,
            check_model: bool = True) -> Latents:
    """Encode a model's images into SAE latent activations.

    Args:
        sae: a trained SAE (its ``source`` names the layer and tokens).
        model: the model whose layer the SAE reads.
        data: a dataset, images ``(N, C, H, W)`` in [0, 1], or an ``(images, labels)`` pair.
        pool: "mean" over kept tokens (Mammo-SAE's per-image activation), "max", "sum" or "cls".
        maps: also return the (N, d_sae, h, w) maps on the patch grid.
        layer: the layer, when the SAE does not record it.
        batch_size: images per forward.
        device: where to run (None: the model's device).
        check_model: refuse a model other than the one the SAE's store came from.

    Returns:
        :class:`Latents`, on the CPU.
    """
    check_call(model, data, batch_size)
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}; got {pool!r}.")
    b = bind(sae, model, layer=layer, device=device, check_model=check_model, probe=first_images(data))
    if maps and not b.layout.has_grid:
        raise ValueError("maps=True needs the patch grid, but the SAE reads prefix tokens only; use maps=False.")
    h, w = b.layout.grid if b.layout.has_grid else (0, 0)
    pooled, grid_maps, labels, ids = [], [], [], []
    for batch in batches(b, data, batch_size=batch_size):
        codes = batch["codes"]
        pooled.append(pool_codes(codes, b.layout, pool).cpu())
        if maps:
            patches = b.layout.patch_tokens(codes)
            grid_maps.append(patches.transpose(1, 2).reshape(codes.shape[0], -1, h, w).cpu())
        labels.append(batch["label"].cpu())
        ids += [str(int(i)) for i in batch["index"]]
    dataset_ids = getattr(data, "ids", None)
    if dataset_ids is not None and len(dataset_ids) == len(ids):
        ids = [str(dataset_ids[int(i)]) for i in ids]
    has_labels = not torch.is_tensor(data)
    return Latents(pooled=torch.cat(pooled), maps=torch.cat(grid_maps) if maps else None,
                   labels=torch.cat(labels) if has_labels else None, ids=tuple(ids), pool=pool, layer=b.layer,
                   grid=(h, w))
