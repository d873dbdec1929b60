"""Figure functions (matplotlib) and export. Every plotting function takes ``ax=None`` or returns
a Figure, uses colour-blind-safe colours (``viz._style``) and can be saved with ``save_figure``."""
from __future__ import annotations

import importlib
from typing import Any

from ._export import save_figure, versions
from ._style import PALETTE, colours, structure_colours
# ``gallery`` names both a submodule and its function; bind the function after the submodule import.
from .gallery import gallery

_EXPORTS = {
    # attention / communities overlays (issue 4)
    "community_overlay": "workbench.viz.overlays",
    "community_grid": "workbench.viz.overlays",
    "attention_grid": "workbench.viz.overlays",
    "draw_contours": "workbench.viz.overlays",
    # attribution and evaluation figures (issue 5)
    "attribution_grid": "workbench.viz.attribution",
    "budget_bars": "workbench.viz.evaluation",
    "deletion_curves": "workbench.viz.evaluation",
    "audit_figure": "workbench.viz.evaluation",
    # training
    "training_curves": "workbench.viz.training",
    # sparse autoencoders (issue 13)
    "sae_training": "workbench.viz.sae", "latent_heatmap": "workbench.viz.sae", "latent_grid": "workbench.viz.sae",
    "atlas_bars": "workbench.viz.sae", "atlas_matrix": "workbench.viz.sae", "class_latent_bars": "workbench.viz.sae",
    "intervention_curves": "workbench.viz.sae",
    # pruning (issue 14)
    "score_profile": "workbench.viz.pruning",
    "sweep_curves": "workbench.viz.pruning",
    "report_figure": "workbench.viz.pruning",
}


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'workbench.viz' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


__all__ = ["save_figure", "versions", "PALETTE", "colours", "structure_colours", "gallery", *_EXPORTS]
