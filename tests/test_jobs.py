"""workbench.jobs: shards, spec, manifest, resume, and the same job under torchrun (2 CPU processes, gloo)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench import jobs
from workbench.data import ArrayDataset

HERE = Path(__file__).resolve().parent


def _data(n=10):
    return ArrayDataset(torch.rand(n, 1, 8, 8), torch.arange(n) % 2, classes=("a", "b"), task="binary",
                        ids=[f"img{i}" for i in range(n)])


def _run(job, data=None, stop_after=None, calls=None):
    for k, shard in enumerate(job.shards(data, batch_size=3) if data is not None else job.shards()):
        if data is not None:
            images = torch.cat([b["image"] for b in shard])
            assert len(images) == len(shard)
        else:
            images = torch.stack([torch.full((2, 2), float(i)) for i in shard.indices])
        shard.write({"maps": images.reshape(len(shard), -1)}, rows={"mean": images.flatten(1).mean(1).tolist()})
        if calls is not None:
            calls.append(shard.index)
        if stop_after is not None and k + 1 == stop_after:
            return None  # an interruption: the generator is abandoned
    return job.finish()


def test_package_example_writes_float16_shards_table_and_manifest(tmp_path):
    data = _data(10)
    job = jobs.Job(tmp_path, {"what": "pixels", "data": jobs.fingerprint(data)}, n=10, shard_size=4, progress=False)
    assert not (tmp_path / "manifest.json").exists() and (tmp_path / "job.json").exists()
    store = _run(job, data)
    assert (tmp_path / "manifest.json").exists() and sorted(p.name for p in (tmp_path / "shards").iterdir()) == \
        ["000000", "000001", "000002"]
    maps = store.array("maps")
    assert maps.shape == (10, 64) and maps.dtype == np.float16 and len(list(maps.blocks())) == 3
    expected = data.images.reshape(10, -1).numpy()
    np.testing.assert_allclose(maps[3:7].astype(np.float32), expected[3:7], atol=1e-3)   # across a shard border
    np.testing.assert_allclose(maps[[9, 0]].astype(np.float32), expected[[9, 0]], atol=1e-3)
    assert store.table["index"].tolist() == list(range(10))
    np.testing.assert_allclose(store.table["mean"], expected.mean(1), rtol=1e-5)
    again = jobs.Job(tmp_path, {"what": "pixels", "data": jobs.fingerprint(data)}, n=10, shard_size=4, progress=False)
    assert again.done and list(again.shards()) == [] and again.finish().n == 10


def test_resume_redoes_only_unfinished_shards_and_never_takes_a_partial_one(tmp_path, monkeypatch):
    spec = {"what": "squares"}
    first: list[int] = []
    assert _run(jobs.Job(tmp_path, spec, n=11, shard_size=2, progress=False), stop_after=2, calls=first) is None
    assert first == [0, 1] and not (tmp_path / "manifest.json").exists()
    with pytest.raises(ValueError, match="unfinished .2 of 6 shards"):
        jobs.open_store(tmp_path)
    # a crash while writing shard 2: its temporary folder stays behind, half-written
    job = jobs.Job(tmp_path, spec, n=11, shard_size=2, progress=False)
    real_save = np.save
    monkeypatch.setattr(np, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        _run(job)
    monkeypatch.setattr(np, "save", real_save)
    (tmp_path / "shards" / ".000002.crashed").mkdir()
    (tmp_path / "shards" / ".000002.crashed" / "maps.npy").write_bytes(b"\x93NUMPY half")
    assert not (tmp_path / "shards" / "000002").exists()
    rest: list[int] = []
    store = _run(jobs.Job(tmp_path, spec, n=11, shard_size=2, progress=False), calls=rest)
    assert rest == [2, 3, 4, 5] and store.n == 11 and len(store.table) == 11
    assert not [p for p in (tmp_path / "shards").iterdir() if p.name.startswith(".")]
    assert store.array("maps")[10].tolist() == [10.0] * 4


def test_a_folder_of_another_job_is_refused(tmp_path):
    _run(jobs.Job(tmp_path, {"model": "a", "method": "ig"}, n=4, shard_size=2, progress=False))
    with pytest.raises(ValueError, match=r"another job .*spec\.method"):
        jobs.Job(tmp_path, {"model": "a", "method": "gradcam"}, n=4, shard_size=2, progress=False)
    with pytest.raises(ValueError, match="shard_size"):
        jobs.Job(tmp_path, {"model": "a", "method": "ig"}, n=4, shard_size=3, progress=False)
    with pytest.raises(ValueError, match=r"another spec \(differs in: model"):
        jobs.open_store(tmp_path, expect={"model": "b"})
    assert jobs.open_store(tmp_path, expect={"method": "ig"}).n == 4
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="no job.json"):
        jobs.Job(tmp_path / "other", {"model": "a"}, n=4, progress=False)
    with pytest.raises(FileNotFoundError, match="no finished job"):
        jobs.open_store(tmp_path / "nothing")


def test_shard_writes_are_checked(tmp_path):
    job = jobs.Job(tmp_path, {"x": 1}, n=3, shard_size=3, progress=False)
    shard = next(iter(job.shards()))
    with pytest.raises(ValueError, match=r"shape \(2,\) but shard 0 covers 3"):
        shard.write({"a": np.zeros(2)})
    with pytest.raises(ValueError, match="beyond float16's range.*dtype='float32'"):
        shard.write({"a": np.array([1.0, 7e4, 0.0])})
    with pytest.raises(ValueError, match="not allowed"):
        shard.write({"../a": np.zeros(3)})
    with pytest.raises(ValueError, match="rows has 2 rows"):
        shard.write(rows=[{"a": 1}, {"a": 2}])
    assert not shard.written and not (tmp_path / "shards" / "000000").exists()
    shard.write({"a": np.array([1.0, np.inf, 0.0])}, rows=[{"a": 1}] * 3)   # inf stays inf, not an overflow
    with pytest.raises(ValueError, match="already written"):
        shard.write({"a": np.zeros(3)})
    with pytest.raises(ValueError, match="at least one item"):
        jobs.Job(tmp_path / "empty", {}, n=0)


def test_split_and_gather_in_one_process():
    parts = [jobs.split_indices(10, r, 3) for r in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(10))
    assert jobs.distributed().world_size == 1 and jobs.split_indices(5) == [0, 1, 2, 3, 4]
    out = jobs.gather_by_index([2, 0, 1], np.array([[2.0], [0.0], [1.0]]), 3)
    assert out[:, 0].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match=r"missing \[2\]"):
        jobs.gather_by_index([0, 1], np.zeros(2), 3)
    with pytest.raises(ValueError, match="repeated"):
        jobs.gather_by_index([0, 0, 1], np.zeros(3), 3)


def test_fingerprint_tells_models_and_datasets_apart():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert jobs.fingerprint(a) == jobs.fingerprint(a) != jobs.fingerprint(b)
    d = _data(6)
    sub = torch.utils.data.Subset(d, [1, 2])
    assert jobs.fingerprint(sub)["n"] == 2 and jobs.fingerprint(sub) != jobs.fingerprint(d)
    with pytest.raises(TypeError, match="model or a dataset"):
        jobs.fingerprint(3)


def two_ranks(worker: str, *args: str | Path, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 tests/WORKER ARGS...`` on the CPU (gloo), with faulthandler on (a rank that
    crashes prints its Python stacks)."""
    root = HERE.parent
    full_env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONFAULTHANDLER": "1", **(env or {})}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / worker), *map(str, args)]
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)


def torchrun(scenario: str, out: Path, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    """``tests/_dist_worker.py SCENARIO OUT`` under two ranks."""
    return two_ranks("_dist_worker.py", scenario, out, env=env, timeout=timeout)


@pytest.mark.slow
def test_torchrun_two_ranks_split_the_shards_and_a_dead_rank_resumes(tmp_path):
    r = torchrun("jobs", tmp_path, env={"DIE_AFTER": "1"})
    assert r.returncode != 0, r.stdout + r.stderr
    assert not (tmp_path / "job" / "manifest.json").exists()
    make_explain_inputs(tmp_path)
    r = torchrun("jobs,train,explain", tmp_path, env={"RUN": "2"})  # the rerun, DDP training, explain, evaluate
    assert r.returncode == 0, r.stdout + r.stderr
    res = [json.loads((tmp_path / f"rank{k}_run2.json").read_text()) for k in (0, 1)]
    assert [x["world"] for x in res] == [2, 2]
    assert sorted(res[0]["split"] + res[1]["split"]) == list(range(23))
    assert res[0]["gathered"] == res[1]["gathered"] == [10.0 * i for i in range(23)]
    store = jobs.open_store(tmp_path / "job")
    table = store.table
    assert table["index"].tolist() == list(range(23))                      # no image twice, none missed
    np.testing.assert_array_equal(store.array("x")[:, 1], np.arange(23.0) ** 2)
    first = table[table["run"] == 1]
    assert len(first) > 0 and set(first["rank"]) >= {1}                     # the dead rank's shard was kept...
    redone = sorted(set(res[0]["written"]) | set(res[1]["written"]))
    assert not set(first["index"] // 4) & set(redone)                       # ...and not redone
    assert sorted(set(first["index"] // 4) | set(redone)) == list(range(6))

    # fit under DDP (2 ranks x batch 8) equals fit in one process (batch 16); evaluate gathers all ranks
    spec = importlib.util.spec_from_file_location("_dist_worker", HERE / "_dist_worker.py")
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    worker.scenario_train(tmp_path)
    ref = torch.load(tmp_path / "train_rank0_world1.pt")
    ranks = [torch.load(tmp_path / f"train_rank{k}_world2.pt") for k in (0, 1)]
    for a, b, c in zip(ranks[0]["weights"], ranks[1]["weights"], ref["weights"]):
        assert torch.equal(a, b)                                            # ranks stay in sync
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)              # and train like one process
    for a, b, c in zip(ranks[0]["student"], ranks[1]["student"], ref["student"]):   # fit(teacher=...) too
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)
    assert ranks[0]["loss"] == pytest.approx(ref["loss"], rel=1e-4) and ranks[0]["val_auc"] == ref["val_auc"]
    assert ranks[0]["auc"] == ranks[1]["auc"] == ref["auc"] and ranks[0]["n"] == ranks[1]["n"] == 39

    # `workbench explain` over 2 ranks: the same per-image results as one process; evaluate prints once
    from workbench import cli
    assert cli.main(worker.explain_argv(tmp_path, tmp_path / "explain_one")) == 0
    one, two = jobs.open_store(tmp_path / "explain_one"), jobs.open_store(tmp_path / "explain_ranks")
    np.testing.assert_array_equal(one.array("maps")[:], two.array("maps")[:])
    assert one.table.drop(columns=["probs"]).equals(two.table.drop(columns=["probs"]))
    assert set(two.table["index"]) == set(range(10))
    printed = json_objects(r.stdout)
    evaluations = [o for o in printed if "auc" in o]
    assert len(evaluations) == 1 and evaluations[0]["n"] == 10            # rank 0 reports, once
    assert [o["images"] for o in printed if "images" in o] == [10]
    trained = [o for o in printed if "test" in o]                        # workbench train: DDP, rank 0 writes
    assert len(trained) == 1 and (tmp_path / "train_ranks" / "metrics.json").exists()


def json_objects(text: str) -> list[dict]:
    """Every top-level JSON object printed in ``text``."""
    dec, out, i = json.JSONDecoder(), [], 0
    while (i := text.find("{", i)) != -1:
        try:
            obj, i = dec.raw_decode(text, i)
            out.append(obj)
        except ValueError:
            i += 1
    return out


def make_explain_inputs(root: Path) -> None:
    """ROOT/ds (a folder with lung masks) and ROOT/model (a tiny ViT checkpoint) for the explain scenario."""
    import workbench as wb
    spec = importlib.util.spec_from_file_location("test_explain_helpers", HERE / "test_explain.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    helpers.make_folder(root / "ds")
    wb.models.save(helpers.small_model(), root / "model")
    rng = np.random.default_rng(0)
    np.savez(root / "tiny.npz", **{f"{s}_images": rng.integers(0, 255, (n, 16, 16), dtype=np.uint8)
                                   for s, n in (("train", 32), ("val", 8), ("test", 8))},
             **{f"{s}_labels": np.arange(n) % 2 for s, n in (("train", 32), ("val", 8), ("test", 8))})
