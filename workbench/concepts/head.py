"""Fit a CBM's task head to convergence on fixed concept inputs: the second stage of Koh et al.'s
independent and sequential models.

``wb.fit`` trains the whole CBM for a few epochs with one optimiser, weight decay and a falling learning
rate; the task head of an independent CBM then ends far from the optimum of its own, convex problem
(the phantom's diagnosis benchmark, a ResNet-18: 0.952 test accuracy with every concept corrected to its
true value, where the diagnosis rule is linear in the five findings; 1.000 once the head is fitted here).
The head's inputs do not depend on the backbone in the independent model (the true concepts) and are
fixed in the sequential model (the predicted ones), so the head can be fitted afterwards on a
precomputed ``(N, K)`` matrix with full-batch L-BFGS: seconds on a CPU, no image is read for
``on="true"``.

Written here rather than with scikit-learn because the head is a ``torch`` module (linear, sparse or a
small MLP) whose fitted weights must stay in the model, and the same code fits all of them.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from workbench._checks import check_int, check_number

from ._model import ConceptBottleneck, check_cbm

ON = ("true", "predicted")


def _inputs(cbm: ConceptBottleneck, data: Any, on: str, batch_size: int, device: Any
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(head inputs (N, K), task labels) of a dataset; missing true concepts take the prediction."""
    from ._predict import concept_logits_of, true_concepts_for

    if on == "predicted":
        z, y, _ = concept_logits_of(cbm, data, batch_size=batch_size, device=device, with_labels=True)
        return cbm.head_input(z).detach(), y
    labels = getattr(data, "labels", None)
    if labels is None:
        raise ValueError(f"fit_head(on='true') needs a dataset with labels and concept labels (the phantom, a folder "
                         f"loaded with concept_columns=); got {type(data).__name__}.")
    with warnings.catch_warnings():  # missing labels are filled with the prediction below
        warnings.simplefilter("ignore", UserWarning)
        true = true_concepts_for(cbm, data)
    a = cbm.value_to_input(torch.nan_to_num(true, nan=0.0)).float()
    missing = torch.isnan(true)
    if missing.any():
        z = concept_logits_of(cbm, data, batch_size=batch_size, device=device)
        a = torch.where(missing, cbm.head_input(z).float(), a)
    return a.detach(), torch.as_tensor(labels)


def fit_head(cbm: ConceptBottleneck, data: Any, *, on: str = "true", l2: float = 1e-4, max_iter: int = 500,
             batch_size: int = 256, device: Any = None) -> ConceptBottleneck:
    """A copy of the CBM whose task head is fitted to convergence on ``data``'s concepts.

    The objective is the task loss (cross-entropy; binary cross-entropy for multilabel tasks) on
    all of ``data`` at once plus ``l2 / 2 * ||W||^2`` on the head's weights (not its biases), minimised
    by L-BFGS with a strong-Wolfe line search from the current head. The small ``l2`` keeps the
    weights finite when the classes are separable in concept space (as on the phantom).

    Args:
        cbm: a trained concept model; not changed.
        data: the training data: a dataset with task labels and (for ``on="true"``) concept labels.
        on: "true" (the independent model: the head reads the true concepts; a missing label, NaN,
            is replaced by the prediction) or "predicted" (the strict sequential model: the head
            reads the trained concept predictor's outputs).
        l2: the weight penalty (>= 0).
        max_iter: L-BFGS iterations at most.
        batch_size, device: the forward passes that compute predicted concepts (none for
            ``on="true"`` when no label is missing).

    Returns:
        A new :class:`ConceptBottleneck` on the input's device.

    Examples:
        >>> import workbench as wb
        >>> import workbench as wb
        >>> train = wb.data.load("phantom", n=300, size=32, task="diagnosis", progress=False, cache=False)
        >>> cbm = wb.concepts.create("resnet18", train, num_classes=6, mode="independent", in_chans=1, img_size=32)
        >>> cbm = wb.concepts.fit_head(cbm, train)   # after wb.fit(cbm, train, ...): no image is read
        >>> a = cbm.value_to_input(train.concepts.float())
        >>> float((cbm.forward_concepts(a).argmax(1) == train.labels).float().mean())
        1.0
    """
    from workbench._device import model_device

    cbm = check_cbm(cbm, "fit_head")
    if on not in ON:
        raise ValueError(f"on must be one of {list(ON)}; got {on!r} ('true' for an independent CBM, "
                         "'predicted' for a sequential one).")
    check_number(l2, "l2", low=0)
    check_int(max_iter, "max_iter")
    a, y = _inputs(cbm, data, on, batch_size, device)
    multilabel = y.ndim == 2
    if not multilabel and (int(y.min()) < 0 or int(y.max()) >= cbm.num_classes):
        raise ValueError(f"labels range {int(y.min())}..{int(y.max())} but the model has {cbm.num_classes} classes.")
    out = copy.deepcopy(cbm).cpu()
    head = out.task_head
    was = head.training
    head.train()
    params = [p for p in head.parameters() if p.requires_grad]
    weights = [p for n, p in head.named_parameters() if p.requires_grad and n.endswith("weight")]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=int(max_iter), tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")
    y = y.float() if multilabel else y.long()

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        logits = head(a)
        loss = (F.binary_cross_entropy_with_logits(logits, y) if multilabel else F.cross_entropy(logits, y))
        loss = loss + 0.5 * l2 * sum((w ** 2).sum() for w in weights)
        loss.backward()
        return loss

    opt.step(closure)
    head.train(was)
    return out.to(model_device(cbm))
