"""``explain_dataset``: attribute a whole dataset in batches on the model's device, write the maps
as float16 shards and a per-image table, resume after an interruption, and run unchanged under
``torchrun`` (each rank its share of the shards; rank 0 merges). Built on ``workbench.jobs``.

The per-image table (``table.parquet``, one row per image in dataset order):

========================  ===========================================================
``index``, ``id``         dataset position and image id
``label``                 the true label (a list for multilabel)
``prediction``, ``prob``  the predicted class and its probability; ``probs`` all of them
``target``                the class explained
``budget_<structure>``    share of positive relevance inside each structure (NaN where the
                          structure is not annotated), ``budget_outside`` outside all of them
``pointing_<structure>``  pointing game per structure (the map's maximum inside it; NaN where
                          not annotated)
``error``                 with ``on_error="skip"``: why the image could not be read (else None);
                          such rows have NaN results and an all-zero map
========================  ===========================================================

Per-image results do not depend on the number of processes: batches never cross a shard, and
methods that draw random numbers (SmoothGrad, GradientSHAP...) are seeded per batch from
``seed`` and the batch's first index.
"""
from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

__all__ = ["explain_dataset", "ExplainResult"]


@dataclass(frozen=True)
class ExplainResult:
    """A finished ``explain_dataset`` folder.

    Attributes:
        store: the ``workbench.jobs.Store`` (manifest, shards).
        table: the per-image table (see the module docstring).
        maps: the attribution maps, (N, H, W) float16, memory-mapped (``ShardedArray``).
    """

    store: Any
    table: pd.DataFrame
    maps: Any

    @property
    def structures(self) -> list[str]:
        return [c[len("budget_"):] for c in self.table.columns if c.startswith("budget_")]

    def budget(self, by: str | None = None, *, bootstrap: int = 1000, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
        """The cohort's relevance budget per anatomical structure, with bootstrap CIs
        (``workbench.evaluation.cohort_budget``), optionally per group of a table column.

        Args:
            by: a column of the table (e.g. "prediction", "label") to split the cohort by.
            bootstrap, ci, seed: as ``cohort_budget``.

        Returns:
            One row per structure (and group): structure, mean, lo, hi, std, n (and ``by``).
        """
        from workbench.evaluation.localisation import cohort_budget
        t = self.table
        if "error" in t.columns:
            t = t[t["error"].isna()]
        if by is not None and by not in t.columns:
            raise ValueError(f"by={by!r} is not a column of the table; columns are {list(t.columns)}.")
        groups = [(None, t)] if by is None else list(t.groupby(by, sort=True))
        out = []
        for key, g in groups:
            tidy = pd.DataFrame([{"image": int(i), "structure": s, "share": 0.0 if np.isnan(v) else float(v),
                                  "present": not np.isnan(v)}
                                 for s in self.structures for i, v in zip(g["index"], g[f"budget_{s}"])])
            res = cohort_budget(tidy, bootstrap=bootstrap, ci=ci, seed=seed)
            if by is not None:
                res.insert(0, by, key)
            out.append(res)
        return pd.concat(out, ignore_index=True)


class _SkipErrors(torch.utils.data.Dataset):
    """Samples of ``data``; one that cannot be read becomes an all-zero placeholder with ``error``."""

    def __init__(self, data: Any, shape: tuple[int, ...], labels: torch.Tensor | None, ids: list[str]) -> None:
        self.data, self.shape, self.labels, self.ids = data, shape, labels, ids

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            return self.data[i]
        except (ValueError, OSError, RuntimeError) as e:
            label = self.labels[i] if self.labels is not None else torch.tensor(0)
            return {"image": torch.zeros(self.shape), "label": label, "masks": {}, "concepts": None, "meta": {},
                    "id": self.ids[i], "index": i, "error": f"{type(e).__name__}: {e}"}


def _collate(samples: list[dict[str, Any]], structures: tuple[str, ...]) -> dict[str, Any]:
    from workbench.data._base import collate
    b = collate(samples, structures=structures)
    b["error"] = [s.get("error") for s in samples]
    return b


def _jsonable_kw(kw: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in kw.items():
        if isinstance(v, (str, int, float, bool, type(None))) or (
                isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float, bool)) for x in v)):
            out[k] = v
        else:  # a module or tensor argument: recorded by its repr (type and shape), not its content
            out[k] = f"<{type(v).__name__}>"
    return out


def explain_dataset(model: torch.nn.Module, data: Any, *, out: str | os.PathLike,
                    method: str = "integrated_gradients", target: int | str | None = None, batch_size: int = 32,
                    device: str | torch.device | None = "auto", shard_size: int = 256,
                    num_workers: int | str = "auto", on_error: str = "raise", seed: int = 0,
                    progress: bool = True, overwrite: bool = False, **method_kw: Any) -> ExplainResult:
    """Attribute every image of ``data`` and score the maps against its masks, into ``out``.

    Safe to interrupt and rerun: finished shards are kept and the rerun does the rest; a folder
    written for another model, data, method or setting is refused. Under ``torchrun
    --nproc_per_node N`` every rank runs this same call: the shards are dealt out to the ranks
    (no image twice, none missed), each rank uses its own GPU (``cuda:LOCAL_RANK``) and rank 0
    merges the table.

    Args:
        model: a classifier taking [0, 1] images; not modified (run in eval mode, on a copy when
            it has to move to ``device``).
        data: a dataset (in memory or lazy, ``Subset``/``ConcatDataset`` too); masks in its
            samples (e.g. from ``workbench.data.attach_chexmask``) give the per-structure columns.
        out: the output folder.
        method: an attribution method (``workbench.attribution.METHODS.names()``).
        target: class to explain: None (the predicted class), an int (that class for every
            image), or "label" (the true label; binary/multiclass).
        batch_size: images per attribution call.
        device: "auto" (this rank's GPU, else the CPU) or a device.
        shard_size: images per shard (results are written shard by shard).
        num_workers: DataLoader workers reading the images ("auto": half the cores, at most 4).
        on_error: "raise" (an unreadable image stops the job, naming the file) or "skip" (it is
            recorded in the table's ``error`` column with NaN results; the job goes on).
        seed: seeds the methods' random draws, per batch.
        progress: progress bar on rank 0.
        overwrite: when ``out`` holds results of another model/data/method, delete them and start
            over (default: refuse).
        **method_kw: the method's settings (e.g. ``n_steps=32``, ``internal_batch_size=64``).

    Returns:
        ExplainResult (``.table``, ``.maps``, ``.budget()``), the same on every rank.

    Examples:
        >>> res = explain_dataset(model, ds, out="runs/ig", method="integrated_gradients")  # doctest: +SKIP
        >>> res.budget(by="prediction")                                                     # doctest: +SKIP
    """
    from workbench import jobs
    from workbench._checks import check_choice, check_dataset, check_int, check_model, check_output_path
    from workbench._device import model_on
    from workbench._train_data import resolve_workers
    from workbench.attribution import METHODS, attribute
    from workbench.data._info import dataset_ids, dataset_info, dataset_labels
    from workbench.evaluation.localisation import pointing_game, structure_budget

    check_model(model)
    check_dataset(data, name="data")
    if isinstance(data, (tuple, list)) or torch.is_tensor(data):
        raise TypeError("explain_dataset takes a dataset (workbench.data.load(...)), not tensors; wrap images in "
                        "workbench.data.ArrayDataset(images, labels, classes=..., task=...).")
    check_int(batch_size, "batch_size")
    check_int(shard_size, "shard_size")
    check_choice(on_error, "on_error", ("raise", "skip"))
    METHODS.get(method)  # unknown methods raise with the list of valid ones
    if not (target is None or target == "label" or (isinstance(target, (int, np.integer)) and not isinstance(target, bool))):
        raise ValueError(f"target must be None (the predicted class), a class index or 'label'; got {target!r}.")
    out = check_output_path(out, directory=True, name="out")
    info = dataset_info(data)
    if target == "label" and info.task == "multilabel":
        raise ValueError("target='label' needs one class per image; for a multilabel dataset pass a class index.")
    d = jobs.distributed()
    dev = jobs.rank_device(device)
    run_model, dev = model_on(model, dev)
    spec = {"kind": "explain", "model": jobs.fingerprint(model), "data": jobs.fingerprint(data), "method": method,
            "method_kw": _jsonable_kw(method_kw), "target": target if target is None or target == "label" else int(target),
            "structures": list(info.structures), "seed": int(seed), "on_error": on_error}
    job = jobs.Job(out, spec, n=len(data), shard_size=shard_size, progress=progress, desc=f"explain {method}",
                   overwrite=overwrite)
    source = data
    if on_error == "skip":
        shape = info.image_shape or tuple(data[0]["image"].shape)
        source = _SkipErrors(data, shape, dataset_labels(data), dataset_ids(data))
    collate = functools.partial(_collate, structures=info.structures)
    was = [(m, m.training) for m in run_model.modules()]
    try:
        run_model.eval()
        for shard in job.shards(source, batch_size=batch_size, num_workers=resolve_workers(num_workers),
                                device=dev, collate_fn=collate):
            maps, rows = [], []
            for batch in shard:
                m, r = _explain_batch(run_model, batch, dev, method, target, seed, info, method_kw,
                                      attribute, structure_budget, pointing_game)
                maps.append(m)
                rows.extend(r)
            shard.write({"maps": np.concatenate(maps)}, rows=rows)
    finally:
        for m, flag in was:
            m.train(flag)
    store = job.finish()
    return ExplainResult(store=store, table=store.table, maps=store.array("maps"))


def _explain_batch(model: torch.nn.Module, batch: dict[str, Any], dev: torch.device, method: str, target: Any,
                   seed: int, info: Any, method_kw: dict[str, Any], attribute: Any, structure_budget: Any,
                   pointing_game: Any) -> tuple[np.ndarray, list[dict[str, Any]]]:
    from workbench._checks import check_images
    x = batch["image"].to(dev, non_blocking=True).float()
    errors = batch.get("error") or [None] * len(x)
    ok = torch.tensor([e is None for e in errors])
    if ok.any():
        check_images(x[ok], model, name=f"images {batch['id'][:3]}...")
    with torch.no_grad():
        logits = model(x).float()
    probs = torch.sigmoid(logits) if info.task == "multilabel" else logits.softmax(-1)
    pred = probs.argmax(-1).cpu()
    if target is None:
        tgt = pred
    elif target == "label":
        tgt = torch.as_tensor(batch["label"]).long().cpu()
    else:
        tgt = torch.full((len(x),), int(target), dtype=torch.long)
    first = int(batch["index"][0])
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(seed * 1_000_003 + first)   # the same draws whichever rank gets this batch
        att = attribute(model, x, target=tgt, method=method, **method_kw)
    maps = att.maps.detach().float().cpu()
    maps[~ok] = 0.0
    n = len(x)
    cols: dict[str, Any] = {}
    structures = list(batch["masks"])
    if structures:
        masks = {"masks": {s: batch["masks"][s] for s in structures},
                 "mask_present": {s: batch["mask_present"][s] for s in structures}}
        tidy = structure_budget(maps, masks)
        for s in [*structures, "outside"]:
            part = tidy[tidy["structure"] == s]
            cols[f"budget_{s}"] = np.where(part["present"].to_numpy(), part["share"].to_numpy(), np.nan)
        with warnings.catch_warnings():  # a structure absent from a whole batch is NaN, not a warning
            warnings.simplefilter("ignore")
            for s in structures:
                pg = pointing_game(maps, {"masks": {s: masks["masks"][s]},
                                          "mask_present": {s: masks["mask_present"][s]}})
                cols[f"pointing_{s}"] = np.where(pg.valid.numpy(), pg.scores.numpy(), np.nan)
    labels = torch.as_tensor(batch["label"])
    probs_np = probs.cpu().numpy()
    rows = []
    for j in range(n):
        bad = errors[j] is not None
        label = labels[j].tolist()
        row = {"id": batch["id"][j], "label": label, "prediction": None if bad else int(pred[j]),
               "prob": float("nan") if bad else float(probs_np[j, pred[j]]),
               "probs": [float("nan")] * probs_np.shape[1] if bad else probs_np[j].astype(float).tolist(),
               "target": None if bad else int(tgt[j]), "error": errors[j]}
        for k, v in cols.items():
            row[k] = float("nan") if bad else float(v[j])
        rows.append(row)
    return maps.numpy(), rows
