"""Shortcut audit: the Mask-of-truth protocol and subgroup evaluation.

- ``mask_of_truth`` makes image variants from masks: ``"only"`` keeps the structure(s) and fills
  everything else, ``"without"`` fills the structure(s) and keeps the rest (optionally their
  bounding boxes instead of the exact masks). A model that still classifies well with the lungs
  removed (``without``) must use evidence outside them: a shortcut (Mask of truth, 2024).
- ``mask_of_truth_protocol`` evaluates (and, with ``train=True``, retrains) a model on the full /
  only / without variants and returns a tidy table.
- ``subgroup_metrics`` gives AUC / accuracy / sensitivity / specificity / positive rate per
  metadata group (device present, site...) with bootstrap CIs (hidden stratification).
- ``shortcut_audit`` runs both and returns a ``ShortcutAudit`` with a ``.plot()``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._checks import check_int, check_outputs
from .._device import model_device
from .._image import reference_like

VARIANTS = ("full", "only", "without")
FILLS = ("mean", "zero", "blur")


# --------------------------------------------------------------------------- image variants
def _boxes(mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool -> (B, H, W) bool filled bounding box of each image's mask (empty stays empty)."""
    rows, cols = mask.any(2), mask.any(1)  # (B, H), (B, W)
    h, w = mask.shape[-2:]
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    big = torch.tensor(10 ** 9)
    r0 = torch.where(rows, ar_h, big).min(1).values
    r1 = torch.where(rows, ar_h, -big).max(1).values
    c0 = torch.where(cols, ar_w, big).min(1).values
    c1 = torch.where(cols, ar_w, -big).max(1).values
    in_r = (ar_h[None] >= r0[:, None]) & (ar_h[None] <= r1[:, None])
    in_c = (ar_w[None] >= c0[:, None]) & (ar_w[None] <= c1[:, None])
    return in_r[:, :, None] & in_c[:, None, :]


def _region(masks: Mapping[str, torch.Tensor], structures: Sequence[str], box: bool) -> torch.Tensor:
    missing = [s for s in structures if s not in masks]
    if missing:
        raise ValueError(f"structures {missing} have no masks here; available: {sorted(masks)}.")
    out = None
    for s in structures:
        m = torch.as_tensor(masks[s]).bool().cpu()
        if box:
            m = _boxes(m)  # one box per structure (two lungs -> two boxes)
        out = m.clone() if out is None else out | m
    return out


def _fill(images: torch.Tensor, fill: str | float) -> torch.Tensor:
    if isinstance(fill, torch.Tensor):
        raise ValueError(f"fill must be one of {FILLS} or a number; got a tensor.")
    return reference_like(images, fill, blur_divisor=8, name="fill")


def mask_images(images: torch.Tensor, region: torch.Tensor, variant: str, fill: str | float = "mean") -> torch.Tensor:
    """Apply a Mask-of-truth variant to (B, C, H, W) images given a (B, H, W) bool region."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}.")
    if variant == "full":
        return images.clone()
    if region.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"region is {tuple(region.shape)} but images are {tuple(images.shape)}; masks must have "
                         "the images' size (resize both together with workbench.data.transforms.Resize).")
    f = _fill(images, fill)
    keep = region[:, None] if variant == "only" else ~region[:, None]
    return torch.where(keep.to(images.device), images, f)


def mask_of_truth(data: Any, structures: str | Sequence[str], *, variant: str = "without", box: bool = False,
                  fill: str | float = "mean") -> Any:
    """An image variant of a dataset or batch made from structure masks (Mask of truth).

    Args:
        data: an ``ArrayDataset`` (returns a new one, masks and labels kept) or a batch dict with
            ``image`` and ``masks`` (returns a new batch dict).
        structures: structure name(s); their union (or the union of their bounding boxes) is used.
        variant: ``"full"`` (unchanged), ``"only"`` (keep the region, fill the rest) or ``"without"``
            (fill the region, keep the rest). Images where the structures are not annotated have an
            empty region: ``only`` is then all fill and ``without`` unchanged.
        box: use each structure's bounding box instead of its exact mask.
        fill: ``"mean"`` (each image's mean intensity), ``"zero"``, ``"blur"`` (a strong blur,
            sigma = H / 8) or a number.

    Returns:
        The same kind of object with float images in [0, 1]; the input is not modified.
    """
    structures = (structures,) if isinstance(structures, str) else tuple(structures)
    if isinstance(data, Mapping):
        if "image" not in data or "masks" not in data:
            raise ValueError("a batch dict needs 'image' and 'masks' keys (from dataset.batch(...)).")
        region = _region(data["masks"], structures, box)
        out = dict(data)
        out["image"] = mask_images(data["image"].float(), region, variant, fill)
        return out
    if not hasattr(data, "masks") or not hasattr(data, "images"):
        raise TypeError(f"data must be an ArrayDataset or a batch dict; got {type(data).__name__}. "
                        "Wrap other datasets with dataset.batch() first.")
    from ..data._base import ArrayDataset

    images = data.images.float() / 255.0 if data.images.dtype == torch.uint8 else data.images.float()
    region = _region(data.masks, structures, box)
    new = mask_images(images, region, variant, fill)
    return ArrayDataset(new, data.labels, classes=data.classes, task=data.task, masks=dict(data.masks),
                        mask_present=dict(data.mask_present), concepts=data.concepts,
                        concept_names=data.concept_names, meta=data.meta, ids=data.ids,
                        transform=data.transform, name=f"{data.name}[{variant}:{'+'.join(structures)}]")


# --------------------------------------------------------------------------- predictions and metrics
def _predict(model: nn.Module, data: Any, batch_size: int = 256, device: Any = None) -> torch.Tensor:
    """(N, C) probabilities via workbench.train.predict when available, else a plain batched loop."""
    try:
        from ..train import predict  # type: ignore[attr-defined]

        return torch.as_tensor(predict(model, data, batch_size=batch_size, device=device)).float().cpu()
    except ImportError:
        pass
    dev = model_device(model) if device is None else torch.device(device)
    was = model.training
    out = []
    try:
        model.eval()
        with torch.no_grad():
            n = len(data)
            for i in range(0, n, batch_size):
                x = data.batch(range(i, min(n, i + batch_size)))["image"].to(dev)
                logits = model(x).float()
                out.append((torch.sigmoid(logits) if logits.shape[-1] == 1 else torch.softmax(logits, -1)).cpu())
    finally:
        model.train(was)
    return torch.cat(out)


def _auc_rows(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """ROC AUC per row (Mann-Whitney with average ranks); NaN where a row has one class only."""
    from scipy.stats import rankdata

    r = rankdata(scores, axis=1)
    n1 = labels.sum(1)
    n0 = labels.shape[1] - n1
    u = (r * labels).sum(1) - n1 * (n1 + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n1 > 0) & (n0 > 0), u / (n1 * n0), np.nan)


def _metrics(scores: np.ndarray, pred: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics per row of (R, n) arrays (binary: scores = P(class 1), pred and labels in {0, 1})."""
    pos, neg = labels == 1, labels == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"auc": _auc_rows(scores, labels.astype(float)),
                "accuracy": (pred == labels).mean(1),
                "sensitivity": np.where(pos.sum(1) > 0, ((pred == 1) & pos).sum(1) / np.maximum(pos.sum(1), 1), np.nan),
                "specificity": np.where(neg.sum(1) > 0, ((pred == 0) & neg).sum(1) / np.maximum(neg.sum(1), 1), np.nan),
                "positive_rate": (pred == 1).mean(1)}


METRICS = ("auc", "accuracy", "sensitivity", "specificity", "positive_rate")


def _summarise(probs: torch.Tensor, labels: torch.Tensor, bootstrap: int, ci: float, rng: np.random.Generator) -> dict:
    """Point estimates and percentile bootstrap CIs; for multiclass only accuracy (AUC macro one-vs-rest)."""
    p = probs.numpy()
    y = labels.numpy().astype(int)
    n = len(y)
    out: dict[str, Any] = {"n": n, "n_pos": int((y >= 1).sum())}
    if p.shape[1] <= 2:
        s = p[:, -1]
        pred = p.argmax(1) if p.shape[1] == 2 else (s > 0.5).astype(int)
        pt = _metrics(s[None], pred[None], y[None])
        bs = None
        if bootstrap and n > 1:
            idx = rng.integers(0, n, size=(int(bootstrap), n))
            bs = _metrics(s[idx], pred[idx], y[idx])
    else:
        pred = p.argmax(1)
        pt = {"accuracy": (pred == y).mean()[None]}
        try:
            from sklearn.metrics import roc_auc_score

            pt["auc"] = np.array([roc_auc_score(y, p, multi_class="ovr")])
        except ValueError:
            pt["auc"] = np.array([np.nan])
        bs = None
        if bootstrap and n > 1:
            idx = rng.integers(0, n, size=(int(bootstrap), n))
            bs = {"accuracy": (pred[idx] == y[idx]).mean(1)}
    a = (1 - ci) / 2
    for k in METRICS:
        if k not in pt:
            continue
        v = float(pt[k][0])
        out[k] = v
        lo = hi = v
        if bs is not None and k in bs and not np.isnan(v):
            vals = bs[k][~np.isnan(bs[k])]
            if len(vals):
                lo, hi = (float(x) for x in np.quantile(vals, [a, 1 - a]))
        out[f"{k}_lo"], out[f"{k}_hi"] = lo, hi
    return out


def _group_keys(meta: Sequence[dict], by: Any) -> list:
    if callable(by):
        return [by(m) for m in meta]
    keys = (by,) if isinstance(by, str) else tuple(by)
    missing = [k for k in keys if not any(k in m for m in meta)]
    if missing:
        have = sorted({k for m in meta for k in m})
        raise ValueError(f"no sample has metadata {missing}; available keys: {have}.")
    if len(keys) == 1:
        return [m.get(keys[0]) for m in meta]
    return [tuple(m.get(k) for k in keys) for m in meta]


def subgroup_metrics(model: nn.Module, dataset: Any, by: str | Sequence[str] | Callable[[dict], Any] = "device", *,
                     positives_only: bool = False, bootstrap: int = 500, ci: float = 0.95, seed: int = 0,
                     probs: torch.Tensor | None = None, batch_size: int = 256, device: Any = None) -> pd.DataFrame:
    """Metrics per metadata group with percentile bootstrap CIs (hidden stratification).

    Args:
        model: the classifier.
        dataset: a dataset with ``meta`` (one dict per sample) and ``labels``/``batch``.
        by: a meta key ("device", "site"), a list of keys (groups are tuples) or a callable
            ``meta -> group``. An ``"all"`` row covers every sample.
        positives_only: restrict to label-1 samples (accuracy is then the sensitivity).
        bootstrap: resamples per group (0: no CIs).
        ci: confidence level.
        seed: bootstrap seed.
        probs: precomputed (N, C) probabilities (skips the forward passes).
        batch_size, device: for prediction.

    Returns:
        DataFrame with columns ``by``, ``group``, ``n``, ``n_pos`` and for each of auc, accuracy,
        sensitivity, specificity, positive_rate (predicted positive) the value with ``_lo``/``_hi``.
        AUC (and sensitivity / specificity) is NaN in a group holding a single class: undefined.
    """
    check_int(bootstrap, "bootstrap", minimum=0)
    if probs is None:
        probs = _predict(model, dataset, batch_size=batch_size, device=device)
    probs = torch.as_tensor(probs).float().cpu()
    labels = torch.as_tensor(dataset.labels).cpu()
    if probs.ndim != 2 or probs.shape[0] != len(labels):
        raise ValueError(f"probs has shape {tuple(probs.shape)} but the dataset has {len(labels)} samples; pass "
                         "(N, C) probabilities of this dataset (workbench.train.predict(model, dataset)).")
    classes = getattr(dataset, "classes", ())
    if classes:
        check_outputs(probs.shape[1], num_classes=len(classes), task=getattr(dataset, "task", "binary"))
    if labels.ndim != 1:
        raise ValueError("subgroup_metrics supports binary and multiclass tasks (labels (N,)); got multilabel labels.")
    meta = list(dataset.meta)
    groups = _group_keys(meta, by)
    keep = np.ones(len(labels), bool) if not positives_only else (labels.numpy() >= 1)
    rng = np.random.default_rng(seed)
    name = by if isinstance(by, str) else (getattr(by, "__name__", "custom") if callable(by) else "+".join(by))
    rows = []
    idx_all = np.flatnonzero(keep)
    if len(idx_all):
        rows.append({"by": name, "group": "all", **_summarise(probs[idx_all], labels[idx_all], bootstrap, ci, rng)})
    for g in sorted(set(groups), key=repr):
        idx = np.flatnonzero(keep & np.array([x == g for x in groups]))
        if len(idx) == 0:
            continue
        rows.append({"by": name, "group": g, **_summarise(probs[idx], labels[idx], bootstrap, ci, rng)})
    return pd.DataFrame(rows)


def mask_of_truth_protocol(model: nn.Module, dataset: Any, structures: str | Sequence[str] = ("left_lung", "right_lung"),
                           *, variants: Sequence[str] = VARIANTS, box: bool | Sequence[bool] = (False, True),
                           fill: str | float = "mean", train: bool = False, train_data: Any = None,
                           fit_kw: Mapping[str, Any] | None = None, batch_size: int = 256,
                           device: Any = None) -> pd.DataFrame:
    """Evaluate (and optionally retrain) a model on full / only-structure / without-structure images.

    Args:
        model: the trained classifier (never modified).
        dataset: the evaluation dataset (with masks of ``structures``).
        structures: the structure(s) whose masks define the region (e.g. both lungs).
        variants: subset of ("full", "only", "without").
        box: False (exact masks), True (bounding boxes) or both.
        fill: as in ``mask_of_truth``.
        train: also train a freshly initialised copy of ``model`` on each variant of ``train_data``
            (``workbench.train.fit`` with ``fit_kw``, e.g. ``{"epochs": 3, "batch_size": 64,
            "lr": 1e-3}``) and evaluate it on the same variant (the protocol's train-and-test arm).
        train_data: training dataset, required with ``train=True``.
        fit_kw: keyword arguments for ``fit``.
        batch_size, device: for prediction.

    Returns:
        Tidy DataFrame: ``train`` ("original" or "retrained"), ``variant``, ``box``, ``structure``,
        ``auc``, ``accuracy``, ``n`` (the ``full`` variant appears once, with ``box`` False).
    """
    structures = (structures,) if isinstance(structures, str) else tuple(structures)
    boxes = (box,) if isinstance(box, bool) else tuple(box)
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ValueError(f"variants must be among {VARIANTS}; got {bad}.")
    if train and train_data is None:
        raise ValueError("train=True needs train_data (the dataset to retrain on).")
    rng = np.random.default_rng(0)
    rows = []
    combos = [(v, b) for v in variants for b in ((False,) if v == "full" else boxes)]
    for v, b in combos:
        ds = mask_of_truth(dataset, structures, variant=v, box=b, fill=fill)
        arms = [("original", model)]
        if train:
            from ..train import fit

            fresh = copy.deepcopy(model)
            for mod in fresh.modules():
                if callable(getattr(mod, "reset_parameters", None)):
                    mod.reset_parameters()
            fit(fresh, mask_of_truth(train_data, structures, variant=v, box=b, fill=fill), **dict(fit_kw or {}))
            arms.append(("retrained", fresh))
        for arm, m in arms:
            probs = _predict(m, ds, batch_size=batch_size, device=device)
            s = _summarise(probs, torch.as_tensor(ds.labels), 0, 0.95, rng)
            rows.append({"train": arm, "variant": v, "box": b, "structure": "+".join(structures),
                         "auc": s.get("auc", float("nan")), "accuracy": s["accuracy"], "n": s["n"]})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the audit
@dataclass(frozen=True)
class ShortcutAudit:
    """Result of ``shortcut_audit``.

    Attributes:
        mask_of_truth: the ``mask_of_truth_protocol`` table.
        subgroups: ``subgroup_metrics`` rows for every grouping (column ``by``).
        positives: the same on label-1 samples only (sensitivity per group).
        gaps: per grouping, the largest minus smallest accuracy on positives across its groups
            (columns ``by``, ``gap``, ``high``, ``low``): a shortcut shows as a large gap.
        budget: cohort budget (``cohort_budget``) of an attribution method, or None.
    """

    mask_of_truth: pd.DataFrame
    subgroups: pd.DataFrame
    positives: pd.DataFrame
    gaps: pd.DataFrame
    budget: pd.DataFrame | None = None
    params: dict = field(default_factory=dict)

    def plot(self, **style: Any) -> Any:
        """Three-panel audit figure (see ``workbench.viz.evaluation.audit_figure``)."""
        from ..viz.evaluation import audit_figure

        return audit_figure(self, **style)


def shortcut_audit(model: nn.Module, dataset: Any, *, structures: Sequence[str] = ("left_lung", "right_lung"),
                   groups: Sequence[str] = ("device", "site"), box: bool | Sequence[bool] = (False, True),
                   fill: str | float = "mean", bootstrap: int = 500, seed: int = 0, method: str | None = None,
                   budget_structures: Sequence[str] | None = None, n_budget: int = 64, target: Any = None,
                   batch_size: int = 256,
                   device: Any = None, **attr_kw: Any) -> ShortcutAudit:
    """Mask-of-truth table plus subgroup metrics (and optionally an attribution budget).

    Args:
        model: the classifier (never modified).
        dataset: an unbiased evaluation dataset with masks and meta.
        structures: structures for the Mask-of-truth variants.
        groups: meta keys to stratify by (those missing from the meta are skipped).
        box, fill: as in ``mask_of_truth_protocol``.
        bootstrap, seed: for the subgroup CIs.
        method: an attribution method; when given, the cohort budget over ``budget_structures``
            (default: every mask of the dataset) of the first ``n_budget`` images is added.
        budget_structures: structures for the budget.
        n_budget: images used for the budget.
        target: class explained for the budget (None: each image's predicted class; 1: "abnormal").
        batch_size, device: for prediction.
        **attr_kw: passed to ``workbench.attribution.attribute``.

    Returns:
        ShortcutAudit.
    """
    check_int(bootstrap, "bootstrap", minimum=0)
    check_int(n_budget, "n_budget")
    names = {k for k in getattr(dataset, "structures", ())}
    missing = [s for s in (*structures, *(budget_structures or ())) if names and s not in names]
    if missing:
        raise ValueError(f"structures {missing} have no masks in this dataset; it has {sorted(names)}.")
    probs = _predict(model, dataset, batch_size=batch_size, device=device)
    classes = getattr(dataset, "classes", ())
    if classes:
        check_outputs(probs.shape[1], num_classes=len(classes), task=getattr(dataset, "task", "binary"))
    mot = mask_of_truth_protocol(model, dataset, structures, box=box, fill=fill, batch_size=batch_size, device=device)
    have = {k for m in dataset.meta for k in m}
    keys = [g for g in groups if g in have]
    sub = [subgroup_metrics(model, dataset, g, probs=probs, bootstrap=bootstrap, seed=seed) for g in keys]
    pos = [subgroup_metrics(model, dataset, g, probs=probs, bootstrap=bootstrap, seed=seed, positives_only=True)
           for g in keys]
    gaps = []
    for t in pos:
        t = t[t["group"] != "all"]
        if len(t) >= 2:
            hi, lo = t.loc[t["accuracy"].idxmax()], t.loc[t["accuracy"].idxmin()]
            gaps.append({"by": hi["by"], "gap": float(hi["accuracy"] - lo["accuracy"]),
                         "high": hi["group"], "low": lo["group"]})
    budget = None
    if method is not None:
        from ..attribution import attribute
        from .localisation import cohort_budget

        batch = dataset.batch(range(min(n_budget, len(dataset))))
        names = tuple(budget_structures) if budget_structures is not None else tuple(batch["masks"])
        dev = model_device(model) if device is None else device
        attr = attribute(model, batch["image"].to(dev), target=target, method=method, **attr_kw)
        budget = cohort_budget(attr, {"masks": {k: batch["masks"][k] for k in names},
                                      "mask_present": {k: batch["mask_present"][k] for k in names}}, seed=seed)
    empty = pd.DataFrame()
    return ShortcutAudit(mot, pd.concat(sub, ignore_index=True) if sub else empty,
                         pd.concat(pos, ignore_index=True) if pos else empty,
                         pd.DataFrame(gaps, columns=["by", "gap", "high", "low"]), budget,
                         {"structures": list(structures), "groups": keys, "method": method, "target": target})


__all__ = ["mask_of_truth", "mask_images", "mask_of_truth_protocol", "subgroup_metrics", "shortcut_audit",
           "ShortcutAudit"]
