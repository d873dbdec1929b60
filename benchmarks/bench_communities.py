"""Benchmark: communities of ViT patches vs anatomy, and explorer redraw latency.

Quality: on the phantom at 64 and 128 px, a plain ViT and a DCMM-ViT (small vit_tiny, 8x8 patch grid) are
trained with the same settings; we report test AUC and the anatomy alignment (ARI, NMI, purity; per image, averaged)
of DCMM communities and of post-hoc Mixed-SCORE / spectral / k-means communities of both models,
at the first and last layer (head mean). The same models are then applied to the real chest
radiographs of ../shared/data/cxr_anatomy (resized to the model's size) and scored against
left_lung, right_lung, cardiomediastinum and airways. Speed: explorer redraw latency for a ViT
at 224 px (vit_tiny patch 16, 14x14 grid) after the first forward, median over repeats.

Run: .venv/bin/python benchmarks/bench_communities.py [--sizes 64 128 --n-train 10000 --epochs 8]
Writes the markdown table to stdout and to benchmarks/tables/communities.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

import workbench as wb
from workbench.communities import communities
from workbench.evaluation.alignment import anatomy_alignment

PHANTOM_ANATOMY = ["body", "diaphragm", "mediastinum", "heart", "right_lung", "left_lung"]
CXR_ANATOMY = ["cardiomediastinum", "airways", "right_lung", "left_lung"]
METHODS = ["dcmm", "mixed_score", "spectral", "kmeans"]


def _alignment_rows(model_name, model, batch, structures, k, layers=(0, -1)):
    maps = wb.attention_maps(model, batch["image"])
    rows = []
    for method in METHODS:
        if method == "dcmm" and maps.dcmm is None:
            continue
        for layer in layers:
            c = communities(maps, k=None if method == "dcmm" else k, method=method, layer=layer)
            al = anatomy_alignment(c, batch, structures=structures)
            rows.append((model_name, method, c.layer, al.ari, al.nmi, al.purity))
    return rows




def _md(rows, cols):
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(lines)


def redraw_latency(repeats: int = 3):
    """Median redraw ms of the explorer for a ViT at 224 px, after the first forward."""
    from workbench.widgets import explorer

    path = wb.data.shared_data_path()
    if path is not None and (Path(path) / "cxr_anatomy").is_dir():
        ds = wb.data.load(str(Path(path) / "cxr_anatomy"), label_column="finding", size=224)
        ds = ds.subset(range(4))
        structures = CXR_ANATOMY
    else:
        ds = wb.data.load("phantom", split="test", n=4, size=224, progress=False)
        structures = PHANTOM_ANATOMY
    model = wb.models.create("vit_tiny", num_classes=len(ds.classes), img_size=224, in_chans=1, patch_size=16)
    t0 = time.perf_counter()
    ui = explorer(model, ds, k=4, structures=structures)
    first = (time.perf_counter() - t0) * 1e3
    for i in range(1, len(ds)):  # first forward of every image
        ui.controls["index"].value = i
    changes = {
        "opacity (cached communities)": ("alpha", [0.3, 0.6]),
        "image (cached maps)": ("index", [0, 1]),
        "K (new Mixed-SCORE fit)": ("k", [3, 5, 4]),
        "layer (new fit)": ("layer", [0, 3, 6, 11]),
        "head (new fit)": ("head", [-1, 0, 1, 2]),
        "method (new fit)": ("method", ["spectral", "kmeans", "mixed_score"]),
    }
    out = []
    for label, (name, values) in changes.items():
        times = []
        for r in range(repeats):
            for v in values:
                if ui.controls[name].value == v:
                    continue
                if name != "alpha" and name != "index":
                    ui._comms.clear()  # measure the fit, not the cache
                t = time.perf_counter()
                ui.controls[name].value = v
                times.append((time.perf_counter() - t) * 1e3)
                assert ui.last_error is None, ui.last_error
        out.append((label, statistics.median(times), len(times)))
    return first, out


def _train_pair(size: int, args, seed: int = 0) -> tuple[dict, dict, dict, object]:
    """A plain ViT and a DCMM-ViT with the same recipe, seed and initial weights."""
    train = wb.data.load("phantom", split="train", n=args.n_train, size=size, progress=False)
    test = wb.data.load("phantom", split="test", n=args.n_test, size=size, progress=False)
    models, auc, train_s = {}, {}, {}
    for kind in ("standard", "dcmm"):
        torch.manual_seed(seed)
        m = wb.models.create("vit_tiny", num_classes=len(train.classes), img_size=size, in_chans=1,
                             patch_size=wb.models.default_patch_size(size) if size >= 128 else 8, depth=4,
                             embed_dim=args.width, num_heads=3, attention=kind, communities=args.k)
        t = time.time()
        wb.fit(m, train, epochs=args.epochs, batch_size=64, lr=args.lr, device=args.device, progress=False, seed=seed)
        train_s[kind] = time.time() - t
        auc[kind] = float(wb.evaluate(m, test, device=args.device).auc)
        models[kind] = m.eval()
        if args.save:
            wb.models.save(m, Path(args.save) / f"{kind}_{size}px_seed{seed}")
        print(f"# {size} px {kind} seed {seed}: test AUC {auc[kind]:.3f} ({train_s[kind]:.0f} s)", flush=True)
    return models, auc, train_s, test


def _device_name(device: str) -> str:
    dev = wb.resolve_device(device)
    return f"{dev.type.upper()} ({torch.cuda.get_device_name(dev)}, bf16 autocast)" if dev.type == "cuda" else dev.type.upper()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--n-test", type=int, default=800)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--width", type=int, default=96, help="ViT embedding width (3 heads)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--n-align", type=int, default=64, help="test images scored for alignment")
    ap.add_argument("--out", default=str(Path(__file__).with_name("tables") / "communities.md"))
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--save", default=None, help="folder to save the trained models in (checkpoints)")
    ap.add_argument("--device", default="cpu", help="training device: cpu, cuda or auto (bf16 autocast on CUDA)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="training seeds (AUC per seed; alignment uses the first seed's models)")
    args = ap.parse_args()
    t_start = time.time()
    k = args.k
    auc_rows, rows, cxr_rows = [], [], []
    path = wb.data.shared_data_path()
    for size in args.sizes:
        for i, seed in enumerate(args.seeds):
            pair = _train_pair(size, args, seed)
            if i == 0:
                models, _, _, test = pair
            auc_rows += [(f"{size}", n, seed, pair[1][kk], f"{pair[2][kk]:.0f}")
                         for n, kk in (("ViT", "standard"), ("DCMM-ViT", "dcmm"))]
        batch = test.batch(range(min(args.n_align, len(test))))
        for kind, m in models.items():
            name = "ViT" if kind == "standard" else "DCMM-ViT"
            rows += [(f"{size}",) + r for r in _alignment_rows(name, m, batch, PHANTOM_ANATOMY, k)]
        if path is not None and (Path(path) / "cxr_anatomy").is_dir():
            cxr = wb.data.load(str(Path(path) / "cxr_anatomy"), label_column="finding", size=size)
            cb = cxr.batch(range(len(cxr)))
            for kind, m in models.items():
                name = "ViT" if kind == "standard" else "DCMM-ViT"
                cxr_rows += [(f"{size}",) + r for r in _alignment_rows(name, m, cb, CXR_ANATOMY, k)]

    cols = ["px", "model", "method", "layer", "ARI", "NMI", "purity"]
    parts = [f"# Communities vs anatomy (bench_communities.py)\n",
             f"Settings: phantom at {args.sizes} px, {args.n_train} train / {args.n_test} test images, vit_tiny "
             f"depth 4, width {args.width}, 3 heads, patch 8 at 64 px / 16 from 128 px (8x8 grid), {args.epochs} "
             f"epochs (AdamW lr {args.lr}, batch 64, {_device_name(args.device)}), same seed and initial weights for both "
             f"models, seeds {args.seeds}, K={k}; "
             f"alignment on {args.n_align} test images, head mean; phantom structures {PHANTOM_ANATOMY} (later wins "
             f"on overlap; bones left out); CXR structures {CXR_ANATOMY}. Post-hoc community indices are per image, "
             "so ARI/NMI/purity are per image, then averaged. Chance ARI is 0.\n",
             "## Test AUC (phantom, `abnormal`)\n",
             _md(auc_rows, ["px", "model", "seed", "test AUC", "train s"]),
             "\n## Anatomy alignment, phantom test images\n",
             _md(rows, cols)]
    if cxr_rows:
        parts += ["\n## Anatomy alignment, real CXR (cxr_anatomy, 100 images resized to the model's size, "
                  "models trained on the phantom only)\n", _md(cxr_rows, cols)]
    if not args.skip_latency:
        first, lat = redraw_latency()
        parts += ["\n## Explorer redraw latency (vit_tiny patch 16 at 224 px, 14x14 grid, depth 12, CPU)\n",
                  f"First display (forward + fit + draw): {first:.0f} ms. Redraws after the first forward:\n",
                  _md([(lbl, f"{ms:.0f}", n) for lbl, ms, n in lat], ["change", "median ms", "n"])]
    parts.append(f"\nTotal benchmark time: {time.time() - t_start:.0f} s on {os.cpu_count()} CPU cores "
                 f"(load average at the end {os.getloadavg()[0]:.1f}).")
    text = "\n".join(parts) + "\n"
    print(text)
    from workbench._io import atomic_write_text

    atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
