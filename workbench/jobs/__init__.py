"""Dataset-wide jobs: one sharding and shard-writing mechanism for every job over a whole dataset
(``workbench explain``, ``evaluate`` under ``torchrun``, the SAE activation store).

A job runs unchanged in one process or under ``torchrun --nproc_per_node N`` (PyTorch's own
launcher; ``gloo`` on CPUs, ``nccl`` on GPUs): each rank takes its share of the shards, no image
twice and none missed; rank 0 merges. It is safe to interrupt and rerun: finished shards are
kept, a partly written shard never counts as finished.

Layout of a job folder ``out/``::

    job.json               written first: format, spec (what produces the shards), n, shard_size, dtype
    shards/000000/         one folder per shard of ``shard_size`` consecutive dataset indices,
        <name>.npy         each array (shard_len, ...): floating arrays as float16 (the job's dtype)
        rows.parquet       optional per-item rows, with an ``index`` column (dataset index)
        shard.json         its range and array shapes
    table.parquet          rank 0's merge of every shard's rows, in dataset order
    manifest.json          written last: job.json's content plus the shard list and array shapes;
                           its presence means the job is complete

A shard is written into a hidden temporary folder (``shards/.000003.xxxx``) and renamed into
place only when every file is complete, so it exists whole or not at all; temporary folders
left by a crash are removed when the job restarts. ``job.json`` makes a folder refuse a job
with another spec (another model, method, layer, data or shard size) instead of mixing them.
Shards are numbered over the dataset, not over ranks: the same folder resumes under any
number of processes, and results do not depend on it (batches never span two shards).

API:

- ``distributed() -> Dist``: rank, world size and local rank from ``torchrun``'s environment
  (RANK, WORLD_SIZE, LOCAL_RANK), initialising the process group on first call; rank 0 of 1
  in a plain process. ``rank_device("auto")``: ``cuda:LOCAL_RANK`` under torchrun with GPUs.
- ``split_indices(n)``: this rank's share of ``range(n)`` (strided).
- ``Job(out, spec, n, shard_size=256, dtype="float16", progress=True, desc=..., overwrite=False)``:
  checks or writes ``job.json`` (rank 0 judges, every rank gets the verdict); ``job.done`` when a
  matching finished job is already there; ``overwrite=True`` deletes another job's files first.
  ``job.shards(data=None, batch_size=..., num_workers=..., device=...)`` yields this rank's
  unfinished ``Shard``s (``.index``, ``.indices``; with ``data`` each iterates over its batches,
  read by one DataLoader with workers); ``shard.write(arrays={...}, rows=...)``;
  ``job.finish() -> Store`` (rank 0 merges and writes the manifest; every rank gets the store).
- ``open_store(out, expect=None) -> Store``: ``.spec``, ``.n``, ``.shards``, ``.table`` (pandas),
  ``.array(name)`` -> ``ShardedArray`` (memory-mapped; ``arr[i]``, ``arr[a:b]``, ``arr.blocks()``).
  ``expect={...}`` refuses a store written with another spec.
- ``fingerprint(model_or_dataset)``: JSON identifying a model (config + weight hash) or dataset
  (name, n, classes, image shape, hash of ids) for a spec.
- Collectives that are no-ops in one process: ``barrier()``, ``broadcast(obj)``,
  ``all_gather(obj)``, ``gather_by_index(indices, values, n)`` (every rank's rows back in
  dataset order, refusing missing or repeated indices).

Examples:
    >>> import tempfile, numpy as np, torch
    >>> from workbench import jobs
    >>> from workbench.data import ArrayDataset
    >>> data = ArrayDataset(torch.rand(10, 1, 8, 8), torch.zeros(10, dtype=torch.long),
    ...                     classes=("a", "b"), task="binary")
    >>> out = tempfile.mkdtemp()
    >>> job = jobs.Job(out, {"what": "mean brightness", "data": jobs.fingerprint(data)}, n=len(data),
    ...                shard_size=4, progress=False)
    >>> for shard in job.shards(data, batch_size=2):       # this rank's unfinished shards
    ...     images = torch.cat([batch["image"] for batch in shard])
    ...     shard.write({"pixels": images[:, 0]}, rows={"mean": images.mean((1, 2, 3)).tolist()})
    >>> store = job.finish()                                # rank 0 merges; manifest written last
    >>> store.array("pixels").shape, store.array("pixels").dtype.name, len(store.table)
    ((10, 8, 8), 'float16', 10)

The same script under ``torchrun --nproc_per_node 2 script.py`` writes the same folder, each rank
computing half of the shards. Running it again skips every finished shard.
"""
from __future__ import annotations

from workbench.jobs._dist import (Dist, all_gather, all_reduce_sum, barrier, broadcast, distributed,
                                  gather_by_index, rank_device, split_indices)
from workbench.jobs._shards import (FORMAT, Job, Shard, ShardedArray, Store, fingerprint, open_store)

__all__ = ["Dist", "distributed", "rank_device", "split_indices", "barrier", "broadcast", "all_gather",
           "all_reduce_sum", "gather_by_index", "Job", "Shard", "Store", "ShardedArray", "open_store",
           "fingerprint", "FORMAT"]
