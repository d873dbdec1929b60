"""``workbench train``: train a model on a data source; writes a checkpoint and metrics.json."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from workbench.cli._common import data_kw, load_split, try_split, write_json


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    from workbench import models, viz
    from workbench.train import evaluate, fit

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kw = data_kw(args)
    train = load_split(args.data, "train", **kw)
    val = try_split(args.data, "val", **kw)
    test = try_split(args.data, "test", **kw)
    from workbench.data._info import dataset_info
    shape = dataset_info(train).image_shape   # in memory or a lazy folder
    size = tuple(int(s) for s in shape[-2:])
    mkw: dict[str, Any] = {}
    if args.patch_size:
        mkw["patch_size"] = args.patch_size
    if args.depth:
        mkw["depth"] = args.depth
    model = models.create(args.model, num_classes=train.num_classes, img_size=size,
                          in_chans=int(shape[0]), **mkw)
    augment = None
    if args.augment:
        from workbench.data.transforms import RandomAffine

        augment = RandomAffine(degrees=10, translate=0.05, scale=(0.9, 1.1))
    history = fit(model, train, val, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                  device=args.device, early_stopping=args.early_stopping if val is not None else None,
                  augment=augment, seed=args.seed, progress=not args.no_progress)
    ckpt = models.save(model, out / "model")
    fig = viz.training_curves(history)
    viz.save_figure(fig, out / "training_curves.png", params={"history": history.to_dict()})
    result: dict[str, Any] = {"checkpoint": str(ckpt), "history": history.to_dict(),
                              "model": model.workbench_config}
    if test is not None:
        result["test"] = evaluate(model, test, device=args.device, bootstrap=args.bootstrap).to_dict()
    write_json(out / "metrics.json", result)
    return result


def register(sub: Any) -> None:
    t = sub.add_parser("train", help="train a model on a data source; writes a checkpoint and metrics.json")
    t.add_argument("--data", required=True, help="phantom, medmnist:<name>, an .npz path or a folder")
    t.add_argument("--model", default="resnet18", help="a short name (workbench.models.list_models()) or timm name")
    t.add_argument("--out", required=True)
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--size", type=int, default=None, help="resize images to this size")
    t.add_argument("--patch-size", type=int, default=None, help="ViT patch size")
    t.add_argument("--depth", type=int, default=None, help="ViT depth (number of blocks)")
    t.add_argument("--device", default="auto")
    t.add_argument("--label-column", default=None, help="folder datasets: target column of labels.csv")
    t.add_argument("--early-stopping", type=int, default=5, help="patience in epochs on val AUC")
    t.add_argument("--augment", action="store_true", help="RandomAffine augmentation")
    t.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for test CIs")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = run_train(args)
    print(json.dumps({k: result[k] for k in ("checkpoint", "test") if k in result}, indent=2))
    return 0
