"""Models: one factory over timm (``create``), checkpoints (``save``/``load``), DCMM attention.

Examples:
    >>> import workbench.models as wm
    >>> model = wm.create("vit_tiny", num_classes=2, img_size=64, in_chans=1, patch_size=8, depth=2)
    >>> model.workbench_config["img_size"]
    [64, 64]
"""
from __future__ import annotations

from .checkpoint import checkpoint_paths, load, load_if_present, load_weights, read_config, save, saved_checkpoint
from .factory import SHORT_NAMES, StandardizedConv2d, create, create_from_config, default_patch_size, list_models

__all__ = ["create", "create_from_config", "list_models", "save", "load", "load_if_present", "load_weights", "saved_checkpoint",
           "read_config", "checkpoint_paths", "default_patch_size", "SHORT_NAMES", "StandardizedConv2d"]
