"""Run by tests under ``torchrun --nproc_per_node 2`` (gloo on the CPU): ``python _dist_worker.py SCENARIO OUT``.

Each scenario writes what the test checks into OUT (one JSON per rank where ranks differ).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)


def scenario_jobs(out: Path) -> None:
    """A 23-item job in shards of 4; DIE_AFTER=k makes rank 1 die after writing k shards."""
    from workbench import jobs

    d = jobs.distributed()
    die_after = int(os.environ.get("DIE_AFTER", "-1"))
    run = int(os.environ.get("RUN", "1"))
    job = jobs.Job(out / "job", {"what": "squares"}, n=23, shard_size=4, progress=False)
    written = []
    for shard in job.shards():
        idx = np.asarray(shard.indices)
        shard.write({"x": np.stack([idx, idx ** 2], 1).astype(np.float32)},
                    rows={"rank": [d.rank] * len(idx), "run": [run] * len(idx)})
        written.append(shard.index)
        if d.rank == 1 and len(written) == die_after:
            raise SystemExit(3)  # a rank that dies mid-job
    store = job.finish()
    gathered = jobs.gather_by_index(list(jobs.split_indices(23)),
                                    np.asarray(jobs.split_indices(23), dtype=np.float64) * 10, 23)
    (out / f"rank{d.rank}_run{run}.json").write_text(json.dumps({
        "rank": d.rank, "world": d.world_size, "written": written, "n": store.n,
        "gathered": gathered.tolist(), "split": jobs.split_indices(23)}))


if __name__ == "__main__":
    name, target = sys.argv[1], Path(sys.argv[2])
    globals()[f"scenario_{name}"](target)
