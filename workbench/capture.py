"""The only module that registers torch hooks.

Every hook lives inside a context manager that removes it in ``finally`` (also after an
exception) and whose ``__exit__`` never swallows errors.

- ``record_outputs``: keep the outputs of named submodules during a forward (optionally with
  their gradients after a backward), e.g. for Grad-CAM.
- ``zennit_rules``: a zennit composite's LRP rules and canonizers, for LRP (workbench.attribution).
- attention capture for timm ViTs lives below (see ``attention_maps`` in workbench.attention).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn


def resolve_modules(model: nn.Module, modules: Mapping[str, nn.Module] | Sequence[str | nn.Module]) -> dict[str, nn.Module]:
    """Turn module names (``"blocks.3.attn"``) or modules into ``{name: module}``."""
    if isinstance(modules, Mapping):
        return dict(modules)
    if all(isinstance(m, str) for m in modules):   # by attribute path: no walk over every module (per batch)
        try:
            return {m: model.get_submodule(m) for m in modules}
        except AttributeError:
            pass   # an unknown name: the listing below says which exist
    named = dict(model.named_modules())
    by_id = {id(m): n for n, m in named.items()}
    out = {}
    for m in modules:
        if isinstance(m, str):
            if m not in named:
                close = [n for n in named if m.split(".")[-1] in n][:8]
                raise ValueError(f"model has no submodule {m!r}; some that exist: {close or list(named)[:8]}.")
            out[m] = named[m]
        elif isinstance(m, nn.Module):
            if id(m) not in by_id:
                raise ValueError(f"module {type(m).__name__} is not part of the model.")
            out[by_id[id(m)]] = m
        else:
            raise TypeError(f"expected a module name or nn.Module, got {type(m).__name__}.")
    return out


@contextlib.contextmanager
def record_outputs(model: nn.Module, modules: Mapping[str, nn.Module] | Sequence[str | nn.Module], *,
                   retain_grad: bool = False, detach: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of each named submodule during forwards run inside the block.

    Args:
        model: the model (only used to resolve names).
        modules: names such as ``"layer4"`` / ``"blocks.11.norm1"``, modules, or a name->module dict.
        retain_grad: call ``retain_grad()`` on each recorded output so that ``.grad`` is filled
            by a later ``backward()`` inside the block.
        detach: store detached outputs (saves memory when no gradient is needed).

    Yields:
        A dict ``{name: tensor}`` filled by the forward (the last call wins).

    Examples:
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
        >>> with record_outputs(m, ["0"]) as out:
        ...     _ = m(torch.zeros(2, 3))
        >>> tuple(out["0"].shape)
        (2, 4)
    """
    mods = resolve_modules(model, modules)
    store: dict[str, torch.Tensor] = {}
    handles = []

    def make(name: str):
        def hook(_mod, _inp, out):
            t = out[0] if isinstance(out, (tuple, list)) else out
            if detach:
                t = t.detach()
            elif retain_grad and t.requires_grad:
                t.retain_grad()
            store[name] = t
        return hook

    try:
        for name, mod in mods.items():
            handles.append(mod.register_forward_hook(make(name)))
        yield store
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def zennit_rules(model: nn.Module, composite: Any) -> Iterator[nn.Module]:
    """Apply a zennit composite (its canonizers, then one LRP rule hook per module) for the block.

    Everything is reverted in ``finally``: hooks removed, canonizers undone (merged BatchNorm
    parameters, rewritten forwards, swapped modules put back), also when registering itself fails
    halfway (zennit's own context manager would leave that half applied).
    """
    try:
        composite.register(model)
        yield model
    finally:
        composite.remove()


def hook_count(model: nn.Module) -> int:
    """Total number of forward/backward hooks on the model's modules (tests assert it stays 0)."""
    attrs = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return sum(len(getattr(m, a, None) or {}) for m in model.modules() for a in attrs)


# ---------------------------------------------------------------------------------------------
# Attention capture
# ---------------------------------------------------------------------------------------------
# Attention classes whose non-fused path calls ``self.attn_drop(softmax_probs)``: timm's Attention
# (VisionTransformer, DeiT incl. distilled, ...), AttentionRope, Eva's EvaAttention and our
# DCMMAttention. Any other module with ``fused_attn``, ``num_heads`` and an ``attn_drop``
# submodule is accepted too (duck typing); captured tensors are shape-checked.
SUPPORTED_ATTENTION = ("timm.layers.Attention", "timm.layers.AttentionRope", "timm.models.eva.EvaAttention",
                       "workbench.models.dcmm.DCMMAttention")
_EXCLUDED_ATTENTION = ("DiffAttention",)  # softmax difference: not a probability matrix


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` of the self-attention modules capture supports, in forward order.

    Examples:
        >>> import timm
        >>> m = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2)
        >>> list(attention_modules(m))
        ['blocks.0.attn', 'blocks.1.attn']
    """
    out = {}
    for name, mod in model.named_modules():
        if type(mod).__name__ in _EXCLUDED_ATTENTION:
            continue
        if hasattr(mod, "fused_attn") and hasattr(mod, "num_heads") and isinstance(getattr(mod, "attn_drop", None), nn.Module):
            out[name] = mod
    return out


class AttentionRecord:
    """What :func:`capture_attention` fills during a forward.

    Attributes:
        attentions: ``{name: (B, heads, N, N)}`` post-softmax probabilities (before dropout).
        memberships: ``{name: (pi (B, Hd, N, K), theta (B, Hd, N))}`` for DCMM layers.
    """

    def __init__(self) -> None:
        self.attentions: dict[str, torch.Tensor] = {}
        self.memberships: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


class StopForward(Exception):
    """Raised by :func:`capture_attention` (``stop_early=True``) once the last requested attention is
    recorded, to skip the rest of the forward; catch it around the forward call."""


def select_layers(names: Sequence[str], layers: Any) -> list[str]:
    """Pick attention layers by index or name, returned in forward order.

    Args:
        names: the attention module names in forward order (``"blocks.3.attn"``).
        layers: None (all), an int / name, or a sequence of them; ``"blocks.3"`` means ``"blocks.3.attn"``.
    """
    names = list(names)
    if layers is None:
        return names
    if isinstance(layers, (int, str)):
        layers = [layers]
    chosen = set()
    for item in layers:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise TypeError(f"layers must hold ints or module names; got {item!r}.")
        if isinstance(item, int):
            if not -len(names) <= item < len(names):
                raise ValueError(f"layer {item} out of range: the model has {len(names)} attention layers.")
            chosen.add(names[item])
        else:
            key = item if item in names else f"{item}.attn"
            if key not in names:
                raise ValueError(f"no attention layer {item!r}; valid names: {names}.")
            chosen.add(key)
    return [n for n in names if n in chosen]


@contextlib.contextmanager
def capture_attention(model: nn.Module, layers: Sequence[str] | None = None, *, grad: bool = False,
                      eval_mode: bool = True, stop_early: bool = False) -> Iterator[AttentionRecord]:
    """Capture post-softmax attention of the given attention modules during forwards in the block.

    Inside the block each selected module runs its non-fused path (``fused_attn = False``) and a
    pre-hook on its ``attn_drop`` records the probabilities; DCMM layers also record
    ``membership`` outputs. On exit (also after an exception) hooks are removed and the
    ``fused_attn`` flags and train/eval modes of all modules are restored. Weights are not touched.

    Args:
        model: a model with supported attention modules (:func:`attention_modules`).
        layers: names from :func:`attention_modules` (default: all).
        grad: keep the recorded probabilities in the autograd graph (they then require grad, also
            for frozen models) so that ``torch.autograd.grad(out, list(rec.attentions.values()))``
            works; otherwise they are stored detached.
        eval_mode: put the model in eval mode inside the block (no dropout, deterministic).
        stop_early: raise :class:`StopForward` as soon as every requested attention (and DCMM
            membership) has been recorded, so the rest of the forward is skipped. Only for
            forwards whose output is not needed; wrap the call in ``try/except StopForward``.

    Yields:
        An :class:`AttentionRecord` filled by the forward (the last call wins).
    """
    available = attention_modules(model)
    if not available:
        raise ValueError(f"{type(model).__name__} has no supported attention modules; attention capture works "
                         f"for timm ViTs and attention modules of these types: {', '.join(SUPPORTED_ATTENTION)}.")
    names = list(available) if layers is None else list(layers)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown attention module(s) {unknown}; valid names: {list(available)}.")
    record = AttentionRecord()
    handles = []
    flags = {n: available[n].fused_attn for n in names}
    modes = {m: m.training for m in model.modules()}

    def pre_hook(name: str):
        def hook(_mod, args):
            a = args[0]
            if grad:
                if not a.requires_grad:
                    a = a.detach().requires_grad_(True)
                record.attentions[name] = a
                return (a,) + tuple(args[1:])
            record.attentions[name] = a.detach()
            if stop_early and len(record.attentions) == len(names):
                raise StopForward(name)
            return None
        return hook

    def membership_hook(name: str):
        def hook(_mod, _inp, out):
            pi, theta = out
            record.memberships[name] = (pi, theta) if grad else (pi.detach(), theta.detach())
        return hook

    try:
        if eval_mode:
            model.eval()
        for n in names:
            mod = available[n]
            mod.fused_attn = False
            handles.append(mod.attn_drop.register_forward_pre_hook(pre_hook(n)))
            memb = getattr(mod, "membership", None)
            if isinstance(memb, nn.Module):
                handles.append(memb.register_forward_hook(membership_hook(n)))
        yield record
    finally:
        for h in handles:
            h.remove()
        for n, flag in flags.items():
            available[n].fused_attn = flag
        for m, training in modes.items():
            m.training = training


# ---------------------------------------------------------------------------------------------
# Truncated forwards and splicing (sparse autoencoders)
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def stop_after(model: nn.Module, module: str | nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of one submodule and stop the forward right after it.

    Inside the block, a forward raises :class:`StopForward` once ``module`` has produced its output
    (so the layers after it never run); catch it around the call. The output is stored detached
    under ``"output"``. The hook is removed on exit, also after an exception.

    Examples:
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> with stop_after(m, "0") as rec:
        ...     try:
        ...         m(torch.zeros(2, 3))
        ...     except StopForward:
        ...         pass
        >>> tuple(rec["output"].shape), hook_count(m)
        ((2, 4), 0)
    """
    (name, mod), = resolve_modules(model, [module]).items()
    store: dict[str, torch.Tensor] = {}

    def hook(_mod, _inp, out):
        t = out[0] if isinstance(out, (tuple, list)) else out
        store["output"] = t.detach()
        raise StopForward(name)

    handle = mod.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


@contextlib.contextmanager
def replace_output(model: nn.Module, module: str | nn.Module, fn: Any) -> Iterator[None]:
    """Replace the output of one submodule by ``fn(output)`` during forwards inside the block.

    ``fn`` maps the module's output tensor to a tensor of the same shape (e.g. an SAE
    reconstruction, zero- or mean-ablation). The hook is removed on exit, also after an exception.

    Examples:
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
        >>> with replace_output(m, "0", torch.zeros_like):
        ...     y = m(torch.ones(2, 3))
        >>> float(y.abs().sum()), hook_count(m)
        (0.0, 0)
    """
    (_name, mod), = resolve_modules(model, [module]).items()

    def hook(_mod, _inp, out):
        if isinstance(out, (tuple, list)):
            return type(out)([fn(out[0]), *out[1:]])
        return fn(out)

    handle = mod.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
