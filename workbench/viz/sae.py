"""Figures for sparse autoencoders: training curves, latent heatmaps and top-activation grids, the
latent atlas, class-latent rankings and intervention curves.

Each single-panel function accepts ``ax=None`` (then returns a new Figure) and exports with
``workbench.viz.save_figure``. :func:`latent_rgb` is the fast raster path (numpy only) the latent
browser widget uses.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .._checks import check_result
from ._style import axes, colours, figsize as _figsize, rc, structure_colours, styled

__all__ = ["sae_training", "latent_rgb", "latent_heatmap", "latent_grid", "atlas_bars", "atlas_matrix",
           "class_latent_bars", "intervention_curves"]

HEAT_CMAP = "inferno"


def _axes(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    return axes(ax, *size)


@styled
def sae_training(log: Any, ax: Any = None, **style: Any) -> Any:
    """FVU (left axis), L0 and dead fraction (right axes) over training tokens of a ``TrainLog``."""
    rows = list(getattr(log, "rows", log))
    if not all(isinstance(r, dict) and "tokens" in r and "fvu" in r for r in rows):
        raise TypeError(f"log must be the TrainLog of workbench.sae.train (sae, log = train(...)); got "
                        f"{type(log).__name__}.")
    if not rows:
        raise ValueError("the training log has no rows; train for at least log_every steps.")
    fig, ax = _axes(ax, (4.2, 2.8))
    c = colours(3)
    tok = [r["tokens"] for r in rows]
    ax.plot(tok, [r["fvu"] for r in rows], color=c[0], label="FVU", **style)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("fraction of variance unexplained")
    ax.set_ylim(0, max(1.0, max(r["fvu"] for r in rows)) * 1.02)
    ax2 = ax.twinx()
    ax2.plot(tok, [r["l0"] for r in rows], color=c[1], ls="--", label="L0")
    ax2.set_ylabel("L0 (active latents per token)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    dead = [r.get("dead_fraction", 0.0) for r in rows]
    if any(dead):
        ax.plot(tok, dead, color=c[2], ls=":", label="dead fraction")
        h1, l1 = ax.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper right", frameon=False)
    ax.set_title("SAE training")
    return fig


def _grey_rgb(image: Any) -> np.ndarray:
    x = torch.as_tensor(image).detach().float().cpu()
    if x.ndim == 3:
        x = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, -1, -1)
        x = x.permute(1, 2, 0)
    elif x.ndim == 2:
        x = x[..., None].expand(-1, -1, 3)
    else:
        raise ValueError(f"image must be (C, H, W) or (H, W); got shape {tuple(x.shape)}.")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        x = (x - lo) / max(hi - lo, 1e-12)
    return x.numpy()


def latent_rgb(image: Any, heatmap: Any, *, alpha: float = 0.6, vmax: float | None = None,
               outlines: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """(H, W, 3) uint8: the grey image with a latent's heatmap blended in (``inferno``, zero is
    transparent) and structure outlines drawn in their colours.

    Args:
        image: (C, H, W) or (H, W) in [0, 1].
        heatmap: (H, W) non-negative activations at the image's size.
        alpha: opacity of the heatmap where it is at ``vmax``.
        vmax: activation mapped to the top colour (default: the map's maximum).
        outlines: {structure: (H, W) bool outline pixels} (``viz.overlays.outline_masks``).
    """
    import matplotlib

    base = _grey_rgb(image)
    h = np.asarray(torch.as_tensor(heatmap).detach().float().cpu(), dtype=np.float64)
    if h.shape != base.shape[:2]:
        raise ValueError(f"heatmap is {h.shape} but the image is {base.shape[:2]}; upsample it to the image size.")
    top = float(vmax) if vmax else float(h.max())
    level = np.clip(h / top, 0, 1) if top > 0 else np.zeros_like(h)
    heat = matplotlib.colormaps[HEAT_CMAP](level)[..., :3]
    a = (alpha * level)[..., None]
    rgb = base * (1 - a) + heat * a
    for s, line in (outlines or {}).items():
        col = matplotlib.colors.to_rgb(structure_colours([s])[s])
        rgb[np.asarray(line, dtype=bool)] = col
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


@styled
def latent_heatmap(image: Any, heatmap: Any, ax: Any = None, *, masks: Mapping[str, Any] | None = None,
                   structures: Sequence[str] | None = None, alpha: float = 0.6, vmax: float | None = None,
                   title: str | None = None) -> Any:
    """One image with a latent's heatmap and structure contours (with a legend)."""
    from .overlays import draw_contours

    fig, ax = _axes(ax, (3.0, 3.0))
    ax.imshow(latent_rgb(image, heatmap, alpha=alpha, vmax=vmax), interpolation="nearest")
    if masks:
        ms = {s: torch.as_tensor(m) for s, m in masks.items() if structures is None or s in structures}
        ms = {s: m for s, m in ms.items() if m.any()}
        if ms:
            draw_contours(ax, ms, label=True, linewidth=0.8)
            ax.legend(loc="lower right", fontsize="x-small", frameon=False, labelcolor="white")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig


@styled
def latent_grid(top: Any, latent: int, data: Any, *, sae: Any = None, model: Any = None, n: int | None = None,
                structures: Sequence[str] | None = None, crop: int = 3, check_model: bool = True) -> Any:
    """A latent's top-activating images (with its heatmap when ``sae`` and ``model`` are given and
    the strongest patch boxed) over crops of those patches (``crop`` patches wide).

    Args:
        top: a :class:`workbench.sae.TopActivations`.
        latent: the latent.
        data: the dataset ``top`` was computed on.
        sae, model: to draw heatmaps (``workbench.sae.heatmaps``).
        n: images shown (default: all of ``top``'s).
        structures: structure contours to draw (default none).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from .overlays import draw_contours

    from workbench._checks import check_index

    check_result(top, ("of", "values", "grid"), "a TopActivations (workbench.sae.top_activations)")
    check_index(latent, int(top.values.shape[0]), name="latent", what="latents of the SAE")
    items = top.of(int(latent))[: n or None]
    if not items:
        raise ValueError(f"latent {latent} never fires on this data; pick a latent with frequency > 0.")
    samples = [data[i] for i, _, _ in items]
    images = torch.stack([s["image"].float() / (255.0 if s["image"].dtype == torch.uint8 else 1.0) for s in samples])
    h, w = top.grid
    H, W = images.shape[-2:]
    ph, pw = H / h, W / w
    maps = None
    if sae is not None and model is not None:
        from workbench.sae import heatmaps

        maps = heatmaps(sae, model, images, int(latent), check_model=check_model)
    vmax = float(maps.max()) if maps is not None else None
    with rc():
        fig, axes = plt.subplots(2, len(items), figsize=_figsize(1.6 * len(items), 3.4), squeeze=False)
    for j, ((img, p, v), s) in enumerate(zip(items, samples)):
        ax = axes[0, j]
        heat = maps[j] if maps is not None else torch.zeros(H, W)
        ax.imshow(latent_rgb(images[j], heat, vmax=vmax), interpolation="nearest")
        if structures:
            draw_contours(ax, {k: m for k, m in (s.get("masks") or {}).items() if k in structures}, linewidth=0.6)
        r, c = divmod(int(p), w)
        ax.add_patch(Rectangle((c * pw - 0.5, r * ph - 0.5), pw, ph, fill=False, edgecolor="#66CCEE", lw=1.2))
        ax.set_title(f"{v:.2f}", fontsize="small")
        ax.set_axis_off()
        half = crop // 2
        r0, r1 = int(max(0, (r - half) * ph)), int(min(H, (r + half + 1) * ph))
        c0, c1 = int(max(0, (c - half) * pw)), int(min(W, (c + half + 1) * pw))
        axes[1, j].imshow(_grey_rgb(images[j])[r0:r1, c0:c1], interpolation="nearest")
        axes[1, j].set_axis_off()
    fig.suptitle(f"latent {latent}: top images (heatmap) and patches", fontsize="medium")
    return fig


@styled
def atlas_bars(atlas: Any, ax: Any = None, *, metric: str = "auroc") -> Any:
    """The best latent's pixel AUROC (or AP) per structure, bars labelled with the latent; with
    AUROC, a tick at each structure's grid ceiling (``Atlas.ceiling``: a perfect patch detector)."""
    check_result(atlas, ("best_per_structure", "structures"), "an Atlas (workbench.sae.atlas)")
    best = atlas.best_per_structure()
    if metric not in ("auroc", "ap"):
        raise ValueError(f"metric must be 'auroc' or 'ap'; got {metric!r}.")
    names = list(best["structure"])
    fig, ax = _axes(ax, (max(3.5, 0.45 * len(names) + 1.5), 2.8))
    cols = structure_colours(names)
    vals = best[metric].fillna(0).to_numpy(float)
    x = np.arange(len(names))
    ax.bar(x, vals, color=[cols[n] for n in names], edgecolor="#333333", linewidth=0.6)
    for xi, v, lat in zip(x, vals, best["latent"]):
        ax.text(xi, v + 0.01, str(int(lat)), ha="center", va="bottom", fontsize="x-small")
    if metric == "auroc":
        ax.axhline(0.5, color="#777777", lw=0.8, ls=":")
        ceiling = getattr(atlas, "ceiling", None)
        if ceiling:
            ax.hlines([ceiling[n] for n in names], x - 0.4, x + 0.4, color="#111111", lw=1.4,
                      label="grid ceiling")
            ax.legend(loc="lower right", fontsize="x-small", frameon=False)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(f"best latent's pixel {metric.upper()}")
    ax.set_title(f"latent atlas ({atlas.upsample} heatmaps)")
    return fig


@styled
def atlas_matrix(atlas: Any, ax: Any = None, *, latents: Sequence[int] | None = None) -> Any:
    """Mass share of chosen latents (default: each structure's best) in every structure."""
    check_result(atlas, ("best_per_structure", "structures", "mass"), "an Atlas (workbench.sae.atlas)")
    lat = list(latents) if latents is not None else list(dict.fromkeys(int(v) for v in atlas.best_per_structure()["latent"]))
    cols = list(atlas.structures) + ["none"]
    m = atlas.mass[lat].numpy()
    fig, ax = _axes(ax, (0.4 * len(cols) + 2, 0.3 * len(lat) + 1.5))
    im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=45, ha="right")
    ax.set_yticks(range(len(lat)))
    ax.set_yticklabels([f"latent {j}" for j in lat])
    fig.colorbar(im, ax=ax, label="share of activation mass")
    return fig


@styled
def class_latent_bars(cl: Any, c: int | str = -1, k: int = 10, ax: Any = None) -> Any:
    """Mammo-SAE's mean-activation ranking next to the class-contrastive one for class ``c``: per
    rank, each ranking's latent density (share of images it fires on) and contrast (Cohen's d)."""
    check_result(cl, ("table",), "a ClassLatents (workbench.sae.class_latents)")
    t = cl.table(k, classes=[c])
    fig, ax = _axes(ax, (4.5, 2.8))
    col = colours(2)
    for j, (method, label) in enumerate((("mean", "mean activation (Mammo-SAE)"), ("contrastive", "contrastive"))):
        g = t[t["method"] == method]
        ax.plot(g["rank"], g["contrast"], marker="o", ms=3, color=col[j], label=f"{label}: contrast")
        ax.plot(g["rank"], g["density"], marker="s", ms=3, ls="--", color=col[j], label=f"{label}: density")
    ax.set_xlabel("rank")
    ax.set_ylabel("Cohen's d / density")
    ax.legend(frameon=False, fontsize="x-small")
    ax.set_title(f"class latents: {t['class'].iloc[0] if len(t) else c}")
    return fig


@styled
def intervention_curves(iv: Any, ax: Any = None) -> Any:
    """AUROC over k with only the top-k class latents kept, or switched off, with bootstrap CIs, the
    random-latent baseline (mean and 2.5-97.5 % band), the model and the full splice."""
    check_result(iv, ("table",), "an Intervention (workbench.sae.intervene)")
    t = iv.table
    fig, ax = _axes(ax, (4.2, 2.8))
    col = colours(3)
    for j, mode in enumerate(dict.fromkeys(t["mode"])):
        g = t[t["mode"] == mode].sort_values("k")
        label = "keep top-k only" if mode == "keep" else "top-k switched off"
        ax.plot(g["k"], g["auc"], marker="o", ms=3, color=col[j], label=label)
        if g["auc_low"].notna().any():
            ax.fill_between(g["k"], g["auc_low"], g["auc_high"], color=col[j], alpha=0.2, lw=0)
        if g["random_auc"].notna().any():
            ax.plot(g["k"], g["random_auc"], ls="--", color=col[j], lw=0.9, label=f"{label}: random latents")
            ax.fill_between(g["k"], g["random_low"], g["random_high"], color=col[j], alpha=0.08, lw=0)
    ax.axhline(iv.auc, color="#333333", lw=0.8, label=f"model {iv.auc:.3f}")
    ax.axhline(iv.auc_spliced, color="#777777", lw=0.8, ls=":", label=f"SAE spliced {iv.auc_spliced:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("k (top latents per class)")
    ax.set_ylabel("AUROC")
    ax.legend(frameon=False, fontsize="x-small")
    ax.set_title(f"interventions ({iv.ranking} ranking)")
    return fig
