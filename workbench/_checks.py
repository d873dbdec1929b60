"""One validation layer for every public verb: check user input at the boundary, before any work.

Every public verb (``fit``, ``attribute``, ``attention_maps``, ``communities``, the evaluation and
figure functions, the loaders, the CLI, and each new capability) calls these functions on its
arguments first, so bad input fails at once with an error that says what was received, what was
expected and what to do (``STYLE.md``, "A good error"), instead of a torch/timm error deep inside
or a silently wrong result. They raise ``ValueError``/``TypeError`` (and ``PermissionError``,
``NotADirectoryError``, ``IsADirectoryError`` for paths), which the CLI prints as one line.

The API below is stable; each function returns its (converted) input so a verb can write
``images = check_images(images, model)``.

======================================  ===================================================
``check_images(images, model=None)``    tensor, (B, C, H, W) (one (C, H, W) is unsqueezed),
                                        float (uint8 with ``allow_uint8``), finite, in [0, 1]
                                        (hint when it looks like 0-255 or standardised),
                                        channels and size against ``model``
``model_input(model)``                  what a model takes: ``InputSpec(channels, size,
                                        multiple, value_range)``
``check_labels(labels, task=..., ...)`` class indices / 0-1 vectors: shape, no NaN, no
                                        fractions, range against ``num_outputs``
``check_outputs(num_outputs, ...)``     the model's outputs against the data's classes
``check_dataset(data)``                 a dataset or an ``(images, labels)`` pair, not empty
``check_data(data, model)``             the same, plus the images as ``model`` will see them
``check_masks(masks, like=images)``     dict / batch dict / tensor of (B, H, W) masks of the
                                        images' size and batch; optionally not all empty
``check_output_path(path)``             writable (probed) before work starts
``check_device(device)``                a valid device that exists here ("cuda" without a
                                        GPU raises)
``check_model(model)``                  a ``torch.nn.Module``
``check_int``, ``check_number``,        common arguments: positive ints, numbers in a range,
``check_choice``, ``check_index``,      one of a set, an index into a batch, a callable,
``check_callable``, ``check_result``    a result object of the expected kind
======================================  ===================================================

Images: the documented input is float in [0, 1]. Interpolation and augmentation may stray a hair
outside it, so values within ``RANGE_TOLERANCE`` (0.1) of the range pass. A model that takes
another range (standardised inputs, Hounsfield units) declares it with an attribute:
``model.input_range = (low, high)``, or ``None`` to skip the range check. The range and finiteness
are checked in one pass (``torch.aminmax``) with no copy of the images; cost at batch 1 is
measured in ``benchmarks/README.md`` (Validation).

Examples:
    >>> import torch
    >>> from workbench._checks import check_images, check_int, check_labels
    >>> check_images(torch.rand(2, 1, 32, 32)).shape
    torch.Size([2, 1, 32, 32])
    >>> check_images(torch.rand(2, 1, 8, 8) * 255)
    Traceback (most recent call last):
    ...
    ValueError: images range from ... to ... but workbench takes float images in [0, 1]; they look like 0-255 pixel values: pass images / 255. ...
    >>> check_labels(torch.tensor([0.0, 1.0, 1.0]), task="binary", num_outputs=2)
    tensor([0, 1, 1])
    >>> check_int(0, "epochs")
    Traceback (most recent call last):
    ...
    ValueError: epochs must be an int >= 1; got 0.

In a new verb::

    def explain_dataset(model, data, *, out, batch_size=64, device="auto"):
        check_model(model)
        data = check_dataset(data, name="data")
        check_int(batch_size, "batch_size")
        out = check_output_path(out, directory=True, name="out")
        dev = check_device(device)
        ...
        images = check_images(batch["image"], model)
"""
from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from workbench._device import resolve_device

__all__ = ["RANGE_TOLERANCE", "InputSpec", "model_input", "check_images", "check_range", "check_stored_images",
           "check_labels", "check_class_indices", "check_outputs", "check_dataset", "check_data", "is_pair", "check_masks",
           "check_output_path", "check_device", "check_model", "check_int", "check_number", "check_choice",
           "check_index", "check_callable", "check_result"]

RANGE_TOLERANCE = 0.1
_UNSET: Any = object()


class InputSpec(NamedTuple):
    """What a model takes.

    Attributes:
        channels: C, or None when unknown.
        size: (H, W) the model requires exactly (timm ViTs with a fixed patch grid), or None.
        multiple: (h, w) the image size must be a multiple of (a ViT's patch size), or None.
        value_range: (low, high) of the pixel values, or None (unchecked).
    """

    channels: int | None
    size: tuple[int, int] | None
    multiple: tuple[int, int] | None
    value_range: tuple[float, float] | None


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def model_input(model: nn.Module) -> InputSpec:
    """The channels, size and value range ``model`` takes, as far as it says.

    Channels from a timm patch embedding or the first ``Conv2d``; an exact size only for timm
    ViTs with a fixed grid (``strict_img_size`` and no dynamic size); the value range from
    ``model.input_range`` when set (``None`` disables the range check), else (0, 1).

    Examples:
        >>> import timm
        >>> m = timm.create_model("resnet18", in_chans=1, num_classes=2)
        >>> model_input(m)
        InputSpec(channels=1, size=None, multiple=None, value_range=(0.0, 1.0))
    """
    value_range = getattr(model, "input_range", _UNSET)
    if value_range is _UNSET:
        value_range = (0.0, 1.0)
    elif value_range is not None:
        value_range = (float(value_range[0]), float(value_range[1]))
    channels = size = multiple = None
    pe = getattr(model, "patch_embed", None)
    proj = getattr(pe, "proj", None)
    if isinstance(proj, nn.Conv2d):
        channels = proj.in_channels
        dynamic = bool(getattr(model, "dynamic_img_size", False) or getattr(pe, "dynamic_img_size", False))
        if not dynamic and getattr(pe, "img_size", None) is not None and getattr(pe, "strict_img_size", True):
            size = _pair(pe.img_size)
        if not getattr(pe, "dynamic_img_pad", False) and getattr(pe, "patch_size", None) is not None:
            multiple = _pair(pe.patch_size)
    else:
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                channels = m.in_channels
                break
    return InputSpec(channels, size, multiple, value_range)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _range_message(name: str, lo: float, hi: float, value_range: tuple[float, float]) -> str:
    a, b = value_range
    msg = f"{name} range from {_fmt(lo)} to {_fmt(hi)} but workbench takes float images in [{_fmt(a)}, {_fmt(b)}]"
    if (a, b) == (0.0, 1.0):
        if lo >= -RANGE_TOLERANCE and hi > 1.5:
            msg += "; they look like 0-255 pixel values: divide them by 255."
        elif lo < -RANGE_TOLERANCE:
            msg += ("; they look standardised (mean/std, e.g. transforms.Normalize): workbench models standardise "
                    "inside their first layer (normalize='auto'), so pass the [0, 1] images.")
        else:
            msg += "; rescale them (or clamp(0, 1) if the excess is an artefact)."
    else:
        msg += "; rescale them to the model's range."
    return msg + (" If this model really takes another range, set model.input_range = (low, high) "
                  "(or None to skip this check).")


def _nonfinite_message(x: torch.Tensor, name: str) -> str:
    flat = x.detach().reshape(x.shape[0], -1)
    bad = (~torch.isfinite(flat)).any(1).nonzero().flatten().tolist()
    n_nan = int(torch.isnan(flat).sum())
    n_inf = int(torch.isinf(flat).sum())
    return (f"{name} contain non-finite values ({n_nan} NaN and {n_inf} inf pixels, in images {bad[:10]}"
            f"{' ...' if len(bad) > 10 else ''} of {x.shape[0]}); clean or drop those images first "
            "(e.g. torch.nan_to_num, or filter the dataset).")


def check_range(x: torch.Tensor, value_range: tuple[float, float] | None = (0.0, 1.0), *,
                name: str = "images") -> None:
    """Finite values within ``value_range`` (+- ``RANGE_TOLERANCE`` of its width), in one pass.

    ``value_range=None`` checks finiteness only. uint8 tensors are always in range.
    """
    if x.dtype == torch.uint8 or x.numel() == 0:
        return
    if x.dtype == torch.bool or not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32,
                                                                          torch.int64)):
        return
    lo_t, hi_t = torch.aminmax(x.detach())  # one pass; NaN propagates, inf shows as a bound
    lo, hi = float(lo_t), float(hi_t)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(_nonfinite_message(x, name))
    if value_range is None:
        return
    a, b = value_range
    tol = RANGE_TOLERANCE * (b - a)
    if lo < a - tol or hi > b + tol:
        raise ValueError(_range_message(name, lo, hi, (a, b)))


def check_stored_images(images: torch.Tensor, name: str = "images") -> None:
    """For datasets' float image storage: finite, and not 0-255 values stored as floats.

    Looser than :func:`check_range` (a dataset does not know its model; a standardised store is
    judged when a verb meets the model): one ``aminmax`` pass.
    """
    if not images.is_floating_point() or images.numel() == 0:
        return
    lo_t, hi_t = torch.aminmax(images.detach())
    lo, hi = float(lo_t), float(hi_t)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(_nonfinite_message(images, name))
    if lo >= -RANGE_TOLERANCE and hi > 1.5:
        raise ValueError(_range_message(name, lo, hi, (0.0, 1.0)))


def check_images(images: Any, model: nn.Module | None = None, *, name: str = "images", allow_uint8: bool = False,
                 value_range: Any = "model", single: bool = True) -> torch.Tensor:
    """Validate a batch of images and return it as a ``(B, C, H, W)`` tensor (no copy).

    Args:
        images: ``(B, C, H, W)`` (or one ``(C, H, W)`` when ``single``) float tensor in [0, 1]; a
            numpy array is wrapped without a copy.
        model: when given, the channels, size (ViTs) and value range are checked against
            :func:`model_input`.
        name: the argument's name in messages.
        allow_uint8: accept uint8 (0-255) tensors (for verbs documented to scale them by 1/255).
        value_range: ``"model"`` (the model's range, else (0, 1)), a ``(low, high)`` pair, or None
            (finiteness only).
        single: accept one ``(C, H, W)`` image (returned as a batch of one).

    Returns:
        The images, ``(B, C, H, W)``.

    Raises:
        TypeError: not a tensor, or an integer/bool dtype.
        ValueError: wrong shape, empty batch, NaN/inf, out of range, channels or size that the
            model does not take.
    """
    x = images
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        hint = (" (a list of (C, H, W) tensors: stack them with torch.stack)" if isinstance(x, (list, tuple)) else "")
        raise TypeError(f"{name} must be a (B, C, H, W) float tensor in [0, 1]; got {type(images).__name__}{hint}.")
    if x.ndim == 3 and single:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        hint = " For one (H, W) image add the batch and channel axes: image[None, None]." if x.ndim == 2 else ""
        raise ValueError(f"{name} have shape {tuple(x.shape)}; expected (B, C, H, W)"
                         f"{' (or one (C, H, W) image)' if single else ''}.{hint}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (B = 0); pass at least one image.")
    if x.device.type == "meta":
        raise ValueError(f"{name} are on the 'meta' device and hold no data; pass real tensors.")
    if x.dtype == torch.uint8:
        if not allow_uint8:
            raise TypeError(f"{name} are uint8 (0-255) but this function takes float images in [0, 1]: convert "
                            "them with .float() / 255 (uint8 is the datasets' storage format; dataset.batch() "
                            "returns float images).")
    elif not x.is_floating_point():
        raise TypeError(f"{name} have dtype {x.dtype}; expected float images in [0, 1] (convert 0-255 integers "
                        "with .float() / 255).")
    spec = model_input(model) if model is not None else None
    if spec is not None:
        c, h, w = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
        if spec.channels is not None and c != spec.channels:
            fix = ("workbench.data.transforms.ToChannels(%d), or load the data with channels=%d"
                   % (spec.channels, spec.channels)) if spec.channels in (1, 3) and c in (1, 3) else \
                "create the model with in_chans=%d" % c
            raise ValueError(f"{name} have {c} channel(s) (shape {tuple(x.shape)}) but the model takes "
                             f"{spec.channels}; convert them ({fix}).")
        if spec.size is not None and (h, w) != spec.size:
            raise ValueError(f"{name} are {h}x{w} (shape {tuple(x.shape)}) but the model was built for "
                             f"{spec.size[0]}x{spec.size[1]}; resize them (workbench.data.resize_images(images, "
                             f"{spec.size}), or load the data with size={spec.size[0]}) or create the model "
                             f"with img_size=({h}, {w}).")
        if spec.multiple is not None and (h % spec.multiple[0] or w % spec.multiple[1]):
            raise ValueError(f"{name} are {h}x{w}, not a multiple of the model's patch size "
                             f"{spec.multiple[0]}x{spec.multiple[1]}; resize them.")
    if value_range == "model":
        value_range = spec.value_range if spec is not None else (0.0, 1.0)
    check_range(x, value_range, name=name)
    return x


# ------------------------------------------------------------------------------------------- labels
def check_labels(labels: Any, *, task: str | None = None, num_outputs: int | None = None, n: int | None = None,
                 name: str = "labels") -> torch.Tensor:
    """Validate labels and return them as a tensor: ``(N,)`` long, or ``(N, L)`` float for multilabel.

    Args:
        labels: ``(N,)`` or ``(N, 1)`` integer class indices (floats holding whole numbers and bools
            are accepted), or ``(N, L)`` 0/1 for ``task="multilabel"``.
        task: "binary", "multiclass" or "multilabel"; None infers multilabel from an (N, L>1) shape.
        num_outputs: the model's outputs: class indices must lie in ``0..num_outputs-1`` and
            multilabel labels must have ``num_outputs`` columns.
        n: the number of images the labels belong to.
        name: the argument's name in messages.

    Raises:
        TypeError: not numeric.
        ValueError: wrong shape or length, NaN, fractional class labels, out of range.
    """
    t = labels
    if not isinstance(t, torch.Tensor):
        arr = np.asarray(t)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"{name} must be numeric class indices (a tensor or array of ints); got "
                            f"{type(labels).__name__} of {arr.dtype}. Map class names to indices first "
                            "(e.g. {name: i for i, name in enumerate(classes)}).")
        t = torch.as_tensor(arr)
    if t.dtype == torch.bool:
        t = t.long()
    if t.is_complex():
        raise TypeError(f"{name} have dtype {t.dtype}; expected integer class indices.")
    if n is not None and (t.ndim == 0 or t.shape[0] != n):
        raise ValueError(f"{name} have {t.shape[0] if t.ndim else 0} rows but there are {n} images; pass one "
                         "label per image.")
    if task is None:
        task = "multilabel" if t.ndim == 2 and t.shape[1] > 1 else "multiclass"
    if t.is_floating_point() and t.numel() and bool(torch.isnan(t).any()):
        raise ValueError(f"{name} contain NaN; every image needs a label (drop unlabelled images).")
    if task == "multilabel":
        if t.ndim != 2:
            raise ValueError(f"multilabel {name} must be (N, L) 0/1; got shape {tuple(t.shape)}.")
        if num_outputs is not None and t.shape[1] != num_outputs:
            raise ValueError(f"multilabel {name} have {t.shape[1]} columns but the model has {num_outputs} "
                             f"outputs; create it with num_classes={t.shape[1]}.")
        if t.numel() and not bool(((t == 0) | (t == 1)).all()):
            raise ValueError(f"multilabel {name} must hold 0/1 values; got values such as "
                             f"{t[(t != 0) & (t != 1)].unique()[:5].tolist()}.")
        return t.float()
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 1:
        raise ValueError(f"{name} have shape {tuple(t.shape)}; expected (N,) class indices (or task='multilabel' "
                         "for (N, L) 0/1 labels).")
    if t.is_floating_point() and t.numel():
        frac = t != torch.round(t)
        if bool(frac.any()):
            raise ValueError(f"{name} hold fractional values (e.g. {[round(v, 4) for v in t[frac][:3].tolist()]}) but class labels are "
                             "integers 0..C-1 and would be truncated; pass class indices (for soft or several "
                             "targets per image use task='multilabel' with (N, L) 0/1 labels).")
    t = t.long()
    if t.numel() and num_outputs is not None:
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= num_outputs:
            bad = t[(t < 0) | (t >= num_outputs)].unique()[:5].tolist()
            raise ValueError(f"{name} contain class(es) {bad} (range {lo}..{hi}) but the model has {num_outputs} "
                             f"outputs (classes 0..{num_outputs - 1}); create it with num_classes="
                             f"{max(hi + 1, 2)} or fix the labels.")
    return t


def check_class_indices(values: Any, where: str) -> None:
    """Class indices inferred as ``0..max`` must leave no class without samples.

    A stray value such as 255 (a common "unlabelled" marker) among 0/1 labels would otherwise make
    a 256-class task with 253 empty classes. ``where`` names the source in the message.
    """
    present = np.unique(np.asarray(values)).astype(np.int64)
    if present.size == 0 or present.max() < 2:
        return
    top = int(present.max())
    missing = sorted(set(range(top + 1)) - set(present.tolist()))
    if missing:
        hint = (" 255 often marks an unlabelled or ignored sample: drop those samples or give them a real class."
                if top == 255 else "")
        shown = present.tolist()[:10]
        raise ValueError(f"{where} uses class indices {shown}{' ...' if present.size > 10 else ''}, which would make "
                         f"{top + 1} classes of which {len(missing)} ({missing[:5]}{' ...' if len(missing) > 5 else ''}) "
                         f"have no sample; class indices must run 0..C-1 without gaps.{hint} To keep the values, "
                         "name the classes explicitly (classes=[...]).")


def check_outputs(num_outputs: int, *, num_classes: int, task: str, name: str = "the model") -> None:
    """The model's number of outputs must equal the data's classes (binary tasks: 2 logits)."""
    if num_classes and num_outputs != num_classes:
        what = "labels" if task == "multilabel" else "classes"
        raise ValueError(f"{name} has {num_outputs} outputs but the data has {num_classes} {what}; create the "
                         f"model with num_classes={num_classes} (len(dataset.classes); 2 for binary tasks).")


# ------------------------------------------------------------------------------------------- data
def is_pair(data: Any) -> bool:
    """Whether ``data`` is an ``(images, labels)`` pair (images a tensor, array or list of tensors)."""
    if not isinstance(data, (tuple, list)) or len(data) != 2 or isinstance(data[0], Mapping):
        return False
    first = data[0]
    return torch.is_tensor(first) or isinstance(first, np.ndarray) or (
        isinstance(first, (list, tuple)) and len(first) > 0 and torch.is_tensor(first[0]))


def check_dataset(data: Any, *, name: str = "data", nonempty: bool = True, tensors: bool = True) -> Any:
    """A dataset (``len`` and indexing) or, when ``tensors``, an ``(images, labels)`` pair or an
    images tensor; not empty (when ``nonempty``).

    Raises:
        TypeError: a plain list of samples or anything without ``len``/indexing.
        ValueError: no samples.
    """
    pair = is_pair(data)
    if not tensors and (pair or torch.is_tensor(data)):
        raise TypeError(f"{name} must be a workbench dataset (workbench.data.load(...)) whose samples carry 'image' "
                        "(and 'masks'), not tensors; wrap images as workbench.data.ArrayDataset(images, labels, "
                        "classes=..., task=..., masks=...).")
    if isinstance(data, (str, bytes, os.PathLike)):
        raise TypeError(f"{name} is a {type(data).__name__} ({str(data)[:60]!r}); pass a dataset (e.g. "
                        f"workbench.data.load({str(data)[:40]!r})) or an (images, labels) pair of tensors.")
    if not pair and isinstance(data, (list, tuple)):
        raise TypeError(f"{name} is a plain {type(data).__name__} of {len(data)} items; pass a dataset "
                        "(workbench.data.load(...), or workbench.data.ArrayDataset(images, labels, classes=..., "
                        "task=...)) or an (images, labels) pair of tensors.")
    if not pair and not torch.is_tensor(data) and not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise TypeError(f"{name} must be a workbench dataset (e.g. workbench.data.load(...)) or an (images, labels) "
                        f"pair of tensors; got {type(data).__name__}.")
    if nonempty:
        n = len(data[0]) if pair else len(data)
        if n == 0:
            raise ValueError(f"{name} is empty (0 samples); check the source, split and n= you loaded it with.")
    return data


def check_data(data: Any, model: nn.Module, *, name: str = "data") -> Any:
    """The data of a verb that runs ``model`` on it (fit, evaluate, predict, pruning scores, SAE and
    explain jobs): :func:`check_dataset`, then the images as the model will see them.

    An images tensor or an ``(images, labels)`` pair is checked whole (:func:`check_images`,
    :func:`check_labels`) and returned with converted labels; a dataset's stored float images are
    checked for NaN/inf and range in one pass (uint8 storage always fits), and (without a
    transform) its first sample for channels, size and range. Verbs should also check the first
    batch they feed the model (``check_images(batch["image"], model, value_range=None)``): that is
    the image after the dataset's transform and any augmentation.

    Returns:
        ``data``, or for tensors the checked ``images`` / ``(images, labels)``.
    """
    from workbench._train_data import TensorSource

    if isinstance(data, TensorSource):  # already an adapter made from checked tensors
        return data
    check_dataset(data, name=name)
    if torch.is_tensor(data) or isinstance(data, np.ndarray):
        return check_images(data, model, name=f"{name} images", single=False)
    if is_pair(data):
        images = check_images(data[0], model, name=f"{name} images", single=False)
        labels = check_labels(data[1], n=len(images), name=f"{name} labels")
        return images, labels
    stored = getattr(data, "images", None)
    if torch.is_tensor(stored) and stored.is_floating_point():
        check_range(stored, model_input(model).value_range, name=f"{name} images")
    if getattr(data, "transform", None) is None and len(data):
        from workbench.data._info import without_masks

        first = without_masks(data)[0]  # the image only: a lazy folder's masks are not read for it
        if isinstance(first, Mapping) and torch.is_tensor(first.get("image")):
            check_images(first["image"], model, name=f"{name} images", allow_uint8=True)
    return data


def _mask_dict(masks: Any, name: str) -> dict[str, Any]:
    if isinstance(masks, Mapping) and "masks" in masks and isinstance(masks["masks"], Mapping):
        masks = masks["masks"]
    if isinstance(masks, Mapping):
        if not masks:
            raise ValueError(f"{name} is an empty dict; pass at least one {{structure: (B, H, W) bool}} entry.")
        return {str(k): v for k, v in masks.items()}
    if isinstance(masks, (torch.Tensor, np.ndarray)):
        return {"mask": masks}
    raise TypeError(f"{name} must be a dict {{structure: (B, H, W) bool}}, a batch dict (dataset.batch(...)) or a "
                    f"(B, H, W) tensor; got {type(masks).__name__}.")


def check_masks(masks: Any, like: Any = None, *, name: str = "masks", nonempty: bool = False) -> dict[str, Any]:
    """Masks of the images' size (and batch): ``{structure: (B, H, W) or (H, W)}``.

    Args:
        masks: a dict {structure: mask}, a batch dict (its ``"masks"``), or one tensor (named "mask").
        like: images ``(B, C, H, W)``, maps ``(B, H, W)``, or an ``(H, W)`` / ``(B, H, W)`` shape
            the masks must match (a batch of 1 broadcasts); None checks shapes only.
        name: the argument's name in messages.
        nonempty: raise when every mask is empty (nothing to score).

    Returns:
        The masks as a dict (values unchanged).
    """
    d = _mask_dict(masks, name)
    ref_hw = ref_b = None
    if like is not None:
        shape = tuple(like.shape) if hasattr(like, "shape") else tuple(like)
        if len(shape) == 2:
            ref_hw = shape
        else:
            ref_hw, ref_b = tuple(shape[-2:]), shape[0]
    any_set = False
    for k, m in d.items():
        shape = tuple(m.shape)
        if len(shape) == 4 and shape[1] == 1:
            shape = (shape[0], *shape[2:])
        if len(shape) not in (2, 3):
            raise ValueError(f"mask {k!r} has shape {tuple(m.shape)}; expected (B, H, W) or (H, W).")
        if ref_hw is not None and shape[-2:] != tuple(ref_hw):
            raise ValueError(f"mask {k!r} is {shape[-2]}x{shape[-1]} but the images are {ref_hw[0]}x{ref_hw[1]}; "
                             f"resize the masks with the images (workbench.data.resize_masks(masks, {tuple(ref_hw)}), "
                             "or load the data with size=...).")
        if ref_b is not None and len(shape) == 3 and shape[0] not in (1, ref_b) and ref_b != 1:
            raise ValueError(f"mask {k!r} holds {shape[0]} images but there are {ref_b}; pass the masks of the same "
                             "batch.")
        if nonempty and not any_set:
            any_set = bool(torch.as_tensor(m).bool().any())
    if nonempty and not any_set:
        raise ValueError(f"every mask in {name} ({', '.join(d)}) is empty, so there is nothing to score; pass "
                         "annotated masks (mask_present tells which structures are annotated).")
    return d


# ------------------------------------------------------------------------------------------- paths, devices
def check_output_path(path: str | os.PathLike, *, name: str = "path", directory: bool = False) -> Path:
    """Make sure ``path`` can be written before any work starts; returns it as a ``Path``.

    Creates the missing parent folders (the writer would) and probes the folder with a temporary
    file, which also catches read-only file systems and permissions that ``os.access`` misses.

    Args:
        path: a file path, or a folder when ``directory``.
        name: the argument's name in messages (``"--out"`` in the CLI).
        directory: ``path`` is a folder to write into.

    Raises:
        NotADirectoryError: a component of the path is a file.
        IsADirectoryError: a file path that is an existing folder.
        PermissionError: the folder cannot be created or written.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or pathlib.Path); got {type(path).__name__}.")
    p = Path(path).expanduser()
    if directory:
        if p.exists() and not p.is_dir():
            raise NotADirectoryError(f"{name} {p} is a file, not a folder; pass a folder to write into.")
        folder = p
    else:
        if p.is_dir():
            raise IsADirectoryError(f"{name} {p} is a folder; pass a file path (e.g. {p / 'name'}).")
        folder = p.parent
    anc = folder
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise NotADirectoryError(f"cannot write {name} {p}: {anc} is a file, not a folder; pick another path.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".workbench-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PermissionError(f"cannot write {name} {p}: the folder {folder} is not writable "
                              f"({e.strerror or e}); pick a folder you can write to.") from e
    return p


def check_device(device: str | torch.device | None = "auto") -> torch.device:
    """``resolve_device`` plus availability: "cuda" without a GPU raises a clear ValueError."""
    return resolve_device(device)


def check_model(model: Any, name: str = "model") -> nn.Module:
    """A ``torch.nn.Module``; raises TypeError otherwise."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module (e.g. workbench.models.create(...) or "
                        f"workbench.models.load(path)); got {type(model).__name__}.")
    return model


# ------------------------------------------------------------------------------------------- common arguments
def check_int(value: Any, name: str, *, minimum: int | None = 1, maximum: int | None = None,
              none_ok: bool = False) -> int | None:
    """An int (numpy ints too, never bool) within ``[minimum, maximum]``."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int{_bounds(minimum, maximum)}{' or None' if none_ok else ''}; "
                        f"got {value!r}.")
    v = int(value)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise ValueError(f"{name} must be an int{_bounds(minimum, maximum)}; got {v}.")
    return v


def _bounds(lo: Any, hi: Any, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi}"
    return ""


def check_number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, none_ok: bool = False) -> float | None:
    """A finite real number within the given bounds (open or closed); returns it as float."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number{_bounds(low, high, low_open, high_open)}; got {value!r}.")
    v = float(value)
    bad = not math.isfinite(v)
    bad |= low is not None and (v <= low if low_open else v < low)
    bad |= high is not None and (v >= high if high_open else v > high)
    if bad:
        raise ValueError(f"{name} must be a number{_bounds(low, high, low_open, high_open)}; got {value!r}.")
    return v


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """One of ``choices``."""
    if value not in tuple(choices):
        raise ValueError(f"{name} must be one of {list(choices)}; got {value!r}.")
    return value


def check_index(index: Any, n: int, *, name: str = "index", what: str = "images") -> int:
    """An index into ``n`` items (negative counts from the end); returns it non-negative."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"{name} must be an int; got {index!r}.")
    i = int(index)
    if not -n <= i < n:
        raise ValueError(f"{name}={i} is out of range for {n} {what}; pass 0..{n - 1} (or -{n}..-1).")
    return i % n


def check_result(obj: Any, attrs: Sequence[str], what: str) -> Any:
    """A result object a function draws or reads (duck-typed by ``attrs``); ``what`` names it and its
    maker, e.g. ``"an Atlas (workbench.sae.atlas)"``. Raises TypeError otherwise."""
    if not all(hasattr(obj, a) for a in attrs):
        raise TypeError(f"expected {what}; got {type(obj).__name__}.")
    return obj


def check_callable(value: Any, name: str, example: str = "") -> Callable:
    """A callable; ``example`` shows one in the error (e.g. "workbench.data.transforms.RandomAffine(10)")."""
    if not callable(value):
        raise TypeError(f"{name} must be callable{f' (e.g. {example})' if example else ''}; got {value!r}.")
    return value
