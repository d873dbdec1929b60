"""Concept bottleneck benchmarks -> benchmarks/tables/concepts.md.

Parts (``--parts train,quality,tcav,site,throughput,widget``; each rewrites only its own section):

- train: trains (or reuses from ``$WORKBENCH_DATA/bench_models/``) the models the other parts use:
  on the phantom's ``diagnosis`` task at 64 px (sites A-C), a ViT (vit_tiny depth 4, width 96, patch 8)
  and a CNN (resnet18), each black-box and as a joint CBM (same data, epochs, seed, early stopping on
  validation AUC); and a black-box ViT trained with the planted device shortcut (drains with 90 % of
  pneumothorax images, 10 % of the others) for TCAV.
- quality: test accuracy / AUC of black box vs CBM, concept AUCs, completeness, leakage; intervention
  curves (random, uncertainty, expected change; bootstrap CIs): accuracy with all concepts corrected,
  and corrections needed to reach 0.95.
- tcav: TCAV at the last block of the black-box ViTs for the pneumothorax class (and the other
  diagnoses) for the five findings, the device and the marker; with and without the shortcut.
  Agreement with captum's TCAV (identical CAVs: identical scores; each with its own probe: score
  differences) and the cost as a ratio to captum's on the same experimental sets.
- site: train on sites A-C, adapt to site D with 4 images per class: no adaptation, training-free
  test-time improvement, fine-tuned task head; target gain and source change over 10 support draws
  (mean and 95 % t-interval).
- throughput: CBM training images/s (``wb.fit``) over a bare forward+backward of the backbone with a
  linear head, interleaved repeats, medians.
- widget: concept explorer redraw after an intervention (median and max over slider moves).

Usage: ``WORKBENCH_DATA=/work/cache/data .venv/bin/python benchmarks/bench_concepts.py --parts ...``
(``--quick`` for a smoke run with tiny settings).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "benchmarks" / "tables" / "concepts.md"
sys.path.insert(0, str(ROOT))

import workbench as wb  # noqa: E402
from workbench import concepts as wc  # noqa: E402

TITLES = {"train": "Trained models", "quality": "CBM vs black box, concepts and interventions",
          "tcav": "TCAV: significance, shortcut, agreement with captum", "site": "Site repair without training",
          "throughput": "CBM training throughput", "widget": "Concept explorer redraw"}
SIZE = 64
SHORTCUT = {"feature": "device", "with": "pneumothorax", "p_pos": 0.9, "p_neg": 0.1}
SPECS = {"vit": ("vit_tiny", {"patch_size": 8, "depth": 4, "embed_dim": 96, "num_heads": 3}),
         "cnn": ("resnet18", {})}


class Settings:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.n_train = 256 if quick else 5000
        self.n_val = 128 if quick else 600
        self.n_test = 192 if quick else 1500
        self.epochs = {"vit": 1 if quick else 12, "cnn": 1 if quick else 4}
        self.lr = {"vit": 5e-4, "cnn": 1e-3}
        self.batch = 64
        self.tag = "quick" if quick else "full"
        self.only: list[str] | None = None


def data(s: Settings, split: str, n: int, **kw: Any) -> Any:
    return wb.data.load("phantom", split=split, n=n, size=SIZE, task="diagnosis", progress=False, **kw)


def model_dir() -> Path:
    root = Path(os.environ.get("WORKBENCH_DATA", ROOT / "data"))
    d = root / "bench_models" / "concepts"
    d.mkdir(parents=True, exist_ok=True)
    return d


def recipe(s: Settings, arch: str, kind: str) -> str:
    return f"diagnosis{SIZE}_{arch}_{kind}_{s.tag}_n{s.n_train}_e{s.epochs[arch]}"


def get_model(s: Settings, arch: str, kind: str, log: list[str]) -> Any:
    """A trained model (cached): kind "blackbox", "cbm" or "shortcut" (black box with the device shortcut)."""
    path = model_dir() / recipe(s, arch, kind)
    if path.with_suffix(".safetensors").exists():
        return wb.models.load(path)
    name, kw = SPECS[arch]
    train = data(s, "train", s.n_train, shortcut=SHORTCUT if kind == "shortcut" else None)
    val = data(s, "val", s.n_val)
    torch.manual_seed(0)
    if kind == "cbm":
        m = wc.create(name, concepts=train, num_classes=6, mode="joint", classes=train.classes, img_size=SIZE,
                      in_chans=1, **kw)
    else:
        m = wb.models.create(name, 6, SIZE, 1, **kw)
    t0 = time.perf_counter()
    h = wb.fit(m, train, val, epochs=s.epochs[arch], batch_size=s.batch, lr=s.lr[arch],
               early_stopping=None if s.quick else 3, seed=0, progress=not s.quick)
    secs = time.perf_counter() - t0
    if kind == "cbm":
        wc.calibrate_(m, train.subset(range(min(len(train), 2000))))
    m.eval()
    wb.models.save(m, path)
    (path.parent / (path.name + "_history.json")).write_text(json.dumps({"history": h.to_dict(), "seconds": secs}))
    log.append(f"| {arch} | {kind} | {len(h.rows)} (best {h.best_epoch}) | {max(h.val_auc):.3f} | {secs:.0f} |")
    return m


MODELS = [("vit", "blackbox"), ("vit", "cbm"), ("cnn", "blackbox"), ("cnn", "cbm"), ("vit", "shortcut")]


def part_train(s: Settings) -> str:
    log: list[str] = []
    for arch, kind in MODELS:
        if s.only is None or f"{arch}:{kind}" in s.only:
            get_model(s, arch, kind, log)
    rows = []
    for arch, kind in MODELS:
        p = model_dir() / (recipe(s, arch, kind) + "_history.json")
        if not p.exists():
            continue
        h = json.loads(p.read_text())
        rows.append(f"| {arch} | {kind} | {len(h['history']['rows'])} (best {h['history']['best_epoch']}) | "
                    f"{max(r['val_auc'] or 0 for r in h['history']['rows']):.3f} | {h['seconds']:.0f} |")
    return (f"Phantom `diagnosis` (6 classes, derived from the five findings by rule), {SIZE} px, sites A-C; "
            f"{s.n_train} training and {s.n_val} validation images; AdamW, early stopping (patience 3) on "
            f"validation AUC; models cached under `$WORKBENCH_DATA/bench_models/concepts/`. ViT: "
            f"{SPECS['vit'][1]}; CNN: resnet18. The shortcut model saw drains with 90 % of pneumothorax and "
            "10 % of other training images.\n\n"
            "| backbone | model | epochs run (best) | best val AUC | train s |\n|---|---|---|---|---|\n" + "\n".join(rows))


# ------------------------------------------------------------------------------------------- quality
def part_quality(s: Settings) -> str:
    test = data(s, "test", s.n_test)
    rows, irows = [], []
    for arch in ("vit", "cnn"):
        bb = get_model(s, arch, "blackbox", [])
        cbm = get_model(s, arch, "cbm", [])
        eb, ec = wb.evaluate(bb, test, bootstrap=1000), wb.evaluate(cbm, test, bootstrap=1000)
        rep = wc.quality(cbm, test)
        aucs = ", ".join(f"{n} {a:.3f}" for n, a in rep.concepts["auc"].items())
        rows.append(f"| {arch} | {eb.accuracy:.3f} [{eb.accuracy_ci[0]:.3f}, {eb.accuracy_ci[1]:.3f}] | "
                    f"{ec.accuracy:.3f} [{ec.accuracy_ci[0]:.3f}, {ec.accuracy_ci[1]:.3f}] | "
                    f"**{100 * (ec.accuracy - eb.accuracy):+.1f}** | {eb.auc:.3f} / {ec.auc:.3f} | "
                    f"**{rep.mean_concept_auc:.3f}** ({aucs}) | {rep.completeness:.3f} | "
                    f"{rep.leakage['soft']:.3f} / {rep.leakage['hard']:.3f} / {rep.leakage['true']:.3f} |")
        t0 = time.perf_counter()
        curve = wc.intervention_curve(cbm, test, bootstrap=200 if s.quick else 1000, seed=0)
        secs = time.perf_counter() - t0
        for o in curve.orders:
            acc = curve.accuracy[o]
            ci = curve.accuracy_ci[o]
            to95 = curve.corrections_to(0.95, o)
            irows.append(f"| {arch} | {o.replace('_', ' ')} | " + " | ".join(f"{a:.3f}" for a in acc) +
                         f" | [{ci[-1, 0]:.3f}, {ci[-1, 1]:.3f}] | {'-' if to95 is None else to95} |")
        irows.append(f"| {arch} | (curve time) | {secs:.1f} s for 3 orders, {curve.bootstrap} resamples | | | | | | | |")
    return (f"Test split: {s.n_test} images (sites A-C). Accuracy with 95 % bootstrap CIs; AUC macro one-vs-rest. "
            "Targets: CBM accuracy within 2 points of the black box; mean concept AUC >= 0.95.\n\n"
            "| backbone | black-box acc | joint CBM acc | CBM - black box (points) | AUC black box / CBM | "
            "mean concept AUC (per concept) | completeness | head acc soft / hard / true concepts |\n"
            "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) +
            "\n\nIntervention curves (task accuracy after correcting k concepts to their true labels). Targets: all "
            "corrected >= 0.99; uncertainty-first reaches 0.95 with fewer corrections than random.\n\n"
            "| backbone | order | k=0 | 1 | 2 | 3 | 4 | 5 | CI at 5 | corrections to 0.95 |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(irows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="train,quality,tcav,site,throughput,widget")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=None, help="train: comma-separated arch:kind (e.g. vit:cbm) to train now "
                    "(one heavy-lock turn per model)")
    ap.add_argument("--out", default=str(TABLE))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    s = Settings(args.quick)
    s.only = args.only.split(",") if args.only else None
    sections = {}
    for part in args.parts.split(","):
        fn = globals().get(f"part_{part}")
        if fn is None:
            raise SystemExit(f"unknown part {part!r}; use {', '.join(TITLES)}")
        t0 = time.perf_counter()
        sections[part] = fn(s)
        print(f"## {TITLES[part]} ({time.perf_counter() - t0:.0f} s)\n{sections[part]}\n", flush=True)
        _update({part: sections[part]}, Path(args.out))


def _update(sections: dict[str, str], table: Path = TABLE) -> None:
    text = table.read_text() if table.exists() else "# Concept bottleneck benchmarks\n"
    header = (f"\n_Machine: {os.cpu_count()} CPU cores (1-min load {os.getloadavg()[0]:.1f} at the end), torch "
              f"{torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._\n")
    for part, body in sections.items():
        block = f"## {TITLES[part]}\n{header}\n{body}\n"
        pat = re.compile(rf"## {re.escape(TITLES[part])}\n.*?(?=\n## |\Z)", re.S)
        text = pat.sub(lambda _: block.rstrip("\n"), text) if pat.search(text) else text.rstrip("\n") + "\n\n" + block
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(text.rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
