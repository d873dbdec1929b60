"""Explicit transforms on sample dicts and batch dicts; masks follow geometric transforms exactly.

Every transform takes a sample dict (``image`` (C, H, W), ``masks`` {name: (H, W) bool}) or a
batch dict (``image`` (B, C, H, W), ``masks`` {name: (B, H, W) bool}, ``mask_present``) and
returns a new dict; the input and its tensors are never modified. A bare image tensor
((C, H, W) or (B, C, H, W)) is accepted too and a tensor is returned. Everything is plain torch,
so batched augmentation runs on the GPU when the batch lives there::

    aug = Compose([RandomAffine(degrees=10, translate=0.05, scale=(0.9, 1.1), seed=0),
                   RandomHorizontalFlip(0.5, swap={"left_lung": "right_lung"}, seed=0)])
    batch = aug(dataset.batch(range(64)))       # or ArrayDataset(..., transform=aug)

Geometric transforms resample images with (antialiased) bilinear interpolation and masks with
nearest neighbour on the same sampling grid, so a mask stays boolean and lands exactly where the
image content it annotates went. Labels and concepts are not changed (a finding moved out of the
field of view keeps its label: keep augmentations mild).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from .._image import size_pair

__all__ = ["Compose", "Resize", "ToChannels", "Normalize", "RandomAffine", "RandomHorizontalFlip", "RandomIntensity",
           "resize_images", "resize_masks", "to_channels", "affine"]

Size = int | Sequence[int]
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")


# ----------------------------------------------------------------------------- functional
def resize_images(images: torch.Tensor, size: Size, *, antialias: bool = True,
                  chunk: int = 512) -> torch.Tensor:
    """Resize images with (antialiased) bilinear interpolation, keeping the dtype.

    Args:
        images: (C, H, W) or (N, C, H, W), uint8 (0-255) or float.
        size: output size, an int (square) or (H, W).
        antialias: low-pass filter when downsampling (as PIL does); no effect when upsampling.
        chunk: images resized at a time (bounds the float copy of big uint8 datasets).

    Returns:
        The images at ``size``, same dtype (uint8 is rounded and clipped) and device.
    """
    h, w = size_pair(size, "size")
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be (C, H, W) or (N, C, H, W); got shape {tuple(images.shape)}.")
    if tuple(images.shape[-2:]) == (h, w):
        return images.clone()
    single = images.ndim == 3
    x = images[None] if single else images
    outs = []
    for i in range(0, max(x.shape[0], 1), chunk):
        part = x[i:i + chunk].float()
        part = F.interpolate(part, size=(h, w), mode="bilinear", align_corners=False,
                             antialias=antialias and (h < x.shape[-2] or w < x.shape[-1]))
        if images.dtype == torch.uint8:
            part = part.round_().clamp_(0, 255).to(torch.uint8)
        elif images.is_floating_point():
            part = part.to(images.dtype)
        outs.append(part)
    out = torch.cat(outs) if outs else x.new_zeros((0, x.shape[1], h, w))
    return out[0] if single else out


def resize_masks(masks: torch.Tensor | Mapping[str, torch.Tensor], size: Size
                 ) -> torch.Tensor | dict[str, torch.Tensor]:
    """Resize boolean masks with nearest neighbour (pixel centres, like PIL's NEAREST).

    Args:
        masks: (H, W) or (..., H, W) bool tensor, or a dict of them.
        size: output size, an int (square) or (H, W).

    Returns:
        Bool masks at ``size`` (a dict when a dict was given); an integer upscale repeats pixels.
    """
    if isinstance(masks, Mapping):
        return {k: resize_masks(v, size) for k, v in masks.items()}
    h, w = size_pair(size, "size")
    m = torch.as_tensor(masks)
    if m.ndim < 2:
        raise ValueError(f"masks must be (..., H, W); got shape {tuple(m.shape)}.")
    if tuple(m.shape[-2:]) == (h, w):
        return m.bool().clone()
    rows = _nearest_index(m.shape[-2], h, m.device)
    cols = _nearest_index(m.shape[-1], w, m.device)
    return m.bool()[..., rows[:, None], cols[None, :]]


def _nearest_index(n_in: int, n_out: int, device: Any = None) -> torch.Tensor:
    """Source index of each output pixel for nearest neighbour at pixel centres (= "nearest-exact")."""
    idx = ((torch.arange(n_out, dtype=torch.float32) + 0.5) * (n_in / n_out)).floor().long()
    return idx.clamp_(0, n_in - 1).to(device)


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert (C, H, W) / (N, C, H, W) images to ``channels`` channels (1 <-> 3).

    1 -> 3 repeats the grey channel; 3 -> 1 takes the luminance 0.299 R + 0.587 G + 0.114 B.
    The dtype is kept (uint8 luminance is rounded).
    """
    c = images.shape[-3]
    if channels == c:
        return images.clone()
    if c == 1 and channels == 3:
        reps = [1] * images.ndim
        reps[-3] = 3
        return images.repeat(*reps)
    if c == 3 and channels == 1:
        wts = torch.tensor(_LUMA, device=images.device).view(3, 1, 1)
        y = (images.float() * wts).sum(-3, keepdim=True)
        if images.dtype == torch.uint8:
            return y.round_().clamp_(0, 255).to(torch.uint8)
        return y.to(images.dtype)
    raise ValueError(f"cannot convert images with {c} channels to {channels}; "
                     "supported conversions are 1 -> 3 (repeat) and 3 -> 1 (luminance).")


def _split(x: Any) -> tuple[dict | None, torch.Tensor, bool]:
    """(dict or None, image, batched)."""
    if isinstance(x, torch.Tensor):
        img = x
    elif isinstance(x, Mapping) and "image" in x:
        img = x["image"]
    else:
        raise TypeError("transforms take a sample/batch dict with an 'image' entry or an image tensor; "
                        f"got {type(x).__name__}.")
    if img.ndim not in (3, 4):
        raise ValueError(f"image must be (C, H, W) or (B, C, H, W); got shape {tuple(img.shape)}.")
    return (dict(x) if isinstance(x, Mapping) else None), img, img.ndim == 4


def _with(d: dict | None, image: torch.Tensor, masks: dict | None = None) -> Any:
    if d is None:
        return image
    d["image"] = image
    if masks is not None:
        d["masks"] = masks
    return d


def affine(x: Any, angle: float | torch.Tensor = 0.0, translate: Sequence[float] | torch.Tensor = (0.0, 0.0),
           scale: float | torch.Tensor = 1.0, *, interpolation: str = "bilinear", fill: float = 0.0) -> Any:
    """Apply a given affine transform (about the image centre) to images and masks alike.

    Args:
        x: sample dict, batch dict or image tensor (see module docstring).
        angle: degrees, counter-clockwise as displayed; a float or (B,) per sample.
        translate: (dx, dy) in pixels (right, down); a pair or (B, 2).
        scale: zoom factor (> 1 enlarges); a float or (B,).
        interpolation: "bilinear" or "nearest" for the image; masks always use nearest.
        fill: image value outside the original field of view (masks are False there).

    Returns:
        The same kind of object, transformed.
    """
    d, img, batched = _split(x)
    if interpolation not in ("bilinear", "nearest"):
        raise ValueError(f"interpolation must be 'bilinear' or 'nearest'; got {interpolation!r}.")
    b = img.shape[0] if batched else 1
    h, w = img.shape[-2:]
    dev = img.device
    ang = torch.as_tensor(angle, dtype=torch.float32).reshape(-1).expand(b) * (math.pi / 180)
    sc = torch.as_tensor(scale, dtype=torch.float32).reshape(-1).expand(b)
    t = torch.as_tensor(translate, dtype=torch.float32).reshape(-1, 2).expand(b, 2)
    if (sc <= 0).any():
        raise ValueError(f"scale must be positive; got {scale!r}.")
    cos, sin = torch.cos(ang), torch.sin(ang)
    # forward map in centred pixel coordinates (x right, y down): p_out = s R p_in + t
    m = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2) * sc[:, None, None]
    minv = torch.linalg.inv(m)
    s = torch.tensor([w / 2.0, h / 2.0])
    # grid_sample wants, per output location in normalised coords, the input location
    lin = minv * s[None, None, :] / s[None, :, None]          # S^-1 M^-1 S
    off = -(minv @ t[..., None])[..., 0] / s[None, :]          # -S^-1 M^-1 t
    theta = torch.cat([lin, off[..., None]], -1).to(dev)
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    xi = img if batched else img[None]
    dtype = xi.dtype
    xf = xi.float() - fill
    out = F.grid_sample(xf, grid.to(xf.dtype), mode=interpolation, padding_mode="zeros",
                        align_corners=False) + fill
    out = out.to(dtype) if dtype.is_floating_point else out.round_().clamp_(0, 255).to(dtype)
    masks = None
    if d is not None and d.get("masks"):
        names = list(d["masks"])
        stack = torch.stack([d["masks"][k] if batched else d["masks"][k][None] for k in names], 1).float()
        ms = F.grid_sample(stack, grid.to(stack.dtype), mode="nearest", padding_mode="zeros",
                           align_corners=False) > 0.5
        masks = {k: (ms[:, i] if batched else ms[0, i]) for i, k in enumerate(names)}
    return _with(d, out if batched else out[0], masks)


# ----------------------------------------------------------------------------- classes
class Compose:
    """Apply transforms in order: ``Compose([Resize(64), RandomAffine(10, seed=0)])``."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(map(repr, self.transforms)) + "])"


class Resize:
    """Resize images and masks (always nearest) to ``size`` (int or (H, W)).

    Args:
        size: output size.
        antialias: low-pass filter images when downsampling (bilinear only).
        interpolation: "bilinear" (default) or "nearest" for the images.
    """

    def __init__(self, size: Size, antialias: bool = True, interpolation: str = "bilinear") -> None:
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"interpolation must be 'bilinear' or 'nearest'; got {interpolation!r}.")
        self.size, self.antialias, self.interpolation = size_pair(size, "size"), antialias, interpolation

    def __call__(self, x: Any) -> Any:
        d, img, _ = _split(x)
        if self.interpolation == "nearest":
            rows = _nearest_index(img.shape[-2], self.size[0], img.device)
            cols = _nearest_index(img.shape[-1], self.size[1], img.device)
            out = img[..., rows[:, None], cols[None, :]]
        else:
            out = resize_images(img, self.size, antialias=self.antialias)
        masks = resize_masks(d["masks"], self.size) if d is not None and d.get("masks") else None
        return _with(d, out, masks)

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class ToChannels:
    """Convert images to ``channels`` (1 -> 3 repeats grey, 3 -> 1 luminance); masks untouched."""

    def __init__(self, channels: int) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3; got {channels!r}.")
        self.channels = channels

    def __call__(self, x: Any) -> Any:
        d, img, _ = _split(x)
        return _with(d, to_channels(img, self.channels))

    def __repr__(self) -> str:
        return f"ToChannels({self.channels})"


class Normalize:
    """(image - mean) / std per channel, on images only (for models trained that way).

    The workbench's own models take images in [0, 1] and do not need this; use it for
    pretrained networks that expect e.g. ImageNet statistics. mean/std: scalars or one per channel.
    """

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if (self.std <= 0).any():
            raise ValueError(f"std must be positive; got {std!r}.")

    def __call__(self, x: Any) -> Any:
        d, img, _ = _split(x)
        c = img.shape[-3]
        if len(self.mean) not in (1, c) or len(self.std) not in (1, c):
            raise ValueError(f"mean/std have {len(self.mean)}/{len(self.std)} values but the images have "
                             f"{c} channels; give one value or one per channel.")
        mean = self.mean.to(img.device).view(-1, 1, 1)
        std = self.std.to(img.device).view(-1, 1, 1)
        return _with(d, (img.float() - mean) / std)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


def _range(v: float | Sequence[float] | None, name: str, symmetric_about: float) -> tuple[float, float]:
    if v is None:
        return (symmetric_about, symmetric_about)
    if isinstance(v, (int, float)):
        return (symmetric_about - float(v), symmetric_about + float(v))
    if isinstance(v, Sequence) and len(v) == 2:
        return (float(v[0]), float(v[1]))
    raise TypeError(f"{name} must be a number or a (low, high) pair; got {v!r}.")


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    if generator is not None:
        return generator
    return None if seed is None else torch.Generator().manual_seed(int(seed))


class RandomAffine:
    """Random rotation, translation and zoom, one draw per sample; masks follow exactly.

    Args:
        degrees: rotation range: d means U(-d, d); or (low, high).
        translate: max shift as a fraction of width/height: t or (tx, ty) means U(-tx W, tx W) etc.
        scale: zoom range (low, high), e.g. (0.9, 1.1); None for no zoom.
        interpolation: image interpolation, "bilinear" or "nearest" (masks: always nearest).
        fill: image value outside the field of view.
        seed: seeds a private generator (reproducible); None uses torch's global RNG.
        generator: a torch.Generator (CPU) to draw from instead of ``seed``.
    """

    def __init__(self, degrees: float | Sequence[float] = 0.0, translate: float | Sequence[float] | None = None,
                 scale: Sequence[float] | None = None, *, interpolation: str = "bilinear",
                 fill: float = 0.0, seed: int | None = None, generator: torch.Generator | None = None) -> None:
        self.degrees = _range(degrees, "degrees", 0.0)
        if translate is None:
            self.translate = (0.0, 0.0)
        elif isinstance(translate, (int, float)):
            self.translate = (float(translate), float(translate))
        else:
            self.translate = (float(translate[0]), float(translate[1]))
        self.scale = _range(scale, "scale", 1.0) if scale is not None else (1.0, 1.0)
        if min(self.scale) <= 0:
            raise ValueError(f"scale must be positive; got {scale!r}.")
        self.interpolation, self.fill = interpolation, fill
        self.generator = _generator(seed, generator)

    def _u(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.generator)

    def __call__(self, x: Any) -> Any:
        _, img, batched = _split(x)
        b = img.shape[0] if batched else 1
        h, w = img.shape[-2:]
        ang = self._u(b, *self.degrees)
        t = torch.stack([self._u(b, -self.translate[0] * w, self.translate[0] * w),
                         self._u(b, -self.translate[1] * h, self.translate[1] * h)], -1)
        sc = self._u(b, *self.scale)
        return affine(x, ang, t, sc, interpolation=self.interpolation, fill=self.fill)

    def __repr__(self) -> str:
        return f"RandomAffine(degrees={self.degrees}, translate={self.translate}, scale={self.scale})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p`` per sample, images and masks together.

    Flipping a chest radiograph swaps anatomical laterality: after a flip the mask named
    ``left_lung`` covers the other side of the image. Masks are NOT renamed unless ``swap``
    maps names to swap on flipped samples, e.g. ``swap={"left_lung": "right_lung"}`` (applied
    both ways). A warning is issued once if masks named left/right are flipped without ``swap``.
    Burnt-in markers ("L"/"R") are mirrored too; consider not flipping at all for laterality tasks.

    Args:
        p: flip probability per sample.
        swap: pairs of mask names exchanged on flipped samples.
        seed / generator: as in RandomAffine.
    """

    def __init__(self, p: float = 0.5, *, swap: Mapping[str, str] | None = None, seed: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1]; got {p!r}.")
        self.p = p
        self.swap = dict(swap or {})
        self.swap.update({v: k for k, v in list(self.swap.items())})
        self.generator = _generator(seed, generator)
        self._warned = False

    def __call__(self, x: Any) -> Any:
        d, img, batched = _split(x)
        b = img.shape[0] if batched else 1
        flip = torch.rand(b, generator=self.generator) < self.p
        masks = (d or {}).get("masks") or {}
        if not self.swap and not self._warned and flip.any():
            lat = [k for k in masks if "left" in k.lower() or "right" in k.lower()]
            if lat:
                warnings.warn(f"RandomHorizontalFlip flips masks {lat} without renaming them, so 'left' "
                              "masks end up on the other side; pass swap={'left_lung': 'right_lung'} to "
                              "swap names on flipped samples.", UserWarning, stacklevel=2)
                self._warned = True
        if not batched:
            if not flip[0]:
                return _with(d, img.clone(), dict(masks) if d is not None else None)
            new = {self.swap.get(k, k): m.flip(-1) for k, m in masks.items()}
            if d is not None and "mask_present" in d:  # pragma: no cover - samples have no mask_present
                d["mask_present"] = {self.swap.get(k, k): v for k, v in d["mask_present"].items()}
            return _with(d, img.flip(-1), new if d is not None else None)
        fl = flip.to(img.device)
        out = torch.where(fl.view(-1, 1, 1, 1), img.flip(-1), img)
        if d is None:
            return out
        new = {}
        present = d.get("mask_present") or {}
        new_present = {}
        for k, m in masks.items():
            src = self.swap.get(k, k)
            other = masks.get(src, m)  # the partner mask goes here on flipped samples
            mf = fl.to(m.device).view(-1, 1, 1)
            new[k] = torch.where(mf, other.flip(-1), m)
            if k in present:
                pk = present[k]
                po = present.get(src, pk)
                new_present[k] = torch.where(fl.to(pk.device), po, pk)
        d["masks"] = new
        if present:
            d["mask_present"] = {**present, **new_present}
        d["image"] = out
        return d

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p}, swap={self.swap})"


class RandomIntensity:
    """Random brightness, contrast, gamma and Gaussian noise per sample (images only, clipped to [0, 1]).

    Mimics site/scanner differences; masks, labels and geometry are untouched.

    Args:
        brightness: add U(-b, b).
        contrast: scale about each image's mean by U(1 - c, 1 + c).
        gamma: (low, high): x ** U(low, high); None for none.
        noise: standard deviation of added Gaussian noise.
        seed / generator: as in RandomAffine (noise is drawn on the CPU when seeded).
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, gamma: Sequence[float] | None = None,
                 noise: float = 0.0, *, seed: int | None = None, generator: torch.Generator | None = None) -> None:
        if min(brightness, contrast, noise) < 0:
            raise ValueError("brightness, contrast and noise must be >= 0; got "
                             f"{brightness!r}, {contrast!r}, {noise!r}.")
        self.brightness, self.contrast, self.noise = float(brightness), float(contrast), float(noise)
        self.gamma = _range(gamma, "gamma", 1.0) if gamma is not None else None
        if self.gamma is not None and min(self.gamma) <= 0:
            raise ValueError(f"gamma must be positive; got {gamma!r}.")
        self.generator = _generator(seed, generator)

    def __call__(self, x: Any) -> Any:
        d, img, batched = _split(x)
        xi = (img if batched else img[None]).float()
        if img.dtype == torch.uint8:
            xi = xi / 255.0
        b, dev = xi.shape[0], xi.device

        def u(lo: float, hi: float) -> torch.Tensor:
            return (lo + (hi - lo) * torch.rand(b, generator=self.generator)).to(dev).view(-1, 1, 1, 1)

        if self.gamma is not None:
            xi = xi.clamp(0, 1) ** u(*self.gamma)
        if self.contrast:
            mean = xi.mean(dim=(1, 2, 3), keepdim=True)
            xi = (xi - mean) * u(1 - self.contrast, 1 + self.contrast) + mean
        if self.brightness:
            xi = xi + u(-self.brightness, self.brightness)
        if self.noise:
            if self.generator is not None:
                n = torch.randn(xi.shape, generator=self.generator).to(dev)
            else:
                n = torch.randn_like(xi)
            xi = xi + self.noise * n
        out = xi.clamp_(0, 1)
        return _with(d, out if batched else out[0])

    def __repr__(self) -> str:
        return (f"RandomIntensity(brightness={self.brightness}, contrast={self.contrast}, gamma={self.gamma}, "
                f"noise={self.noise})")
