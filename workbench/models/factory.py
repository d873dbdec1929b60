"""One factory over timm: short names for the models the workbench is tested with, any timm name
otherwise, at any image size and channel count. The full configuration is stored on the model
(``model.workbench_config``) so that ``workbench.models.save``/``load`` rebuild it with one call.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .._image import size_pair

# short name -> timm architecture
SHORT_NAMES: dict[str, str] = {
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "densenet121": "densenet121",
    "convnext_atto": "convnext_atto",
    "convnext_nano": "convnext_nano",
    "convnext_tiny": "convnext_tiny",
}
ATTENTIONS = ("standard", "dcmm")
#: Input standardisation of models trained from scratch: ``(x - 0.5) / 0.25`` maps [0, 1] images
#: to about [-2, 2]. A ViT fed raw [0, 1] images stalls at chance for several epochs (the constant
#: part of every patch embedding dominates the tokens); standardised, it learns from the first one.
SCRATCH_NORMALIZE = ((0.5,), (0.25,))


class StandardizedConv2d(nn.Conv2d):
    """A ``Conv2d`` that standardises its input first: ``conv((x - mean) / std)``.

    ``create`` turns a model's first convolution (the ViT patch embedding, a CNN's stem) into one,
    so that models keep taking [0, 1] images (what attribution baselines, masks and figures assume)
    while training sees standardised inputs. Parameter names are unchanged and ``mean``/``std`` are
    non-persistent buffers, so timm's and older workbench state dicts load as before.
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.register_buffer("mean", torch.zeros(1, self.in_channels, 1, 1), persistent=False)
        self.register_buffer("std", torch.ones(1, self.in_channels, 1, 1), persistent=False)

    @classmethod
    def wrap(cls, conv: nn.Conv2d, mean: Sequence[float], std: Sequence[float]) -> "StandardizedConv2d":
        c = conv.in_channels
        mean, std = _per_channel(mean, c, conv.weight), _per_channel(std, c, conv.weight)
        conv.__class__ = cls  # same parameters and settings, nothing copied
        conv.register_buffer("mean", mean, persistent=False)
        conv.register_buffer("std", std, persistent=False)
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward((x - self.mean) / self.std)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", standardize=(mean={self.mean.flatten().tolist()}, "
                f"std={self.std.flatten().tolist()})")


def _per_channel(values: Sequence[float], channels: int, like: torch.Tensor) -> torch.Tensor:
    v = [float(x) for x in values]
    if len(v) not in (1, channels):
        v = [sum(v) / len(v)]  # e.g. ImageNet RGB statistics for a one-channel model
    t = torch.tensor(v, dtype=like.dtype, device=like.device)
    return t.expand(channels).reshape(1, channels, 1, 1).clone()


def _resolve_normalize(normalize: Any, model: nn.Module, pretrained: bool) -> list[list[float]] | None:
    """``normalize`` argument -> ``[mean, std]`` lists (JSON-ready) or None."""
    if normalize is None or normalize is False or normalize == "none":
        return None
    if normalize == "auto":
        cfg = getattr(model, "pretrained_cfg", None) or {}
        if pretrained and cfg.get("mean") and cfg.get("std"):
            return [list(cfg["mean"]), list(cfg["std"])]
        return [list(SCRATCH_NORMALIZE[0]), list(SCRATCH_NORMALIZE[1])]
    try:
        mean, std = normalize
        mean = [float(mean)] if isinstance(mean, (int, float)) else [float(x) for x in mean]
        std = [float(std)] if isinstance(std, (int, float)) else [float(x) for x in std]
    except (TypeError, ValueError):
        raise ValueError(f"normalize must be 'auto', None or a (mean, std) pair of floats or per-channel "
                         f"sequences; got {normalize!r}.") from None
    if not mean or not std or min(std) <= 0:
        raise ValueError(f"normalize needs non-empty mean and std with std > 0; got {normalize!r}.")
    return [mean, std]


def _standardize_input(model: nn.Module, in_chans: int, mean_std: list[list[float]]) -> str:
    """Swap the model's first input convolution for a StandardizedConv2d; return its name."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d) and mod.in_channels == in_chans:
            if type(mod) is not nn.Conv2d:
                raise ValueError(f"cannot standardise the input of {type(model).__name__}: its first "
                                 f"convolution {name!r} is a {type(mod).__name__}. Pass normalize=None "
                                 "and standardise the images yourself.")
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, StandardizedConv2d.wrap(mod, *mean_std))
            return name
    raise ValueError(f"{type(model).__name__} has no Conv2d taking {in_chans} channels to standardise "
                     "the input in; pass normalize=None.")


def _weights_file(pretrained: Any) -> Path | None:
    """The local weights file named by ``pretrained`` (a str or path), or None for True/False."""
    if isinstance(pretrained, bool) or pretrained is None:
        return None
    if not isinstance(pretrained, (str, os.PathLike)):
        return None
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained={str(pretrained)!r} is not a file; pass the path of a weights file "
                                "(.safetensors, .pth, .bin), True for timm's hub weights, or False.")
    return path


def _timm_create(timm: Any, timm_name: str, size: tuple[int, int], create_kw: dict[str, Any]) -> tuple[nn.Module, bool]:
    """``(model, whether it took img_size)``: CNNs take any input size and no img_size."""
    try:
        return timm.create_model(timm_name, img_size=size, **create_kw), True
    except TypeError as e:
        if "img_size" not in str(e):
            raise
        return timm.create_model(timm_name, **create_kw), False


class _LoadReport(logging.Handler):
    """Collects the missing / unexpected keys timm logs while loading pretrained weights."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.missing: list[str] = []
        self.unexpected: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        for tag, target in (("Missing keys (", self.missing), ("Unexpected keys (", self.unexpected)):
            if msg.startswith(tag):
                target += [k.strip() for k in msg[len(tag):msg.index(")")].split(",") if k.strip()]


@contextlib.contextmanager
def _load_report():
    log = logging.getLogger("timm.models._builder")
    handler, level = _LoadReport(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _check_loaded(model: nn.Module, report: _LoadReport, path: Path, name: str) -> None:
    """timm loads non-strictly when it drops a classifier of another size: refuse a file that left
    other weights at their random initialisation; warn about file keys it did not use."""
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    missing = [k for k in report.missing if not any(k.startswith(c + ".") for c in classifier)]
    if missing:
        raise ValueError(f"the weights in {path} do not cover {len(missing)} tensor(s) of {name!r} (e.g. "
                         f"{missing[:4]}): the file is of another architecture or size. Pass the settings it was "
                         "saved from (depth, embed_dim, patch_size...).")
    if report.unexpected:
        warnings.warn(f"{len(report.unexpected)} tensor(s) of {path} were not used by {name!r} (e.g. "
                      f"{report.unexpected[:4]}).", stacklevel=3)


def list_models() -> list[str]:
    """The short model names; any ``timm.list_models()`` name is accepted by ``create`` too.

    Examples:
        >>> "vit_tiny" in list_models()
        True
    """
    return sorted(SHORT_NAMES)


def default_patch_size(img_size: int | Sequence[int]) -> int:
    """Patch size used for ViTs when ``patch_size`` is not given: 16 from 128 px, 8 from 48 px, else 4."""
    m = min(size_pair(img_size, "img_size"))
    return 16 if m >= 128 else 8 if m >= 48 else 4


def _resolve_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string; got {type(name).__name__}.")
    if name in SHORT_NAMES:
        return SHORT_NAMES[name]
    import timm

    if timm.is_model(name):
        return name
    raise ValueError(
        f"unknown model {name!r}; short names are: {', '.join(list_models())}. Any name from "
        "timm.list_models() works too (e.g. 'vit_base_patch16_224', 'efficientnet_b0')."
    )


def create(name: str, num_classes: int | None = None, img_size: int | Sequence[int] | None = None,
           in_chans: int | None = None, *, pretrained: bool | str | os.PathLike | None = None,
           attention: str = "standard", communities: int = 4, dcmm: dict[str, Any] | None = None,
           drop_path_rate: float = 0.0, normalize: Any = "auto", **kw: Any) -> torch.nn.Module:
    """Create a classification model over timm.

    Images fed to the model are ``(B, in_chans, H, W)`` floats in [0, 1]; the model standardises
    them itself in its first convolution (``normalize``), so attribution baselines, masks and
    figures all live in image space. Binary tasks use ``num_classes=2`` (softmax over two logits).

    Args:
        name: a short name (``list_models()``: vit_tiny, vit_small, resnet18, resnet50,
            densenet121, convnext_atto, convnext_nano, convnext_tiny), any timm model name, or
            ``"xrv:<weights>"`` for a TorchXRayVision classifier (``workbench.models.xrv``: e.g.
            ``"xrv:densenet121-res224-all"``; its own input scaling runs inside, so it takes [0, 1]
            images like every other model; weights loaded by default).
        num_classes: number of logits C (required for timm models; xrv: None keeps the weights'
            outputs, another number puts a new head on).
        img_size: ``H`` or ``(H, W)`` (default 224; xrv: the native resolution); for ViTs the patch
            grid is ``(H // p, W // p)`` (any grid, square or not). CNNs accept any size; it is
            stored in the config.
        in_chans: image channels (1 for grey radiographs; default 3, xrv: 1).
        pretrained: None or False (random weights, the offline default; xrv: None loads its weights), True (timm's pretrained weights:
            cached or from the hub), or the path of a local weights file (``.safetensors``,
            ``.pth``/``.bin``/``.pt``, ``.npz`` as timm reads them) of this architecture, e.g. a
            foundation model's backbone: loaded through timm, which drops a classifier of another
            size and adapts the input convolution to ``in_chans``.
        attention: "standard" or "dcmm" (ViTs only; the DCMM-Transformer attention bias of
            ``workbench.models.dcmm.enable_dcmm``).
        communities: number of DCMM communities K (used when ``attention="dcmm"``).
        dcmm: extra keyword arguments for ``enable_dcmm`` (e.g. ``{"tau": 1.0, "per_head": True}``).
        drop_path_rate: stochastic depth rate.
        normalize: input standardisation inside the model: "auto" (timm's mean/std for pretrained
            weights, averaged over channels for grey images; ``SCRATCH_NORMALIZE`` = 0.5 / 0.25
            otherwise), a ``(mean, std)`` pair (floats or per-channel sequences), or None.
        **kw: passed to ``timm.create_model``, e.g. ``patch_size`` (ViT; default 16 from 128 px,
            8 from 48 px, 4 below), ``depth``, ``reg_tokens``, ``class_token``, ``drop_rate``.

    Returns:
        The model, with ``model.workbench_config`` holding everything ``create`` was given.

    Examples:
        >>> m = create("vit_tiny", num_classes=2, img_size=32, in_chans=1, depth=2)
        >>> m(torch.rand(1, 1, 32, 32)).shape
        torch.Size([1, 2])
        >>> m.workbench_config["timm_name"]
        'vit_tiny_patch16_224'
    """
    if isinstance(name, str) and name.startswith("xrv:"):
        return _create_xrv(name, num_classes, img_size, in_chans, pretrained, attention, dcmm, drop_path_rate,
                           normalize, kw)
    import timm

    timm_name = _resolve_name(name)
    img_size = 224 if img_size is None else img_size
    in_chans = 3 if in_chans is None else in_chans
    pretrained = False if pretrained is None else pretrained
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (2 for binary tasks); got {num_classes!r}.")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive int (1 for grey images, 3 for RGB); got {in_chans!r}.")
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}; got {attention!r}.")
    size = size_pair(img_size, "img_size")
    if timm_name.startswith("convnext") and min(size) < 32:
        raise ValueError(f"{name} downsamples by 32 and cannot take img_size {size}; resize images to at "
                         "least 32 px (e.g. workbench.data.load(..., size=64)) or use resnet18 / a ViT.")
    kw = dict(kw)
    is_vit = timm_name.startswith(("vit_", "deit", "eva", "beit"))
    if timm_name in ("vit_tiny_patch16_224", "vit_small_patch16_224") and "patch_size" not in kw:
        kw["patch_size"] = default_patch_size(size)
    weights_file = _weights_file(pretrained)
    if weights_file is not None:
        overlay = dict(kw.pop("pretrained_cfg_overlay", None) or {})
        kw["pretrained_cfg_overlay"] = {**overlay, "file": str(weights_file)}
        pretrained = True
    elif not isinstance(pretrained, bool):
        raise TypeError(f"pretrained must be True, False or the path of a weights file; got {pretrained!r}.")
    create_kw = dict(num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kw)
    if drop_path_rate:
        create_kw["drop_path_rate"] = drop_path_rate
    try:
        with _load_report() as report:
            model, takes_size = _timm_create(timm, timm_name, size, create_kw)
    except RuntimeError as e:
        if weights_file is None:
            raise
        raise ValueError(f"the weights in {weights_file} do not fit {name!r} ({timm_name}) with these settings "
                         f"({str(e).splitlines()[0][:300]}); pass the architecture and settings (patch_size, depth, "
                         "embed_dim...) the file was saved from.") from e
    if weights_file is not None:
        _check_loaded(model, report, weights_file, name)
    if hasattr(model, "patch_embed") and takes_size:
        grid = tuple(model.patch_embed.grid_size)
        p = model.patch_embed.patch_size
        if grid[0] * p[0] != size[0] or grid[1] * p[1] != size[1]:
            raise ValueError(f"img_size {size} is not divisible by patch_size {tuple(p)}; pick a patch "
                             f"size that divides the image (e.g. {default_patch_size(size)}) or resize the images.")
    mean_std = _resolve_normalize(normalize, model, pretrained)
    if mean_std is not None:
        _standardize_input(model, in_chans, mean_std)
    dcmm_kw = dict(dcmm or {})
    if attention == "dcmm":
        if not (is_vit or hasattr(model, "blocks")):
            raise ValueError(f"attention='dcmm' needs a ViT (blocks of timm Attention); {name!r} has none. "
                             "Use vit_tiny or vit_small.")
        from workbench.models.dcmm import enable_dcmm  # lazily: H4's module

        model = enable_dcmm(model, communities=communities, **dcmm_kw)
    elif dcmm:
        raise ValueError("dcmm kwargs were given but attention='standard'; pass attention='dcmm' to use them.")
    stored_kw = {k: v for k, v in kw.items() if k != "pretrained_cfg_overlay"}
    model.workbench_config = {
        "name": name, "timm_name": timm_name, "num_classes": num_classes, "img_size": list(size),
        "in_chans": in_chans, "pretrained": str(weights_file) if weights_file else bool(pretrained), "attention": attention,
        "communities": int(communities), "dcmm": copy.deepcopy(dcmm_kw),
        "drop_path_rate": float(drop_path_rate), "normalize": mean_std, "kw": copy.deepcopy(stored_kw),
    }
    return model


def _create_xrv(name: str, num_classes: Any, img_size: Any, in_chans: Any, pretrained: Any, attention: str,
                dcmm: Any, drop_path_rate: float, normalize: Any, kw: dict[str, Any]) -> torch.nn.Module:
    """``create`` for TorchXRayVision names (``workbench.models.xrv``)."""
    from .xrv import create_xrv
    if attention != "standard" or dcmm:
        raise ValueError(f"attention={attention!r} / dcmm apply to ViTs; {name} is a TorchXRayVision CNN.")
    if normalize not in ("auto", None):
        raise ValueError(f"{name} scales its inputs itself (TorchXRayVision's [-1024, 1024]); leave normalize unset.")
    if drop_path_rate:
        raise ValueError(f"drop_path_rate does not apply to {name}.")
    cache_dir = kw.pop("cache_dir", None)
    if kw:
        raise TypeError(f"unexpected argument(s) {sorted(kw)} for {name}; it takes num_classes, img_size, in_chans, "
                        "pretrained and cache_dir.")
    return create_xrv(name, num_classes, img_size, 1 if in_chans is None else in_chans, pretrained=pretrained,
                      cache_dir=cache_dir)


def create_from_config(config: dict[str, Any]) -> torch.nn.Module:
    """Rebuild a model from ``model.workbench_config`` (as saved by ``save``), never pretrained; a
    pruned model's config (key ``pruning``) rebuilds its smaller shapes."""
    required = ("name", "num_classes", "img_size", "in_chans")
    missing = [k for k in required if k not in config]
    if missing:
        raise ValueError(f"model config lacks {missing}; it must hold at least {list(required)} "
                         "(write checkpoints with workbench.models.save).")
    model = create(config["name"], int(config["num_classes"]), tuple(config["img_size"]),
                   int(config["in_chans"]), pretrained=False,
                   attention=config.get("attention", "standard"),
                   communities=int(config.get("communities", 4)), dcmm=config.get("dcmm") or None,
                   drop_path_rate=float(config.get("drop_path_rate", 0.0)),
                   normalize=config.get("normalize"),  # absent in checkpoints from before it existed
                   **dict(config.get("kw") or {}))
    if config.get("pruning"):  # a pruned model (workbench.pruning.prune): its recorded, smaller shapes
        from workbench.pruning._prune import apply_shapes

        apply_shapes(model, config["pruning"])
        model.workbench_config = {**model.workbench_config, "pruning": copy.deepcopy(config["pruning"])}
    return model
