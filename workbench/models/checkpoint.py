"""Checkpoints: safetensors weights plus a JSON of the model config, no pickle.

A checkpoint ``PATH`` is two files side by side:

- ``PATH.safetensors``: the state dict; its header metadata also carries the config (key
  ``workbench_config``) so the weights always know which architecture they came from;
- ``PATH.json``: the same config, human-readable (what ``create`` was given).

``PATH`` may be given with or without either suffix. Both files are written to temporary files
and renamed only once both are complete, so an interrupted save leaves the previous checkpoint
intact.
"""
from __future__ import annotations

import json
import os
import weakref
from pathlib import Path
from typing import Any

import torch

from workbench._checks import check_output_path
from workbench._io import atomic_path

from .factory import create_from_config

FORMAT = "workbench-checkpoint/1"

# model -> (weights file, hash of its weights when saved or loaded): lets a figure find the
# checkpoint its model came from (``saved_checkpoint``) without touching the model.
_SAVED: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[Path, str]]" = weakref.WeakKeyDictionary()


def _weights_hash(model: torch.nn.Module) -> str:
    from workbench.jobs import fingerprint

    return fingerprint(model)["weights_sha256"]


def saved_checkpoint(model: torch.nn.Module) -> Path | None:
    """The ``.safetensors`` file ``model`` was last saved to or loaded from in this session, if its
    weights still equal that file's (not trained since) and the file exists; else None."""
    from workbench._checks import check_model

    hit = _SAVED.get(check_model(model))
    if hit is None or not hit[0].exists() or _weights_hash(model) != hit[1]:
        return None
    return hit[0]


def _stem(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".safetensors", ".json") else p


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(weights, config)`` file paths of the checkpoint ``path``."""
    stem = _stem(path)
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def _arch(cfg: dict[str, Any]) -> str:
    extra = {k: v for k, v in (cfg.get("kw") or {}).items()}
    bits = [f"{cfg.get('name')} ({cfg.get('timm_name')})", f"num_classes={cfg.get('num_classes')}",
            f"img_size={cfg.get('img_size')}", f"in_chans={cfg.get('in_chans')}",
            f"attention={cfg.get('attention', 'standard')}"]
    bits += [f"{k}={v}" for k, v in sorted(extra.items())]
    if cfg.get("pruning"):
        bits.append("pruned")
    return ", ".join(bits)


def save(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Save ``model`` (made by ``workbench.models.create``) as ``PATH.safetensors`` + ``PATH.json``.

    Args:
        model: a model with a ``workbench_config`` attribute.
        path: the checkpoint path, with or without a ``.safetensors``/``.json`` suffix.

    Returns:
        The ``.safetensors`` path.

    Examples:
        >>> import tempfile, workbench.models as wm
        >>> m = wm.create("resnet18", num_classes=2, img_size=32, in_chans=1)
        >>> p = save(m, tempfile.mkdtemp() + "/ckpt")
        >>> p.name
        'ckpt.safetensors'
    """
    from safetensors.torch import save_file

    cfg = getattr(model, "workbench_config", None)
    if not isinstance(cfg, dict):
        raise TypeError("model has no workbench_config; create it with workbench.models.create(...) so "
                        "that it can be rebuilt on load (or save its state_dict yourself).")
    weights, config = checkpoint_paths(path)
    check_output_path(weights, name="path")  # writable before anything is written
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # tied/shared tensors would make safetensors refuse; clone them apart
    seen: set[int] = set()
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        if ptr in seen:
            state[k] = v.clone()
        seen.add(ptr)
    text = json.dumps({"format": FORMAT, **cfg}, indent=2, sort_keys=True)
    with atomic_path(config) as tmp_json, atomic_path(weights) as tmp_w:
        tmp_json.write_text(text, encoding="utf-8")
        save_file(state, str(tmp_w), metadata={"workbench_config": text, "format": FORMAT})
    _SAVED[model] = (weights.resolve(), _weights_hash(model))
    return weights


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The model config stored with checkpoint ``path`` (the JSON file)."""
    _, config = checkpoint_paths(path)
    if not config.exists():
        raise FileNotFoundError(f"checkpoint config {config} not found; a checkpoint is PATH.safetensors "
                                "plus PATH.json written by workbench.models.save.")
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint config {config} is not valid JSON ({e}); the file is corrupt, "
                         "re-save the model with workbench.models.save.") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"checkpoint config {config} must hold a JSON object; got {type(cfg).__name__}.")
    cfg.pop("format", None)
    return cfg


def _read_weights(weights: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    from safetensors import safe_open

    if not weights.exists():
        raise FileNotFoundError(f"checkpoint weights {weights} not found; a checkpoint is PATH.safetensors "
                                "plus PATH.json written by workbench.models.save.")
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"checkpoint weights {weights} cannot be read ({type(e).__name__}: {e}); the file "
                         "is corrupt or not a safetensors file. Re-save the model.") from e
    saved_cfg = None
    if "workbench_config" in meta:
        try:
            saved_cfg = json.loads(meta["workbench_config"])
            saved_cfg.pop("format", None)
        except json.JSONDecodeError:
            saved_cfg = None
    return state, saved_cfg


_ARCH_KEYS = ("timm_name", "num_classes", "img_size", "in_chans", "attention", "communities", "kw", "dcmm", "normalize",
              "pruning", "kind", "concepts", "backbone")


def _pruned_note(saved: dict[str, Any] | None, cfg: dict[str, Any]) -> str:
    """A sentence for weights of a pruned model loaded into a dense one (or the other way round)."""
    if saved is None or bool(saved.get("pruning")) == bool(cfg.get("pruning")):
        return ""
    if saved.get("pruning"):
        steps = ", ".join(f"{h.get('ratio')} of its {h.get('unit')} units" for h in saved["pruning"].get("history", []))
        return (f"The checkpoint holds a pruned model ({steps or 'pruned'} removed by workbench.pruning.prune), which "
                "the dense architecture cannot take: load it with workbench.models.load(path), which rebuilds the "
                "pruned shapes. ")
    return "The checkpoint holds a dense model but the model it is loaded into was pruned. "


#: Models that are more than one ``create`` call, by the ``kind`` key of their config: ``module:function``
#: rebuilding the model (random weights) from its config; imported only when such a checkpoint is loaded.
BUILDERS = {"concept_bottleneck": "workbench.concepts._model:from_config"}


def _build(cfg: dict[str, Any]) -> torch.nn.Module:
    kind = cfg.get("kind")
    if kind is None:
        return create_from_config(cfg)
    if kind not in BUILDERS:
        raise ValueError(f"unknown model kind {kind!r}; known kinds are {sorted(BUILDERS)}.")
    import importlib

    mod, _, fn = BUILDERS[kind].partition(":")
    return getattr(importlib.import_module(mod), fn)(cfg)


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load the weights of checkpoint ``path`` into ``model`` in place, strictly.

    Raises a ValueError naming both architectures when the weights do not fit the model.
    """
    weights, _ = checkpoint_paths(path)
    state, saved_cfg = _read_weights(weights)
    cfg = getattr(model, "workbench_config", None) or {"name": type(model).__name__}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        src = _arch(saved_cfg) if saved_cfg else "an unknown architecture (no config in the file)"
        raise ValueError(
            f"checkpoint {weights} holds weights of {src}, which do not fit the model {_arch(cfg)}. "
            f"{_pruned_note(saved_cfg, cfg)}Load it with workbench.models.load(path) to rebuild its own architecture, or create the "
            f"matching model. Details: {str(e).splitlines()[0]}") from e
    return model


def load(path: str | os.PathLike, device: str | torch.device | None = None) -> torch.nn.Module:
    """Rebuild the model of checkpoint ``path`` with ``create`` and load its weights strictly.

    Args:
        path: the checkpoint path (with or without suffix).
        device: where to put the model (default CPU); "auto" picks CUDA/MPS/CPU.

    Returns:
        The model in eval mode.

    Raises:
        FileNotFoundError: a checkpoint file is missing.
        ValueError: a file is corrupt, or the JSON config and the weights are of different
            architectures (both are named).
    """
    from workbench._device import resolve_device

    weights, config = checkpoint_paths(path)
    cfg = read_config(path)
    state, saved_cfg = _read_weights(weights)
    if saved_cfg is not None:
        diff = [k for k in _ARCH_KEYS if saved_cfg.get(k) != cfg.get(k)]
        if diff:
            raise ValueError(
                f"checkpoint {config.name} describes {_arch(cfg)}, but {weights.name} was saved from "
                f"{_arch(saved_cfg)} (they differ in {diff}). The JSON was edited or comes from another "
                "save; restore it or re-save the model with workbench.models.save.")
    try:
        model = _build(cfg)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"checkpoint config {config} cannot rebuild a model: {e}") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        src = _arch(saved_cfg) if saved_cfg else "an unknown architecture (no config in the weights file)"
        raise ValueError(f"checkpoint weights {weights.name} are of {src} and do not fit {_arch(cfg)} "
                         f"described by {config.name}; re-save the model. Details: {str(e).splitlines()[0]}") from e
    model.eval()
    model = model.to(resolve_device(device) if device is not None else torch.device("cpu"))
    _SAVED[model] = (weights.resolve(), _weights_hash(model))
    return model


def load_if_present(path: str | os.PathLike, device: str | torch.device | None = None,
                    **expect: Any) -> torch.nn.Module | None:
    """The model of checkpoint ``path`` if both its files exist and its config has the ``expect``ed
    values, else None (a warning says why when the files exist but do not fit).

    Notebooks use it to reuse a model that ``workbench demo`` saved instead of training one.

    Args:
        path: the checkpoint path (with or without suffix).
        device: passed to :func:`load`.
        **expect: config values the model must have, e.g. ``img_size=64, in_chans=1, num_classes=2``
            (sizes compare as (H, W) pairs).

    Returns:
        The model in eval mode, or None.
    """
    from workbench._image import size_pair

    weights, config = checkpoint_paths(path)
    if not (weights.exists() and config.exists()):
        return None
    cfg = read_config(path)
    differ = {}
    for k, v in expect.items():
        have = cfg.get(k)
        if k == "img_size" and have is not None and v is not None:
            have, v = tuple(size_pair(have)), tuple(size_pair(v))
        if have != v:
            differ[k] = (have, v)
    if differ:
        import warnings

        what = ", ".join(f"{k}={a} (wanted {b})" for k, (a, b) in differ.items())
        warnings.warn(f"checkpoint {weights} does not fit this data: {what}; not using it.", stacklevel=2)
        return None
    return load(path, device=device)
