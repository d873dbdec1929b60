"""``workbench evaluate``: AUC and accuracy of a checkpoint on a data split, as JSON (under
``torchrun --nproc_per_node N`` the ranks share the images and rank 0 prints)."""
from __future__ import annotations

import argparse
import json
from typing import Any

from workbench.cli._common import check_args, data_for_model


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from workbench import models
    from workbench.train import evaluate

    check_args(args)
    model = models.load(args.checkpoint)
    data = data_for_model(args, model)
    # under torchrun each rank predicts its share and the predictions of all ranks are gathered
    ev = evaluate(model, data, device=args.device, bootstrap=args.bootstrap, seed=args.seed)
    return {"checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split, **ev.to_dict()}


def register(sub: Any) -> None:
    e = sub.add_parser("evaluate", help="evaluate a checkpoint; prints JSON")
    e.add_argument("--checkpoint", required=True, help="PATH of PATH.safetensors + PATH.json")
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="test")
    e.add_argument("--size", type=int, default=None, help="default: the checkpoint's image size")
    e.add_argument("--label-column", default=None)
    e.add_argument("--lazy", action="store_true", help="read a folder's images on access (default: above 10,000)")
    e.add_argument("--bootstrap", type=int, default=1000)
    e.add_argument("--device", default="auto")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from workbench.jobs import distributed
    result = run_evaluate(args)
    if distributed().is_main:  # under torchrun: one report, from rank 0
        print(json.dumps(result, indent=2))
    return 0
