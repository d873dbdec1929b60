"""Reference inputs ("baselines") for path and difference methods: integrated gradients, DeepLIFT,
GradientSHAP.

A baseline says what "no evidence" looks like. The black image that captum and most papers use is
wrong for modalities where the evidence is dark: an ultrasound lesion is hypoechoic (darker than the
tissue around it), so ``x - 0`` is small exactly there and integrated gradients cannot credit it.
Choices (``baseline=``):

==================  ===========================================================================
``0`` / ``"zero"``  black (captum's default)
``"blur"``          the image blurred (Gaussian, sigma = H/16): anatomy without detail; the default
                    of integrated gradients and DeepLIFT (measured: their docstrings)
``"mean"``          a constant image at the image's own mean intensity (per channel)
``"uniform"``       uniform noise in [0, 1] (seeded); methods draw ``n`` noise images
a tensor            one reference per image, broadcastable to the images ``(B, C, H, W)``; moved
                    to the images' device and dtype (another shape raises, naming both)
:class:`BaselineSet`  a *distribution* of reference images (training images: expected gradients,
                    Erion et al. 2021): integrated gradients then averages over references and
                    path positions drawn at random, DeepLIFT becomes DeepLIFT-SHAP, GradientSHAP
                    samples its references from it
==================  ===========================================================================

Each method's default and the measurement behind it are in its docstring (benchmarks/bench_lesions.py,
"Baselines").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._image import reference_like

NAMES = ("zero", "blur", "mean", "uniform")


@dataclass(frozen=True)
class BaselineSet:
    """A distribution of reference images ``(N, C, H, W)`` float in [0, 1] (see the module docstring)."""

    images: torch.Tensor
    name: str = "reference set"

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.ndim != 4 or self.images.shape[0] < 1:
            raise ValueError(f"BaselineSet needs an (N, C, H, W) tensor with N >= 1; got "
                             f"{getattr(self.images, 'shape', type(self.images).__name__)}.")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def sample(self, n: int, like: torch.Tensor, seed: int | None = 0) -> torch.Tensor:
        """``n`` references drawn with replacement (seeded, on the CPU), on ``like``'s device and dtype."""
        check_reference(self.images, like, "BaselineSet images", per_image=False)
        g = torch.Generator()
        g.manual_seed(0 if seed is None else int(seed))
        idx = torch.randint(0, len(self), (n,), generator=g)
        return self.images[idx].to(like.device, like.dtype)


def baseline_set(data: Any, n: int = 32, *, seed: int = 0, name: str | None = None) -> BaselineSet:
    """``n`` reference images drawn (seeded) from a dataset or an ``(N, C, H, W)`` tensor, e.g. the
    training split: ``attribute(..., baseline=baseline_set(train))`` gives expected gradients.

    Examples:
        >>> s = baseline_set(torch.rand(10, 1, 8, 8), n=4)
        >>> tuple(s.images.shape)
        (4, 1, 8, 8)
    """
    from .._checks import check_int

    n = check_int(n, "n")
    g = torch.Generator().manual_seed(int(seed))
    if isinstance(data, torch.Tensor):
        pool = data
        idx = torch.randperm(pool.shape[0], generator=g)[:n]
        imgs = pool[idx]
    elif hasattr(data, "batch") and hasattr(data, "__len__"):
        idx = torch.randperm(len(data), generator=g)[:n]
        imgs = data.batch(idx)["image"]
    else:
        raise TypeError(f"baseline_set takes a dataset (workbench.data.load) or an (N, C, H, W) tensor; got "
                        f"{type(data).__name__}.")
    if imgs.dtype == torch.uint8:
        imgs = imgs.float() / 255.0
    from workbench._checks import check_images

    check_images(imgs, name="the reference images")  # finite, [0, 1] (0-255 hint), (N, C, H, W)
    return BaselineSet(imgs.float().contiguous(), name or getattr(data, "name", "") or "reference set")


def check_reference(ref: torch.Tensor, images: torch.Tensor, name: str = "baseline", per_image: bool = True) -> None:
    """A clear error when a reference tensor cannot serve ``images`` (``per_image``: broadcastable)."""
    if ref.device.type == "meta":
        raise ValueError(f"{name} is on the 'meta' device and holds no data; pass a real tensor (any device: it is "
                         "moved to the images' device).")
    if not ref.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [0, 1] like the images; got {ref.dtype}.")
    shape, want = tuple(ref.shape), tuple(images.shape)
    if per_image:
        try:
            torch.broadcast_shapes(shape, want)
            ok = len(shape) <= 4 and torch.broadcast_shapes(shape, want) == torch.Size(want)
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"{name} has shape {shape} but the images are {want}; pass one reference per image "
                             f"{want}, one for all {(1, *want[1:])}, or a distribution of references as "
                             "baseline_set(train_images).")
    elif shape[1:] != want[1:]:
        raise ValueError(f"{name} are {shape[1:]} images but the inputs are {want[1:]}; draw the references from "
                         "data of the same channels and size (load it with the same size=).")


def resolve(images: torch.Tensor, baseline: Any, *, seed: int | None = 0) -> torch.Tensor | BaselineSet:
    """One reference per image ``(B, C, H, W)`` on the images' device, or the :class:`BaselineSet` itself."""
    if isinstance(baseline, BaselineSet):
        check_reference(baseline.images, images, "BaselineSet images", per_image=False)
        return baseline
    if isinstance(baseline, torch.Tensor):
        check_reference(baseline, images)
        return baseline.to(images.device, images.dtype).expand_as(images).contiguous()
    if baseline == "uniform":
        g = torch.Generator().manual_seed(0 if seed is None else int(seed))
        return torch.rand(images.shape, generator=g).to(images.device, images.dtype)
    if baseline == "black":
        baseline = "zero"
    if isinstance(baseline, str) and baseline not in NAMES:
        raise ValueError(f"baseline {baseline!r} is not one of {list(NAMES)}, a number, a tensor or a "
                         "BaselineSet (baseline_set(train_images)).")
    return reference_like(images, baseline)


def describe(baseline: Any) -> str:
    """A short, JSON-friendly name for ``params``."""
    if isinstance(baseline, BaselineSet):
        return f"set:{baseline.name}:{len(baseline)}"
    if isinstance(baseline, torch.Tensor):
        return "tensor"
    return str(baseline)
