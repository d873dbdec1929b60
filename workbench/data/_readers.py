"""Reading one image file: PNG/JPEG/TIFF (8 and 16 bit), DICOM as radiologists store it, masks.

DICOM (``read_dicom``) follows the standard's pixel pipeline: stored values -> Modality LUT
(rescale slope/intercept, via pydicom) -> VOI LUT (a VOI LUT sequence, via pydicom, or the first
window centre/width, LINEAR / LINEAR_EXACT / SIGMOID as PS3.3 C.11.2.1.2 defines them; written
here because it maps straight onto [0, 1], where pydicom's maps onto the stored bit range) ->
MONOCHROME1 inverted, so bone is bright in every image. Without a window the image is min-max
scaled. Pixel spacing (``PixelSpacing``, else ``ImagerPixelSpacing``), the view position and
the window used go into the sample's ``meta``.

16-bit PNG/TIFF images are kept as float32 at full depth (value / 65535) until normalised.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W) or (H, W, 3): uint8, or float32 in [0, 1] for 16-bit/DICOM."""
    return read_image_meta(path)[0]


def read_image_meta(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """``(image, meta)``: the image as ``read_image`` returns it and what the file says about it
    (DICOM: pixel spacing, view position, window; other formats: nothing)."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return read_dicom(path)
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                a = np.asarray(im, dtype=np.float32)
                top = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
                a = a / top if mode != "F" else a
            elif mode in ("L", "1", "LA"):
                a = np.asarray(im.convert("L"))
            else:
                a = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"could not read image {path} ({type(e).__name__}: {e}); the file is corrupt or not an "
                         "image. Replace or remove it (and its labels.csv row).") from e
    if a.ndim == 3 and (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all():
        a = a[..., 0]  # RGB-encoded greyscale (common for chest X-ray JPEGs)
    if np.issubdtype(a.dtype, np.floating):
        if np.isnan(a).any():
            raise ValueError(f"image {path} contains NaN values; fix or remove it.")
        a = np.clip(a, 0.0, 1.0).astype(np.float32)
    return a, {}


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as e:
        raise ImportError("reading DICOM needs pydicom: `pip install pydicom` (or convert the images to PNG).") from e
    return pydicom


def _first(value: Any) -> float:
    """A DICOM value that may be multi-valued (several windows): its first entry as float."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """A DICOM VOI window onto [0, 1] (PS3.3 C.11.2.1.2: LINEAR, LINEAR_EXACT, SIGMOID).

    Examples:
        >>> window(np.array([0.0, 40.0, 80.0, 200.0]), center=40, width=80).round(3).tolist()
        [0.0, 0.506, 1.0, 1.0]
    """
    function = (function or "LINEAR").upper()
    x = x.astype(np.float64)
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"window width must be > 0 for SIGMOID; got {width}.")
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function in ("LINEAR", "LINEAR_EXACT"):
        if function == "LINEAR":
            if width < 1:
                raise ValueError(f"window width must be >= 1 for LINEAR; got {width}.")
            center, width = center - 0.5, width - 1.0
        elif width <= 0:
            raise ValueError(f"window width must be > 0 for LINEAR_EXACT; got {width}.")
        y = np.clip((x - center) / max(width, 1e-12) + 0.5, 0.0, 1.0) if width > 0 else (x > center).astype(float)
    else:
        raise ValueError(f"unknown VOI LUT function {function!r}; DICOM defines LINEAR, LINEAR_EXACT and SIGMOID.")
    return y.astype(np.float32)


def read_dicom(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """A single-frame greyscale DICOM as float32 (H, W) in [0, 1] and its meta (see the module docstring)."""
    pydicom = _pydicom()
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
        raw = ds.pixel_array
    except Exception as e:
        raise ValueError(f"could not read DICOM image {path} ({type(e).__name__}: {e}); the file is corrupt "
                         "or its pixel data needs a decoder plugin (see pydicom's docs).") from e
    if raw.ndim != 2:
        raise ValueError(f"DICOM {path} has pixel array shape {raw.shape}; only single-frame greyscale 2D images "
                         "are supported.")
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
    a = apply_modality_lut(raw, ds).astype(np.float64)
    if np.isnan(a).any():
        raise ValueError(f"image {path} contains NaN values; fix or remove it.")
    meta: dict[str, Any] = {}
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        item = ds.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2]) or 16
        # the LUT is indexed by (integer) modality values
        a = apply_voi_lut(np.rint(a).astype(np.int64), ds, index=0, prefer_lut=True).astype(np.float64)
        a /= float(2 ** bits - 1)
        meta["voi"] = "lut"
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        c, w = _first(ds.WindowCenter), _first(ds.WindowWidth)
        func = str(getattr(ds, "VOILUTFunction", "LINEAR") or "LINEAR")
        try:
            a = window(a, c, w, func)
        except ValueError as e:
            raise ValueError(f"DICOM {path}: {e}") from e
        meta["window"] = [c, w]
    else:
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    a = np.clip(a, 0.0, 1.0).astype(np.float32)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        a = 1.0 - a
    spacing = getattr(ds, "PixelSpacing", None) or getattr(ds, "ImagerPixelSpacing", None)
    if spacing is not None and len(spacing) >= 2:
        meta["pixel_spacing"] = [float(spacing[0]), float(spacing[1])]
    view = getattr(ds, "ViewPosition", None)
    if view:
        meta["view_position"] = str(view)
    return a, meta


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as (H, W) bool (> 127 of 255, or > 0.5 for float images, counts as inside)."""
    a = read_image(path)
    if a.ndim == 3:
        a = a.max(-1)
    return a > (127 if a.dtype == np.uint8 else 0.5)


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel for nearest neighbour at pixel centres (as ``resize_masks``)."""
    return np.minimum(((np.arange(n_out, dtype=np.float32) + 0.5) * np.float32(n_in / n_out)).astype(int), n_in - 1)


def nearest(m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize at pixel centres (same indices as ``resize_masks``)."""
    if m.shape == hw:
        return m
    return m[np.ix_(nearest_index(m.shape[0], hw[0]), nearest_index(m.shape[1], hw[1]))]


def prepare(a: np.ndarray, hw: tuple[int, int], channels: int, as_float: bool) -> np.ndarray:
    """(H, W[, 3]) -> (C, h, w): antialiased bilinear resize (PIL), channel conversion, dtype."""
    from PIL import Image
    if a.shape[:2] != hw:
        if a.dtype == np.uint8:
            a = np.asarray(Image.fromarray(a).resize(hw[::-1], Image.BILINEAR))
        else:
            a = np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize(hw[::-1], Image.BILINEAR))
            a = np.clip(a, 0.0, 1.0)
    x = a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)
    if as_float and x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    if x.shape[0] == 1 and channels == 3:
        x = np.repeat(x, 3, 0)
    elif x.shape[0] == 3 and channels == 1:
        y = np.tensordot(np.array((0.299, 0.587, 0.114), np.float32), x.astype(np.float32), 1)[None]
        x = np.clip(np.round(y), 0, 255).astype(np.uint8) if x.dtype == np.uint8 else y
    return x
