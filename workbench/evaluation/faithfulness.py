"""Faithfulness of attribution maps to the model: deletion and insertion curves (Petsiuk et al. 2018).

Deletion (MoRF, most relevant first): pixels are replaced by a baseline in order of decreasing map
value and the target probability is recorded after each step; a faithful map makes it fall fast
(low AUC). Insertion: start from the baseline image and restore pixels in the same order; a
faithful map makes the probability rise fast (high AUC). All perturbed images of all steps of
several images go through the model in shared forward batches on the model's device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_images, check_int, check_model
from .._device import model_on
from ._common import as_maps
from .._image import reference_like

MODES = ("deletion", "insertion")


@dataclass(frozen=True)
class Faithfulness:
    """Deletion/insertion curves.

    Attributes:
        fractions: (steps + 1,) fraction of pixels removed (deletion) or inserted (insertion).
        deletion: (B, steps + 1) target probability while deleting, or None.
        insertion: (B, steps + 1) target probability while inserting, or None.
        deletion_auc: (B,) trapezoidal area under the deletion curve (lower is better), or None.
        insertion_auc: (B,) area under the insertion curve (higher is better), or None.
        target: (B,) explained class per image.
        baseline: the baseline used.
        label: a name for plots (e.g. the attribution method).
    """

    fractions: torch.Tensor
    deletion: torch.Tensor | None
    insertion: torch.Tensor | None
    deletion_auc: torch.Tensor | None
    insertion_auc: torch.Tensor | None
    target: torch.Tensor
    baseline: str
    label: str = ""

    @property
    def mean_deletion_auc(self) -> float:
        """Mean deletion AUC over images (NaN-free; 0.0 when deletion was not computed)."""
        return float(self.deletion_auc.mean()) if self.deletion_auc is not None else 0.0

    @property
    def mean_insertion_auc(self) -> float:
        """Mean insertion AUC over images (0.0 when insertion was not computed)."""
        return float(self.insertion_auc.mean()) if self.insertion_auc is not None else 0.0

    def plot(self, ax: Any = None, **style: Any) -> Any:
        """Mean curves with a band (see ``workbench.viz.evaluation.deletion_curves``)."""
        from ..viz.evaluation import deletion_curves

        return deletion_curves(self, ax=ax, **style)


def make_baseline(images: torch.Tensor, baseline: str | float | torch.Tensor = "blur") -> torch.Tensor:
    """The image that replaces removed pixels, (B, C, H, W).

    ``"blur"``: Gaussian blur with sigma = H / 16 (removes the fine detail a finding lives in while
    keeping the overall intensity); ``"zero"``: black; ``"mean"``: each image's per-channel mean; a
    number: that constant; a tensor broadcastable to the images: itself.
    """
    return reference_like(images, baseline, blur_divisor=16)


def _probabilities(logits: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "sigmoid" or (activation == "auto" and logits.shape[-1] == 1):
        return torch.sigmoid(logits.float())
    return torch.softmax(logits.float(), dim=-1)


def deletion_insertion(model: nn.Module, images: torch.Tensor, maps: Any, target: Any = None, *, steps: int = 20,
                       baseline: str | float | torch.Tensor = "blur", mode: str | Sequence[str] = MODES,
                       batch_size: int = 256, device: Any = None, activation: str = "auto",
                       label: str = "") -> Faithfulness:
    """Deletion and insertion curves of the target probability, batched over images and steps.

    Pixels are ordered by decreasing map value (signed: positive evidence first; ties keep pixel
    order). Maps of another size are resized bilinearly to the images. At step ``s`` the first
    ``round(s / steps * H * W)`` pixels (all channels) are replaced by the baseline (deletion) or
    taken from the image on top of the baseline (insertion). AUCs are trapezoidal over the
    fraction axis [0, 1]. The model runs in eval mode without gradients; its mode is restored.

    Args:
        model: classifier returning (B, C) logits.
        images: (B, C, H, W) in [0, 1].
        maps: (B, h, w) attribution maps or an Attribution.
        target: class per image (int, (B,) tensor or sequence); default: the model's predicted class
            (an Attribution's ``target`` is used when maps is one and target is None).
        steps: number of perturbation steps (curves have steps + 1 points).
        baseline: "blur", "zero", "mean", a number or a tensor (see ``make_baseline``).
        mode: "deletion", "insertion" or both.
        batch_size: perturbed images per forward.
        device: where to run; default the model's device (another device runs a copy of the model).
        activation: "softmax", "sigmoid" or "auto" (sigmoid for a single logit, else softmax).
        label: a name stored on the result (e.g. the method) for plots.

    Returns:
        Faithfulness with (B, steps + 1) curves and (B,) AUCs.
    """
    modes = (mode,) if isinstance(mode, str) else tuple(mode)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"mode must be 'deletion', 'insertion' or both; got {mode!r}.")
    check_int(steps, "steps")
    check_int(batch_size, "batch_size")
    check_model(model)
    images = check_images(images, model, single=False)
    if target is None and hasattr(maps, "target") and not isinstance(maps, torch.Tensor):
        target = maps.target
    if not label and hasattr(maps, "method") and not isinstance(maps, torch.Tensor):
        label = str(maps.method)
    m = as_maps(maps)
    b, c, h, w = images.shape
    if m.shape[0] != b:
        raise ValueError(f"maps hold {m.shape[0]} images but images {b}; pass one map per image.")
    if m.shape[-2:] != (h, w):
        m = F.interpolate(m[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    model, dev = model_on(model, device)  # a copy when device differs: the caller's model stays put
    was_training = model.training
    steps = int(steps)
    n_pix = h * w
    counts = torch.round(torch.arange(steps + 1, dtype=torch.float64) / steps * n_pix).long()
    try:
        model.eval()
        with torch.no_grad():
            x = images.detach().to(dev).float()
            if target is None:
                target_t = torch.cat([model(x[i:i + batch_size]).argmax(-1) for i in range(0, b, batch_size)]).cpu()
            else:
                target_t = torch.as_tensor(target).long().flatten().cpu()
                if target_t.numel() == 1:
                    target_t = target_t.expand(b).clone()
                if target_t.numel() != b:
                    raise ValueError(f"target has {target_t.numel()} entries for {b} images; pass one per image or an int.")
            base = make_baseline(x, baseline)
            order = torch.argsort(-m.flatten(1), dim=1, stable=True)
            rank = torch.empty_like(order)
            rank.scatter_(1, order, torch.arange(n_pix).expand(b, n_pix).contiguous())
            rank = rank.view(b, 1, h, w).to(dev)
            cnt = counts.to(dev)
            out: dict[str, torch.Tensor] = {}
            for md in modes:
                probs = torch.empty(b, steps + 1)
                flat = torch.arange(b * (steps + 1), device=dev)
                for j in range(0, flat.numel(), batch_size):
                    ii, ss = flat[j:j + batch_size] // (steps + 1), flat[j:j + batch_size] % (steps + 1)
                    sel = rank[ii] < cnt[ss].view(-1, 1, 1, 1)  # (n, 1, H, W): pixels affected
                    if md == "deletion":
                        xi = torch.where(sel, base[ii], x[ii])
                    else:
                        xi = torch.where(sel, x[ii], base[ii])
                    p = _probabilities(model(xi), activation)
                    if p.shape[-1] > 1 and (int(target_t.max()) >= p.shape[-1] or int(target_t.min()) < 0):
                        raise ValueError(f"target values {target_t.unique().tolist()} are outside the model's "
                                         f"{p.shape[-1]} classes [0, {p.shape[-1] - 1}].")
                    col = target_t.to(dev)[ii].clamp(max=p.shape[-1] - 1)
                    vals = p.gather(1, col.view(-1, 1))[:, 0].cpu()
                    probs[ii.cpu(), ss.cpu()] = vals
                out[md] = probs
    finally:
        model.train(was_training)
    fr = counts.double() / n_pix
    frac = fr.float()

    def auc(curve: torch.Tensor | None) -> torch.Tensor | None:
        if curve is None:
            return None
        return torch.from_numpy(np.trapezoid(curve.double().numpy(), fr.numpy(), axis=1)).float()

    d, i_ = out.get("deletion"), out.get("insertion")
    return Faithfulness(frac, d, i_, auc(d), auc(i_), target_t, baseline if isinstance(baseline, str) else "custom",
                        label)


__all__ = ["Faithfulness", "deletion_insertion", "make_baseline"]
