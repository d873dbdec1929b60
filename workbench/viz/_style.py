"""Figure styles ("notebook", "paper", "slides"), colour-blind-safe palettes and structure colours.

``style(name)`` is a context manager (and ``use_style(name)`` its lasting form, for a whole
notebook) that sets matplotlib's rcParams and tells every figure function of ``workbench.viz`` how
large to draw:

- ``"notebook"`` (the default outside any style): 9 pt text, sizes as each function chooses;
- ``"paper"``: 7-8 pt text, thin lines, 600 dpi PNGs, figures exactly one column (3.46 in,
  88 mm) or two columns (7.09 in, 180 mm) wide, the height keeping each figure's aspect;
- ``"slides"``: 16 pt text and thick lines, figures 1.75x their notebook size (a 16:9 slide is
  13.3 x 7.5 in).

Palettes are Paul Tol's colour-blind-safe qualitative schemes ("muted", "bright", "vibrant",
"high_contrast") and Okabe & Ito's ("okabe_ito"); structures keep fixed colours in every style.
A figure function follows the active style by being decorated with :func:`styled` and asking
:func:`figsize` for its size::

    @styled
    def my_figure(..., ax=None):
        fig, ax = plt.subplots(figsize=figsize(4.0, 3.0)) if ax is None else (ax.figure, ax)
        ...

Examples:
    >>> import workbench as wb
    >>> with wb.viz.style("paper", columns=2):                       # doctest: +SKIP
    ...     fig = wb.viz.budget_bars(budget)
    ...     wb.viz.save_figure(fig, "figures/budget")                # 600 dpi, 7.09 in wide
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence, TypeVar

PALETTES: dict[str, tuple[str, ...]] = {
    # Paul Tol, https://personal.sron.nl/~pault/ (qualitative schemes, colour-blind safe)
    "muted": ("#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255", "#AA4499"),
    "bright": ("#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB"),
    "vibrant": ("#0077BB", "#33BBEE", "#009988", "#EE7733", "#CC3311", "#EE3377", "#BBBBBB"),
    "high_contrast": ("#004488", "#DDAA33", "#BB5566", "#000000"),
    # Okabe & Ito (2008), "Color universal design"
    "okabe_ito": ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"),
}

# Paul Tol's "muted" qualitative palette (colour-blind safe), then "bright" for more colours: the
# notebook palette, and what ``colours`` cycles through outside any style.
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

_COMMON = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none",
           "savefig.bbox": "tight",
           "image.cmap": "viridis", "font.family": "sans-serif",
           "font.sans-serif": ["Arial", "Helvetica", "Liberation Sans", "DejaVu Sans"]}

#: rcParams of each style (the palette is added as ``axes.prop_cycle``)
STYLES: dict[str, dict[str, Any]] = {
    "notebook": {**_COMMON, "figure.dpi": 110, "savefig.dpi": 300, "font.size": 9, "axes.titlesize": 9,
                 "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8},
    "paper": {**_COMMON, "figure.dpi": 150, "savefig.dpi": 600, "font.size": 7, "axes.titlesize": 8,
              "axes.labelsize": 7, "legend.fontsize": 6.5, "xtick.labelsize": 6.5, "ytick.labelsize": 6.5,
              "lines.linewidth": 1.0, "lines.markersize": 3, "axes.linewidth": 0.6, "xtick.major.width": 0.6,
              "ytick.major.width": 0.6, "xtick.major.size": 2.5, "ytick.major.size": 2.5,
              "legend.frameon": False, "figure.constrained_layout.use": False},
    "slides": {**_COMMON, "figure.dpi": 100, "savefig.dpi": 200, "font.size": 16, "axes.titlesize": 18,
               "axes.labelsize": 16, "legend.fontsize": 14, "xtick.labelsize": 14, "ytick.labelsize": 14,
               "lines.linewidth": 2.0, "lines.markersize": 6, "axes.linewidth": 1.2, "xtick.major.width": 1.2,
               "ytick.major.width": 1.2},
}
DEFAULT_PALETTE = {"notebook": "muted", "paper": "bright", "slides": "bright"}
#: paper column widths in inches: one column 88 mm, two columns 180 mm (Nature, Elsevier, IEEE ~)
COLUMN_WIDTHS = {1: 3.46, 2: 7.09}
SLIDE_SCALE = 1.75
SLIDE_MAX = (13.3, 7.5)
PAPER_MAX_HEIGHT = 9.0


@dataclass(frozen=True)
class Style:
    """An active style: its name, palette, paper width in inches and rcParams."""

    name: str
    palette: str
    columns: int | None = None
    width: float | None = None
    rc: dict[str, Any] = field(default_factory=dict, repr=False)

    def record(self) -> dict[str, Any]:
        """What a sidecar stores to draw the figure again in this style."""
        return {"name": self.name, "palette": self.palette, "columns": self.columns, "width": self.width}


_ACTIVE: list[Style] = []


def make_style(name: str = "notebook", *, columns: int | None = None, width: float | None = None,
               palette: str | None = None, rc: dict[str, Any] | None = None) -> Style:
    """A :class:`Style` from its name and options (checked); see :func:`style`."""
    from cycler import cycler

    if name not in STYLES:
        raise ValueError(f"unknown figure style {name!r}; valid styles: {', '.join(STYLES)}.")
    palette = palette or DEFAULT_PALETTE[name]
    if palette not in PALETTES:
        raise ValueError(f"unknown palette {palette!r}; valid palettes (all colour-blind safe): {', '.join(PALETTES)}.")
    if name != "paper" and (columns is not None or width is not None):
        raise ValueError(f"columns= and width= set a paper figure's width; style {name!r} does not take them "
                         "(use style('paper', columns=2)).")
    if name == "paper":
        if width is None:
            columns = 1 if columns is None else columns
            if columns not in COLUMN_WIDTHS:
                raise ValueError(f"columns must be 1 or 2; got {columns!r} (or give width= in inches).")
            width = COLUMN_WIDTHS[columns]
        elif not isinstance(width, (int, float)) or isinstance(width, bool) or not 1.0 <= width <= 20.0:
            raise ValueError(f"width is the figure width in inches, between 1 and 20; got {width!r}.")
    params = {**STYLES[name], "axes.prop_cycle": cycler(color=list(PALETTES[palette])), **(rc or {})}
    return Style(name, palette, columns, None if width is None else float(width), params)


@contextlib.contextmanager
def style(name: str = "notebook", *, columns: int | None = None, width: float | None = None,
          palette: str | None = None, rc: dict[str, Any] | None = None) -> Iterator[Style]:
    """Draw every figure inside the ``with`` block in one style.

    Args:
        name: "notebook", "paper" or "slides".
        columns: paper only: 1 (3.46 in wide, the default) or 2 (7.09 in).
        width: paper only: the figure width in inches (instead of ``columns``), e.g. 4.8 for
            Springer LNCS (MICCAI) text width.
        palette: one of ``PALETTES`` (default: "muted" for notebooks, "bright" otherwise).
        rc: extra matplotlib rcParams, applied last (e.g. ``{"font.family": "serif"}``).

    Yields:
        The active :class:`Style`.
    """
    import matplotlib.pyplot as plt

    s = make_style(name, columns=columns, width=width, palette=palette, rc=rc)
    with plt.rc_context(s.rc):
        _ACTIVE.append(s)
        try:
            yield s
        finally:
            _ACTIVE.remove(s)


def use_style(name: str = "notebook", **kw: Any) -> Style:
    """Switch to a style for the rest of the session (a notebook for a class: ``use_style("slides")``).

    Takes the arguments of :func:`style`; a later ``use_style`` replaces it.
    """
    import matplotlib as mpl

    s = make_style(name, **kw)
    mpl.rcParams.update(s.rc)
    _ACTIVE[:] = [s]
    return s


def active() -> Style | None:
    """The innermost active style, or None outside any."""
    return _ACTIVE[-1] if _ACTIVE else None


def rc() -> contextlib.AbstractContextManager:
    """rcParams for a figure function: the active style's (already applied) or the notebook style's."""
    import matplotlib.pyplot as plt

    return contextlib.nullcontext() if _ACTIVE else plt.rc_context(make_style("notebook").rc)


F = TypeVar("F", bound=Callable[..., Any])


def styled(fn: F) -> F:
    """Decorator for figure functions: the whole body runs in the active style (or the notebook style)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with rc():
            out = fn(*args, **kwargs)
        fig = getattr(out, "figure", out)
        if fig is not None and hasattr(fig, "savefig"):  # save_figure writes it with this style's dpi
            fig.workbench_style = (active() or make_style("notebook")).record()
        return out

    return wrapper  # type: ignore[return-value]


def figsize(width: float, height: float) -> tuple[float, float]:
    """A figure function's natural size in inches, adapted to the active style: unchanged for
    notebooks, the paper's column width (aspect kept, height at most 9 in) for papers, 1.75x (at
    most 13.3 x 7.5 in, aspect kept) for slides."""
    s = active()
    if s is None or s.name == "notebook":
        return (width, height)
    if s.name == "paper":
        k = s.width / width
        return (s.width, min(height * k, PAPER_MAX_HEIGHT))
    k = min(SLIDE_SCALE, SLIDE_MAX[0] / width, SLIDE_MAX[1] / height)
    return (width * k, height * k)


def axes(ax: Any, width: float, height: float) -> tuple[Any, Any]:
    """``(figure, ax)``: the given axes and their figure, or a new styled figure of that size."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    with rc():
        fig, ax = plt.subplots(figsize=figsize(width, height))
    return fig, ax


def colours(n: int) -> list[str]:
    """``n`` colour-blind-safe colours of the active style's palette (cycling when n exceeds it)."""
    s = active()
    pal = PALETTE if s is None or s.palette == "muted" else PALETTES[s.palette]
    return [pal[i % len(pal)] for i in range(n)]


def structure_colours(names: Sequence[str]) -> dict[str, str]:
    """A colour per structure name, fixed for known names and from PALETTE otherwise."""
    free = iter(c for c in PALETTE if c not in STRUCTURE_COLOURS.values())
    return {n: STRUCTURE_COLOURS.get(n) or next(free, "#777777") for n in names}


# The notebook style's rcParams (kept for figure code that applies them itself).
RC = STYLES["notebook"]
