"""CheXmask anatomy (Gaggion et al., 2024): lung and heart masks for public chest X-ray datasets.

CheXmask releases one CSV per source dataset: an image id column (named per source: ``dicom_id``
for MIMIC-CXR, ``Image Index`` for ChestX-ray8/NIH, ``ImageID`` for PadChest, ``image_id`` for
VinDr-CXR, ``Path`` for CheXpert...), the quality score ``Dice RCA (Mean)`` (and ``(Max)``),
``Landmarks``, the masks ``Left Lung``, ``Right Lung`` and ``Heart`` as run-length encoding,
and the mask's ``Height`` and ``Width``. Its RLE (``encode_rle`` / ``decode_rle``) is
"start length" pairs, starts 1-based, over the mask flattened row by row. Left and right follow
the patient (CheXmask's right lung lies on the image's left), like the phantom's ``left_lung``.

``attach_chexmask(dataset, csv_path, min_dice=0.7)`` returns a new dataset whose samples carry
``left_lung``, ``right_lung`` and ``heart`` masks, resized (nearest) to each image: decoded at
once for in-memory datasets, decoded on access (in DataLoader workers) for lazy folders, which
keep only the compact run arrays in memory. Rows below ``min_dice`` (the authors advise 0.7) are
left out; an image without a usable row has those structures not annotated (``mask_present``
False). CSV rows that match no image, duplicate rows and RLE that does not fit its stated
height and width are counted, reported in ``dataset.chexmask`` and a warning, never fatal.

Ids are matched as written, then by file stem (``00000001_000.png`` -> ``00000001_000``), then
by the path with separators as underscores (``train/patient1/study1/view1_frontal.jpg`` ->
``train_patient1_study1_view1_frontal``), so a folder dataset named after the source's files
or paths matches.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from workbench.data._base import ArrayDataset, BaseDataset, Sample

__all__ = ["attach_chexmask", "encode_rle", "decode_rle", "ChexmaskReport", "ID_COLUMNS", "STRUCTURES",
           "DICE_COLUMN"]

ID_COLUMNS = ("dicom_id", "Image Index", "ImageID", "image_id", "Path", "Image ID", "ImageId", "id")
STRUCTURES = {"Left Lung": "left_lung", "Right Lung": "right_lung", "Heart": "heart"}
DICE_COLUMN = "Dice RCA (Mean)"
_EXTS = (".png", ".jpg", ".jpeg", ".dcm", ".tif", ".tiff", ".bmp")


def encode_rle(mask: np.ndarray | torch.Tensor) -> str:
    """CheXmask's RLE of a 2-D mask: "start length" pairs, 1-based starts, row-major order.

    Examples:
        >>> encode_rle(np.array([[0, 1, 1], [1, 0, 0]]))
        '2 3'
    """
    m = mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"encode_rle takes one (H, W) mask; got shape {m.shape}.")
    flat = np.concatenate([[0], (m.reshape(-1) > 0).astype(np.int8), [0]])
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges[1::2] -= edges[::2]
    return " ".join(map(str, edges.tolist()))


def _parse(rle: Any, height: int, width: int) -> np.ndarray | None:
    """(k, 2) int64 of (0-based start, length), checked against height x width; None if empty.

    Raises:
        ValueError: not pairs of integers, negative values, or runs beyond height * width.
    """
    if rle is None or (isinstance(rle, float) and np.isnan(rle)) or str(rle).strip() == "":
        return None
    text = str(rle).strip()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            runs = np.fromstring(text, dtype=np.int64, sep=" ")  # text mode: 5x faster than split()
        except (ValueError, DeprecationWarning) as e:
            raise ValueError(f"not a run-length encoding of integers ({text[:40]!r}...)") from e
    if runs.size % 2:
        raise ValueError(f"an odd number of values ({runs.size}); RLE is start/length pairs")
    runs = runs.reshape(-1, 2)
    runs[:, 0] -= 1
    if (runs[:, 0] < 0).any() or (runs[:, 1] < 0).any():
        raise ValueError("negative or zero-based starts (CheXmask's starts are 1-based)")
    end = int((runs[:, 0] + runs[:, 1]).max()) if len(runs) else 0
    if end > height * width:
        raise ValueError(f"runs reach pixel {end} but Height x Width is {height} x {width} = {height * width}")
    return runs


def decode_rle(rle: str, height: int, width: int) -> np.ndarray:
    """A CheXmask RLE string as an (height, width) bool mask.

    Raises:
        ValueError: malformed RLE, or runs that do not fit height x width (the message says which).

    Examples:
        >>> decode_rle("2 3", 2, 3).astype(int).tolist()
        [[0, 1, 1], [1, 0, 0]]
    """
    try:
        runs = _parse(rle, int(height), int(width))
    except ValueError as e:
        raise ValueError(f"RLE does not fit a {height}x{width} mask: {e}.") from e
    return _paint(runs, int(height), int(width))


def _paint(runs: np.ndarray | None, height: int, width: int) -> np.ndarray:
    flat = np.zeros(height * width, dtype=bool)
    if runs is not None:
        for start, length in runs.tolist():  # a slice per run: faster than cumsum or repeat at 1024 px
            flat[start:start + length] = True
    return flat.reshape(height, width)


def _keys(value: str) -> list[str]:
    """Ways an id in a CheXmask CSV may name a dataset's image id (see the module docstring)."""
    v = str(value).strip()
    keys = [v]
    p = Path(v.replace("\\", "/"))
    stem = p.stem if p.suffix.lower() in _EXTS else p.name
    keys.append(stem)
    no_ext = v[: -len(p.suffix)] if p.suffix.lower() in _EXTS else v
    keys.append(no_ext.replace("\\", "/").strip("/").replace("/", "_"))
    return list(dict.fromkeys(keys))


@dataclass(frozen=True)
class ChexmaskReport:
    """What ``attach_chexmask`` found (``dataset.chexmask``).

    Attributes:
        csv: the CSV read.
        id_column: the id column used.
        rows: CSV rows read.
        matched: images that got a usable row (masks attached).
        unmatched_rows: CSV rows whose id matched no image in the dataset (counted, not an error).
        unmatched_examples: a few of those ids.
        below_min_dice: matched rows left out for a quality under ``min_dice``.
        bad_rle: (id, column, reason) for masks whose RLE did not fit their height and width (left out).
        duplicates: repeated rows for one image (the first is used).
        images_without_row: images of the dataset that no usable row covers.
        min_dice: the quality threshold used.
    """

    csv: str
    id_column: str
    rows: int
    matched: int
    unmatched_rows: int
    unmatched_examples: tuple[str, ...]
    below_min_dice: int
    bad_rle: tuple[tuple[str, str, str], ...]
    duplicates: int
    images_without_row: int
    min_dice: float
    structures: tuple[str, ...] = field(default=tuple(STRUCTURES.values()))


@dataclass
class _Runs:
    """Compact runs of every image's masks: one int64 (start, length) buffer per structure."""

    n: int
    hw: np.ndarray                              # (n, 2) mask height, width (0 where no row)
    offsets: dict[str, np.ndarray]              # structure -> (n + 1,) row offsets into runs
    runs: dict[str, np.ndarray]                 # structure -> (total, 2)
    present: dict[str, np.ndarray]              # structure -> (n,) bool

    def mask(self, s: str, i: int, out_hw: tuple[int, int]) -> np.ndarray:
        """Sample i's mask of structure s, nearest-resized to ``out_hw``."""
        h, w = (int(v) for v in self.hw[i])
        a, b = self.offsets[s][i], self.offsets[s][i + 1]
        return _sample_runs(self.runs[s][a:b], h, w, out_hw)


def _sample_runs(runs: np.ndarray, h: int, w: int, out_hw: tuple[int, int]) -> np.ndarray:
    """The (h, w) mask of ``runs`` sampled at the nearest-neighbour pixels of ``out_hw``, without
    painting the full mask: each output pixel's source index is looked up among the sorted runs
    (5-10x faster than decode + resize at 1024 -> 224 px)."""
    from workbench.data._readers import nearest_index
    if tuple(out_hw) == (h, w) or len(runs) == 0:
        return _paint(runs, h, w) if tuple(out_hw) == (h, w) else np.zeros(out_hw, bool)
    starts, ends = runs[:, 0], runs[:, 0] + runs[:, 1]
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    flat = nearest_index(h, out_hw[0])[:, None] * w + nearest_index(w, out_hw[1])[None, :]
    k = np.searchsorted(starts, flat, side="right") - 1
    return (k >= 0) & (flat < ends[np.maximum(k, 0)])


def _read_csv(csv_path: Path, id_column: str | None, usecols_extra: Sequence[str]) -> Any:
    import pandas as pd
    try:
        header = pd.read_csv(csv_path, nrows=0).columns.tolist()
    except Exception as e:
        raise ValueError(f"could not read {csv_path} ({type(e).__name__}: {e}); pass a CheXmask CSV (.csv or .csv.gz).") from e
    if id_column is None:
        id_column = next((c for c in ID_COLUMNS if c in header), None)
        if id_column is None:
            raise ValueError(f"{csv_path} has no id column this workbench knows ({list(ID_COLUMNS)}); its columns are "
                             f"{header[:12]}. Pass id_column=<the column naming the images>.")
    elif id_column not in header:
        raise ValueError(f"{csv_path} has no column {id_column!r}; its columns are {header[:12]}.")
    needed = ["Height", "Width", *usecols_extra]
    missing = [c for c in needed if c not in header]
    if missing:
        raise ValueError(f"{csv_path} lacks CheXmask column(s) {missing}; expected {needed} (its columns: {header[:12]}).")
    cols = [id_column, *[c for c in (DICE_COLUMN, *needed) if c in header]]
    return pd.read_csv(csv_path, usecols=cols, dtype={id_column: str}, chunksize=20_000), id_column, header


def _index_runs(data: Any, csv_path: Path, min_dice: float, id_column: str | None) -> tuple[_Runs, ChexmaskReport]:
    from workbench.data._info import dataset_ids
    ids = dataset_ids(data)
    where = {i: k for k, i in enumerate(ids)}
    n = len(ids)
    chunks, id_column, header = _read_csv(csv_path, id_column, list(STRUCTURES))
    has_dice = DICE_COLUMN in header
    if not has_dice and min_dice > 0:
        warnings.warn(f"{csv_path} has no {DICE_COLUMN!r} column, so min_dice={min_dice} cannot filter; every row is "
                      "used.", UserWarning, stacklevel=3)
    hw = np.zeros((n, 2), np.int64)
    per: dict[str, list] = {s: [None] * n for s in STRUCTURES.values()}
    taken = np.zeros(n, bool)
    rows = unmatched = below = dup = 0
    unmatched_ex: list[str] = []
    bad: list[tuple[str, str, str]] = []
    for chunk in chunks:
        rows += len(chunk)
        id_values = chunk[id_column].astype(str).tolist()
        dice = chunk[DICE_COLUMN].to_numpy(dtype=float) if has_dice else np.full(len(chunk), np.inf)
        heights, widths = chunk["Height"].to_numpy(), chunk["Width"].to_numpy()
        cols = {col: chunk[col].tolist() for col in STRUCTURES}
        for r, value in enumerate(id_values):
            k = next((where[key] for key in _keys(value) if key in where), None)
            if k is None:
                unmatched += 1
                if len(unmatched_ex) < 5:
                    unmatched_ex.append(value)
                continue
            if taken[k]:
                dup += 1
                continue
            if not dice[r] >= min_dice:  # NaN quality counts as below
                below += 1
                continue
            taken[k] = True
            try:
                h, w = int(heights[r]), int(widths[r])
                if h < 1 or w < 1:
                    raise ValueError
            except (TypeError, ValueError):
                bad.append((value, "Height/Width", f"{heights[r]!r} x {widths[r]!r} is not a mask size"))
                continue
            hw[k] = (h, w)
            for col, s in STRUCTURES.items():
                try:
                    per[s][k] = _parse(cols[col][r], h, w)
                except ValueError as e:
                    bad.append((value, col, str(e)))
    offsets, runs, present = {}, {}, {}
    for s, lst in per.items():
        lengths = np.array([0 if x is None else len(x) for x in lst], np.int64)
        offsets[s] = np.concatenate([[0], np.cumsum(lengths)])
        parts = [x for x in lst if x is not None]
        runs[s] = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
        present[s] = np.array([x is not None for x in lst], bool)
    got = np.zeros(n, bool)
    for p in present.values():
        got |= p
    report = ChexmaskReport(csv=str(csv_path), id_column=id_column, rows=rows, matched=int(got.sum()),
                            unmatched_rows=unmatched, unmatched_examples=tuple(unmatched_ex), below_min_dice=below,
                            bad_rle=tuple(bad), duplicates=dup, images_without_row=int(n - got.sum()),
                            min_dice=float(min_dice))
    return _Runs(n=n, hw=hw, offsets=offsets, runs=runs, present=present), report


class ChexmaskDataset(BaseDataset):
    """A dataset whose samples gain CheXmask masks, decoded on access (lazy folders and other
    datasets read from disk). Everything else is the wrapped dataset's; ``chexmask`` is the report.
    Samples of a lazy folder whose file size differs in shape from the mask's (not a rescaling)
    are refused: the CSV then belongs to images prepared otherwise (e.g. CheXmask's 1024 px
    preprocessed set against the original files)."""

    load_masks = True  # False (``workbench.data.without_masks``): samples skip decoding masks

    def __init__(self, base: BaseDataset, runs: _Runs, report: ChexmaskReport) -> None:
        self.base, self._runs, self.chexmask = base, runs, report
        self.classes, self.task, self.name = base.classes, base.task, base.name
        self.structures = tuple(dict.fromkeys([*base.structures, *STRUCTURES.values()]))
        self.concept_names = base.concept_names
        self.transform = base.transform
        for attr in ("labels", "ids", "meta", "image_shape", "files"):
            if hasattr(base, attr):
                setattr(self, attr, getattr(base, attr))
        base_present = getattr(base, "mask_present", {})
        self.mask_present = {**base_present, **{s: torch.from_numpy(runs.present[s]) for s in STRUCTURES.values()}}

    def __len__(self) -> int:
        return len(self.base)

    def _get(self, i: int) -> Sample:
        s = self.base._get(i)
        h, w = s["image"].shape[-2:]
        src = s.get("source_size")
        mh, mw = (int(v) for v in self._runs.hw[i])
        if src is not None and mh and _aspect_differs(src, (mh, mw)):
            raise ValueError(f"CheXmask masks of {s.get('id', i)!r} are {mw}x{mh} (WxH) but its image file is "
                             f"{src[1]}x{src[0]}; the CSV was made for images prepared otherwise (CheXmask ships "
                             "original-resolution and 1024 px preprocessed CSVs): attach the one matching your files.")
        masks = dict(s.get("masks") or {})
        for name in STRUCTURES.values() if self.load_masks else ():
            if self._runs.present[name][i]:
                masks[name] = torch.from_numpy(np.ascontiguousarray(self._runs.mask(name, i, (h, w))))
        return {**s, "masks": masks}


def _aspect_differs(a: Sequence[int], b: Sequence[int], tol: float = 0.02) -> bool:
    return abs(a[0] / a[1] - b[0] / b[1]) > tol * (a[0] / a[1])


def attach_chexmask(dataset: Any, csv_path: str | Path, min_dice: float = 0.7, id_column: str | None = None, *,
                    overwrite: bool = False) -> Any:
    """Attach CheXmask lung and heart masks to a dataset by image id (see the module docstring).

    Args:
        dataset: an in-memory dataset, a lazy folder (``load(folder, lazy=True)``), any workbench
            dataset, or a ``Subset`` / ``ConcatDataset`` of them (each part gets its masks).
        csv_path: a CheXmask CSV (``.csv`` or ``.csv.gz``), read in chunks.
        min_dice: rows with ``Dice RCA (Mean)`` below this are left out (0.7 as the authors advise;
            0 keeps all).
        id_column: the CSV column naming the images; default: the first of ``ID_COLUMNS`` present.
        overwrite: replace masks of the same names the dataset already has (else an error).

    Returns:
        A new dataset (the input is not modified) with ``left_lung``, ``right_lung`` and ``heart``
        masks resized to each image and ``mask_present`` False where no usable row exists; its
        ``chexmask`` attribute is a ``ChexmaskReport``. In-memory datasets stay in memory (masks
        decoded now); others decode on access.

    Raises:
        ValueError: a CSV without a known id column or CheXmask's columns, ``min_dice`` outside
            [0, 1], or masks the dataset already has (without ``overwrite``).

    Examples:
        >>> ds = load("/data/nih/images_folder", lazy=True, size=224)                    # doctest: +SKIP
        >>> ds = attach_chexmask(ds, "/data/chexmask/ChestX-Ray8.csv.gz", min_dice=0.7)  # doctest: +SKIP
        >>> ds.chexmask.matched, ds.structures                                           # doctest: +SKIP
    """
    from workbench._checks import check_dataset, check_number
    check_dataset(dataset, name="dataset")
    check_number(min_dice, "min_dice", low=0.0, high=1.0)
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise FileNotFoundError(f"no CheXmask CSV at {csv_path}; download it from PhysioNet (CheXmask database) and "
                                "pass its path.")
    if isinstance(dataset, torch.utils.data.Subset):
        return torch.utils.data.Subset(attach_chexmask(dataset.dataset, csv_path, min_dice, id_column,
                                                       overwrite=overwrite), dataset.indices)
    if isinstance(dataset, torch.utils.data.ConcatDataset):
        return torch.utils.data.ConcatDataset([attach_chexmask(d, csv_path, min_dice, id_column, overwrite=overwrite)
                                               for d in dataset.datasets])
    if not isinstance(dataset, BaseDataset):
        raise TypeError(f"attach_chexmask takes a workbench dataset (workbench.data.load) or a Subset/ConcatDataset "
                        f"of them; got {type(dataset).__name__}.")
    clash = [s for s in STRUCTURES.values() if s in dataset.structures]
    if clash and not overwrite:
        raise ValueError(f"the dataset already has masks {clash}; pass overwrite=True to replace them by CheXmask's.")
    runs, report = _index_runs(dataset, csv_path, float(min_dice), id_column)
    _warn(report)
    if isinstance(dataset, ArrayDataset):
        return _attach_in_memory(dataset, runs, report)
    return ChexmaskDataset(dataset, runs, report)


def _warn(r: ChexmaskReport) -> None:
    parts = []
    if r.unmatched_rows:
        parts.append(f"{r.unmatched_rows} CSV row(s) matched no image (e.g. {list(r.unmatched_examples[:3])})")
    if r.below_min_dice:
        parts.append(f"{r.below_min_dice} below min_dice={r.min_dice}")
    if r.bad_rle:
        ex = r.bad_rle[0]
        parts.append(f"{len(r.bad_rle)} mask(s) with RLE that does not fit its height and width, left out "
                     f"(e.g. {ex[0]} {ex[1]}: {ex[2]})")
    if r.duplicates:
        parts.append(f"{r.duplicates} duplicate row(s) (first kept)")
    if r.images_without_row:
        parts.append(f"{r.images_without_row} image(s) without CheXmask masks")
    if parts:
        warnings.warn(f"CheXmask {Path(r.csv).name}: masks attached to {r.matched} image(s); " + "; ".join(parts)
                      + " (details: dataset.chexmask).", UserWarning, stacklevel=3)


def _attach_in_memory(ds: ArrayDataset, runs: _Runs, report: ChexmaskReport) -> ArrayDataset:
    n, _, h, w = ds.images.shape
    masks, present = dict(ds.masks), dict(ds.mask_present)
    mismatched = [ds.ids[i] for i in range(n) if runs.hw[i, 0] and _aspect_differs((h, w), runs.hw[i])]
    if mismatched:
        warnings.warn(f"{len(mismatched)} image(s) (e.g. {mismatched[:3]}) differ in aspect ratio from their CheXmask "
                      f"masks ({h}x{w} vs e.g. {tuple(runs.hw[ds.ids.index(mismatched[0])])}); the masks are resized "
                      "to the images. Check that the CSV matches how the images were prepared.", UserWarning,
                      stacklevel=3)
    for s in STRUCTURES.values():
        stack = np.zeros((n, h, w), bool)
        for i in np.flatnonzero(runs.present[s]):
            stack[i] = runs.mask(s, int(i), (h, w))
        masks[s], present[s] = torch.from_numpy(stack), torch.from_numpy(runs.present[s].copy())
    out = ArrayDataset(ds.images, ds.labels, classes=ds.classes, task=ds.task, masks=masks, mask_present=present,
                       concepts=ds.concepts, concept_names=ds.concept_names, meta=ds.meta, ids=ds.ids,
                       transform=ds.transform, name=ds.name)
    out.chexmask = report
    return out
