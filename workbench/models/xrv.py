"""TorchXRayVision classifiers (Cohen et al.) as workbench models: ``create("xrv:<weights>")``.

TorchXRayVision's models take one-channel images scaled to [-1024, 1024] at their native
resolution (224 px for the DenseNets, 512 px for ResNet-50) and can return calibrated
probabilities. ``XRVModel`` wraps one so that it behaves like every workbench model: it takes
``(B, 1 or 3, H, W)`` images in [0, 1] (three channels are averaged), resizes square inputs to
the native resolution (bilinear, antialiased: gradients flow back to the input's size, so
attribution maps come out at the image's size), scales them by ``(2x - 1) * 1024`` and returns
the raw logits (no sigmoid, no operating-point normalisation: ``fit``, ``evaluate`` and
attribution want logits; the package's ``op_threshs`` stay available on ``model.op_threshs``).
``model.targets`` names the outputs (TorchXRayVision's pathologies; an empty name is an output
that model was not trained for).

Weights: ``pretrained=True`` (the default for ``xrv:`` names) uses the file in TorchXRayVision's
cache (``~/.torchxrayvision/models_data`` or ``cache_dir=``) or downloads it (internet needed the
first time); ``pretrained=False`` builds the architecture alone (offline; what the tests use).
``num_classes`` other than the weights' outputs replaces the head for fine-tuning.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

PREFIX = "xrv:"


def _xrv() -> Any:
    import warnings
    try:
        with warnings.catch_warnings():  # its models module sets warnings.filterwarnings("ignore") globally
            import torchxrayvision
    except ImportError as e:
        raise ImportError("xrv: models need TorchXRayVision: `pip install torchxrayvision` (or the workbench[xrv] "
                          "extra).") from e
    return torchxrayvision


def weight_names() -> list[str]:
    """The TorchXRayVision weights ``create("xrv:<name>")`` accepts (classifiers only)."""
    urls = _xrv().models.model_urls
    return sorted(k for k in urls if k.startswith(("densenet", "resnet")) and "labels" in urls[k])


class XRVModel(nn.Module):
    """A TorchXRayVision classifier taking [0, 1] images and returning logits (module docstring).

    Attributes:
        net: the TorchXRayVision model (``DenseNet``, or a torchvision ResNet under ``net.model``).
        targets: output names.
        resolution: the native input size the images are resized to.
    """

    input_range = (0.0, 1.0)

    def __init__(self, net: nn.Module, kind: str, targets: Sequence[str], resolution: int,
                 op_threshs: torch.Tensor | None = None) -> None:
        super().__init__()
        self.net, self.kind = net, kind
        self.targets = tuple(targets)
        self.resolution = int(resolution)
        self.register_buffer("op_threshs", op_threshs, persistent=False)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> TorchXRayVision's input: one channel, native size, [-1024, 1024]."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"{self.kind} takes (B, 1 or 3, H, W) images in [0, 1]; got shape {tuple(x.shape)}.")
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"TorchXRayVision models take square images; got {x.shape[-2]}x{x.shape[-1]}. Load the "
                             f"data with size={self.resolution} (or crop to a square).")
        if x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        if x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False,
                              antialias=True)
        return (2.0 * x - 1.0) * 1024.0

    def get_classifier(self) -> nn.Linear:
        return self.net.classifier if self.kind == "densenet" else self.net.model.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) pooled features of [0, 1] images."""
        x = self.scale(x)
        if self.kind == "densenet":
            f = F.relu(self.net.features(x))  # TorchXRayVision's features2 without its in-place ReLU and prints
            return F.adaptive_avg_pool2d(f, 1).flatten(1)
        m = self.net.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        return torch.flatten(m.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.get_classifier()(self.forward_features(x))


def _architecture(xrv: Any, weights: str, n_out: int) -> tuple[nn.Module, str]:
    """The network of ``weights`` without loading them (no download)."""
    if weights.startswith("densenet"):
        return xrv.models.DenseNet(weights=None, num_classes=n_out), "densenet"
    import torchvision
    holder = nn.Module()  # the attribute layout of xrv.models.ResNet: its state dict keys are model.*
    depth = weights.split("-")[0]
    holder.model = getattr(torchvision.models, depth)(num_classes=n_out, weights=None)
    holder.model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return holder, "resnet"


def _pretrained(xrv: Any, weights: str, cache_dir: str | os.PathLike | None) -> tuple[nn.Module, str]:
    info = xrv.models.model_urls[weights]
    folder = os.path.expanduser(str(cache_dir) if cache_dir is not None else xrv.utils.get_cache_dir())
    local = os.path.join(folder, os.path.basename(info["weights_url"]))
    cls = xrv.models.DenseNet if weights.startswith("densenet") else xrv.models.ResNet
    try:
        net = cls(weights=weights, cache_dir=folder)  # TorchXRayVision downloads the file when it is missing
    except Exception as e:
        raise RuntimeError(f"could not load the TorchXRayVision weights {weights!r} ({type(e).__name__}: {e}). They "
                           f"are read from {local}; without internet, download {info['weights_url']} there on a "
                           "machine that has it, or pass pretrained=False for the architecture alone.") from e
    return net, "densenet" if weights.startswith("densenet") else "resnet"


def create_xrv(name: str, num_classes: int | None = None, img_size: Any = None, in_chans: int = 1, *,
               pretrained: bool | None = None, cache_dir: str | os.PathLike | None = None) -> XRVModel:
    """``workbench.models.create("xrv:<weights>", ...)`` (see the module docstring).

    Args:
        name: ``"xrv:"`` plus a TorchXRayVision weights name (``weight_names()``), e.g.
            ``"xrv:densenet121-res224-all"`` or ``"xrv:resnet50-res512-all"``.
        num_classes: None (the weights' outputs, e.g. 18 pathologies) or a new head's size.
        img_size: the image size the model is fed (any square size; resized to the native one
            inside); default the native resolution. Stored in the config.
        in_chans: 1 or 3 (averaged to one).
        pretrained: None/True loads the weights (cached or downloaded); False: architecture only.
        cache_dir: TorchXRayVision's weights folder (default its own cache).

    Examples:
        >>> m = create_xrv("xrv:densenet121-res224-all", pretrained=False)        # doctest: +SKIP
        >>> m(torch.rand(1, 1, 224, 224)).shape, m.targets[:2]                     # doctest: +SKIP
        (torch.Size([1, 18]), ('Atelectasis', 'Consolidation'))
    """
    from .._image import size_pair
    xrv = _xrv()
    weights = name[len(PREFIX):] if name.startswith(PREFIX) else name
    valid = weight_names()
    if weights not in valid:
        raise ValueError(f"unknown TorchXRayVision weights {weights!r}; valid names are "
                         f"{', '.join(PREFIX + v for v in valid)}.")
    info = xrv.models.model_urls[weights]
    labels = list(info["labels"])
    resolution = int(info.get("input_resolution", 224))
    if in_chans not in (1, 3):
        raise ValueError(f"xrv: models take 1 or 3 channels (three are averaged); got in_chans={in_chans!r}.")
    size = size_pair(img_size if img_size is not None else resolution, "img_size")
    if size[0] != size[1]:
        raise ValueError(f"TorchXRayVision models take square images; got img_size {size}.")
    load = True if pretrained is None else pretrained
    if not isinstance(load, bool):
        raise TypeError(f"pretrained must be True or False for xrv: models; got {pretrained!r}.")
    net, kind = _pretrained(xrv, weights, cache_dir) if load else _architecture(xrv, weights, len(labels))
    if load:  # our forward computes logits itself: no prints, no resize or normalisation checks inside
        for attr in ("input_resolution",):
            if hasattr(net, attr):
                delattr(net, attr)
    op = info.get("op_threshs")
    if "op_threshs" in net._buffers:
        net._buffers["op_threshs"] = None  # not in our state dict: kept on XRVModel.op_threshs
    model = XRVModel(net, kind, labels, resolution, torch.tensor(op, dtype=torch.float32) if op else None)
    n_out = len(labels) if num_classes is None else num_classes
    if not isinstance(n_out, int) or isinstance(n_out, bool) or n_out < 1:
        raise ValueError(f"num_classes must be a positive int or None (the weights' {len(labels)} outputs); "
                         f"got {num_classes!r}.")
    if n_out != len(labels):  # a new head for the user's task
        head = model.get_classifier()
        new = nn.Linear(head.in_features, n_out)
        if kind == "densenet":
            net.classifier = new
        else:
            net.model.fc = new
        model.targets = tuple(str(i) for i in range(n_out))
    model.workbench_config = {"name": PREFIX + weights, "num_classes": n_out, "img_size": list(size),
                              "in_chans": int(in_chans), "pretrained": bool(load), "attention": "standard",
                              "normalize": None, "kw": {}, "xrv": {"targets": list(model.targets),
                                                                   "resolution": resolution}}
    return model
