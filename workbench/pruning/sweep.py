"""Accuracy against pruning ratio, per criterion, with and without brief fine-tuning: ``sweep``.

Each criterion scores the units of the dense model once (on the calibration set); every ratio then
prunes a new copy with those scores and evaluates it on the test set; with ``train=`` and
``epochs >= 1`` each pruned copy is also fine-tuned with ``workbench.fit`` and evaluated again.
The area under each accuracy-vs-ratio curve (trapezoids, divided by the ratio range: the curve's
mean height) summarises a criterion in one number: higher means it keeps the model better.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["SweepResult", "sweep", "DEFAULT_RATIOS"]

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class SweepResult:
    """Result of :func:`sweep`.

    Attributes:
        table: DataFrame, one row per (criterion, ratio, fine_tuned): ``auc``, ``accuracy``,
            ``params``, ``macs`` (ratio 0 is the dense model).
        area: DataFrame ``criterion, fine_tuned, metric, area`` (mean AUC over the ratio range).
        dense: the dense model's test metrics.
        params: the settings.
    """

    table: Any
    area: Any
    dense: dict[str, float]
    params: dict[str, Any] = field(default_factory=dict)

    def plot(self, ax: Any = None, *, metric: str = "auc", **style: Any) -> Any:
        """Metric against ratio, one line per criterion (dashed: fine-tuned)
        (``workbench.viz.pruning.sweep_curves``)."""
        from workbench.viz.pruning import sweep_curves

        return sweep_curves(self, ax=ax, metric=metric, **style)


def curve_area(ratios: Sequence[float], values: Sequence[float]) -> float:
    """Area under ``values`` over ``ratios`` divided by the ratio range (the mean height).

    Examples:
        >>> curve_area([0.1, 0.5, 0.9], [1.0, 1.0, 1.0])
        1.0
    """
    r, v = np.asarray(ratios, float), np.asarray(values, float)
    if r.shape != v.shape or r.ndim != 1:
        raise ValueError(f"ratios and values need one value per ratio; got lengths {r.shape} and {v.shape}.")
    o = np.argsort(r)
    r, v = r[o], v[o]
    if len(r) < 2 or r[-1] == r[0]:
        return float(v.mean()) if len(v) else float("nan")
    return float(np.trapezoid(v, r) / (r[-1] - r[0])) if hasattr(np, "trapezoid") else float(np.trapz(v, r) / (r[-1] - r[0]))


def sweep(model: nn.Module, calibration: Any, test: Any, *, unit: str = "mlp",
          criteria: Sequence[str] = ("gradient_x_activation", "weight_magnitude", "random"),
          ratios: Sequence[float] = DEFAULT_RATIOS, scope: str = "layer", train: Any = None, epochs: int = 0,
          fit_kw: dict[str, Any] | None = None, score_kw: dict[str, dict[str, Any]] | None = None,
          batch_size: int = 32, device: str | torch.device | None = None, seed: int = 0,
          progress: bool = True) -> SweepResult:
    """Prune ``model`` at every ratio with every criterion and evaluate each pruned copy.

    Args:
        model: the dense model (not modified).
        calibration: images the criteria score units on (a dataset or ``(images, labels)``).
        test: the evaluation set.
        unit: "mlp", "heads" or "channels".
        criteria: criterion names (``workbench.pruning.CRITERIA``).
        ratios: pruning ratios in (0, 1).
        scope: "layer" or "global" (see ``prune``).
        train: training data for fine-tuning each pruned copy (with ``epochs >= 1``).
        epochs: fine-tuning epochs (0: no fine-tuning rows).
        fit_kw: extra ``workbench.fit`` keywords (lr, batch_size, ...).
        score_kw: per-criterion keywords for ``scores``, e.g. ``{"integrated_gradients": {"n_steps": 8}}``.
        batch_size: calibration batch size.
        device: where scoring and evaluation run (None: the model's device).
        seed: seed for the random criterion and fine-tuning.
        progress: show progress bars.

    Returns:
        SweepResult.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from workbench._checks import check_dataset, check_int, check_model
    from workbench.train import evaluate, fit

    from ._core import scores as score_units
    from ._prune import _check_ratio, prune
    from .report import size

    check_model(model)
    check_dataset(test, name="test")
    ratios = [_check_ratio(r) for r in ratios]
    if not ratios:
        raise ValueError("ratios is empty; pass pruning ratios in (0, 1), e.g. (0.1, 0.3, 0.5, 0.7, 0.9).")
    epochs = check_int(epochs, "epochs", minimum=0)
    if epochs and train is None:
        raise ValueError("fine-tuning (epochs >= 1) needs train= data.")
    cfg = getattr(model, "workbench_config", None) or {}
    x1 = torch.rand(1, int(cfg.get("in_chans", 1)), *[int(s) for s in cfg.get("img_size", (32, 32))])
    dense_ev = evaluate(model, test, device=device)
    dense_size = size(model, x1)
    rows = [{"criterion": "dense", "ratio": 0.0, "fine_tuned": False, "auc": dense_ev.auc,
             "accuracy": dense_ev.accuracy, **dense_size}]
    bar = tqdm(total=len(criteria) * len(ratios), desc="sweep", disable=not progress)
    try:
        for crit in criteria:
            s = score_units(model, calibration, unit, crit, batch_size=batch_size, device=device, seed=seed,
                            progress=False, **dict((score_kw or {}).get(crit, {})))
            for r in ratios:
                small = prune(model, s, ratio=r, scope=scope)
                ev = evaluate(small, test, device=device)
                rows.append({"criterion": crit, "ratio": r, "fine_tuned": False, "auc": ev.auc,
                             "accuracy": ev.accuracy, **size(small, x1)})
                if epochs:
                    fit(small, train, epochs=epochs, seed=seed, progress=False,
                        **{"device": device or "auto", **dict(fit_kw or {})})
                    ev = evaluate(small, test, device=device)
                    rows.append({"criterion": crit, "ratio": r, "fine_tuned": True, "auc": ev.auc,
                                 "accuracy": ev.accuracy, **size(small, x1)})
                bar.update(1)
    finally:
        bar.close()
    table = pd.DataFrame(rows)
    areas = []
    for (crit, ft), g in table[table["criterion"] != "dense"].groupby(["criterion", "fine_tuned"], sort=False):
        for metric in ("auc", "accuracy"):
            areas.append({"criterion": crit, "fine_tuned": bool(ft), "metric": metric,
                          "area": curve_area(g["ratio"], g[metric])})
    return SweepResult(table, pd.DataFrame(areas), {"auc": dense_ev.auc, "accuracy": dense_ev.accuracy, **dense_size},
                       {"unit": unit, "criteria": list(criteria), "ratios": ratios, "scope": scope, "epochs": epochs})
