"""What a dataset is (task, classes, structures...) also through ``torch.utils.data.Subset`` and
``ConcatDataset`` of our datasets, which carry none of these attributes themselves."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from workbench.data._base import TASKS, BaseDataset, Sample


@dataclass(frozen=True)
class DatasetInfo:
    """The attributes every workbench dataset exposes, resolved through Subset/ConcatDataset.

    Attributes:
        name: dataset name ("a+b" for a concatenation of differently named datasets).
        task: "binary", "multiclass", "multilabel", or None when unknown.
        classes: class names.
        structures: mask structures (the union over concatenated parts).
        concept_names: concept names.
        image_shape: (C, H, W) of every image when known without reading one, else None.
    """

    name: str
    task: str | None
    classes: tuple[str, ...]
    structures: tuple[str, ...]
    concept_names: tuple[str, ...]
    image_shape: tuple[int, ...] | None


def _own_info(data: Any) -> DatasetInfo:
    shape = getattr(data, "image_shape", None)
    if shape is None and torch.is_tensor(getattr(data, "images", None)) and data.images.ndim == 4:
        shape = tuple(data.images.shape[1:])
    return DatasetInfo(name=str(getattr(data, "name", "") or ""), task=getattr(data, "task", None),
                       classes=tuple(getattr(data, "classes", ()) or ()),
                       structures=tuple(getattr(data, "structures", ()) or ()),
                       concept_names=tuple(getattr(data, "concept_names", ()) or ()),
                       image_shape=tuple(int(s) for s in shape) if shape is not None else None)


def dataset_info(data: Any) -> DatasetInfo:
    """Task, classes, structures, concept names and image shape of ``data``.

    Works on any workbench dataset and on ``Subset`` / ``ConcatDataset`` of them (nested too).
    Attributes set on the wrapper itself (e.g. ``subset.task = ...``) win.

    Raises:
        ValueError: a ConcatDataset whose parts disagree on task, classes, concepts or image shape.

    Examples:
        >>> import torch
        >>> from workbench.data import ArrayDataset
        >>> ds = ArrayDataset(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), classes=("a", "b"), task="binary")
        >>> dataset_info(torch.utils.data.Subset(ds, [0, 1])).task
        'binary'
    """
    if isinstance(data, (str, bytes)) or torch.is_tensor(data) or not hasattr(data, "__len__"):
        raise TypeError(f"data must be a dataset (workbench.data.load(...), a Subset or ConcatDataset of them); got "
                        f"{type(data).__name__}.")
    if isinstance(data, torch.utils.data.Subset):
        base = dataset_info(data.dataset)
    elif isinstance(data, torch.utils.data.ConcatDataset):
        parts = [dataset_info(d) for d in data.datasets]
        first = parts[0]
        for key in ("task", "classes", "concept_names", "image_shape"):
            values = {getattr(p, key) for p in parts}
            if len(values) > 1:
                raise ValueError(f"the datasets in this ConcatDataset differ in {key}: {sorted(map(str, values))}; "
                                 f"concatenate datasets with the same {key} (load them with the same label column, "
                                 "size= and channels=).")
        structures = tuple(dict.fromkeys(s for p in parts for s in p.structures))
        names = tuple(dict.fromkeys(p.name for p in parts if p.name))
        base = DatasetInfo(name="+".join(names), task=first.task, classes=first.classes, structures=structures,
                           concept_names=first.concept_names, image_shape=first.image_shape)
    else:
        return _own_info(data)
    own = {k: getattr(data, k) for k in ("name", "task", "classes", "structures", "concept_names")
           if getattr(data, k, None)}
    return DatasetInfo(**{**base.__dict__, **{k: tuple(v) if isinstance(v, (list, tuple)) else v
                                               for k, v in own.items()}})


def dataset_ids(data: Any) -> list[str]:
    """One id per sample without reading images (``ids`` of the datasets, mapped through
    Subset/ConcatDataset; ``"#<i>"`` where a dataset has none)."""
    if isinstance(data, torch.utils.data.Subset):
        ids = dataset_ids(data.dataset)
        return [ids[int(i)] for i in data.indices]
    if isinstance(data, torch.utils.data.ConcatDataset):
        return [i for d in data.datasets for i in dataset_ids(d)]
    ids = getattr(data, "ids", None)
    if ids is not None and len(ids) == len(data):
        return [str(i) for i in ids]
    return [f"#{i}" for i in range(len(data))]


def dataset_labels(data: Any) -> torch.Tensor | None:
    """All labels without reading images when the datasets hold them (``.labels``), else None."""
    if isinstance(data, torch.utils.data.Subset):
        labels = dataset_labels(data.dataset)
        return None if labels is None else labels[torch.as_tensor(list(data.indices), dtype=torch.long)]
    if isinstance(data, torch.utils.data.ConcatDataset):
        parts = [dataset_labels(d) for d in data.datasets]
        return None if any(p is None for p in parts) else torch.cat(parts)
    labels = getattr(data, "labels", None)
    if torch.is_tensor(labels) and len(labels) == len(data):
        return labels
    return None


def check_task(info: DatasetInfo) -> str:
    if info.task not in TASKS:
        raise ValueError(f"the dataset has task {info.task!r}; expected one of {TASKS} (set dataset.task, or use a "
                         "dataset from workbench.data.load).")
    return info.task


class Positions(torch.utils.data.Dataset):
    """Samples of ``data`` whose ``index`` is their position in ``data`` (not in a dataset under a
    Subset or ConcatDataset), as batches report it."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.data[i], "index": int(i)}


class DatasetView(BaseDataset):
    """A ``Subset`` / ``ConcatDataset`` (or any map-style dataset of sample dicts) seen as a workbench
    dataset: ``classes``, ``task``, ``structures``, ``concept_names``, ``labels``, ``ids``,
    ``image_shape`` and ``.batch()``; samples are the wrapped ones with ``index`` their position."""

    def __init__(self, data: Any) -> None:
        info = dataset_info(data)
        self.data, self.name = data, info.name
        self.classes, self.task, self.structures = info.classes, info.task or "binary", info.structures
        self.concept_names, self.image_shape = info.concept_names, info.image_shape
        self.ids = dataset_ids(data)
        labels = dataset_labels(data)
        if labels is not None:
            self.labels = labels
        self.transform = None

    def __len__(self) -> int:
        return len(self.data)

    def _get(self, i: int) -> Sample:
        return {**self.data[i], "index": i}


def as_dataset(data: Any) -> BaseDataset:
    """``data`` itself when it is a workbench dataset, else a ``DatasetView`` of it (Subset,
    ConcatDataset...), so code written for ``dataset.batch(...)``, ``.classes`` or ``.labels``
    takes torch's dataset idioms too.

    Examples:
        >>> import torch
        >>> from workbench.data import ArrayDataset
        >>> ds = ArrayDataset(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), classes=("a", "b"), task="binary")
        >>> view = as_dataset(torch.utils.data.Subset(ds, [1, 3]))
        >>> view.batch()["label"].tolist(), view.classes
        ([1, 1], ('a', 'b'))
    """
    return data if isinstance(data, BaseDataset) else DatasetView(data)


def without_masks(data: Any) -> Any:
    """A view of ``data`` whose samples skip reading their masks from disk (lazy folders, CheXmask
    attachments, also under Subset/ConcatDataset/DatasetView); other datasets are returned as they
    are. For passes that never look at masks (training without a mask objective, prediction, an
    activation cache), where decoding masks would only cost time. ``data`` is not modified."""
    import copy
    if isinstance(data, torch.utils.data.Subset):
        inner = without_masks(data.dataset)
        return data if inner is data.dataset else torch.utils.data.Subset(inner, data.indices)
    if isinstance(data, torch.utils.data.ConcatDataset):
        parts = [without_masks(d) for d in data.datasets]
        return data if all(a is b for a, b in zip(parts, data.datasets)) else torch.utils.data.ConcatDataset(parts)
    inner_name = next((k for k in ("base", "data") if isinstance(getattr(data, k, None), torch.utils.data.Dataset)), None)
    if not hasattr(data, "load_masks") and inner_name is None:
        return data
    out = copy.copy(data)
    if hasattr(out, "load_masks"):
        out.load_masks = False
    if inner_name is not None:
        setattr(out, inner_name, without_masks(getattr(data, inner_name)))
    return out
