"""Figures of concept models: contributions, intervention curves, TCAV scores, concept maps."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .._checks import check_result
from ._style import axes, colours, figsize as _figsize, rc, structure_colours, styled


def _axes(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    return axes(ax, *size)


def _target(pred: Any, index: int, target: int | str | None) -> int:
    if target is None:
        return int(pred.probs[index].argmax())
    if isinstance(target, str):
        if target not in pred.classes:
            raise ValueError(f"unknown class {target!r}; valid classes are {list(pred.classes)}.")
        return list(pred.classes).index(target)
    return int(target)


@styled
def contribution_bars(pred: Any, index: int = 0, ax: Any = None, *, target: int | str | None = None,
                      **style: Any) -> Any:
    """Signed bars of each concept's contribution to one class logit for one image.

    Each bar is labelled with the concept's probability; intervened concepts are hatched.

    Args:
        pred: a ``ConceptPrediction`` (``workbench.concepts.predict`` / ``intervene``).
        index: the image.
        ax: an Axes to draw into (a new figure when None).
        target: the class (index or name); default the predicted class.
        **style: passed to ``barh``.

    Returns:
        The matplotlib Figure.
    """
    check_result(pred, ("probs", "contributions", "names"), "a ConceptPrediction (workbench.concepts.predict / intervene)")

    c = _target(pred, index, target)
    contrib = pred.contributions[index, c].numpy()
    probs = pred.concepts[index].numpy()
    inter = pred.intervened[index].numpy()
    pos, neg = colours(12)[10], colours(12)[11]
    with rc():
        fig, ax = _axes(ax, (4.0, 0.35 * len(pred.names) + 1.0))
        y = np.arange(len(pred.names))[::-1]
        bars = ax.barh(y, contrib, color=[pos if v >= 0 else neg for v in contrib], **style)
        for b, it in zip(bars, inter):
            if it:
                b.set_hatch("//")
                b.set_edgecolor("#333333")
        ax.set_yticks(y, [f"{n} (p={p:.2f}{', set' if it else ''})" for n, p, it in zip(pred.names, probs, inter)])
        ax.axvline(0, color="#333333", lw=0.8)
        ax.set_xlabel(f"contribution to the {pred.classes[c]!r} logit")
        ax.set_title(f"{pred.classes[c]}: p = {float(pred.probs[index, c]):.2f}")
    return fig


@styled
def class_bars(pred: Any, index: int = 0, ax: Any = None, **style: Any) -> Any:
    """Bars of the class probabilities of one image."""

    p = pred.probs[index].numpy()
    with rc():
        fig, ax = _axes(ax, (3.2, 0.3 * len(p) + 1.0))
        y = np.arange(len(p))[::-1]
        ax.barh(y, p, color=colours(len(p)), **style)
        ax.set_yticks(y, list(pred.classes))
        ax.set_xlim(0, 1)
        ax.set_xlabel("probability")
        ax.set_title("classes")
    return fig


@styled
def concept_intervention_curves(curve: Any, ax: Any = None, *, metric: str = "accuracy", **style: Any) -> Any:
    """Task metric against the number of concepts corrected, one line per order, CI bands.

    Args:
        curve: an ``InterventionCurve``.
        ax: an Axes to draw into (a new figure when None).
        metric: "accuracy" or "auc".
        **style: passed to ``plot``.

    Returns:
        The matplotlib Figure.
    """
    check_result(curve, ("orders", "steps", "accuracy"), "an InterventionCurve (workbench.concepts.intervention_curve)")

    if metric not in ("accuracy", "auc"):
        raise ValueError(f"metric must be 'accuracy' or 'auc'; got {metric!r}.")
    vals = curve.accuracy if metric == "accuracy" else curve.auc
    cis = curve.accuracy_ci if metric == "accuracy" else curve.auc_ci
    with rc():
        fig, ax = _axes(ax, (3.6, 2.8))
        for col, o in zip(colours(len(curve.orders)), curve.orders):
            ax.plot(curve.steps, vals[o], marker="o", ms=3, color=col, label=o.replace("_", " "), **style)
            if np.isfinite(cis[o]).all():
                ax.fill_between(curve.steps, cis[o][:, 0], cis[o][:, 1], color=col, alpha=0.2, lw=0)
        ax.set_xlabel("concepts corrected")
        ax.set_ylabel(f"task {metric}")
        ax.set_xticks(curve.steps)
        ax.legend(frameon=False)
        ax.set_title(f"interventions (n = {curve.n}, {int(curve.ci * 100)}% CI)")
    return fig


@styled
def tcav_bars(result: Any, ax: Any = None, **style: Any) -> Any:
    """TCAV score per concept (mean +- sd over random sets) beside the random null; * marks p < alpha."""
    check_result(result, ("table",), "a TCAVResult (workbench.concepts.tcav)")

    t = result.table
    with rc():
        fig, ax = _axes(ax, (0.6 * len(t) + 1.6, 2.8))
        x = np.arange(len(t))
        c = colours(2)
        ax.bar(x - 0.2, t["score"], 0.4, yerr=t["score_std"], color=c[0], label="concept", **style)
        rs = result.random_scores.numpy()
        ax.bar(x + 0.2, [rs.mean()] * len(t), 0.4, yerr=[rs.std(ddof=1)] * len(t), color=c[1], label="random")
        for i, (sig, p) in enumerate(zip(t["significant"], t["p_value"])):
            ax.text(i - 0.2, min(1.0, t["score"].iloc[i] + t["score_std"].iloc[i]) + 0.03,
                    "*" if sig else "n.s.", ha="center", fontsize="medium")
        ax.set_xticks(x, list(t.index), rotation=30, ha="right")
        ax.set_ylim(0, 1.12)
        ax.set_ylabel("TCAV score")
        ax.set_title(f"TCAV: class {result.target} at {result.layer}")
        ax.legend(frameon=False, loc="upper right")
    return fig


def concept_map_rgb(image: Any, cmap_values: np.ndarray, *, alpha: float = 0.55,
                    outlines: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """(H, W, 3) uint8: a grey image, a map in a sequential colour map on top (positive part, scaled to
    its max), and structure outlines (``viz.overlays.outline_masks``) in their colours."""
    import matplotlib

    from .overlays import _hex_rgb

    img = np.asarray(image, dtype=np.float32)
    img = img if img.ndim == 2 else img.mean(0)
    rgb = np.repeat(img[..., None], 3, -1)
    m = np.clip(np.asarray(cmap_values, dtype=np.float32), 0, None)
    top = float(m.max())
    if top > 0:
        m = m / top
        heat = matplotlib.colormaps["inferno"](m)[..., :3]
        w = (alpha * m)[..., None]
        rgb = (1 - w) * rgb + w * heat
    if outlines:
        cols = structure_colours(list(outlines))
        for name, edge in outlines.items():
            rgb[edge] = _hex_rgb(cols[name])
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


@styled
def concept_map(maps: Any, index: int = 0, concept: int | str = 0, ax: Any = None, *, image: Any = None,
                masks: dict[str, Any] | None = None, structures: Sequence[str] | None = None,
                alpha: float = 0.55) -> Any:
    """One concept's map over its image, with structure contours.

    Args:
        maps: a ``ConceptMaps``.
        index: the image; ``concept``: index or name.
        ax: an Axes (a new figure when None).
        image: (B, C, H, W) images to draw under the map (default ``maps.images`` when kept).
        masks: {structure: (B, H, W)} outlines (e.g. ``batch["masks"]``); ``structures`` selects.
        alpha: map opacity.

    Returns:
        The matplotlib Figure.
    """
    check_result(maps, ("maps", "names", "method"), "ConceptMaps (workbench.concepts.concept_maps)")

    from .overlays import outline_masks

    k = maps.index(concept)
    base = image if image is not None else maps.images
    img = np.zeros(maps.maps.shape[-2:]) if base is None else np.asarray(base[index].float().cpu())
    outlines = None
    if masks:
        names = [s for s in (structures or masks) if s in masks]
        outlines = outline_masks({s: np.asarray(masks[s][index]).astype(bool) for s in names})
    rgb = concept_map_rgb(img, maps.maps[index, k].numpy(), alpha=alpha, outlines=outlines)
    with rc():
        fig, ax = _axes(ax, (2.8, 2.8))
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(f"{maps.names[k]} ({maps.method})")
        ax.axis("off")
        if outlines:
            from matplotlib.patches import Patch

            cols = structure_colours(list(outlines))
            ax.legend(handles=[Patch(color=cols[s], label=s) for s in outlines], loc="lower center",
                      bbox_to_anchor=(0.5, -0.25), ncol=3, frameon=False, fontsize="small")
    return fig


@styled
def concept_panel(pred: Any, index: int = 0, *, maps: Any = None, concept: int | str | None = None,
                  masks: dict[str, Any] | None = None, image: Any = None) -> Any:
    """A three- or four-panel figure of one image: concept map (when ``maps``), concept contributions,
    class probabilities (what the concept widget exports)."""
    check_result(pred, ("probs", "contributions", "names"), "a ConceptPrediction (workbench.concepts.predict / intervene)")
    import matplotlib.pyplot as plt

    with rc():
        n = 3 if maps is not None else 2
        fig, axes = plt.subplots(1, n, figsize=_figsize(3.2 * n + 1.0, 3.0), gridspec_kw={"wspace": 0.9})
        i = 0
        if maps is not None:
            concept_map(maps, index=0 if maps.maps.shape[0] == 1 else index,
                        concept=concept if concept is not None else 0, ax=axes[0], masks=masks, image=image)
            i = 1
        contribution_bars(pred, index, ax=axes[i])
        class_bars(pred, index, ax=axes[i + 1])
    return fig
