"""How well patch communities line up with anatomy.

Choices (documented so numbers can be compared):

- ARI and NMI (scikit-learn) are computed per image at the mask resolution: the hard community
  map is upsampled to the mask size (nearest) and compared with the anatomy label map
  (``workbench.data.label_map``: 0 = background, k = structures[k-1], later structures win where
  masks overlap). Post-hoc communities are fitted per image, so their indices mean nothing across
  images: scores are per image, and ``ari``/``nmi``/``purity`` are their means.
- purity: per image, each community is given its most frequent anatomy label (background
  included); the share of pixels that agree.
- table: community x structure, the share of each community's soft mass inside each structure
  (mass counted at the patch grid with the fraction of each patch covered by the structure; this
  equals nearest upsampling of the memberships). Pooled over images where the structure is
  annotated (``mask_present``); a ``background`` column holds the share outside every structure.
  Pooling by community index is meaningful for DCMM communities (same index = same community in
  every image); for post-hoc methods read ``tables`` (one table per image) instead.
- Structures not annotated for an image (``mask_present`` False) are left out of that image's
  label map and table; their pixels count as background there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

__all__ = ["Alignment", "anatomy_alignment"]


@dataclass(frozen=True)
class Alignment:
    """Alignment of communities with anatomy.

    Attributes:
        ari: mean adjusted Rand index over images.
        nmi: mean normalised mutual information over images.
        purity: mean purity over images.
        table: pandas DataFrame (communities x structures + background), share of each
            community's soft mass in each structure (rows sum to >= 1 when structures overlap).
        per_image: pandas DataFrame with columns ari, nmi, purity (one row per image).
        tables: one community x structure table per image.
        structures: the structures used, in label-map order.
        names: a name for each community, ``"C<k>: <dominant structure>"``.
    """

    ari: float
    nmi: float
    purity: float
    table: Any
    per_image: Any
    tables: tuple
    structures: tuple[str, ...]
    names: tuple[str, ...]

    def plot(self, ax: Any = None, **style: Any) -> Any:
        """Heatmap of ``table`` (communities x structures): ``workbench.viz.alignment_heatmap``."""
        from workbench.viz.evaluation import alignment_heatmap

        return alignment_heatmap(self, ax=ax, **style)


def _as_masks(masks: Any, structures: Sequence[str] | None, background: str
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, list[str]]:
    """Normalise the masks argument to ({name: (B, H, W) bool}, present or None, structures)."""
    present = None
    if isinstance(masks, dict) and "masks" in masks and isinstance(masks["masks"], dict):  # a batch
        present = masks.get("mask_present")
        masks = masks["masks"]
    if isinstance(masks, dict):
        if not masks:
            raise ValueError("masks is an empty dict; pass {structure: (B, H, W) bool} with at least one structure.")
        masks = {k: torch.as_tensor(v).bool() for k, v in masks.items()}
        names = list(structures) if structures is not None else list(masks)
        missing = [s for s in names if s not in masks]
        if missing:
            raise ValueError(f"structures {missing} are not in masks; masks has {list(masks)}.")
        return {s: masks[s] for s in names}, present, names
    lab = torch.as_tensor(masks)
    if lab.is_floating_point() or lab.dtype == torch.bool:
        raise TypeError(f"masks must be a dict {{structure: (B, H, W) bool}} or an integer (B, H, W) label map; "
                        f"got a {lab.dtype} tensor.")
    if lab.ndim == 2:
        lab = lab[None]
    n_labels = int(lab.max()) if lab.numel() else 0
    names = list(structures) if structures is not None else [f"structure_{i}" for i in range(1, n_labels + 1)]
    if len(names) < n_labels:
        raise ValueError(f"the label map has labels up to {n_labels} but only {len(names)} structure names were given.")
    return {s: lab == i for i, s in enumerate(names, start=1)}, None, names


def anatomy_alignment(communities: Any, masks: Any, *, structures: Sequence[str] | None = None,
                      background: str = "background", resize: bool = False) -> Alignment:
    """Score how well communities match anatomical structures.

    Args:
        communities: a ``workbench.communities.Communities`` result (B images).
        masks: {structure: (B, H, W) bool} (a batch's ``masks``), a whole batch dict (then its
            ``mask_present`` is used), or a (B, H, W) integer label map (0 = background).
        structures: which structures to use and their label-map order (later wins on overlap);
            all structures of ``masks`` when None.
        background: the name of the column for mass outside every structure.
        resize: resize masks (nearest) to the communities' image size when they differ; without
            it, masks of another size raise.

    Returns:
        An :class:`Alignment` (ari, nmi, purity, table, per_image, tables, names).
    """
    import pandas as pd
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    if not hasattr(communities, "memberships") or not hasattr(communities, "hard"):
        raise TypeError(f"communities must be a Communities result (workbench.communities(maps, k=...)); got "
                        f"{type(communities).__name__}.")
    if not isinstance(masks, (Mapping, torch.Tensor, np.ndarray)):
        raise TypeError(f"masks must be a dict {{structure: (B, H, W) bool}}, a batch dict or an integer (B, H, W) "
                        f"label map; got {type(masks).__name__}.")
    masks, present, names = _as_masks(masks, structures, background)
    ref = next(iter(masks.values()))
    b, (h, w) = communities.memberships.shape[0], communities.grid
    if ref.ndim == 2:
        masks = {k: v[None] for k, v in masks.items()}
        ref = ref[None]
    if ref.shape[0] != b:
        raise ValueError(f"masks hold {ref.shape[0]} images but the communities {b}; pass the masks of the same batch.")
    size = tuple(ref.shape[-2:])
    target = communities.image_size or size
    if size != tuple(target):
        if not resize:
            raise ValueError(f"masks are {size[0]}x{size[1]} but the images were {target[0]}x{target[1]}; "
                             "resize the masks to the image size or pass resize=True (nearest).")
        masks = {k: torch.nn.functional.interpolate(v[:, None].float(), size=tuple(target), mode="nearest")[:, 0] > 0.5
                 for k, v in masks.items()}
        size = tuple(target)
    hh, ww = size
    annotated = [bool(masks[s][i].any()) and (present is None or s not in present or bool(present[s][i]))
                 for s in names for i in range(b)]
    if not any(annotated):
        raise ValueError(f"every mask ({', '.join(names)}) is empty on these {b} images, so there is no anatomy to "
                         "align with (purity and ARI would describe the background only); pass the masks of "
                         "annotated structures (mask_present says which are annotated).")
    if present is None:
        present = {k: torch.ones(b, dtype=torch.bool) for k in names}
    else:
        present = {k: torch.as_tensor(present[k]).bool() if k in present else torch.ones(b, dtype=torch.bool)
                   for k in names}

    hard_up = torch.nn.functional.interpolate(communities.hard[:, None].float(), size=(hh, ww),
                                              mode="nearest")[:, 0].long()
    # fraction of each patch covered by each structure: (B, S, h*w)
    frac = torch.stack([torch.nn.functional.adaptive_avg_pool2d(masks[s][:, None].float(), (h, w))[:, 0]
                        for s in names], 1).reshape(b, len(names), h * w)
    pis = communities.memberships.float()  # (B, n, K)
    kk = pis.shape[-1]
    cols = list(names) + [background]
    num = np.zeros((kk, len(cols)))
    den = np.zeros((kk, len(cols)))
    rows, tables = [], []
    for i in range(b):
        pres = [present[s][i].item() for s in names]
        lab = torch.zeros((hh, ww), dtype=torch.long)
        union = torch.zeros((hh, ww), dtype=torch.bool)
        for j, s in enumerate(names, start=1):
            if pres[j - 1]:
                lab[masks[s][i]] = j
                union |= masks[s][i]
        y, c = lab.reshape(-1).numpy(), hard_up[i].reshape(-1).numpy()
        ari = adjusted_rand_score(y, c)
        nmi = normalized_mutual_info_score(y, c)
        cont = np.zeros((kk, len(cols)))
        np.add.at(cont, (c, y), 1)
        purity = cont.max(1).sum() / max(c.size, 1)
        rows.append({"ari": ari, "nmi": nmi, "purity": purity})
        mass = pis[i].sum(0).numpy()  # (K,)
        f = frac[i].numpy()  # (S, n)
        inside = pis[i].numpy().T @ f.T  # (K, S)
        fu = torch.nn.functional.adaptive_avg_pool2d(union[None, None].float(), (h, w)).reshape(-1).numpy()
        outside = pis[i].numpy().T @ (1 - fu)  # (K,)
        t = np.concatenate([inside, outside[:, None]], 1) / np.maximum(mass[:, None], 1e-12)
        for j in range(len(names)):
            if not pres[j]:
                t[:, j] = np.nan
        tables.append(pd.DataFrame(t, index=[f"C{k}" for k in range(kk)], columns=cols))
        ok = np.array(pres + [True])
        num[:, ok] += np.concatenate([inside, outside[:, None]], 1)[:, ok]
        den[:, ok] += mass[:, None]
    table = pd.DataFrame(num / np.maximum(den, 1e-12), index=[f"C{k}" for k in range(kk)], columns=cols)
    table = table.mask(den <= 0)
    label = [f"C{k}: {table.iloc[k].idxmax()}" if table.iloc[k].notna().any() else f"C{k}" for k in range(kk)]
    per_image = pd.DataFrame(rows)
    return Alignment(ari=float(per_image["ari"].mean()), nmi=float(per_image["nmi"].mean()),
                     purity=float(per_image["purity"].mean()), table=table, per_image=per_image,
                     tables=tuple(tables), structures=tuple(names), names=tuple(label))
