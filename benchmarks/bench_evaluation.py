"""Benchmark: explanation quality on the phantom, the planted shortcut, and real-radiograph budgets.

Prints markdown tables (and writes them to --out, default benchmarks/tables/evaluation.md):

1. method x (pointing game on nodules, relevance mass on findings, deletion AUC, randomisation
   sanity = Spearman of |maps| after the cascade reached the first block, ms/image) for a trained
   CNN (ResNet-18) and ViT-tiny (patch 8) on the 64 px phantom, plus the localisation metrics'
   speed and agreement with Quantus on identical inputs;
2. shortcut: a CNN trained with the planted device shortcut vs one trained without it, evaluated on
   an unbiased test split: accuracy on positives with / without a device (the audit gap) and the
   share of relevance on the device;
3. real radiographs (../shared/data/cxr_anatomy, skipped when absent): per-structure relevance
   budgets of the phantom-trained models (a domain shift: read as where the models look).

Default settings take about 20 minutes on a 2-core CPU; --quick is a smoke run.
Run: python benchmarks/bench_evaluation.py [--quick]
"""
from __future__ import annotations

import argparse
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
from workbench.evaluation import (cohort_budget, deletion_insertion, pointing_game, randomisation_test,  # noqa: E402
                                  relevance_mass, relevance_rank_accuracy, subgroup_metrics)

SLOW = {"shap_partition": dict(max_evals=200), "feature_ablation": {}, "occlusion": {}, "smoothgrad": {},
        "shap_gradient": {}}
SKIP = {"deeplift": "ViT: not supported by captum's DeepLift (timm attention); CNN only"}
# Training recipes (the phantom difficulty benchmark's ViT; ResNet-18 on fewer images: it is the slower one
# per image on a CPU and learns from fewer).
RECIPES = {"vit_tiny": dict(create=dict(patch_size=8, depth=4, embed_dim=96, num_heads=3), lr=5e-4),
           "resnet18": dict(create={}, lr=1e-3)}
# run by default on this shared CPU; pass --methods ... for others (e.g. on a GPU)
DEFAULT_METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "gradient_shap", "deeplift",
                   "gradcam", "occlusion", "feature_ablation", "shap_partition", "shap_gradient",
                   "attention_rollout", "chefer")
SANITY = ("saliency", "input_x_gradient", "gradcam", "attention_rollout", "chefer")  # cheap enough to recompute




CACHE: Path | None = None
args_batch = 16  # small batches: more optimiser steps from a few hundred images


def train_model(name: str, train, epochs: int, seed: int = 0, tag: str = ""):
    """Create and fit a model; with --cache, reuse a checkpoint trained with the same settings."""
    key = f"{name}_{tag}_b{args_batch}_{train.name}_{int(train.concepts[:, 1:].sum()) if train.concepts is not None else 0}_{len(train)}_{train.images.shape[-1]}px_{epochs}ep_s{seed}"
    if CACHE is not None and (CACHE / f"{key}.safetensors").is_file():
        return wb.models.load(CACHE / key).eval()
    r = RECIPES[name]
    torch.manual_seed(seed)
    model = wb.models.create(name, num_classes=2, img_size=train.images.shape[-1], in_chans=1, **r["create"])
    wb.fit(model, train, epochs=epochs, batch_size=args_batch, lr=r["lr"], progress=False, seed=seed)
    if CACHE is not None:
        wb.models.save(model, CACHE / key)
    return model.eval()


def _eval_sets(test, n: int):
    """Nodule-only abnormal images, and abnormal images with exactly one finding (any of the five) with
    that finding's mask (cardiomegaly: the heart)."""
    import workbench.data.phantom as ph

    c = test.concepts.bool()
    nodule = test.batch(torch.nonzero(c[:, 0] & (c.sum(1) == 1)).flatten()[:n])
    one = torch.nonzero(c.sum(1) == 1).flatten()[:n]
    single = test.batch(one)
    which = c[one].float().argmax(1)
    finding = torch.stack([single["masks"][ph.FINDINGS[int(j)]][i] for i, j in enumerate(which)])
    return nodule, single, finding


def method_table(model, mname, test, args, methods) -> list[dict]:
    nod_b, one_b, one_mask = _eval_sets(test, args.n_eval)
    rows = []
    for method in methods:
        if method in SKIP and mname.startswith("vit"):
            rows.append({"model": mname, "method": method, "note": SKIP[method]})
            continue
        kw = dict(SLOW.get(method, {}))
        n = args.n_slow if method in SLOW else args.n_eval
        xs, xf = nod_b["image"][:n], one_b["image"][:n]
        try:
            if method.startswith("shap"):  # shap's import and numba JIT (seconds, once per process) stay out of ms/image
                wb.attribute(model, xs[:1], target=1, method=method, **kw)
            t0 = time.perf_counter()
            att = wb.attribute(model, xs, target=1, method=method, **kw)
            ms = (time.perf_counter() - t0) * 1000 / len(xs)
            att_f = wb.attribute(model, xf, target=1, method=method, **kw)
        except Exception as e:  # noqa: BLE001 - a method that does not apply is reported, not fatal
            rows.append({"model": mname, "method": method, "note": f"{type(e).__name__}: {str(e)[:60]}"})
            continue
        try:
            nodule = nod_b["masks"]["nodule"][: len(xs)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row = {"model": mname, "method": method,
                       "pointing_nodule": pointing_game(att, nodule).mean,
                       f"pointing_nodule_tol{args.tolerance}": pointing_game(att, nodule, tolerance=args.tolerance).mean,
                       f"pointing_nodule_smooth{args.smooth:g}": pointing_game(att.smoothed(args.smooth), nodule).mean,
                       "pointing_findings": pointing_game(att_f, one_mask[: len(xf)]).mean,
                       f"pointing_findings_smooth{args.smooth:g}": pointing_game(att_f.smoothed(args.smooth),
                                                                               one_mask[: len(xf)]).mean,
                       "rank_acc_nodule": relevance_rank_accuracy(att, nodule).mean,
                       "mass_nodule": relevance_mass(att, nodule).mean,
                       "mass_findings": relevance_mass(att_f, one_mask[: len(xf)]).mean}
            nf = min(len(xs), args.n_faith)
            f = deletion_insertion(model, xs[:nf], att.maps[:nf], target=1, steps=args.steps, baseline="blur")
            row.update({"deletion_auc": f.mean_deletion_auc, "insertion_auc": f.mean_insertion_auc,
                        "ms_per_image": ms, "n": len(xs)})
            if method in SANITY and args.n_sanity > 0:
                san = randomisation_test(model, xs[: args.n_sanity], method, target=1, progress=False,
                                         similarity=("spearman",), **kw)
                row["sanity_spearman"] = float(san["spearman"].iloc[-1])
        except Exception as e:  # noqa: BLE001
            row = {"model": mname, "method": method, "note": f"{type(e).__name__}: {str(e)[:60]}"}
        print(f"# row {row}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def localisation_speed(args) -> pd.DataFrame:
    """Our batched torch metrics vs Quantus on identical (B, 1, 64, 64) inputs: time and max difference."""
    import quantus

    rng = np.random.default_rng(0)
    b = 256
    a = rng.normal(size=(b, 1, 64, 64)).astype(np.float32)
    s = (rng.random((b, 1, 64, 64)) > 0.9).astype(np.float32)
    x = np.zeros_like(a)
    y = np.zeros(b, int)
    pairs = [("pointing_game", lambda: pointing_game(a[:, 0], s[:, 0] > 0, ties="any").scores.numpy(),
              quantus.PointingGame(disable_warnings=True)),
             ("relevance_mass", lambda: relevance_mass(np.abs(a[:, 0]), s[:, 0] > 0).scores.numpy(),
              quantus.RelevanceMassAccuracy(disable_warnings=True, abs=True)),
             ("rank_accuracy", lambda: relevance_rank_accuracy(a[:, 0], s[:, 0] > 0).scores.numpy(),
              quantus.RelevanceRankAccuracy(disable_warnings=True))]
    rows = []
    for name, ours, q in pairs:
        t_o, t_q = [], []
        for _ in range(3):  # interleaved repeats, medians
            t0 = time.perf_counter()
            v_o = ours()
            t_o.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            v_q = np.asarray(q(model=None, x_batch=x, y_batch=y, a_batch=np.abs(a) if name == "relevance_mass" else a,
                               s_batch=s, channel_first=True), float)
            t_q.append(time.perf_counter() - t0)
        rows.append({"metric": name, "ours_ms": 1000 * np.median(t_o), "quantus_ms": 1000 * np.median(t_q),
                     "max_abs_diff": float(np.abs(v_o - v_q).max()), "images": b})
    return pd.DataFrame(rows)


def shortcut_section(args, test, clean_model, train) -> tuple[pd.DataFrame, str]:
    """The clean arm is the model of the method table (same architecture, same clean train split)."""
    sc = {"feature": "device", "with": "abnormal", "p_pos": 0.9, "p_neg": 0.1}
    tr_sc = wb.data.load("phantom", split="train", n=len(train), size=args.size, shortcut=sc, progress=False)
    rows, figs = [], {}
    for tag in ("shortcut", "clean"):
        if tag == "shortcut":
            m = train_model(args.shortcut_model, tr_sc, args.epochs, tag=tag)
        else:  # the method table's model (from the cache when another run trained it meanwhile)
            m = clean_model if clean_model is not None else train_model(args.shortcut_model, train, args.epochs)
        pos = subgroup_metrics(m, test, "device", positives_only=True, bootstrap=200).set_index("group")
        allm = subgroup_metrics(m, test, "device", bootstrap=200).set_index("group")
        dev = torch.tensor([bool(mm.get("device")) for mm in test.meta])
        idx = torch.nonzero(dev).flatten()[: args.n_eval]
        b = test.batch(idx)
        att = wb.attribute(m, b["image"], target=1, method=args.budget_method)
        bud = cohort_budget(att, {k: b["masks"][k] for k in ("device", "left_lung", "right_lung", "heart")},
                            bootstrap=500).set_index("structure")
        figs[tag] = bud.reset_index()
        rows.append({"train": tag, "auc_all": allm.loc["all", "auc"],
                     "acc_pos_device": pos.loc[True, "accuracy"], "acc_pos_no_device": pos.loc[False, "accuracy"],
                     "audit_gap": pos.loc[True, "accuracy"] - pos.loc[False, "accuracy"],
                     "fpr_device": 1 - allm.loc[True, "specificity"], "fpr_no_device": 1 - allm.loc[False, "specificity"],
                     "budget_device": bud.loc["device", "mean"],
                     "budget_device_ci": f"[{bud.loc['device', 'lo']:.3f}, {bud.loc['device', 'hi']:.3f}]",
                     "device_area": float(b["masks"]["device"].float().mean())})
    return pd.DataFrame(rows), args.budget_method


def real_section(args, models: dict) -> pd.DataFrame | None:
    root = wb.data.shared_data_path()
    if root is None or not (Path(root) / "cxr_anatomy").is_dir():
        return None
    ds = wb.data.load(Path(root) / "cxr_anatomy", split=None, size=args.size, label_column=None)
    b = ds.batch(range(min(len(ds), args.n_real)))
    names = [k for k in ("left_lung", "right_lung", "cardiomediastinum", "airways", "ground_glass_opacity",
                         "consolidation", "device") if k in b["masks"]]
    masks = {"masks": {k: b["masks"][k] for k in names}, "mask_present": {k: b["mask_present"][k] for k in names}}
    out = []
    for mname, m in models.items():
        for method in (args.budget_method, "gradcam"):
            att = wb.attribute(m, b["image"], target=1, method=method)
            cb = cohort_budget(att, masks, bootstrap=500)
            cb.insert(0, "method", method)
            cb.insert(0, "model", mname)
            out.append(cb)
    df = pd.concat(out, ignore_index=True)
    df["mean [CI]"] = [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in zip(df["mean"], df["lo"], df["hi"])]
    area = {k: float(b["masks"][k][b["mask_present"][k]].float().mean()) if b["mask_present"][k].any() else 0.0
            for k in names}
    area["outside"] = float("nan")
    wide = df.pivot_table(index="structure", columns=["model", "method"], values="mean [CI]", aggfunc="first")
    wide.insert(0, "area share", [area.get(s, float("nan")) for s in wide.index])
    return wide.reindex([*names, "outside"]).reset_index()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--n-test", type=int, default=800)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--cnn-n-train", type=int, default=3000, help="ResNet-18 training images (slower per image)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-eval", type=int, default=40, help="images per metric")
    p.add_argument("--n-slow", type=int, default=10, help="images for occlusion / SHAP / ablation / SmoothGrad")
    p.add_argument("--n-faith", type=int, default=4)
    p.add_argument("--n-sanity", type=int, default=2)
    p.add_argument("--n-real", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--tolerance", type=int, default=4, help="pointing-game tolerance in px (Zhang et al.: 15 px at 224)")
    p.add_argument("--smooth", type=float, default=1.0, help="Gaussian sigma (px) of the smoothed pointing game")
    p.add_argument("--methods", nargs="*", default=None)
    p.add_argument("--shortcut-model", default="resnet18")
    p.add_argument("--budget-method", default="integrated_gradients")
    p.add_argument("--cache", default=None, help="folder to keep trained models between runs")
    p.add_argument("--models", nargs="*", default=["resnet18", "vit_tiny"])
    p.add_argument("--sections", nargs="+", default=["methods", "quantus", "shortcut", "real"])
    p.add_argument("--quick", action="store_true", help="tiny settings (smoke run)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "tables" / "evaluation.md"))
    args = p.parse_args()
    if args.quick:
        args.n_train, args.n_test, args.epochs, args.n_eval, args.n_slow, args.cnn_n_train = 64, 64, 1, 4, 2, 64
        args.n_faith, args.n_sanity, args.n_real, args.steps = 2, 2, 4, 4
    global CACHE, args_batch
    CACHE = Path(args.cache) if args.cache else None
    args_batch = args.batch_size
    torch.manual_seed(0)
    t_start = time.time()
    from workbench.attribution import METHODS

    methods = list(METHODS.names()) if args.methods == ["all"] else (args.methods or list(DEFAULT_METHODS))
    not_run = [m for m in METHODS.names() if m not in methods]
    args.opts = {}
    train = wb.data.load("phantom", split="train", n=args.n_train, size=args.size, progress=False)
    train_cnn = wb.data.load("phantom", split="train", n=min(args.cnn_n_train, args.n_train), size=args.size,
                             progress=False)
    test = wb.data.load("phantom", split="test", n=args.n_test, size=args.size, progress=False)
    models = {}
    rows = []
    for name in args.models:
        t0 = time.time()
        models[name] = train_model(name, train if name.startswith("vit") else train_cnn, args.epochs)
        ev = wb.evaluate(models[name], test)
        print(f"# {name}: test AUC {ev.auc:.3f}, accuracy {ev.accuracy:.3f} ({time.time() - t0:.0f} s)", file=sys.stderr)
        mm = [m for m in methods if not (name == "resnet18" and m in ("attention_rollout", "chefer"))]
        if "methods" in args.sections:
            rows += method_table(models[name], name, test, args, mm)
    t1 = pd.DataFrame(rows)
    aucs = {n: wb.evaluate(m, test) for n, m in models.items()}
    lines = ["# Evaluation benchmark", "",
             "Task: the default phantom's `abnormal` label (five findings), "
             + f"{args.size} px; ViT-tiny (depth 4, width 96, patch 8) on {args.n_train} training images, ResNet-18 on "
             + f"{min(args.cnn_n_train, args.n_train)}, {args.epochs} epochs each; test n={args.n_test}; "
             + ", ".join(f"{n}: test AUC {e.auc:.3f} / acc {e.accuracy:.3f}" for n, e in aucs.items()) + ".",
             f"Nodule metrics on up to {args.n_eval} test images whose only finding is a nodule (target = abnormal); "
             f"'findings' metrics on up to {args.n_eval} images with exactly one finding, scored on that finding's "
             f"mask (cardiomegaly: the heart). Occlusion, feature ablation, SmoothGrad, SHAP Partition (200 evals) "
             f"and SHAP Gradient on {args.n_slow}; deletion/insertion: blur baseline, "
             f"{args.steps} steps, {args.n_faith} images; sanity: Spearman of |maps| after cascading randomisation "
             f"of all top-level blocks (lower = passes), {args.n_sanity} images; pointing game with ties as fraction, "
             f"also with a tolerance of {args.tolerance} px (Zhang et al.'s 15 px at 224 px, scaled) and on maps smoothed with a "
             f"Gaussian of sigma {args.smooth:g} px (`Attribution.smoothed`: pixel-gradient maps are dominated by single-pixel "
             "noise). CPU: ms/image is indicative only.", "",
             f"Not run (`--methods all` runs them): {', '.join(not_run) or 'none'}. "
             f"Sanity only for {', '.join(SANITY)} (each randomisation step recomputes the maps).", "",
             "## Methods x metrics", "", md(t1), ""]
    print("\n".join(lines[-4:]), flush=True)
    if "quantus" in args.sections:
        try:
            t2 = localisation_speed(args)
            lines += ["## Localisation metrics vs Quantus (identical inputs, 256 maps of 64x64; relevance mass on |maps|; median of 3)", "", md(t2), ""]
        except Exception as e:  # noqa: BLE001 - report and go on
            lines += ["## Localisation metrics vs Quantus", "", f"failed: {type(e).__name__}: {e}", ""]
    print("\n".join(lines[-4:]), flush=True)
    if "shortcut" not in args.sections:
        t3, bm = pd.DataFrame([{"note": "not run (--sections)"}]), args.budget_method
    else:
        try:
            t3, bm = shortcut_section(args, test, models.get(args.shortcut_model),
                                      train if args.shortcut_model.startswith("vit") else train_cnn)
        except Exception as e:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            t3, bm = pd.DataFrame([{"error": f"{type(e).__name__}: {e}"}]), args.budget_method
    lines += ["## Planted shortcut (device with 90% of abnormal / 10% of normal training images; unbiased test)", "",
              f"{args.shortcut_model}; budget = share of positive {bm} relevance on each structure, over test images "
              "that carry a device (mean, bootstrap 95% CI).", "", md(t3), ""]
    print("\n".join(lines[-3:]), flush=True)
    t4 = pd.DataFrame([{"note": "not run (--sections)"}])
    if "real" in args.sections:
        try:
            t4 = real_section(args, models)
        except Exception as e:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            t4 = pd.DataFrame([{"error": f"{type(e).__name__}: {e}"}])
    if t4 is None:
        lines += ["## Real radiographs", "", "skipped: ../shared/data/cxr_anatomy not found.", ""]
    else:
        lines += ["## Real radiographs (cxr_anatomy, phantom-trained models, target = abnormal)", "",
                  f"Per-structure share of positive relevance (mean [95% bootstrap CI]) over {args.n_real} images at "
                  f"{args.size} px; 'area share' is the structure's mean area fraction (a map spread uniformly "
                  "would score it). Models never saw real images: this shows where they look under domain shift.",
                  "", md(t4), ""]
    lines += [f"Total runtime {time.time() - t_start:.0f} s."]
    text = "\n".join(lines) + "\n"
    print(text)
    from workbench._io import atomic_write_text

    atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
