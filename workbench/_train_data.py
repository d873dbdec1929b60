"""Batch sources for training and inference: a fast path for in-memory ArrayDatasets (batched
indexing, optionally the whole uint8 tensor on the GPU; also through ``Subset``) and a DataLoader
path with workers for the rest (lazy folders, ConcatDataset, custom datasets); under ``torchrun``
each rank takes its share of every pass (``plan_batches``)."""
from __future__ import annotations

import functools
import os
from typing import Any, Iterator, Sequence

import torch

from workbench.data._base import ArrayDataset, collate
from workbench.data._info import (DatasetInfo, Positions, check_task, dataset_info, dataset_labels,
                                  without_masks)

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
    """The task of a dataset, also through ``Subset`` / ``ConcatDataset`` (``dataset_info``)."""
    if isinstance(data, TensorSource):
        return check_task(DatasetInfo("", data.task, data.classes, (), (), None))
    return check_task(dataset_info(data))


def labels_of(data: Any) -> torch.Tensor:
    """All labels of a dataset: ``.labels`` (through Subset/ConcatDataset) when present, else read
    sample by sample."""
    labels = data.labels if isinstance(data, TensorSource) else dataset_labels(data)
    if labels is not None:
        return labels
    return torch.stack([torch.as_tensor(data[i]["label"]) for i in range(len(data))])


def resolve_workers(num_workers: int | str) -> int:
    """"auto": half the cores shared by this machine's ranks, at most 4; else the int given."""
    if num_workers == "auto":
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
        return min(4, (os.cpu_count() or 2) // (2 * local))
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be 'auto' or an int >= 0; got {num_workers!r}.")
    return num_workers


def _unwrap(data: Any) -> tuple[Any, torch.Tensor | None]:
    """The dataset under a chain of ``Subset``s and the index map into it (None: identity)."""
    mapping = None
    while isinstance(data, torch.utils.data.Subset):
        idx = torch.as_tensor(list(data.indices), dtype=torch.long)
        mapping = idx if mapping is None else idx[mapping]
        data = data.dataset
    return data, mapping


def plan_batches(order: torch.Tensor, batch_size: int, *, drop_last: bool, rank: int = 0,
                 world: int = 1) -> list[torch.Tensor]:
    """Batches of positions ``order`` for one rank.

    One process: consecutive chunks (the last partial one dropped with ``drop_last`` when at least
    one full batch exists). ``world`` ranks with ``drop_last`` (training): step s gives rank r
    ``order[s*B*W + r*B : s*B*W + (r+1)*B]``, so the ranks' batches of a step together are the
    batch of B*W that one process would take, and every rank makes the same number of steps.
    Without ``drop_last`` (inference) each rank takes its strided share, chunked.
    """
    n = len(order)
    if world == 1:
        stop = (n // batch_size) * batch_size if drop_last and n >= batch_size else n
        return [order[i:i + batch_size] for i in range(0, stop, batch_size)]
    if n < world:
        raise ValueError(f"{n} samples cannot be shared by {world} ranks; use fewer processes or more data.")
    step = batch_size * world
    if drop_last and n >= step:
        return [order[s * step + rank * batch_size: s * step + (rank + 1) * batch_size] for s in range(n // step)]
    mine = order[rank::world]
    if drop_last:  # fewer samples than one global batch: one step of each rank's share
        return [mine]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


class _Plan(torch.utils.data.Sampler):
    """A batch sampler replaying the plan set before each pass (one DataLoader, persistent workers)."""

    def __init__(self) -> None:
        self.plan: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(list(self.plan))

    def __len__(self) -> int:
        return len(self.plan)


class BatchSource:
    """Iterates batch dicts (see ``Batch``) on ``device``; images float in [0, 1].

    In-memory ArrayDatasets (also under ``Subset``) and tensors are batched by indexing; every
    other dataset (lazy folders, ConcatDataset, custom datasets) goes through one DataLoader with
    ``num_workers`` workers (decoding and resizing happen there) and pinned memory on CUDA.

    Args:
        data: an ArrayDataset, a TensorSource or any map-style dataset of sample dicts.
        batch_size: samples per batch (per rank under torchrun).
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
        self.info = None if isinstance(data, TensorSource) else dataset_info(data)
        if "concepts" in fields and not (self.info and self.info.concept_names):
            raise ValueError(f"training needs concept labels but the dataset {getattr(data, 'name', '')!r} has "
                             "none; use a source with concepts (the phantom's findings, or a folder dataset "
                             "loaded with concept_columns=).")
        self.fields = tuple(fields)
        self.data, self.batch_size, self.device = data, batch_size, device
        base, self.map = _unwrap(data)
        self.base = base
        self.fast = isinstance(base, (ArrayDataset, TensorSource)) and base.transform is None
        self.batched = isinstance(base, ArrayDataset) and base.transform is not None
        self.images = self.labels = None
        self.loader_workers = num_workers
        if self.fast:
            self.images, self.labels = base.images, base.labels
            if device.type == "cuda" and keep_on_device:
                nbytes = self.images.numel() * self.images.element_size()
                free, _ = torch.cuda.mem_get_info(device)
                if nbytes < 0.25 * free:
                    self.images = self.images.to(device, non_blocking=True)
                    self.labels = self.labels.to(device, non_blocking=True)
        self._loader: torch.utils.data.DataLoader | None = None
        self._plan = _Plan()

    def __len__(self) -> int:
        return len(self.data)

    def num_batches(self, drop_last: bool = False, world: int = 1) -> int:
        """Batches per pass (rank 0's under ``world`` ranks)."""
        return len(plan_batches(torch.arange(len(self.data)), self.batch_size, drop_last=drop_last, world=world))

    def first_image(self) -> torch.Tensor:
        """(1, C, H, W) float image of the first sample, on the device (to probe a model)."""
        if self.fast:
            i = 0 if self.map is None else int(self.map[0])
            return self._image(self.images[i:i + 1])
        return self._image(torch.as_tensor(self.data[0]["image"])[None])

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

    def __call__(self, *, shuffle: bool, generator: torch.Generator | None = None, drop_last: bool = False,
                 rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """One pass: shuffled by ``generator`` or in order; under torchrun this rank's share
        (``plan_batches``: with ``drop_last`` the ranks' batches form one global batch per step)."""
        n = len(self.data)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        plan = plan_batches(order, self.batch_size, drop_last=drop_last, rank=rank, world=world)
        if not (self.fast or self.batched):
            yield from self._loader_batches(plan)
            return
        for idx in plan:
            bidx = idx if self.map is None else self.map[idx]
            if self.fast:
                di = bidx.to(self.images.device)
                batch = {"image": self._image(self.images[di]),
                         "label": self._to(self.labels[di.to(self.labels.device)]), "index": idx}
                if self.fields:
                    d = self.base
                    batch.update(self._extras({
                        "concepts": None if getattr(d, "concepts", None) is None else d.concepts[bidx],
                        "masks": {k: m[bidx] for k, m in getattr(d, "masks", {}).items()},
                        "mask_present": {k: p[bidx] for k, p in getattr(d, "mask_present", {}).items()}}))
                yield batch
            else:
                b = self.base.batch(bidx)
                yield {"image": self._image(b["image"]), "label": self._to(torch.as_tensor(b["label"])),
                       "index": idx, **self._extras(b)}

    def _loader_batches(self, plan: list[torch.Tensor]) -> Iterator[Batch]:
        if self._loader is None:
            w = self.loader_workers
            # masks on disk are read only when the batches carry them
            data = self.data if "masks" in self.fields else without_masks(self.data)
            self._loader = torch.utils.data.DataLoader(
                Positions(data), batch_sampler=self._plan, num_workers=w,
                pin_memory=self.device.type == "cuda", persistent_workers=w > 0,
                collate_fn=functools.partial(collate, structures=self.info.structures if self.info else None))
        self._plan.plan = [p.tolist() for p in plan]
        for b in self._loader:
            yield {"image": self._image(b["image"]), "label": self._to(torch.as_tensor(b["label"])),
                   "index": torch.as_tensor(b["index"]), **self._extras(b)}


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


def describe_nan(images: torch.Tensor, idx: Sequence[int] | torch.Tensor) -> str | None:
    """A message naming the samples whose image holds NaN/inf, or None."""
    bad = ~torch.isfinite(images.flatten(1)).all(1)
    if bad.any():
        ids = torch.as_tensor(idx)[bad.cpu()].tolist()[:10]
        return f"input images contain NaN/inf values (dataset indices {ids})"
    return None
