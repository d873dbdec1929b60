"""Quality report of a concept model: per-concept AUC, task AUC, completeness, leakage, head sparsity.

- **Concept AUC**: ROC AUC of each concept's predicted probability against its true label (missing
  labels left out), and their mean.
- **Task**: AUC (binary: of class 1; multiclass: macro one-vs-rest) and accuracy of the model.
- **Completeness** (Yeh et al. 2020): ``(acc(g) - a_r) / (acc(model) - a_r)``, with ``g`` the best
  simple classifier of the label from the predicted concept probabilities alone (multinomial logistic
  regression, 2-fold cross-fitted on the data) and ``a_r`` the accuracy of always predicting the most
  frequent class. Near 1: the concepts carry what the model needs; well below 1: the model relies on
  more than its concepts say.
- **Leakage** (Mahinpei et al. 2021): the task head's accuracy on the soft concept probabilities (what
  the model does), on the same concepts thresholded at 0.5 (hard), and on the true concepts. A soft
  accuracy clearly above the hard one means the head reads information hidden in the probabilities
  beyond presence/absence (leakage); the true-concept accuracy shows how well the head follows the
  concepts when they are right.
- **Head sparsity**: the share of task-head weights (the first layer of an MLP head) whose magnitude is
  below 1 % of the largest; and per class the number of concepts with a weight above that.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ._model import ConceptBottleneck, check_cbm


@dataclass(frozen=True)
class ConceptReport:
    """A concept model's quality (``quality``).

    Attributes:
        concepts: DataFrame per concept: auc, accuracy (at 0.5), prevalence, n (labelled images),
            head_weight (largest |weight| of the concept in the task head).
        mean_concept_auc: mean of the per-concept AUCs.
        task_auc, task_accuracy: of the model on the data.
        completeness: Yeh et al.'s completeness score.
        leakage: {"soft": acc, "hard": acc, "true": acc, "gap": soft - hard}.
        head_sparsity: share of (near-)zero head weights; ``concepts_per_class``: {class: count}.
        n: images.
    """

    concepts: Any
    mean_concept_auc: float
    task_auc: float
    task_accuracy: float
    completeness: float
    leakage: dict[str, float]
    head_sparsity: float
    concepts_per_class: dict[str, int]
    n: int
    params: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        """The headline numbers as a flat dict."""
        return {"mean_concept_auc": self.mean_concept_auc, "task_auc": self.task_auc,
                "task_accuracy": self.task_accuracy, "completeness": self.completeness,
                "leakage_gap": self.leakage["gap"], "head_sparsity": self.head_sparsity}


def _completeness(p: np.ndarray, y: np.ndarray, model_acc: float, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    a_r = counts.max() / len(y)
    usable = counts[counts > 0]
    if len(usable) < 2 or usable.min() < 2 or model_acc - a_r <= 1e-9:
        return float("nan")
    folds = StratifiedKFold(n_splits=2, shuffle=True, random_state=seed)
    hit = 0
    for tr, te in folds.split(p, y):
        if len(np.unique(y[tr])) < 2:
            return float("nan")
        g = LogisticRegression(max_iter=1000, C=10.0).fit(p[tr], y[tr])
        hit += int((g.predict(p[te]) == y[te]).sum())
    return float((hit / len(y) - a_r) / (model_acc - a_r))


@torch.no_grad()
def quality(cbm: ConceptBottleneck, data: Any, *, batch_size: int = 256, device: Any = None,
            seed: int = 0) -> ConceptReport:
    """The quality report of a concept model on a dataset with concept labels (module docstring).

    Args:
        cbm: a concept model; not changed.
        data: a dataset with concepts (the model's concepts must be among its ``concept_names``).
        batch_size, device: forward passes.
        seed: completeness cross-fitting folds.

    Returns:
        A :class:`ConceptReport`.
    """
    import pandas as pd

    from workbench._train_metrics import _auc, accuracy_score, auc_score

    from ._predict import concept_logits_of, true_concepts_for
    from .interventions import _HeadOnCPU

    cbm = check_cbm(cbm, "quality")
    true = true_concepts_for(cbm, data)
    z, y, _ = concept_logits_of(cbm, data, batch_size=batch_size, device=device, with_labels=True)
    if y.ndim != 1:
        raise ValueError("quality() reports single-label tasks (binary or multiclass); this data is multilabel.")
    head = _HeadOnCPU(cbm)
    p = torch.sigmoid(z)
    yn = y.numpy()
    task = "binary" if cbm.num_classes == 2 else "multiclass"
    probs_soft = head.probs(head.head_input(z))
    rows = {}
    for k, name in enumerate(cbm.concepts):
        known = torch.isfinite(true[:, k])
        t, s = true[known, k].numpy() >= 0.5, p[known, k].numpy()
        rows[name] = {"auc": _auc(t.astype(int), s) if known.any() else float("nan"),
                      "accuracy": float(((s >= 0.5) == t).mean()) if known.any() else float("nan"),
                      "prevalence": float(t.mean()) if known.any() else float("nan"), "n": int(known.sum())}
    w = (cbm.task_head.weight if cbm.head == "linear" else cbm.task_head[0].weight).detach().float().cpu().abs()
    for k, name in enumerate(cbm.concepts):
        rows[name]["head_weight"] = float(w[:, k].max())
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "concept"
    hard = head.value_to_input((p >= 0.5).float())
    full_true = torch.where(torch.isfinite(true), true, (p >= 0.5).float())
    acc_soft = accuracy_score(probs_soft, yn, task)
    leakage = {"soft": acc_soft, "hard": accuracy_score(head.probs(hard), yn, task),
               "true": accuracy_score(head.probs(head.value_to_input(full_true)), yn, task)}
    leakage["gap"] = leakage["soft"] - leakage["hard"]
    thr = 0.01 * float(w.max()) if w.numel() else 0.0
    classes = cbm.classes or tuple(str(i) for i in range(cbm.num_classes))
    per_class = ({c: int((w[i] > thr).sum()) for i, c in enumerate(classes)} if cbm.head == "linear" else {})
    return ConceptReport(concepts=table, mean_concept_auc=float(np.nanmean(table["auc"])),
                         task_auc=auc_score(probs_soft, yn, task), task_accuracy=acc_soft,
                         completeness=_completeness(p.numpy(), yn, acc_soft, seed), leakage=leakage,
                         head_sparsity=float((w <= thr).float().mean()), concepts_per_class=per_class, n=int(len(yn)),
                         params={"seed": seed})
