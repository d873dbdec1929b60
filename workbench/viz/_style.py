"""Shared figure style: colour-blind-safe palettes and structure colours."""
from __future__ import annotations

from typing import Sequence

# Paul Tol's "muted" qualitative palette (colour-blind safe), then "bright" for more colours.
PALETTE: tuple[str, ...] = (
    "#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255",
    "#AA4499", "#DDDDDD", "#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#BBBBBB",
)

# Fixed colours for named structures so every figure agrees (others cycle through PALETTE).
STRUCTURE_COLOURS: dict[str, str] = {
    "body": "#BBBBBB", "left_lung": "#4477AA", "right_lung": "#66CCEE", "heart": "#EE6677",
    "mediastinum": "#AA3377", "cardiomediastinum": "#AA3377", "diaphragm": "#117733",
    "bones": "#DDDDDD", "airways": "#44AA99", "nodule": "#EE7733", "effusion": "#332288",
    "cardiomegaly": "#CC3311", "pneumothorax": "#999933", "consolidation": "#EE3377",
    "device": "#009988", "marker": "#DDCC77",
}


def colours(n: int) -> list[str]:
    """``n`` colour-blind-safe colours (cycling when n exceeds the palette)."""
    return [PALETTE[i % len(PALETTE)] for i in range(n)]


def structure_colours(names: Sequence[str]) -> dict[str, str]:
    """A colour per structure name, fixed for known names and from PALETTE otherwise."""
    free = iter(c for c in PALETTE if c not in STRUCTURE_COLOURS.values())
    return {n: STRUCTURE_COLOURS.get(n) or next(free, "#777777") for n in names}


RC = {
    "figure.dpi": 110, "savefig.dpi": 300, "font.size": 9, "axes.titlesize": 9,
    "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8,
    "pdf.fonttype": 42, "svg.fonttype": "none", "savefig.bbox": "tight",
}
