"""Folder datasets: ``images/<id>.png|jpg|jpeg|tif|bmp|dcm``, ``masks/<structure>/<id>.png``, ``labels.csv``.

Two forms with the same samples, ``Sample`` dicts and ``.batch()``:

* in memory (an ``ArrayDataset``): every image read at load time; fast batched indexing. Fine for
  thousands of images at a few hundred pixels.
* lazy (a ``FolderDataset``): only the file list, labels and metadata are read at load time; each
  image (and its masks) is decoded and resized when a sample is accessed, in DataLoader workers
  when ``fit``, ``evaluate``, ``predict`` or a dataset-wide job reads it. Memory stays flat
  however many images the folder holds.

``load(folder, lazy=None)`` picks lazy when the folder holds more than ``LAZY_IMAGES`` (10,000)
images or the in-memory images would take more than ``LAZY_BYTES`` (1 GiB, estimated from the
first image and ``size=``); ``lazy=True/False`` forces either.

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
* Concepts: ``concept_columns=[col, ...]`` names 0/1 columns of labels.csv that become the dataset's
  concepts (``concepts`` (N, K), ``concept_names``; for concept bottlenecks); an empty cell is a missing
  label (NaN, masked out of the concept loss). They are not copied into ``meta``.
* Masks: a file ``masks/<structure>/<id>.png`` (0 / 255; > 127 counts as inside) means the structure
  is annotated for that image; a missing file means not annotated (``mask_present`` False).
* Images: 8-bit files stay uint8 in memory; 16-bit PNG/TIFF and DICOM are float32 at full depth
  (``workbench.data._readers``: DICOM windows, MONOCHROME1, pixel spacing and view position in meta).
  A lazy dataset without ``size=`` takes the first image's size and refuses an image of another
  size when it meets one; its channels are the first image's unless ``channels=`` says otherwise.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from workbench._checks import check_class_indices
from workbench._image import size_pair
from workbench.data._base import ArrayDataset, BaseDataset, Sample, Transform
from workbench.data._readers import IMAGE_EXTS, nearest, prepare, read_image, read_image_meta, read_mask

__all__ = ["load_folder", "FolderDataset", "read_image", "IMAGE_EXTS", "LAZY_IMAGES", "LAZY_BYTES"]

LAZY_IMAGES = 10_000
LAZY_BYTES = 1 << 30


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
        check_class_indices(vals, f"{csv}: column {column!r}")
        classes = tuple(str(i) for i in range(max(int(vals.max()) + 1, 2)))
        return torch.as_tensor(vals.astype(np.int64)), classes
    names = sorted(col.astype(str).unique())
    index = {c: i for i, c in enumerate(names)}
    return torch.tensor([index[v] for v in col.astype(str)]), tuple(names)


@dataclass
class _Index:
    """What a folder holds, read without decoding any image."""

    root: Path
    ids: list[str]
    files: list[Path]
    labels: torch.Tensor
    classes: tuple[str, ...]
    task: str
    meta: list[dict[str, Any]]
    structures: list[str]
    mask_files: dict[str, dict[str, Path]]
    name: str
    concepts: torch.Tensor | None = None
    concept_names: tuple[str, ...] = ()

    def masks(self, k: int, image_hw: tuple[int, int], out_hw: tuple[int, int]) -> dict[str, np.ndarray]:
        """Sample k's annotated masks, checked against its image's geometry and resized to ``out_hw``."""
        out = {}
        for s in self.structures:
            f = self.mask_files[s].get(self.ids[k])
            if f is None:
                continue
            m = read_mask(f)
            if m.shape != tuple(image_hw):
                raise ValueError(f"mask {f} is {m.shape[1]}x{m.shape[0]} (WxH) but its image {self.files[k].name} "
                                 f"is {image_hw[1]}x{image_hw[0]}; masks must have the image's geometry. Resize or "
                                 "re-export the mask.")
            out[s] = nearest(m, out_hw)
        return out


def _index(root: Path, split: str | None, label_column: Any, n: int | None, name: str | None,
           concept_columns: Sequence[str] | None = None) -> _Index:
    import pandas as pd
    img_dir = root / "images"
    if not img_dir.is_dir():
        npz = sorted(p.name for p in root.glob("*.npz"))
        hint = f" It holds .npz files ({', '.join(npz[:4])}): pass one of those paths instead." if npz else ""
        raise ValueError(f"{root} is not a folder dataset: it has no images/ folder. Expected images/<id>.png|jpg|dcm, "
                         f"optional masks/<structure>/<id>.png and labels.csv.{hint}")
    files: dict[str, Path] = {}
    for f in sorted(img_dir.iterdir()):
        if f.suffix.lower() in IMAGE_EXTS and f.is_file():
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
                          stacklevel=4)
        if "split" in df.columns:
            if split not in (None, "all"):
                avail = sorted(df["split"].dropna().astype(str).unique())
                df = df[df["split"].astype(str) == split]
                if df.empty:
                    raise ValueError(f"{csv} has no rows with split == {split!r}; its splits are {avail} "
                                     "(split=None loads all rows).")
        elif split not in (None, "all", "train"):
            warnings.warn(f"{csv} has no 'split' column, so split={split!r} returns all {len(df)} samples; add a "
                          "'split' column to separate train/val/test.", UserWarning, stacklevel=4)
    else:
        if label_cols and label_column != "label":
            raise ValueError(f"{root} has no labels.csv, so label_column={label_column!r} cannot be used; add "
                             "labels.csv with an 'id' column, or use label_column=None.")
        label_cols = []
        df = pd.DataFrame({"id": list(files)})
        if split not in (None, "all", "train"):
            warnings.warn(f"{root} has no labels.csv with a 'split' column, so split={split!r} returns all "
                          f"{len(df)} samples.", UserWarning, stacklevel=4)
    df = df.reset_index(drop=True)
    if n is not None:
        df = df.iloc[:n].reset_index(drop=True)
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
    concepts, concept_names = _concepts(df, concept_columns, csv if csv.is_file() else None)
    meta_cols = [c for c in df.columns if c != "id" and c not in label_cols and c not in concept_names]
    # one dict per row, also with no metadata columns (pandas 3.0.6 iterates no rows of a column-less frame)
    columns = [df[c].tolist() for c in meta_cols]
    meta = [{c: _as_py(col[r]) for c, col in zip(meta_cols, columns)} for r in range(len(df))]
    ids = df["id"].tolist()
    mask_root = root / "masks"
    structures = sorted(d.name for d in mask_root.iterdir() if d.is_dir()) if mask_root.is_dir() else []
    mask_files = {s: {f.stem: f for f in (mask_root / s).iterdir()
                      if f.suffix.lower() in IMAGE_EXTS and f.is_file()} for s in structures}
    return _Index(root=root, ids=ids, files=[files[i] for i in ids], labels=labels, classes=classes, task=task,
                  meta=meta, structures=structures, mask_files=mask_files, name=name or root.name,
                  concepts=concepts, concept_names=concept_names)


def _concepts(df: Any, columns: Sequence[str] | None, csv: Path | None) -> tuple[torch.Tensor | None, tuple[str, ...]]:
    """(N, K) float concepts (NaN where a cell is empty) from 0/1 columns of labels.csv."""
    import pandas as pd
    if columns is None:
        return None, ()
    columns = [columns] if isinstance(columns, str) else list(columns)
    if not columns:
        raise ValueError("concept_columns is empty; name the 0/1 columns of labels.csv that hold concepts.")
    if csv is None:
        raise ValueError(f"concept_columns={columns} needs a labels.csv with those columns; the folder has none.")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{csv} has no concept column(s) {missing}; its columns are {list(df.columns)}.")
    cols = []
    for c in columns:
        try:
            cols.append(pd.to_numeric(df[c].astype(object).replace({True: 1, False: 0}), errors="raise")
                        .to_numpy(dtype=np.float64))
        except (ValueError, TypeError):
            raise ValueError(f"{csv}: concept column {c!r} must hold 0/1 values (empty for a missing label); got "
                             f"values such as {df[c].dropna().astype(str).unique()[:5].tolist()}.") from None
    values = np.stack(cols, 1)
    known = values[~np.isnan(values)]
    if not np.isin(known, (0.0, 1.0)).all():
        bad = sorted(set(known[~np.isin(known, (0.0, 1.0))].tolist()))[:5]
        raise ValueError(f"{csv}: concept columns {columns} must hold 0/1 values (empty for a missing label); got "
                         f"{bad}.")
    return torch.as_tensor(values, dtype=torch.float32), tuple(columns)


def load_folder(root: str | Path, split: str | None = "train", size: Any = None, *,
                label_column: str | Sequence[str] | None = "label", n: int | None = None,
                channels: int | None = None, name: str | None = None,
                lazy: bool | None = None, concept_columns: Sequence[str] | None = None) -> ArrayDataset | "FolderDataset":
    """Load a folder dataset, in memory or lazily (see the module docstring for the layout and rules).

    Args:
        root: folder with ``images/`` and optionally ``masks/`` and ``labels.csv``.
        split: rows of that ``split`` value; None or "all" for every row.
        size: resize images (antialiased bilinear) and masks (nearest) to int or (H, W);
            required in memory when the images differ in size.
        label_column: the target column; a list of 0/1 columns for multilabel; None for no labels.
        n: keep only the first n samples.
        channels: 1 or 3 to convert; None: 3 if any image (lazy: the first image) is colour, else 1.
        name: dataset name (default the folder name).
        lazy: True for a ``FolderDataset`` read on access, False to read everything now, None to
            decide by size (``LAZY_IMAGES``, ``LAZY_BYTES``).
        concept_columns: 0/1 columns of labels.csv to load as concepts (empty cells: missing, NaN).

    Returns:
        ArrayDataset (uint8 images (N, C, H, W), float for 16-bit/DICOM sources) or FolderDataset,
        with masks per structure and ``mask_present``, meta from the other labels.csv columns.
    """
    root = Path(root)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None (keep); got {channels!r}.")
    if lazy not in (None, True, False):
        raise ValueError(f"lazy must be True, False or None (decide by size); got {lazy!r}.")
    index = _index(root, split, label_column, n, name, concept_columns)
    if lazy is None:
        lazy = _too_big(index, size, channels)
    if lazy:
        return FolderDataset(index, size=size, channels=channels)
    # --- read everything (numpy per image: small torch ops per image are slow on a busy CPU)
    arrays, metas, mask_arrays = [], [], []
    for k, f in enumerate(index.files):
        a, m = read_image_meta(f)
        arrays.append(a)
        metas.append({**index.meta[k], **m})
        mask_arrays.append(index.masks(k, a.shape[:2], a.shape[:2]))
    if size is None:
        shapes: dict[tuple, str] = {}
        for i, a in zip(index.ids, arrays):
            shapes.setdefault(a.shape[:2], i)
        if len(shapes) > 1:
            raise ValueError(f"images in {root / 'images'} differ in size (e.g. " + ", ".join(
                f"{v}: {k[1]}x{k[0]}" for k, v in list(shapes.items())[:3]) + "); pass size= to resize them at load time.")
        hw = arrays[0].shape[:2] if arrays else (1, 1)
    else:
        hw = size_pair(size, "size")
    n_ch = channels or (3 if any(a.ndim == 3 for a in arrays) else 1)
    is_float = any(a.dtype != np.uint8 for a in arrays)
    out = np.zeros((len(arrays), n_ch, *hw), np.float32 if is_float else np.uint8)
    for k, a in enumerate(arrays):
        out[k] = prepare(a, hw, n_ch, is_float)
    full, pres = {}, {}
    for s in index.structures:
        stack = np.zeros((len(arrays), *hw), bool)
        for k, ms in enumerate(mask_arrays):
            if s in ms:
                stack[k] = nearest(ms[s], hw)
        full[s] = torch.from_numpy(stack)
        pres[s] = torch.tensor([s in ms for ms in mask_arrays], dtype=torch.bool)
    return ArrayDataset(torch.from_numpy(out), index.labels, classes=index.classes, task=index.task, masks=full,
                        mask_present=pres, concepts=index.concepts, concept_names=index.concept_names, meta=metas,
                        ids=index.ids, name=index.name)


def _first_image(index: _Index) -> np.ndarray:
    if not index.files:
        raise ValueError(f"no samples selected in {index.root} (check split= and n=).")
    return read_image(index.files[0])


def _too_big(index: _Index, size: Any, channels: int | None) -> bool:
    """Whether holding the folder in memory would pass ``LAZY_IMAGES`` or ``LAZY_BYTES``."""
    if len(index.files) > LAZY_IMAGES:
        return True
    first = _first_image(index)
    hw = size_pair(size, "size") if size is not None else first.shape[:2]
    c = channels or (3 if first.ndim == 3 else 1)
    return len(index.files) * c * hw[0] * hw[1] * first.dtype.itemsize > LAZY_BYTES


class FolderDataset(BaseDataset):
    """A folder dataset read on access (``load(folder, lazy=True)``).

    Holds the file list, labels, metadata and which masks exist; ``dataset[i]`` decodes image i
    and its masks, resizes them (antialiased bilinear / nearest) and converts channels. Samples
    and ``.batch()`` are those of the in-memory form (images float in [0, 1]); DICOM fields join
    a sample's ``meta`` when it is read. Give it to ``fit``/``evaluate``/``predict``/jobs, which
    read it with DataLoader workers; ``torch.utils.data.Subset`` and ``ConcatDataset`` work too.

    Attributes:
        labels: (N,) or (N, L) labels, known without reading images.
        ids, meta, classes, task, structures: as ``ArrayDataset``.
        mask_present: {structure: (N,) bool}: which samples have a mask file.
        image_shape: (C, H, W) of every sample.
        files: the image paths.
    """

    lazy = True
    load_masks = True  # False (``workbench.data.without_masks``): samples skip reading their masks

    def __init__(self, index: _Index, *, size: Any = None, channels: int | None = None,
                 transform: Transform | None = None) -> None:
        first = _first_image(index)
        self.hw = size_pair(size, "size") if size is not None else tuple(int(s) for s in first.shape[:2])
        self.fixed_size = size is not None
        self.channels = channels or (3 if first.ndim == 3 else 1)
        self.image_shape = (self.channels, *self.hw)
        self._index = index
        self.files, self.ids, self.meta = index.files, index.ids, index.meta
        self.labels, self.classes, self.task = index.labels, index.classes, index.task
        self.structures = tuple(index.structures)
        self.mask_present = {s: torch.tensor([i in index.mask_files[s] for i in index.ids], dtype=torch.bool)
                             for s in index.structures}
        self.concepts, self.concept_names = index.concepts, tuple(index.concept_names)
        self.transform, self.name = transform, index.name

    def __len__(self) -> int:
        return len(self.files)

    def _get(self, i: int) -> Sample:
        a, file_meta = read_image_meta(self.files[i])
        if not self.fixed_size and a.shape[:2] != self.hw:
            raise ValueError(f"image {self.files[i]} is {a.shape[1]}x{a.shape[0]} but this lazy dataset's images are "
                             f"{self.hw[1]}x{self.hw[0]} (the first image's size); load it with size= to resize all.")
        x = torch.from_numpy(np.ascontiguousarray(prepare(a, self.hw, self.channels, True)))
        masks = {s: torch.from_numpy(np.ascontiguousarray(m))
                 for s, m in self._index.masks(i, a.shape[:2], self.hw).items()} if self.load_masks else {}
        return {"image": x, "label": self.labels[i], "masks": masks,
                "concepts": None if self.concepts is None else self.concepts[i],
                "meta": {**self.meta[i], **file_meta} if file_meta else self.meta[i], "id": self.ids[i], "index": i,
                "source_size": tuple(a.shape[:2])}  # the file's (H, W), for masks made at that size

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", lazy, image_shape={self.image_shape})"


