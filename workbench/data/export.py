"""Writing a dataset as a folder dataset (images as PNG or DICOM, masks, labels.csv) and its lung and
heart masks as a CheXmask CSV: to move data between tools, or to try the DICOM + CheXmask path on
the phantom before the real files arrive (``notebooks/07_datasets_at_scale``).

    >>> ds = load("phantom", n=32, size=128)                                          # doctest: +SKIP
    >>> write_folder(ds, "runs/phantom_dicom", format="dcm")                          # doctest: +SKIP
    >>> write_chexmask_csv(ds, "runs/phantom_chexmask.csv")                           # doctest: +SKIP
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["write_folder", "write_chexmask_csv"]


def _ids(data: Any) -> list[str]:
    from workbench.data._info import dataset_ids
    ids = dataset_ids(data)
    if len(set(ids)) != len(ids):
        raise ValueError("the dataset's ids are not unique; they name the files, so each must be unique.")
    return ids


def _write_dicom(path: Path, image: np.ndarray, pixel_spacing: float, view: str) -> None:
    """A greyscale digital X-ray DICOM (MONOCHROME2, 12 bits stored in 16, window over the full range)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray image for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition = "DX", view
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelSpacing = [pixel_spacing, pixel_spacing]
    ds.PixelData = np.round(np.clip(image, 0, 1) * 4095).astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def write_folder(data: Any, root: str | os.PathLike, *, format: str = "png", masks: bool | Sequence[str] = True,
                 pixel_spacing: float = 0.14, view: str = "PA", overwrite: bool = False) -> Path:
    """Write ``data`` as a folder dataset that ``workbench.data.load(root)`` reads back.

    Args:
        data: a dataset (in memory, lazy, Subset/ConcatDataset); images (C, H, W) in [0, 1].
        root: the folder to create: ``images/<id>.png|dcm``, ``masks/<structure>/<id>.png`` for
            annotated structures, ``labels.csv`` (``id``, ``label`` as the class index, which keeps the class order,
            and ``class_name``, read back into ``meta``).
        format: "png" (8-bit for one or three channels) or "dcm" (one-channel, 12-bit DICOM with a
            window over the full range, ``pixel_spacing`` mm and ``view`` position).
        masks: True writes every annotated structure, False none, a list only those structures.
        overwrite: write into a folder that already holds ``images/``.

    Returns:
        The folder.
    """
    from PIL import Image

    from workbench._checks import check_choice, check_dataset, check_output_path, check_range
    from workbench.data._info import dataset_info
    check_dataset(data)
    check_choice(format, "format", ("png", "dcm"))
    root = check_output_path(root, directory=True, name="root")
    if (root / "images").exists() and not overwrite:
        raise FileExistsError(f"{root} already holds images/; pass overwrite=True or pick a new folder.")
    info = dataset_info(data)
    ids = _ids(data)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["id,label,class_name"]
    for k in range(len(data)):
        s = data[k]
        check_range(s["image"], (0.0, 1.0), name=f"image {ids[k]!r}")  # not clipped silently (0-255, standardised)
        img = s["image"].detach().float().cpu().numpy()
        if format == "dcm":
            if img.shape[0] != 1:
                raise ValueError(f"DICOM export writes one-channel images; sample {ids[k]!r} has {img.shape[0]} "
                                 "channels (load with channels=1, or use format='png').")
            _write_dicom(root / "images" / f"{ids[k]}.dcm", img[0], pixel_spacing, view)
        else:
            a = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
            Image.fromarray(a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)).save(root / "images" / f"{ids[k]}.png")
        for name, m in (s.get("masks") or {}).items():
            if masks is False or (masks is not True and name not in masks):
                continue
            (root / "masks" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(torch.as_tensor(m).cpu().numpy().astype(np.uint8) * 255).save(
                root / "masks" / name / f"{ids[k]}.png")
        label = torch.as_tensor(s["label"])
        if label.ndim:
            raise ValueError("write_folder writes one label per image; multilabel datasets are not supported yet.")
        name = info.classes[int(label)] if int(label) < len(info.classes) else str(int(label))
        lines.append(f"{ids[k]},{int(label)},{name}")  # the index keeps the class order; the name goes to meta
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def write_chexmask_csv(data: Any, path: str | os.PathLike, *, id_column: str = "dicom_id",
                       structures: Sequence[str] = ("left_lung", "right_lung", "heart"), dice: float = 1.0) -> Path:
    """The lung and heart masks of ``data`` as a CheXmask CSV (``attach_chexmask`` reads it back).

    Args:
        data: a dataset whose samples carry masks named like ``structures``.
        path: the CSV to write.
        id_column: the id column's name (MIMIC-CXR's ``dicom_id`` by default).
        structures: our names of the left lung, right lung and heart masks, in that order.
        dice: the value written as ``Dice RCA (Mean)`` (these masks are ground truth: 1.0).

    Returns:
        The path.
    """
    import pandas as pd

    from workbench._checks import check_dataset, check_output_path
    from workbench._io import atomic_path
    from workbench.data.chexmask import DICE_COLUMN, STRUCTURES, encode_rle
    check_dataset(data)
    path = check_output_path(path, name="path")
    if len(structures) != 3:
        raise ValueError(f"structures names the left lung, right lung and heart masks (3 names); got {list(structures)}.")
    ids = _ids(data)
    rows = []
    for k in range(len(data)):
        s = data[k]
        h, w = s["image"].shape[-2:]
        row = {id_column: ids[k], DICE_COLUMN: float(dice), "Dice RCA (Max)": float(dice)}
        for col, ours in zip(STRUCTURES, structures):
            m = (s.get("masks") or {}).get(ours)
            row[col] = encode_rle(m) if m is not None else ""
        row.update({"Height": int(h), "Width": int(w)})
        rows.append(row)
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    return path
