"""A grid of dataset samples with anatomy and findings outlined (the README's phantom figure)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .._checks import check_dataset, check_index
from ._style import figsize as _figsize, rc, structure_colours, styled

#: Outlined by default when present: organs, findings and distractors (not body or bones,
#: which would clutter the picture).
DEFAULT_STRUCTURES = ("left_lung", "right_lung", "heart", "mediastinum", "cardiomediastinum", "diaphragm",
                      "nodule", "effusion", "pneumothorax", "consolidation", "device", "marker")


def _abbrev(meta: dict) -> str:
    parts = []
    if "site" in meta:
        parts.append(f"site {meta['site']}")
    parts += [f[:4] for f in meta.get("findings", [])]
    return " · ".join(parts)


@styled
def gallery(dataset: Any, n: int = 8, *, ncols: int = 4, structures: Sequence[str] | None = None,
            indices: Sequence[int] | None = None, figsize: tuple[float, float] | None = None,
            linewidth: float = 1.0, titles: bool = True, legend: bool = True) -> Any:
    """Draw ``n`` samples of a dataset in a grid with mask outlines and a legend.

    Args:
        dataset: a workbench dataset (``.batch(indices)`` or ``__getitem__`` returning sample dicts
            with ``image`` (C, H, W) and ``masks`` {name: (H, W) bool}).
        n: number of samples (the first ``n`` unless ``indices`` is given).
        ncols: columns of the grid.
        structures: mask names to outline (default: organs, findings and distractors present).
        indices: which samples to draw (overrides ``n``).
        figsize: figure size in inches (default 2.2 inches per panel).
        linewidth: outline width.
        titles: write the site and findings above each panel when the meta has them.
        legend: add a legend of the outlined structures below the grid.

    Returns:
        matplotlib Figure (save it with ``workbench.viz.save_figure``).

    Examples:
        >>> from workbench.data.phantom import load_phantom
        >>> fig = gallery(load_phantom("val", n=4, size=64, cache=False, progress=False), n=4)
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    check_dataset(dataset, name="dataset", nonempty=False, tensors=False)
    if indices is None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int; got {n!r}.")
        indices = list(range(min(n, len(dataset))))
    indices = [check_index(i, len(dataset), name="indices", what="samples") for i in indices]
    if not indices:
        raise ValueError("nothing to draw: the dataset is empty or indices is empty.")
    if hasattr(dataset, "batch"):
        b = dataset.batch(indices)
        images, masks, present, meta = b["image"], b["masks"], b.get("mask_present", {}), b["meta"]
    else:
        from ..data._base import collate

        b = collate([dataset[i] for i in indices])
        images, masks, present, meta = b["image"], b["masks"], b["mask_present"], b["meta"]
    names = [s for s in (structures if structures is not None else DEFAULT_STRUCTURES) if s in masks]
    if structures is not None:
        missing = [s for s in structures if s not in masks]
        if missing:
            raise ValueError(f"structures {missing} are not masks of this dataset; available: {sorted(masks)}.")
    colours = structure_colours(names)
    ncols = max(1, min(int(ncols), len(indices)))
    nrows = int(np.ceil(len(indices) / ncols))
    with rc():
        fig, axes = plt.subplots(nrows, ncols, figsize=figsize or _figsize(2.2 * ncols, 2.2 * nrows + (0.5 if legend else 0)),
                                 squeeze=False)
        used = set()
        for k, ax in enumerate(axes.ravel()):
            ax.set_axis_off()
            if k >= len(indices):
                continue
            img = images[k].detach().float().cpu()
            ax.imshow(img[0].numpy() if img.shape[0] == 1 else img[:3].permute(1, 2, 0).numpy(),
                      cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            for name in names:
                if name in present and not bool(present[name][k]):
                    continue
                m = masks[name][k].cpu().numpy().astype(float)
                if m.any():
                    ax.contour(m, levels=[0.5], colors=[colours[name]], linewidths=linewidth)
                    used.add(name)
            if titles and isinstance(meta[k], dict) and meta[k]:
                ax.set_title(_abbrev(meta[k]), fontsize="small")
        if legend and used:
            handles = [Line2D([0], [0], color=colours[s], lw=2, label=s.replace("_", " ")) for s in names if s in used]
            fig.legend(handles=handles, loc="lower center", frameon=False,
                       ncol=min(6, len(handles), max(2, int(fig.get_figwidth() / 1.1))))
            fig.tight_layout(rect=(0, 0.06 if nrows > 1 else 0.12, 1, 1))
        else:
            fig.tight_layout()
    return fig


# ------------------------------------------------------------------ rebuildable recipes (viz.draw)
from ._recipes import recipe  # noqa: E402


@recipe("gallery", model=False)
def _gallery_recipe(data: Any, *, n: int = 8, ncols: int = 4, structures: Any = None, indices: Any = None,
                    titles: bool = True, legend: bool = True) -> Any:
    return gallery(data, n, ncols=ncols, structures=structures, indices=indices, titles=titles, legend=legend)
