"""How faithful an SAE is to its layer: reconstruction, sparsity, and the model with it spliced in."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from workbench._train_metrics import auc_score, bootstrap_ci

from ._apply import Bound, batches, bind, check_call, first_images
from .autoencoders import SAE
from .layers import splice


@dataclass(frozen=True)
class Fidelity:
    """Reconstruction and downstream fidelity of an SAE on a dataset.

    Attributes:
        fvu: fraction of variance unexplained, ``sum |x - x_hat|^2 / sum |x - mean|^2`` over all tokens.
        l0: mean number of active latents per token.
        dead_fraction: share of latents that never fire on this data.
        dense_fraction: share of latents firing on more than ``dense_threshold`` of the tokens.
        auc: the model's AUC as it is; ``auc_spliced`` with the layer's kept tokens replaced by the
            SAE reconstruction; ``auc_zero`` / ``auc_mean`` with them replaced by zeros / by their
            mean over the data (per token position): the floor an SAE must clear.
        agreement: share of images whose top-1 prediction is unchanged by the splice.
        auc_ci: 95 % bootstrap intervals per AUC key (with ``bootstrap > 0``), else None.
        frequency: (d_sae,) firing frequency of each latent over tokens.
        n_images, n_tokens: data seen.
    """

    fvu: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    auc: float
    auc_spliced: float
    auc_zero: float
    auc_mean: float
    agreement: float
    n_images: int
    n_tokens: int
    frequency: torch.Tensor
    dense_threshold: float = 0.1
    auc_ci: dict[str, tuple[float, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("frequency")
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}

    def __str__(self) -> str:
        return (f"FVU {self.fvu:.3f}, L0 {self.l0:.1f}, dead {self.dead_fraction:.1%}, dense {self.dense_fraction:.1%}; "
                f"AUC {self.auc:.3f} -> spliced {self.auc_spliced:.3f} (zero-ablation {self.auc_zero:.3f}, "
                f"mean-ablation {self.auc_mean:.3f}), agreement {self.agreement:.1%} (n={self.n_images})")


def _probs(logits: torch.Tensor, task: str) -> torch.Tensor:
    logits = logits.float()
    return torch.sigmoid(logits) if task == "multilabel" else logits.softmax(-1)


def spliced_probs(b: Bound, images: torch.Tensor, fn: Any, task: str) -> torch.Tensor:
    """Class probabilities with the bound layer's kept tokens replaced by ``fn(tokens)``."""
    was = b.model.training
    b.model.eval()
    try:
        with torch.no_grad(), splice(b.model, b.layer, b.layout, fn):
            return _probs(b.model(images), task).cpu()
    finally:
        b.model.train(was)


def reconstruct(sae: SAE):
    """A splice function: tokens -> the SAE's reconstruction of them."""
    return lambda t: sae(t.float()).x_hat


def fidelity(sae: SAE, model: nn.Module, data: Any, *, layer: str | int | None = None, batch_size: int = 64,
             device: str | torch.device | None = None, check_model: bool = True, dense_threshold: float = 0.1,
             bootstrap: int = 0, seed: int = 0) -> Fidelity:
    """Measure an SAE's fidelity on labelled data.

    Args:
        sae: a trained SAE.
        model: the model whose layer it reads.
        data: a labelled dataset or an ``(images, labels)`` pair.
        layer: the layer, when the SAE does not record it.
        batch_size: images per forward.
        device: where to run (None: the model's device).
        check_model: refuse a model other than the one the SAE's store came from.
        dense_threshold: a latent firing on more than this share of tokens counts as dense.
        bootstrap: resamples for 95 % CIs of the AUCs (0: none).
        seed: bootstrap seed.

    Returns:
        :class:`Fidelity`.
    """
    from workbench._train_data import as_source, task_of

    check_call(model, data, batch_size, labels=True)
    from workbench._checks import check_int

    check_int(bootstrap, "bootstrap", minimum=0)
    task = task_of(as_source(data))
    b = bind(sae, model, layer=layer, device=device, check_model=check_model, probe=first_images(data))
    d, n_tok, n_img = sae.d, 0, 0
    s1 = torch.zeros(d, dtype=torch.float64, device=b.device)
    s2 = torch.zeros((), dtype=torch.float64, device=b.device)
    err = torch.zeros((), dtype=torch.float64, device=b.device)
    fired = torch.zeros(sae.d_sae, dtype=torch.float64, device=b.device)
    pos_sum = torch.zeros(b.layout.per_image, d, dtype=torch.float64, device=b.device)
    l0_sum = 0.0
    with torch.no_grad():
        for batch in batches(b, data, batch_size=batch_size):
            x, codes = batch["acts"], batch["codes"]
            x_hat = b.sae.decode(codes)
            flat = x.reshape(-1, d).double()
            s1 += flat.sum(0)
            s2 += flat.pow(2).sum()
            err += (x - x_hat).double().pow(2).sum()
            active = codes > 0
            fired += active.reshape(-1, sae.d_sae).double().sum(0)
            l0_sum += float(active.sum())
            pos_sum += x.double().sum(0)
            n_tok += flat.shape[0]
            n_img += x.shape[0]
    var = s2 - s1.pow(2).sum() / n_tok
    fvu = float(err / var.clamp_min(1e-30))
    freq = (fired / n_tok).cpu().float()
    pos_mean = (pos_sum / n_img).float()
    fns = {"auc": None, "auc_spliced": reconstruct(b.sae), "auc_zero": torch.zeros_like,
           "auc_mean": lambda t: pos_mean.to(t.dtype).expand_as(t)}
    probs: dict[str, list[torch.Tensor]] = {k: [] for k in fns}
    labels = []
    for batch in batches(b, data, batch_size=batch_size):
        for key, fn in fns.items():
            probs[key].append(spliced_probs(b, batch["image"], fn or (lambda t: t), task))
        labels.append(batch["label"].cpu())
    y = torch.cat(labels).numpy()
    p = {k: torch.cat(v).numpy() for k, v in probs.items()}
    aucs = {k: auc_score(v, y, task, fast=True) for k, v in p.items()}
    agree = float((p["auc"].argmax(1) == p["auc_spliced"].argmax(1)).mean()) if task != "multilabel" else \
        float(((p["auc"] >= 0.5) == (p["auc_spliced"] >= 0.5)).mean())
    cis = None
    if bootstrap:
        cis = {k: bootstrap_ci(v, y, task, n=int(bootstrap), ci=0.95, seed=seed)[0] for k, v in p.items()}
    return Fidelity(fvu=fvu, l0=l0_sum / n_tok, dead_fraction=float((freq == 0).float().mean()),
                    dense_fraction=float((freq > dense_threshold).float().mean()), agreement=agree,
                    n_images=n_img, n_tokens=n_tok, frequency=freq, dense_threshold=dense_threshold,
                    auc_ci=cis, **aucs)
