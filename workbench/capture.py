"""The only module that registers torch hooks.

Every hook lives inside a context manager that removes it in ``finally`` (also after an
exception) and whose ``__exit__`` never swallows errors.

- ``record_outputs``: keep the outputs of named submodules during a forward (optionally with
  their gradients after a backward), e.g. for Grad-CAM.
- attention capture for timm ViTs lives below (see ``attention_maps`` in workbench.attention).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn


def resolve_modules(model: nn.Module, modules: Mapping[str, nn.Module] | Sequence[str | nn.Module]) -> dict[str, nn.Module]:
    """Turn module names (``"blocks.3.attn"``) or modules into ``{name: module}``."""
    if isinstance(modules, Mapping):
        return dict(modules)
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


def hook_count(model: nn.Module) -> int:
    """Total number of forward/backward hooks on the model's modules (tests assert it stays 0)."""
    attrs = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return sum(len(getattr(m, a, None) or {}) for m in model.modules() for a in attrs)
