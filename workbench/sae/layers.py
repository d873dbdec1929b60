"""A model's layer as a set of tokens: naming, token layout, truncated forwards and splicing.

A *layer* is a submodule name of the model (``model.named_modules()``): ``"blocks.3"`` (the
residual stream after block 3 of a timm ViT), ``"layer3"`` (a ResNet stage), ``"stages.2"``
(ConvNeXt)... An int ``i`` means ``"blocks.i"`` for ViTs. Its output is read as tokens:

- 3-D ``(B, N, D)`` outputs (ViTs): ``N = prefix + h x w`` tokens, the prefix being the class,
  register and distillation tokens (timm's order: cls, registers/distillation, then patches);
- 4-D ``(B, C, H, W)`` outputs (CNNs): the ``H x W`` positions of the feature map, ``C`` wide.

``tokens`` picks which of them an SAE sees: "patch" (grid positions; the default, as Mammo-SAE and
saev), "prefix" (class/register tokens only) or "all". The :class:`TokenLayout` of a layer is
written into the store's manifest and the SAE's ``source``, so a mismatch is caught.
All forwards here stop right after the layer (``workbench.capture.stop_after``) and leave the
model's mode, weights and hooks as they were.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn

from workbench.capture import StopForward, replace_output, stop_after

TOKENS = ("patch", "prefix", "all")


def layer_names(model: nn.Module) -> list[str]:
    """Layers worth caching, in forward order: ViT blocks (and ``norm``), CNN stages.

    Any name of ``model.named_modules()`` is accepted by the other functions; this is the short
    list shown in errors and offered by the CLI and widgets.

    Examples:
        >>> import timm
        >>> layer_names(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2))
        ['blocks.0', 'blocks.1', 'norm']
    """
    from workbench._checks import check_model

    names = [n for n, _ in check_model(model).named_modules()]
    out = []
    for seq in ("blocks", "stages", "layers", "features"):
        if isinstance(getattr(model, seq, None), nn.Sequential):
            out += [n for n in names if n.startswith(seq + ".") and n.count(".") == 1]
    out += [n for n in names if n.startswith("layer") and "." not in n]  # ResNet stages
    if isinstance(getattr(model, "norm", None), nn.Module) and not isinstance(model.norm, nn.Identity):
        out.append("norm")
    return out or [n for n in names if n and "." not in n]


def resolve_layer(model: nn.Module, layer: str | int) -> str:
    """A layer argument -> a submodule name of ``model``; unknown names raise with the valid ones."""
    names = dict(model.named_modules())
    if isinstance(layer, bool) or not isinstance(layer, (str, int)):
        raise TypeError(f"layer must be a submodule name such as 'blocks.3' or 'layer3' (or an int block index "
                        f"for ViTs); got {type(layer).__name__}.")
    if isinstance(layer, int):
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, nn.Sequential):
            raise ValueError(f"an int layer ({layer}) means a ViT block, but {type(model).__name__} has no blocks; "
                             f"name the layer, one of: {', '.join(layer_names(model))}.")
        if not -len(blocks) <= layer < len(blocks):
            raise ValueError(f"layer {layer} is out of range: the model has {len(blocks)} blocks (0..{len(blocks) - 1}).")
        return f"blocks.{layer % len(blocks)}"
    if layer == "" or layer not in names:
        raise ValueError(f"the model has no layer {layer!r}; valid layers are: {', '.join(layer_names(model))} "
                         "(or any name of model.named_modules()).")
    return layer


@dataclass(frozen=True)
class TokenLayout:
    """How a layer's output is laid out as tokens.

    Attributes:
        kind: "tokens" (a ``(B, N, D)`` output) or "feature_map" (``(B, C, H, W)``).
        prefix: names of the non-grid tokens before the patches (``["cls", "reg", "reg"]``).
        grid: ``(h, w)`` of the patch / feature-map positions.
        d: token width.
        tokens: which tokens are kept: "patch", "prefix" or "all".
    """

    kind: str
    prefix: tuple[str, ...]
    grid: tuple[int, int]
    d: int
    tokens: str = "patch"

    @property
    def n_prefix(self) -> int:
        return len(self.prefix)

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def per_image(self) -> int:
        """Tokens kept per image."""
        return {"patch": self.n_patches, "prefix": self.n_prefix, "all": self.n_prefix + self.n_patches}[self.tokens]

    @property
    def has_grid(self) -> bool:
        """Whether the kept tokens include the patch grid (heatmaps, atlas)."""
        return self.tokens in ("patch", "all") and self.n_patches > 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["prefix"], d["grid"] = list(self.prefix), list(self.grid)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TokenLayout":
        return cls(kind=d["kind"], prefix=tuple(d["prefix"]), grid=tuple(d["grid"]), d=int(d["d"]),
                   tokens=d.get("tokens", "patch"))

    def select(self, out: torch.Tensor) -> torch.Tensor:
        """The layer's raw output -> ``(B, per_image, d)`` kept tokens (patches in row-major order)."""
        t = out.flatten(2).transpose(1, 2) if self.kind == "feature_map" else out
        if self.tokens == "patch":
            return t[:, self.n_prefix:]
        if self.tokens == "prefix":
            return t[:, :self.n_prefix]
        return t

    def insert(self, out: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`select`: ``out`` with its kept tokens replaced by ``kept``."""
        if self.kind == "feature_map":
            if self.tokens == "prefix":
                return out
            return kept.transpose(1, 2).reshape(out.shape).to(out.dtype)
        if self.tokens == "all":
            return kept.to(out.dtype)
        parts = [out[:, :self.n_prefix], kept.to(out.dtype)] if self.tokens == "patch" else \
            [kept.to(out.dtype), out[:, self.n_prefix:]]
        return torch.cat(parts, 1)

    def patch_tokens(self, kept: torch.Tensor) -> torch.Tensor:
        """``(B, per_image, ...)`` kept tokens -> ``(B, h x w, ...)`` patch tokens only."""
        if not self.has_grid:
            raise ValueError("these tokens hold no patch grid (tokens='prefix'); heatmaps and the atlas need "
                             "tokens='patch' or 'all'.")
        return kept[:, self.n_prefix:] if self.tokens == "all" else kept


def _prefix_names(model: nn.Module, n_prefix: int) -> tuple[str, ...]:
    names: list[str] = []
    if getattr(model, "cls_token", None) is not None:
        names.append("cls")
    names += ["reg"] * int(getattr(model, "num_reg_tokens", 0) or 0)
    if getattr(model, "dist_token", None) is not None:
        names.append("dist")
    if len(names) != n_prefix:
        names = [f"prefix{i}" for i in range(n_prefix)]
    return tuple(names)


def infer_layout(model: nn.Module, out: torch.Tensor, tokens: str = "patch") -> TokenLayout:
    """The :class:`TokenLayout` of a layer from one of its outputs (and the model's attributes)."""
    if tokens not in TOKENS:
        raise ValueError(f"tokens must be one of {TOKENS}; got {tokens!r}.")
    if out.ndim == 4:
        layout = TokenLayout("feature_map", (), (int(out.shape[2]), int(out.shape[3])), int(out.shape[1]), tokens)
    elif out.ndim == 3:
        n = int(out.shape[1])
        pe = getattr(model, "patch_embed", None)
        grid = tuple(int(g) for g in getattr(pe, "grid_size", ()) or ())
        n_prefix = int(getattr(model, "num_prefix_tokens", n - grid[0] * grid[1] if len(grid) == 2 else 0))
        if len(grid) != 2 or grid[0] * grid[1] + n_prefix != n:
            raise ValueError(f"cannot tell the patch grid of a layer output with {n} tokens (the model's patch grid "
                             f"is {grid or 'unknown'} with {n_prefix} prefix tokens); cache a timm ViT block "
                             "('blocks.i') or a CNN feature map.")
        layout = TokenLayout("tokens", _prefix_names(model, n_prefix), grid, int(out.shape[2]), tokens)
    else:
        raise ValueError(f"the layer's output has shape {tuple(out.shape)}; expected (B, N, D) tokens or a "
                         "(B, C, H, W) feature map. Pick a block or stage (workbench.sae.layers.layer_names).")
    if layout.per_image == 0:
        raise ValueError(f"tokens={tokens!r} keeps no token of this layer (layout {layout.to_dict()}); "
                         "use tokens='patch' or 'all'.")
    return layout


def forward_to(model: nn.Module, images: torch.Tensor, layer: str) -> torch.Tensor:
    """The raw output of ``layer`` for ``images``, by a forward that stops right after it (no grad)."""
    was = model.training
    if was:   # model.train()/eval() walk every module: only when the mode must change (cache calls this per batch)
        model.eval()
    try:
        with torch.no_grad(), stop_after(model, layer) as rec:
            try:
                model(images)
            except StopForward:
                pass
    finally:
        if was:
            model.train(was)
    if "output" not in rec:
        raise ValueError(f"layer {layer!r} did not run during the model's forward; pick a layer on the path from "
                         "input to output (workbench.sae.layers.layer_names).")
    return rec["output"]


def splice(model: nn.Module, layer: str, layout: TokenLayout,
           fn: Callable[[torch.Tensor], torch.Tensor]):
    """A context manager replacing the kept tokens of ``layer``'s output by ``fn(tokens)``.

    ``fn`` maps ``(B, per_image, d)`` tokens to the same shape (an SAE reconstruction, an
    ablation); the other tokens (e.g. the class token when ``tokens="patch"``) pass unchanged.
    """

    def replace(out: torch.Tensor) -> torch.Tensor:
        kept = layout.select(out)
        new = fn(kept)
        if new.shape != kept.shape:
            raise ValueError(f"a splice must return tokens of shape {tuple(kept.shape)}; got {tuple(new.shape)}.")
        return layout.insert(out, new)

    return replace_output(model, layer, replace)
