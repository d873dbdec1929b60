"""What can be pruned in a model: unit sets (one per prunable layer) and where they are measured.

A **unit set** is the set of units that one structural pruning step removes together: the hidden
neurons of one MLP (``fc1`` outputs = ``fc2`` inputs), the heads of one attention module, or the
channels of one group of coupled convolutions (a convolution with its batch norm; in a residual
stage every convolution that writes into the same residual stream, with their batch norms, the
next layers' inputs and the classifier's input). Torch-Pruning's dependency graph finds the
coupled layers; this module only says which layer a set is rooted at and where its units'
activations are read:

- ``mlp``: the input of ``fc2`` (the hidden activation after ``act``), one unit per channel;
- ``heads``: the input of ``attn.proj`` (every head's output, ``head_dim`` channels per head);
- ``channels``: the output of each member convolution's batch norm (the convolution itself when
  no norm follows), mapped onto the group's channel index.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

UNITS = ("mlp", "heads", "channels")


@dataclass(frozen=True)
class Probe:
    """Where one unit set's activations are read.

    Attributes:
        module: name of the module whose input (``use_input``) or output holds the units.
        use_input: read the module's input (fc2 / proj) instead of its output.
        index: for each channel of the probe, the unit it belongs to (None: channel c is unit c).
        per_unit: channels per unit (``head_dim`` for heads; 1 otherwise).
    """

    module: str
    use_input: bool
    index: tuple[int, ...] | None = None
    per_unit: int = 1


@dataclass(frozen=True)
class UnitSet:
    """One prunable layer.

    Attributes:
        key: the set's name in score dicts (``"blocks.3.mlp"``, ``"blocks.3.attn"``, ``"layer1.0.conv1"``).
        kind: "mlp", "heads" or "channels".
        size: number of units.
        root: the module the pruning group is built from (fc1, attn.proj, the group's first conv).
        probes: where activations are read (several for a residual group).
        producers: modules whose output channels make the units (fc1; qkv; each member conv).
    """

    key: str
    kind: str
    size: int
    root: str
    probes: tuple[Probe, ...]
    producers: tuple[str, ...]


def is_vit_attention(mod: nn.Module) -> bool:
    """A timm-style attention module whose heads can be removed (qkv and proj Linears)."""
    return (isinstance(getattr(mod, "qkv", None), nn.Linear) and isinstance(getattr(mod, "proj", None), nn.Linear)
            and isinstance(getattr(mod, "num_heads", None), int) and isinstance(getattr(mod, "head_dim", None), int))


def _mlp_sets(model: nn.Module) -> list[UnitSet]:
    out = []
    for name, mod in model.named_modules():
        fc1, fc2 = getattr(mod, "fc1", None), getattr(mod, "fc2", None)
        if isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear) and fc1.out_features == fc2.in_features:
            out.append(UnitSet(name, "mlp", fc1.out_features, f"{name}.fc1", (Probe(f"{name}.fc2", True),),
                               (f"{name}.fc1",)))
    return out


def _head_sets(model: nn.Module) -> list[UnitSet]:
    out = []
    for name, mod in model.named_modules():
        if not (hasattr(mod, "num_heads") and hasattr(mod, "qkv")):
            continue
        if type(mod).__name__ == "DCMMAttention":
            raise ValueError(f"{name} is a DCMM attention module; removing its heads would also need its "
                             "membership and community parameters cut, which is not supported. Prune its "
                             "MLPs (unit='mlp') instead.")
        if not is_vit_attention(mod):
            continue
        if mod.qkv.out_features != 3 * mod.num_heads * mod.head_dim:
            continue  # grouped-query or other layouts: not handled
        out.append(UnitSet(name, "heads", mod.num_heads, f"{name}.proj",
                           (Probe(f"{name}.proj", True, per_unit=mod.head_dim),), (f"{name}.qkv",)))
    return out


@contextlib.contextmanager
def quiet_tp() -> Iterator[None]:
    """Torch-Pruning warns about unwrapped parameters (cls_token, pos_embed, layer scales) while
    tracing; they are never pruned by the unit kinds here, so the warning is noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Uu]nwrapped parameters.*")
        yield


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> Any:
    """Torch-Pruning's dependency graph of ``model`` traced with ``example_inputs``."""
    import torch_pruning as tp

    was = model.training
    model.eval()
    try:
        with quiet_tp():
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    finally:
        model.train(was)


def _norm_after(dg: Any, conv: nn.Module) -> nn.Module | None:
    node = dg.module2node.get(conv)
    outs = [] if node is None else node.outputs
    if len(outs) == 1 and isinstance(outs[0].module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
        return outs[0].module
    return None


def _channel_sets(model: nn.Module, dg: Any) -> list[UnitSet]:
    import torch_pruning as tp

    names = {m: n for n, m in model.named_modules()}
    out = []
    with quiet_tp():
        groups = list(dg.get_all_groups(root_module_types=[nn.Conv2d]))
    for group in groups:
        members, linear_out = [], False
        for i, (dep, idxs) in enumerate(group):
            mod = dep.target.module
            if not dg.is_out_channel_pruning_fn(dep.handler):
                continue
            if isinstance(mod, nn.Linear) or isinstance(mod, nn.LayerNorm) or not isinstance(mod, nn.Module):
                linear_out = True  # a token / embedding dimension (ViT patch embedding), not conv channels
                break
            if isinstance(mod, nn.Conv2d) and dep.handler == tp.prune_conv_out_channels:
                root_idxs = group[i].root_idxs
                members.append((mod, list(idxs), list(root_idxs)))
        if linear_out or not members:
            continue
        root_mod = group[0].dep.target.module
        size = dg.get_out_channels(root_mod)
        if size is None or size < 2:
            continue
        probes = []
        for mod, idxs, root_idxs in members:
            at = _norm_after(dg, mod) or mod
            n = mod.out_channels
            index = [0] * n
            for local, r in zip(idxs, root_idxs):
                index[local] = r
            ident = index == list(range(n)) and n == size
            probes.append(Probe(names[at], False, None if ident else tuple(index)))
        out.append(UnitSet(names[root_mod], "channels", int(size), names[root_mod], tuple(probes),
                           tuple(names[m] for m, _, _ in members)))
    order = {n: i for i, n in enumerate(names.values())}
    return sorted(out, key=lambda s: order.get(s.key, 0))


def example_input(model: nn.Module, example_inputs: torch.Tensor | None = None) -> torch.Tensor:
    """One input to trace ``model`` with: ``example_inputs`` or ``(1, in_chans, *img_size)`` from
    the model's ``workbench_config``."""
    from workbench._device import model_device

    if example_inputs is not None:
        if not torch.is_tensor(example_inputs) or example_inputs.ndim != 4:
            raise ValueError(f"example_inputs must be a (B, C, H, W) tensor; got "
                             f"{getattr(example_inputs, 'shape', type(example_inputs).__name__)}.")
        return example_inputs[:1].to(model_device(model))
    cfg = getattr(model, "workbench_config", None) or {}
    if "img_size" not in cfg or "in_chans" not in cfg:
        raise ValueError(f"{type(model).__name__} has no workbench_config with img_size and in_chans; pass "
                         "example_inputs=(1, C, H, W) images so that its layers can be traced.")
    return torch.rand(1, int(cfg["in_chans"]), *[int(s) for s in cfg["img_size"]], device=model_device(model))


def kinds_of(model: nn.Module, example_inputs: torch.Tensor | None = None) -> list[str]:
    """The unit kinds ``model`` has (e.g. ``["mlp", "heads"]`` for a ViT, ``["channels"]`` for a ResNet)."""
    from workbench._checks import check_model

    check_model(model)
    kinds = []
    for k in UNITS:
        try:
            if find_units(model, k, example_inputs):
                kinds.append(k)
        except ValueError:
            pass
    return kinds


def find_units(model: nn.Module, unit: str, example_inputs: torch.Tensor | None = None, dg: Any = None) -> list[UnitSet]:
    """The unit sets of kind ``unit`` in ``model``, in forward order (may be empty).

    Args:
        model: a timm ViT (``mlp``, ``heads``) or CNN (``channels``).
        unit: "mlp", "heads" or "channels".
        example_inputs: ``(1, C, H, W)`` to trace with (``channels`` only; default from the config).
        dg: a dependency graph of ``model`` already built.
    """
    if unit not in UNITS:
        raise ValueError(f"unknown unit kind {unit!r}; valid kinds are: {', '.join(UNITS)} "
                         "(mlp: hidden neurons of transformer MLPs; heads: attention heads; channels: "
                         "convolution channels).")
    if unit == "mlp":
        return _mlp_sets(model)
    if unit == "heads":
        return _head_sets(model)
    if any(is_vit_attention(m) for m in model.modules()):
        return []  # a ViT's conv is its patch embedding: its channels are the token width
    if dg is None:
        dg = dependency_graph(model, example_input(model, example_inputs))
    return _channel_sets(model, dg)


def require_units(model: nn.Module, unit: str, example_inputs: torch.Tensor | None = None, dg: Any = None) -> list[UnitSet]:
    """``find_units`` that raises when the model has no units of that kind, naming the kinds it has."""
    sets = find_units(model, unit, example_inputs, dg)
    if not sets:
        have = [k for k in UNITS if k != unit and find_units(model, k, example_inputs)]
        raise ValueError(f"{type(model).__name__} has no prunable units of kind {unit!r}; "
                         + (f"it has: {', '.join(have)}." if have else "it has none of mlp, heads, channels.")
                         + " ViTs have 'mlp' and 'heads', CNNs have 'channels'.")
    return sets
