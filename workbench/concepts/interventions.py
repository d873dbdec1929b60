"""Intervention curves (Koh et al. 2020): task accuracy and AUC as more predicted concepts are
replaced by their true labels, for several orders of correction, with bootstrap CIs.

Orders (per image):

- ``"random"``: a random permutation (averaged over ``random_draws`` permutations);
- ``"uncertainty"``: the concepts whose predicted probability is closest to 0.5 first (``|p - 0.5|``);
- ``"expected_change"``: greedy: at each step the uncorrected concept whose correction is expected to
  change the class probabilities most, ``E_{v ~ Bernoulli(p_k)} || softmax(f(a; k := v)) - softmax(f(a)) ||_1``
  with ``p_k`` the model's current probability for the concept (it needs no true label to choose).

Only the task head is re-run, so a curve costs one forward of the backbone per image. Concepts whose
true label is missing (NaN) are never corrected.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ._model import ConceptBottleneck, check_cbm
from ._validate import check_int, check_number

ORDERS = ("random", "uncertainty", "expected_change")


@dataclass(frozen=True)
class InterventionCurve:
    """Task accuracy and AUC against the number of concepts corrected (``intervention_curve``).

    Attributes:
        orders: the orders measured.
        steps: (K + 1,) number of concepts corrected, 0..K.
        accuracy, auc: {order: (K + 1,)} metric after each number of corrections.
        accuracy_ci, auc_ci: {order: (K + 1, 2)} percentile bootstrap intervals over images.
        n: images; ``ci``: interval coverage; ``bootstrap``: resamples.
    """

    orders: tuple[str, ...]
    steps: np.ndarray
    accuracy: dict[str, np.ndarray]
    auc: dict[str, np.ndarray]
    accuracy_ci: dict[str, np.ndarray]
    auc_ci: dict[str, np.ndarray]
    n: int
    ci: float
    bootstrap: int
    params: dict[str, Any] = field(default_factory=dict)

    def table(self) -> Any:
        """Long DataFrame: order, corrected, accuracy (and CI), auc (and CI)."""
        import pandas as pd

        rows = []
        for o in self.orders:
            for s in self.steps:
                rows.append({"order": o, "corrected": int(s), "accuracy": self.accuracy[o][s],
                             "accuracy_lo": self.accuracy_ci[o][s, 0], "accuracy_hi": self.accuracy_ci[o][s, 1],
                             "auc": self.auc[o][s], "auc_lo": self.auc_ci[o][s, 0], "auc_hi": self.auc_ci[o][s, 1]})
        return pd.DataFrame(rows)

    def corrections_to(self, level: float, order: str, metric: str = "accuracy") -> int | None:
        """The fewest corrections after which ``metric`` reaches ``level`` (None if never)."""
        vals = (self.accuracy if metric == "accuracy" else self.auc)[order]
        hit = np.nonzero(vals >= level)[0]
        return int(hit[0]) if len(hit) else None

    def plot(self, ax: Any = None, *, metric: str = "accuracy", **style: Any) -> Any:
        """Curves with CI bands (``workbench.viz.concepts.concept_intervention_curves``)."""
        from workbench.viz.concepts import concept_intervention_curves

        return concept_intervention_curves(self, ax=ax, metric=metric, **style)


def _inputs(cbm: ConceptBottleneck, data: Any, batch_size: int, device: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(concept logits (N, K), labels (N,), true concepts (N, K) in the model's order)."""
    from ._predict import _Eval, concept_logits_of, true_concepts_for
    from ._validate import check_concept_labels, check_images

    if isinstance(data, Mapping):
        x = check_images(data, model=cbm)
        if data.get("concepts") is None or data.get("label") is None:
            raise ValueError("a batch dict for intervention curves needs 'label' and 'concepts' (true labels); "
                             "use dataset.batch(indices) of a dataset with concepts.")
        with _Eval(cbm, device) as (m, dev), torch.no_grad():
            z = torch.cat([m.concept_logits(x[s:s + batch_size].to(dev)).float().cpu()
                           for s in range(0, len(x), batch_size)])
        true = check_concept_labels(data["concepts"], len(x), cbm.num_concepts, "batch concepts")
        return z, torch.as_tensor(data["label"]).long(), true
    true = true_concepts_for(cbm, data)
    z, y, _ = concept_logits_of(cbm, data, batch_size=batch_size, device=device, with_labels=True)
    if y.ndim != 1:
        raise ValueError("intervention curves need a single-label task (binary or multiclass); this data is "
                         "multilabel.")
    return z, y.long(), true


def _orders(cbm: ConceptBottleneck, z: torch.Tensor, true: torch.Tensor, order: str, rng: np.random.Generator
            ) -> np.ndarray:
    """(N, K) order of correction per image: a permutation of concept indices; concepts with a missing
    label are put last and marked by the caller."""
    n, k = z.shape
    known = torch.isfinite(true).numpy()
    p = torch.sigmoid(z).numpy()
    if order == "random":
        keys = rng.random((n, k))
    elif order == "uncertainty":
        keys = np.abs(p - 0.5)
    else:
        return _greedy_expected_change(cbm, z, true)
    keys = np.where(known, keys, np.inf)
    return np.argsort(keys, axis=1, kind="stable")


@torch.no_grad()
def _greedy_expected_change(cbm: ConceptBottleneck, z: torch.Tensor, true: torch.Tensor) -> np.ndarray:
    """Greedy order: the concept with the largest expected change of the class probabilities first; once
    chosen, a concept is corrected to its true label (revealed by the expert) before the next choice."""
    n, k = z.shape
    a = cbm.head_input(z).float()
    p = torch.sigmoid(z).float()
    one, zero = cbm.value_to_input(torch.ones(k)), cbm.value_to_input(torch.zeros(k))
    known = torch.isfinite(true)
    tin = cbm.value_to_input(torch.nan_to_num(true))
    picked = torch.zeros(n, k, dtype=torch.bool)
    rows = torch.arange(n)
    out = np.zeros((n, k), dtype=np.int64)
    for step in range(k):
        cur = cbm.forward_concepts(a).softmax(-1)
        gain = torch.zeros(n, k)
        for j in range(k):
            hi, lo = a.clone(), a.clone()
            hi[:, j], lo[:, j] = one[j], zero[j]
            d1 = (cbm.forward_concepts(hi).softmax(-1) - cur).abs().sum(-1)
            d0 = (cbm.forward_concepts(lo).softmax(-1) - cur).abs().sum(-1)
            gain[:, j] = p[:, j] * d1 + (1 - p[:, j]) * d0
        gain = torch.where(known, gain, torch.tensor(-1.0))  # unknown labels after every known one
        gain = torch.where(picked, torch.tensor(-2.0), gain)
        pick = gain.argmax(1)
        out[:, step] = pick.numpy()
        ok = known[rows, pick]
        a[rows[ok], pick[ok]] = tin[rows[ok], pick[ok]]
        picked[rows, pick] = True
    return out


def _boot_auc(probs: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest AUC (binary: of class 1) of each bootstrap resample ``idx`` (R, N); classes
    absent from a resample are left out of its mean."""
    from scipy.stats import rankdata

    c = probs.shape[1]
    classes = [1] if c == 2 else range(c)
    out = []
    for k in classes:
        pos = (y[idx] == k)
        n1 = pos.sum(1)
        n0 = idx.shape[1] - n1
        r = rankdata(probs[idx, k], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(((r * pos).sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0))
    a = np.stack(out)
    a[~np.isfinite(a)] = np.nan
    with np.errstate(invalid="ignore"):
        return np.nanmean(a, axis=0)


def intervention_curve(cbm: ConceptBottleneck, data: Any, order: str | Sequence[str] = ORDERS, *,
                       bootstrap: int = 500, ci: float = 0.95, random_draws: int = 10, batch_size: int = 256,
                       device: Any = None, seed: int = 0) -> InterventionCurve:
    """Task accuracy and AUC after correcting 0..K concepts to their true labels.

    Args:
        cbm: a concept model; not changed.
        data: a dataset with concept labels (or a batch dict with "image", "label", "concepts").
        order: one order or several of "random", "uncertainty", "expected_change".
        bootstrap: resamples over images for the CIs (0: no CIs).
        ci: interval coverage.
        random_draws: random permutations per image averaged for the "random" order.
        batch_size, device: forward passes.
        seed: random permutations and bootstrap.

    Returns:
        An :class:`InterventionCurve`.

    Examples:
        >>> from workbench.data._base import ArrayDataset
        >>> cbm = create("resnet18", concepts=["a", "b"], num_classes=2, img_size=32, in_chans=1)
        >>> ds = ArrayDataset(torch.rand(8, 1, 32, 32), torch.tensor([0, 1] * 4), classes=("n", "p"),
        ...                   task="binary", concepts=torch.tensor([[0., 1.], [1., 0.]] * 4), concept_names=("a", "b"))
        >>> curve = intervention_curve(cbm, ds, order="uncertainty", bootstrap=0)
        >>> curve.steps.tolist()
        [0, 1, 2]
    """
    cbm = check_cbm(cbm, "intervention_curve")
    orders = (order,) if isinstance(order, str) else tuple(order)
    bad = [o for o in orders if o not in ORDERS]
    if bad or not orders:
        raise ValueError(f"unknown intervention order(s) {bad or orders}; valid orders are {list(ORDERS)}.")
    check_int(bootstrap, "bootstrap", minimum=0)
    check_int(random_draws, "random_draws")
    check_int(batch_size, "batch_size")
    check_number(ci, "ci", low=0, high=1, low_open=True, high_open=True)
    z, y, true = _inputs(cbm, data, batch_size, device)
    n, k = z.shape
    rng = np.random.default_rng(seed)
    yn = y.numpy()
    head = _HeadOnCPU(cbm)
    known = torch.isfinite(true)
    tin = head.value_to_input(torch.nan_to_num(true))
    base = head.head_input(z)
    idx = rng.integers(0, n, size=(bootstrap, n)) if bootstrap else None
    q = [(1 - ci) / 2 * 100, (1 + ci) / 2 * 100]
    acc, auc, acc_ci, auc_ci = {}, {}, {}, {}
    for o in orders:
        draws = random_draws if o == "random" else 1
        correct = np.zeros((draws, k + 1, n))
        probs = np.zeros((draws, k + 1, n, head.num_classes))
        for d in range(draws):
            perm = _orders(head.cbm, z, true, o, rng)
            a = base.clone()
            for s in range(k + 1):
                if s:
                    j = torch.as_tensor(perm[:, s - 1])
                    rows = torch.arange(n)
                    ok = known[rows, j]
                    a[rows[ok], j[ok]] = tin[rows[ok], j[ok]]
                pr = head.probs(a)
                probs[d, s] = pr
                correct[d, s] = pr.argmax(1) == yn
        acc[o] = correct.mean((0, 2))
        auc[o] = np.array([np.mean([_boot_auc(probs[d, s], yn, np.arange(n)[None])[0] for d in range(draws)])
                           for s in range(k + 1)])
        if idx is not None:
            per_image = correct.mean(0)  # (K+1, N)
            acc_ci[o] = np.percentile(per_image[:, idx].mean(-1), q, axis=1).T
            boots = np.stack([np.mean([_boot_auc(probs[d, s], yn, idx) for d in range(draws)], 0)
                              for s in range(k + 1)])  # (K+1, R)
            auc_ci[o] = np.nanpercentile(boots, q, axis=1).T
        else:
            acc_ci[o] = np.full((k + 1, 2), np.nan)
            auc_ci[o] = np.full((k + 1, 2), np.nan)
    return InterventionCurve(orders=orders, steps=np.arange(k + 1), accuracy=acc, auc=auc, accuracy_ci=acc_ci,
                             auc_ci=auc_ci, n=int(n), ci=float(ci), bootstrap=int(bootstrap),
                             params={"random_draws": random_draws, "seed": seed,
                                     "missing_labels": int((~known).sum())})


class _HeadOnCPU:
    """The task head of a CBM on the CPU (a copy when the model lives elsewhere), no gradients."""

    def __init__(self, cbm: ConceptBottleneck) -> None:
        from workbench._device import model_device

        if model_device(cbm).type != "cpu":
            import copy

            cbm = copy.deepcopy(cbm).cpu()
        self.cbm = cbm
        self.num_classes = cbm.num_classes

    def head_input(self, z: torch.Tensor) -> torch.Tensor:
        return self.cbm.head_input(z.float())

    def value_to_input(self, v: torch.Tensor) -> torch.Tensor:
        return self.cbm.value_to_input(v.float())

    @torch.no_grad()
    def probs(self, a: torch.Tensor) -> np.ndarray:
        was = self.cbm.training
        self.cbm.eval()
        try:
            return self.cbm.forward_concepts(a).softmax(-1).numpy()
        finally:
            self.cbm.train(was)
