"""Training curves: loss and validation AUC/accuracy per epoch."""
from __future__ import annotations

import math
from typing import Any

from ._style import colours, figsize, rc, styled


@styled
def training_curves(history: Any, ax: Any = None, **style: Any) -> Any:
    """Plot the training loss (left axis) and validation AUC/accuracy (right axis) per epoch.

    Args:
        history: a ``workbench.train.History`` (or anything with ``rows`` of dicts with
            epoch, loss, val_auc, val_acc).
        ax: a matplotlib Axes to draw into; a new figure when None.
        **style: passed to the loss line (e.g. ``lw=2``).

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    rows = list(getattr(history, "rows", history))
    if not all(isinstance(r, dict) and "epoch" in r and "loss" in r for r in rows):
        raise TypeError(f"history must be a History returned by workbench.fit (rows of epoch, loss, val_auc...); got "
                        f"{type(history).__name__}.")
    if not rows:
        raise ValueError("history has no epochs to plot; train for at least one epoch.")
    c = colours(3)
    with rc():
        if ax is None:
            fig, ax = plt.subplots(figsize=figsize(4.2, 2.8))
        else:
            fig = ax.figure
        ep = [r["epoch"] for r in rows]
        ax.plot(ep, [r["loss"] for r in rows], color=c[0], marker="o", ms=3, label="train loss", **style)
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        handles, labels = ax.get_legend_handles_labels()
        vals = [r.get("val_auc", math.nan) for r in rows]
        if any(v is not None and not math.isnan(v) for v in vals):
            ax2 = ax.twinx()
            ax2.plot(ep, vals, color=c[1], marker="s", ms=3, label="val AUC")
            ax2.plot(ep, [r.get("val_acc", math.nan) for r in rows], color=c[2], marker="^", ms=3,
                     ls="--", label="val accuracy")
            best = getattr(history, "best_epoch", None)
            if best is not None:
                ax2.axvline(best, color="#777777", lw=0.8, ls=":", label=f"best epoch {best}")
            ax2.set_ylabel("validation")
            ax2.set_ylim(0, 1.02)
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(handles, labels, loc="best", frameon=False)
        ax.set_title("training")
    return fig


# ------------------------------------------------------------------ rebuildable recipes (viz.draw)
from ._recipes import recipe  # noqa: E402


@recipe("training_curves", model=False, data=False)
def _training_curves_recipe(*, history: Any) -> Any:
    """``history``: ``History.to_dict()`` (or its ``rows``)."""
    from types import SimpleNamespace

    if isinstance(history, dict):
        return training_curves(SimpleNamespace(rows=history["rows"], best_epoch=history.get("best_epoch")))
    return training_curves(history)
