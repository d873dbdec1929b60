"""Save and load SAEs: ``PATH.safetensors`` (weights and buffers) + ``PATH.json`` (config, provenance).

The JSON holds the kind, sizes, ``k`` and ``source`` (model config and fingerprint, layer, token
layout of the activations it was trained on), so an SAE knows which model and layer it belongs to.
Both files are written through temporary files renamed only when both are complete.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from workbench._io import atomic_path
from workbench.models.checkpoint import checkpoint_paths

from .autoencoders import SAE, create

FORMAT = "workbench-sae/1"


def save(sae: SAE, path: str | os.PathLike) -> Path:
    """Write ``sae`` to ``PATH.safetensors`` + ``PATH.json``; returns the weights path.

    Examples:
        >>> import tempfile
        >>> from workbench.sae.autoencoders import create
        >>> p = save(create("topk", d=8, expansion=2, k=2), tempfile.mkdtemp() + "/sae")
        >>> load(p).config()["kind"]
        'topk'
    """
    from safetensors.torch import save_file

    if not isinstance(sae, SAE):
        raise TypeError(f"expected a workbench SAE (workbench.sae.train / create); got {type(sae).__name__}.")
    from workbench._checks import check_output_path

    check_output_path(path, name="path")
    weights, config = checkpoint_paths(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in sae.state_dict().items()}
    text = json.dumps({"format": FORMAT, **sae.config()}, indent=2, sort_keys=True, default=str)
    with atomic_path(config) as tmp_json, atomic_path(weights) as tmp_w:
        tmp_json.write_text(text, encoding="utf-8")
        save_file(state, str(tmp_w), metadata={"format": FORMAT, "sae_config": text})
    return weights


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON config of the SAE saved at ``path``."""
    _, config = checkpoint_paths(path)
    if not config.exists():
        raise FileNotFoundError(f"SAE config {config} not found; an SAE is PATH.safetensors plus PATH.json "
                                "written by workbench.sae.save.")
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"SAE config {config} is not valid JSON ({e}); re-save the SAE.") from e
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ValueError(f"{config} is not a workbench SAE config (format {cfg.get('format') if isinstance(cfg, dict) else None!r}, "
                         f"expected {FORMAT!r}); is it a model checkpoint? Load models with workbench.models.load.")
    return cfg


def load(path: str | os.PathLike, device: str | torch.device | None = None) -> SAE:
    """Rebuild and load the SAE saved at ``path`` (with or without suffix); returned in eval mode."""
    from safetensors.torch import load_file

    from workbench._device import resolve_device

    weights, _ = checkpoint_paths(path)
    cfg = read_config(path)
    if not weights.exists():
        raise FileNotFoundError(f"SAE weights {weights} not found beside its config; re-save the SAE.")
    extra = {k: v for k, v in cfg.items() if k not in ("format", "kind", "d", "d_sae", "k", "source")}
    sae = create(cfg["kind"], int(cfg["d"]), d_sae=int(cfg["d_sae"]), k=cfg.get("k"), source=cfg.get("source"), **extra)
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"SAE weights {weights} cannot be read ({type(e).__name__}: {e}); re-save the SAE.") from e
    try:
        sae.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"SAE weights {weights.name} do not fit the config beside them ({cfg['kind']}, d={cfg['d']}, "
                         f"d_sae={cfg['d_sae']}); re-save the SAE. Details: {str(e).splitlines()[0]}") from e
    sae.eval()
    return sae.to(resolve_device(device) if device is not None else torch.device("cpu"))
