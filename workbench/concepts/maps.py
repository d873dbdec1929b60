"""Spatial concept maps: where in an image each concept of a CBM is evidenced, scored against masks.

Methods (``method=``):

- ``"tokens"`` (ViTs; the default for them): the concept head applied to every patch token of the
  last layer (after the same final norm as the pooled token), ``w_k . t_p`` without the bias: the
  patch-level concept evidence of concept-based similarity reasoning (Huy et al. 2025). One forward.
- ``"gradcam"`` (CNNs and ViTs; the default for CNNs): Grad-CAM of each concept logit at the
  backbone's default Grad-CAM layer (``workbench.attribution``: the deepest stage with maps of at
  least 7 px; ViTs: the last block's tokens). One forward and K backward passes.

Maps are upsampled bilinearly to the image size. ``score_concept_maps`` scores them against the masks
named like the concepts (the phantom's findings) with ``workbench.evaluation.evaluate_localisation``
(pointing game, relevance mass, rank accuracy, top-k IoU); images without the finding (empty mask)
are excluded and counted, as for any map.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._model import ConceptBottleneck, check_cbm
from ._validate import check_choice, check_images, concept_index

METHODS = ("auto", "tokens", "gradcam")


@dataclass(frozen=True)
class ConceptMaps:
    """Concept maps of a batch (``concept_maps``).

    Attributes:
        maps: (B, K, H, W) float, larger = more evidence for the concept.
        names: the K concept names.
        method: "tokens" or "gradcam".
        images: (B, C, H, W) the images (CPU), kept for plotting.
    """

    maps: torch.Tensor
    names: tuple[str, ...]
    method: str
    images: torch.Tensor | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def index(self, concept: int | str) -> int:
        return concept_index(self.names, concept)

    def of(self, concept: int | str) -> torch.Tensor:
        """(B, H, W) maps of one concept (a name or index)."""
        return self.maps[:, self.index(concept)]

    def plot(self, index: int = 0, concept: int | str = 0, ax: Any = None, **kw: Any) -> Any:
        """One concept's map over its image (``workbench.viz.concepts.concept_map``)."""
        from workbench.viz.concepts import concept_map

        return concept_map(self, index=index, concept=concept, ax=ax, **kw)


class _ConceptLogits(nn.Module):
    """A view of a CBM whose output is the concept logits (for Grad-CAM); exposes the ViT attributes
    Grad-CAM reads without registering the backbone twice."""

    def __init__(self, cbm: ConceptBottleneck) -> None:
        super().__init__()
        self.cbm = cbm

    @property
    def blocks(self) -> Any:  # noqa: D401 - attribute passthrough
        return self.cbm.backbone.blocks

    @property
    def patch_embed(self) -> Any:
        return self.cbm.backbone.patch_embed

    @property
    def num_prefix_tokens(self) -> int:
        return int(getattr(self.cbm.backbone, "num_prefix_tokens", 1))

    @property
    def num_classes(self) -> int:
        return self.cbm.num_concepts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbm.concept_logits(x)


def _is_vit(bb: nn.Module) -> bool:
    return hasattr(bb, "blocks") and hasattr(bb, "patch_embed")


def _token_maps(cbm: ConceptBottleneck, x: torch.Tensor) -> torch.Tensor:
    from workbench.attribution.methods_cam import _tokens_to_grid

    bb = cbm.backbone
    tokens = bb.forward_features(x)  # (B, N, D), final norm applied
    fc_norm = getattr(bb, "fc_norm", None)
    if fc_norm is not None:
        tokens = fc_norm(tokens)
    grid = _tokens_to_grid(tokens, bb, tuple(x.shape[-2:]))  # (B, D, h, w)
    w = cbm.concept_head.weight  # (K, D)
    z = torch.einsum("bdhw,kd->bkhw", grid, w) * cbm.adapt_gain[None, :, None, None]
    return F.interpolate(z, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)


def concept_maps(cbm: ConceptBottleneck, images: Any, *, method: str = "auto", concepts: Sequence[Any] | None = None,
                 layer: str | None = None, device: Any = None) -> ConceptMaps:
    """Where each concept is evidenced in each image.

    Args:
        cbm: a concept model; not changed.
        images: (B, C, H, W) in [0, 1] or a batch dict.
        method: "auto" ("tokens" for ViT backbones, "gradcam" otherwise), "tokens" or "gradcam".
        concepts: names or indices of the concepts to map (default all).
        layer: Grad-CAM layer inside the backbone (e.g. "layer3"); default the attribution default.
        device: where to run (None: the model's device).

    Returns:
        A :class:`ConceptMaps` with maps (B, K', H, W).
    """
    from ._predict import _Eval

    cbm = check_cbm(cbm, "concept_maps")
    x = check_images(images, model=cbm)
    check_choice(method, "method", METHODS)
    vit = _is_vit(cbm.backbone)
    if method == "auto":
        method = "tokens" if vit else "gradcam"
    if method == "tokens" and not vit:
        raise ValueError(f"method='tokens' needs a ViT backbone (patch tokens); {type(cbm.backbone).__name__} is a "
                         "CNN: use method='gradcam'.")
    idx = list(range(cbm.num_concepts)) if concepts is None else [concept_index(cbm.concepts, c) for c in concepts]
    names = tuple(cbm.concepts[i] for i in idx)
    if method == "tokens":
        with _Eval(cbm, device) as (m, dev), torch.no_grad():
            maps = _token_maps(m, x.to(dev))[:, idx].float().cpu()
        return ConceptMaps(maps=maps, names=names, method=method, images=x.cpu())
    from workbench.attribution import attribute, default_cam_layer

    view = _ConceptLogits(cbm)
    if layer is None:
        inner = default_cam_layer(cbm.backbone, tuple(x.shape[-2:]))
    else:
        if layer not in dict(cbm.backbone.named_modules()):
            raise ValueError(f"the backbone has no layer {layer!r}; e.g. "
                             f"{[n for n, _ in cbm.backbone.named_children()][:8]}.")
        inner = layer
    name = f"cbm.backbone.{inner}"
    out = []
    for k in idx:
        att = attribute(view, x, target=k, method="gradcam", layer=name, device=device)
        out.append(att.maps.float().cpu())
    return ConceptMaps(maps=torch.stack(out, 1), names=names, method=method, images=x.cpu(),
                       params={"layer": inner})


def score_concept_maps(maps: ConceptMaps, masks: Any, *, concepts: Sequence[str] | None = None,
                       **kw: Any) -> Any:
    """Localisation metrics of each concept's maps against the mask of the same name.

    Args:
        maps: a :class:`ConceptMaps`.
        masks: a batch dict (``dataset.batch(...)``, its masks and mask_present) or {name: (B, H, W)}.
        concepts: the concepts to score (default every concept that has a mask).
        **kw: passed to ``evaluate_localisation`` (tolerance, k, ...).

    Returns:
        DataFrame indexed by concept: pointing_game, relevance_mass, rank_accuracy, topk_iou, n
        (images with the finding), n_excluded.
    """
    import pandas as pd

    from workbench.evaluation import evaluate_localisation

    md = masks.get("masks", masks) if isinstance(masks, Mapping) else None
    if not isinstance(md, Mapping):
        raise TypeError("masks must be a batch dict (dataset.batch(...)) or a dict {concept: (B, H, W) masks}.")
    present = masks.get("mask_present") if "masks" in masks else None
    names = [c for c in (concepts or maps.names) if c in md]
    if not names:
        raise ValueError(f"no mask is named like the concepts {list(maps.names)}; the masks are {list(md)}. Score "
                         "against masks of the findings (the phantom's), or rename them.")
    rows = []
    for c in names:
        sub: Any = {c: md[c]}
        if present is not None and c in present:
            sub = {"masks": {c: md[c]}, "mask_present": {c: present[c]}}
        df = evaluate_localisation(maps.of(c), sub, **kw)
        rows.append(df.rename(index={df.index[0]: c}))
    out = pd.concat(rows)
    out.index.name = "concept"
    return out
