"""What pruning cost: ``report(original, pruned, data)`` -> ``PruneReport``.

Size (parameters, MACs at one image), latency at batch 1 and 32 (the two models timed in turn,
``repeats`` rounds, medians), AUC with bootstrap CIs and per class (which classes lose most, as in
PruneCXR), the images whose prediction flips (pruning-identified exemplars), and whether the
explanations still fall on the same anatomy: each structure's mean share of positive relevance
before and after, the pointing game on finding masks, and the Spearman rank correlation of the
two models' maps per image.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["PruneReport", "report", "latency", "size", "audit_gap"]


def size(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """``{"params": ..., "macs": ...}`` of ``model`` on one ``example`` image (Torch-Pruning's counter)."""
    import torch_pruning as tp

    from workbench._checks import check_images, check_model

    check_model(model)
    example = check_images(example, model, name="example")
    was = model.training
    model.eval()
    try:
        macs, params = tp.utils.count_ops_and_params(model, example[:1])
    finally:
        model.train(was)
    return {"params": int(params), "macs": int(macs)}


def latency(models: Mapping[str, nn.Module], images: torch.Tensor, *, repeats: int = 5, warmup: int = 1,
            min_round_s: float = 0.02) -> dict[str, float]:
    """Median milliseconds of one forward of ``images`` per model; the models run in turn in each of
    ``repeats`` rounds (interleaved, so a slow stretch of a shared machine hits all of them).

    In each round a model runs ``number`` forwards back to back and its time is their mean, with
    ``number`` chosen after the warm-up so that the slowest model's share of a round lasts at least
    ``min_round_s`` (as ``timeit``'s autorange): a single few-millisecond call is at the mercy of the
    scheduler (on a busy 2-core CPU a batch-1 ViT forward timed once per round gave a pruned/dense
    ratio of 1.48; timed over 50 calls, 0.86)."""
    from workbench._checks import check_images, check_int, check_number

    check_int(repeats, "repeats")
    check_int(warmup, "warmup", minimum=0)
    check_number(min_round_s, "min_round_s", low=0)
    for m in models.values():
        check_images(images, m)
    times: dict[str, list[float]] = {k: [] for k in models}
    modes = {k: m.training for k, m in models.items()}

    def run(m: nn.Module, number: int) -> float:
        if images.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(number):
            m(images)
        if images.is_cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / number

    try:
        with torch.inference_mode():
            single = 0.0
            for m in models.values():
                m.eval()
                for _ in range(warmup):
                    m(images)
                single = max(single, run(m, 1))
            number = max(1, math.ceil(min_round_s / max(single, 1e-9)))
            for _ in range(repeats):
                for k, m in models.items():
                    times[k].append(run(m, number) * 1e3)
    finally:
        for k, m in models.items():
            m.train(modes[k])
    return {k: float(np.median(v)) for k, v in times.items()}


@dataclass(frozen=True)
class PruneReport:
    """Result of :func:`report` (``to_dict()`` for JSON, ``plot()`` for a figure).

    Attributes:
        size: ``{"original"|"pruned": {"params", "macs"}}``.
        latency: ``{batch: {"original": ms, "pruned": ms, "ratio": pruned / original}}`` (medians).
        original, pruned: ``workbench.train.Evaluation`` (AUC with CIs, per-class AUC).
        per_class: DataFrame ``class, auc_original, auc_pruned, delta`` (most damaged first).
        flips: DataFrame of the images whose prediction changed: ``index, label, pred_original,
            pred_pruned, p_original, p_pruned`` (probability of the original prediction).
        budget: DataFrame ``structure, original, pruned, delta``: mean share of positive relevance.
        pointing: ``{structure: {"original": ..., "pruned": ...}}`` pointing game on finding masks.
        rank_correlation: mean Spearman rho between the two models' maps (per image).
        params: the settings (explanation method, images explained, repeats).
    """

    size: dict[str, dict[str, int]]
    latency: dict[int, dict[str, float]]
    original: Any
    pruned: Any
    per_class: Any
    flips: Any
    budget: Any = None
    pointing: dict[str, dict[str, float]] = field(default_factory=dict)
    rank_correlation: float | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Headline numbers: ratios of params, MACs and latency, AUC before/after, flips, anatomy."""
        s0, s1 = self.size["original"], self.size["pruned"]
        out = {"params_ratio": s1["params"] / s0["params"], "macs_ratio": s1["macs"] / s0["macs"],
               **{f"latency_ratio_b{b}": v["ratio"] for b, v in self.latency.items()},
               "auc_original": self.original.auc, "auc_pruned": self.pruned.auc,
               "auc_delta": self.pruned.auc - self.original.auc, "flips": int(len(self.flips)),
               "rank_correlation": self.rank_correlation}
        if self.budget is not None and len(self.budget):
            out["max_budget_shift"] = float(self.budget["delta"].abs().max())
        for k, v in self.pointing.items():
            out[f"pointing_{k}_delta"] = v["pruned"] - v["original"]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        def frame(df: Any) -> Any:
            return None if df is None else df.replace({np.nan: None}).to_dict(orient="records")

        return {"summary": self.summary(), "size": self.size, "latency": {str(k): v for k, v in self.latency.items()},
                "original": self.original.to_dict(), "pruned": self.pruned.to_dict(),
                "per_class": frame(self.per_class), "flips": frame(self.flips), "budget": frame(self.budget),
                "pointing": self.pointing, "rank_correlation": self.rank_correlation, "params": self.params}

    def plot(self, **style: Any) -> Any:
        """Size and speed, per-class AUC and the relevance budget before/after
        (``workbench.viz.pruning.report_figure``)."""
        from workbench.viz.pruning import report_figure

        return report_figure(self, **style)


def _default_pointing(data: Any) -> list[str]:
    structures = tuple(getattr(data, "structures", ()) or ())
    return [c for c in getattr(data, "concept_names", ()) or () if c in structures]


def _explain(models: Sequence[nn.Module], images: torch.Tensor, target: torch.Tensor, method: str,
             smooth: float, kw: dict[str, Any]) -> list[Any]:
    from workbench.attribution import attribute

    out = []
    for m in models:
        a = attribute(m, images, target=target, method=method, **kw)
        out.append(a.smoothed(smooth) if smooth else a)
    return out


def report(original: nn.Module, pruned: nn.Module, data: Any, *, masks: bool = True,
           method: str = "integrated_gradients", n_explain: int = 32, pointing: Sequence[str] | None = None,
           smooth: float = 1.0, batches: Sequence[int] = (1, 32), repeats: int = 5, bootstrap: int = 200,
           device: str | torch.device | None = None, attribution_kw: dict[str, Any] | None = None) -> PruneReport:
    """Compare a pruned model with its original on ``data``.

    Args:
        original: the dense model; pruned: the smaller one (``workbench.pruning.prune``). Neither is
            modified (modes restored).
        data: a labelled dataset (``workbench.data.load``) or an ``(images, labels)`` pair.
        masks: score the explanations against the data's structure masks (needs a dataset with masks).
        method: attribution method used to explain both models (``workbench.attribution.METHODS``).
        n_explain: images explained (the first ones of ``data``; anatomy metrics).
        pointing: structures for the pointing game (default: the data's findings, i.e. structures
            that are also concepts, e.g. the phantom's nodule, effusion ...).
        smooth: Gaussian sigma in pixels applied to the maps before the anatomy metrics (0: none).
        batches: batch sizes at which latency is measured.
        repeats: interleaved timing rounds (medians reported).
        bootstrap: bootstrap resamples for the AUC CIs.
        device: where to run (None: each model's device).
        attribution_kw: extra keywords for the attribution method (e.g. ``{"n_steps": 16}``).

    Returns:
        PruneReport.
    """
    import pandas as pd

    from workbench._checks import check_data, check_int, check_model
    from workbench._device import model_device
    from workbench._train_data import as_source, task_of
    from workbench.evaluation.localisation import pointing_game, structure_budget
    from workbench.evaluation.sanity import spearman
    from workbench.train import evaluate, predict

    check_model(original, "original")
    check_model(pruned, "pruned")
    data = check_data(data, original)
    check_int(bootstrap, "bootstrap", minimum=0)
    n_explain = check_int(n_explain, "n_explain", minimum=0)
    repeats = check_int(repeats, "repeats")
    src = as_source(data)
    task = task_of(src)
    dev = None if device is None else device
    ev0 = evaluate(original, src, device=dev, bootstrap=bootstrap)
    ev1 = evaluate(pruned, src, device=dev, bootstrap=bootstrap)
    classes = list(ev0.classes) or [str(i) for i in range(len(ev0.per_class_auc))]
    per_class = pd.DataFrame({"class": classes, "auc_original": ev0.per_class_auc, "auc_pruned": ev1.per_class_auc})
    per_class["delta"] = per_class["auc_pruned"] - per_class["auc_original"]
    per_class = per_class.sort_values("delta", kind="stable").reset_index(drop=True)
    p0, p1 = predict(original, src, device=dev), predict(pruned, src, device=dev)
    labels = getattr(src, "labels", None)
    if task == "multilabel":
        pred0, pred1 = (p0 > 0.5), (p1 > 0.5)
        flip = (pred0 != pred1).any(1)
        pr0, pr1 = p0.max(1).values, p1.max(1).values
        pred0, pred1 = pred0.long().sum(1), pred1.long().sum(1)
    else:
        pred0, pred1 = p0.argmax(1), p1.argmax(1)
        flip = pred0 != pred1
        pr0, pr1 = p0.gather(1, pred0[:, None])[:, 0], p1.gather(1, pred0[:, None])[:, 0]
    idx = flip.nonzero()[:, 0]
    flips = pd.DataFrame({"index": idx.numpy(),
                          "label": [str(labels[i].tolist()) if labels is not None else "" for i in idx.tolist()],
                          "pred_original": pred0[idx].numpy(), "pred_pruned": pred1[idx].numpy(),
                          "p_original": pr0[idx].numpy(), "p_pruned": pr1[idx].numpy()})
    here = model_device(original)
    x1 = next(iter(_images(src, 1, here)))
    sizes = {"original": size(original, x1), "pruned": size(pruned, x1)}
    lat = {}
    for b in batches:
        xb = next(iter(_images(src, int(b), here)))
        if len(xb) < b:
            xb = xb.repeat(-(-b // len(xb)), 1, 1, 1)[:b]
        ms = latency({"original": original, "pruned": pruned}, xb, repeats=repeats)
        lat[int(b)] = {**ms, "ratio": ms["pruned"] / ms["original"]}
    budget, point, rho = None, {}, None
    n = min(n_explain, len(src))
    if n and hasattr(src, "batch"):
        b = src.batch(range(n))
        imgs = b["image"].float()
        imgs = imgs / 255.0 if b["image"].dtype == torch.uint8 else imgs
        target = pred0[:n] if task != "multilabel" else p0[:n].argmax(1)
        a0, a1 = _explain([original, pruned], imgs, target, method, smooth, dict(attribution_kw or {}))
        rho = float(np.mean(spearman(a0.maps.flatten(1), a1.maps.flatten(1))))
        if masks and b.get("masks"):
            rows = []
            for name, att in (("original", a0), ("pruned", a1)):
                df = structure_budget(att, b)
                df = df[df["present"]].groupby("structure")["share"].mean()
                rows.append(df.rename(name))
            budget = pd.concat(rows, axis=1).fillna(0.0).reset_index()
            budget["delta"] = budget["pruned"] - budget["original"]
            for s in (pointing if pointing is not None else _default_pointing(src)):
                if s in b["masks"] and b["mask_present"][s].any() and b["masks"][s].flatten(1).any(1).any():
                    mk = {"masks": {s: b["masks"][s]}, "mask_present": {s: b["mask_present"][s]}}
                    point[s] = {"original": float(pointing_game(a0, mk)), "pruned": float(pointing_game(a1, mk))}
    return PruneReport(sizes, lat, ev0, ev1, per_class, flips, budget, point, rho,
                       {"method": method, "n_explain": n, "smooth": smooth, "repeats": repeats, "bootstrap": bootstrap})


def _images(src: Any, batch_size: int, device: torch.device) -> Any:
    from workbench._train_data import BatchSource

    yield from (b["image"] for b in BatchSource(src, batch_size, device, 0, keep_on_device=False)(shuffle=False))


def audit_gap(model: nn.Module, data: Any, by: str = "device", *, device: str | torch.device | None = None) -> float:
    """The shortcut audit's gap: accuracy on positive images with ``by`` present minus without it
    (``workbench.evaluation.subgroup_metrics`` on label-1 samples). A model that learned a planted
    device shortcut scores well above 0 on an unbiased test set; pruning the units most relevant on
    the device should bring it towards 0."""
    from workbench.evaluation.shortcut import subgroup_metrics

    t = subgroup_metrics(model, data, by=by, positives_only=True, bootstrap=0, device=device)
    t = t[t["group"] != "all"]
    acc = {bool(g) if isinstance(g, (bool, np.bool_)) else g: a for g, a in zip(t["group"], t["accuracy"])}
    if True not in acc or False not in acc:
        raise ValueError(f"audit_gap needs positive images with and without {by!r}; groups found: {list(acc)}.")
    return float(acc[True] - acc[False])
