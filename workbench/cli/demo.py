"""``workbench demo``: phantom -> small ViT -> metrics, curves, gallery, anatomy-grouped figures."""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

from workbench.cli._common import check_args, load_split, write_json

# The demo trains the small ViT of the phantom's difficulty benchmark on the default phantom's
# "abnormal" task (all five findings): many fresh images seen a few times (ViTs want data; the
# phantom is free), about 0.94 test AUC in a few CPU minutes (benchmarks/README.md). budget_s is a
# safety net for very slow or busy machines (fit shortens its schedule to fit it), not the plan.
DEMO_DEFAULTS = {"size": 64, "epochs": 10, "n_train": 8000, "n_val": 400, "n_test": 800, "depth": 4,
                 "embed_dim": 96, "num_heads": 3, "patch_size": 8, "batch_size": 64, "lr": 5e-4, "budget_s": 900}
DEMO_QUICK = {"size": 32, "epochs": 1, "n_train": 64, "n_val": 32, "n_test": 64, "depth": 2,
              "embed_dim": 96, "num_heads": 3, "patch_size": 8, "batch_size": 32, "lr": 1e-3, "budget_s": 120}
DEMO_STRUCTURES = ("left_lung", "right_lung", "heart", "mediastinum", "diaphragm")
DEMO_FINDINGS = ("nodule", "effusion", "pneumothorax", "consolidation")


def _demo_figures(out: Path, model: Any, test: Any, report: dict[str, Any]) -> None:
    """Gallery and the anatomy-grouped attention overlay, each skipped with a note if unavailable.

    Every figure is drawn from a recipe (``workbench.viz.draw``) of the saved checkpoint and the
    phantom's load arguments, so ``workbench figure rebuild out/<figure>.json`` draws it again."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from workbench import viz

    batch = test.batch(list(range(min(8, len(test)))))
    structures = [s for s in DEMO_STRUCTURES if s in batch["masks"]]

    def save(fig: Any, name: str, **params: Any) -> None:
        viz.save_figure(fig, out / name, params=params)
        plt.close(fig)
        report["figures"].append(name)

    def gallery() -> None:
        save(viz.draw("gallery", data=test, n=8), "gallery.png")

    def overlay() -> None:
        save(viz.draw("community_overlay", model, test, indices=list(range(min(4, len(test)))), k=4,
                      method="mixed_score", structures=structures), "attention_communities.png")

    for what, draw in (("phantom gallery", gallery), ("anatomy-grouped attention overlay", overlay),
                       ("relevance-by-structure figures", lambda: _demo_relevance(out, model, test, structures, report))):
        try:
            draw()
        except Exception as e:  # an optional figure must not lose the trained model and metrics
            report["notes"].append(f"{what} failed: {type(e).__name__}: {e}")
            warnings.warn(report["notes"][-1], stacklevel=2)


def _demo_relevance(out: Path, model: Any, test: Any, structures: list[str], report: dict[str, Any]) -> None:
    """Where the model looks, grouped by anatomy: Chefer relevance and attention rollout on abnormal
    test images (a method x image grid with finding contours, and the per-structure budget with CIs)."""
    import matplotlib.pyplot as plt
    import torch

    from workbench import viz
    from workbench.attribution import attribute
    from workbench.evaluation import cohort_budget

    abnormal = torch.nonzero(test.labels == 1).flatten()[:64].tolist()
    if not abnormal:
        return
    methods = ["chefer", "attention_rollout"]
    batch = test.batch(abnormal)
    findings = [f for f in DEMO_FINDINGS if f in batch["masks"]]
    outlined = findings + ["cardiomegaly"] * ("cardiomegaly" in batch["masks"])  # its mask is the heart
    fig = viz.draw("attribution_grid", model, test, indices=abnormal[:6], methods=methods, target=1,
                   structures=outlined)
    viz.save_figure(fig, out / "relevance_grid.png")
    plt.close(fig)
    report["figures"].append("relevance_grid.png")
    shown = [*structures, *findings]
    fig = viz.draw("budget_bars", model, test, indices=abnormal, methods=methods, target=1, structures=shown,
                   bootstrap=500, title=f"Where the ViT looks: {len(abnormal)} abnormal test images")
    viz.save_figure(fig, out / "relevance_by_structure.png")
    plt.close(fig)
    report["figures"].append("relevance_by_structure.png")
    masks = {k: batch["masks"][k] for k in shown}
    report["relevance_by_structure"] = {
        m: cohort_budget(attribute(model, batch["image"], target=1, method=m), masks, bootstrap=0)
        .set_index("structure")["mean"].round(4).to_dict() for m in methods}


def run_demo(out: str | Path, *, quick: bool = False, device: str = "auto", seed: int = 0,
             progress: bool = True, **overrides: Any) -> dict[str, Any]:
    """Phantom -> small ViT -> metrics.json, training curves, gallery, checkpoint, attention overlay.

    Returns the metrics dict that is also written to ``out/metrics.json``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from workbench import models, viz
    from workbench.train import evaluate, fit

    from workbench._checks import check_device, check_output_path

    check_output_path(out, name="out", directory=True)
    check_device(device)
    t0 = time.perf_counter()
    p = dict(DEMO_QUICK if quick else DEMO_DEFAULTS)
    p.update({k: v for k, v in overrides.items() if v is not None})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kw = {"size": p["size"], "progress": progress}
    train = load_split("phantom", "train", n=p["n_train"], seed=seed, **kw)
    val = load_split("phantom", "val", n=p["n_val"], seed=seed, **kw)
    test = load_split("phantom", "test", n=p["n_test"], seed=seed, **kw)
    t_data = time.perf_counter() - t0
    in_chans = int(train.images.shape[1])
    torch.manual_seed(seed)
    model = models.create("vit_tiny", num_classes=train.num_classes, img_size=p["size"], in_chans=in_chans,
                          patch_size=p["patch_size"], depth=p["depth"], embed_dim=p["embed_dim"],
                          num_heads=p["num_heads"])
    history = fit(model, train, val, epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"],
                  device=device, early_stopping=max(3, p["epochs"] // 3), seed=seed,
                  progress=progress, max_seconds=max(10.0, p["budget_s"] - (time.perf_counter() - t0) - 30))
    t_train = time.perf_counter() - t0 - t_data
    ev = evaluate(model, test, device=device, bootstrap=200 if quick else 1000, seed=seed)
    models.save(model, out / "model")
    report: dict[str, Any] = {
        "test": ev.to_dict(), "history": history.to_dict(), "params": {**p, "seed": seed, "device": device,
                                                                        "quick": quick},
        "dataset": {"source": "phantom", "task": train.task, "classes": list(train.classes),
                    "n_train": len(train), "n_val": len(val), "n_test": len(test)},
        "model": model.workbench_config, "figures": [], "notes": [], "checkpoint": "model.safetensors"}
    fig = viz.draw("training_curves", history=history.to_dict())
    viz.save_figure(fig, out / "training_curves.png")
    plt.close(fig)
    report["figures"].append("training_curves.png")
    _demo_figures(out, model.cpu(), test, report)
    report["seconds"] = {"data": round(t_data, 1), "train": round(t_train, 1),
                         "total": round(time.perf_counter() - t0, 1)}
    write_json(out / "metrics.json", report)
    return report


def register(sub: Any) -> None:
    d = sub.add_parser("demo", help="phantom -> small ViT -> metrics, curves, gallery, attention overlay")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--size", type=int, default=None, help="image size (default 64; quick: 32)")
    d.add_argument("--epochs", type=int, default=None)
    d.add_argument("--n-train", type=int, default=None)
    d.add_argument("--n-test", type=int, default=None)
    d.add_argument("--device", default="auto")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_args(args)
    report = run_demo(args.out, quick=args.quick, device=args.device, seed=args.seed,
                      progress=not args.no_progress, size=args.size, epochs=args.epochs,
                      n_train=args.n_train, n_test=args.n_test)
    summary = {"out": str(args.out), "test": report["test"], "figures": report["figures"],
               "notes": report["notes"], "seconds": report["seconds"]}
    print(json.dumps(summary, indent=2))
    return 0
