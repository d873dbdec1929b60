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
- ``audit``: relevance on calipers / burnt-in text vs the lesion on BUSI;
- ``pooling``: the head's global pooling (average / class token vs max, avgmax) and the pointing game on
  BUSI; writes its own table, lesions_pooling.md, beside --out (run alone, it leaves --out as it is).

Run: WORKBENCH_DATA=/work/cache/data python benchmarks/bench_lesions.py --stages train methods ...
(--quick for a smoke run).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import workbench as wb  # noqa: E402
from _tables import md  # noqa: E402
from workbench.evaluation import (deletion_insertion, pointing_game, relevance_mass,  # noqa: E402
                                  topk_iou)

SIZE = 128
TOL = round(15 * SIZE / 224)  # Zhang et al.'s 15 px at 224 px, scaled: 9 px at 128 px
PH_SIZE = 64
PH_TOL = 4
RECIPES = {  # README's recipe; the ViT is the quick tour's small ViT
    "resnet18": dict(create={}, lr=1e-3),
    "vit_tiny": dict(create=dict(patch_size=8, depth=4, embed_dim=96, num_heads=3), lr=5e-4),
}
CNN_ONLY = {"deeplift", "lrp"}
VIT_ONLY = {"attention_rollout", "chefer"}
# expensive per image: run on the first --n-slow lesion images (settings as given here)
SLOW = {"occlusion": {}, "feature_ablation": {}, "shap_partition": {"max_evals": 200}, "shap_gradient": {},
        "smoothgrad": {}, "rise": {}, "xrai": {}}
FINDINGS = ("nodule", "effusion", "cardiomegaly", "pneumothorax", "consolidation")
SHORTCUT = {"feature": "device", "with": "abnormal", "p_pos": 0.9, "p_neg": 0.1}


def log(msg: str) -> None:
    print(f"# [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    base = Path(os.environ.get("WORKBENCH_DATA", ROOT / "data"))
    d = base / "bench_models" / "lesions"
    d.mkdir(parents=True, exist_ok=True)
    return d


def results_dir() -> Path:
    d = cache_dir() / "results"
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_part(name: str, df: pd.DataFrame, note: str = "") -> None:
    df.to_csv(results_dir() / f"{name}.csv", index=False)
    (results_dir() / f"{name}.note").write_text(note)


def load_part(name: str) -> tuple[pd.DataFrame | None, str]:
    f = results_dir() / f"{name}.csv"
    if not f.is_file():
        return None, ""
    note = results_dir() / f"{name}.note"
    return pd.read_csv(f), note.read_text() if note.is_file() else ""


# --------------------------------------------------------------------------- data and models

def busi(split: str, size: int | None = SIZE):
    """BUSI split at ``size`` px; train without the 19 images whose label contradicts a duplicate."""
    root = wb.data.shared_data_path()
    if root is None or not (root / "busi").is_dir():
        raise SystemExit("BUSI not found: this benchmark reads ../shared/data/busi beside the checkout, or the folder "
                         "named by WORKBENCH_SHARED_DATA (set it when running from another directory).")
    ds = wb.data.load(root / "busi", split=split, size=size)
    if split == "train":
        keep = [i for i, m in enumerate(ds.meta) if not m.get("label_conflict")]
        ds = ds.subset(keep)
    return ds


def phantom(split: str, n: int, shortcut: dict | None = None):
    kw = {"shortcut": shortcut} if shortcut else {}
    return wb.data.load("phantom", split=split, n=n, size=PH_SIZE, progress=False, **kw)


def augment():
    return wb.data.transforms.RandomAffine(degrees=10, translate=0.05, scale=(0.9, 1.1), seed=0)


def train_or_load(arch: str, data: str, seed: int = 0, *, epochs: int = 30, guide: str | None = None,
                  guide_weight: float = 0.0, quick: bool = False, pool: str | None = None):
    """A cached model (``cache_dir()/<key>``) or a freshly trained one, saved there.

    data: "busi" (README recipe: 30 epochs, early stopping 10 on val AUC, RandomAffine) or "phantom"
    (abnormal at 64 px: bench_pruning's resnet18_phantom and bench_sae's sae_vit64_clean, shared with
    those benchmarks; bench_evaluation's recipe, ResNet-18 on 3000 images / the ViT on 10000, 10
    epochs, batch 16, only when the ViT is not cached) or "phantom_shortcut" (ResNet-18 on 2000 images with the planted device shortcut).
    pool: timm's ``global_pool`` ("max", "avgmax", ...) instead of the architecture's own (average / class token).
    """
    tag = f"guide-{'+'.join(guide) if isinstance(guide, (list, tuple)) else guide}-{guide_weight:g}" if guide else "plain"
    if pool:
        tag = f"pool-{pool}" if tag == "plain" else f"{tag}_pool-{pool}"
    px = SIZE if data == "busi" else PH_SIZE
    key = f"{data}_{arch}_{px}px_{epochs}ep_s{seed}_{tag}" + ("_quick" if quick else "")
    path = cache_dir() / key
    if path.with_suffix(".safetensors").is_file():
        return wb.models.load(path).eval(), key
    t0 = time.time()
    shared = cache_dir().parent / "sae_vit64_clean" / "model"
    if (data, arch, epochs, guide, quick, pool) == ("phantom", "vit_tiny", 10, None, False, None) \
            and shared.with_suffix(".safetensors").is_file():
        # bench_sae.py's phantom ViT (the demo's recipe: same architecture, 8,000 images x 10 epochs,
        # early stopping on validation AUC): one training run instead of a second, 10,000-image one
        log(f"{key}: using bench_sae's sae_vit64_clean (the demo's recipe) instead of training")
        return wb.models.load(shared).eval(), "sae_vit64_clean"
    if (data, arch, epochs, guide, quick, pool) == ("phantom", "resnet18", 10, None, False, None):
        # the phantom CNN control is bench_pruning.py's resnet18_phantom (2,000 images x 4 epochs,
        # batch 64, lr 1e-3, seed 0): one training run for both benchmarks, a quarter of the CPU time
        shared = cache_dir().parent / "pruning_resnet18_phantom" / "model"
        if not shared.with_suffix(".safetensors").is_file():
            torch.manual_seed(0)
            model = wb.models.create("resnet18", num_classes=2, img_size=PH_SIZE, in_chans=1)
            wb.fit(model, phantom("train", 2000), epochs=4, batch_size=64, lr=1e-3, seed=0, progress=False)
            wb.models.save(model, shared)
            log(f"{key}: trained bench_pruning's resnet18_phantom recipe in {time.time() - t0:.0f} s")
        return wb.models.load(shared).eval(), "pruning_resnet18_phantom"
    r = RECIPES[arch]
    gkw = dict(guide_masks=guide, guide_weight=guide_weight) if guide else {}
    create = {**r["create"], **({"global_pool": pool} if pool else {})}
    torch.manual_seed(seed)
    if data == "busi":
        train, val = busi("train"), busi("val")
        if quick:
            train, val = train.subset(range(48)), val.subset(range(24))
        model = wb.models.create(arch, num_classes=len(train.classes), img_size=SIZE, in_chans=1, **create)
        hist = wb.fit(model, train, val, epochs=epochs, lr=r["lr"], early_stopping=10, augment=augment(),
                      seed=seed, progress=False, **gkw)
    else:
        n = {"resnet18": 3000, "vit_tiny": 10000}[arch] if data == "phantom" else 2000
        train = phantom("train", 64 if quick else n, SHORTCUT if data == "phantom_shortcut" else None)
        model = wb.models.create(arch, num_classes=2, img_size=PH_SIZE, in_chans=1, **create)
        hist = wb.fit(model, train, epochs=epochs, batch_size=16, lr=r["lr"], seed=seed, progress=False, **gkw)
    wb.models.save(model, path)
    log(f"trained {key} in {time.time() - t0:.0f} s (best epoch {hist.best_epoch}, {len(hist.rows)} epochs)")
    return model.eval(), key


def lesion_set(test, n: int | None = None) -> dict:
    """BUSI test images with a lesion mask (benign, malignant); target = the true class."""
    idx = torch.nonzero(test.mask_present["lesion"]).flatten()
    if n:
        idx = idx[:n]
    b = test.batch(idx)
    return {"image": b["image"], "mask": b["masks"]["lesion"], "target": b["label"],
            "cls": [test.classes[int(c)] for c in b["label"]], "index": idx}


def nodule_set(test, n: int = 40) -> dict:
    c = test.concepts.bool()
    idx = torch.nonzero(c[:, 0] & (c.sum(1) == 1)).flatten()[:n]
    b = test.batch(idx)
    return {"image": b["image"], "mask": b["masks"]["nodule"], "target": torch.ones(len(idx), dtype=torch.long),
            "cls": ["nodule"] * len(idx), "index": idx}


# --------------------------------------------------------------------------- metrics

def boot(v: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    v = np.asarray(v, float)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    bm = v[rng.integers(0, len(v), (n, len(v)))].mean(1)
    lo, hi = np.quantile(bm, [0.025, 0.975])
    return float(v.mean()), float(lo), float(hi)


def per_image(model, att, ev: dict, tol: int, n_faith: int, steps: int = 16) -> pd.DataFrame:
    """One row per image: pointing (raw, tolerance), relevance mass, top-5% IoU, deletion AUC."""
    m = ev["mask"][: len(att)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = pd.DataFrame({
            "cls": ev["cls"][: len(att)],
            "pointing": pointing_game(att, m).scores.numpy(),
            "pointing_tol": pointing_game(att, m, tolerance=tol).scores.numpy(),
            "mass": relevance_mass(att, m).scores.numpy(),
            "iou": topk_iou(att, m, k=0.05).scores.numpy()})
    nf = min(n_faith, len(att))
    f = deletion_insertion(model, ev["image"][:nf], att.maps[:nf], target=ev["target"][:nf], steps=steps,
                           mode="deletion")
    rows["deletion"] = np.nan
    rows.loc[: nf - 1, "deletion"] = f.deletion_auc.numpy()
    return rows


def summarise(rows: pd.DataFrame, keys: dict, by_class: bool = True) -> list[dict]:
    out = []
    groups = [("all", rows)] + ([(c, g) for c, g in rows.groupby("cls")] if by_class and rows["cls"].nunique() > 1 else [])
    for cls, g in groups:
        r = {**keys, "class": cls, "n": len(g)}
        for k in ("pointing", "pointing_tol", "mass", "iou", "deletion"):
            mean, lo, hi = boot(g[k].dropna().to_numpy())
            r[k], r[f"{k}_lo"], r[f"{k}_hi"] = mean, lo, hi
        out.append(r)
    return out


def attribute_timed(model, ev: dict, method: str, n: int, **kw):
    x, t = ev["image"][:n], ev["target"][:n]
    t0 = time.perf_counter()
    att = wb.attribute(model, x, target=t, method=method, **kw)
    return att, (time.perf_counter() - t0) * 1000 / len(x)


# --------------------------------------------------------------------------- stages

def stage_train(args) -> None:
    test = busi("test")
    for arch in args.archs:
        m, key = train_or_load(arch, "busi", 0, quick=args.quick, epochs=2 if args.quick else 30)
        ev = wb.evaluate(m, test, bootstrap=1000)
        log(f"{key}: test AUC {ev.auc:.3f} [{ev.auc_ci[0]:.3f}, {ev.auc_ci[1]:.3f}] acc {ev.accuracy:.3f} "
            f"per class {[round(a, 3) for a in ev.per_class_auc]}")
    if not args.quick:
        ph_test = phantom("test", 800)
        for arch in args.archs:
            m, key = train_or_load(arch, "phantom", 0, epochs=10)
            log(f"{key}: test AUC {wb.evaluate(m, ph_test).auc:.3f}")


def _models(args) -> dict:
    out = {}
    for data in args.data:
        for arch in args.archs:
            ep = (2 if args.quick else 30) if data == "busi" else (1 if args.quick else 10)
            out[(data, arch)] = train_or_load(arch, data, 0, epochs=ep, quick=args.quick)[0]
    return out


def stage_methods(args) -> None:
    from workbench.attribution import METHODS

    models = _models(args)
    busi_test = busi("test")
    sets = {"busi": lesion_set(busi_test), "phantom": nodule_set(phantom("test", 800), args.n_phantom)}
    methods = args.methods or METHODS.names()
    rows, per_rows = [], []
    for (data, arch), model in models.items():
        ev = sets[data]
        auc = wb.evaluate(model, busi_test if data == "busi" else phantom("test", 800)).auc
        for method in methods:
            if (method in CNN_ONLY and arch.startswith("vit")) or (method in VIT_ONLY and not arch.startswith("vit")):
                continue
            kw = dict(SLOW.get(method, {}))
            n = min(args.n_slow if method in SLOW else len(ev["target"]), len(ev["target"]))
            if args.quick:
                n = min(n, 4)
            try:
                if method.startswith("shap"):  # shap's import and JIT stay out of ms/image
                    wb.attribute(model, ev["image"][:1], target=ev["target"][:1], method=method, **kw)
                att, ms = attribute_timed(model, ev, method, n, **kw)
                pi = per_image(model, att, ev, TOL if data == "busi" else PH_TOL, args.n_faith)
            except Exception as e:  # noqa: BLE001 - reported, not fatal
                log(f"{data}/{arch}/{method} failed: {type(e).__name__}: {e}")
                rows.append({"data": data, "model": arch, "method": method, "class": "all",
                             "note": f"{type(e).__name__}: {str(e)[:60]}"})
                continue
            pi.insert(0, "method", method)
            pi.insert(0, "model", arch)
            pi.insert(0, "data", data)
            pi["index"] = ev["index"][:n].numpy()
            per_rows.append(pi)
            for r in summarise(pi, {"data": data, "model": arch, "method": method}):
                r.update(ms_per_image=ms, test_auc=auc)
                rows.append(r)
            log(f"{data}/{arch}/{method}: pointing {rows[-1 if data == 'phantom' else -3]['pointing']:.3f} "
                f"({ms:.0f} ms/img, n={n})")
            _save_methods(rows, per_rows, "")
    per = _save_methods(rows, per_rows, f"n_slow={args.n_slow}, n_faith={args.n_faith}")
    cases_figure(models, busi_test, per)


def _save_methods(rows: list[dict], per_rows: list[pd.DataFrame], note: str) -> pd.DataFrame:
    """Write the methods part: this run's (data, model, method) rows replace the same rows of an earlier
    run, the others are kept (``--methods`` reruns a few methods). Returns all per-image rows."""
    key = ["data", "model", "method"]
    new, per = pd.DataFrame(rows), (pd.concat(per_rows) if per_rows else pd.DataFrame(columns=key))
    for name, df in (("methods", new), ("methods_per_image", per)):
        if len(df):
            df = _replace_rows(name, df)
        if name == "methods":
            save_part("methods", df, note or (load_part("methods")[1]))
        else:
            df.to_csv(results_dir() / f"{name}.csv", index=False)
            per = df
    return per


def _replace_rows(name: str, df: pd.DataFrame, key: tuple[str, ...] = ("data", "model", "method")) -> pd.DataFrame:
    """Part ``name`` with this run's rows: they replace an earlier run's rows of the same ``key``
    (a rerun of a few methods or models), the others are kept."""
    old, _ = load_part(name)
    if old is None:
        return df
    key = list(key)
    done = set(map(tuple, df[key].drop_duplicates().itertuples(index=False)))
    return pd.concat([old[[tuple(r) not in done for r in old[key].itertuples(index=False)]], df], ignore_index=True)


def cases_figure(models: dict, busi_test, per: pd.DataFrame) -> None:
    """Best and worst BUSI test cases of the best CNN method (by raw pointing, then mass)."""
    cnn = per[(per["data"] == "busi") & (per["model"] == "resnet18")]
    if cnn.empty:
        return
    best = cnn.groupby("method")["pointing"].mean().idxmax()
    sub = cnn[cnn["method"] == best].sort_values(["pointing", "mass"], ascending=False)
    pick = list(sub["index"].head(4)) + list(sub["index"].tail(4))
    b = busi_test.batch(torch.as_tensor(pick))
    model = models[("busi", "resnet18")]
    atts = {best: wb.attribute(model, b["image"], target=b["label"], method=best)}
    if "gradcam" != best:
        atts["gradcam"] = wb.attribute(model, b["image"], target=b["label"], method="gradcam")
    fig = wb.viz.attribution_grid(b["image"], atts, masks={"lesion": b["masks"]["lesion"]})
    fig.suptitle(f"BUSI test, ResNet-18: 4 best and 4 worst cases of {best} (lesion outlined)", fontsize=8, y=1.06)
    out = ROOT / "benchmarks" / "figures"
    out.mkdir(exist_ok=True)
    wb.viz.save_figure(fig, out / "lesions_cases", formats=("png",), dpi=150, params={"method": best, "ids": [int(i) for i in pick]})


BASELINES = ("black", "blur", "mean", "uniform", "train")


def stage_baselines(args) -> None:
    from workbench.attribution import baseline_set

    models = _models(args)
    refs = {"busi": baseline_set(busi("train"), n=32, seed=0, name="BUSI train"),
            "phantom": baseline_set(phantom("train", 3000), n=32, seed=0, name="phantom train")}
    sets = {"busi": lesion_set(busi("test")), "phantom": nodule_set(phantom("test", 800), args.n_phantom)}
    rows = []
    for (data, arch), model in models.items():
        ev = sets[data]
        n = 4 if args.quick else min(args.n_base or len(ev["target"]), len(ev["target"]))
        for method in ("integrated_gradients", "deeplift", "gradient_shap"):
            if method == "deeplift" and arch.startswith("vit"):
                continue
            for bl in BASELINES + (("zeros+blur",) if method == "gradient_shap" else ()):
                spec = refs[data] if bl == "train" else (0.0 if bl == "black" else bl)
                key = "baselines" if method == "gradient_shap" else "baseline"
                if method == "gradient_shap" and bl == "black":
                    spec = "zeros"
                try:
                    att, ms = attribute_timed(model, ev, method, n, **{key: spec})
                    pi = per_image(model, att, ev, TOL if data == "busi" else PH_TOL, args.n_faith)
                except Exception as e:  # noqa: BLE001
                    log(f"baselines {data}/{arch}/{method}/{bl} failed: {e}")
                    continue
                for r in summarise(pi, {"data": data, "model": arch, "method": method, "baseline": bl}, by_class=False):
                    r["ms_per_image"] = ms
                    rows.append(r)
                log(f"baselines {data}/{arch}/{method}/{bl}: pointing {rows[-1]['pointing']:.3f} mass {rows[-1]['mass']:.3f}")
                save_part("baselines", pd.DataFrame(rows))
    save_part("baselines", pd.DataFrame(rows), f"n_faith={args.n_faith}, n_base={args.n_base or 'all'}")

SIGMAS = (0, 1, 2, 4, 6, 8, 12, 16)  # px at 128 px (BUSI) / 64 px (phantom); 0 = the raw map


def stage_smooth(args) -> None:
    """Pointing game of Gaussian-smoothed maps (``Attribution.smoothed``): the sigma is chosen per method
    on the validation lesions (BUSI val, or phantom validation nodules) and scored on the test lesions,
    next to the raw map on the same images. A pixel map's single largest value is often noise; a blur
    points at where relevance concentrates. Methods: every fast one, plus occlusion on the first --n-slow."""
    from workbench.attribution import METHODS

    if args.smooth_guided:  # the mask-guided BUSI ResNet-18s (guided stage's models, trained if missing)
        models = {("busi", f"resnet18 guided w{args.guide_weight:g} s{seed}"): train_or_load(
            "resnet18", "busi", seed, epochs=2 if args.quick else 30, quick=args.quick, guide="lesion",
            guide_weight=args.guide_weight)[0] for seed in args.seeds}
    else:
        models = _models(args)
    used = {d for d, _ in models}

    def split(d: str, name: str):
        return busi(name) if d == "busi" else phantom(name, 800)

    def lesions(d: str, ds):
        return lesion_set(ds) if d == "busi" else nodule_set(ds, args.n_phantom)

    tests = {d: split(d, "test") for d in used}
    sets = {d: {"val": lesions(d, split(d, "val")), "test": lesions(d, tests[d])} for d in used}
    methods = args.methods or [m for m in METHODS.names() if m not in SLOW or m == "occlusion"]
    rows, per_rows = [], []
    for data in used:  # the reference a method must beat: always point at the image's centre
        r = {"data": data, "model": "(none)", "method": "image centre", "sigma": 0}
        for split, ev in sets[data].items():
            h, w = ev["mask"].shape[-2:]
            hit = ev["mask"][:, h // 2, w // 2].float().numpy()
            r["n_val" if split == "val" else "n"] = len(hit)
            if split == "val":
                r["val_pointing_raw"] = r["val_pointing"] = float(hit.mean())
            else:
                for tag in ("raw", "smooth"):
                    r[f"pointing_{tag}"], r[f"pointing_{tag}_lo"], r[f"pointing_{tag}_hi"] = boot(hit)
        rows.append(r)
    for (data, arch), model in models.items():
        tol = TOL if data == "busi" else PH_TOL
        auc = wb.evaluate(model, tests[data]).auc
        for method in methods:
            if (method in CNN_ONLY and arch.startswith("vit")) or (method in VIT_ONLY and not arch.startswith("vit")):
                continue
            kw = dict(SLOW.get(method, {}))
            scores = {}
            try:
                for split, ev in sets[data].items():
                    n = min(args.n_slow if method in SLOW else len(ev["target"]), len(ev["target"]))
                    n = min(n, 4) if args.quick else n
                    att = wb.attribute(model, ev["image"][:n], target=ev["target"][:n], method=method, **kw)
                    m = ev["mask"][:n]
                    for sigma in SIGMAS:
                        a = att.smoothed(sigma) if sigma else att
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            scores[split, sigma] = (pointing_game(a, m).scores.numpy(),
                                                    pointing_game(a, m, tolerance=tol).scores.numpy(),
                                                    relevance_mass(a, m).scores.numpy())
                        per_rows.append(pd.DataFrame({"data": data, "model": arch, "method": method, "split": split,
                                                      "sigma": sigma, "index": ev["index"][:n].numpy(),
                                                      "pointing": scores[split, sigma][0]}))
            except Exception as e:  # noqa: BLE001 - reported, not fatal
                log(f"smooth {data}/{arch}/{method} failed: {type(e).__name__}: {e}")
                continue
            # the smallest sigma with the best validation pointing (ties: less smoothing)
            val = [float(scores["val", s][0].mean()) for s in SIGMAS]
            chosen = SIGMAS[int(np.argmax(val))]
            r = {"data": data, "model": arch, "test_auc": auc, "method": method, "sigma": chosen,
                 "n_val": len(scores["val", 0][0]),
                 "n": len(scores["test", 0][0]), "val_pointing_raw": val[0], "val_pointing": max(val)}
            for tag, sigma in (("raw", 0), ("smooth", chosen)):
                for j, k in enumerate(("pointing", "pointing_tol", "mass")):
                    mean, lo, hi = boot(scores["test", sigma][j])
                    r[f"{k}_{tag}"], r[f"{k}_{tag}_lo"], r[f"{k}_{tag}_hi"] = mean, lo, hi
            r["by_sigma_test"] = " ".join(f"{s}:{scores['test', s][0].mean():.2f}" for s in SIGMAS)
            rows.append(r)
            log(f"smooth {data}/{arch}/{method}: sigma {chosen} (val {val[0]:.2f} -> {max(val):.2f}); test "
                f"{r['pointing_raw']:.2f} -> {r['pointing_smooth']:.2f}")
            _save_smooth(rows, per_rows, f"n_slow={args.n_slow}, n_phantom={args.n_phantom}")
    _save_smooth(rows, per_rows, f"n_slow={args.n_slow}, n_phantom={args.n_phantom}")


def _save_smooth(rows: list[dict], per_rows: list[pd.DataFrame], note: str) -> None:
    """This run's (data, model, method) rows replace the same rows of an earlier run; the others stay."""
    save_part("smooth", _replace_rows("smooth", pd.DataFrame(rows)), note)
    if per_rows:
        save_part("smooth_per_image", _replace_rows("smooth_per_image", pd.concat(per_rows)), note)


def stage_guided(args) -> None:
    """With / without mask-guided training, same seeds: BUSI (lesion masks) and the phantom with the planted
    device shortcut (findings masks)."""
    from workbench.evaluation import subgroup_metrics

    seeds = [0] if args.quick else args.seeds
    weights = [w for arm, w in (("plain", 0.0), ("guided", args.guide_weight)) if arm in args.guided_arms]
    ep_b, ep_p = (2, 1) if args.quick else (30, 10)
    busi_test = busi("test")
    ev_b = lesion_set(busi_test)
    ph_test = phantom("test", 800)
    ev_p = nodule_set(ph_test, args.n_phantom)
    for seed in seeds:
        for w in weights:
            for data in args.guided_data:
                if data == "busi":
                    m, key = train_or_load("resnet18", "busi", seed, epochs=ep_b, quick=args.quick,
                                           guide="lesion" if w else None, guide_weight=w, pool=args.guided_pool)
                    ev, test, tol = ev_b, busi_test, TOL
                else:
                    m, key = train_or_load("resnet18", "phantom_shortcut", seed, epochs=ep_p, quick=args.quick,
                                           guide=FINDINGS if w else None, guide_weight=w)
                    ev, test, tol = ev_p, ph_test, PH_TOL
                r = {"data": data, "seed": seed, "guide_weight": w, "test_auc": wb.evaluate(m, test).auc,
                     **({"pool": args.guided_pool} if args.guided_pool else {})}
                n = 4 if args.quick else len(ev["target"])
                for method in args.guided_methods:
                    att, _ = attribute_timed(m, ev, method, n)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        r[f"pointing_{method}"] = pointing_game(att, ev["mask"][:n]).mean
                        r[f"pointing_tol_{method}"] = pointing_game(att, ev["mask"][:n], tolerance=tol).mean
                        r[f"mass_{method}"] = relevance_mass(att, ev["mask"][:n]).mean
                if data != "busi":
                    pos = subgroup_metrics(m, test, "device", positives_only=True, bootstrap=0).set_index("group")
                    r["acc_pos_device"] = pos.loc[True, "accuracy"]
                    r["acc_pos_no_device"] = pos.loc[False, "accuracy"]
                    r["audit_gap"] = r["acc_pos_device"] - r["acc_pos_no_device"]
                    dev = torch.tensor([bool(mm.get("device")) for mm in test.meta])
                    b = test.batch(torch.nonzero(dev).flatten()[:64])
                    att = wb.attribute(m, b["image"], target=1, method=args.guided_methods[0])
                    from workbench.evaluation import cohort_budget

                    r["budget_device"] = float(cohort_budget(att, {"device": b["masks"]["device"]}, bootstrap=0)
                                               .set_index("structure").loc["device", "mean"])
                log(f"guided {key}: {r}")
                _save_guided(data, r, f"methods {args.guided_methods}")


POOLS = {"resnet18": [None, "max", "avgmax"], "vit_tiny": [None, "avgmax"]}
POOL_METHODS = ["saliency", "input_x_gradient", "integrated_gradients", "gradcam"]


def stage_pooling(args) -> None:
    """The global pooling before the head (timm's ``global_pool``), BUSI, README recipe, seed 0: does a max-pooled
    head, whose gradient reaches only the positions holding each channel's largest response (Oquab et al.
    2015's reason for max pooling in weakly supervised localisation), point at the lesion more often than the
    average (CNN) or the class token (ViT)? Writes ``<out dir>/lesions_pooling.md``."""
    test = busi("test")
    ev = lesion_set(test)
    n = 4 if args.quick else len(ev["target"])
    rows = []
    for arch in args.archs:
        for pool in POOLS[arch]:
            m, key = train_or_load(arch, "busi", 0, epochs=2 if args.quick else 30, quick=args.quick, pool=pool)
            r = {"model": arch, "pool": pool or ("token" if arch.startswith("vit") else "avg"),
                 "test_auc": wb.evaluate(m, test).auc}
            for method in POOL_METHODS:
                att = wb.attribute(m, ev["image"][:n], target=ev["target"][:n], method=method)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    r[method] = boot(pointing_game(att, ev["mask"][:n]).scores.numpy())
                    r[f"{method}_mass"] = relevance_mass(att, ev["mask"][:n]).mean
            log(f"pooling {key}: {r}")
            rows.append(r)
    df = pd.DataFrame(rows)
    save_part("pooling", df.assign(**{m: [v[0] for v in df[m]] for m in POOL_METHODS}), f"n={n}")
    t = pd.DataFrame({"model": df["model"], "global pool": df["pool"], "test AUC": df["test_auc"].map("{:.3f}".format),
                      **{f"pointing {m}": [f"{a:.2f} [{lo:.2f}, {hi:.2f}]" for a, lo, hi in df[m]] for m in POOL_METHODS},
                      **{f"mass {m}": df[f"{m}_mass"].map("{:.2f}".format) for m in ("saliency", "integrated_gradients")}})
    text = ("### Global pooling and the pointing game (BUSI)\n\n"
            f"_`bench_lesions.py --stages pooling`; 2 CPU cores, torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._\n\n"
            "The README recipe (30 epochs, early stopping on validation AUC, seed 0) with timm's `global_pool` "
            "changed: `avg` (ResNet-18's own) or `token` (the ViT's class token) against `max` and `avgmax` "
            "(the mean of both). A max-pooled head passes its gradient only to the positions holding each channel's "
            "largest response, the reason Oquab et al. (2015) used it for weakly supervised localisation. "
            f"{n} BUSI test lesions, true class, raw pointing game with 95 % bootstrap CIs; mass: share of "
            "positive relevance in the lesion. Target >= 0.8.\n\n" + md(t) + "\n")
    (Path(args.out).parent / "lesions_pooling.md").write_text(text)
    print(text)


def _save_guided(data: str, row: dict, note: str) -> None:
    """Add (or replace) one (seed, weight, pool) row of ``guided_<data>``: one file per dataset, so that two
    processes (one per dataset) can run the stage side by side."""
    old, _ = load_part(f"guided_{data}")
    df = pd.DataFrame([row])
    if old is not None:
        pool = old["pool"] if "pool" in old else pd.Series(None, index=old.index, dtype=object)
        keep = ~((old["seed"] == row["seed"]) & (old["guide_weight"] == row["guide_weight"])
                 & (pool.fillna("") == (row.get("pool") or "")))
        df = pd.concat([old[keep], df], ignore_index=True).sort_values(["seed", "guide_weight"])
    save_part(f"guided_{data}", df, note)


def _timeit(fn, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def stage_cost(args) -> None:
    """Time per call relative to a plain forward (F) and forward+backward (FB) of the same model and batch,
    interleaved rounds, medians; pytorch-grad-cam's HiResCAM / LayerCAM in the same rounds."""
    import copy

    from pytorch_grad_cam import HiResCAM, LayerCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    models = _models(args)
    x = busi("test").batch(range(args.cost_batch))["image"]
    t = torch.zeros(len(x), dtype=torch.long)
    rows = []
    for arch in args.archs:
        model = models[("busi", arch)]
        xi = x.clone()

        def f():
            with torch.no_grad():
                model(xi)

        def fb():
            xr = xi.clone().requires_grad_(True)
            model(xr)[:, 0].sum().backward()
            model.zero_grad(set_to_none=True)

        layer = "blocks.3.norm1" if arch.startswith("vit") else "layer3"
        peer = copy.deepcopy(model)
        player = dict(peer.named_modules())[layer]
        reshape = None
        if arch.startswith("vit"):
            g = SIZE // 8

            def reshape(tk, g=g):
                return tk[:, 1:].reshape(tk.shape[0], g, g, tk.shape[2]).permute(0, 3, 1, 2)
        calls = {
            "gradcam": lambda: wb.attribute(model, xi, target=t, method="gradcam", layer=layer),
            "hirescam": lambda: wb.attribute(model, xi, target=t, method="hirescam", layer=layer),
            "layercam": lambda: wb.attribute(model, xi, target=t, method="layercam", layer=layer),
            "cam_fusion": lambda: wb.attribute(model, xi, target=t, method="cam_fusion"),
            "rise (250 masks; cost is linear in n_masks)": lambda: wb.attribute(model, xi, target=t, method="rise",
                                                                                n_masks=250),
            "xrai": lambda: wb.attribute(model, xi, target=t, method="xrai"),
            "pytorch-grad-cam HiResCAM": lambda: HiResCAM(model=peer, target_layers=[player], reshape_transform=reshape)(
                input_tensor=xi, targets=[ClassifierOutputTarget(0)] * len(xi)),
            "pytorch-grad-cam LayerCAM": lambda: LayerCAM(model=peer, target_layers=[player], reshape_transform=reshape)(
                input_tensor=xi, targets=[ClassifierOutputTarget(0)] * len(xi)),
        }
        if not arch.startswith("vit"):
            calls["lrp"] = lambda: wb.attribute(model, xi, target=t, method="lrp")
        times = {k: [] for k in ["F", "FB", *calls]}
        for k, fn in calls.items():  # warm-up (imports, first-call allocations)
            fn()
        for _ in range(args.cost_rounds):
            times["F"].append(_timeit(f, 3))
            times["FB"].append(_timeit(fb, 3))
            for k, fn in calls.items():
                times[k].append(_timeit(fn, 1))
        med = {k: float(np.median(v)) for k, v in times.items()}
        for k in calls:
            rows.append({"model": arch, "method": k, "ms_per_call": 1000 * med[k], "x_F": med[k] / med["F"],
                         "x_FB": med[k] / med["FB"]})
        rows.append({"model": arch, "method": "(forward F / forward+backward FB, ms)", "ms_per_call": 1000 * med["F"],
                     "x_F": 1.0, "x_FB": med["F"] / med["FB"]})
        log(f"cost {arch}: {rows[-len(calls) - 1:]}")
    save_part("cost", pd.DataFrame(rows), f"batch {args.cost_batch} at {SIZE} px, {args.cost_rounds} interleaved "
              f"rounds, medians; threads {torch.get_num_threads()}; load {os.getloadavg()[0]:.1f}")


def stage_audit(args) -> None:
    """Burnt-in marks on BUSI: detected on the 256 px files (workbench.evaluation.burnt_in_marks), pooled to
    128 px; relevance on the marks vs on the lesion; accuracy with / without marks; marks inpainted."""
    import cv2
    import torch.nn.functional as F

    from workbench.evaluation import burnt_in_marks, cohort_budget

    models = _models(args)
    full = busi("test", size=None)
    test = busi("test")
    marks256 = burnt_in_marks(full.images)
    marks = F.max_pool2d(marks256.float()[:, None], 2)[:, 0] > 0
    has = marks.flatten(1).any(1)
    lesion = test.masks["lesion"]
    present = test.mask_present["lesion"]
    near = torch.stack([(F.max_pool2d(lesion[i].float()[None, None], 2 * TOL + 1, 1, TOL)[0, 0] > 0) & marks[i]
                        for i in range(len(test))]).flatten(1).any(1)
    rows = [{"what": "images with marks", **{c: float(has[test.labels == k].float().mean())
                                              for k, c in enumerate(test.classes)}},
            {"what": f"marks within {TOL} px of the lesion", **{c: float(near[test.labels == k].float().mean())
                                                                 for k, c in enumerate(test.classes) if c != "normal"}},
            {"what": "mark area (share of image)", **{c: float(marks[test.labels == k].float().mean())
                                                      for k, c in enumerate(test.classes)}}]
    counts = pd.DataFrame(rows)
    # marks erased: OpenCV Telea inpainting on the 256 px file, then resized like the test set
    imgs = full.images[:, 0].numpy()
    painted = np.stack([cv2.inpaint(imgs[i], (marks256[i].numpy() * 255).astype(np.uint8), 3, cv2.INPAINT_TELEA)
                        for i in range(len(imgs))])
    painted = F.interpolate(torch.from_numpy(painted).float()[:, None] / 255, size=(SIZE, SIZE), mode="bilinear",
                            antialias=True, align_corners=False)
    budget_rows, pred_rows = [], []
    x = test.batch(range(len(test)))["image"]
    for arch in args.archs:
        m = models[("busi", arch)]
        with torch.no_grad():
            p0, p1 = m(x).softmax(1), m(painted).softmax(1)
        y = test.labels
        for grp, sel in (("with marks", has), ("without marks", ~has)):
            for k, c in enumerate(test.classes):
                s = sel & (y == k)
                if s.any():
                    pred_rows.append({"model": arch, "group": grp, "class": c, "n": int(s.sum()),
                                      "acc": float((p0[s].argmax(1) == k).float().mean()),
                                      "acc_marks_erased": float((p1[s].argmax(1) == k).float().mean()),
                                      "p_true": float(p0[s, k].mean()), "p_true_marks_erased": float(p1[s, k].mean())})
        sel = torch.nonzero(has & present).flatten()
        for method in args.audit_methods:
            if method in CNN_ONLY and arch.startswith("vit"):
                continue
            att = wb.attribute(m, x[sel], target=y[sel], method=method)
            outside = marks[sel] & ~lesion[sel]
            cb = cohort_budget(att, {"lesion": lesion[sel], "marks outside the lesion": outside}, bootstrap=1000)
            for _, r in cb.iterrows():
                area = {"lesion": float(lesion[sel].float().mean()),
                        "marks outside the lesion": float(outside.float().mean())}.get(r["structure"], float("nan"))
                budget_rows.append({"model": arch, "method": method, "structure": r["structure"], "share": r["mean"],
                                    "lo": r["lo"], "hi": r["hi"], "area_share": area, "n": int(r["n"])})
    save_part("audit_counts", counts)
    save_part("audit_pred", pd.DataFrame(pred_rows))
    save_part("audit_budget", pd.DataFrame(budget_rows))
    # a figure of the detected marks on 16 test images (how the masks look)
    import matplotlib.pyplot as plt

    idx = torch.nonzero(has).flatten()[:16]
    fig, axes = plt.subplots(2, 8, figsize=(12, 3.4))
    for ax, i in zip(axes.flat, idx.tolist()):
        ax.imshow(imgs[i], cmap="gray")
        ax.contour(marks256[i].numpy(), levels=[0.5], colors="#d62728", linewidths=0.6)
        ax.contour(full.masks["lesion"][i].numpy(), levels=[0.5], colors="#2ca02c", linewidths=0.6)
        ax.set_axis_off()
    fig.suptitle("burnt_in_marks on BUSI test images (red: detected marks, green: lesion mask)", fontsize=8)
    out = ROOT / "benchmarks" / "figures"
    out.mkdir(exist_ok=True)
    wb.viz.save_figure(fig, out / "busi_marks", formats=("png",), dpi=150)   # 150 dpi: under 1 MiB in the repo


# --------------------------------------------------------------------------- report



def ci(df: pd.DataFrame, k: str) -> pd.Series:
    return [("" if np.isnan(m) else f"{m:.2f} [{lo:.2f}, {hi:.2f}]")
            for m, lo, hi in zip(df[k], df[f"{k}_lo"], df[f"{k}_hi"])]


GRADIENT = ("saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "gradient_shap", "deeplift",
            "shap_gradient", "lrp")
WITH_BASELINE = ("integrated_gradients", "deeplift", "gradient_shap")


def report(args) -> str:
    lines = ["# Real lesions (bench_lesions.py)", "",
             "BUSI breast ultrasound (../shared/data/busi, test split: 98 lesion images, 66 benign + 32 malignant, "
             "and 20 normal) at 128 px, 3 classes; ResNet-18 and a small ViT (patch 8, depth 4, width 96) trained "
             "with the README's recipe (30 epochs, early stopping 10 on validation AUC, RandomAffine; the 19 "
             "label_conflict images dropped). Maps explain the true class. Control: the phantom's nodule-only test "
             "images (64 px, target abnormal; ResNet-18: bench_pruning's resnet18_phantom, 2,000 images x 4 epochs; ViT: bench_sae's sae_vit64_clean, the demo's recipe). Pointing game: ties as fraction, raw and "
             f"with a tolerance of {TOL} px at 128 px ({PH_TOL} px at 64 px; Zhang et al.'s 15 px at 224 px, scaled); "
             "mass = share of positive relevance inside the lesion; IoU of the top 5 % of pixels; deletion AUC "
             "(MoRF, blur fill, 16 steps, probability of the target; lower is better). Means with 95 % bootstrap "
             "CIs over images. 2-core CPU shared with other jobs: ms/image indicative only.", ""]
    meth, note = load_part("methods")
    if meth is not None and "pointing" in meth:
        meth = meth[meth["class"] == "all"] if "class" in meth else meth
        aucs = meth.groupby(["data", "model"])["test_auc"].first()
        lines += ["Test AUC of the models: " + ", ".join(f"{d} {m} {a:.3f}" for (d, m), a in aucs.items()) + f". ({note})", ""]
        cnn = meth[(meth["data"] == "busi") & (meth["model"] == "resnet18")].dropna(subset=["pointing"])
        if not cnn.empty:
            best = cnn.loc[cnn["pointing"].idxmax()]
            lines += ["## Targets", "",
                      f"- Best method's raw pointing game on BUSI test lesions (ResNet-18): **{best['method']} "
                      f"{best['pointing']:.2f} [{best['pointing_lo']:.2f}, {best['pointing_hi']:.2f}]** (target >= 0.8: "
                      f"{'met' if best['pointing'] >= 0.8 else 'NOT met'}).",
                      "- Gradient methods with their default baseline (target >= 0.6): " + ", ".join(
                          f"{r.method} {r.pointing:.2f}" for r in cnn.itertuples() if r.method in GRADIENT) + "."]
            vit = meth[(meth["data"] == "busi") & (meth["model"] == "vit_tiny")].dropna(subset=["pointing"])
            if not vit.empty:
                bv = vit.loc[vit["pointing"].idxmax()]
                lines += [f"- ViT, same measure: best {bv['method']} {bv['pointing']:.2f} [{bv['pointing_lo']:.2f}, "
                          f"{bv['pointing_hi']:.2f}]."]
            lines += [""]
        for (data, model), g in meth.groupby(["data", "model"], sort=False):
            t = pd.DataFrame({"method": g["method"], "n": g["n"], "pointing": ci(g, "pointing"),
                              f"pointing (tol)": ci(g, "pointing_tol"), "mass": ci(g, "mass"), "top-5% IoU": ci(g, "iou"),
                              "deletion AUC": ci(g, "deletion"), "ms/image": g["ms_per_image"]})
            lines += [f"## {data} / {model}: every method", "", md(t.sort_values("method")), ""]
        full, _ = load_part("methods")
        per_cls = full[(full["data"] == "busi") & (full["class"] != "all")]
        if not per_cls.empty:
            wide = per_cls.pivot_table(index=["model", "method"], columns="class", values=["pointing", "mass"]).round(3)
            wide.columns = [f"{a} {b}" for a, b in wide.columns]
            lines += ["## BUSI per class (pointing, mass; CIs in the per-image file)", "", md(wide.reset_index()), ""]
    sm, note = load_part("smooth")
    if sm is not None and len(sm):
        busi_cnn = sm[(sm["data"] == "busi") & (sm["model"] == "resnet18")]
        if len(busi_cnn):
            b = busi_cnn.loc[busi_cnn["pointing_smooth"].idxmax()]
            grad = busi_cnn[busi_cnn["method"].isin(GRADIENT)]
            lines += ["## Smoothed maps (sigma chosen on the validation lesions)", "",
                      f"- Best on BUSI test lesions, ResNet-18: **{b['method']} at sigma {b['sigma']:g} px: "
                      f"{b['pointing_smooth']:.2f} [{b['pointing_smooth_lo']:.2f}, {b['pointing_smooth_hi']:.2f}]** "
                      f"(raw map {b['pointing_raw']:.2f}; target >= 0.8: {'met' if b['pointing_smooth'] >= 0.8 else 'NOT met'}).",
                      "- Gradient methods, smoothed (target >= 0.6): " + ", ".join(
                          f"{r.method} {r.pointing_smooth:.2f} (sigma {r.sigma:g})" for r in grad.itertuples()) + "."]
            centre = sm[(sm["data"] == "busi") & (sm["method"] == "image centre")]
            if len(centre):
                lines += [f"- Reference: a map that always points at the image's centre hits "
                          f"{centre['pointing_raw'].iloc[0]:.2f} of the test lesions."]
            guided = sm[(sm["data"] == "busi") & sm["model"].str.contains("guided")]
            if len(guided):
                per = guided.groupby("method")["pointing_smooth"].agg(["mean", "std", "count"]).sort_values("mean")
                lines += ["- Mask-guided ResNet-18s (mean +- sd over seeds, smoothed maps): " + ", ".join(
                    f"{m} {r['mean']:.2f} +- {r['std']:.2f} ({int(r['count'])})" for m, r in per[::-1].iterrows()) + "."]
            lines += [""]
        lines += ["Raw pointing game of the map blurred by a Gaussian (`Attribution.smoothed(sigma)`), sigma chosen "
                  f"per method from {list(SIGMAS)} px on the validation split (BUSI val: 98 lesions; phantom: "
                  "validation nodule-only images), the smallest sigma on ties; scored on the test images. The raw "
                  "column is the unblurred map on the same images. by sigma: test pointing at every sigma (not used "
                  f"for the choice). ({note})", ""]
        auc = sm["test_auc"] if "test_auc" in sm else pd.Series(np.nan, index=sm.index)
        t = pd.DataFrame({"data": sm["data"], "model": sm["model"], "test AUC": auc.map(lambda a: "" if pd.isna(a) else f"{a:.3f}"),
                          "method": sm["method"], "n": sm["n"],
                          "sigma": sm["sigma"], "val raw -> smoothed": [f"{a:.2f} -> {b:.2f}" for a, b in
                                                                        zip(sm["val_pointing_raw"], sm["val_pointing"])],
                          "pointing raw": ci(sm, "pointing_raw"), "pointing smoothed": ci(sm, "pointing_smooth"),
                          "pointing (tol) smoothed": ci(sm, "pointing_tol_smooth"), "mass smoothed": ci(sm, "mass_smooth"),
                          "test pointing by sigma": sm["by_sigma_test"].fillna("")})
        lines += [md(t.sort_values(["data", "model", "method"])), ""]
    bl, note = load_part("baselines")
    if bl is not None:
        t = bl.assign(pointing=ci(bl, "pointing"), pointing_tol=ci(bl, "pointing_tol"), mass=ci(bl, "mass"),
                      deletion=ci(bl, "deletion"))[["data", "model", "method", "baseline", "n", "pointing",
                                                    "pointing_tol", "mass", "deletion", "ms_per_image"]]
        lines += ["## Baselines", "",
                  "black = 0; blur = Gaussian sigma H/16; mean = the image's mean intensity; uniform = U(0, 1) noise "
                  "(seeded); train = 32 training images (expected gradients: IG draws n_steps (reference, alpha) pairs, "
                  "DeepLIFT-SHAP 8 references, GradientSHAP samples them); zeros+blur = GradientSHAP's default. Deletion fills with the blurred image, which favours the blur reference by construction; pointing and mass do not. "
                  f"({note})", "", md(t), ""]
    parts = [load_part(f.stem) for f in sorted(results_dir().glob("guided_*.csv"))]
    gd = pd.concat([d for d, _ in parts], ignore_index=True) if parts else None
    note = "; ".join(sorted({n for _, n in parts if n}))
    if gd is not None and len(gd):
        if "pool" in gd:  # rows of --guided-pool runs; the others keep the architecture's own pooling
            gd = gd.assign(pool=gd["pool"].fillna("own"))
        agg = gd.drop(columns=["seed"]).groupby([k for k in ("data", "guide_weight", "pool") if k in gd]).agg(["mean", "std"])
        agg.columns = [f"{a} ({b})" for a, b in agg.columns]
        lines += ["## Mask-guided training (same seeds, with vs without)", "",
                  f"ResNet-18; mean and sd over seeds {sorted(gd['seed'].unique().tolist())}; {note}. BUSI: guided by the "
                  "lesion masks; phantom: 2000 training images with the planted device shortcut (device on 90 % of "
                  "abnormal / 10 % of normal images), guided by the five findings' masks, unbiased test; audit gap = "
                  "accuracy on abnormal images with a device minus without; budget_device = share of positive relevance "
                  "on the device.", "", md(agg.reset_index()), "", "Per seed:", "", md(gd), ""]
    cost, note = load_part("cost")
    if cost is not None:
        lines += ["## Cost of the new methods (ratios to F / FB of the same model and batch)", "", note, "", md(cost), ""]
    cnt, _ = load_part("audit_counts")
    if cnt is not None:
        pred, _ = load_part("audit_pred")
        bud, _ = load_part("audit_budget")
        lines += ["## Shortcut audit: burnt-in marks on BUSI", "",
                  "Marks (calipers, crosses, text, logos) detected by `wb.evaluation.burnt_in_marks` on the 256 px files "
                  "(thin strokes brighter than their neighbours in both directions, small; figure "
                  "benchmarks/figures/busi_marks.png), max-pooled to 128 px.", "", md(cnt), "",
                  "Accuracy per group, and with the marks erased (OpenCV Telea inpainting on the 256 px file):", "",
                  md(pred), "", "Share of positive relevance on the lesion and on marks outside it (test images with "
                  "marks and a lesion), against the area each covers:", "", md(bud), ""]
    return "\n".join(lines)


def write_evidence() -> None:
    """The methods table, condensed, as workbench/attribution/evidence.json (read by wb.attribution.recommend).

    Per (data, model): the smooth stage's rows where it ran (raw and smoothed pointing game of one model
    on the same test images, the sigma chosen on validation lesions), the methods stage's rows for the
    other methods (its IoU and deletion AUC added where it has them). Without this run's methods part
    (results kept elsewhere), the other methods' rows of the evidence already written stay, marked
    ``"earlier_model": true``: they were measured on an earlier training run of the same recipe.
    """
    path = ROOT / "workbench" / "attribution" / "evidence.json"
    meth, _ = load_part("methods")
    smooth, _ = load_part("smooth")
    if meth is None and smooth is None:
        return
    old = json.loads(path.read_text()) if path.is_file() else {"modalities": {}}
    names = {"busi": ("ultrasound", "BUSI breast ultrasound test lesions (98 images, 128 px), true class"),
             "phantom": ("radiograph", "phantom radiograph nodule-only test images (64 px), target abnormal")}
    cols = ["method", "n", "pointing", "pointing_lo", "pointing_hi", "pointing_tol", "mass", "mass_lo", "mass_hi",
            "iou", "deletion"]
    meth = meth[(meth["class"] == "all")].dropna(subset=["pointing"]) if meth is not None else pd.DataFrame(columns=cols + ["data", "model"])
    centre = ({d: float(v) for d, v in smooth[smooth["method"] == "image centre"].groupby("data")["pointing_raw"].first()
               .items()} if smooth is not None else {})
    smooth = smooth[smooth["model"].isin(RECIPES)] if smooth is not None else pd.DataFrame(columns=["data", "model"])
    out = {"generated_by": "benchmarks/bench_lesions.py", "modalities": dict(old["modalities"])}
    pairs = sorted(set(map(tuple, meth[["data", "model"]].values)) | set(map(tuple, smooth[["data", "model"]].values)))
    for data, model in pairs:
        modality, what = names[data]
        fam = "vit" if model.startswith("vit") else "cnn"
        g = meth[(meth["data"] == data) & (meth["model"] == model)][cols]
        sm = smooth[(smooth["data"] == data) & (smooth["model"] == model)]
        sm = pd.DataFrame({"method": sm["method"], "n": sm["n"], "smooth_sigma": sm["sigma"],
                           **{f"{k}{e}": sm[f"{k}_raw{e}"] for k in ("pointing", "mass") for e in ("", "_lo", "_hi")},
                           "pointing_tol": sm["pointing_tol_raw"],
                           **{f"pointing_smooth{e}": sm[f"pointing_smooth{e}"] for e in ("", "_lo", "_hi")}})
        extra = g[g["method"].isin(sm["method"])][["method", "iou", "deletion"]]
        rows = pd.concat([sm.merge(extra, on="method", how="left"), g[~g["method"].isin(sm["method"])]],
                         ignore_index=True)
        records = [{k: (round(float(v), 4) if isinstance(v, (float, np.floating)) else v) for k, v in r.items()
                    if not (isinstance(v, (float, np.floating)) and np.isnan(v))} for r in rows.to_dict("records")]
        kept = []
        if g.empty:  # keep the earlier evidence's other methods, marked
            have = set(rows["method"])
            kept = [{**r, "earlier_model": True} for r in old["modalities"].get(modality, {}).get(fam, {}).get("rows", [])
                    if r["method"] not in have]
        m, _ = train_or_load(model, data, 0, epochs=30 if data == "busi" else 10)
        auc = wb.evaluate(m, busi("test") if data == "busi" else phantom("test", 800)).auc
        source = f"bench_lesions.py: {what}; {model} trained with the README's recipe (test AUC {auc:.3f})"
        if len(sm):
            source += "; smoothing sigma chosen per method on the validation lesions"
        if kept:
            source += (f"; {', '.join(r['method'] for r in kept)}: an earlier training run of the same recipe "
                       "(earlier_model), on fewer lesions")
        out["modalities"].setdefault(modality, {})[fam] = {
            "source": source, "rows": sorted(records + kept, key=lambda r: -r.get("pointing_smooth", r["pointing"])),
            "kwargs": {m: kw for m, kw in SLOW.items() if kw}, "note": "",
            **({"image_centre": round(centre[data], 4)} if data in centre else {})}
    path.write_text(json.dumps(out, indent=1) + "\n")
    log(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", nargs="+", default=["train", "methods", "smooth", "baselines", "cost", "audit",
                                                   "guided"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--archs", nargs="+", default=["resnet18", "vit_tiny"])
    p.add_argument("--data", nargs="+", default=["busi", "phantom"], choices=["busi", "phantom"],
                   help="methods: the data sets to score (busi lesions, the phantom's nodules)")
    p.add_argument("--methods", nargs="*", default=None)
    p.add_argument("--n-slow", type=int, default=32)
    p.add_argument("--n-faith", type=int, default=32)
    p.add_argument("--n-base", type=int, default=None, help="baselines: the first N lesion / nodule images (all)")
    p.add_argument("--n-phantom", type=int, default=40)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--guide-weight", type=float, default=1.0)
    p.add_argument("--guided-data", nargs="+", default=["busi", "phantom"])
    p.add_argument("--guided-arms", nargs="+", default=["plain", "guided"], choices=["plain", "guided"],
                   help="guided stage: train/evaluate without (plain) and/or with the guide")
    p.add_argument("--smooth-guided", action="store_true",
                   help="smooth stage: score the mask-guided BUSI ResNet-18s (--seeds, --guide-weight) instead")
    p.add_argument("--guided-methods", nargs="+", default=["integrated_gradients", "gradcam"])
    p.add_argument("--guided-pool", default=None, help="guided: the BUSI ResNet-18's global pool (timm's global_pool; "
                   "default its own average)")
    p.add_argument("--audit-methods", nargs="+", default=["integrated_gradients", "gradcam", "lrp"])
    p.add_argument("--cost-batch", type=int, default=4)
    p.add_argument("--cost-rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "tables" / "lesions.md"))
    p.add_argument("--write-evidence", action="store_true", help="write workbench/attribution/evidence.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    stages = {"train": stage_train, "methods": stage_methods, "baselines": stage_baselines, "guided": stage_guided,
              "cost": stage_cost, "audit": stage_audit,
              "smooth": stage_smooth, "pooling": stage_pooling}
    t0 = time.time()
    for s in args.stages:
        if s == "report":
            continue
        log(f"stage {s}")
        stages[s](args)
    if args.write_evidence:
        write_evidence()
    if set(args.stages) != {"pooling"}:  # the pooling stage writes its own table, not the report's parts
        text = report(args)
        Path(args.out).write_text(text + "\n")
        print(text)
    log(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
