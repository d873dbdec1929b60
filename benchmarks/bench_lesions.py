"""Benchmark: attribution on real lesions (BUSI breast ultrasound) with the phantom's nodules as a control.

Stages (``--stages``; each stage saves its results under --work and the table is rebuilt from all of
them, so stages can run at different times):

- ``train``: the models, trained with the README's recipe and cached under
  ``$WORKBENCH_DATA/bench_models/lesions/`` (reused by later runs and by other engineers):
  BUSI at 128 px, 3 classes (benign, malignant, normal; the 19 ``label_conflict`` images dropped from
  train), ResNet-18 and a small ViT (patch 8, depth 4, width 96), 30 epochs with early stopping on
  validation AUC (patience 10), RandomAffine augmentation; the phantom (``abnormal``, 64 px) as in
  bench_evaluation.py;
- ``methods``: every registered method x (pointing game raw and with a tolerance, relevance mass in the
  lesion, top-k IoU, deletion AUC) with bootstrap CIs, per class, on the BUSI test lesions (true class)
  and the phantom's nodule-only test images; a figure of the best and worst cases;
- ``baselines``: integrated gradients, DeepLIFT and GradientSHAP with black, blurred, mean, uniform-noise
  and training-image (expected gradients) baselines;
- ``guided``: mask-guided training (Ross et al. 2017) with and without, 3 seeds, BUSI and the phantom
  with the planted device shortcut (audit gap);
- ``cost``: each new method's time as a ratio to forward (+backward) of the same model and batch, next
  to pytorch-grad-cam's HiResCAM / LayerCAM in the same run;
- ``audit``: relevance on calipers / burnt-in text vs the lesion on BUSI.

Run: WORKBENCH_DATA=/work/cache/data python benchmarks/bench_lesions.py --stages train methods ...
(--quick for a smoke run).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import workbench as wb  # noqa: E402

SIZE = 128
RECIPES = {  # README's recipe; the ViT is the quick tour's small ViT
    "resnet18": dict(create={}, lr=1e-3),
    "vit_tiny": dict(create=dict(patch_size=8, depth=4, embed_dim=96, num_heads=3), lr=5e-4),
}


def cache_dir() -> Path:
    base = Path(os.environ.get("WORKBENCH_DATA", ROOT / "data"))
    d = base / "bench_models" / "lesions"
    d.mkdir(parents=True, exist_ok=True)
    return d


def busi(split: str, size: int = SIZE):
    """BUSI split at ``size`` px; train without the 19 images whose label contradicts a duplicate."""
    ds = wb.data.load(wb.data.shared_data_path() / "busi", split=split, size=size)
    if split == "train":
        keep = [i for i, m in enumerate(ds.meta) if not m.get("label_conflict")]
        ds = ds.subset(keep)
    return ds


def augment():
    return wb.data.transforms.RandomAffine(degrees=10, translate=0.05, scale=(0.9, 1.1), seed=0)


def train_or_load(arch: str, data: str, seed: int = 0, *, epochs: int = 30, guide: str | None = None,
                  guide_weight: float = 0.0, quick: bool = False, log=None):
    """A cached model (``cache_dir()/<key>``) or a freshly trained one, saved there."""
    tag = f"guide-{guide}-{guide_weight:g}" if guide else "plain"
    key = f"{data}_{arch}_{SIZE if data == 'busi' else 64}px_{epochs}ep_s{seed}_{tag}" + ("_quick" if quick else "")
    path = cache_dir() / key
    if path.with_suffix(".safetensors").is_file():
        return wb.models.load(path).eval(), key
    r = RECIPES[arch]
    t0 = time.time()
    if data == "busi":
        train, val = busi("train"), busi("val")
        if quick:
            train, val = train.subset(range(48)), val.subset(range(24))
        torch.manual_seed(seed)
        model = wb.models.create(arch, num_classes=len(train.classes), img_size=SIZE, in_chans=1, **r["create"])
        kw = dict(guide_masks=guide, guide_weight=guide_weight) if guide else {}
        hist = wb.fit(model, train, val, epochs=epochs, lr=r["lr"], early_stopping=10, augment=augment(),
                      seed=seed, progress=False, **kw)
    else:
        raise ValueError(data)
    wb.models.save(model, path)
    if log is not None:
        log(f"trained {key} in {time.time() - t0:.0f} s, best epoch {hist.best_epoch}")
    return model.eval(), key


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", nargs="+", default=["train"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--archs", nargs="+", default=["resnet18", "vit_tiny"])
    args = p.parse_args()
    torch.set_num_threads(2)

    def log(msg: str) -> None:
        print(f"# [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    if "train" in args.stages:
        test = busi("test")
        for arch in args.archs:
            m, key = train_or_load(arch, "busi", 0, quick=args.quick, epochs=2 if args.quick else 30, log=log)
            ev = wb.evaluate(m, test, bootstrap=200)
            log(f"{key}: test AUC {ev.auc:.3f} {ev.auc_ci} acc {ev.accuracy:.3f} per class {ev.per_class_auc}")


if __name__ == "__main__":
    main()
