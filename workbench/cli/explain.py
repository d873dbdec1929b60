"""``workbench explain``: attribute a whole dataset (``workbench.explain.explain_dataset``); under
``torchrun --nproc_per_node N`` the same command splits the images over the ranks and rank 0
merges and prints."""
from __future__ import annotations

import argparse
import json
from typing import Any

from workbench.cli._common import data_for_model


def _target(value: str | None) -> int | str | None:
    if value is None or value in ("predicted", "none"):
        return None
    if value == "label":
        return "label"
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(f"--target must be 'predicted', 'label' or a class index; got {value!r}.") from e


def run_explain(args: argparse.Namespace) -> dict[str, Any]:
    from workbench import models
    from workbench._checks import check_output_path
    from workbench.explain import explain_dataset

    check_output_path(args.out, directory=True, name="--out")
    model = models.load(args.checkpoint)
    data = data_for_model(args, model)
    if args.chexmask:
        from workbench.data import attach_chexmask
        data = attach_chexmask(data, args.chexmask, min_dice=args.min_dice, id_column=args.id_column)
    kw: dict[str, Any] = {}
    if args.n_steps:
        kw["n_steps"] = args.n_steps
    if args.internal_batch_size:
        kw["internal_batch_size"] = args.internal_batch_size
    res = explain_dataset(model, data, out=args.out, method=args.method, target=_target(args.target),
                          batch_size=args.batch_size, device=args.device, shard_size=args.shard_size,
                          num_workers=args.workers if args.workers is not None else "auto",
                          on_error="skip" if args.skip_errors else "raise", seed=args.seed,
                          progress=not args.no_progress, overwrite=args.overwrite, **kw)
    t = res.table
    budget = res.budget(bootstrap=args.bootstrap) if res.structures else None
    return {"out": str(args.out), "images": int(len(t)), "shards": len(res.store.shards),
            "errors": int(t["error"].notna().sum()) if "error" in t else 0,
            "budget": None if budget is None else budget.to_dict(orient="records")}


def register(sub: Any) -> None:
    e = sub.add_parser("explain", help="attribute a whole dataset into float16 map shards and a per-image table "
                       "(resumable; under torchrun the ranks share the images)")
    e.add_argument("--checkpoint", required=True, help="PATH of PATH.safetensors + PATH.json")
    e.add_argument("--data", required=True, help="phantom, medmnist:<name>, an .npz path or a folder")
    e.add_argument("--method", default="integrated_gradients", help="an attribution method (workbench.attribution)")
    e.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    e.add_argument("--split", default="test")
    e.add_argument("--size", type=int, default=None, help="default: the checkpoint's image size")
    e.add_argument("--label-column", default=None)
    e.add_argument("--lazy", action="store_true", help="read a folder's images on access (default: above 10,000)")
    e.add_argument("--chexmask", default=None, help="a CheXmask CSV: attach lung and heart masks by image id")
    e.add_argument("--min-dice", type=float, default=0.7, help="CheXmask quality threshold (Dice RCA (Mean))")
    e.add_argument("--id-column", default=None, help="the CheXmask CSV's image id column (default: recognised)")
    e.add_argument("--target", default=None, help="'predicted' (default), 'label' or a class index")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--shard-size", type=int, default=256)
    e.add_argument("--n-steps", type=int, default=None, help="integrated gradients: interpolation steps")
    e.add_argument("--internal-batch-size", type=int, default=None)
    e.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: auto)")
    e.add_argument("--skip-errors", action="store_true", help="record unreadable images in the table and go on")
    e.add_argument("--overwrite", action="store_true", help="replace results of another model/data/method in --out")
    e.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the budget's CIs")
    e.add_argument("--device", default="auto")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from workbench.jobs import distributed
    result = run_explain(args)
    if distributed().is_main:
        print(json.dumps(result, indent=2, default=str))
    return 0
