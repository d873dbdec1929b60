"""Sparse autoencoders on a model's layer: an activation store, SAE kinds and training, fidelity, and
latents measured against anatomy, classes and confounders (see DESIGN.md, "Sparse autoencoders").

    >>> import workbench as wb                                                   # doctest: +SKIP
    >>> store = wb.sae.cache(model, train_data, layer="blocks.2", out="runs/acts")
    >>> sae, log = wb.sae.train(store, kind="topk", expansion=8, k=32)
    >>> print(wb.sae.fidelity(sae, model, test_data))       # FVU, L0, dead, spliced AUC vs ablations
    >>> wb.sae.atlas(sae, model, test_data).best_per_structure()   # best latent per structure, pixel AUROC
    >>> wb.sae.confounders(sae, model, test_data)            # latents the model uses that sit on devices
    >>> wb.sae.intervene(sae, model, test_data, ks=(1, 5, 10, 50)).table
    >>> lat = wb.sae.latents(sae, model, test_data, pool="mean", maps=True)   # latents as concepts

Modules: ``autoencoders`` (kinds, registry), ``losses``, ``training``, ``checkpoint`` (save/load),
``layers`` (layer names, token layouts, truncated forwards, splicing), ``store`` (cache,
open_store), ``latents``, ``fidelity``, ``analysis`` (top activations, heatmaps, class latents,
reliance), ``atlas`` (atlas, confounders), ``interventions`` (intervene, compare_models).
"""
from __future__ import annotations

from .analysis import ClassLatents, TopActivations, class_latents, heatmaps, reliance, top_activations
from .atlas import Atlas, atlas, confounders
from .autoencoders import KINDS, SAE, SAEOutput, create, register_kind
from .checkpoint import load, save
from .fidelity import Fidelity, fidelity
from .interventions import Intervention, ModelComparison, compare_models, intervene
from .latents import Latents, latents
from .layers import TokenLayout, layer_names
from .store import ActivationStore, activations, cache, open_store
from .training import TensorTokens, Trained, TrainLog, train

__all__ = ["KINDS", "SAE", "SAEOutput", "create", "register_kind", "train", "Trained", "TrainLog", "TensorTokens",
           "save", "load", "cache", "open_store", "activations", "ActivationStore", "TokenLayout", "layer_names",
           "latents", "Latents", "fidelity", "Fidelity", "top_activations", "TopActivations", "heatmaps",
           "class_latents", "ClassLatents", "reliance", "atlas", "Atlas", "confounders", "intervene", "Intervention",
           "compare_models", "ModelComparison"]
