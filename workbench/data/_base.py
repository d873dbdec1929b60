"""The sample/dataset model every source returns (see DESIGN.md, "Data model").

One sample is a dict::

    {"image": (C, H, W) float32 in [0, 1],
     "label": long scalar (binary/multiclass) or float (L,) vector (multilabel),
     "masks": {structure: (H, W) bool}   # only the structures annotated for this sample
     "concepts": (K,) float32 or None,
     "meta": dict, "id": str, "index": int}

A batch (``dataset.batch(indices)`` or ``collate(samples)``) is the same dict with a leading
batch axis, plus ``mask_present``: {structure: (B,) bool}; a structure not annotated for a sample
has an all-False mask there and ``mask_present`` False.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from workbench._checks import check_labels, check_stored_images

TASKS = ("binary", "multiclass", "multilabel")
Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]


class BaseDataset(torch.utils.data.Dataset):
    """Map-style dataset with ``classes``, ``task``, ``structures`` and ``concept_names``.

    Subclasses implement ``__len__`` and ``_get(i)`` returning an untransformed sample.
    ``transform`` (a callable on sample dicts, see ``workbench.data.transforms``) is applied
    to single samples and to batches alike.
    """

    classes: tuple[str, ...] = ()
    task: str = "binary"
    structures: tuple[str, ...] = ()
    concept_names: tuple[str, ...] = ()
    name: str = ""
    transform: Transform | None = None

    def _get(self, i: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, i: int) -> Sample:
        n = len(self)
        if not -n <= int(i) < n:
            raise IndexError(f"index {i} is out of range for a dataset of {n} samples.")
        s = self._get(int(i) % n)
        return self.transform(s) if self.transform is not None else s

    def batch(self, indices: Sequence[int] | torch.Tensor | None = None) -> Sample:
        """Stack samples ``indices`` (all when None) into a batch dict (see module docstring)."""
        if indices is None:
            indices = range(len(self))
        return collate([self[int(i)] for i in indices], structures=self.structures)

    @property
    def num_classes(self) -> int:
        """Number of model outputs: binary tasks use two logits (classes 0 and 1), like MedMNIST."""
        return len(self.classes)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, n={len(self)}, task={self.task!r}, "
                f"classes={list(self.classes)}, structures={list(self.structures)}, "
                f"concepts={len(self.concept_names)})")


def collate(samples: Sequence[Sample], structures: Sequence[str] | None = None) -> Sample:
    """Stack a list of samples into a batch dict; usable as a DataLoader ``collate_fn``."""
    if len(samples) == 0:
        raise ValueError("cannot collate an empty list of samples.")
    images = torch.stack([s["image"] for s in samples])
    labels = torch.stack([torch.as_tensor(s["label"]) for s in samples])
    if structures is None:
        structures = sorted({k for s in samples for k in (s.get("masks") or {})})
    h, w = images.shape[-2:]
    masks, present = {}, {}
    for name in structures:
        ms, ps = [], []
        for s in samples:
            m = (s.get("masks") or {}).get(name)
            ps.append(m is not None)
            ms.append(m if m is not None else torch.zeros(h, w, dtype=torch.bool))
        masks[name] = torch.stack(ms)
        present[name] = torch.tensor(ps)
    concepts = None
    if all(s.get("concepts") is not None for s in samples):
        concepts = torch.stack([s["concepts"] for s in samples])
    return {"image": images, "label": labels, "masks": masks, "mask_present": present,
            "concepts": concepts, "meta": [s.get("meta", {}) for s in samples],
            "id": [s.get("id", "") for s in samples],
            "index": torch.tensor([s.get("index", -1) for s in samples])}


class ArrayDataset(BaseDataset):
    """An in-memory dataset over stacked tensors; what the phantom and MedMNIST sources return.

    Args:
        images: (N, C, H, W) uint8 (0-255) or float in [0, 1].
        labels: (N,) integer class indices, or (N, L) {0, 1} for multilabel.
        classes: class names (binary tasks have two).
        task: "binary", "multiclass" or "multilabel".
        masks: {structure: (N, H, W) bool}.
        mask_present: {structure: (N,) bool}, False where a sample has no annotation; default all True.
        concepts: (N, K) float concept values; ``concept_names`` names the K columns.
        meta: one dict per sample.
        ids: one string per sample.
        transform: applied to samples and batches.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, classes: Sequence[str],
                 task: str, masks: dict[str, torch.Tensor] | None = None,
                 mask_present: dict[str, torch.Tensor] | None = None,
                 concepts: torch.Tensor | None = None, concept_names: Sequence[str] = (),
                 meta: Sequence[dict] | None = None, ids: Sequence[str] | None = None,
                 transform: Transform | None = None, name: str = "") -> None:
        images = torch.as_tensor(images)
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W); got shape {tuple(images.shape)}.")
        n, _, h, w = images.shape
        if images.is_floating_point():  # NaN/inf and 0-255 stored as floats, in one pass
            check_stored_images(images, name="images")
        elif images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8 or float; got {images.dtype}.")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}; got {task!r}.")
        labels = torch.as_tensor(labels)
        if task == "multilabel":
            if labels.shape != (n, len(classes)):
                raise ValueError(f"multilabel labels must be (N, L) = ({n}, {len(classes)}); got {tuple(labels.shape)}.")
            labels = labels.float()
        else:
            if labels.ndim == 2 and labels.shape[1] == 1:
                labels = labels[:, 0]
            if labels.shape != (n,):
                raise ValueError(f"labels must be (N,) or (N, 1) with N={n}; got shape {tuple(labels.shape)}.")
            labels = check_labels(labels, task=task, n=n)  # no NaN, no fractions truncated to a class
            if n and (labels.min() < 0 or labels.max() >= len(classes)):
                raise ValueError(f"labels must lie in [0, {len(classes) - 1}] for classes {list(classes)}; "
                                 f"got values from {int(labels.min())} to {int(labels.max())}.")
        masks = {k: torch.as_tensor(v).bool() for k, v in (masks or {}).items()}
        for k, m in masks.items():
            if m.shape != (n, h, w):
                raise ValueError(f"mask {k!r} has shape {tuple(m.shape)} but the images are {n}x{h}x{w}; "
                                 "masks must have the image's geometry (resize both together).")
        present = {k: torch.as_tensor(mask_present[k]).bool() if mask_present and k in mask_present
                   else torch.ones(n, dtype=torch.bool) for k in masks}
        if concepts is not None:
            concepts = torch.as_tensor(concepts).float()
            if concepts.shape != (n, len(concept_names)):
                raise ValueError(f"concepts must be (N, K) = ({n}, {len(concept_names)}); got {tuple(concepts.shape)}.")
        self.images, self.labels, self.masks, self.mask_present = images, labels, masks, present
        self.concepts = concepts
        self.meta = list(meta) if meta is not None else [{} for _ in range(n)]
        self.ids = list(ids) if ids is not None else [f"{name or 'sample'}_{i:06d}" for i in range(n)]
        if len(self.meta) != n or len(self.ids) != n:
            raise ValueError(f"meta and ids need one entry per image ({n}).")
        self.classes, self.task = tuple(classes), task
        self.structures = tuple(masks)
        self.concept_names = tuple(concept_names)
        self.transform, self.name = transform, name

    def __len__(self) -> int:
        return self.images.shape[0]

    def _image(self, idx: Any) -> torch.Tensor:
        x = self.images[idx]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def _get(self, i: int) -> Sample:
        return {"image": self._image(i), "label": self.labels[i],
                "masks": {k: m[i] for k, m in self.masks.items() if self.mask_present[k][i]},
                "concepts": None if self.concepts is None else self.concepts[i],
                "meta": self.meta[i], "id": self.ids[i], "index": i}

    def batch(self, indices: Sequence[int] | torch.Tensor | None = None) -> Sample:
        """Fast batched indexing (no per-sample Python loop); see the module docstring."""
        idx = torch.arange(len(self)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        b = {"image": self._image(idx), "label": self.labels[idx],
             "masks": {k: m[idx] for k, m in self.masks.items()},
             "mask_present": {k: p[idx] for k, p in self.mask_present.items()},
             "concepts": None if self.concepts is None else self.concepts[idx],
             "meta": [self.meta[int(i)] for i in idx], "id": [self.ids[int(i)] for i in idx],
             "index": idx}
        return self.transform(b) if self.transform is not None else b

    def subset(self, indices: Sequence[int] | torch.Tensor) -> "ArrayDataset":
        """A new ArrayDataset holding only ``indices`` (same classes, task, transform)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ArrayDataset(self.images[idx], self.labels[idx], classes=self.classes, task=self.task,
                            masks={k: m[idx] for k, m in self.masks.items()},
                            mask_present={k: p[idx] for k, p in self.mask_present.items()},
                            concepts=None if self.concepts is None else self.concepts[idx],
                            concept_names=self.concept_names,
                            meta=[self.meta[int(i)] for i in idx], ids=[self.ids[int(i)] for i in idx],
                            transform=self.transform, name=self.name)


def label_map(masks: dict[str, torch.Tensor], structures: Sequence[str]) -> torch.Tensor:
    """Integer label map from boolean masks: 0 = background, k = structures[k-1] (later wins).

    Args:
        masks: {structure: (..., H, W) bool}.
        structures: the order of structures; later ones overwrite earlier ones where they overlap.

    Returns:
        (..., H, W) long.
    """
    if not masks:
        raise ValueError("masks is an empty dict; pass {structure: (..., H, W) bool} with at least one structure.")
    ref = next(iter(masks.values()))
    bad = [k for k, m in masks.items() if tuple(m.shape) != tuple(ref.shape)]
    if bad:
        raise ValueError(f"masks {bad} differ in shape from {next(iter(masks))!r} {tuple(ref.shape)}; every mask "
                         "must have the same (..., H, W) shape (resize them together).")
    out = torch.zeros(ref.shape, dtype=torch.long)
    for k, name in enumerate(structures, start=1):
        if name in masks:
            out[masks[name].bool()] = k
    return out


def to_numpy_image(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) tensor in [0, 1] -> (H, W) or (H, W, 3) float numpy array for plotting."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a (C, H, W) tensor; got {type(image).__name__}.")
    x = image.detach().float().cpu()
    if x.ndim == 3 and x.shape[0] == 1:
        return x[0].numpy()
    if x.ndim == 3:
        return x[:3].permute(1, 2, 0).numpy()
    return x.numpy()
