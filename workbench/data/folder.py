"""Folder datasets: ``images/<id>.png|jpg|jpeg|tif|bmp|dcm``, ``masks/<structure>/<id>.png``, ``labels.csv``.

Everything is read into memory (an ArrayDataset): fine for thousands of images at a few hundred
pixels; resize at load time (``size=``) for larger collections.

* ``labels.csv`` (optional) has an ``id`` column matching image file stems, the target in
  ``label_column`` (default "label"), an optional ``split`` column and any other columns, which
  are kept in each sample's ``meta``. When it exists, its rows (in file order) define the samples;
  images without a row are ignored with a warning.
* Labels: integers are kept as class indices (classes "0".."max"); strings (and other values)
  are mapped to their sorted unique values as class names. Two classes -> task "binary".
  ``label_column=[col, ...]`` makes a multilabel task from 0/1 columns.
  ``label_column=None`` (or no labels.csv) loads an unlabelled dataset: every label is 0 and the
  classes are ("unlabelled",) (task "multiclass" with one class; fine for maps and metrics that
  need no label, not for training).
* ``split``: with a ``split`` column only its matching rows are returned (``split=None`` or "all":
  every row); without one the folder is a single split and every sample is returned (with a
  warning when a split other than "train" is requested).
* Masks: a file ``masks/<structure>/<id>.png`` (0 / 255; > 127 counts as inside) means the structure
  is annotated for that image; a missing file means not annotated (``mask_present`` False).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from workbench.data._base import ArrayDataset
from workbench._image import size_pair

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm")


def read_image(path: Path) -> np.ndarray:
    """Read an image file as (H, W) or (H, W, 3): uint8, or float32 in [0, 1] for 16-bit/DICOM."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return _read_dicom(path)
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                a = np.asarray(im, dtype=np.float32)
                top = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
                a = a / top if mode != "F" else a
            elif mode in ("L", "1"):
                a = np.asarray(im.convert("L"))
            elif mode == "LA":
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
    return a


def _read_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
    except ImportError as e:
        raise ImportError(f"{path} is a DICOM file; reading DICOM needs pydicom: `pip install pydicom` "
                          "(or convert the images to PNG).") from e
    try:
        ds = pydicom.dcmread(path)
        a = ds.pixel_array.astype(np.float32)
    except Exception as e:
        raise ValueError(f"could not read DICOM image {path} ({type(e).__name__}: {e}); the file is corrupt "
                         "or its pixel data needs a decoder plugin (see pydicom's docs).") from e
    if a.ndim != 2:
        raise ValueError(f"DICOM {path} has pixel array shape {a.shape}; only single-frame 2D images are supported.")
    if np.isnan(a).any():
        raise ValueError(f"image {path} contains NaN values; fix or remove it.")
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        a = 1.0 - a
    return a


def _read_mask(path: Path) -> np.ndarray:
    a = read_image(path)
    if a.ndim == 3:
        a = a.max(-1)
    return a > (127 if a.dtype == np.uint8 else 0.5)


def _nearest(m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize at pixel centres (same indices as ``resize_masks``)."""
    if m.shape == hw:
        return m
    r = np.minimum(((np.arange(hw[0], dtype=np.float32) + 0.5) * np.float32(m.shape[0] / hw[0])).astype(int), m.shape[0] - 1)
    c = np.minimum(((np.arange(hw[1], dtype=np.float32) + 0.5) * np.float32(m.shape[1] / hw[1])).astype(int), m.shape[1] - 1)
    return m[np.ix_(r, c)]


def _prepare(a: np.ndarray, hw: tuple[int, int], channels: int, as_float: bool) -> np.ndarray:
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


def _as_py(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _labels(df: Any, column: str, csv: Path) -> tuple[torch.Tensor, tuple[str, ...]]:
    import pandas as pd
    col = df[column]
    missing = col.isna()
    if missing.any():
        ids = df.loc[missing, "id"].tolist()
        raise ValueError(f"{csv}: column {column!r} is empty for {len(ids)} row(s) (ids {ids[:5]}); fill in "
                         "the labels or drop those rows.")
    if pd.api.types.is_bool_dtype(col):
        col = col.astype(int)
    if pd.api.types.is_numeric_dtype(col):
        vals = col.to_numpy()
        if not np.array_equal(vals, np.round(vals)) or (vals < 0).any():
            raise ValueError(f"{csv}: numeric column {column!r} must hold class indices 0..C-1; got values such as "
                             f"{sorted(set(vals.tolist()))[:5]}. Use strings for named classes.")
        classes = tuple(str(i) for i in range(max(int(vals.max()) + 1, 2)))
        return torch.as_tensor(vals.astype(np.int64)), classes
    names = sorted(col.astype(str).unique())
    index = {c: i for i, c in enumerate(names)}
    return torch.tensor([index[v] for v in col.astype(str)]), tuple(names)


def load_folder(root: str | Path, split: str | None = "train", size: Any = None, *,
                label_column: str | Sequence[str] | None = "label", n: int | None = None,
                channels: int | None = None, name: str | None = None) -> ArrayDataset:
    """Load a folder dataset into memory (see the module docstring for the layout and rules).

    Args:
        root: folder with ``images/`` and optionally ``masks/`` and ``labels.csv``.
        split: rows of that ``split`` value; None or "all" for every row.
        size: resize images (antialiased bilinear) and masks (nearest) to int or (H, W) at load time;
            required when the images differ in size.
        label_column: the target column; a list of 0/1 columns for multilabel; None for no labels.
        n: keep only the first n samples.
        channels: 1 or 3 to force; default 1 if every image is greyscale, else 3.
        name: dataset name (default the folder name).

    Returns:
        ArrayDataset: uint8 images (N, C, H, W) (float for 16-bit/DICOM sources), masks per
        structure with ``mask_present``, meta from the other labels.csv columns.
    """
    import pandas as pd
    root = Path(root)
    img_dir = root / "images"
    if not img_dir.is_dir():
        npz = sorted(p.name for p in root.glob("*.npz"))
        hint = f" It holds .npz files ({', '.join(npz[:4])}): pass one of those paths instead." if npz else ""
        raise ValueError(f"{root} is not a folder dataset: it has no images/ folder. Expected images/<id>.png|jpg|dcm, "
                         f"optional masks/<structure>/<id>.png and labels.csv.{hint}")
    files: dict[str, Path] = {}
    for f in sorted(img_dir.iterdir()):
        if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
            if f.stem in files:
                raise ValueError(f"two images share the id {f.stem!r}: {files[f.stem].name} and {f.name}; keep one.")
            files[f.stem] = f
    if not files:
        raise ValueError(f"{img_dir} holds no images with extensions {IMAGE_EXTS}.")
    csv = root / "labels.csv"
    label_cols = [label_column] if isinstance(label_column, str) else list(label_column or [])
    if csv.is_file():
        try:
            df = pd.read_csv(csv, dtype={"id": str})
        except Exception as e:
            raise ValueError(f"could not read {csv} ({type(e).__name__}: {e}); it must be a CSV with a header.") from e
        if "id" not in df.columns:
            raise ValueError(f"{csv} has columns {list(df.columns)} but needs an 'id' column naming the image files.")
        missing_cols = [c for c in label_cols if c not in df.columns]
        if missing_cols:
            raise ValueError(f"{csv} has no label column {missing_cols[0]!r}; its columns are {list(df.columns)}. "
                             "Pass label_column=<one of them> (e.g. load(path, label_column='finding')), or "
                             "label_column=None to load without labels.")
        df["id"] = df["id"].astype(str).str.strip()
        with_ext = df["id"].str.lower().str.endswith(IMAGE_EXTS)
        df.loc[with_ext, "id"] = [Path(i).stem for i in df.loc[with_ext, "id"]]  # "cxr000.png" -> "cxr000"
        if df["id"].duplicated().any():
            raise ValueError(f"{csv}: duplicate ids {df.loc[df['id'].duplicated(), 'id'].tolist()[:5]}; ids must be unique.")
        no_image = [i for i in df["id"] if i not in files]
        if no_image:
            raise ValueError(f"{csv} lists {len(no_image)} id(s) without an image in {img_dir} (e.g. {no_image[:5]}); "
                             "add the images or remove those rows.")
        extra = len(files) - len(df)
        if extra > 0:
            warnings.warn(f"{extra} image(s) in {img_dir} have no row in {csv} and are ignored.", UserWarning,
                          stacklevel=3)
        if "split" in df.columns:
            if split not in (None, "all"):
                avail = sorted(df["split"].dropna().astype(str).unique())
                df = df[df["split"].astype(str) == split]
                if df.empty:
                    raise ValueError(f"{csv} has no rows with split == {split!r}; its splits are {avail} "
                                     "(split=None loads all rows).")
        elif split not in (None, "all", "train"):
            warnings.warn(f"{csv} has no 'split' column, so split={split!r} returns all {len(df)} samples; add a "
                          "'split' column to separate train/val/test.", UserWarning, stacklevel=3)
    else:
        if label_cols and label_column != "label":
            raise ValueError(f"{root} has no labels.csv, so label_column={label_column!r} cannot be used; add "
                             "labels.csv with an 'id' column, or use label_column=None.")
        label_cols = []
        df = pd.DataFrame({"id": list(files)})
        if split not in (None, "all", "train"):
            warnings.warn(f"{root} has no labels.csv with a 'split' column, so split={split!r} returns all "
                          f"{len(df)} samples.", UserWarning, stacklevel=3)
    df = df.reset_index(drop=True)
    if n is not None:
        df = df.iloc[:n].reset_index(drop=True)
    # --- labels
    if not label_cols:
        labels, classes, task = torch.zeros(len(df), dtype=torch.long), ("unlabelled",), "multiclass"
    elif isinstance(label_column, str):
        labels, classes = _labels(df, label_column, csv)
        task = "binary" if len(classes) == 2 else "multiclass"
    else:
        block = df[label_cols]
        if block.isna().any().any() or not block.isin([0, 1, True, False]).all().all():
            raise ValueError(f"{csv}: multilabel columns {label_cols} must hold only 0/1 values.")
        labels, classes, task = torch.as_tensor(block.to_numpy(dtype=np.float32)), tuple(label_cols), "multilabel"
    meta_cols = [c for c in df.columns if c != "id" and c not in label_cols]
    # one dict per row, also with no metadata columns (pandas 3.0.6 iterates no rows of a column-less frame)
    columns = [df[c].tolist() for c in meta_cols]
    meta = [{c: _as_py(col[r]) for c, col in zip(meta_cols, columns)} for r in range(len(df))]
    ids = df["id"].tolist()
    # --- masks
    mask_root = root / "masks"
    structures = sorted(d.name for d in mask_root.iterdir() if d.is_dir()) if mask_root.is_dir() else []
    mask_files = {s: {f.stem: f for f in (mask_root / s).iterdir()
                      if f.is_file() and f.suffix.lower() in IMAGE_EXTS} for s in structures}
    # --- read (numpy per image: small torch ops per image are slow on a busy CPU)
    arrays, mask_arrays = [], {s: {} for s in structures}
    for k, i in enumerate(ids):
        a = read_image(files[i])
        h, w = a.shape[:2]
        for s in structures:
            f = mask_files[s].get(i)
            if f is not None:
                m = _read_mask(f)
                if m.shape != (h, w):
                    raise ValueError(f"mask {f} is {m.shape[1]}x{m.shape[0]} (WxH) but its image {files[i].name} "
                                     f"is {w}x{h}; masks must have the image's geometry. Resize or re-export the mask.")
                mask_arrays[s][k] = m
        arrays.append(a)
    if size is None:
        shapes: dict[tuple, str] = {}
        for i, a in zip(ids, arrays):
            shapes.setdefault(a.shape[:2], i)
        if len(shapes) > 1:
            raise ValueError(f"images in {img_dir} differ in size (e.g. " + ", ".join(
                f"{v}: {k[1]}x{k[0]}" for k, v in list(shapes.items())[:3]) + "); pass size= to resize them at load time.")
        hw = arrays[0].shape[:2] if arrays else (1, 1)
    else:
        hw = size_pair(size, "size")
    n_ch = channels or (3 if any(a.ndim == 3 for a in arrays) else 1)
    is_float = any(a.dtype != np.uint8 for a in arrays)
    out = np.zeros((len(arrays), n_ch, *hw), np.float32 if is_float else np.uint8)
    for k, a in enumerate(arrays):
        out[k] = _prepare(a, hw, n_ch, is_float)
    full, pres = {}, {}
    for s in structures:
        stack = np.zeros((len(arrays), *hw), bool)
        for k, m in mask_arrays[s].items():
            stack[k] = _nearest(m, hw)
        full[s] = torch.from_numpy(stack)
        pres[s] = torch.tensor([k in mask_arrays[s] for k in range(len(arrays))], dtype=torch.bool)
    stacked = torch.from_numpy(out)
    return ArrayDataset(stacked, labels, classes=classes, task=task, masks=full, mask_present=pres,
                        meta=meta, ids=ids, name=name or root.name)
