"""Predictions of a concept model: concept probabilities, class probabilities, each concept's
contribution to each class, and interventions (set concepts to values or to their true labels)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ._model import ConceptBottleneck, check_cbm
from ._validate import check_concept_labels, check_images, check_unit_values, concept_index


@dataclass(frozen=True)
class ConceptPrediction:
    """What a concept model predicts for a batch (``predict`` / ``intervene``).

    Attributes:
        concepts: (B, K) concept probabilities (intervened concepts hold the value set).
        probs: (B, C) class probabilities (softmax).
        logits: (B, C) class logits.
        concept_logits: (B, K) concept logits predicted by the model (before interventions).
        head_input: (B, K) what the task head read (after interventions).
        contributions: (B, C, K) each concept's contribution to each class logit, relative to the
            concept being absent (exact for a linear head: ``W[c, k] * (a_k - a0_k)``; integrated
            gradients from "all absent" for an MLP head, 32 steps). ``logits = base +
            contributions.sum(-1)`` (exactly for a linear head, up to the integration error for an MLP).
        base: (B, C) the class logits with every concept absent.
        names: the K concept names; ``classes``: the C class names.
        intervened: (B, K) bool, True where a concept was set by an intervention.
    """

    concepts: torch.Tensor
    probs: torch.Tensor
    logits: torch.Tensor
    concept_logits: torch.Tensor
    head_input: torch.Tensor
    contributions: torch.Tensor
    base: torch.Tensor
    names: tuple[str, ...]
    classes: tuple[str, ...]
    intervened: torch.Tensor

    @property
    def predicted(self) -> torch.Tensor:
        """(B,) predicted class indices."""
        return self.probs.argmax(1)

    def table(self, index: int = 0) -> Any:
        """One image as a DataFrame: per concept its probability, whether it was intervened, and its
        contribution to the predicted class."""
        import pandas as pd

        c = int(self.predicted[index])
        return pd.DataFrame({"probability": self.concepts[index].numpy(), "intervened": self.intervened[index].numpy(),
                             f"contribution to {self.classes[c]}": self.contributions[index, c].numpy()},
                            index=pd.Index(self.names, name="concept"))

    def plot(self, index: int = 0, ax: Any = None, *, target: int | str | None = None, **style: Any) -> Any:
        """Bar figure of each concept's contribution to a class (``workbench.viz.concepts.contribution_bars``)."""
        from workbench.viz.concepts import contribution_bars

        return contribution_bars(self, index, ax=ax, target=target, **style)


def _class_names(cbm: ConceptBottleneck) -> tuple[str, ...]:
    return tuple(cbm.classes) if cbm.classes else tuple(str(i) for i in range(cbm.num_classes))


def _head_contributions(cbm: ConceptBottleneck, a: torch.Tensor, steps: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, K) contributions and (B, C) base logits of head inputs ``a`` vs all concepts absent."""
    a0 = cbm.value_to_input(torch.zeros_like(a))
    base = cbm.forward_concepts(a0)
    if cbm.head == "linear":
        w = cbm.task_head.weight  # (C, K)
        return w[None] * (a - a0)[:, None, :], base
    # integrated gradients along the straight line a0 -> a (completeness: sums to logits - base)
    alphas = (torch.arange(steps, dtype=a.dtype, device=a.device) + 0.5) / steps
    path = (a0[None] + alphas[:, None, None] * (a - a0)[None]).reshape(-1, a.shape[1]).requires_grad_(True)
    with torch.enable_grad():
        out = cbm.forward_concepts(path).reshape(steps, a.shape[0], -1)  # (S, B, C)
        grads = torch.stack([torch.autograd.grad(out[..., c].sum(), path, retain_graph=True)[0]
                             for c in range(out.shape[-1])], 1)  # (S*B, C, K)
    grads = grads.reshape(steps, a.shape[0], out.shape[-1], -1).mean(0)
    return grads * (a - a0)[:, None, :], base


def _result(cbm: ConceptBottleneck, z: torch.Tensor, a: torch.Tensor, values: torch.Tensor,
            intervened: torch.Tensor) -> ConceptPrediction:
    logits = cbm.forward_concepts(a)
    contrib, base = _head_contributions(cbm, a)
    probs_c = torch.where(intervened, values, torch.sigmoid(z))
    cpu = lambda t: t.detach().float().cpu()  # noqa: E731
    return ConceptPrediction(concepts=cpu(probs_c), probs=cpu(logits.softmax(-1)), logits=cpu(logits),
                             concept_logits=cpu(z), head_input=cpu(a), contributions=cpu(contrib), base=cpu(base),
                             names=cbm.concepts, classes=_class_names(cbm), intervened=intervened.cpu())


class _Eval:
    """Run a model in eval mode on a device; restores its mode (and device: a copy runs elsewhere)."""

    def __init__(self, model: torch.nn.Module, device: Any) -> None:
        from workbench._device import model_on

        self.model, self.dev = model_on(model, device)
        self.was = model.training
        self.orig = model

    def __enter__(self) -> tuple[Any, torch.device]:
        self.model.eval()
        return self.model, self.dev

    def __exit__(self, *exc: Any) -> bool:
        self.orig.train(self.was)
        return False


def predict(cbm: ConceptBottleneck, images: Any, *, device: Any = None) -> ConceptPrediction:
    """Concept and class probabilities of a concept model for a batch of images.

    Args:
        cbm: a concept model (``create`` or ``posthoc``); its mode and device are left as they were.
        images: (B, C, H, W) in [0, 1], or a batch dict (``dataset.batch(...)``).
        device: where to run (None: the model's device).

    Returns:
        A :class:`ConceptPrediction`.

    Examples:
        >>> cbm = create("resnet18", concepts=["a", "b"], num_classes=3, img_size=32, in_chans=1)
        >>> p = predict(cbm, torch.rand(2, 1, 32, 32))
        >>> tuple(p.concepts.shape), tuple(p.probs.shape), tuple(p.contributions.shape)
        ((2, 2), (2, 3), (2, 3, 2))
    """
    return intervene(cbm, images, {}, device=device)


def intervene(cbm: ConceptBottleneck, images: Any, values: Mapping[Any, Any], *, true: Any = None,
              device: Any = None) -> ConceptPrediction:
    """Set concepts to values (or to their true labels) and predict again.

    Args:
        cbm: a concept model.
        images: (B, C, H, W) in [0, 1], or a batch dict (its "concepts" serve as the true labels).
        values: ``{concept: value}``; a concept is a name, an index, or a tuple of them (a group set
            together); a value is a float in [0, 1] (0 absent, 1 present), a (B,) tensor of such
            values, or ``"true"`` (the true label, from ``true=`` or the batch). On a logit concept
            layer 0 and 1 map to the 5th/95th percentiles of training logits (Koh et al.).
        true: (B, K) true concept labels for ``"true"`` (default: the batch's "concepts").
        device: where to run (None: the model's device).

    Returns:
        A :class:`ConceptPrediction` (``intervened`` marks the concepts set).

    Raises:
        ValueError: unknown concept names (the valid ones are listed), values outside [0, 1],
            ``"true"`` without labels or for images whose label is missing (NaN).
    """
    cbm = check_cbm(cbm, "intervene")
    true_src = images.get("concepts") if isinstance(images, Mapping) else None
    x = check_images(images, model=cbm)
    if not isinstance(values, Mapping):
        raise TypeError(f"values must be a dict {{concept: value}}; got {type(values).__name__}.")
    b, k = x.shape[0], cbm.num_concepts
    if true is None:
        true = true_src
    plan: list[tuple[int, Any]] = []
    for key, v in values.items():
        for one in (key if isinstance(key, tuple) else (key,)):
            plan.append((concept_index(cbm.concepts, one), v))
    new = torch.zeros(b, k)
    mask = torch.zeros(b, k, dtype=torch.bool)
    for j, v in plan:
        if isinstance(v, str):
            if v != "true":
                raise ValueError(f"a concept value is a number in [0, 1], a (B,) tensor or 'true'; got {v!r} for "
                                 f"{cbm.concepts[j]!r}.")
            t = check_concept_labels(true, b, k, "true concept labels")[:, j]
            missing = torch.isnan(t)
            if missing.any():
                raise ValueError(f"the true label of {cbm.concepts[j]!r} is missing (NaN) for images "
                                 f"{missing.nonzero().flatten().tolist()[:10]}; pass a value for them instead of "
                                 "'true', or intervene on the other images only.")
            col = t
        else:
            col = check_unit_values(v, f"the value of concept {cbm.concepts[j]!r}")
            if col.ndim == 0:
                col = col.expand(b)
            elif col.shape != (b,):
                raise ValueError(f"the value of {cbm.concepts[j]!r} has shape {tuple(col.shape)}; pass a number or "
                                 f"one value per image ({b},).")
        new[:, j] = col
        mask[:, j] = True
    with _Eval(cbm, device) as (m, dev), torch.no_grad():
        z = m.concept_logits(x.to(dev))
        a = m.head_input(z)
        vals, msk = new.to(dev), mask.to(dev)
        a = torch.where(msk, m.value_to_input(vals).to(a.dtype), a)
        return _result(m, z, a, vals, msk)


@torch.no_grad()
def concept_logits_of(cbm: ConceptBottleneck, data: Any, *, batch_size: int = 256, adapted: bool = True,
                      device: Any = None, with_labels: bool = False) -> Any:
    """Concept logits ``(N, K)`` of a dataset or image tensor, on the CPU (``with_labels``: also the
    task labels (N,) and the true concepts (N, K) or None)."""
    from workbench._train_data import BatchSource, as_source

    src = as_source(data)
    fields = ("concepts",) if getattr(src, "concept_names", ()) else ()
    zs, ys, cs = [], [], []
    with _Eval(cbm, device) as (m, dev):
        for batch in BatchSource(src, batch_size, dev, 0, keep_on_device=False, fields=fields)(shuffle=False):
            z = m.concept_head(m.features(batch["image"]))
            zs.append((m.adapt(z) if adapted else z).float().cpu())
            ys.append(batch["label"].cpu())
            if fields:
                cs.append(batch["concepts"].float().cpu())
    z = torch.cat(zs)
    if not with_labels:
        return z
    return z, torch.cat(ys), (torch.cat(cs) if cs else None)


def true_concepts_for(cbm: ConceptBottleneck, data: Any) -> torch.Tensor:
    """(N, K) true concept labels of a dataset in the CBM's concept order (NaN where missing)."""
    names = tuple(getattr(data, "concept_names", ()) or ())
    c = getattr(data, "concepts", None)
    if c is None or not names:
        raise ValueError(f"the data {getattr(data, 'name', type(data).__name__)!r} has no concept labels; use a "
                         "dataset with concepts (the phantom, or a folder loaded with concept_columns=).")
    missing = [n for n in cbm.concepts if n not in names]
    if missing:
        raise ValueError(f"the data lacks concepts {missing} of the model; its concepts are {list(names)}.")
    out = torch.as_tensor(c, dtype=torch.float32)[:, [names.index(n) for n in cbm.concepts]]
    if torch.isnan(out).any():
        warnings.warn(f"{int(torch.isnan(out).sum())} concept labels are missing (NaN); they are left out of "
                      "concept metrics and never corrected by interventions.", stacklevel=3)
    return out
