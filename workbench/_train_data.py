"""Batch sources for training and inference: a fast path for in-memory ArrayDatasets (batched
indexing, optionally the whole uint8 tensor on the GPU) and a DataLoader path for the rest."""
from __future__ import annotations

import functools
import os
from typing import Any, Iterator, Sequence

import torch

from workbench.data._base import ArrayDataset, collate

# A batch: {"image": (B, C, H, W) float in [0, 1], "label": (B,) or (B, L), "index": (B,) dataset
# indices}, plus the requested ``fields``: "concepts" (B, K) float, "masks" {structure: (B, H, W)
# bool} with "mask_present" {structure: (B,) bool}; all on the source's device.
Batch = dict[str, Any]
FIELDS = ("concepts", "masks")


class TensorSource:
    """Adapter for ``(images, labels)`` tensors given instead of a dataset."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, task: str | None,
                 num_logits: int | None = None) -> None:
        images = torch.as_tensor(images)
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W); got shape {tuple(images.shape)}.")
        self.images = images
        n = images.shape[0]
        if labels is None:  # images only (predict): no labels, no classes
            self.labels, self.task, self.classes = torch.zeros(n, dtype=torch.long), task or "multiclass", ()
            self.transform = None
            return
        self.labels = torch.as_tensor(labels)
        if self.labels.shape[0] != n:
            raise ValueError(f"labels have {self.labels.shape[0]} rows but there are {n} images.")
        if task is None:
            task = "multilabel" if self.labels.ndim == 2 and self.labels.shape[1] > 1 else (
                "binary" if (num_logits or 2) == 2 else "multiclass")
        if task != "multilabel" and self.labels.ndim == 2:
            self.labels = self.labels[:, 0]
        self.labels = self.labels.float() if task == "multilabel" else self.labels.long()
        self.task = task
        if task == "multilabel":
            c = self.labels.shape[1]
        else:
            c = num_logits or (int(self.labels.max()) + 1 if n else 2)
        self.classes = tuple(str(i) for i in range(max(c, 2 if task == "binary" else 1)))
        self.transform = None

    def __len__(self) -> int:
        return self.images.shape[0]


def as_source(data: Any, task: str | None = None, num_logits: int | None = None) -> Any:
    """A dataset, or ``(images, labels)`` tensors wrapped as a source."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0]):
        return TensorSource(data[0], data[1], task, num_logits)
    if torch.is_tensor(data):
        return TensorSource(data, None, task or "multiclass", num_logits)
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
        raise TypeError(f"expected a workbench dataset (e.g. workbench.data.load(...)) or an (images, labels) "
                        f"pair of tensors; got {type(data).__name__}.")
    return data


def task_of(data: Any) -> str:
    task = getattr(data, "task", None)
    if task not in ("binary", "multiclass", "multilabel"):
        raise ValueError(f"the dataset has task {task!r}; expected 'binary', 'multiclass' or 'multilabel' "
                         "(set dataset.task, or use a dataset from workbench.data.load).")
    return task


def labels_of(data: Any) -> torch.Tensor:
    """All labels of a dataset: ``.labels`` when present, else read sample by sample."""
    labels = getattr(data, "labels", None)
    if torch.is_tensor(labels) and len(labels) == len(data):
        return labels
    return torch.stack([torch.as_tensor(data[i]["label"]) for i in range(len(data))])


def resolve_workers(num_workers: int | str) -> int:
    if num_workers == "auto":
        return min(4, (os.cpu_count() or 2) // 2)
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be 'auto' or an int >= 0; got {num_workers!r}.")
    return num_workers


class BatchSource:
    """Iterates ``(images, labels, indices)`` on ``device``; images float in [0, 1].

    Args:
        data: an ArrayDataset, a TensorSource or any map-style dataset of sample dicts.
        batch_size: samples per batch.
        device: target device.
        num_workers: DataLoader workers for datasets that are not in memory.
        keep_on_device: for in-memory data on CUDA, copy the whole image tensor (uint8 stays
            uint8) to the device once when it fits.
        fields: extra fields each batch carries besides image, label and index: "concepts"
            and/or "masks" (with "mask_present").
    """

    def __init__(self, data: Any, batch_size: int, device: torch.device, num_workers: int = 0,
                 keep_on_device: bool = True, fields: tuple[str, ...] = ()) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
        bad = [f for f in fields if f not in FIELDS]
        if bad:
            raise ValueError(f"unknown batch field(s) {bad}; valid fields are {list(FIELDS)}.")
        if isinstance(data, TensorSource) and fields:
            raise ValueError(f"training needs {list(fields)} of each sample, which an (images, labels) pair "
                             "does not carry; pass a dataset (workbench.data.load or ArrayDataset with "
                             "concepts=/masks=).")
        if "concepts" in fields and not getattr(data, "concept_names", ()):
            raise ValueError(f"training needs concept labels but the dataset {getattr(data, 'name', '')!r} has "
                             "none; use a source with concepts (the phantom's findings, or a folder dataset "
                             "loaded with concept_columns=).")
        self.fields = tuple(fields)
        self.data, self.batch_size, self.device = data, batch_size, device
        self.fast = isinstance(data, (ArrayDataset, TensorSource)) and data.transform is None
        self.batched = isinstance(data, ArrayDataset) and data.transform is not None
        self.images = self.labels = None
        self.loader_workers = num_workers
        if self.fast:
            self.images, self.labels = data.images, data.labels
            if device.type == "cuda" and keep_on_device:
                nbytes = self.images.numel() * self.images.element_size()
                free, _ = torch.cuda.mem_get_info(device)
                if nbytes < 0.25 * free:
                    self.images = self.images.to(device, non_blocking=True)
                    self.labels = self.labels.to(device, non_blocking=True)
        self._loaders: dict[bool, torch.utils.data.DataLoader] = {}

    def __len__(self) -> int:
        return len(self.data)

    def num_batches(self, drop_last: bool = False) -> int:
        n = len(self.data)
        return n // self.batch_size if drop_last and n >= self.batch_size else -(-n // self.batch_size)

    def _to(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True)

    def _image(self, x: torch.Tensor) -> torch.Tensor:
        x = self._to(x)
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def _extras(self, b: dict[str, Any]) -> dict[str, Any]:
        """The requested fields of a collated batch dict, on the device."""
        out: dict[str, Any] = {}
        if "concepts" in self.fields:
            if b.get("concepts") is None:
                raise ValueError("some samples of this batch have no concept labels; training a concept "
                                 "model needs them for every sample (missing values as NaN are masked out).")
            out["concepts"] = self._to(torch.as_tensor(b["concepts"]).float())
        if "masks" in self.fields:
            out["masks"] = {k: self._to(m) for k, m in b["masks"].items()}
            out["mask_present"] = {k: self._to(p) for k, p in b["mask_present"].items()}
        return out

    def __call__(self, *, shuffle: bool, generator: torch.Generator | None = None,
                 drop_last: bool = False) -> Iterator[Batch]:
        n = len(self.data)
        if self.fast or self.batched:
            order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
            stop = self.num_batches(drop_last) * self.batch_size
            for start in range(0, min(stop, n), self.batch_size):
                idx = order[start:start + self.batch_size]
                if self.fast:
                    di = idx.to(self.images.device)
                    batch = {"image": self._image(self.images[di]),
                             "label": self._to(self.labels[di.to(self.labels.device)]), "index": idx}
                    if self.fields:
                        d = self.data
                        batch.update(self._extras({
                            "concepts": None if getattr(d, "concepts", None) is None else d.concepts[idx],
                            "masks": {k: m[idx] for k, m in getattr(d, "masks", {}).items()},
                            "mask_present": {k: p[idx] for k, p in getattr(d, "mask_present", {}).items()}}))
                    yield batch
                else:
                    b = self.data.batch(idx)
                    yield {"image": self._image(b["image"]), "label": self._to(torch.as_tensor(b["label"])),
                           "index": idx, **self._extras(b)}
            return
        yield from self._loader_batches(shuffle, generator, drop_last)

    def _loader_batches(self, shuffle: bool, generator: torch.Generator | None,
                        drop_last: bool) -> Iterator[Batch]:
        key = (shuffle, drop_last)
        if key not in self._loaders:
            w = self.loader_workers
            self._loaders[key] = torch.utils.data.DataLoader(
                self.data, batch_size=self.batch_size, shuffle=shuffle, generator=generator,
                num_workers=w, pin_memory=self.device.type == "cuda", persistent_workers=w > 0,
                drop_last=drop_last and len(self.data) >= self.batch_size,
                collate_fn=functools.partial(collate, structures=getattr(self.data, "structures", None)))
        for b in self._loaders[key]:
            idx = torch.as_tensor(b.get("index", torch.arange(len(b["image"]))))
            yield {"image": self._image(b["image"]), "label": self._to(torch.as_tensor(b["label"])),
                   "index": idx, **self._extras(b)}


def class_weights(labels: torch.Tensor, task: str, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights for imbalanced data.

    Binary/multiclass: CE class weights ``n / (C * n_c)`` (1 for balanced data; classes absent
    from the data get weight 1). Multilabel: BCE ``pos_weight = n_neg / n_pos`` per label
    (clamped to [1/100, 100]; 1 for labels without positives).

    Args:
        labels: (N,) class indices or (N, L) {0, 1}.
        task: "binary", "multiclass" or "multilabel".
        num_classes: C (or L).

    Returns:
        (C,) float weights.

    Examples:
        >>> class_weights(torch.tensor([0, 0, 0, 1]), "binary", 2)
        tensor([0.6667, 2.0000])
    """
    labels = labels.cpu()
    if task == "multilabel":
        pos = labels.float().sum(0)
        neg = labels.shape[0] - pos
        w = torch.where(pos > 0, neg / pos.clamp(min=1), torch.ones_like(pos))
        return w.clamp(0.01, 100.0)
    counts = torch.bincount(labels.long(), minlength=num_classes).float()
    n = counts.sum()
    w = torch.where(counts > 0, n / (num_classes * counts.clamp(min=1)), torch.ones_like(counts))
    return w


def check_labels(labels: torch.Tensor, task: str, num_logits: int, where: str) -> None:
    if task == "multilabel":
        if labels.ndim != 2 or labels.shape[1] != num_logits:
            raise ValueError(f"{where}: multilabel labels are {tuple(labels.shape)} but the model has "
                             f"{num_logits} outputs; create the model with num_classes={labels.shape[-1]}.")
        return
    if labels.numel() and (int(labels.max()) >= num_logits or int(labels.min()) < 0):
        raise ValueError(f"{where}: labels range {int(labels.min())}..{int(labels.max())} but the model has "
                         f"{num_logits} outputs; create it with num_classes=len(dataset.classes) "
                         "(2 for binary tasks).")


def describe_nan(images: torch.Tensor, idx: Sequence[int] | torch.Tensor) -> str | None:
    """A message naming the samples whose image holds NaN/inf, or None."""
    bad = ~torch.isfinite(images.flatten(1)).all(1)
    if bad.any():
        ids = torch.as_tensor(idx)[bad.cpu()].tolist()[:10]
        return f"input images contain NaN/inf values (dataset indices {ids})"
    return None
