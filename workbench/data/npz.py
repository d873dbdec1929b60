"""MedMNIST sources: ``"medmnist:<name>[@size]"`` and any MedMNIST-layout ``.npz`` file.

A MedMNIST-layout file holds ``{split}_images`` (N, H, W) or (N, H, W, 3) uint8 and
``{split}_labels`` (N,) or (N, 1) (or (N, L) 0/1 for multilabel) for split in train/val/test.
Local files are always read without the network; the ``medmnist`` package downloads a missing
file into ``data/medmnist/`` (or ``data_dir``) when ``download=True`` and the machine is online.
"""
from __future__ import annotations

import functools
import importlib.util
import re
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from workbench._checks import check_class_indices
from workbench.data._base import TASKS, ArrayDataset
from workbench.data._paths import default_data_dir, shared_data_path

SPLITS = ("train", "val", "test")
MEDMNIST_SIZES = (28, 64, 128, 224)


@functools.lru_cache(maxsize=1)
def _info() -> dict[str, dict]:
    """medmnist's INFO dict, read from medmnist/info.py alone (importing the package takes seconds)."""
    mod = sys.modules.get("medmnist")
    if mod is not None:
        return mod.INFO
    spec = importlib.util.find_spec("medmnist")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - medmnist is a dependency
        return {}
    path = Path(list(spec.submodule_search_locations)[0]) / "info.py"
    info_spec = importlib.util.spec_from_file_location("_workbench_medmnist_info", path)
    module = importlib.util.module_from_spec(info_spec)
    try:
        info_spec.loader.exec_module(module)
    except Exception:  # pragma: no cover - fall back to the normal import
        from medmnist import INFO
        return INFO
    return module.INFO


def medmnist_names() -> tuple[str, ...]:
    """The 2D MedMNIST dataset names this loader supports (e.g. "breastmnist")."""
    return tuple(k for k, v in _info().items() if not k.endswith("3d"))


def _task_and_classes(info: dict) -> tuple[str, tuple[str, ...]]:
    labels = info["label"]
    classes = tuple(labels[k] for k in sorted(labels, key=int))
    t = info["task"]
    if "multi-label" in t:
        return "multilabel", classes
    return ("binary" if len(classes) == 2 else "multiclass"), classes


def _stem_name(path: Path) -> str:
    return re.sub(r"_(28|64|128|224)$", "", path.stem.lower())


def load_npz(path: str | Path, split: str = "train", *, task: str | None = None,
             classes: Sequence[str] | None = None, n: int | None = None, name: str | None = None) -> ArrayDataset:
    """Load one split of a MedMNIST-layout ``.npz`` into an in-memory ArrayDataset.

    Args:
        path: the .npz file.
        split: "train", "val" or "test".
        task: "binary", "multiclass" or "multilabel"; default from MedMNIST's INFO when the file
            name is a known dataset (e.g. breastmnist_64.npz), else binary/multiclass from the labels.
        classes: class names; default from INFO, else "0".."C-1" over all splits in the file.
        n: keep only the first n samples.
        name: dataset name for ids and repr; default the file stem.

    Returns:
        ArrayDataset with uint8 images (N, C, H, W), C = 1 or 3.
    """
    path = Path(path)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} for a MedMNIST-layout .npz; got {split!r}.")
    try:
        npz = np.load(path, allow_pickle=False)
        keys = sorted(npz.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"could not read {path} as a .npz archive ({type(e).__name__}: {e}); the file is "
                         "corrupt or not a .npz (write one with numpy.savez). Re-download or replace it.") from e
    ki, kl = f"{split}_images", f"{split}_labels"
    if ki not in keys or kl not in keys:
        raise ValueError(f"{path.name} has keys {keys} but a MedMNIST-layout file needs {ki!r} and {kl!r} "
                         f"(keys '<split>_images' and '<split>_labels' for split in {SPLITS}); rename the "
                         "arrays or pick a split the file has.")
    try:
        images, labels = npz[ki], npz[kl]
    except Exception as e:  # zlib / truncated member
        raise ValueError(f"could not read arrays from {path} ({type(e).__name__}: {e}); the file is corrupt.") from e
    info = _info().get(name or _stem_name(path))
    n_img = images.shape[0] if images.ndim else 0
    # --- images
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3):
        images = np.moveaxis(images, -1, 1)
    else:
        raise ValueError(f"{path.name}: {ki} has shape {images.shape}; expected (N, H, W) or (N, H, W, 3) "
                         "(3D MedMNIST volumes are not supported yet).")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"{path.name}: {ki} has dtype {images.dtype}; expected uint8 (0-255) or float in [0, 1].")
        if np.isnan(images).any():
            raise ValueError(f"{path.name}: {ki} contains NaN values; clean or drop those images first.")
        if images.size and (images.min() < 0 or images.max() > 1):
            raise ValueError(f"{path.name}: float {ki} must lie in [0, 1]; got [{images.min()}, {images.max()}]. "
                             "Store uint8 0-255 or rescale.")
        images = images.astype(np.float32)
    # --- labels
    if labels.shape[:1] != (n_img,):
        raise ValueError(f"{path.name}: {kl} has shape {labels.shape} but there are {n_img} images; "
                         "labels need one row per image, (N,) or (N, 1).")
    if np.issubdtype(labels.dtype, np.floating) and np.isnan(labels).any():
        raise ValueError(f"{path.name}: {kl} contains NaN; every image needs a label (drop unlabelled images).")
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)
            or labels.dtype == bool):
        raise ValueError(f"{path.name}: {kl} has dtype {labels.dtype}; expected integer class indices.")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if task is None:
        if info is not None:
            task, info_classes = _task_and_classes(info)
            classes = classes or info_classes
        elif labels.ndim == 2:
            raise ValueError(f"{path.name}: {kl} has shape {labels.shape}: several label columns. If each column "
                             "is a separate 0/1 finding pass task='multilabel'; otherwise store (N,) class indices.")
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}.")
    if task == "multilabel":
        if labels.ndim != 2:
            raise ValueError(f"{path.name}: task 'multilabel' needs {kl} of shape (N, L); got {labels.shape}.")
        classes = tuple(classes or (str(i) for i in range(labels.shape[1])))
    else:
        if labels.ndim != 1:
            raise ValueError(f"{path.name}: {kl} has shape {labels.shape}; expected (N,) or (N, 1) class indices"
                             " (or pass task='multilabel' for (N, L) 0/1 labels).")
        if labels.size and not np.array_equal(labels, np.round(labels)):
            raise ValueError(f"{path.name}: {kl} holds non-integer values; expected class indices 0..C-1.")
        if classes is None:
            every = [labels.reshape(-1)] + [np.asarray(npz[f"{s}_labels"]).reshape(-1) for s in SPLITS
                                            if s != split and f"{s}_labels" in keys and npz[f"{s}_labels"].size]
            check_class_indices(np.concatenate(every), f"{path.name} ({', '.join(SPLITS)} labels)")
            top = max(int(v.max()) if v.size else 0 for v in every)
            classes = tuple(str(i) for i in range(max(top + 1, 2)))
        task = task or ("binary" if len(classes) == 2 else "multiclass")
    if n is not None:
        images, labels = images[:n], labels[:n]
    stem = name or _stem_name(path)
    ids = [f"{stem}_{split}_{i:06d}" for i in range(images.shape[0])]
    meta = [{"split": split} for _ in ids]
    return ArrayDataset(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(np.asarray(labels)),
                        classes=tuple(classes), task=task, meta=meta, ids=ids, name=stem)


def parse_medmnist(source: str, size: Any = None) -> tuple[str, int, Any]:
    """"medmnist:<name>[@<size>]" -> (name, file size, size left to resize to or None)."""
    spec = source.split(":", 1)[1].strip().lower()
    name, _, at = spec.partition("@")
    names = medmnist_names()
    if name not in names:
        hint = " (3D volumes are not supported yet)" if name in _info() else ""
        raise ValueError(f"unknown MedMNIST dataset {name!r}{hint}; valid names: {', '.join(names)}.")
    if at:
        if not at.isdigit() or int(at) not in MEDMNIST_SIZES:
            raise ValueError(f"MedMNIST size must be one of {MEDMNIST_SIZES}; got {at!r} in {source!r}.")
        return name, int(at), size
    if isinstance(size, int) and size in MEDMNIST_SIZES:
        return name, size, None
    return name, 28, size


def _file(name: str, size: int) -> str:
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def find_medmnist(name: str, size: int = 28, data_dir: str | Path | None = None) -> tuple[Path | None, list[Path]]:
    """Look for a local MedMNIST file; returns (path or None, folders searched)."""
    dirs: list[Path] = []
    if data_dir is not None:
        dirs += [Path(data_dir), Path(data_dir) / "medmnist"]
    shared = shared_data_path()
    if shared is not None:
        dirs.append(shared / "medmnist")
    dirs.append(default_data_dir() / "medmnist")
    for d in dirs:
        if (d / _file(name, size)).is_file():
            return d / _file(name, size), dirs
    return None, dirs


def load_medmnist(name: str, split: str = "train", size: int = 28, *, data_dir: str | Path | None = None,
                  download: bool = True, n: int | None = None, task: str | None = None,
                  fallback: bool = False) -> ArrayDataset:
    """Load MedMNIST ``name`` at file size ``size`` (28/64/128/224), reading a local file if any.

    Local files are searched in ``data_dir`` (and data_dir/medmnist), ``shared_data_path()/medmnist``
    and ``data/medmnist``. Otherwise, with ``download=True``, the ``medmnist`` package downloads the
    file into ``data_dir`` (default ``data/medmnist``). With ``fallback=True``, when that fails but
    the dataset is local at another size, that file is returned instead (with a warning; the caller
    resizes it).
    """
    path, searched = find_medmnist(name, size, data_dir)
    if path is None and fallback:
        others = [(s, find_medmnist(name, s, data_dir)[0]) for s in sorted(MEDMNIST_SIZES, reverse=True) if s != size]
        others = [(s, p) for s, p in others if p is not None]
        if others:
            try:
                return load_medmnist(name, split, size, data_dir=data_dir, download=download, n=n, task=task)
            except FileNotFoundError:
                s, p = others[0]
                warnings.warn(f"{_file(name, size)} is not available offline; resizing the local {p.name} "
                              f"({s} px) instead.", UserWarning, stacklevel=3)
                return load_npz(p, split, task=task, n=n, name=name)
    if path is None:
        root = Path(data_dir) if data_dir is not None else default_data_dir() / "medmnist"
        info = _info()[name]
        url = info.get("url" if size == 28 else f"url_{size}", "the MedMNIST Zenodo record")
        where = ", ".join(str(d) for d in searched)
        todo = (f"download it from {url} into {root}, pass data_dir= to the folder holding it, or set "
                "WORKBENCH_SHARED_DATA to a folder with medmnist/" + _file(name, size))
        if not download:
            raise FileNotFoundError(f"{_file(name, size)} was not found (looked in {where}) and download=False; {todo}.")
        try:
            import medmnist
            root.mkdir(parents=True, exist_ok=True)
            getattr(medmnist, info["python_class"])(split=split, download=True, root=str(root), size=size)
        except Exception as e:  # network down, proxy, checksum...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FileNotFoundError(f"{_file(name, size)} was not found locally (looked in {where}) and the "
                                    f"download failed ({first}); offline? {todo}.") from e
        path = root / _file(name, size)
    return load_npz(path, split, task=task, n=n, name=name)
