"""Benchmark: interpretability-guided pruning (issue 14).

Prints markdown tables and writes them to benchmarks/tables/pruning.md (--out):

1. size and speed: 50% of MLP hidden units (ViT), 50% of heads (ViT) and 50% of channels
   (ResNet-18): params and MACs ratios, latency at batch 1 and 8 as ratios to the dense model
   (the two timed in turn, --repeats rounds, medians);
2. criteria: AUC against pruning ratio (0.1-0.9) without fine-tuning for each criterion, incl.
   Torch-Pruning's own magnitude and Taylor importances run as peers through the same engine;
   the area under each curve; AUC after 50% pruning and <= 2 epochs of fine-tuning;
3. explanations after 50% pruning + fine-tuning: each structure's share of relevance and the
   nodule pointing game before/after;
4. shortcut removal: a ResNet-18 trained with the planted device shortcut; the units most relevant
   inside the device masks removed (remove="highest"); audit gap and test AUC before/after;
5. cost of scoring --n-calib calibration images as a ratio to one forward+backward per image.

Trained models are cached under $WORKBENCH_DATA/bench_models/pruning_<recipe>; the phantom ViT is
bench_sae.py's ``sae_vit64_clean`` when that exists (the same recipe: vit_tiny depth 4, width 96,
patch 8, 64 px, 8,000 images x 10 epochs, batch 64, lr 5e-4, seed 0; it also stops early on
validation AUC), so the two benchmarks share one training run.
Run: flock /work/heavy.lock python benchmarks/bench_pruning.py [--parts ...] [--quick]
"""
from __future__ import annotations

import argparse
import copy
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
from _tables import md  # noqa: E402
from workbench.pruning.report import latency, size  # noqa: E402

VIT = dict(patch_size=8, depth=4, embed_dim=96, num_heads=3)  # the demo's small ViT-tiny (README)




def cache_dir() -> Path:
    base = Path(os.environ.get("WORKBENCH_DATA", ROOT / "data"))
    return base / "bench_models"


def trained(recipe: str, args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    """A trained model for ``recipe``, from the cache when present."""
    path = cache_dir() / f"pruning_{recipe}" / "model"
    data = datasets(recipe, args)
    shared = cache_dir() / "sae_vit64_clean" / "model"  # bench_sae.py's phantom ViT: the same recipe
    if (recipe == "vit_phantom" and not path.with_suffix(".safetensors").exists() and args.size == 64
            and args.n_train_vit == 8000 and args.vit_epochs == 10 and shared.with_suffix(".safetensors").exists()):
        return wb.models.load(shared), data
    if path.with_suffix(".safetensors").exists():
        return wb.models.load(path), data
    t0 = time.perf_counter()
    if recipe.startswith("vit"):
        m = wb.models.create("vit_tiny", num_classes=2, img_size=args.size, in_chans=1, **VIT)
        wb.fit(m, data["train"], epochs=args.vit_epochs, batch_size=64, lr=5e-4, progress=False, seed=0)
    else:
        nc = data["train"].num_classes
        m = wb.models.create("resnet18", num_classes=nc, img_size=tuple(data["train"].images.shape[-2:]), in_chans=1)
        wb.fit(m, data["train"], epochs=args.cnn_epochs, batch_size=64, lr=1e-3, progress=False, seed=0)
    m.workbench_config["bench_train_s"] = time.perf_counter() - t0
    wb.models.save(m, path)
    return m.eval(), data


def datasets(recipe: str, args: argparse.Namespace) -> dict:
    if recipe == "resnet18_pneumonia":
        root = Path(os.environ.get("WORKBENCH_SHARED_DATA", ROOT.parent / "shared" / "data")) / "medmnist"
        src = str(root / "pneumoniamnist.npz")
        return {s: wb.data.load(src, split=s) for s in ("train", "val", "test")}
    shortcut = {"feature": "device", "with": "abnormal", "p_pos": 0.9, "p_neg": 0.1}
    n_train = args.n_train_vit if recipe.startswith("vit") else args.n_train_cnn
    kw = {"shortcut": shortcut} if recipe == "resnet18_shortcut" else {}
    return {"train": wb.data.load("phantom", split="train", n=n_train, size=args.size, **kw),
            "val": wb.data.load("phantom", split="val", n=args.n_calib, size=args.size),
            "test": wb.data.load("phantom", split="test", n=args.n_test, size=args.size)}


UNIT = {"vit_phantom": "mlp", "resnet18_phantom": "channels", "resnet18_pneumonia": "channels"}


def part_size(args) -> pd.DataFrame:
    rows = []
    cases = [("vit_tiny (depth 4, 96, 64 px)", lambda: wb.models.create("vit_tiny", 2, args.size, 1, **VIT), "mlp"),
             ("vit_tiny (depth 4, 96, 64 px)", lambda: wb.models.create("vit_tiny", 2, args.size, 1, **VIT), "heads"),
             ("resnet18 (64 px)", lambda: wb.models.create("resnet18", 2, args.size, 1), "channels"),
             ("resnet18 (28 px)", lambda: wb.models.create("resnet18", 2, 28, 1), "channels")]
    for name, make, unit in cases:
        m = make().eval()
        s = wb.pruning.scores(m, None, unit=unit, criterion="weight_magnitude")
        small = wb.pruning.prune(m, s, ratio=0.5, scope="global" if unit == "heads" else "layer", min_keep=1)
        cfg = m.workbench_config
        x1 = torch.rand(1, 1, *cfg["img_size"])
        s0, s1 = size(m, x1), size(small, x1)
        row = {"model": name, "pruned": f"50% {unit}", "params": s0["params"], "params ratio": s1["params"] / s0["params"],
               "MACs ratio": s1["macs"] / s0["macs"]}
        for b in (1, 8) if args.repeats else ():
            xb = torch.rand(b, 1, *cfg["img_size"])
            ms = latency({"dense": m, "pruned": small}, xb, repeats=args.repeats)
            row[f"latency b{b} ratio"] = ms["pruned"] / ms["dense"]
            row[f"dense b{b} ms"] = ms["dense"]
        rows.append(row)
        print(md(pd.DataFrame([row])), flush=True)
    return pd.DataFrame(rows)


def part_criteria(recipe: str, args) -> tuple[pd.DataFrame, pd.DataFrame]:
    m, data = trained(recipe, args)
    unit = UNIT[recipe]
    crits = ["gradient_x_activation", "integrated_gradients", "weight_magnitude", "mean_activation", "random",
             "tp_magnitude", "tp_taylor"]
    if unit == "channels":
        crits.insert(1, "lrp")
        if not args.cnn_ig:
            crits.remove("integrated_gradients")
    calib = data["val"] if len(data["val"]) <= args.n_calib else (lambda b: (b["image"].float() / (255.0 if b["image"].dtype == torch.uint8 else 1.0), b["label"]))(data["val"].batch(range(args.n_calib)))
    res = wb.pruning.sweep(m, calib, data["test"], unit=unit, criteria=crits, ratios=args.ratios,
                           score_kw={"integrated_gradients": {"n_steps": 8}}, progress=False)
    area = res.area[res.area["metric"] == "auc"].drop(columns=["metric", "fine_tuned"])
    area.insert(0, "model", recipe)
    area["dense AUC"] = res.dense["auc"]
    wide = res.table[res.table["criterion"] != "dense"].pivot(index="criterion", columns="ratio", values="auc")
    wide.columns = [f"AUC@{c:g}" for c in wide.columns]
    area = area.merge(wide.reset_index(), on="criterion").sort_values("area", ascending=False)
    print(md(area), flush=True)
    return area, res.table


# the fine-tuning part prunes each model with the criterion of the largest area in the criteria part (the
# ViT's integrated gradients and gradient x activation tie, 0.933 / 0.932: the cheaper one) and fine-tunes
# at the model's training learning rate (2e-4 for every model left the phantom ResNet-18 2.4 points short)
FT_CRITERION = {"resnet18_phantom": "lrp", "vit_phantom": "gradient_x_activation",
                "resnet18_pneumonia": "gradient_x_activation"}
TRAIN_LR = {"resnet18_phantom": 1e-3, "vit_phantom": 5e-4, "resnet18_pneumonia": 1e-3}


def part_finetune(recipe: str, args) -> list[dict]:
    """50 % pruned by the recipe's criterion, fine-tuned on the labels and (``--distill``) also with the
    dense model as teacher (``wb.fit(..., teacher=...)``, each of ``--distill-weights``, T = 2), from the same
    pruned model."""
    m, data = trained(recipe, args)
    unit = UNIT[recipe]
    calib = data["val"]
    s = wb.pruning.scores(m, calib, unit=unit, criterion=FT_CRITERION[recipe], progress=False)
    pruned = wb.pruning.prune(m, s, ratio=0.5)
    auc0 = wb.evaluate(m, data["test"]).auc
    auc_p = wb.evaluate(pruned, data["test"]).auc
    rows = []
    runs = [("labels", {})] + [(f"distilled, weight {w:g}", {"teacher": m, "distill_weight": w})
                               for w in (args.distill_weights if args.distill else [])]
    for how, distill in runs:
        small = copy.deepcopy(pruned)
        wb.fit(small, data["train"], epochs=args.ft_epochs, batch_size=64, lr=TRAIN_LR[recipe], progress=False, seed=0,
               **distill)
        rep = wb.pruning.report(m, small, data["test"], n_explain=args.n_explain if recipe != "resnet18_pneumonia" else 0,
                                batches=(1, 8), repeats=args.repeats, bootstrap=200, attribution_kw={"n_steps": 16})
        row = {"model": recipe, "pruned": f"50% {unit}", "criterion": FT_CRITERION[recipe],
               "FT": how,
               "FT lr": f"{TRAIN_LR[recipe]:g}", "dense AUC": auc0, "pruned AUC": auc_p,
               f"after {args.ft_epochs} ep FT": rep.pruned.auc, "AUC loss (points)": 100 * (auc0 - rep.pruned.auc),
               "params ratio": rep.summary()["params_ratio"], "latency b8 ratio": rep.latency[8]["ratio"],
               "flips": len(rep.flips), "maps rho": rep.rank_correlation}
        if rep.budget is not None:
            row["max |share shift|"] = float(rep.budget["delta"].abs().max())
            row["shift by structure"] = "; ".join(f"{r.structure} {r.original:.3f}->{r.pruned:.3f}"
                                                  for r in rep.budget.itertuples()
                                                  if r.structure in ("left_lung", "right_lung", "heart", "nodule",
                                                                     "device", "outside"))
        if "nodule" in rep.pointing:
            row["nodule pointing"] = f"{rep.pointing['nodule']['original']:.2f}->{rep.pointing['nodule']['pruned']:.2f}"
        print(md(pd.DataFrame([row])), flush=True)
        rows.append(row)
    return rows


def part_heads(args) -> dict:
    m, data = trained("vit_phantom", args)
    s = wb.pruning.scores(m, data["val"], unit="heads", criterion="gradient_x_activation", progress=False)
    small = wb.pruning.prune(m, s, ratio=0.5, scope="global", min_keep=1)
    auc0, auc1 = wb.evaluate(m, data["test"]).auc, wb.evaluate(small, data["test"]).auc
    x = data["test"].batch(range(8))["image"].float()
    ms = latency({"dense": m, "pruned": small}, x, repeats=args.repeats)
    row = {"model": "vit_phantom", "heads": f"{sum(a.num_heads for a in m.modules() if hasattr(a, 'qkv'))} -> "
                                            f"{sum(a.num_heads for a in small.modules() if hasattr(a, 'qkv'))}",
           "dense AUC": auc0, "pruned AUC (no FT)": auc1, "latency b8 ratio": ms["pruned"] / ms["dense"],
           "stability": s.stability.get("overall")}
    print(md(pd.DataFrame([row])), flush=True)
    return row


def part_shortcut(args) -> list[dict]:
    m, data = trained("resnet18_shortcut", args)
    test = data["test"]
    gap0, auc0 = wb.pruning.audit_gap(m, test), wb.evaluate(m, test).auc
    calib = wb.data.load("phantom", split="val", n=args.n_calib, size=args.size,
                         shortcut={"feature": "device", "with": "abnormal", "p_pos": 0.9, "p_neg": 0.1})
    inside = wb.pruning.scores(m, calib, unit="channels", criterion="gradient_x_activation", masks="device", progress=False)
    outside = wb.pruning.scores(m, calib, unit="channels", criterion="gradient_x_activation", masks="device",
                                where="outside", progress=False)
    share = inside / (inside + outside)   # device-specific: the share of a channel's relevance on the device
    rows = [{"pruned": "none (shortcut model)", "audit gap": gap0, "test AUC": auc0}]
    for label, sc, ratios in (("most device-relevant channels", inside, args.shortcut_ratios),
                              ("channels with the largest share of relevance on the device", share,
                               args.shortcut_ratios + [0.15])):
        for r in ratios:
            small = wb.pruning.prune(m, sc, ratio=r, remove="highest")
            rows.append({"pruned": f"{r:.0%} {label}", "audit gap": wb.pruning.audit_gap(small, test),
                         "test AUC": wb.evaluate(small, test).auc})
    print(md(pd.DataFrame(rows)), flush=True)
    return rows


def part_cost(args) -> pd.DataFrame:
    rows = []
    for name, m, unit, crits in (
            ("vit_tiny (depth 4, 96)", wb.models.create("vit_tiny", 2, args.size, 1, **VIT), "mlp",
             ("gradient_x_activation", "integrated_gradients", "mean_activation")),
            ("resnet18", wb.models.create("resnet18", 2, args.size, 1), "channels",
             ("gradient_x_activation", "lrp", "mean_activation"))):
        m.eval()
        x = torch.rand(args.n_calib, 1, args.size, args.size)
        y = torch.randint(0, 2, (args.n_calib,))
        for crit in crits:
            kw = {"n_steps": 8} if crit == "integrated_gradients" else {}
            times, fb = [], []
            for _ in range(args.cost_rounds):  # interleaved: scoring, then plain fwd+bwd of the same images
                t0 = time.perf_counter()
                wb.pruning.scores(m, (x, y), unit=unit, criterion=crit, batch_size=32, progress=False, **kw)
                times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for i in range(0, len(x), 32):
                    xb = x[i:i + 32].requires_grad_(False)
                    out = m(xb)
                    torch.nn.functional.cross_entropy(out, y[i:i + 32]).backward()
                m.zero_grad(set_to_none=True)
                fb.append(time.perf_counter() - t0)
            rows.append({"model": name, "criterion": crit + (" (n_steps 8)" if kw else ""),
                         "scoring s": float(np.median(times)), "fwd+bwd s": float(np.median(fb)),
                         "ratio": float(np.median(np.array(times) / np.array(fb)))})
            print(md(pd.DataFrame(rows[-1:])), flush=True)
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--parts", default="size,cost,criteria,heads,finetune,shortcut")
    p.add_argument("--recipes", default="resnet18_phantom,vit_phantom,resnet18_pneumonia")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-train-vit", type=int, default=8000)
    p.add_argument("--n-train-cnn", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=400)
    p.add_argument("--n-calib", type=int, default=256)
    p.add_argument("--vit-epochs", type=int, default=10)
    p.add_argument("--cnn-epochs", type=int, default=4)
    p.add_argument("--ft-epochs", type=int, default=2)
    p.add_argument("--distill", action="store_true", help="finetune: also fine-tune with the dense model as teacher")
    p.add_argument("--distill-weights", type=float, nargs="+", default=[0.5], help="finetune --distill: the weights")
    p.add_argument("--n-explain", type=int, default=32)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    p.add_argument("--shortcut-ratios", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--cost-rounds", type=int, default=3)
    p.add_argument("--cnn-ig", action="store_true", help="also run integrated gradients on the CNN (slow on a CPU)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "tables" / "pruning.md"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    parts = args.parts.split(",")
    recipes = args.recipes.split(",")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    sections = [f"## Pruning (`bench_pruning.py`)\n\n_Machine: {os.cpu_count()} CPU cores (load {load:.1f} at the start), "
                f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Command: "
                f"`python benchmarks/bench_pruning.py {' '.join(sys.argv[1:])}`._"]
    out = Path(args.out)

    def write() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n\n".join(sections) + "\n")

    if "size" in parts:
        sections.append("### Size and speed at 50% (weight-magnitude scores; latency medians of interleaved rounds)\n\n"
                        + md(part_size(args)))
        write()
    if "cost" in parts:
        sections.append(f"### Cost of scoring {args.n_calib} calibration images (ratio to one forward+backward per "
                        "image, batches of 32, medians)\n\n" + md(part_cost(args)))
        write()
    if "criteria" in parts:
        tabs = [part_criteria(r, args)[0] for r in recipes]
        sections.append("### AUC vs pruning ratio without fine-tuning (area = mean AUC over the ratios)\n\n"
                        + md(pd.concat(tabs)))
        write()
    if "heads" in parts and "vit_phantom" in recipes:
        sections.append("### 50% of the ViT's heads (global ranking)\n\n" + md(pd.DataFrame([part_heads(args)])))
        write()
    if "finetune" in parts:
        rows = [row for r in recipes for row in part_finetune(r, args)]
        sections.append(f"### 50% pruned (each model's criterion of the largest area) and fine-tuned {args.ft_epochs} "
                        "epochs at its training learning rate (FT on the labels; distilled: with the dense model as "
                        "teacher, `wb.fit(..., teacher=dense, distill_weight=w)`, T = 2): AUC, speed and where the "
                        "explanations fall (integrated gradients, 1 px smoothing)\n\n" + md(pd.DataFrame(rows)))
        write()
    if "shortcut" in parts:
        sections.append("### Shortcut removal (ResNet-18 trained with the device planted in 90% of abnormal / 10% of "
                        "normal images; unbiased test)\n\n" + md(pd.DataFrame(part_shortcut(args))))
        write()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
