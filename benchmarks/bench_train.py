"""Training benchmarks -> benchmarks/tables/train.md.

Parts (``--parts throughput,medmnist,demo``; each rewrites only its own section of the table):

- throughput: images/s of ``workbench.train.fit`` (AdamW, schedule, class weights, loss checks,
  data path) over a bare forward+loss+backward loop (no optimizer) of the same model and batch
  size in the same process; interleaved repeats, medians. Target ratio >= 0.8.
- medmnist: train on the real MedMNIST train split, early-stop on val AUC, evaluate on test
  (bootstrap 95% CIs) for a CNN and a ViT per dataset. Targets: BreastMNIST >= 0.88,
  PneumoniaMNIST >= 0.95 for the best model.
- demo: wall time of ``workbench demo`` (a fresh process, imports included).

Usage: ``.venv/bin/python benchmarks/bench_train.py [--parts ...] [--quick]``
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "benchmarks" / "tables" / "train.md"
sys.path.insert(0, str(ROOT))

import workbench as wb  # noqa: E402
from workbench.data._base import ArrayDataset  # noqa: E402


# ---------------------------------------------------------------------------------- throughput
def _bare(model: torch.nn.Module, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> float:
    """Images/s of forward + loss + backward, no optimizer; bf16 autocast on CUDA as ``fit`` uses."""
    model.train()
    dev = xs[0].device
    _sync(dev)
    t0 = time.perf_counter()
    n = 0
    for x, y in zip(xs, ys):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        n += len(y)
    _sync(dev)
    return n / (time.perf_counter() - t0)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def throughput(repeats: int = 5, n: int = 512, batch: int = 64, size: int = 64, device: str = "cpu") -> str:
    dev = wb.resolve_device(device)
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(n, 1, size, size, generator=g) * 255).to(torch.uint8)
    labels = torch.randint(0, 2, (n,), generator=g)
    labels[:2] = torch.tensor([0, 1])
    ds = ArrayDataset(images, labels, classes=("a", "b"), task="binary")
    xs = [images[i:i + batch].to(dev).float() / 255 for i in range(0, n - batch + 1, batch)]
    ys = [labels[i:i + batch].to(dev) for i in range(0, n - batch + 1, batch)]
    rows = [f"Device {dev}" + (f" ({torch.cuda.get_device_name(dev)}; fit and the bare loop both in bf16 autocast)"
                               if dev.type == "cuda" else "") + ".", "",
            "| model | input | batch | fit img/s | bare fwd+bwd img/s | ratio (median of %d) |" % repeats,
            "|---|---|---|---|---|---|"]
    specs = [("vit_tiny", {"patch_size": 8}), ("resnet18", {})]
    for name, kw in specs:
        torch.manual_seed(0)
        m_fit = wb.models.create(name, 2, size, 1, **kw)
        m_bare = wb.models.create(name, 2, size, 1, **kw).to(dev)
        _bare(m_bare, xs[:1], ys[:1])  # warm-up
        wb.fit(m_fit, ds, epochs=1, batch_size=batch, progress=False, device=dev)
        fits, bares, ratios = [], [], []
        for _ in range(repeats):  # interleaved
            h = wb.fit(m_fit, ds, epochs=1, batch_size=batch, progress=False, device=dev)
            f = h.rows[0]["images_per_s"]
            b = _bare(m_bare, xs, ys)
            fits.append(f), bares.append(b), ratios.append(f / b)
        rows.append(f"| {name} {kw or ''} | 1x{size}x{size} | {batch} | {statistics.median(fits):.1f} | "
                    f"{statistics.median(bares):.1f} | **{statistics.median(ratios):.2f}** |")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------ medmnist
MEDMNIST_RUNS = [
    # dataset, model, size, model kwargs, fit kwargs (+ RandomAffine(10 deg, 5 %, 0.9-1.1), patience max(5, epochs // 3))
    ("breastmnist", "resnet18", 28, {}, {"epochs": 30, "batch_size": 32, "lr": 1e-3}),
    ("breastmnist", "vit_tiny", 28, {"patch_size": 7, "depth": 4}, {"epochs": 20, "batch_size": 32, "lr": 1e-3}),
    ("pneumoniamnist", "resnet18", 28, {}, {"epochs": 6, "batch_size": 64, "lr": 1e-3}),
    ("pneumoniamnist", "vit_tiny", 28, {"patch_size": 7, "depth": 4}, {"epochs": 5, "batch_size": 64, "lr": 1e-3}),
]


def medmnist(quick: bool = False, runs: list | None = None) -> str:
    from workbench.data import shared_data_path
    from workbench.data.transforms import RandomAffine

    root = shared_data_path()
    if root is None or not (root / "medmnist").is_dir():
        return "_skipped: ../shared/data/medmnist not found (set WORKBENCH_SHARED_DATA)._"
    rows = ["| dataset | model | px | epochs run (best) | val AUC | test AUC [95% CI] | test acc | train s | target |",
            "|---|---|---|---|---|---|---|---|---|"]
    targets = {"breastmnist": 0.88, "pneumoniamnist": 0.95}
    for data, name, size, mkw, fkw in runs or MEDMNIST_RUNS:
        path = root / "medmnist" / f"{data}.npz"
        kw = {} if size == 28 else {"size": size}
        train, val, test = (wb.data.load(path, split=s, **kw) for s in ("train", "val", "test"))
        torch.manual_seed(0)
        model = wb.models.create(name, train.num_classes, size, 1, **mkw)
        fkw = dict(fkw)
        if quick:
            fkw["epochs"] = 2
        t0 = time.perf_counter()
        h = wb.fit(model, train, val, augment=RandomAffine(degrees=10, translate=0.05, scale=(0.9, 1.1)),
                   early_stopping=max(5, fkw["epochs"] // 3), progress=False, seed=0, **fkw)
        sec = time.perf_counter() - t0
        ev = wb.evaluate(model, test, bootstrap=1000, seed=0)
        best_val = max(v for v in h.val_auc if v == v)
        rows.append(f"| {data} | {name} {mkw or ''} | {size} | {len(h.rows)} ({h.best_epoch}) | {best_val:.3f} | "
                    f"**{ev.auc:.3f}** [{ev.auc_ci[0]:.3f}, {ev.auc_ci[1]:.3f}] | {ev.accuracy:.3f} | {sec:.0f} | "
                    f">= {targets.get(data, float('nan')):.2f} |")
        print(rows[-1], flush=True)
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------- demo
def demo(quick: bool = False) -> str:
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "workbench.cli", "demo", "--out", d, "--no-progress"] + (["--quick"] if quick else [])
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            return f"_demo failed (rc {res.returncode}): {res.stderr[-500:]}_"
        m = json.loads((Path(d) / "metrics.json").read_text())
    t = m["test"]
    return "\n".join([
        "| command | wall s (fresh process) | data s | train s | epochs | test AUC [95% CI] | test acc | target |",
        "|---|---|---|---|---|---|---|---|",
        f"| workbench demo{' --quick' if quick else ''} | **{wall:.0f}** | {m['seconds']['data']} | {m['seconds']['train']} | "
        f"{len(m['history']['rows'])} | {t['auc']:.3f} [{t['auc_ci'][0]:.3f}, {t['auc_ci'][1]:.3f}] | "
        f"{t['accuracy']:.3f} | <= 300 s |"])


TITLES = {"throughput": "Training throughput (fit / bare forward+backward)",
          "medmnist": "MedMNIST (real files, test split)",
          "demo": "Demo wall time"}


def _update(sections: dict[str, str], table: Path = TABLE) -> str:
    text = table.read_text() if table.exists() else "# Training benchmarks\n"
    header = (f"\n_Machine: {os.cpu_count()} CPU cores (1-min load {os.getloadavg()[0]:.1f} at the end), torch {torch.__version__}, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._\n")
    for part, body in sections.items():
        block = f"## {TITLES[part]}\n{header}\n{body}\n"
        pat = re.compile(rf"## {re.escape(TITLES[part])}\n.*?(?=\n## |\Z)", re.S)
        text = pat.sub(lambda _: block.rstrip("\n"), text) if pat.search(text) else text.rstrip("\n") + "\n\n" + block
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(text.rstrip("\n") + "\n")
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="throughput,medmnist,demo")
    ap.add_argument("--quick", action="store_true", help="tiny settings (smoke run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", default="", help="medmnist: comma-separated indices into MEDMNIST_RUNS")
    ap.add_argument("--tp-n", type=int, default=512, help="throughput: images per epoch")
    ap.add_argument("--tp-repeats", type=int, default=5, help="throughput: interleaved repeats")
    ap.add_argument("--tp-size", type=int, default=64, help="throughput: image size")
    ap.add_argument("--tp-batch", type=int, default=64, help="throughput: batch size")
    ap.add_argument("--device", default="cpu", help="throughput: cpu, cuda or auto (medmnist and demo use auto)")
    ap.add_argument("--out", default=str(TABLE), help="table file to update")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sections = {}
    for part in args.parts.split(","):
        if part == "throughput":
            sections[part] = throughput(repeats=2 if args.quick else args.tp_repeats,
                                        n=128 if args.quick else args.tp_n, batch=args.tp_batch,
                                        size=args.tp_size, device=args.device)
        elif part == "medmnist":
            runs = [MEDMNIST_RUNS[int(i)] for i in args.runs.split(",")] if args.runs else None
            sections[part] = medmnist(quick=args.quick, runs=runs)
        elif part == "demo":
            sections[part] = demo(quick=args.quick)
        else:
            raise SystemExit(f"unknown part {part!r}; use throughput, medmnist, demo")
        print(f"## {TITLES[part]}\n{sections[part]}\n", flush=True)
    _update(sections, Path(args.out))


if __name__ == "__main__":
    main()
