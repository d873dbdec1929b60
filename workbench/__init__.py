"""workbench: an interpretability workbench for medical imaging.

Import as ``import workbench as wb``. The public API is a set of verbs and small result
classes, re-exported here lazily (only the ``communities`` verb is bound eagerly, see below)::

    ds = wb.data.load("phantom", split="train", n=512, size=64)
    model = wb.models.create("vit_tiny", num_classes=2, img_size=64, in_chans=1, patch_size=8)
    history = wb.fit(model, ds, epochs=3, batch_size=64, lr=1e-3)
    maps = wb.attention_maps(model, images)
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute" (or "module" for a submodule)
_EXPORTS = {
    "data": "workbench.data",
    "models": "workbench.models",
    "train": "workbench.train",
    "evaluation": "workbench.evaluation",
    "viz": "workbench.viz",
    "jobs": "workbench.jobs",
    "sae": "workbench.sae",
    "fit": "workbench.train:fit",
    "evaluate": "workbench.train:evaluate",
    "attention_maps": "workbench.attention:attention_maps",
    "AttentionMaps": "workbench.attention:AttentionMaps",
    "rollout": "workbench.attention:rollout",
    "chefer_relevance": "workbench.attention:chefer_relevance",
    "attribute": "workbench.attribution:attribute",
    "Attribution": "workbench.attribution:Attribution",
    "explain_dataset": "workbench.explain:explain_dataset",
    "resolve_device": "workbench._device:resolve_device",
    "set_threads": "workbench._device:set_threads",
    "pruning": "workbench.pruning",
    "concepts": "workbench.concepts",
}

__all__ = sorted(_EXPORTS) + ["__version__", "communities", "Communities"]

# ``communities`` names both a submodule and its verb: importing the submodule anywhere binds the
# module to this attribute, so the verb is bound eagerly here (after the submodule import).
from .communities import Communities, communities  # noqa: E402


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    mod_name, _, attr = target.partition(":")
    mod = importlib.import_module(mod_name)
    value = getattr(mod, attr) if attr else mod
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
