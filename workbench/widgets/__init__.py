"""ipywidgets wiring for interactive exploration (no science here: each widget calls the package).

One module per widget, named unlike its function (a submodule named like a function would shadow
it once imported); ``workbench.widgets.<function>`` imports the module lazily (ipywidgets loads
only when a widget is used):

- ``explorer(model, dataset)``: attention communities grouped by anatomy (``communities.py``).
- ``latent_browser(sae, model, dataset)``: SAE latents, their top images, heatmaps and structure
  profiles (``latents.py``).
- ``pruner(model, calibration, test)``: pruning ratio, criterion and unit -> AUC, latency, size and
  relevance maps before/after with anatomy contours (``prune_view.py``).
- ``concept_explorer(cbm, dataset)``: concept sliders, interventions, class evidence maps
  (``concept_sliders.py``).
"""
from __future__ import annotations

import importlib
from typing import Any

# public name -> module of this package that defines it
_EXPORTS = {
    "explorer": "communities",
    "Explorer": "communities",
    "latent_browser": "latents",
    "LatentBrowser": "latents",
    "pruner": "prune_view",
    "Pruner": "prune_view",
    "concept_explorer": "concept_sliders",
    "ConceptExplorer": "concept_sliders",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'workbench.widgets' has no attribute {name!r}")
    return getattr(importlib.import_module(f"workbench.widgets.{mod}"), name)
