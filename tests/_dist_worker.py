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


def explain_argv(root: Path, out: Path) -> list[str]:
    return ["explain", "--checkpoint", str(root / "model"), "--data", str(root / "ds"), "--split", "all",
            "--method", "integrated_gradients", "--n-steps", "8", "--out", str(out), "--batch-size", "3",
            "--shard-size", "4", "--workers", "0", "--bootstrap", "20", "--no-progress", "--device", "cpu"]


def scenario_explain(out: Path) -> None:
    """`workbench explain` and `workbench evaluate` on ROOT/model and ROOT/ds (made by the test)."""
    from workbench import cli
    assert cli.main(explain_argv(out, out / "explain_ranks")) == 0
    assert cli.main(["evaluate", "--checkpoint", str(out / "model"), "--data", str(out / "ds"), "--split", "all",
                     "--bootstrap", "20", "--device", "cpu"]) == 0
    assert cli.main(["train", "--data", str(out / "tiny.npz"), "--model", "vit_tiny", "--patch-size", "4", "--depth",
                     "1", "--out", str(out / "train_ranks"), "--epochs", "1", "--batch-size", "8", "--bootstrap", "0",
                     "--no-progress", "--device", "cpu"]) == 0


def separable(n: int = 64, seed: int = 0):
    from workbench.data import ArrayDataset
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.5
    x[y == 1, :, 2:5, 2:5] += 0.5
    return ArrayDataset(x, y, classes=("neg", "pos"), task="binary")


def scenario_train(out: Path) -> None:
    """fit (DDP under torchrun; a global batch of 16 either way) with validation, then evaluate.

    Run in one process it is the reference the torchrun result must equal."""
    import workbench as wb
    from workbench import jobs

    d = jobs.distributed()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                                torch.nn.Flatten(), torch.nn.Linear(16, 2))
    if d.rank == 1:  # DDP starts every rank from rank 0's weights
        torch.nn.init.normal_(model[0].weight)
    history = wb.fit(model, separable(64), separable(40, seed=1), epochs=2, batch_size=16 // d.world_size, lr=0.05,
                     class_weights=None, progress=False, device="cpu", num_workers=0)
    ev = wb.evaluate(model, torch.utils.data.Subset(separable(40, seed=2), range(1, 40)), device="cpu", num_workers=0)
    # distillation under DDP: a fresh student taught by the trained model (each rank runs the teacher on its share)
    torch.manual_seed(1)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    wb.fit(student, separable(64), epochs=1, batch_size=16 // d.world_size, lr=0.05, class_weights=None,
           progress=False, device="cpu", num_workers=0, teacher=model, distill_weight=0.7)
    torch.save({"weights": [p.detach() for p in model.parameters()], "loss": history.loss,
                "student": [p.detach() for p in student.parameters()],
                "val_auc": history.val_auc, "auc": ev.auc, "n": ev.n, "world": d.world_size},
               out / f"train_rank{d.rank}_world{d.world_size}.pt")


if __name__ == "__main__":
    names, target = sys.argv[1], Path(sys.argv[2])
    for name in names.split(","):
        globals()[f"scenario_{name}"](target)
