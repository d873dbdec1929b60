"""Run by tests/test_sae_store.py under ``torchrun --nproc_per_node 2`` (gloo on the CPU):
``python _sae_dist_worker.py OUT``. Rank 0 saves a tiny ViT; both ranks cache its layer into one store."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)


def main(out: Path) -> None:
    import workbench as wb
    from workbench import jobs

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_sae_store import tiny_data, tiny_vit

    def torn_down():  # registered before distributed(), so atexit runs it after workbench's own handler
        import torch.distributed as td
        (out / f"exit{d.rank}.json").write_text(json.dumps({"initialized": td.is_initialized()}))

    import atexit
    atexit.register(torn_down)
    d = jobs.distributed()
    if d.is_main:
        torch.manual_seed(0)
        wb.models.save(tiny_vit(), out / "model")
    jobs.barrier()
    model = wb.models.load(out / "model")
    written = []
    from workbench.jobs import _shards

    real = _shards.Job._write_shard

    def record(self, shard, arrays, rows):
        written.append(shard.index)
        return real(self, shard, arrays, rows)

    _shards.Job._write_shard = record
    store = wb.sae.cache(model, tiny_data(18), layer=1, out=out / "store", shard_size=4, batch_size=3, progress=False)
    (out / f"rank{d.rank}.json").write_text(json.dumps({"rank": d.rank, "world": d.world_size, "written": written,
                                                         "n": store.n_images}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
