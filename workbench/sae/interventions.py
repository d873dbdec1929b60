"""Interventions on latents (Mammo-SAE) and one dictionary applied to two models.

``intervene`` keeps only the top-k class latents (every other code set to zero) or switches them
off, decodes, splices the result into the layer and measures the model's AUROC, as a curve over
k with bootstrap CIs and a baseline of random latent sets of the same size. Mammo-SAE reported
single numbers from one seed; the CIs and the random baseline say whether a drop is specific to
the class latents or would follow from removing any latents.

``compare_models`` applies one SAE to a model before and after fine-tuning and reports which
latents the second model relies on more (Mammo-SAE's fine-tuning analysis).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from workbench._train_metrics import auc_score, bootstrap_ci

from ._apply import batches, bind, check_call, first_images
from .analysis import ClassLatents, class_latents
from .autoencoders import SAE
from .fidelity import spliced_probs

MODES = ("keep", "off")


@dataclass(frozen=True)
class Intervention:
    """AUROC of the model with class latents kept or switched off.

    Attributes:
        table: pandas DataFrame, one row per (mode, k): n_latents (size of the union of the
            classes' top-k), auc with a bootstrap CI (auc_low, auc_high), and the random baseline
            (random_auc: mean over random sets of the same size; random_low / random_high: 2.5th
            and 97.5th percentiles over those sets).
        auc: the model as it is; auc_spliced: with the whole SAE reconstruction spliced in.
        latents: {k: the latents of the union}.
        ranking: how class latents were ranked ("mean" as Mammo-SAE, or "contrastive").
    """

    table: Any
    auc: float
    auc_spliced: float
    latents: dict[int, list[int]] = field(default_factory=dict)
    ranking: str = "mean"

    def plot(self, ax: Any = None, **style: Any) -> Any:
        """AUROC over k per mode, with CIs and the random baseline (``workbench.viz.intervention_curves``)."""
        from workbench.viz.sae import intervention_curves

        return intervention_curves(self, ax=ax, **style)


def _check_ks(ks: Sequence[int], d_sae: int) -> list[int]:
    ks = [ks] if isinstance(ks, int) else list(ks)
    if not ks:
        raise ValueError("ks is empty; give the numbers of class latents to intervene on, e.g. (1, 5, 10, 50).")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"each k must be a positive int; got {k!r}.")
        if k > d_sae:
            raise ValueError(f"k={k} is larger than the dictionary ({d_sae} latents); use k <= {d_sae}.")
    return [int(k) for k in ks]


def intervene(sae: SAE, model: nn.Module, data: Any, *, ks: Sequence[int] = (1, 5, 10, 50),
              modes: Sequence[str] = MODES, ranking: str = "mean", rank_data: Any = None,
              classes: Sequence[int | str] | None = None, random: int = 10, bootstrap: int = 1000, seed: int = 0,
              layer: str | int | None = None, batch_size: int = 64, device: str | torch.device | None = None,
              check_model: bool = True) -> Intervention:
    """Keep only, or switch off, the top-k class latents; splice; measure AUROC (Mammo-SAE).

    Args:
        sae, model: the SAE and the model whose layer it reads.
        data: labelled data the AUROC is measured on.
        ks: numbers of top latents per class.
        modes: "keep" (only the class latents stay) and/or "off" (the class latents are zeroed).
        ranking: rank class latents by "mean" activation (Mammo-SAE) or "contrastive".
        rank_data: labelled data to rank latents on (default: ``data``; use a training split to keep
            the ranking apart from the evaluation).
        classes: the classes whose top-k latents form the set (default: all).
        random: random latent sets per (mode, k) for the baseline (0: none).
        bootstrap: resamples for the AUROC CIs (0: none).
        seed: seeds the random sets and the bootstrap.

    Returns:
        :class:`Intervention`.
    """
    from workbench._train_data import as_source, task_of

    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"modes must be a non-empty subset of {MODES}; got {list(modes)}.")
    if ranking not in ("mean", "contrastive"):
        raise ValueError(f"ranking must be 'mean' (Mammo-SAE) or 'contrastive'; got {ranking!r}.")
    from workbench._checks import check_int

    check_call(model, data, batch_size, labels=True)
    check_int(random, "random", minimum=0)
    check_int(bootstrap, "bootstrap", minimum=0)
    ks = _check_ks(ks, sae.d_sae)
    task = task_of(as_source(data))
    b = bind(sae, model, layer=layer, device=device, check_model=check_model, probe=first_images(data))
    cl: ClassLatents = class_latents(b.sae, b.model, rank_data if rank_data is not None else data, layer=b.layer,
                                     batch_size=batch_size, check_model=False)
    alive = torch.nonzero(cl.density > 0).flatten()
    sets = {}
    for k in ks:
        chosen: list[int] = []
        for c in (classes if classes is not None else range(len(cl.classes))):
            chosen += [j for j in cl.top(c, k, ranking) if j not in chosen]
        sets[k] = chosen
    rng = np.random.default_rng(seed)
    variants: dict[tuple[str, int, int], torch.Tensor] = {}
    for mode in modes:
        for k in ks:
            variants[(mode, k, -1)] = torch.tensor(sets[k])
            pool = alive.numpy() if len(alive) >= len(sets[k]) else np.arange(sae.d_sae)
            for r in range(random):
                variants[(mode, k, r)] = torch.from_numpy(rng.choice(pool, size=len(sets[k]), replace=False))

    def masked(chosen: torch.Tensor, mode: str):
        keep = torch.zeros(sae.d_sae, device=b.device)
        keep[chosen.to(b.device)] = 1.0
        if mode == "off":
            keep = 1.0 - keep
        return lambda t: b.sae.decode(b.sae.encode(t.float()) * keep)

    fns = {("model", 0, -1): lambda t: t, ("spliced", 0, -1): masked(torch.arange(sae.d_sae), "keep")}
    fns.update({key: masked(ch, key[0]) for key, ch in variants.items()})
    probs: dict[tuple[str, int, int], list[torch.Tensor]] = {key: [] for key in fns}
    labels = []
    for batch in batches(b, data, batch_size=batch_size):
        for key, fn in fns.items():
            probs[key].append(spliced_probs(b, batch["image"], fn, task))
        labels.append(batch["label"].cpu())
    y = torch.cat(labels).numpy()
    p = {key: torch.cat(v).numpy() for key, v in probs.items()}

    def auc(key: tuple[str, int, int]) -> float:
        return auc_score(p[key], y, task, fast=True)

    rows = []
    for mode in modes:
        for k in ks:
            key = (mode, k, -1)
            lo, hi = bootstrap_ci(p[key], y, task, n=bootstrap, ci=0.95, seed=seed)[0] if bootstrap else (np.nan, np.nan)
            rand = [auc((mode, k, r)) for r in range(random)]
            rows.append({"mode": mode, "k": k, "n_latents": len(sets[k]), "auc": auc(key), "auc_low": lo, "auc_high": hi,
                         "random_auc": float(np.mean(rand)) if rand else np.nan,
                         "random_low": float(np.percentile(rand, 2.5)) if rand else np.nan,
                         "random_high": float(np.percentile(rand, 97.5)) if rand else np.nan})
    import pandas as pd

    return Intervention(table=pd.DataFrame(rows), auc=auc(("model", 0, -1)), auc_spliced=auc(("spliced", 0, -1)),
                        latents=sets, ranking=ranking)


@dataclass(frozen=True)
class ModelComparison:
    """One SAE applied to two models (e.g. before and after fine-tuning).

    Attributes:
        table: pandas DataFrame per latent: mean_a / mean_b (mean activation per image),
            reliance_a / reliance_b (mean contribution to the target's log-probability), and
            delta_reliance = reliance_b - reliance_a; sorted by delta_reliance, largest first.
        fvu_a, fvu_b: the SAE's fraction of variance unexplained on each model's activations (how
            well one dictionary still describes the second model).
        names: labels of the two models.
    """

    table: Any
    fvu_a: float
    fvu_b: float
    names: tuple[str, str] = ("a", "b")


def compare_models(sae: SAE, model_a: nn.Module, model_b: nn.Module, data: Any, *, target: int | None = None,
                   names: tuple[str, str] = ("before", "after"), layer: str | int | None = None,
                   batch_size: int = 32, device: str | torch.device | None = None) -> ModelComparison:
    """Which latents does ``model_b`` rely on more than ``model_a``? One dictionary, two models.

    The SAE must have been trained on ``model_a``'s layer (checked); ``model_b`` must share its
    architecture (its weights may differ: fine-tuned, retrained, pruned in place).

    Args:
        sae: an SAE trained on ``model_a``.
        model_a, model_b: the two models (e.g. before and after fine-tuning).
        data: a labelled dataset.
        target: class whose evidence is attributed (default: class 1 of binary tasks, else 0).
        names: labels of the two models in reports.
    """
    import pandas as pd

    check_call(model_a, data, batch_size, labels=True)
    check_call(model_b, data, batch_size, labels=True)
    t = "default" if target is None else target
    out = {}
    for tag, model, check in (("a", model_a, True), ("b", model_b, False)):
        b = bind(sae, model, layer=layer, device=device, check_model=check, probe=first_images(data))
        rel, mean, err, tot, s1, n = [], [], 0.0, 0.0, None, 0
        for batch in batches(b, data, batch_size=batch_size, attribute=t):
            x, codes = batch["acts"], batch["codes"]
            rel.append(batch["reliance"].cpu())
            mean.append(codes.mean(1).cpu())
            with torch.no_grad():
                flat = x.reshape(-1, x.shape[-1]).double()
                err += float((x - b.sae.decode(codes)).double().pow(2).sum())
                tot += float(flat.pow(2).sum())
                s1 = flat.sum(0) if s1 is None else s1 + flat.sum(0)
                n += flat.shape[0]
        fvu = err / max(tot - float(s1.pow(2).sum()) / n, 1e-30)
        out[tag] = (torch.cat(rel).mean(0), torch.cat(mean).mean(0), fvu)
    df = pd.DataFrame({"latent": range(sae.d_sae), "mean_a": out["a"][1].numpy(), "mean_b": out["b"][1].numpy(),
                       "reliance_a": out["a"][0].numpy(), "reliance_b": out["b"][0].numpy()})
    df["delta_reliance"] = df.reliance_b - df.reliance_a
    df = df.sort_values("delta_reliance", ascending=False).reset_index(drop=True)
    return ModelComparison(table=df, fvu_a=out["a"][2], fvu_b=out["b"][2], names=tuple(names))

