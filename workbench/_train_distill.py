"""Knowledge distillation for ``fit(..., teacher=..., distill_weight=..., temperature=...)``
(Hinton et al. 2015): the loss mixes the task loss with the divergence of the model's softened
outputs from a frozen teacher's::

    loss = (1 - w) * task_loss + w * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))     (one label)
    loss = (1 - w) * task_loss + w * T^2 * BCE(sigmoid(z_s / T), sigmoid(z_t / T))      (multilabel)

The ``T^2`` keeps the gradient's scale independent of the temperature. The use here is recovery after
pruning (``workbench.pruning``): the dense model teaches its pruned copy, so that fine-tuning pulls
the small model back towards the function it was cut from, rather than towards whatever else fits
the labels. Torch-Pruning's examples recover the same way; it is a few lines on top of ``fit``'s
objective, so it is written here rather than imported. Under ``torchrun`` each rank runs the teacher
on its share of the batch; the result equals one process's (tests/test_jobs.py).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from workbench import _checks as ck


class Distill:
    """The distillation term for one ``fit`` call (built by :func:`make_distill`)."""

    def __init__(self, teacher: torch.nn.Module, weight: float, temperature: float, task: str,
                 device_type: str, use_amp: bool) -> None:
        self.teacher, self.weight, self.t, self.task = teacher, weight, temperature, task
        self.device_type, self.use_amp = device_type, use_amp

    def divergence(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """``T^2`` x the divergence of the softened outputs, averaged over the batch."""
        s, t = student.float() / self.t, teacher.float() / self.t
        if self.task == "multilabel":
            d = F.binary_cross_entropy_with_logits(s, torch.sigmoid(t), reduction="mean")
            d = d - F.binary_cross_entropy_with_logits(t, torch.sigmoid(t), reduction="mean")  # 0 when equal
        else:
            d = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
        return self.t ** 2 * d

    def wrap(self, objective: Callable[[dict[str, Any]], tuple[torch.Tensor, torch.Tensor]]
             ) -> Callable[[dict[str, Any]], tuple[torch.Tensor, torch.Tensor]]:
        """``objective`` (``batch -> (loss, logits)``) mixed with the distillation term."""
        def distilled(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
            loss, logits = objective(batch)
            with torch.no_grad(), torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.use_amp):
                target = self.teacher(batch["image"])
            return (1 - self.weight) * loss + self.weight * self.divergence(logits, target), logits
        return distilled


def make_distill(model: torch.nn.Module, teacher: Any, weight: float, temperature: float, task: str,
                 device: torch.device, use_amp: bool) -> Distill:
    """Check the settings and the teacher and move it to ``device`` (the caller checks its outputs
    against the model's and puts it in eval mode for training)."""
    if not isinstance(teacher, torch.nn.Module):
        raise TypeError(f"teacher must be a trained model (nn.Module) with the same outputs as the model; got "
                        f"{type(teacher).__name__}.")
    if teacher is model:
        raise ValueError("teacher is the model being trained; pass a frozen copy (e.g. the dense model a pruned "
                         "one was cut from).")
    ck.check_number(weight, "distill_weight", low=0, high=1)
    ck.check_number(temperature, "temperature", low=0, low_open=True)
    teacher.to(device)
    return Distill(teacher, float(weight), float(temperature), task, device.type, use_amp)
