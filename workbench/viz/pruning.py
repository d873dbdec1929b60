"""Pruning figures: unit score profiles, accuracy-vs-ratio curves and the report panel."""
from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import check_result
from ._style import colours, figsize as _figsize, rc, styled
from .evaluation import _axes


@styled
def score_profile(scores: Any, ax: Any = None, *, normalise: bool = True, **style: Any) -> Any:
    """Each layer's unit scores sorted from high to low (x: unit rank as a fraction of the layer,
    y: score divided by the layer's mean when ``normalise``); one line per layer, early layers
    light, late layers dark."""
    check_result(scores, ("values", "criterion", "unit"), "Scores (workbench.pruning.scores)")
    fig, ax = _axes(ax, (4.5, 3.2))
    keys = list(scores.values)
    cmap = __import__("matplotlib").colormaps["viridis"]
    for i, k in enumerate(keys):
        v = np.sort(scores.values[k].float().cpu().numpy())[::-1]
        if normalise:
            v = v / max(float(np.abs(v).mean()), 1e-12)
        ax.plot(np.linspace(0, 1, len(v)), v, color=cmap(i / max(1, len(keys) - 1)), lw=1.0,
                label=k if len(keys) <= 6 else None, **style)
    ax.set_xlabel("unit rank (fraction of layer)")
    ax.set_ylabel("score / layer mean" if normalise else "score")
    ax.set_title(f"{scores.criterion} ({scores.unit})")
    if len(keys) <= 6:
        ax.legend(fontsize="small", frameon=False)
    return fig


@styled
def sweep_curves(result: Any, ax: Any = None, *, metric: str = "auc", **style: Any) -> Any:
    """``metric`` against pruning ratio: one colour per criterion, solid without and dashed with
    fine-tuning; the dense model at ratio 0; the legend gives each curve's area."""
    check_result(result, ("table", "area", "dense"), "a SweepResult (workbench.pruning.sweep)")
    fig, ax = _axes(ax, (4.8, 3.4))
    t = result.table
    crits = [c for c in dict.fromkeys(t["criterion"]) if c != "dense"]
    cc = dict(zip(crits, colours(len(crits))))
    area = result.area[result.area["metric"] == metric]
    for c in crits:
        for ft, ls in ((False, "-"), (True, "--")):
            g = t[(t["criterion"] == c) & (t["fine_tuned"] == ft)].sort_values("ratio")
            if not len(g):
                continue
            a = area[(area["criterion"] == c) & (area["fine_tuned"] == ft)]["area"]
            lab = f"{c}{' +ft' if ft else ''} ({float(a.iloc[0]):.3f})" if len(a) else c
            ax.plot([0.0, *g["ratio"]], [result.dense[metric], *g[metric]], ls, color=cc[c], marker="o", ms=3,
                    label=lab, **style)
    ax.set_xlabel("pruning ratio")
    ax.set_ylabel(metric.upper() if metric == "auc" else metric)
    ax.legend(fontsize="x-small", frameon=False, title="criterion (area)", title_fontsize="x-small")
    return fig


@styled
def report_figure(report: Any, *, figsize: tuple[float, float] | None = None) -> Any:
    """Three panels: size and latency ratios, per-class AUC before/after, relevance share per
    structure before/after."""
    import matplotlib.pyplot as plt

    check_result(report, ("summary",), "a PruneReport (workbench.pruning.report)")

    with rc():
        fig, axes = plt.subplots(1, 3, figsize=figsize or _figsize(12, 3.4))
    s = report.summary()
    names = ["params", "MACs", *[f"latency b{b}" for b in report.latency]]
    vals = [s["params_ratio"], s["macs_ratio"], *[report.latency[b]["ratio"] for b in report.latency]]
    c0, c1 = colours(2)
    axes[0].bar(names, vals, color=c1)
    axes[0].axhline(1.0, color="k", lw=0.6)
    axes[0].set_ylabel("pruned / original")
    axes[0].tick_params(axis="x", rotation=30)
    pc = report.per_class
    x = np.arange(len(pc))
    axes[1].bar(x - 0.2, pc["auc_original"], 0.4, color=c0, label="original")
    axes[1].bar(x + 0.2, pc["auc_pruned"], 0.4, color=c1, label="pruned")
    axes[1].set_xticks(x, pc["class"], rotation=30)
    axes[1].set_ylabel("AUC")
    axes[1].set_ylim(max(0.0, float(np.nanmin(pc[["auc_original", "auc_pruned"]].to_numpy())) - 0.1), 1.0)
    axes[1].legend(fontsize="small", frameon=False)
    axes[1].set_title(f"{len(report.flips)} predictions flipped")
    b = report.budget
    if b is not None and len(b):
        x = np.arange(len(b))
        axes[2].bar(x - 0.2, b["original"], 0.4, color=c0, label="original")
        axes[2].bar(x + 0.2, b["pruned"], 0.4, color=c1, label="pruned")
        axes[2].set_xticks(x, b["structure"], rotation=60, fontsize="small")
        axes[2].set_ylabel("share of relevance")
        rho = report.rank_correlation
        axes[2].set_title("maps' rank correlation " + (f"{rho:.2f}" if rho is not None else "n/a"))
    else:
        axes[2].axis("off")
    fig.tight_layout()
    return fig
