"""Attribution figures: one map over its image, and a method x image grid with structure contours."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .._checks import check_index, check_masks
from ._style import figsize as _figsize, rc, structure_colours, styled


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


def _gray(img: Any) -> np.ndarray:
    a = _np(img)
    if a.ndim == 3:  # (C, H, W)
        a = a.mean(0) if a.shape[0] in (1, 3) else a[0]
    return a


def _contours(ax: Any, masks: Mapping[str, Any] | None, index: int, structures: Sequence[str] | None,
              linewidth: float, label: bool = False) -> None:
    if not masks:
        return
    try:
        from .overlays import draw_contours
    except ImportError:  # pragma: no cover - overlays is part of the package
        draw_contours = None
    if draw_contours is not None:
        draw_contours(ax, masks, structures=structures, linewidth=linewidth, index=index, label=label)
        return
    from skimage.measure import find_contours  # pragma: no cover

    names = [s for s in (structures or list(masks)) if s in masks]  # pragma: no cover
    cc = structure_colours(names)  # pragma: no cover
    for s in names:  # pragma: no cover
        m = _np(masks[s])
        m = m[index] if m.ndim == 3 else m
        for c in find_contours(np.pad(m.astype(float), 1), 0.5):
            ax.plot(c[:, 1] - 1, c[:, 0] - 1, color=cc[s], linewidth=linewidth)


def _show_map(ax: Any, m: np.ndarray, image: np.ndarray | None, alpha: float, signed: bool | None,
              vmax: float | None = None) -> Any:
    signed = bool((m < 0).any()) if signed is None else signed
    v = vmax or float(np.abs(m).max()) or 1.0
    if image is not None:
        ax.imshow(image, cmap="gray")
    kw = dict(cmap="RdBu_r", vmin=-v, vmax=v) if signed else dict(cmap="magma", vmin=0, vmax=v)
    # over an image, opacity grows with |value| so that near-zero relevance leaves the anatomy visible
    a = np.clip(alpha * np.sqrt(np.abs(m) / v), 0, 1) if image is not None else 1.0
    im = ax.imshow(m, alpha=a, interpolation="nearest", **kw)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


@styled
def attribution_map(attribution: Any, index: int = 0, ax: Any = None, *, image: Any = None,
                    masks: Mapping[str, Any] | None = None, structures: Sequence[str] | None = None,
                    alpha: float = 0.6, signed: bool | None = None, linewidth: float = 1.0,
                    title: str | None = None) -> Any:
    """Draw one map of an ``Attribution`` (over ``image`` ``(C, H, W)`` or ``(B, C, H, W)``).

    Signed maps use a diverging blue-red colour map centred on 0; non-negative maps ``magma``.

    Returns:
        The matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        with rc():
            _, ax = plt.subplots(figsize=_figsize(3, 3))
    img = None
    if image is not None:
        im = _np(image)
        img = _gray(im[index] if im.ndim == 4 else im)
    _show_map(ax, _np(attribution.maps[index]), img, alpha, signed)
    _contours(ax, masks, index, structures, linewidth)
    ax.set_title(title if title is not None else f"{attribution.method} (class {int(attribution.target[index])})")
    return ax


@styled
def attribution_grid(images: Any, attributions: Mapping[str, Any] | Sequence[Any], *,
                     masks: Mapping[str, Any] | None = None, structures: Sequence[str] | None = None,
                     indices: Sequence[int] | None = None, alpha: float = 0.6, signed: bool | None = None,
                     normalise: bool = True, figsize: tuple[float, float] | None = None,
                     linewidth: float = 0.8, legend: bool = True) -> Any:
    """A method x image grid of attribution maps with anatomical structure contours.

    Args:
        images: ``(B, C, H, W)`` images (or a batch dict with ``"image"``/``"masks"``).
        attributions: ``{method name: Attribution}`` or a list of Attributions (named by
            ``.method``); one row each.
        masks: ``{structure: (B, H, W) bool}`` to outline (e.g. ``batch["masks"]``).
        structures: which structures to outline (all in ``masks`` when None).
        indices: which images (columns); all when None.
        alpha: map opacity over the image.
        signed: diverging colour map for signed maps; None decides per map.
        normalise: scale each map by its own max |value| (else share one scale per row).
        figsize: default 1.6 in per panel.
        linewidth: contour width.
        legend: add a structure legend below the grid.

    Returns:
        The matplotlib Figure (save with ``workbench.viz.save_figure``).
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if isinstance(images, Mapping):
        masks = images.get("masks") if masks is None else masks
        images = images["image"]
    if not isinstance(attributions, Mapping):
        attributions = {a.method: a for a in attributions}
    if not attributions:
        raise ValueError("attributions is empty; pass {method: Attribution} or a list of Attributions.")
    imgs = _np(images)
    if imgs.ndim == 3:
        imgs = imgs[None]
    n = imgs.shape[0]
    cols = list(range(n)) if indices is None else [check_index(i, n, name="indices", what="images") for i in indices]
    if masks:
        check_masks(masks, imgs.shape[-2:])
    for name, a in attributions.items():
        if tuple(a.maps.shape[-2:]) != imgs.shape[-2:] or a.maps.shape[0] != n:
            raise ValueError(f"attribution {name!r} has maps {tuple(a.maps.shape)} but images are {imgs.shape}; "
                             "pass the images the attributions were computed on.")
    rows = list(attributions)
    with rc():
        fig, axes = plt.subplots(len(rows), len(cols), squeeze=False,
                                 figsize=figsize or _figsize(1.6 * len(cols) + 0.6, 1.6 * len(rows) + (0.4 if legend else 0)))
        for r, name in enumerate(rows):
            a = attributions[name]
            maps = _np(a.maps)
            row_scale = float(np.abs(maps[cols]).max()) or 1.0
            for c, i in enumerate(cols):
                ax = axes[r, c]
                _show_map(ax, maps[i], _gray(imgs[i]), alpha, signed, None if normalise else row_scale)
                _contours(ax, masks, i, structures, linewidth)
                if r == 0:
                    ax.set_title(f"image {i}")
                if c == 0:
                    ax.set_ylabel(name)
        if legend and masks:
            names = [s for s in (structures or list(masks)) if s in masks]
            cc = structure_colours(names)
            fig.legend([Line2D([], [], color=cc[s]) for s in names], names, loc="lower center",
                       ncol=min(len(names), 6, max(2, int(fig.get_figwidth() / 1.1))), frameon=False)
        fig.tight_layout(rect=(0, 0.06 if legend and masks else 0, 1, 1))
    return fig


# ------------------------------------------------------------------ rebuildable recipes (viz.draw)
from ._recipes import batch_of, recipe  # noqa: E402


def attributions_of(model: Any, images: Any, methods: Sequence[str], target: Any,
                    options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """{method: Attribution} of ``images`` (``options``: {method: keyword arguments})."""
    from ..attribution import attribute

    return {m: attribute(model, images, target=target, method=m, **dict((options or {}).get(m) or {}))
            for m in methods}


@recipe("attribution_grid")
def _attribution_grid_recipe(model: Any, data: Any, *, indices: Any = (0, 1, 2, 3),
                             methods: Any = ("integrated_gradients",), target: Any = None,
                             options: Any = None, structures: Any = None, normalise: bool = True,
                             legend: bool = True) -> Any:
    batch = batch_of(data, indices)
    atts = attributions_of(model, batch["image"], methods, target, options)
    return attribution_grid(batch, atts, structures=structures, normalise=normalise, legend=legend)
