"""Datasets at scale -> benchmarks/tables/scale.md.

Parts (``--parts memory,fit,explain,chexmask``; each rewrites only its own section of the table):

- memory: a folder of 20,000 generated 256 px PNGs (phantom radiographs, each file shifted so no
  two are equal; written to a temporary folder, deleted afterwards): memory growth of the whole
  process tree (unique set size, main process and DataLoader workers) while a lazy dataset is
  iterated once through fit's batch source. Target <= 300 MB.
- fit: ``fit`` throughput (images/s, one epoch of 640 images at 128 px, batch 64) on the lazy
  dataset vs the in-memory dataset of the same images, ResNet-18 and ViT-tiny; runs interleaved,
  medians of ``--rounds``. Target ratio >= 0.9.
- explain: ``workbench explain`` (integrated gradients, 8 steps, ResNet-18 at 64 px) over 2,000
  images of that folder in one process vs ``torchrun --nproc_per_node 2`` (gloo): wall time of
  each command (fresh processes) and whether every map and table row is identical.
- gpu: on a CUDA machine, explain_dataset images/s for integrated gradients and Grad-CAM at
  224 px (without one, the section says so).
- chexmask: decoding speed of CheXmask RLE at 1024 px (masks/s), the decoded masks compared with
  the encoded ones, and attach_chexmask's CSV throughput.

Usage: ``WORKBENCH_DATA=/work/cache/data flock /work/heavy.lock .venv/bin/python benchmarks/bench_scale.py``
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "benchmarks" / "tables" / "scale.md"
sys.path.insert(0, str(ROOT))

import workbench as wb  # noqa: E402

TITLE = "# Datasets at scale (`benchmarks/bench_scale.py`)"


def machine() -> str:
    return (f"{os.cpu_count()} CPU cores (shared with other jobs), no GPU, torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def write_section(name: str, body: str) -> None:
    """Replace section ``name`` (a ``## `` heading) of the table file, keeping the others."""
    text = TABLE.read_text() if TABLE.exists() else TITLE + "\n"
    head = f"## {name}"
    parts = text.split("\n## ")
    kept = [parts[0].rstrip()] + ["## " + p.rstrip() for p in parts[1:] if not ("## " + p).startswith(head)]
    order = ["## Lazy folder", "## fit", "## workbench explain", "## CheXmask", "## GPU"]
    sections = kept[1:] + [f"{head}\n\n{body.strip()}"]
    sections.sort(key=lambda s: next((i for i, o in enumerate(order) if s.startswith(o)), 99))
    TABLE.write_text("\n\n".join([kept[0]] + sections) + "\n")
    print(f"{head}\n\n{body}")


# ---------------------------------------------------------------------------------- the folder
def make_folder(root: Path, n: int, size: int = 256) -> float:
    """n PNGs: 256 phantom radiographs, each file a copy shifted by k // 256 pixels; labels.csv."""
    from PIL import Image
    t0 = time.perf_counter()
    base = wb.data.load("phantom", split="train", n=256, size=size, progress=False)
    imgs = base.images[:, 0].numpy()
    labels = base.labels.numpy()
    (root / "images").mkdir(parents=True)
    lines = ["id,label"]
    for k in range(n):
        img = np.roll(imgs[k % 256], k // 256, axis=1)
        Image.fromarray(img).save(root / "images" / f"img{k:05d}.png", compress_level=1)
        lines.append(f"img{k:05d},{int(labels[k % 256])}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return time.perf_counter() - t0


def tree_uss() -> int:
    import psutil
    me = psutil.Process()
    total = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_full_info().uss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def part_memory(folder: Path, n: int) -> None:
    from workbench._train_data import BatchSource
    ds = wb.data.load(folder, split=None, lazy=None if n > 10_000 else True)   # 20,000 images: lazy by itself
    assert isinstance(ds, wb.data.FolderDataset), type(ds)
    base = tree_uss()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_uss())
            time.sleep(0.25)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    src = BatchSource(ds, 64, torch.device("cpu"), num_workers=2)
    seen = 0
    for batch in src(shuffle=True, generator=torch.Generator().manual_seed(0)):
        seen += len(batch["image"])
    wall = time.perf_counter() - t0
    end = tree_uss()
    del src
    stop.set()
    th.join()
    in_memory = n * 256 * 256 / 2 ** 20
    write_section("Lazy folder: memory while iterating once", f"""_Machine: {machine()}._

{n:,} generated 256 px PNGs (phantom radiographs, written by the benchmark into a temporary folder
and deleted afterwards). `load(folder)` picks the lazy form by itself (more than 10,000 images);
the images are iterated once in shuffled batches of 64 by fit's batch source with 2 DataLoader
workers. Memory is the unique set size of the main process and its workers together.

| images read | wall s | images/s | memory growth, peak (MB) | growth at the end (MB) | the same images held in memory (MB) | target |
|---|---|---|---|---|---|---|
| {seen:,} | {wall:.0f} | {seen / wall:.0f} | **{(peak[0] - base) / 2**20:.0f}** | {(end - base) / 2**20:.0f} | {in_memory:.0f} | <= 300 MB |
""")


# ---------------------------------------------------------------------------------- fit
def part_fit(folder: Path, rounds: int, total: int, n: int = 640) -> None:
    torch.set_num_threads(2)
    mem = wb.data.load(folder, split=None, size=128, n=n, lazy=False)
    lazy = wb.data.load(folder, split=None, size=128, n=n, lazy=True)
    configs = [("resnet18", {}), ("vit_tiny", {})]
    rows = []
    for name, kw in configs:
        speeds: dict[str, list[float]] = {"memory": [], "lazy": []}
        for r in range(rounds):
            for kind, ds in (("memory", mem), ("lazy", lazy)) if r % 2 == 0 else (("lazy", lazy), ("memory", mem)):
                torch.manual_seed(0)
                model = wb.models.create(name, num_classes=2, img_size=128, in_chans=1, **kw)
                h = wb.fit(model, ds, epochs=1, batch_size=64, lr=1e-3, progress=False, num_workers="auto")
                speeds[kind].append(h.rows[0]["images_per_s"])
                print(name, kind, f"{speeds[kind][-1]:.1f} img/s", flush=True)
        m, z = statistics.median(speeds["memory"]), statistics.median(speeds["lazy"])
        ratios = [a / b for a, b in zip(speeds["lazy"], speeds["memory"])]
        rows.append(f"| {name} | 1x128x128 | 64 | {m:.1f} | {z:.1f} | **{z / m:.2f}** "
                    f"({', '.join(f'{x:.2f}' for x in ratios)}) |")
    from workbench._train_data import resolve_workers
    write_section("fit on the lazy folder vs in memory", f"""_Machine: {machine()}._

One epoch of the same {n} images (from the {total:,}-PNG folder, resized to 128 px) per run: in memory
(read at load time, batched by indexing) vs lazy (decoded and resized in {resolve_workers('auto')}
DataLoader worker(s), `num_workers="auto"` on this 2-core machine); `History.images_per_s`
(training time, reading included). {rounds} rounds, lazy and in-memory interleaved, medians.

| model | input | batch | in memory img/s | lazy img/s | lazy / in memory (median; per round) |
|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n\nTarget >= 0.9.\n")


# ---------------------------------------------------------------------------------- explain
def part_explain(folder: Path, rounds: int, n: int = 2000) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="wb_explain_"))
    try:
        sub = tmp / "ds"
        (sub / "images").mkdir(parents=True)
        lines = (folder / "labels.csv").read_text().splitlines()[: n + 1]
        for line in lines[1:]:
            i = line.split(",")[0]
            os.symlink(folder / "images" / f"{i}.png", sub / "images" / f"{i}.png")
        (sub / "labels.csv").write_text("\n".join(lines) + "\n")
        torch.manual_seed(0)
        wb.models.save(wb.models.create("resnet18", num_classes=2, img_size=64, in_chans=1), tmp / "model")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            env.pop(k, None)

        def argv(out: Path) -> list[str]:
            return ["explain", "--checkpoint", str(tmp / "model"), "--data", str(sub), "--split", "all",
                    "--method", "integrated_gradients", "--n-steps", "8", "--out", str(out), "--batch-size", "32",
                    "--bootstrap", "0", "--no-progress", "--device", "cpu"]

        times: dict[str, list[float]] = {"one": [], "two": []}
        outs = {}
        for r in range(rounds):
            for kind in (("one", "two") if r % 2 == 0 else ("two", "one")):
                out = tmp / f"{kind}{r}"
                cmd = ([sys.executable, "-m", "workbench.cli"] if kind == "one" else
                       [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "workbench.cli"]) + argv(out)
                t0 = time.perf_counter()
                res = subprocess.run(cmd, env=env, capture_output=True, text=True)
                times[kind].append(time.perf_counter() - t0)
                if res.returncode:
                    raise RuntimeError(res.stdout[-2000:] + res.stderr[-4000:])
                outs[kind] = out
                print(kind, f"{times[kind][-1]:.0f} s", flush=True)
        one, two = wb.jobs.open_store(outs["one"]), wb.jobs.open_store(outs["two"])
        same_maps = all(np.array_equal(a, b) for (_, a), (_, b) in zip(one.array("maps").blocks(),
                                                                       two.array("maps").blocks()))
        cols = [c for c in one.table.columns if c != "probs"]
        same_table = one.table[cols].equals(two.table[cols])
        t1, t2 = statistics.median(times["one"]), statistics.median(times["two"])
        write_section("workbench explain: torchrun with 2 processes vs one process", f"""_Machine: {machine()}._

`workbench explain` (integrated gradients, 8 steps, batch 32, ResNet-18 with random weights at
64 px, shards of 256) over the first {n:,} images of the folder; each command in a fresh process,
imports and start-up included. One process uses torch's default threads (2); under
`torchrun --nproc_per_node 2 --standalone` (gloo) each rank has 1 thread (torchrun's default) and
takes every other shard; rank 0 merges the table. {rounds} round(s), interleaved, medians.

| command | wall s (per round) | wall / one process | maps identical | table identical |
|---|---|---|---|---|
| one process | {t1:.0f} ({', '.join(f'{t:.0f}' for t in times['one'])}) | 1.00 | | |
| torchrun, 2 processes | {t2:.0f} ({', '.join(f'{t:.0f}' for t in times['two'])}) | **{t2 / t1:.2f}** | **{'yes' if same_maps else 'NO'}** | **{'yes' if same_table else 'NO'}** |

On 2 cores, two processes of 1 thread do the same work as one process of 2 threads; the ratio
shows what the sharding and merging cost (start-up of a second process, gloo, the merge). With
one GPU per rank the ranks would divide the work.
""")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------- chexmask
def part_chexmask(n_masks: int = 300) -> None:
    import pandas as pd
    from workbench.data.chexmask import decode_rle, encode_rle
    rng = np.random.default_rng(0)
    h = w = 1024
    y, x = np.mgrid[:h, :w]

    def blob(cy, cx, ry, rx):
        return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1

    masks, rles = [], []
    for k in range(n_masks):
        j = rng.normal(0, 20, 4)
        m = [blob(480 + j[0], 300 + j[1], 330, 150), blob(480 + j[2], 720 + j[3], 330, 150),
             blob(620 + j[0], 560 + j[1], 150, 170)][k % 3]
        masks.append(m)
        rles.append(encode_rle(m))
    t0 = time.perf_counter()
    decoded = [decode_rle(r, h, w) for r in rles]
    t_dec = time.perf_counter() - t0
    exact = all(np.array_equal(a, b) for a, b in zip(decoded, masks))
    runs = np.mean([len(r.split()) // 2 for r in rles])
    # attach: a CSV of 1,000 rows (3 masks each) to a 1,000-image lazy folder, then masks per sample at 224 px
    tmp = Path(tempfile.mkdtemp(prefix="wb_chexmask_"))
    try:
        from PIL import Image
        (tmp / "images").mkdir()
        img = np.zeros((h, w), np.uint8)
        rows = []
        for k in range(1000):
            Image.fromarray(img[:8, :8]).save(tmp / "images" / f"{k:05d}.png")
            rows.append({"dicom_id": f"{k:05d}", "Dice RCA (Mean)": 0.9, "Left Lung": rles[(3 * k) % n_masks],
                         "Right Lung": rles[(3 * k + 1) % n_masks], "Heart": rles[(3 * k + 2) % n_masks],
                         "Height": h, "Width": w})
        pd.DataFrame(rows).to_csv(tmp / "chexmask.csv", index=False)
        ds = wb.data.load(tmp, split=None, lazy=True)
        t0 = time.perf_counter()
        att = wb.data.attach_chexmask(ds, tmp / "chexmask.csv")
        t_attach = time.perf_counter() - t0
        runs_obj = att._runs
        t0 = time.perf_counter()
        for k in range(200):
            for s in ("left_lung", "right_lung", "heart"):
                runs_obj.mask(s, k, (224, 224))
        t_mask = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_section("CheXmask decoding", f"""_Machine: {machine()}._

{n_masks} lung and heart masks at 1024 x 1024 (CheXmask's preprocessed resolution; ellipses with
jitter, {runs:.0f} runs each on average) encoded with `encode_rle` and decoded with `decode_rle`.

| what | per second | notes |
|---|---|---|
| `decode_rle` at 1024 px (parse + paint) | **{n_masks / t_dec:.0f} masks** | decoded == encoded for all {n_masks}: **{'yes' if exact else 'NO'}** |
| `attach_chexmask`: CSV rows read, matched, parsed (3 masks each) | {1000 / t_attach:.0f} rows | 1,000 rows, lazy folder of 1,000 images |
| a lazy sample's mask: decode from runs + resize to 224 px | {600 / t_mask:.0f} masks | what each DataLoader worker does per structure |
""")


def part_gpu(n: int = 512) -> None:
    """explain_dataset images/s for integrated gradients and Grad-CAM at 224 px on CUDA (when there is one)."""
    if not torch.cuda.is_available():
        write_section("GPU", f"""_Machine: {machine()}._

No GPU was lent to this task, so images per second of `explain_dataset` for integrated gradients
and Grad-CAM at 224 px on a GPU were not measured. On a GPU machine:
`python benchmarks/bench_scale.py --parts gpu` (ResNet-18 and DenseNet-121 at 224 px, {n} images).
""")
        return
    data = wb.data.load("phantom", split="test", n=n, size=224, progress=False)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="wb_gpu_"))
    try:
        for arch in ("resnet18", "densenet121"):
            model = wb.models.create(arch, num_classes=2, img_size=224, in_chans=1).cuda()
            for method, kw, batch in (("integrated_gradients", {"n_steps": 32}, 32), ("gradcam", {}, 128)):
                wb.explain_dataset(model, torch.utils.data.Subset(data, range(batch)), out=tmp / "warm",
                                   method=method, batch_size=batch, progress=False, overwrite=True, **kw)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                wb.explain_dataset(model, data, out=tmp / f"{arch}_{method}", method=method, batch_size=batch,
                                   progress=False, **kw)
                torch.cuda.synchronize()
                rows.append(f"| {arch} | {method} {kw or ''} | {batch} | {n / (time.perf_counter() - t0):.0f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_section("GPU", f"""_Machine: {torch.cuda.get_device_name()}, torch {torch.__version__}._

`explain_dataset` over {n} phantom images at 224 px (maps written as float16 shards, per-image
table with budgets), after a warm-up pass.

| model | method | batch | images/s |
|---|---|---|---|
""" + "\n".join(rows) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="gpu,chexmask,memory,fit,explain")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--explain-rounds", type=int, default=2)
    args = ap.parse_args()
    parts = args.parts.split(",")
    if "gpu" in parts:
        part_gpu()
    if "chexmask" in parts:
        part_chexmask()
    if not {"memory", "fit", "explain"} & set(parts):
        return
    folder = Path(tempfile.mkdtemp(prefix="wb_scale_"))
    try:
        t = make_folder(folder, args.n)
        print(f"wrote {args.n} PNGs in {t:.0f} s", flush=True)
        if "memory" in parts:
            part_memory(folder, args.n)
        if "fit" in parts:
            part_fit(folder, args.rounds, args.n)
        if "explain" in parts:
            part_explain(folder, args.explain_rounds)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    print(platform.platform())
    main()
