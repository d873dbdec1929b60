"""Export figures as PNG/PDF/SVG with a sidecar JSON of every parameter and version."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any, Iterable

from .._checks import check_output_path
from .._io import atomic_path, atomic_write_text

FORMATS = ("png", "pdf", "svg")


def versions() -> dict[str, str]:
    """Versions of the packages a figure depends on (for the sidecar)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("workbench", "torch", "timm", "captum", "shap", "matplotlib", "numpy", "scikit-image"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if hasattr(x, "tolist"):
        return x.tolist()
    return repr(x)


def save_figure(fig: Any, path: str | os.PathLike, *, formats: Iterable[str] | None = None,
                params: dict[str, Any] | None = None, dpi: int | None = None) -> list[Path]:
    """Save ``fig`` atomically in each format, plus ``<stem>.json``: the sidecar.

    The sidecar records ``params``, package versions, the style the figure was drawn in, the
    formats and dpi and, for a figure made by ``workbench.viz.draw``, its recipe: the figure
    function, its parameters, the checkpoint file and its SHA-256, the data's source, split and
    hash, and the seed, so that ``workbench.viz.rebuild(sidecar)`` (``workbench figure rebuild``)
    draws it again.

    Args:
        fig: a matplotlib Figure.
        path: target path; its suffix picks the format when ``formats`` is None
            (no suffix: all of png, pdf, svg).
        formats: formats to write, each of "png", "pdf", "svg".
        params: anything else worth keeping with the figure (recorded as given).
        dpi: raster resolution for PNG; None: the figure's style's (notebook 300, paper 600,
            slides 200).

    Returns:
        The written paths (figures first, then the JSON sidecar).
    """
    from ._recipes import FORMAT, with_relative
    from ._style import STYLES

    if not hasattr(fig, "savefig"):
        raise TypeError(f"fig must be a matplotlib Figure (e.g. from a workbench.viz function); got {type(fig).__name__}.")
    path = Path(path)
    check_output_path(path.parent, name="the folder of path", directory=True)  # writable before any drawing
    if formats is None:
        suffix = path.suffix.lower().lstrip(".")
        formats = [suffix] if suffix else list(FORMATS)
    formats = [f.lower().lstrip(".") for f in formats]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unsupported figure format(s) {bad}; use any of {list(FORMATS)}.")
    style = getattr(fig, "workbench_style", None) or {"name": "notebook"}
    dpi = int(dpi or STYLES[style["name"]]["savefig.dpi"])
    stem = path.with_suffix("") if path.suffix.lower().lstrip(".") in FORMATS else path
    written = []
    import matplotlib as mpl

    for f in formats:
        target = stem.with_suffix(f".{f}")
        with atomic_path(target) as tmp, mpl.rc_context({"svg.hashsalt": "workbench"}):  # stable SVG ids
            fig.savefig(tmp, format=f, dpi=dpi, bbox_inches="tight", metadata=_METADATA.get(f))
        written.append(target)
    side = stem.with_suffix(".json")
    record = getattr(fig, "workbench_record", None)
    sidecar = {"format": FORMAT, "params": _jsonable(params or {}), "versions": versions(), "style": style,
               "formats": formats, "dpi": dpi, "files": [p.name for p in written],
               "recipe": with_relative(record, side.parent) if record else None}
    atomic_write_text(side, json.dumps(sidecar, indent=2))
    written.append(side)
    return written


# no creation dates in the files: the same figure saves to the same bytes (PDF, SVG)
_METADATA = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}
