"""Helpers shared by the subcommands: JSON output and loading data splits."""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

from workbench._io import atomic_write_text


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
    return kw
