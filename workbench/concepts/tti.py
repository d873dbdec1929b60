"""Training-free test-time improvement of a concept model at a new site (after He et al., MICCAI 2025),
and the fine-tuned-head baseline it is compared with.

He et al. ("Training-free Test-time Improvement for Explainable Medical Image Classification") adapt a
CBM to a new site from a few labelled images per class, without training: they *mask* concepts that
are mis-activated and confounding at the new site and *amplify* concepts that are under-activated but
discriminative. Their code could not be obtained; this is our reading, stated so it can be checked.

Inputs: the CBM, a support set of a few images per class from the new site with image labels only
(no concept labels), and the source statistics: the per-class mean concept logits of the source
(training) data, ``mu_src[c, k]``, taken from ``source=`` data when given, else from the running
statistics ``wb.fit`` kept; plus the source's overall mean logit per concept.

1. **Where each concept hurts.** For support image ``i`` of class ``y_i``, with head input ``a_i``, let
   ``r_i`` be its strongest wrong class and ``s_ik = d(logit_y - logit_r) / d a_k`` the head's
   sensitivity of the margin to concept ``k`` (``W[y, k] - W[r, k]`` for a linear head). The concept's
   shift from the source's typical value for that class is ``d_ik = a_ik - a(mu_src[y_i, k])``, and
   ``h_ik = d_ik * s_ik`` its first-order effect on the margin (negative = it hurts).
2. **Selection rules.** Mis-activated and confounding: more active than at the source (``d > 0``) while
   pushing toward a wrong class (``s < 0``): score ``m_k = mean_i h_ik [d_ik > 0, s_ik < 0]``.
   Under-activated and discriminative: weaker than at the source (``d < 0``) for images whose class
   relies on it (``s > 0``): ``u_k = mean_i h_ik [d_ik < 0, s_ik > 0]``. Mask ``k`` if ``m_k < -tau_m``;
   otherwise amplify it if ``u_k < -tau_a``.
3. **Actions** (a per-concept affine map of the concept logits, ``z' = g z + b``; no weight of the
   network changes). Mask: ``g = 0``, ``b`` = the source mean logit (the concept becomes a constant:
   its head column no longer varies). Amplify: rescale toward the source level: ``(g, b)`` is the
   least-squares map (weighted by images per class) of the support's per-class mean logits onto the
   source's, with ``g`` kept in ``[1, max_gain]``, applied with strength ``lambda``:
   ``g' = 1 + lambda (g - 1)``, ``b' = lambda b``.
4. **Thresholds by leave-one-out on the support set.** ``tau_m`` and ``tau_a`` range over "none" and the
   midpoints that admit the 1..K most harmful concepts, ``lambda`` over ``strengths``; for each candidate,
   each support image is predicted by the adaptation planned on the other support images; the
   candidate with the best leave-one-out accuracy wins (ties: fewer changed concepts, then a smaller
   ``lambda``; doing nothing is always a candidate).
5. **Guard against harming the source site.** With ``source=`` data, a candidate whose adaptation
   (planned on the whole support set) lowers the source accuracy by more than ``max_source_drop`` is
   discarded before the choice. Without source data the guard cannot run (a warning says so).

``finetune_head`` is the gradient baseline: the task head retrained on the support set's predicted
concepts (the backbone and concept head fixed), on a copy.
"""
from __future__ import annotations

import copy
import itertools
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ._model import ConceptBottleneck, check_cbm
from ._validate import check_int, check_number


@dataclass(frozen=True)
class TTIReport:
    """What ``test_time_improve`` changed and why.

    Attributes:
        table: DataFrame per concept: action ("mask", "amplify" or "keep"), reason, misactivation
            (``m_k``), underactivation (``u_k``), gain, bias, source_mean and support_mean (probabilities).
        chosen: {"tau_mask", "tau_amplify", "strength"} of the chosen candidate.
        candidates: DataFrame of every candidate: its settings, changed concepts, leave-one-out support
            accuracy, source accuracy and whether the guard kept it.
        support_accuracy: {"before": accuracy on the support set, "loo_after": leave-one-out accuracy
            of the chosen adaptation}.
        source_accuracy: {"before", "after"} on ``source`` (None without source data).
        masked, amplified: concept names.
    """

    table: Any
    chosen: dict[str, float]
    candidates: Any
    support_accuracy: dict[str, float]
    source_accuracy: dict[str, float] | None
    masked: tuple[str, ...]
    amplified: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)


def _support(cbm: ConceptBottleneck, support: Any, what: str, batch_size: int,
             device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(unadapted concept logits (N, K), labels (N,)) of a dataset, batch dict or (images, labels)."""
    from ._predict import _Eval, concept_logits_of
    from ._validate import check_images

    if isinstance(support, Mapping) or (isinstance(support, (tuple, list)) and len(support) == 2
                                        and torch.is_tensor(support[0])):
        x = check_images(support["image"] if isinstance(support, Mapping) else support[0], f"{what} images", model=cbm)
        y = torch.as_tensor(support["label"] if isinstance(support, Mapping) else support[1])
        if y.shape[:1] != x.shape[:1]:
            raise ValueError(f"{what} has {len(x)} images but {y.shape[0] if y.ndim else 0} labels.")
        with _Eval(cbm, device) as (m, dev), torch.no_grad():
            z = torch.cat([m.concept_head(m.features(x[s:s + batch_size].to(dev))).float().cpu()
                           for s in range(0, len(x), batch_size)])
        return z, y.long().cpu()
    z, y, _ = concept_logits_of(cbm, support, batch_size=batch_size, adapted=False, device=device, with_labels=True)
    return z, y.long()


def _check_support(y: torch.Tensor, num_classes: int, classes: Sequence[str]) -> None:
    if y.ndim != 1:
        raise ValueError("test-time improvement needs single-label support images (binary or multiclass).")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"support labels range {int(y.min())}..{int(y.max())} but the model has {num_classes} classes.")
    counts = torch.bincount(y, minlength=num_classes)
    missing = [classes[c] for c in range(num_classes) if counts[c] == 0]
    if missing:
        raise ValueError(f"the support set has no image of class(es) {missing} (counts per class: "
                         f"{dict(zip(classes, counts.tolist()))}); give a few labelled images of every class "
                         "from the new site (4 per class is typical).")


class _Head:
    """The CBM's head on the CPU: margins, sensitivities and predictions for head inputs."""

    def __init__(self, cbm: ConceptBottleneck) -> None:
        from .interventions import _HeadOnCPU

        self.h = _HeadOnCPU(cbm)
        self.cbm = self.h.cbm

    def a(self, z: torch.Tensor) -> torch.Tensor:
        return self.h.head_input(z)

    def predict(self, z: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor) -> np.ndarray:
        return self.h.probs(self.a(z * gain + bias)).argmax(1)

    def sensitivity(self, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(n, K) d(logit_y - logit_r)/da with r the strongest wrong class."""
        a = a.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = self.cbm.forward_concepts(a)
            wrong = logits.detach().clone()
            wrong[torch.arange(len(y)), y] = -torch.inf
            r = wrong.argmax(1)
            margin = logits.gather(1, y[:, None]) - logits.gather(1, r[:, None])
            (g,) = torch.autograd.grad(margin.sum(), a)
        return g


def _scores(head: _Head, z: torch.Tensor, y: torch.Tensor, mu_cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(m_k, u_k, d) of support logits ``z``: mis-/under-activation scores (<= 0) and shifts."""
    a = head.a(z)
    s = head.sensitivity(a, y)
    ref = head.a(mu_cls[y])
    d = a - ref
    known = torch.isfinite(ref)
    d = torch.where(known, d, torch.zeros_like(d))
    h = d * s
    m = (h * ((d > 0) & (s < 0))).mean(0)
    u = (h * ((d < 0) & (s > 0))).mean(0)
    return m, u, d


def _affine(z: torch.Tensor, y: torch.Tensor, mu_cls: torch.Tensor, max_gain: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per concept, the weighted least-squares (g, b) mapping support class means onto source class means."""
    k = z.shape[1]
    classes = [c for c in torch.unique(y).tolist() if torch.isfinite(mu_cls[c]).all()]
    g, b = torch.ones(k), torch.zeros(k)
    if not classes:
        return g, b
    xs = torch.stack([z[y == c].mean(0) for c in classes])  # (C', K) support means
    ts = torch.stack([mu_cls[c] for c in classes])          # (C', K) source means
    w = torch.tensor([float((y == c).sum()) for c in classes])
    w = w / w.sum()
    mx, mt = (w[:, None] * xs).sum(0), (w[:, None] * ts).sum(0)
    vx = (w[:, None] * (xs - mx) ** 2).sum(0)
    cov = (w[:, None] * (xs - mx) * (ts - mt)).sum(0)
    g = torch.where(vx > 1e-6, cov / vx.clamp(min=1e-6), torch.ones(k)).clamp(1.0, max_gain)
    b = mt - g * mx
    return g, b


def _stats(head: _Head, z: torch.Tensor, y: torch.Tensor, mu_cls: torch.Tensor,
           max_gain: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a plan needs from support logits: (m_k, u_k, affine gain, affine bias)."""
    m, u, _ = _scores(head, z, y, mu_cls)
    g, b = _affine(z, y, mu_cls, max_gain)
    return m, u, g, b


def _plan(stats: tuple[torch.Tensor, ...], mu_all: torch.Tensor, tau_m: float, tau_a: float,
          lam: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gain, bias, masked, amplified) of the thresholds and strength given the support statistics."""
    m, u, g, b = stats
    mask = m < -tau_m
    amp = (u < -tau_a) & ~mask
    gain = torch.where(amp, 1 + lam * (g - 1), torch.ones_like(g))
    bias = torch.where(amp, lam * b, torch.zeros_like(b))
    gain = torch.where(mask, torch.zeros_like(gain), gain)
    bias = torch.where(mask, mu_all, bias)
    return gain, bias, mask, amp


def _thresholds(scores: torch.Tensor) -> list[float]:
    """Candidate thresholds on the harm ``-score``: inf (select none), then midpoints between successive
    harms (sorted, largest first) and half the smallest, so each admits the 1..K most harmful concepts
    with a margin for the leave-one-out folds, whose scores move a little."""
    harm = sorted({float(-v) for v in scores.tolist() if v < 0}, reverse=True)
    cuts = [(a + b) / 2 for a, b in zip(harm, harm[1:])] + ([harm[-1] / 2] if harm else [])
    return [float("inf")] + cuts


def test_time_improve(cbm: ConceptBottleneck, support: Any, *, source: Any = None, strengths: Sequence[float] = (0.5, 1.0),
                      max_gain: float = 4.0, max_source_drop: float = 0.01, batch_size: int = 256,
                      device: Any = None) -> tuple[ConceptBottleneck, TTIReport]:
    """Adapt a CBM to a new site from a few labelled images per class, without any gradient step.

    The method (our reading of He et al., MICCAI 2025) is in the module docstring: concepts that are
    mis-activated and confounding at the new site are masked, concepts that are under-activated and
    discriminative are amplified toward their source level; thresholds are chosen by leave-one-out on
    the support set, with a guard that the source accuracy does not drop.

    Args:
        cbm: a trained concept model; not changed (an adapted copy is returned). Any earlier adaptation
            is replaced.
        support: labelled images of the new site, a few per class (image labels only): a dataset, a
            batch dict or an ``(images, labels)`` pair. Every class must be present.
        source: source-site data with labels (e.g. the validation split) for the source statistics and
            the guard; None uses the statistics ``wb.fit`` kept and skips the guard (with a warning).
        strengths: the amplification strengths ``lambda`` tried.
        max_gain: the largest amplification gain.
        max_source_drop: the largest source accuracy drop a candidate may cause (0.01 = 1 point).
        batch_size, device: forward passes.

    Returns:
        ``(adapted, report)``: a copy of the CBM with ``adapt_gain``/``adapt_bias`` set, and a
        :class:`TTIReport`.

    Raises:
        ValueError: a class missing from the support set, labels that do not fit the model.
    """
    import pandas as pd

    cbm = check_cbm(cbm, "test_time_improve")
    classes = cbm.classes or tuple(str(i) for i in range(cbm.num_classes))
    check_number(max_source_drop, "max_source_drop (an accuracy drop; 0.01 = 1 point)", low=0, high=1)
    check_number(max_gain, "max_gain", low=1)
    check_int(batch_size, "batch_size")
    if not strengths or any(not 0 < float(s) <= 1 for s in strengths):
        raise ValueError(f"strengths must be values in (0, 1]; got {list(strengths)!r}.")
    z, y = _support(cbm, support, "support", batch_size, device)
    _check_support(y, cbm.num_classes, classes)
    head = _Head(cbm)
    if source is not None:
        zs, ys = _support(cbm, source, "source", batch_size, device)
        if ys.ndim != 1:
            raise ValueError("source data must be single-label (binary or multiclass).")
        mu_cls = torch.stack([zs[ys == c].mean(0) if (ys == c).any() else torch.full((z.shape[1],), float("nan"))
                              for c in range(cbm.num_classes)])
        mu_all = zs.mean(0)
        ones, zeros = torch.ones(z.shape[1]), torch.zeros(z.shape[1])
        src_before = float((head.predict(zs, ones, zeros) == ys.numpy()).mean())
    else:
        if int(cbm.stats_batches) == 0:
            raise ValueError("the model has no source statistics (it was not trained with wb.fit); pass source= "
                             "data of the training site (e.g. its validation split).")
        warnings.warn("test_time_improve without source= data: source statistics come from training, and the guard "
                      "against harming the source site cannot run. Pass source=<validation data> to enable it.",
                      stacklevel=2)
        mu_cls, mu_all = cbm.source_class_means().float().cpu(), cbm.logit_mean.float().cpu()
        src_before = None
    m_full, u_full, d_full = _scores(head, z, y, mu_cls)
    full = _stats(head, z, y, mu_cls, max_gain)
    yn = y.numpy()
    n = len(y)
    folds = [_stats(head, z[torch.arange(n) != j], y[torch.arange(n) != j], mu_cls, max_gain) for j in range(n)]
    rows, best, best_key = [], None, None
    for tau_m, tau_a, lam in itertools.product(_thresholds(m_full), _thresholds(u_full), strengths):
        gain, bias, mask, amp = _plan(full, mu_all, tau_m, tau_a, lam)
        changed = int(mask.sum() + amp.sum())
        if changed == 0 and (tau_m != float("inf") or tau_a != float("inf") or lam != min(strengths)):
            continue  # the same as doing nothing
        if not amp.any() and lam != min(strengths):
            continue  # the strength only matters for amplified concepts
        hits = 0
        for j in range(n):
            g, b, _, _ = _plan(folds[j], mu_all, tau_m, tau_a, lam)
            hits += int(head.predict(z[j:j + 1], g, b)[0] == yn[j])
        loo = hits / n
        src_after = float((head.predict(zs, gain, bias) == ys.numpy()).mean()) if source is not None else None
        ok = src_after is None or src_before - src_after <= max_source_drop + 1e-12
        rows.append({"tau_mask": tau_m, "tau_amplify": tau_a, "strength": lam,
                     "masked": ", ".join(c for c, f in zip(cbm.concepts, mask.tolist()) if f),
                     "amplified": ", ".join(c for c, f in zip(cbm.concepts, amp.tolist()) if f),
                     "changed": changed, "loo_accuracy": loo, "source_accuracy": src_after, "guard_ok": ok})
        key = (loo, -changed, -lam)
        if ok and (best_key is None or key > best_key):
            best_key, best = key, (tau_m, tau_a, lam, gain, bias, mask, amp, loo, src_after)
    tau_m, tau_a, lam, gain, bias, mask, amp, loo, src_after = best
    adapted = copy.deepcopy(cbm)
    with torch.no_grad():
        adapted.adapt_gain.copy_(gain.to(adapted.adapt_gain.device))
        adapted.adapt_bias.copy_(bias.to(adapted.adapt_bias.device))
    ones, zeros = torch.ones(z.shape[1]), torch.zeros(z.shape[1])
    before = float((head.predict(z, ones, zeros) == yn).mean())
    sig = lambda t: torch.sigmoid(t).numpy()  # noqa: E731
    table = pd.DataFrame({
        "action": ["mask" if f else "amplify" if a else "keep" for f, a in zip(mask.tolist(), amp.tolist())],
        "reason": [_reason(k, mask, amp, m_full, u_full, d_full, gain, bias) for k in range(z.shape[1])],
        "misactivation": m_full.numpy(), "underactivation": u_full.numpy(), "gain": gain.numpy(),
        "bias": bias.numpy(), "source_mean": sig(mu_all), "support_mean": sig(z).mean(0)},
        index=pd.Index(cbm.concepts, name="concept"))
    report = TTIReport(table=table, chosen={"tau_mask": tau_m, "tau_amplify": tau_a, "strength": lam},
                       candidates=pd.DataFrame(rows), support_accuracy={"before": before, "loo_after": loo},
                       source_accuracy=None if src_before is None else {"before": src_before, "after": src_after},
                       masked=tuple(c for c, f in zip(cbm.concepts, mask.tolist()) if f),
                       amplified=tuple(c for c, f in zip(cbm.concepts, amp.tolist()) if f),
                       params={"strengths": list(strengths), "max_gain": max_gain, "max_source_drop": max_source_drop,
                               "n_support": n, "guard": source is not None})
    return adapted, report


def _reason(k: int, mask: torch.Tensor, amp: torch.Tensor, m: torch.Tensor, u: torch.Tensor, d: torch.Tensor,
            gain: torch.Tensor, bias: torch.Tensor) -> str:
    up = float(d[:, k].clamp(min=0).mean())
    down = float(d[:, k].clamp(max=0).mean())
    if bool(mask[k]):
        return (f"mis-activated and confounding: above its source level on support images (mean excess {up:+.3f}) "
                f"where it pushes them toward a wrong class (margin effect {float(m[k]):.3f}); set to its source mean")
    if bool(amp[k]):
        return (f"under-activated and discriminative: below its source level (mean shortfall {down:+.3f}) on images "
                f"whose class relies on it (margin effect {float(u[k]):.3f}); logits x{float(gain[k]):.2f} "
                f"{float(bias[k]):+.2f}")
    return f"kept (margin effects: over-activation {float(m[k]):.3f}, under-activation {float(u[k]):.3f})"


def support_set(data: Any, per_class: int = 4, *, seed: int = 0) -> Any:
    """A support set: ``per_class`` images of every class drawn at random from ``data`` (a subset).

    Raises:
        ValueError: a class has fewer than ``per_class`` images (the counts are listed).
    """
    check_int(per_class, "per_class")
    labels = torch.as_tensor(getattr(data, "labels"))
    if labels.ndim != 1:
        raise ValueError("a support set needs single-label data (binary or multiclass).")
    classes = list(getattr(data, "classes", ()) or range(int(labels.max()) + 1))
    g = torch.Generator().manual_seed(int(seed))
    picks, short = [], {}
    for c in range(len(classes)):
        idx = (labels == c).nonzero().flatten()
        if len(idx) < per_class:
            short[str(classes[c])] = len(idx)
            continue
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    if short:
        raise ValueError(f"class(es) {short} have fewer than per_class={per_class} images in the data (name: count); "
                         "draw from more images of the new site, or lower per_class.")
    return data.subset(torch.cat(picks))


def finetune_head(cbm: ConceptBottleneck, support: Any, *, steps: int = 200, lr: float = 1e-2,
                  weight_decay: float = 1e-3, batch_size: int = 256, device: Any = None,
                  seed: int = 0) -> ConceptBottleneck:
    """The gradient baseline: a copy of the CBM whose task head is retrained on the support set
    (full-batch AdamW on the predicted concepts; the backbone and concept head are fixed).

    Args:
        cbm: a trained concept model; not changed.
        support: labelled images (dataset, batch dict or (images, labels) pair).
        steps, lr, weight_decay: the optimisation.
        batch_size, device: the forward passes that compute the concepts.
        seed: initial RNG state (the head starts from the CBM's weights; the seed only matters for
            heads with dropout).

    Returns:
        A new :class:`ConceptBottleneck`.
    """
    import torch.nn.functional as F

    cbm = check_cbm(cbm, "finetune_head")
    check_int(steps, "steps")
    check_number(lr, "lr", low=0, low_open=True)
    z, y = _support(cbm, support, "support", batch_size, device)
    if y.ndim != 1:
        raise ValueError("finetune_head needs single-label support images.")
    out = copy.deepcopy(cbm).cpu()
    a = out.head_input(out.adapt(z)).detach()
    params = list(out.task_head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    was = out.training
    out.train()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in range(int(steps)):
            loss = F.cross_entropy(out.forward_concepts(a), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    out.train(was)
    from workbench._device import model_device

    return out.to(model_device(cbm))
