"""Where data lives: the repository's data/ folder and the optional ../shared/data folder."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]


def default_data_dir() -> Path:
    """Folder for downloads and caches: $WORKBENCH_DATA, else <repo>/data in a source checkout,
    else ./data (an installed package has no repository)."""
    env = os.environ.get("WORKBENCH_DATA")
    if env:
        return Path(env).expanduser()
    if (_REPO / "pyproject.toml").is_file():
        return _REPO / "data"
    return Path.cwd() / "data"


def shared_data_path() -> Path | None:
    """The folder of real datasets beside the project, or None.

    $WORKBENCH_SHARED_DATA when set (a warning and None if it is not a folder), else
    ``<repo>/../shared/data`` when it exists, else None.

    Returns:
        Path to a folder holding e.g. ``medmnist/*.npz`` and ``cxr_anatomy/``, or None.
    """
    env = os.environ.get("WORKBENCH_SHARED_DATA")
    if env:
        p = Path(env).expanduser()
        if p.is_dir():
            return p
        warnings.warn(f"WORKBENCH_SHARED_DATA={env!r} is not a folder; ignoring it.", UserWarning, stacklevel=2)
        return None
    p = _REPO.parent / "shared" / "data"
    return p if p.is_dir() else None
