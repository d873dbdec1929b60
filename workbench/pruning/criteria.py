"""Pruning criteria: how much each unit matters, in one registry (``CRITERIA``).

Two kinds of criteria:

- **image criteria** (``per_image=True``) give a relevance value at each unit's activation for each
  calibration image: ``fn(model, images, target, layers, **kw) -> [tensor per layer]``, where
  ``layers`` is a list of ``(module, use_input)`` and each tensor has the shape of that module's
  input or output activation (``(B, N, D)`` tokens or ``(B, C, h, w)``). ``scores`` sums each
  unit's values over positions (optionally only inside / outside structure masks), so these
  criteria work per class, per calibration half and per anatomical region;
- **model criteria** (``per_image=False``) score the unit sets directly:
  ``fn(model, units, batches, **kw) -> {key: (units,) tensor}``; ``batches`` is None for the
  data-free ones (weight magnitude, random).

=======================  ===========  ================================================================
criterion                kind         value per unit
=======================  ===========  ================================================================
gradient_x_activation    image        activation x gradient of the target logit (captum
                                      ``LayerGradientXActivation``; first-order Taylor, Molchanov et al.)
integrated_gradients     image        captum ``LayerIntegratedGradients`` at the unit's layer, black-image
                                      baseline, ``n_steps=16``; one IG run per layer (captum cannot
                                      attribute to dependent layers at once)
lrp                      image        LRP relevance at the unit (zennit composites with canonizers, the code of
                                      the attribution method ``"lrp"``; CNNs it supports)
dl_backtrace             image        DL-Backtrace relevance (optional ``dl-backtrace`` package, see below)
mean_activation          image        |activation| (no gradient)
weight_magnitude         model        L2 norm of each unit's incoming weights (fc1 row, the head's
                                      q/k/v rows, the conv filter; mean over a group's convolutions)
random                   model        uniform random (seeded)
tp_magnitude             model        Torch-Pruning's ``GroupMagnitudeImportance`` (group L2) - a peer
tp_taylor                model        Torch-Pruning's ``GroupTaylorImportance`` on the calibration loss's
                                      gradient summed over every batch - a peer
=======================  ===========  ================================================================

Register a criterion with ``@register_criterion("name", per_image=True)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from .._registry import Registry
from ._units import UnitSet, dependency_graph, quiet_tp

__all__ = ["CRITERIA", "Criterion", "register_criterion"]

Layers = Sequence[tuple[nn.Module, bool]]


@dataclass(frozen=True)
class Criterion:
    """A registered criterion: its function and whether it works image by image."""

    name: str
    fn: Callable[..., Any]
    per_image: bool
    needs_data: bool = True


CRITERIA: Registry[Criterion] = Registry("pruning criterion")


def register_criterion(name: str, *, per_image: bool, needs_data: bool = True) -> Callable:
    """Register ``fn`` as criterion ``name`` (see the module docstring for the two signatures)."""

    def deco(fn: Callable) -> Callable:
        CRITERIA.register(name, Criterion(name, fn, per_image, needs_data))
        return fn

    return deco


# ------------------------------------------------------------------------------------------
# image criteria (captum layer methods)
# ------------------------------------------------------------------------------------------
def _first(t: Any) -> torch.Tensor:
    return t[0] if isinstance(t, (tuple, list)) else t


def _by_side(layers: Layers, run: Callable[[list[nn.Module], bool], list[torch.Tensor]]) -> list[torch.Tensor]:
    """Call ``run(modules, use_input)`` once for the layers read at their input and once for those
    read at their output (captum takes one ``attribute_to_layer_input`` per call)."""
    out: list[Any] = [None] * len(layers)
    for use_input in (False, True):
        idx = [i for i, (_, u) in enumerate(layers) if u == use_input]
        if idx:
            for i, t in zip(idx, run([layers[i][0] for i in idx], use_input)):
                out[i] = t
    return out


def _captum_multi(cls: type, model: nn.Module, images: torch.Tensor, target: torch.Tensor | None,
                  layers: Layers) -> list[torch.Tensor]:
    def run(mods: list[nn.Module], use_input: bool) -> list[torch.Tensor]:
        kw = {} if target is None else {"target": target}
        res = cls(model, mods if len(mods) > 1 else mods[0]).attribute(images, attribute_to_layer_input=use_input, **kw)
        res = res if len(mods) > 1 else [res]
        return [_first(r).detach() for r in res]
    return _by_side(layers, run)


@register_criterion("gradient_x_activation", per_image=True)
def gradient_x_activation(model: nn.Module, images: torch.Tensor, target: torch.Tensor, layers: Layers) -> list[torch.Tensor]:
    """Activation x gradient of the target logit at every layer, in one forward and one backward
    (captum ``LayerGradientXActivation``): the first-order Taylor estimate of what removing the
    unit changes in the logit."""
    from captum.attr import LayerGradientXActivation

    return _captum_multi(LayerGradientXActivation, model, images, target, layers)


@register_criterion("mean_activation", per_image=True)
def mean_activation(model: nn.Module, images: torch.Tensor, target: torch.Tensor, layers: Layers) -> list[torch.Tensor]:
    """|activation| at every layer (captum ``LayerActivation``, forward only). ``target`` is unused."""
    from captum.attr import LayerActivation

    with torch.no_grad():
        return [a.abs() for a in _captum_multi(LayerActivation, model, images, None, layers)]


@register_criterion("integrated_gradients", per_image=True)
def integrated_gradients(model: nn.Module, images: torch.Tensor, target: torch.Tensor, layers: Layers, *,
                         n_steps: int = 16, internal_batch_size: int | None = None,
                         baseline: float = 0.0) -> list[torch.Tensor]:
    """Integrated gradients at each unit's layer (captum ``LayerIntegratedGradients``): the unit's
    activation path from the baseline image's (black by default) to the image's, times the mean
    gradient of the target logit along it. Each layer is one IG run of ``n_steps`` (captum cannot
    attribute to layers that feed one another at once), so the cost is layers x n_steps
    forward+backward passes per image."""
    from captum.attr import LayerIntegratedGradients

    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int; got {n_steps!r}.")
    ibs = internal_batch_size or max(len(images), 64)
    base = torch.full_like(images, float(baseline))
    out = []
    for mod, use_input in layers:
        # A batch norm's output is read at its input: in eval mode the norm is a per-channel affine map,
        # so IG is the same there, and captum's replaced output would be a leaf that timm's residual
        # blocks then add to in place (``x += shortcut``), which autograd refuses.
        at_input = use_input or isinstance(mod, nn.modules.batchnorm._BatchNorm)
        a = LayerIntegratedGradients(model, mod).attribute(images, baselines=base, target=target, n_steps=n_steps,
                                                           internal_batch_size=ibs,
                                                           attribute_to_layer_input=at_input)
        out.append(_first(a).detach())
    return out


@register_criterion("lrp", per_image=True)
def lrp(model: nn.Module, images: torch.Tensor, target: torch.Tensor, layers: Layers, *,
        composite: str = "epsilon_plus_flat", **kw: Any) -> list[torch.Tensor]:
    """LRP relevance at each unit's layer: the same zennit implementation as the attribution method
    ``"lrp"`` (``workbench.attribution.methods_lrp.lrp_relevance``; composites with canonizers for
    timm/torchvision ResNets and VGG-style CNNs). One forward and one modified backward per batch.
    CNN channels only: zennit has no rules for a ViT's LayerNorm, GELU and attention."""
    from workbench.attribution.methods_lrp import lrp_relevance

    if any(use_input for _, use_input in layers):
        raise ValueError("LRP scores convolution channels of CNNs (zennit has no rules for a ViT's LayerNorm, "
                         "GELU and softmax attention); for ViT MLPs and heads use 'gradient_x_activation' or "
                         "'integrated_gradients'.")
    names = {m: n for n, m in model.named_modules()}
    wanted = [names[m] for m, _ in layers]
    # no propagation below the earliest scored layer (the input map is not needed): 5 % of the cost
    rel = lrp_relevance(model, images, target, layers=wanted, composite=composite, input_relevance=False, **kw)
    return [rel.layers[n] for n in wanted]


@register_criterion("dl_backtrace", per_image=True)
def dl_backtrace(model: nn.Module, images: torch.Tensor, target: torch.Tensor, layers: Layers) -> list[torch.Tensor]:
    """DL-Backtrace (Sankarapu et al.; the criterion of Malik et al.'s interpretability-aware
    pruning). Optional and not installed with the workbench: the ``dl-backtrace`` package is
    source-available under a non-commercial licence, pins torch 2.6 and pulls TensorFlow, so it
    must live in an environment of its own. See ``workbench.pruning.backtrace``."""
    from .backtrace import backtrace_relevance

    return backtrace_relevance(model, images, target, layers)


# ------------------------------------------------------------------------------------------
# model criteria
# ------------------------------------------------------------------------------------------
def _row_norms(w: torch.Tensor) -> torch.Tensor:
    return w.detach().flatten(1).float().norm(dim=1)


@register_criterion("weight_magnitude", per_image=False, needs_data=False)
def weight_magnitude(model: nn.Module, units: Sequence[UnitSet], batches: Any = None) -> dict[str, torch.Tensor]:
    """L2 norm of each unit's incoming weights: the fc1 row (MLP), the head's q, k and v rows
    (heads), the convolution filter (channels; the mean over a group's convolutions, each first
    divided by its mean so that no layer dominates)."""
    mods = dict(model.named_modules())
    out = {}
    for s in units:
        if s.kind == "heads":
            attn = mods[s.key]
            w = attn.qkv.weight.detach().float().reshape(3, attn.num_heads, attn.head_dim, -1)
            out[s.key] = w.permute(1, 0, 2, 3).flatten(1).norm(dim=1)
        elif s.kind == "mlp":
            out[s.key] = _row_norms(mods[s.producers[0]].weight)
        else:
            acc = torch.zeros(s.size)
            cnt = torch.zeros(s.size)
            for name, probe in zip(s.producers, s.probes):
                n = _row_norms(mods[name].weight).cpu()
                n = n / n.mean().clamp_min(1e-12)
                idx = torch.arange(len(n)) if probe.index is None else torch.tensor(probe.index)
                acc.index_add_(0, idx, n)
                cnt.index_add_(0, idx, torch.ones_like(n))
            out[s.key] = acc / cnt.clamp_min(1)
    return {k: v.cpu() for k, v in out.items()}


@register_criterion("random", per_image=False, needs_data=False)
def random_scores(model: nn.Module, units: Sequence[UnitSet], batches: Any = None, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Uniform random scores (seeded): the floor every criterion must beat."""
    g = torch.Generator().manual_seed(int(seed))
    return {s.key: torch.rand(s.size, generator=g) for s in units}


def _tp_group(dg: Any, model: nn.Module, s: UnitSet) -> Any:
    import torch_pruning as tp

    mod = model.get_submodule(s.root)
    if s.kind == "heads":
        return dg.get_pruning_group(mod, tp.prune_linear_in_channels, idxs=list(range(mod.in_features)))
    fn = tp.prune_linear_out_channels if isinstance(mod, nn.Linear) else tp.prune_conv_out_channels
    return dg.get_pruning_group(mod, fn, idxs=list(range(s.size)))


def _tp_scores(imp: Any, model: nn.Module, units: Sequence[UnitSet], dg: Any) -> dict[str, torch.Tensor]:
    out = {}
    for s in units:
        with quiet_tp():
            v = imp(_tp_group(dg, model, s))
        if v is None:
            raise ValueError(f"Torch-Pruning's {type(imp).__name__} gave no score for {s.key}.")
        v = torch.nan_to_num(v.detach().float().cpu(), nan=0.0)  # 0/0: a group without gradient (zero-init BN)
        out[s.key] = v.reshape(s.size, -1).mean(1) if s.kind == "heads" else v  # mean over a head's channels
    return out


@register_criterion("tp_magnitude", per_image=False, needs_data=False)
def tp_magnitude(model: nn.Module, units: Sequence[UnitSet], batches: Any = None, *,
                 example_inputs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Torch-Pruning's own ``GroupMagnitudeImportance`` (L2 over every coupled weight, mean over the
    group, heads averaged over their channels as its pruner does), on the same unit sets."""
    import torch_pruning as tp

    from ._units import example_input

    dg = dependency_graph(model, example_input(model, example_inputs))
    return _tp_scores(tp.importance.GroupMagnitudeImportance(p=2), model, units, dg)


@register_criterion("tp_taylor", per_image=False)
def tp_taylor(model: nn.Module, units: Sequence[UnitSet], batches: Iterable[dict[str, Any]], *,
              example_inputs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Torch-Pruning's own ``GroupTaylorImportance`` (|weight x gradient| over the coupled weights)
    with the gradient of the calibration loss (cross-entropy, or BCE for multilabel targets)
    summed over every batch, as its examples do. Runs on a copy: the caller's model gets no
    gradients."""
    import copy

    import torch.nn.functional as F
    import torch_pruning as tp

    from ._units import example_input

    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(True)
        p.grad = None
    for b in batches:
        logits = m(b["image"])
        y = b["label"]
        loss = (F.binary_cross_entropy_with_logits(logits, y.float(), reduction="sum") if y.ndim == 2
                else F.cross_entropy(logits, y.long(), reduction="sum"))
        loss.backward()
    if any(p.grad is None for p in m.parameters()):
        raise ValueError("tp_taylor needs at least one calibration batch with labels.")
    dg = dependency_graph(m, example_input(m, example_inputs))
    mu = {s.key: s for s in units}
    return _tp_scores(tp.importance.GroupTaylorImportance(), m, list(mu.values()), dg)
