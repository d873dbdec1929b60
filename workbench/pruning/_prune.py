"""The ``prune`` verb: a new, physically smaller model without the least relevant units.

Removal goes through Torch-Pruning's dependency graph, which cuts every coupled tensor together:
an MLP's ``fc1`` rows, bias and ``fc2`` columns; a head's q, k and v rows and its ``proj``
columns; a convolution's filters, its batch norm and the next layers' input channels, and for a
residual stream every convolution, norm and the classifier input that share it. We choose the
indices from our scores and hand them to ``DependencyGraph.get_pruning_group``; timm attention is
then told its new ``num_heads`` and ``attn_dim`` on that module only (``head_dim`` is unchanged:
whole heads go). ``ScoreImportance`` offers the same scores to Torch-Pruning's own pruners.

The new shapes are recorded in ``model.workbench_config["pruning"]`` so that
``workbench.models.save``/``load`` rebuild the pruned architecture (``apply_shapes``).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch
import torch_pruning as tp
from torch import nn

from ._core import Scores
from ._units import UnitSet, dependency_graph, example_input, quiet_tp, require_units

__all__ = ["prune", "ScoreImportance", "apply_shapes", "shape_record", "SCOPES"]

SCOPES = ("layer", "global")
_NOUN = {"mlp": "MLP units", "heads": "heads", "channels": "channels"}
_ATTRS = ("in_features", "out_features", "in_channels", "out_channels", "groups", "num_features",
          "normalized_shape", "num_heads", "head_dim", "attn_dim", "head_hidden_size")


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or not 0 < ratio < 1:
        raise ValueError(f"ratio is the fraction of units to remove and must lie strictly between 0 and 1; got "
                         f"{ratio!r}. E.g. ratio=0.5 removes half of the units of each layer.")
    return float(ratio)


def _n_remove(ratio: float, n: int) -> int:
    return int(math.floor(ratio * n + 0.5))


def select_units(scores: Scores, sets: Sequence[UnitSet], ratio: float, scope: str = "layer",
                 remove: str = "lowest", min_keep: int = 0) -> dict[str, list[int]]:
    """``{layer key: sorted unit indices to remove}``.

    ``scope="layer"`` removes ``round(ratio * units)`` units of every layer; ``"global"`` ranks all
    units together after dividing each layer's scores by their mean absolute value (layers differ in
    scale) and removes ``round(ratio * all units)``, never leaving a layer fewer than ``min_keep``
    units (0: a layer that would lose every unit raises). ``remove="highest"`` removes the highest-scoring
    units instead (e.g. the units most relevant on a device mask).
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}; got {scope!r}.")
    if remove not in ("lowest", "highest"):
        raise ValueError(f"remove must be 'lowest' or 'highest'; got {remove!r}.")
    sign = 1.0 if remove == "lowest" else -1.0
    out: dict[str, list[int]] = {}
    if scope == "layer":
        for s in sets:
            k = _n_remove(ratio, s.size)
            if k >= s.size:
                raise ValueError(f"ratio {ratio} would remove all {s.size} {_NOUN[s.kind]} of {s.key}; use a smaller "
                                 f"ratio (at most {(s.size - 0.5) / s.size - 1e-9:.3f} keeps one unit).")
            order = torch.argsort(sign * scores.values[s.key].float(), stable=True)
            out[s.key] = sorted(order[:k].tolist())
        return out
    flat, owner = [], []
    for s in sets:
        v = scores.values[s.key].float()
        flat.append(sign * v / v.abs().mean().clamp_min(1e-12))
        owner += [(s.key, i) for i in range(s.size)]
    allv = torch.cat(flat)
    k = _n_remove(ratio, len(allv))
    sizes = {s.key: s.size for s in sets}
    for s in sets:
        out[s.key] = []
    taken = 0
    for j in torch.argsort(allv, stable=True).tolist():  # lowest first; a layer stops at min_keep units
        if taken == k:
            break
        key, i = owner[j]
        if min_keep and sizes[key] - len(out[key]) <= min_keep:
            continue
        out[key].append(i)
        taken += 1
    for s in sets:
        if len(out[s.key]) >= s.size:
            raise ValueError(f"global pruning at ratio {ratio} would remove all {s.size} {_NOUN[s.kind]} of {s.key} "
                             "(its scores are the lowest of the model); pass min_keep=1, use scope='layer' or a "
                             "smaller ratio.")
        out[s.key].sort()
    return out


def _group(dg: Any, model: nn.Module, s: UnitSet, idx: list[int]) -> Any:
    root = model.get_submodule(s.root)
    if s.kind == "heads":
        hd = model.get_submodule(s.key).head_dim
        ch = [h * hd + j for h in idx for j in range(hd)]
        return dg.get_pruning_group(root, tp.prune_linear_in_channels, idxs=ch)
    fn = tp.prune_linear_out_channels if isinstance(root, nn.Linear) else tp.prune_conv_out_channels
    return dg.get_pruning_group(root, fn, idxs=list(idx))


def _sync_classifier(model: nn.Module) -> None:
    """timm's ``num_features`` / ``head_hidden_size`` follow the classifier's new input width."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Linear):
        for a in ("num_features", "head_hidden_size"):
            if isinstance(getattr(model, a, None), int):
                setattr(model, a, head.in_features)


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def shape_record(before: nn.Module, after: nn.Module) -> dict[str, dict[str, dict[str, Any]]]:
    """``{module name: {"attrs": {...}, "tensors": {name: shape}}}`` for every module whose shapes or
    size attributes differ between ``before`` and ``after`` (JSON-ready)."""
    old = dict(before.named_modules())
    rec: dict[str, dict[str, dict[str, Any]]] = {}
    for name, m in after.named_modules():
        o = old.get(name)
        if o is None:
            continue
        tensors = {}
        for k, t in list(m._parameters.items()) + list(m._buffers.items()):
            ot = o._parameters.get(k, o._buffers.get(k))
            if t is not None and (ot is None or tuple(ot.shape) != tuple(t.shape)):
                tensors[k] = list(t.shape)
        attrs = {a: _jsonable(getattr(m, a)) for a in _ATTRS
                 if a in vars(m) and getattr(m, a) != getattr(o, a, None)}
        if tensors or attrs:
            rec[name] = {"attrs": attrs, "tensors": tensors}
    return rec


def apply_shapes(model: nn.Module, pruning: dict[str, Any]) -> nn.Module:
    """Give a freshly built dense model the shapes recorded in ``config["pruning"]`` (in place; the
    weights are left uninitialised: load them next). Used by ``workbench.models.load``."""
    modules = (pruning or {}).get("modules")
    if not isinstance(modules, dict):
        raise ValueError("the pruning record of this config has no 'modules'; it was not written by "
                         "workbench.pruning.prune. Re-save the pruned model with workbench.models.save.")
    for name, spec in modules.items():
        try:
            m = model.get_submodule(name) if name else model
        except AttributeError:
            raise ValueError(f"the pruning record names module {name!r}, which {type(model).__name__} does not "
                             "have; the config's architecture and its pruning record disagree.") from None
        for a, v in (spec.get("attrs") or {}).items():
            setattr(m, a, tuple(v) if isinstance(getattr(m, a, None), tuple) else v)
        for k, shape in (spec.get("tensors") or {}).items():
            old = m._parameters.get(k, m._buffers.get(k))
            if old is None:
                raise ValueError(f"the pruning record gives {name}.{k} a shape, but {name} has no such tensor.")
            t = torch.empty([int(s) for s in shape], dtype=old.dtype, device=old.device)
            if k in m._parameters:
                m._parameters[k] = nn.Parameter(t, requires_grad=old.requires_grad)
            else:
                m._buffers[k] = t
    return model


def _merge(prior: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(prior)
    for name, spec in new.items():
        cur = out.setdefault(name, {"attrs": {}, "tensors": {}})
        cur.setdefault("attrs", {}).update(spec["attrs"])
        cur.setdefault("tensors", {}).update(spec["tensors"])
    return out


def prune(model: nn.Module, scores: Scores, ratio: float = 0.5, *, scope: str = "layer", remove: str = "lowest",
          min_keep: int = 0, example_inputs: torch.Tensor | None = None) -> nn.Module:
    """Remove the least relevant units: a new, physically smaller model (the input is not changed).

    Args:
        model: the model the scores were computed on (a timm ViT or CNN).
        scores: from :func:`workbench.pruning.scores` (its unit kind is pruned).
        ratio: fraction of units to remove, in (0, 1) (of each layer, or of all units with
            ``scope="global"``).
        scope: "layer" (the same fraction of every layer) or "global" (one ranking over all layers,
            each layer's scores divided by their mean absolute value first).
        remove: "lowest" (default) or "highest": remove the highest-scoring units, e.g. those
            most relevant on a device mask (``scores(..., masks="device")``).
        min_keep: with ``scope="global"``, units every layer keeps (the next-lowest units of other
            layers go instead); 0 raises when a layer would lose all its units.
        example_inputs: ``(1, C, H, W)`` to trace the model (default from its config).

    Returns:
        The pruned model, in the input's train/eval mode and on its device, with
        ``workbench_config["pruning"]`` recording the new shapes and what was done.

    Raises:
        ValueError: a ratio outside (0, 1) or one that would empty a layer; scores of another
            model or unit kind.

    Examples:
        >>> import workbench as wb
        >>> m = wb.models.create("resnet18", num_classes=2, img_size=32, in_chans=1)
        >>> s = wb.pruning.scores(m, None, unit="channels", criterion="weight_magnitude")
        >>> small = prune(m, s, ratio=0.5)
        >>> m.layer1[0].conv1.out_channels, small.layer1[0].conv1.out_channels
        (64, 32)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module; got {type(model).__name__}.")
    if not isinstance(scores, Scores):
        raise TypeError(f"scores must be the result of workbench.pruning.scores(model, data, ...); got "
                        f"{type(scores).__name__}.")
    ratio = _check_ratio(ratio)
    new = copy.deepcopy(model)
    ex = example_input(new, example_inputs)
    dg = dependency_graph(new, ex)
    sets = require_units(new, scores.unit, ex, dg)
    want = {s.key: s.size for s in sets}
    got = {k: len(v) for k, v in scores.values.items()}
    if want != got:
        raise ValueError(f"these scores are for other layers than this model has ({scores.unit}: the model has "
                         f"{len(want)} layers, {sum(want.values())} units; the scores {len(got)} layers, "
                         f"{sum(got.values())} units). Compute the scores on this model.")
    from workbench._checks import check_int

    drop = select_units(scores, sets, ratio, scope, remove, check_int(min_keep, "min_keep", minimum=0))
    for s in sets:
        idx = drop[s.key]
        if not idx:
            continue
        with quiet_tp():
            group = _group(dg, new, s, idx)
            if not dg.check_pruning_group(group):
                raise ValueError(f"Torch-Pruning refuses to remove {len(idx)} units of {s.key} (it would leave a "
                                 "layer without channels); use a smaller ratio.")
            group.prune()
        if s.kind == "heads":
            attn = new.get_submodule(s.key)
            attn.num_heads -= len(idx)
            attn.attn_dim = attn.num_heads * attn.head_dim
    _sync_classifier(new)
    cfg = copy.deepcopy(getattr(model, "workbench_config", None))
    if isinstance(cfg, dict):
        prior = cfg.get("pruning") or {}
        step = {"unit": scores.unit, "criterion": scores.criterion, "ratio": ratio, "scope": scope, "remove": remove,
                "removed": {k: len(v) for k, v in drop.items()}}
        cfg["pruning"] = {"modules": _merge(prior.get("modules", {}), shape_record(model, new)),
                          "history": list(prior.get("history", [])) + [step]}
        new.workbench_config = cfg
    was = new.training
    new.eval()
    try:
        with torch.no_grad():
            new(ex)
    finally:
        new.train(was)
    return new


class ScoreImportance(tp.importance.Importance):
    """Our scores as a Torch-Pruning importance: ``tp.pruner.MetaPruner(model, x, importance=
    ScoreImportance(scores, model), ...)`` prunes the scored layers with Torch-Pruning's own pruner
    (groups the scores do not cover get None and are skipped). ``prune`` is the simpler path; this
    adapter is for Torch-Pruning users, and tests check that both remove the same units.

    Args:
        scores: the scores.
        model: the model the pruner works on (its modules are matched by name).
    """

    def __init__(self, scores: Scores, model: nn.Module) -> None:
        self.scores = scores
        self.by_module: dict[nn.Module, tuple[str, int, Any]] = {}
        for name, mod in model.named_modules():
            if name not in scores.values:
                continue
            if scores.unit == "heads":
                self.by_module[mod.proj] = (name, mod.head_dim, tp.prune_linear_in_channels)
            elif scores.unit == "mlp":
                self.by_module[mod.fc1] = (name, 1, tp.prune_linear_out_channels)
            else:
                self.by_module[mod] = (name, 1, tp.prune_conv_out_channels)

    def __call__(self, group: Any) -> torch.Tensor | None:
        for i, (dep, idxs) in enumerate(group):
            hit = self.by_module.get(dep.target.module)
            if hit is None or dep.handler != hit[2]:
                continue
            name, per, _ = hit
            v = self.scores.values[name].float()
            v = v.repeat_interleave(per) if per > 1 else v
            out = torch.zeros(len(group[0].idxs))
            out[torch.as_tensor(group[i].root_idxs)] = v[torch.as_tensor(idxs)]
            return out
        return None
