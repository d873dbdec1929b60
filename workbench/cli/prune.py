"""``workbench prune``: prune a checkpoint guided by unit relevance; writes the pruned checkpoint,
its report (report.json, report.png/pdf/svg) and the unit scores (scores.json)."""
from __future__ import annotations

import argparse
import json
from typing import Any

from workbench.cli._common import data_kw, load_split, write_json


def run_prune(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from workbench import models, pruning, viz
    from workbench._checks import check_output_path
    from workbench.train import fit

    out = check_output_path(args.out, name="--out", directory=True)
    model = models.load(args.checkpoint, device=args.device)
    cfg = model.workbench_config
    unit = args.unit
    if unit == "auto":
        kinds = pruning.kinds_of(model)
        if not kinds:
            raise ValueError(f"{cfg.get('name')} has no prunable units (mlp, heads or channels).")
        unit = kinds[0]
    kw = data_kw(args)
    kw.setdefault("size", tuple(cfg["img_size"]))
    kw["channels"] = int(cfg["in_chans"]) if int(cfg["in_chans"]) in (1, 3) else None
    calib = load_split(args.data, args.calibration_split, **kw)
    n = min(args.n_calibration, len(calib))
    b = calib.batch(range(n))
    images = b["image"].float() / 255.0 if b["image"].dtype == torch.uint8 else b["image"].float()
    scores = pruning.scores(model, (images, b["label"]), unit=unit, criterion=args.criterion,
                            batch_size=args.batch_size, progress=not args.no_progress)
    small = pruning.prune(model, scores, ratio=args.ratio, scope=args.scope)
    if args.fine_tune_epochs:
        fit(small, calib, epochs=args.fine_tune_epochs, lr=args.lr, device=args.device, progress=not args.no_progress)
    ckpt = models.save(small, out / "model")
    write_json(out / "scores.json", {"unit": scores.unit, "criterion": scores.criterion,
                                     "stability": scores.stability, "params": scores.params,
                                     "values": {k: v.tolist() for k, v in scores.values.items()}})
    result: dict[str, Any] = {"checkpoint": str(ckpt), "unit": unit, "criterion": args.criterion,
                              "ratio": args.ratio, "stability": scores.stability.get("overall")}
    if not args.no_report:
        test = load_split(args.data, args.split, **kw)
        rep = pruning.report(model, small, test, n_explain=args.n_explain, repeats=args.repeats,
                             bootstrap=args.bootstrap, device=args.device)
        write_json(out / "report.json", rep.to_dict())
        viz.save_figure(rep.plot(), out / "report.png", params={"summary": rep.summary()})
        result["report"] = rep.summary()
    return result


def register(sub: Any) -> None:
    p = sub.add_parser("prune", help="prune a checkpoint by unit relevance; writes the pruned checkpoint and a report")
    p.add_argument("--checkpoint", required=True, help="PATH of PATH.safetensors + PATH.json")
    p.add_argument("--data", required=True, help="phantom, medmnist:<name>, an .npz path or a folder")
    p.add_argument("--out", required=True, help="folder for model.safetensors/.json, report.json, scores.json")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of units to remove, in (0, 1)")
    p.add_argument("--criterion", default="gradient_x_activation",
                   help="a workbench.pruning.CRITERIA name (integrated_gradients, lrp, weight_magnitude, ...)")
    p.add_argument("--unit", default="auto", choices=("auto", "mlp", "heads", "channels"),
                   help="auto: mlp for ViTs, channels for CNNs")
    p.add_argument("--scope", default="layer", choices=("layer", "global"))
    p.add_argument("--calibration-split", default="train", help="split whose first images score the units")
    p.add_argument("--n-calibration", type=int, default=256)
    p.add_argument("--split", default="test", help="split the report evaluates on")
    p.add_argument("--fine-tune-epochs", type=int, default=0, help="fine-tune the pruned model on the calibration split")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--n-explain", type=int, default=16, help="images explained in the report")
    p.add_argument("--repeats", type=int, default=5, help="interleaved latency rounds")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=None, help="default: the checkpoint's image size")
    p.add_argument("--label-column", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(json.dumps(run_prune(args), indent=2, default=str))
    return 0
