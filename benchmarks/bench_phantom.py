"""Benchmark of the anatomical phantom (issue 3): speed, realism, difficulty, shortcut.

Run from the repository root::

    .venv/bin/python benchmarks/bench_phantom.py            # full (~10 min on a busy 2-core CPU)
    .venv/bin/python benchmarks/bench_phantom.py --quick    # a smoke run (~1 min)

Prints markdown tables and writes them to benchmarks/tables/phantom.md.

1. Generation speed, one thread: images/s (wall clock and per CPU-second, which is robust to other
   processes sharing the machine), median of repeats, at 64, 128 and 224 px.
2. Realism against ../shared/data/cxr_anatomy: mean lung intensity / mean cardiomediastinum
   intensity (phantom: heart + mediastinum) and lung share of the image.
3. Difficulty: a small ViT (vit_tiny with depth 4, width 96, patch 8, inputs standardised by
   ``create``) trained for a few minutes at 64 px on "abnormal" (10,000 fresh images seen 8 times
   rather than 2,000 seen 40 times: the phantom is free, and ViTs want data); test AUC, and per finding the AUC of P(abnormal) for images with that
   finding against normal images.
4. Shortcut: the same model trained with ``shortcut={"feature": "device", "with": "abnormal",
   "p_pos": 0.9, "p_neg": 0.1}`` on the training split only, tested on an unbiased split;
   accuracy of positives and negatives with and without a device, against the unbiased model.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench._io import atomic_write_text  # noqa: E402
from workbench.data import phantom as ph  # noqa: E402


def speed(sizes, counts, repeats):
    torch.set_num_threads(1)
    rows = ["| size (px) | images/s (wall) | images/s (per CPU-second) | target |", "|---|---|---|---|"]
    target = {64: ">= 200", 224: ">= 50"}
    for size in sizes:
        ph.generate(4, size, 99)  # warm caches
        walls, cpus = [], []
        for r in range(repeats):
            n = counts[size]
            t, c = time.perf_counter(), time.process_time()
            ph.generate(n, size, r, split="bench")
            walls.append(n / (time.perf_counter() - t))
            cpus.append(n / (time.process_time() - c))
        rows.append(f"| {size} | {np.median(walls):.0f} | {np.median(cpus):.0f} | {target.get(size, '')} |")
    return "\n".join(rows)


def _stats(images, lungs, cm):
    rel = [im[l].mean() / im[c].mean() for im, l, c in zip(images, lungs, cm) if l.any() and c.any()]
    share = [l.mean() for l in lungs]
    return np.array(rel), np.array(share)


def realism(n):
    from PIL import Image

    root = Path(os.environ.get("WORKBENCH_SHARED_DATA", ROOT.parent / "shared" / "data")) / "cxr_anatomy"
    real = None
    if (root / "images").is_dir():
        ims, ls, cs = [], [], []
        for p in sorted((root / "images").glob("*.png")):
            paths = [root / "masks" / s / p.name for s in ("left_lung", "right_lung", "cardiomediastinum")]
            if not all(q.is_file() for q in paths):
                continue
            ims.append(np.asarray(Image.open(p).convert("L"), dtype=np.float32) / 255)
            m = [np.asarray(Image.open(q).convert("L")) > 127 for q in paths]
            ls.append(m[0] | m[1])
            cs.append(m[2])
        real = _stats(ims, ls, cs) + (len(ims),)
    d = ph.generate(n, 128, 0, split="realism")
    lungs = d["masks"]["left_lung"] | d["masks"]["right_lung"]
    cm = d["masks"]["heart"] | d["masks"]["mediastinum"]
    pr, ps = _stats(d["images"].astype(np.float32) / 255, lungs, cm)
    rows = ["| measure | real min | real median | real max | phantom min | phantom median | phantom max | phantom median in real range |",
            "|---|---|---|---|---|---|---|---|"]
    for name, pv, rv in (("lung / cardiomediastinum intensity", pr, real[0] if real else None),
                         ("lung share of image", ps, real[1] if real else None)):
        if rv is None:
            rows.append(f"| {name} | - | - | - | {pv.min():.3f} | {np.median(pv):.3f} | {pv.max():.3f} | (no real data) |")
            continue
        inside = rv.min() <= np.median(pv) <= rv.max()
        frac = np.mean((pv >= rv.min()) & (pv <= rv.max()))
        rows.append(f"| {name} | {rv.min():.3f} | {np.median(rv):.3f} | {rv.max():.3f} | {pv.min():.3f} | "
                    f"{np.median(pv):.3f} | {pv.max():.3f} | {'yes' if inside else 'NO'} ({100 * frac:.0f}% of images inside) |")
    note = f"\nReal: {real[2]} radiographs of cxr_anatomy (256 px). Phantom: {n} images at 128 px, default sites A/B/C." if real else ""
    return "\n".join(rows) + note


def _model(kind):
    if kind == "vit":
        from workbench.models import create

        return create("vit_tiny", 2, 64, 1, patch_size=8, depth=4, embed_dim=96, num_heads=3)
    nn = torch.nn

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(block(1, 16), block(16, 32), block(32, 64), block(64, 64), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(64, 2))


MODELS = {"vit": "ViT (vit_tiny, depth 4, width 96, 3 heads, patch 8)",
          "cnn": "small CNN (4 conv-BN-ReLU-pool blocks, 16-64 channels)"}


def _train(train, test, epochs, kind, seed=0):
    from workbench.train import fit, predict

    torch.manual_seed(seed)
    model = _model(kind)
    t = time.perf_counter()
    fit(model, train, epochs=epochs, batch_size=64, lr=5e-4 if kind == "vit" else 2e-3, device="cpu",
        progress=False, seed=seed, num_workers=0)
    secs = time.perf_counter() - t
    return model, predict(model, test, device="cpu")[:, 1].numpy(), secs


def difficulty(n_train, n_test, epochs, threads, kinds, seeds=(0,)):
    from sklearn.metrics import roc_auc_score

    torch.set_num_threads(threads)
    train = ph.load_phantom("train", n=n_train, size=64, seed=0, progress=False)
    test = ph.load_phantom("test", n=n_test, size=64, seed=0, progress=False, device_p=0.5)
    y = test.labels.numpy()
    c = test.concepts.numpy().astype(bool)
    normal = ~c.any(1)
    only = c[:, 0] & (c.sum(1) == 1)
    res, notes, by_seed = {}, [], {}
    for kind in kinds:
        for seed in seeds:
            _, p, secs = _train(train, test, epochs, kind, seed=seed)
            by_seed.setdefault(kind, []).append(roc_auc_score(y, p))
            res.setdefault(kind, p)  # per-finding rows: the first seed
        notes.append(f"{MODELS[kind]}: {secs / 60:.1f} min")
    rows = ["| target | positives | " + " | ".join(f"test AUC, {k}" for k in kinds) + " |",
            "|---|---|" + "---|" * len(kinds),
            f"| abnormal (any finding) | {int(y.sum())} / {len(y)} | "
            + " | ".join(f"{roc_auc_score(y, res[k]):.3f}" for k in kinds) + " |"]
    for j, f in enumerate(ph.FINDINGS):
        sel = c[:, j] | normal
        rows.append(f"| {f} vs normal | {int(c[:, j].sum())} | "
                    + " | ".join(f"{roc_auc_score(c[sel, j], res[k][sel]):.3f}" for k in kinds) + " |")
    if only.any():
        sel = only | normal
        rows.append(f"| nodule only vs normal | {int(only.sum())} | "
                    + " | ".join(f"{roc_auc_score(c[sel, 0], res[k][sel]):.3f}" for k in kinds) + " |")
    head = (f"Trained on `abnormal` at 64 px with workbench.train.fit: {n_train} training images, {epochs} epochs, "
            f"{threads} CPU thread(s), {n_test} test images; per finding: AUC of P(abnormal) for images with "
            f"that finding against normal images. Training time: {'; '.join(notes)}. "
            "Target for abnormal: 0.93-0.995.\n\n")
    tail = ""
    if len(seeds) > 1:
        tail = "\n\nAbnormal AUC per training seed " + str(list(seeds)) + ": " + "; ".join(
            f"{k}: " + ", ".join(f"{a:.3f}" for a in by_seed[k]) + f" (median {np.median(by_seed[k]):.3f})"
            for k in kinds) + ". Per-finding rows: seed " + str(seeds[0]) + "."
    return head + "\n".join(rows) + tail, (train, test, res)


def shortcut(n_train, epochs, threads, base, kind):
    torch.set_num_threads(threads)
    _, test, _ = base
    sc = {"feature": "device", "with": "abnormal", "p_pos": 0.9, "p_neg": 0.1}
    _, p_base, _ = _train(ph.load_phantom("train", n=n_train, size=64, seed=0, progress=False), test, epochs, kind)
    train = ph.load_phantom("train", n=n_train, size=64, seed=0, progress=False, shortcut=sc)
    dev = np.array([m["device"] for m in train.meta])
    y_tr = train.labels.numpy().astype(bool)
    _, p, _ = _train(train, test, epochs, kind)
    y = test.labels.numpy().astype(bool)
    d = np.array([m["device"] for m in test.meta])
    rows = ["| model | acc. positives with device | acc. positives without | gap | acc. negatives with device | acc. negatives without | gap |",
            "|---|---|---|---|---|---|---|"]
    for name, q in (("unbiased training", p_base), ("shortcut training", p)):
        pred = q > 0.5
        acc = lambda m: float(np.mean(pred[m] == y[m]))  # noqa: E731
        pw, po, nw, no = acc(y & d), acc(y & ~d), acc(~y & d), acc(~y & ~d)
        rows.append(f"| {name} | {pw:.3f} | {po:.3f} | {pw - po:+.3f} | {nw:.3f} | {no:.3f} | {nw - no:+.3f} |")
    head = (f"Learner: {MODELS[kind]}, {n_train} training images, {epochs} epochs (both models). Shortcut {sc} in training only (measured device rate: positives {dev[y_tr].mean():.2f}, "
            f"negatives {dev[~y_tr].mean():.2f}); test split unbiased (device rate 0.5 in both classes, "
            f"n = {len(y)}: {int((y & d).sum())} positives with a device, {int((y & ~d).sum())} without).\n\n")
    return head + "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    ap.add_argument("--train-n", type=int, default=10000)
    ap.add_argument("--test-n", type=int, default=800)
    ap.add_argument("--shortcut-n", type=int, default=2000, help="training images of the shortcut study")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds of the difficulty study")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training (1 is fastest on a busy machine)")
    ap.add_argument("--models", nargs="+", default=["cnn", "vit"], choices=["cnn", "vit"],
                    help="learners for the difficulty table; the first one is used for the shortcut")
    ap.add_argument("--skip", nargs="*", default=[], choices=["speed", "realism", "difficulty", "shortcut"])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "tables" / "phantom.md"))
    a = ap.parse_args(argv)
    if a.quick:
        a.train_n, a.test_n, a.shortcut_n, a.epochs, a.seeds = 200, 200, 200, 1, [0]
    t0 = time.perf_counter()
    parts = ["# Phantom benchmark (issue 3)\n"]

    def emit(title, body):
        text = f"## {title}\n\n{body}\n"
        print(text, flush=True)
        parts.append(text)

    if "speed" not in a.skip:
        counts = {64: 60, 128: 30, 224: 15} if a.quick else {64: 200, 128: 100, 224: 50}
        emit("Generation speed (one thread)", speed((64, 128, 224), counts, 1 if a.quick else 3))
    if "realism" not in a.skip:
        emit("Realism against real radiographs (cxr_anatomy)", realism(40 if a.quick else 200))
    base = None
    if "difficulty" not in a.skip:
        text, base = difficulty(a.train_n, a.test_n, a.epochs, a.threads, a.models, tuple(a.seeds))
        emit("Difficulty: small models on `abnormal` at 64 px", text)
    if "shortcut" not in a.skip and base is not None:
        emit("Shortcut knob", shortcut(a.shortcut_n, a.epochs, a.threads, base, a.models[0]))
    parts.append(f"\nTotal benchmark time {(time.perf_counter() - t0) / 60:.1f} min"
                 f"{' (quick settings)' if a.quick else ''}; load average at the end "
                 f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.\n")
    atomic_write_text(a.out, "\n".join(parts))
    print(parts[-1])


if __name__ == "__main__":
    main()
