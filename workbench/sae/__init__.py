"""Sparse autoencoders on a model's layer: an activation store, SAE kinds, training, fidelity and
latent analysis against anatomy (see DESIGN.md, "Sparse autoencoders").

    >>> import workbench as wb
    >>> sae, log = wb.sae.train(activations, kind="topk", expansion=8, k=32)   # doctest: +SKIP
"""
from __future__ import annotations

from .autoencoders import KINDS, SAE, SAEOutput, create, register_kind
from .checkpoint import load, save
from .training import TensorTokens, Trained, TrainLog, train

__all__ = ["KINDS", "SAE", "SAEOutput", "create", "register_kind", "train", "Trained", "TrainLog",
           "TensorTokens", "save", "load"]
