"""Metrics for ``workbench.train.evaluate``: AUC and accuracy per task, percentile bootstrap CIs."""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of a binary target, NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    if y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, score))


def _fast_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Rank (Mann-Whitney) form of the ROC AUC, ties averaged: equal to sklearn's, much faster."""
    from scipy.stats import rankdata

    pos = y.astype(bool)
    n1 = int(pos.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(score)
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def per_class_auc(probs: np.ndarray, labels: np.ndarray, task: str, fast: bool = False) -> np.ndarray:
    """One AUC per class (binary: [AUC of class 0, AUC of class 1]; one-vs-rest; multilabel per label).

    Args:
        probs: (N, C) probabilities.
        labels: (N,) class indices, or (N, L) {0, 1} for multilabel.
        task: "binary", "multiclass" or "multilabel".

    Returns:
        (C,) AUCs, NaN for a class absent (or always present) in ``labels``.
    """
    c = probs.shape[1]
    f = _fast_auc if fast else _auc
    if task == "multilabel":
        return np.array([f(labels[:, j].astype(int), probs[:, j]) for j in range(c)])
    return np.array([f((labels == j).astype(int), probs[:, j]) for j in range(c)])


def auc_score(probs: np.ndarray, labels: np.ndarray, task: str, fast: bool = False) -> float:
    """Binary: AUC of class 1; multiclass: macro one-vs-rest; multilabel: macro over labels.

    Classes without both positives and negatives in ``labels`` are left out of the macro mean
    (NaN when none is left).
    """
    if task == "binary":
        return (_fast_auc if fast else _auc)((labels == 1).astype(int), probs[:, 1])
    aucs = per_class_auc(probs, labels, task, fast)
    return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")


def accuracy_score(probs: np.ndarray, labels: np.ndarray, task: str) -> float:
    """Top-1 accuracy; multilabel: mean per-label accuracy at threshold 0.5."""
    if task == "multilabel":
        return float(((probs >= 0.5) == (labels >= 0.5)).mean())
    return float((probs.argmax(1) == labels).mean())


def bootstrap_ci(probs: np.ndarray, labels: np.ndarray, task: str, *, n: int, ci: float,
                 seed: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Percentile bootstrap CIs (resampling samples with replacement) of AUC and accuracy.

    Resamples where the AUC is undefined (one class only) are skipped for the AUC interval.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), e.g. 0.95; got {ci!r}.")
    rng = np.random.default_rng(seed)
    m = len(labels)
    aucs, accs = [], []
    for _ in range(n):
        idx = rng.integers(0, m, m)
        p, y = probs[idx], labels[idx]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            a = auc_score(p, y, task, fast=True)
        if not math.isnan(a):
            aucs.append(a)
        accs.append(accuracy_score(p, y, task))
    lo, hi = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2

    def pct(v: list[float]) -> tuple[float, float]:
        return (float(np.percentile(v, lo)), float(np.percentile(v, hi))) if v else (float("nan"),) * 2

    return pct(aucs), pct(accs)


@dataclass(frozen=True)
class Evaluation:
    """Result of ``workbench.train.evaluate``.

    Attributes:
        auc: binary: AUC of class 1; multiclass: macro one-vs-rest AUC; multilabel: macro AUC.
        accuracy: top-1 accuracy (multilabel: mean per-label accuracy at 0.5).
        per_class_auc: one AUC per class/label (one-vs-rest), NaN where undefined.
        n: number of samples.
        task: "binary", "multiclass" or "multilabel".
        classes: class names.
        auc_ci, accuracy_ci: (low, high) percentile bootstrap intervals, None without bootstrap.
        ci: the interval's coverage (e.g. 0.95).
        bootstrap: number of bootstrap resamples (0: none).
    """

    auc: float
    accuracy: float
    per_class_auc: tuple[float, ...]
    n: int
    task: str
    classes: tuple[str, ...] = ()
    auc_ci: tuple[float, float] | None = None
    accuracy_ci: tuple[float, float] | None = None
    ci: float = 0.95
    bootstrap: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes None)."""
        def clean(v: Any) -> Any:
            if isinstance(v, float) and math.isnan(v):
                return None
            if isinstance(v, (tuple, list)):
                return [clean(x) for x in v]
            return v

        return {k: clean(v) for k, v in asdict(self).items()}

    def __str__(self) -> str:
        s = f"AUC {self.auc:.3f}"
        if self.auc_ci:
            s += f" [{self.auc_ci[0]:.3f}, {self.auc_ci[1]:.3f}]"
        s += f", accuracy {self.accuracy:.3f}"
        if self.accuracy_ci:
            s += f" [{self.accuracy_ci[0]:.3f}, {self.accuracy_ci[1]:.3f}]"
        return s + f" (n={self.n}, {self.task})"
