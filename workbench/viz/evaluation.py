"""Figures for explanation evaluation: per-structure budget bars, deletion/insertion curves and the
shortcut-audit figure. Each accepts ``ax=None`` (or returns a new Figure) and exports with
``workbench.viz.save_figure``."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from .._checks import check_result
from ._style import axes, colours, figsize as _figsize, rc, structure_colours, styled


def _axes(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    return axes(ax, *size)


@styled
def budget_bars(budget: pd.DataFrame | Mapping[str, pd.DataFrame], ax: Any = None, *, structures: Any = None,
                title: str | None = None, ylabel: str = "share of positive relevance") -> Any:
    """Bar chart of the mean relevance share per structure with CI error bars.

    Args:
        budget: a ``cohort_budget`` DataFrame (columns structure, mean, lo, hi) or a dict
            {model or method name: DataFrame}; several are drawn as hatched groups per structure.
        ax: axes to draw on (default: a new figure).
        structures: order / subset of structures to show (default: as in the first table).
        title, ylabel: labels.

    Returns:
        The matplotlib Figure.
    """
    if not isinstance(budget, (pd.DataFrame, Mapping)):
        raise TypeError(f"budget must be a cohort_budget DataFrame or a dict {{name: DataFrame}}; got "
                        f"{type(budget).__name__}.")
    tables = {"": budget} if isinstance(budget, pd.DataFrame) else dict(budget)
    bad = [k for k, t in tables.items() if not isinstance(t, pd.DataFrame) or not {"structure", "mean"} <= set(t.columns)]
    if bad:
        raise TypeError(f"budget entries {bad} are not cohort_budget DataFrames (columns structure, mean, lo, hi); "
                        "pass workbench.evaluation.cohort_budget(...) results.")
    if not tables:
        raise ValueError("budget_bars needs a cohort_budget DataFrame or a non-empty dict of them.")
    for k, t in tables.items():
        miss = {"structure", "mean"} - set(t.columns)
        if miss:
            raise ValueError(f"table {k!r} lacks columns {sorted(miss)}; pass cohort_budget(...) output.")
    names = list(structures) if structures is not None else list(dict.fromkeys(next(iter(tables.values()))["structure"]))
    fig, ax = _axes(ax, (max(3.5, 0.55 * len(names) * max(1, len(tables)) + 1.5), 2.8))
    cols = structure_colours(names)
    n_t = len(tables)
    width = 0.8 / n_t
    hatches = ["", "//", "..", "xx", "\\\\", "oo"]
    x = np.arange(len(names))
    for j, (label, t) in enumerate(tables.items()):
        t = t.set_index("structure").reindex(names)
        mean = t["mean"].fillna(0).to_numpy(float)
        lo = t["lo"].fillna(t["mean"]).to_numpy(float) if "lo" in t else mean
        hi = t["hi"].fillna(t["mean"]).to_numpy(float) if "hi" in t else mean
        err = np.vstack([np.clip(mean - lo, 0, None), np.clip(hi - mean, 0, None)])
        pos = x - 0.4 + width * (j + 0.5)
        ax.bar(pos, mean, width * 0.92, yerr=err, capsize=2, color=[cols[n] for n in names],
               edgecolor="#333333", linewidth=0.6, hatch=hatches[j % len(hatches)], label=label or None,
               error_kw={"elinewidth": 0.8, "ecolor": "#222222"})
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(1e-3, ax.get_ylim()[1]))
    ax.spines[["top", "right"]].set_visible(False)
    if n_t > 1:
        import matplotlib.patches as mpatches

        ax.legend(handles=[mpatches.Patch(facecolor="white", edgecolor="#333333", hatch=hatches[j % len(hatches)],
                                          label=str(k)) for j, k in enumerate(tables)], frameon=False)
    if title:
        ax.set_title(title)
    return fig


@styled
def deletion_curves(faith: Any, ax: Any = None, *, modes: tuple[str, ...] = ("deletion", "insertion"),
                    band: bool = True, title: str | None = None) -> Any:
    """Mean deletion (solid) and insertion (dashed) curves with a +-1 s.e.m. band, AUC in the legend.

    Args:
        faith: a ``Faithfulness`` or a dict {method name: Faithfulness}.
        ax: axes (default: a new figure).
        modes: which curves to draw.
        band: shade the standard error of the mean over images.
        title: axes title.

    Returns:
        The matplotlib Figure.
    """
    items = dict(faith) if isinstance(faith, Mapping) else {getattr(faith, "label", "") or "map": faith}
    bad = [k for k, f in items.items() if not hasattr(f, "fractions")]
    if bad:
        raise TypeError(f"faith must be a Faithfulness result (workbench.evaluation.deletion_insertion) or a dict of "
                        f"them; got {type(faith).__name__}.")
    for m in modes:
        if m not in ("deletion", "insertion"):
            raise ValueError(f"modes must hold 'deletion' and/or 'insertion'; got {m!r}.")
    if not items:
        raise ValueError("deletion_curves needs a Faithfulness or a non-empty dict of them.")
    fig, ax = _axes(ax, (3.6, 2.8))
    cs = colours(len(items))
    for c, (name, f) in zip(cs, items.items()):
        x = np.asarray(f.fractions, float)
        for md, ls in (("deletion", "-"), ("insertion", "--")):
            cur = getattr(f, md)
            if md not in modes or cur is None:
                continue
            y = np.asarray(cur, float)
            m = y.mean(0)
            auc = float(np.asarray(getattr(f, f"{md}_auc")).mean())
            ax.plot(x, m, ls, color=c, lw=1.4, label=f"{name} {md[:3]}. AUC {auc:.2f}")
            if band and y.shape[0] > 1:
                se = y.std(0, ddof=1) / np.sqrt(y.shape[0])
                ax.fill_between(x, m - se, m + se, color=c, alpha=0.15, lw=0)
    ax.set_xlabel("fraction of pixels removed / inserted")
    ax.set_ylabel("target probability")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(frameon=False, fontsize="small")
    if title:
        ax.set_title(title)
    return fig


@styled
def audit_figure(audit: Any, *, metric: str = "accuracy", figsize: tuple[float, float] | None = None) -> Any:
    """Shortcut-audit figure: Mask-of-truth bars, accuracy on positives per subgroup with CIs, and
    (when the audit has one) the relevance budget.

    Args:
        audit: a ``ShortcutAudit``.
        metric: "accuracy" or "auc" for the Mask-of-truth panel.
        figsize: figure size.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    if not all(hasattr(audit, a) for a in ("mask_of_truth", "positives")):
        raise TypeError(f"audit must be a ShortcutAudit (workbench.evaluation.shortcut_audit); got "
                        f"{type(audit).__name__}.")
    has_budget = getattr(audit, "budget", None) is not None
    n = 3 if has_budget else 2
    with rc():
        fig, axes = plt.subplots(1, n, figsize=figsize or _figsize(3.4 * n, 2.9), constrained_layout=True)
    ax = axes[0]
    mot = audit.mask_of_truth
    mot = mot[mot["train"] == "original"] if "train" in mot else mot
    labels = [f"{v}{' (box)' if b else ''}" for v, b in zip(mot["variant"], mot["box"])]
    vals = mot[metric].to_numpy(float)
    cs = {"full": "#BBBBBB", "only": "#4477AA", "without": "#EE6677"}
    ax.bar(range(len(vals)), np.nan_to_num(vals), color=[cs.get(v, "#777777") for v in mot["variant"]],
           edgecolor="#333333", lw=0.6, hatch=None)
    ax.axhline(0.5, color="#777777", lw=0.8, ls=":")
    ax.set_xticks(range(len(vals)))
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1.02)
    st = mot["structure"].iloc[0] if len(mot) else ""
    ax.set_title(f"Mask of truth: {st}")
    ax.spines[["top", "right"]].set_visible(False)

    ax = axes[1]
    pos = audit.positives
    if len(pos):
        pos = pos[pos["group"] != "all"]
        lab = [f"{b}={g}" for b, g in zip(pos["by"], pos["group"])]
        acc = pos["accuracy"].to_numpy(float)
        err = np.vstack([acc - pos["accuracy_lo"].to_numpy(float), pos["accuracy_hi"].to_numpy(float) - acc])
        byc = {b: c for b, c in zip(dict.fromkeys(pos["by"]), colours(pos["by"].nunique()))}
        ax.barh(range(len(acc)), acc, xerr=np.clip(err, 0, None), color=[byc[b] for b in pos["by"]],
                edgecolor="#333333", lw=0.6, capsize=2)
        ax.set_yticks(range(len(acc)))
        ax.set_yticklabels(lab)
        ax.invert_yaxis()
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("accuracy on positives (sensitivity)")
    gaps = getattr(audit, "gaps", None)
    ttl = "Subgroups"
    if gaps is not None and len(gaps):
        g = gaps.iloc[0]
        ttl += f" (gap {g['by']}: {g['gap']:.2f})"
    ax.set_title(ttl)
    ax.spines[["top", "right"]].set_visible(False)
    if has_budget:
        budget_bars(audit.budget, ax=axes[2], title="Relevance budget")
    return fig


@styled
def alignment_heatmap(alignment: Any, ax: Any = None, *, cmap: str = "viridis") -> Any:
    """Heatmap of an ``anatomy_alignment`` result's table (communities x structures, share of each
    community's mass per structure), with ARI, NMI and purity in the title.

    Returns:
        The Figure when ``ax`` is None, else ``ax``.
    """
    check_result(alignment, ("table", "ari", "nmi", "purity"), "an Alignment (workbench.evaluation.anatomy_alignment)")
    table = alignment.table
    new = ax is None
    fig, ax = _axes(ax, (1 + 0.6 * table.shape[1], 0.8 + 0.4 * table.shape[0]))
    im = ax.imshow(table.values, cmap=cmap, vmin=0, vmax=1)
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=45, ha="right")
    ax.set_yticks(range(table.shape[0]), table.index)
    for (i, j), v in np.ndenumerate(table.values):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize="small", color="white" if v < 0.5 else "black")
    ax.set_title(f"ARI {alignment.ari:.2f}  NMI {alignment.nmi:.2f}  purity {alignment.purity:.2f}")
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    return fig if new else ax


__all__ = ["budget_bars", "deletion_curves", "audit_figure", "alignment_heatmap"]


# ------------------------------------------------------------------ rebuildable recipes (viz.draw)
from ._recipes import batch_of, recipe  # noqa: E402


def _models(model: Any) -> dict[str, Any]:
    return dict(model) if isinstance(model, Mapping) else {"": model}


@recipe("budget_bars")
def _budget_bars_recipe(model: Any, data: Any, *, indices: Any = None, methods: Any = ("integrated_gradients",),
                        target: Any = None, structures: Any = None, bootstrap: int = 1000, seed: int = 0,
                        title: Any = None) -> Any:
    """Relevance share per structure; one bar group per model (a dict of models) and method."""
    from ..attribution import attribute
    from ..evaluation import cohort_budget

    batch = batch_of(data, indices)
    names = list(structures) if structures is not None else list(batch["masks"])
    masks = {"masks": {k: batch["masks"][k] for k in names},
             "mask_present": {k: batch["mask_present"][k] for k in names if k in batch.get("mask_present", {})}}
    budgets = {" ".join(filter(None, (name, m if len(methods) > 1 else ""))):
               cohort_budget(attribute(mod, batch["image"], target=target, method=m), masks, bootstrap=bootstrap,
                             seed=seed)
               for name, mod in _models(model).items() for m in methods}
    return budget_bars(budgets[""] if list(budgets) == [""] else budgets, title=title)


@recipe("deletion_curves")
def _deletion_curves_recipe(model: Any, data: Any, *, indices: Any = (0, 1, 2, 3),
                            methods: Any = ("integrated_gradients",), target: Any = None, options: Any = None,
                            steps: int = 20, baseline: Any = "blur", title: Any = None) -> Any:
    from ..evaluation import deletion_insertion
    from .attribution import attributions_of

    batch = batch_of(data, indices)
    atts = attributions_of(model, batch["image"], methods, target, options)
    faith = {m: deletion_insertion(model, batch["image"], a, target, steps=steps, baseline=baseline)
             for m, a in atts.items()}
    return deletion_curves(faith, title=title)


@recipe("audit_figure")
def _audit_figure_recipe(model: Any, data: Any, *, structures: Any = ("left_lung", "right_lung"),
                         groups: Any = ("device", "site"), method: Any = None, budget_structures: Any = None,
                         n_budget: int = 64, target: Any = None, bootstrap: int = 500, seed: int = 0,
                         metric: str = "accuracy") -> Any:
    from ..evaluation import shortcut_audit

    audit = shortcut_audit(model, data, structures=structures, groups=groups, method=method,
                           budget_structures=budget_structures, n_budget=n_budget, target=target,
                           bootstrap=bootstrap, seed=seed)
    return audit_figure(audit, metric=metric)


@recipe("alignment_heatmap")
def _alignment_heatmap_recipe(model: Any, data: Any, *, indices: Any = (0, 1, 2, 3), k: int = 4,
                              method: str = "mixed_score", layer: int = -1, structures: Any = None,
                              seed: int = 0) -> Any:
    from ..communities import communities
    from ..evaluation import anatomy_alignment

    batch = batch_of(data, indices)
    comms = communities(model, batch["image"], k=k, method=method, layer=layer, seed=seed)
    return alignment_heatmap(anatomy_alignment(comms, batch, structures=structures))
