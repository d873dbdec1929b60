"""Benchmark of sparse autoencoders (issue 13): store, training speed and quality, atlas, shortcut.

Run from the repository root (heavy: under the shared lock)::

    export WORKBENCH_DATA=/work/cache/data
    flock /work/heavy.lock .venv/bin/python benchmarks/bench_sae.py --parts models
    flock /work/heavy.lock .venv/bin/python benchmarks/bench_sae.py --parts caching memory speed quality atlas shortcut

Each part prints a markdown table and writes it to ``benchmarks/tables/sae_<part>.md``.

- ``models``: the phantom ViTs the other parts read (trained once, cached under
  ``$WORKBENCH_DATA/bench_models/sae_*``): the demo's recipe (vit_tiny depth 4, width 96, patch 8,
  64 px, 8,000 images x 10 epochs) on the default phantom ("clean") and with the device shortcut
  planted in training (drains with 90 % of abnormal, 10 % of normal images; "shortcut").
- ``caching``: ``wb.sae.cache`` images/s against the truncated-forward floor, i.e. a full forward's
  speed divided by (layer + 1) / depth, interleaved repeats, medians.
- ``memory``: resident memory growth while training from a store of >= 2 GB (a cheap conv layer's
  tokens, so the store is quick to write), sampled every 50 ms.
- ``speed``: SAE training tokens/s (d = 192, x8, batch 4096) against the GEMM floor (10 d d_sae
  FLOP per token at the matmul rate measured in the same run) and against saev, Overcomplete and
  SAELens on the same activations, with FVU at equal L0 on held-out tokens.
- ``quality``: FVU, L0, dead fraction and spliced AUC (vs zero / mean ablation) on the clean ViT's
  middle block.
- ``atlas``: best latent's pixel AUROC per structure on the phantom and on ../shared/data/cxr_anatomy.
- ``shortcut``: confounder search with and without the planted device shortcut; Mammo-SAE
  interventions for k = 1, 5, 10, 50 with bootstrap CIs and random-latent baselines.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import workbench as wb  # noqa: E402
from workbench._io import atomic_write_text  # noqa: E402

TABLES = ROOT / "benchmarks" / "tables"
RECIPE = {"size": 64, "epochs": 10, "n_train": 8000, "n_val": 400, "n_test": 800, "depth": 4, "embed_dim": 96,
          "num_heads": 3, "patch_size": 8, "batch_size": 64, "lr": 5e-4}
SHORTCUT = {"feature": "device", "with": "abnormal", "p_pos": 0.9, "p_neg": 0.1}
MIDDLE = "blocks.1"   # the middle of a 4-block ViT: the output of its second block


def data_dir() -> Path:
    return Path(os.environ.get("WORKBENCH_DATA", ROOT / "data"))


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"_Machine: {os.cpu_count()} CPU cores (load {load:.1f} at the start), torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._")


def write_table(name: str, text: str) -> None:
    print(text, flush=True)
    TABLES.mkdir(parents=True, exist_ok=True)
    atomic_write_text(TABLES / f"sae_{name}.md", text.rstrip() + "\n")


def phantom(split: str, n: int, shortcut: dict | None = None):
    kw = {"shortcut": shortcut} if shortcut else {}
    return wb.data.load("phantom", split=split, n=n, size=RECIPE["size"], progress=False, **kw)


def bench_model(name: str, *, shortcut: dict | None = None, log: list | None = None):
    """The cached phantom ViT ``sae_vit64_<name>``, trained by the demo's recipe when absent."""
    path = data_dir() / "bench_models" / f"sae_vit64_{name}" / "model"
    if path.with_suffix(".safetensors").exists():
        return wb.models.load(path)
    torch.manual_seed(0)
    r = RECIPE
    train = phantom("train", r["n_train"], shortcut)
    val = phantom("val", r["n_val"], shortcut)
    model = wb.models.create("vit_tiny", num_classes=2, img_size=r["size"], in_chans=1, patch_size=r["patch_size"],
                             depth=r["depth"], embed_dim=r["embed_dim"], num_heads=r["num_heads"])
    t = time.perf_counter()
    wb.fit(model, train, val, epochs=r["epochs"], batch_size=r["batch_size"], lr=r["lr"], seed=0, progress=False,
           early_stopping=max(3, r["epochs"] // 3))
    wb.models.save(model, path)
    if log is not None:
        log.append((name, time.perf_counter() - t))
    return model.eval()


def part_models(args) -> None:
    log: list = []
    test = phantom("test", RECIPE["n_test"])
    rows = ["| model | training | test AUC (unbiased test split) [95% CI] | train s |", "|---|---|---|---|"]
    for name, sc in (("clean", None), ("shortcut", SHORTCUT)):
        model = bench_model(name, shortcut=sc, log=log)
        ev = wb.evaluate(model, test, bootstrap=1000)
        secs = dict(log).get(name)
        rows.append(f"| sae_vit64_{name} | {'device shortcut ' + str(SHORTCUT) if sc else 'default phantom'} | "
                    f"{ev.auc:.3f} [{ev.auc_ci[0]:.3f}, {ev.auc_ci[1]:.3f}] | {secs and round(secs) or 'cached'} |")
    write_table("models", "### Phantom ViTs the SAE benchmarks read\n\n" + machine() + "\n\n" + "\n".join(rows))


PARTS = {"models": part_models}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for part in args.parts:
        t = time.perf_counter()
        PARTS[part](args)
        print(f"[{part}: {time.perf_counter() - t:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
