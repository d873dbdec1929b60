"""Figure functions (matplotlib), styles, export, and figures that rebuild from their sidecar.

Every figure function takes ``ax=None`` where it draws a single panel (else returns a Figure), uses
colour-blind-safe colours, follows the active style and saves with ``save_figure`` (PNG/PDF/SVG +
a JSON sidecar)::

    with wb.viz.style("paper", columns=2):            # or "slides", "notebook"; use_style() for a session
        fig = wb.viz.draw("community_overlay", model, test, indices=[0, 1, 2, 3], k=4)
        wb.viz.save_figure(fig, "figures/overlay")     # 600 dpi, 7.09 in wide, sidecar with the recipe

    wb.viz.rebuild("figures/overlay.json")              # `workbench figure rebuild figures/overlay.json`

``draw(recipe, model, data, **params)`` runs a registered *recipe* (compute + draw) and records the
figure function, its parameters, the checkpoint file and its SHA-256 (the file the model was saved
to or loaded from), the data's ``wb.data.load`` arguments and hash, the seed, the style and the
package versions; ``rebuild`` refuses when the checkpoint or data differ from that record. Figures
drawn directly (``fig = wb.viz.budget_bars(...)``) save the same way but record no recipe.
``recipes()`` lists the recipes: community_overlay, community_grid, attention_grid,
attribution_grid, budget_bars, deletion_curves, audit_figure, alignment_heatmap, gallery,
training_curves.

**A new figure kind** (concept contributions, SAE latent grids, pruning reports) follows the
style by decorating its function with ``@styled`` and sizing it with ``figsize(w, h)``
(``workbench.viz._style``), and becomes rebuildable with a recipe beside it, a few lines::

    from workbench.viz import recipe
    from workbench.viz._recipes import batch_of

    @recipe("concept_contributions")
    def _concept_contributions(model, data, *, indices=(0, 1, 2, 3), top: int = 5):
        batch = batch_of(data, indices)                  # the samples as a batch dict
        return concept_contributions(model, batch, top=top)   # your figure function

Parameters must be JSON values (the recipe is called with them as read back from JSON, at draw and
at rebuild alike). ``@recipe(name, files=("sae",))`` hashes and checks parameters that name files
(an SAE checkpoint); ``model=False`` / ``data=False`` for recipes without them; ``loader=`` when
``workbench.models.load`` cannot rebuild the model from its checkpoint. Test that
``rebuild`` gives the same pixels (``tests/test_figures.py`` shows how).
"""
from __future__ import annotations

import importlib
from typing import Any

from ._export import save_figure, versions
from ._recipes import draw, rebuild, recipe, recipes
from ._style import PALETTE, PALETTES, STYLES, colours, structure_colours, style, use_style
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
    "alignment_heatmap": "workbench.viz.evaluation",
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
    # concept bottlenecks (issue 12)
    "contribution_bars": "workbench.viz.concepts",
    "concept_intervention_curves": "workbench.viz.concepts",
    "tcav_bars": "workbench.viz.concepts",
    "concept_map": "workbench.viz.concepts",
    "concept_panel": "workbench.viz.concepts",
}


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'workbench.viz' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


__all__ = ["save_figure", "versions", "style", "use_style", "draw", "rebuild", "recipe", "recipes", "PALETTE",
           "PALETTES", "STYLES", "colours", "structure_colours", "gallery", *_EXPORTS]
