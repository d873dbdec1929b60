"""Helpers shared by the subcommands: early argument checks, JSON output and loading data splits."""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

from workbench._io import atomic_write_text


def check_args(args: argparse.Namespace, *, out_is_folder: bool = True) -> None:
    """Checks run before any work (``workbench._checks``): ``--out`` must be writable and
    ``--device`` a device that exists here, so a typo or a missing GPU fails in a second with one
    line instead of after loading data or training.

    ``main`` runs it for every command with ``out_is_folder=False`` (only the folder that will
    hold ``--out`` is probed, whatever ``--out`` names); commands whose ``--out`` is a folder call
    it again with ``out_is_folder=True``."""
    from workbench._checks import check_device, check_output_path

    out = getattr(args, "out", None)
    if isinstance(out, (str, Path)) and str(out):
        if out_is_folder:
            check_output_path(out, name="--out", directory=True)
        else:
            check_output_path(Path(out).expanduser().absolute().parent, name="the folder of --out", directory=True)
    if isinstance(getattr(args, "device", None), str):
        check_device(args.device)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def load_split(source: str, split: str, **kw: Any) -> Any:
    """``workbench.data.load(source, split=split, **kw)``."""
    from workbench.data import load

    return load(source, split=split, **kw)


def try_split(source: str, split: str, **kw: Any) -> Any:
    """A split that may not exist (folders without a split column): None instead of an error."""
    try:
        ds = load_split(source, split, **kw)
    except (ValueError, KeyError, FileNotFoundError) as e:
        warnings.warn(f"no {split!r} split in {source} ({e}); continuing without it.", stacklevel=2)
        return None
    return ds if len(ds) else None


def data_kw(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``load`` from the common ``--size`` / ``--label-column`` options."""
    kw: dict[str, Any] = {}
    if getattr(args, "size", None):
        kw["size"] = args.size
    if getattr(args, "label_column", None) is not None:
        kw["label_column"] = args.label_column
    if getattr(args, "lazy", False):
        kw["lazy"] = True
    return kw


def data_for_model(args: argparse.Namespace, model: Any) -> Any:
    """``args.split`` of ``args.data`` at the checkpoint's image size and channels (``--size`` wins)."""
    cfg = model.workbench_config
    kw = data_kw(args)
    kw.setdefault("size", tuple(cfg["img_size"]))
    kw["channels"] = int(cfg["in_chans"]) if int(cfg["in_chans"]) in (1, 3) else None
    return load_split(args.data, args.split, **kw)
