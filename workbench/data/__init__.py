"""Datasets, sources and transforms (see DESIGN.md, "Data model").

    >>> from workbench import data
    >>> ds = data.load("phantom", n=64, size=64)                          # doctest: +SKIP
    >>> ds = data.load("medmnist:breastmnist", split="test")              # doctest: +SKIP
    >>> ds = data.load(data.shared_data_path() / "cxr_anatomy", label_column="finding")  # doctest: +SKIP
    >>> batch = ds.batch(range(16))   # image (16, C, H, W), masks {name: (16, H, W)}, mask_present
    >>> big = data.load("/data/nih_cxr14", lazy=True, size=224)          # doctest: +SKIP
    >>> big = data.attach_chexmask(big, "/data/chexmask/ChestX-Ray8.csv.gz")  # doctest: +SKIP

``workbench.data.phantom`` (the built-in anatomical phantom) is imported lazily.
"""
from __future__ import annotations

import importlib
from typing import Any

from workbench.data import transforms
from workbench.data._base import TASKS, ArrayDataset, BaseDataset, collate, label_map, to_numpy_image
from workbench.data._info import DatasetInfo, DatasetView, as_dataset, dataset_info, without_masks
from workbench.data._paths import default_data_dir, shared_data_path
from workbench.data.chexmask import attach_chexmask, decode_rle, encode_rle
from workbench.data.export import write_chexmask_csv, write_folder
from workbench.data.folder import FolderDataset
from workbench.data.sources import load
from workbench.data.transforms import resize_images, resize_masks

__all__ = ["load", "ArrayDataset", "BaseDataset", "collate", "label_map", "to_numpy_image", "TASKS",
           "shared_data_path", "default_data_dir", "transforms", "resize_images", "resize_masks", "phantom",
           "FolderDataset", "attach_chexmask", "encode_rle", "decode_rle", "dataset_info", "DatasetInfo", "as_dataset", "DatasetView", "without_masks",
           "write_folder", "write_chexmask_csv"]


def __getattr__(name: str) -> Any:
    if name == "phantom":
        return importlib.import_module("workbench.data.phantom")
    raise AttributeError(f"module 'workbench.data' has no attribute {name!r}")
