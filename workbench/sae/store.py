"""Token activations of a model's layer over a dataset: on disk (``cache``) or in memory (``activations``).

``cache(model, data, layer=..., out=DIR)`` runs each image up to ``layer`` only (the forward
stops right after it, ``workbench.capture.stop_after``) and writes the kept tokens as a dataset-wide
job (``workbench.jobs``): numbered float16 shards written through temporary folders, a
``manifest.json`` written last (its presence means complete), resume without redoing finished
shards, and under ``torchrun --nproc_per_node N`` each rank caches its share of the shards while
rank 0 writes the one manifest. The job's spec holds the model's config and weight fingerprint,
the layer, the token layout (prefix tokens, grid, width, which tokens) and the dataset's
fingerprint, so a store is never mixed with or mistaken for another model's or layer's.

Folder layout (the ``workbench.jobs`` layout)::

    DIR/job.json, DIR/manifest.json
    DIR/shards/000000/acts.npy     (images in the shard, tokens per image, d) float16
    DIR/shards/000000/rows.parquet index, id, label of each image
    DIR/table.parquet              every image's row, in dataset order

``ActivationStore.batches`` streams shuffled token batches for training without holding the store:
blocks of a few consecutive images are drawn in random order across all shards into a bounded
buffer (``buffer_mb``), shuffled token by token and cut into batches; a background thread fills
the next buffer while the current one is used.
"""
from __future__ import annotations

import os
import queue
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from workbench import jobs
from workbench._device import model_on

from .layers import TokenLayout, forward_to, infer_layout, resolve_layer
from .training import TensorTokens, check_finite

WHAT = "sae-activations"


def _first_image(data: Any) -> torch.Tensor:
    from ._apply import first_images

    return first_images(data)


def _as_dataset(data: Any) -> Any:
    """Images ``(N, C, H, W)`` or an ``(images, labels)`` pair -> an ArrayDataset; datasets pass."""
    from workbench.data import ArrayDataset

    if torch.is_tensor(data) or (isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0])):
        images, labels = (data, None) if torch.is_tensor(data) else data
        images = torch.as_tensor(images)
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W); got shape {tuple(images.shape)}.")
        labels = torch.zeros(len(images), dtype=torch.long) if labels is None else torch.as_tensor(labels)
        n_cls = int(labels.max()) + 1 if labels.numel() and labels.ndim == 1 else 1
        return ArrayDataset(images, labels, classes=tuple(str(i) for i in range(max(1, n_cls))),
                            task="multilabel" if labels.ndim == 2 else "multiclass", name="images")
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
        raise TypeError(f"expected a dataset (workbench.data.load) or images (N, C, H, W); got {type(data).__name__}.")
    return data


def source_of(model: nn.Module, layer: str, layout: TokenLayout, data: Any) -> dict[str, Any]:
    """The provenance of activations: what a store's spec and an SAE's ``source`` hold."""
    return {"what": WHAT, "model": jobs.fingerprint(model), "layer": layer, "layout": layout.to_dict(),
            "data": jobs.fingerprint(data)}


def cache(model: nn.Module, data: Any, *, layer: str | int, out: str | os.PathLike, tokens: str = "patch",
          batch_size: int = 64, shard_size: int | None = None, shard_mb: float = 64.0, num_workers: int = 0,
          device: str | torch.device | None = "auto", progress: bool = True) -> "ActivationStore":
    """Cache the token activations of ``layer`` for every image of ``data`` into the folder ``out``.

    Args:
        model: any timm ViT (patch, class, register tokens; any grid) or CNN (feature-map positions).
        data: a dataset (or images ``(N, C, H, W)`` in [0, 1]).
        layer: a submodule name (``"blocks.3"``, ``"layer3"``), or an int block index for ViTs.
        out: the store's folder; rerunning the same call resumes an interrupted cache.
        tokens: "patch" (grid positions), "prefix" (class/register tokens) or "all".
        batch_size: images per forward.
        shard_size: images per shard (default: about ``shard_mb`` MB of float16 per shard).
        num_workers: DataLoader workers reading the dataset.
        device: "auto" (``cuda:LOCAL_RANK`` under torchrun), a device, or None (the model's).
        progress: progress bar (rank 0).

    Returns:
        The finished :class:`ActivationStore` (on every rank).

    Raises:
        ValueError: an unknown layer (the valid ones are listed), an empty dataset, non-finite
            activations, or an ``out`` folder holding another model's, layer's or dataset's store.
    """
    from workbench._checks import check_dataset, check_images, check_int, check_model, check_output_path

    check_model(model)
    data = _as_dataset(check_dataset(data))
    check_int(batch_size, "batch_size")
    check_int(shard_size, "shard_size", none_ok=True)
    check_int(num_workers, "num_workers", minimum=0)
    out = check_output_path(out, directory=True, name="out")
    name = resolve_layer(model, layer)
    dev = jobs.rank_device(device) if device is not None else None
    run, dev = model_on(model, dev)
    first = check_images(_first_image(data), model, name="the images", value_range=None)  # before the probe
    layout = infer_layout(run, forward_to(run, first.to(dev), name), tokens)
    per_image_bytes = layout.per_image * layout.d * 2
    if shard_size is None:
        shard_size = max(1, min(len(data), int(shard_mb * 2**20 // per_image_bytes)))
    spec = source_of(model, name, layout, data)
    job = jobs.Job(out, spec, n=len(data), shard_size=shard_size, dtype="float16", progress=progress,
                   desc=f"cache {name}")
    if not job.done:
        from workbench._checks import check_images
        from workbench.data._info import dataset_ids

        ids = dataset_ids(data)
        for shard in _shards_with_batches(job, data, batch_size, num_workers, dev):
            # float16 tokens go straight into the shard's buffer (converted by the copy on a CPU, on the
            # model's device elsewhere: half the bytes to move), no per-batch tensors to concatenate
            acts = torch.empty((len(shard.indices), layout.per_image, layout.d), dtype=torch.float16)
            labels: list = []
            pos = 0
            for batch in shard.batches:
                x = check_images(batch["image"].to(dev, non_blocking=True).float(), run, name="the images")
                t = layout.select(forward_to(run, x, name))
                # one pass checks both NaN/inf and float16's range: min and max propagate NaN, which fails
                # the comparisons
                lo, hi = torch.aminmax(t)
                if not (float(lo) >= -F16_MAX and float(hi) <= F16_MAX):
                    _raise_not_finite(t, name, shard.indices, layout.d)
                acts[pos:pos + t.shape[0]].copy_(t if t.device.type == "cpu" else t.half())
                pos += t.shape[0]
                labels += torch.as_tensor(batch["label"]).tolist()
            if pos != len(acts):   # pragma: no cover - the shard's batches cover its images
                raise RuntimeError(f"shard {shard.indices} got {pos} images of {len(acts)}.")
            shard.write({"acts": acts}, rows={"id": [ids[i] for i in shard.indices], "label": labels})
    return ActivationStore(job.finish())


F16_MAX = 65504.0   # the largest finite float16


def _raise_not_finite(t: torch.Tensor, name: str, indices: range, d: int) -> None:
    """The error for activations that are not finite as float16: NaN/inf from the model, or values
    beyond float16's range."""
    check_finite(t.reshape(-1, d).float(), f"the activations of layer {name!r} (images "
                 f"{indices.start}..{indices.stop - 1})")
    raise ValueError(f"the activations of layer {name!r} reach {float(t.abs().max()):.3g}, beyond float16's range "
                     "(65504); the store keeps float16. Rescale the model's inputs or cache an earlier layer.")


def _image_label(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate only what the store needs (masks and concepts are not stacked)."""
    return {"image": torch.stack([torch.as_tensor(s["image"]) for s in samples]),
            "label": torch.stack([torch.as_tensor(s["label"]) for s in samples])}


def _shards_with_batches(job: jobs.Job, data: Any, batch_size: int, num_workers: int,
                         dev: torch.device) -> Iterator[Any]:
    """The job's unfinished shards, each with ``.batches`` of image/label dicts.

    In-memory datasets (an ArrayDataset without a transform) are indexed a batch at a time (no
    per-sample Python work, no DataLoader); any other dataset is read by the job's DataLoader with
    ``num_workers`` workers, collating images and labels only."""
    from workbench.data import ArrayDataset

    if isinstance(data, ArrayDataset) and data.transform is None:
        for shard in job.shards():
            idx = torch.tensor(list(shard.indices))
            shard.batches = ({"image": data._image(idx[i:i + batch_size]), "label": data.labels[idx[i:i + batch_size]]}
                             for i in range(0, len(idx), batch_size))
            yield shard
        return
    for shard in job.shards(data, batch_size=batch_size, num_workers=num_workers, device=dev, collate_fn=_image_label):
        shard.batches = iter(shard)
        yield shard


class ActivationStore:
    """A finished activation store (see the module docstring); open one with :func:`open_store`.

    Attributes:
        out: the folder.
        source: model fingerprint, layer, token layout and data fingerprint (the job's spec).
        layout: the :class:`~workbench.sae.layers.TokenLayout`.
        layer: the layer name.
        d: token width; per_image: tokens per image; n_images; n_tokens.
    """

    def __init__(self, store: jobs.Store) -> None:
        if store.spec.get("what") != WHAT or "acts" not in store.arrays:
            raise ValueError(f"{store.out} is not an SAE activation store (its job is {store.spec.get('what')!r}); "
                             "cache one with workbench.sae.cache.")
        self.job = store
        self.out = Path(store.out)
        self.source = dict(store.spec)
        self.layout = TokenLayout.from_dict(self.source["layout"])
        self.layer = self.source["layer"]
        shape = store.manifest["arrays"]["acts"]["shape"]
        self.n_images, self.per_image, self.d = int(shape[0]), int(shape[1]), int(shape[2])
        self.n_tokens = self.n_images * self.per_image

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.out)!r}, layer={self.layer!r}, images={self.n_images}, "
                f"tokens={self.n_tokens} x {self.d}, {self.layout.tokens} tokens on a {tuple(self.layout.grid)} grid)")

    @property
    def nbytes(self) -> int:
        return self.n_tokens * self.d * 2

    @property
    def table(self) -> Any:
        """Per-image rows (index, id, label) in dataset order."""
        return self.job.table

    def image(self, i: int) -> torch.Tensor:
        """(per_image, d) float32 tokens of image ``i``."""
        return torch.from_numpy(np.asarray(self.job.array("acts")[int(i)], dtype=np.float32))

    def _blocks(self, block: int) -> list[tuple[int, int, int]]:
        """(shard, start row, stop row) blocks of at most ``block`` images, over all shards."""
        out = []
        for s in self.job.shards:
            m = s["stop"] - s["start"]
            out += [(s["shard"], a, min(m, a + block)) for a in range(0, m, block)]
        return out

    def _read(self, blocks: list[tuple[int, int, int]]) -> np.ndarray:
        """The tokens of ``blocks`` as one (n, d) float16 array, filled block by block with file reads
        (no memory map: the store's pages never count in this process's memory)."""
        arr = self.job.array("acts")
        n = sum(b - a for _, a, b in blocks) * self.per_image
        out = np.empty((n, self.d), np.float16)
        pos = 0
        for k, a, b in blocks:
            m = (b - a) * self.per_image
            out[pos:pos + m] = arr.read(k, range(a, b)).reshape(m, self.d)
            pos += m
        return out

    def batches(self, batch_size: int, *, shuffle: bool = True, seed: int = 0, buffer_mb: float = 64.0,
                block_images: int = 8, prefetch: bool = True) -> Iterator[torch.Tensor]:
        """One pass over every token in ``(batch_size, d)`` float32 CPU batches (the last may be shorter).

        Shuffling draws blocks of ``block_images`` consecutive images in random order from all
        shards into a buffer of about ``buffer_mb`` MB, shuffles its tokens in place and cuts
        batches; memory stays within about two buffers (the one in use and the one a background
        thread reads ahead) whatever the store's size.
        """
        blocks = self._blocks(max(1, int(block_images)))
        rng = np.random.default_rng(seed)
        if shuffle:
            blocks = [blocks[i] for i in rng.permutation(len(blocks))]
        tokens_per_buffer = max(batch_size, int(buffer_mb * 2**20 // (self.d * 2)))
        groups, cur, cur_tokens = [], [], 0
        for blk in blocks:
            cur.append(blk)
            cur_tokens += (blk[2] - blk[1]) * self.per_image
            if cur_tokens >= tokens_per_buffer:
                groups.append(cur)
                cur, cur_tokens = [], 0
        if cur:
            groups.append(cur)
        carry = np.zeros((0, self.d), np.float16)
        for buf in _prefetched((self._read(g) for g in groups), prefetch):
            if shuffle:
                rng.shuffle(buf)   # in place: no second copy of the buffer
            start = 0
            if len(carry):   # complete the previous buffer's last partial batch
                start = min(batch_size - len(carry), len(buf))
                carry = np.concatenate([carry, buf[:start]])
                if len(carry) < batch_size:
                    continue
                yield torch.from_numpy(carry).float()
                carry = np.zeros((0, self.d), np.float16)
            n_full = start + (len(buf) - start) // batch_size * batch_size
            for i in range(start, n_full, batch_size):
                yield torch.from_numpy(buf[i:i + batch_size]).float()
            carry = buf[n_full:].copy()
        if len(carry):
            yield torch.from_numpy(carry).float()

    def sample(self, n: int, *, seed: int = 0) -> torch.Tensor:
        """``n`` tokens drawn at random (without replacement) as (n, d) float32."""
        n = min(int(n), self.n_tokens)
        rng = np.random.default_rng(seed)
        flat = np.sort(rng.choice(self.n_tokens, size=n, replace=False))
        img, tok = flat // self.per_image, flat % self.per_image
        arr = self.job.array("acts")
        starts = np.array([s["start"] for s in self.job.shards])
        out = np.empty((n, self.d), np.float16)
        shard_of = np.searchsorted(starts, img, side="right") - 1
        for k in np.unique(shard_of):   # token rows read from the files: no page of the store stays mapped
            sel = shard_of == k
            rows = (img[sel] - starts[k]) * self.per_image + tok[sel]
            out[sel] = arr.read(int(self.job.shards[int(k)]["shard"]), rows, unit=self.per_image).reshape(-1, self.d)
        x = torch.from_numpy(out).float()
        check_finite(x, f"the activations in {self.out}")
        return x


def _prefetched(it: Iterator[np.ndarray], enabled: bool) -> Iterator[np.ndarray]:
    """Iterate ``it`` with the next item read by a background thread (I/O overlaps training)."""
    if not enabled:
        yield from it
        return
    q: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            t.join(timeout=0.1)


def open_store(out: str | os.PathLike, *, model: nn.Module | None = None, layer: str | int | None = None) -> ActivationStore:
    """Open a finished activation store; with ``model`` / ``layer``, refuse one written for another.

    Raises:
        FileNotFoundError: no store in ``out``.
        ValueError: an unfinished store (rerun ``cache`` to resume; a partly written shard is never
            read), not an activation store, or one of another model or layer.
    """
    expect: dict[str, Any] = {"what": WHAT}
    if model is not None:
        expect["model"] = jobs.fingerprint(model)
    store = ActivationStore(jobs.open_store(out, expect={"what": WHAT}))
    if layer is not None and model is not None:
        expect["layer"] = resolve_layer(model, layer)
    elif layer is not None:
        expect["layer"] = layer
    for key in ("model", "layer"):
        if key in expect and store.source.get(key) != expect[key]:
            have = store.source.get(key)
            raise ValueError(f"the store in {store.out} was cached from another {key} ({_short(have)}) than the one "
                             f"given ({_short(expect[key])}); cache this {key} into a new folder.")
    return store


def _short(v: Any) -> str:
    if isinstance(v, dict):
        cfg = v.get("model")
        name = cfg.get("name") if isinstance(cfg, dict) else cfg
        return f"{name}, weights {str(v.get('weights_sha256', ''))[:12]}"
    return repr(v)


def activations(model: nn.Module, data: Any, *, layer: str | int, tokens: str = "patch", batch_size: int = 64,
                device: str | torch.device | None = None) -> TensorTokens:
    """Token activations of ``layer`` for every image, held in memory (small datasets and tests; use
    :func:`cache` for a store on disk). Rows are image-major: image ``i``'s tokens are rows
    ``i * T ... (i + 1) * T - 1`` with ``T = layout.per_image``.

    Returns:
        A :class:`~workbench.sae.training.TensorTokens` whose ``source`` records the model, layer,
        token layout and dataset, as a store's does.
    """
    from workbench._train_data import BatchSource

    from workbench._checks import check_dataset, check_images, check_int, check_model

    check_model(model)
    data = _as_dataset(check_dataset(data))
    check_int(batch_size, "batch_size")
    name = resolve_layer(model, layer)
    run, dev = model_on(model, device)
    first = check_images(_first_image(data), model, name="the images", value_range=None)  # before the probe
    layout = infer_layout(run, forward_to(run, first.to(dev), name), tokens)
    out = []
    for b in BatchSource(data, batch_size, dev, keep_on_device=False)(shuffle=False):
        out.append(layout.select(forward_to(run, b["image"], name)).float().cpu())
    x = torch.cat(out).reshape(-1, layout.d)
    check_finite(x, f"the activations of layer {name!r}")
    return TensorTokens(x, source=source_of(model, name, layout, data))
