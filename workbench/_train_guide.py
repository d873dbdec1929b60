"""Mask-guided training for ``fit(..., guide_masks=..., guide_weight=...)``: "right for the right
reasons" (Ross, Hughes & Doshi-Velez, IJCAI 2017) in the form GradMask (Simpson et al., MIDL 2019)
applies to lesions.

The loss gains an input-gradient penalty for the samples whose mask is annotated and not empty::

    loss = task_loss + guide_weight * (1/B) * sum_guided  sum_out g^2 / sum_all g^2,
    g = d log_odds_y / d x,   log_odds_y = z_y - logsumexp_{k != y} z_k   (binary: z_1 - z_0)

i.e. the share of the squared input gradient that falls *outside* the annotated structure(s) (the
union of ``guide_masks``), averaged over the batch (unguided samples add 0: BUSI's normal images,
phantom images without the finding, train on the task loss alone). The penalty is differentiated
(double backward): a step costs about 2-3x a plain one.

Two choices differ from Ross et al.'s paper, both measured on a toy (16 px images, a faint square
lesion with its mask and a bright corner shortcut on every positive; small CNN):

* the gradient of the true class's log-odds (the decision function) instead of Ross's
  ``sum_k log p_k``: the latter is zero when the prediction is uniform, so a large weight trains
  guided samples towards 50/50 (the loss stayed at 0.69, AUC at chance, with weight 1e5; weight
  1e3 changed nothing). The true class's logit alone is not enough either: a model then moves the
  shortcut into the other classes' logits (a linear model on the toy kept all its weight on it);
  multilabel tasks use the positive labels' logits (each a log-odds);
* the *share* of squared gradient outside (bounded in [0, 1]) instead of its sum: the sum's scale
  depends on the model, the image size and training time (1e-6 at initialisation on the toy), so no
  default weight could serve; with the share, ``guide_weight=1`` puts a map that is all outside at
  the cost of one nat of cross-entropy.

Known limit (measured on that toy): the penalty constrains the model's gradient *at the guided
images*. A CNN can still use a shortcut through units that are off on guided images (e.g. "no
corner mark -> normal"), so guidance does not guarantee that a shortcut correlated with the label
is dropped; report the shortcut audit, not only the maps. Masks move with the image through
``augment`` (fit hands it the batch with its masks). Untested under ``torchrun``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import torch

GUIDE_WEIGHT = 1.0  # one nat of cross-entropy for a map entirely outside the mask (module docstring)

class Guide:
    """The penalty for one ``fit`` call (built by :func:`make_guide`)."""

    def __init__(self, structures: tuple[str, ...], weight: float, task: str) -> None:
        self.structures, self.weight, self.task = structures, weight, task

    def penalty(self, logits: torch.Tensor, x: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """The share of squared input gradient outside the structures, averaged over the batch
        (0 for unguided samples); a scalar with a graph. ``x`` is the input ``logits`` came from."""
        masks, present = batch["masks"], batch["mask_present"]
        inside = torch.zeros(x.shape[0], *x.shape[-2:], dtype=torch.bool, device=x.device)
        guided = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for s in self.structures:
            m = masks[s].to(x.device).bool()
            ok = present[s].to(x.device).bool() & m.flatten(1).any(1)
            inside |= m & ok.view(-1, 1, 1)
            guided |= ok
        if not guided.any():
            return logits.sum() * 0.0
        (g,) = torch.autograd.grad(log_odds(logits, batch["label"], self.task).sum(), x, create_graph=True)
        g2 = (g.float() ** 2).sum(1)  # (B, H, W), channels summed
        share = (g2 * ~inside).flatten(1).sum(1) / (g2.flatten(1).sum(1) + 1e-12)
        return (share * guided).sum() / x.shape[0]

    def wrap(self, objective: Callable[[dict[str, Any]], tuple[torch.Tensor, torch.Tensor]]
             ) -> Callable[[dict[str, Any]], tuple[torch.Tensor, torch.Tensor]]:
        """``objective`` (``batch -> (loss, logits)``) plus the weighted penalty."""
        def guided(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
            x = batch["image"].detach().requires_grad_(True)
            batch = {**batch, "image": x}
            loss, logits = objective(batch)
            return loss + self.weight * self.penalty(logits, x, batch), logits
        return guided


def log_odds(logits: torch.Tensor, labels: torch.Tensor, task: str) -> torch.Tensor:
    """``(B,)`` the true class's log-odds: ``z_y - logsumexp_{k != y} z_k`` (binary: ``z_1 - z_0`` for
    positives); multilabel: the sum of the positive labels' logits (each a log-odds)."""
    z = logits.float()
    if task == "multilabel":
        return (z * labels.float()).sum(1)
    y = labels.long().view(-1, 1)
    others = z.scatter(1, y, float("-inf"))
    return z.gather(1, y)[:, 0] - torch.logsumexp(others, 1)


def _has(data: Any, name: str) -> tuple[bool, int]:
    """(the dataset knows the structure, number of samples with a non-empty annotated mask)."""
    masks = getattr(data, "masks", None)
    if isinstance(masks, dict):
        if name not in masks:
            return False, 0
        present = getattr(data, "mask_present", {}).get(name)
        nonempty = masks[name].flatten(1).any(1)
        if present is not None:
            nonempty &= present.bool()
        return True, int(nonempty.sum())
    structures = tuple(getattr(data, "structures", ()) or ())
    if name not in structures:
        return False, 0
    count = 0
    for i in range(len(data)):  # lazy datasets: read until one is found (cheap enough for a check)
        s = data[i]
        m = (s.get("masks") or {}).get(name)
        if m is not None and bool(torch.as_tensor(m).any()) and (s.get("mask_present") or {}).get(name, True):
            count += 1
            break
    return True, count


def make_guide(data: Any, guide_masks: str | Sequence[str], guide_weight: Any, task: str) -> Guide:
    """Validate ``guide_masks`` / ``guide_weight`` against the training data and build the penalty.

    Raises:
        ValueError: a structure the dataset does not have (the ones it has are listed), no sample with
            a (non-empty) mask of the structure(s), a negative or non-finite weight.
        TypeError: ``guide_masks`` that is not a structure name or a sequence of them.
    """
    names = (guide_masks,) if isinstance(guide_masks, str) else guide_masks
    if not isinstance(names, Sequence) or not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"guide_masks must be a structure name or a sequence of them (e.g. 'lesion'); "
                        f"got {guide_masks!r}.")
    from workbench._checks import check_number

    check_number(guide_weight, "guide_weight", low=0)
    have = tuple(getattr(data, "structures", ()) or ()) or tuple(getattr(data, "masks", {}) or ())
    counts = {}
    for n in names:
        known, count = _has(data, n)
        if not known:
            raise ValueError(f"guide_masks names {n!r}, but the training data has no such structure; it has "
                             f"{list(have) or 'no masks at all'}. Pass one of those, or load a dataset with masks "
                             "(a folder dataset's masks/<structure>/ files).")
        counts[n] = count
    if sum(counts.values()) == 0:
        raise ValueError(f"guide_masks={list(names)}: no training sample has a non-empty mask of "
                         f"{'it' if len(names) == 1 else 'them'}, so there is nothing to guide by. Check the "
                         "masks (empty or not annotated everywhere), or train without guide_masks.")
    return Guide(tuple(names), float(guide_weight), task)
