"""``workbench train``: train a model on a data source; writes a checkpoint and metrics.json (under
``torchrun --nproc_per_node N`` with DistributedDataParallel; rank 0 writes and prints).

With ``--concepts`` it trains a concept bottleneck (``workbench.concepts.create``) and adds its concept
quality report (``workbench.concepts.quality``) to metrics.json."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from workbench.cli._common import check_args, data_kw, load_split, try_split, write_json


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    from workbench import models, viz
    from workbench.train import evaluate, fit

    check_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kw = data_kw(args)
    if getattr(args, "concept_columns", None):
        kw["concept_columns"] = [c.strip() for c in args.concept_columns.split(",") if c.strip()]
    if getattr(args, "task", None):
        kw["task"] = args.task
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
    import torch

    torch.manual_seed(args.seed)   # --seed covers the initial weights too: the same command, the same model
    if getattr(args, "concepts", None):
        model, train, val, test = _concept_model(args, train, val, test, size, int(shape[0]), mkw)
    else:
        model = models.create(args.model, num_classes=train.num_classes, img_size=size,
                              in_chans=int(shape[0]), **mkw)
    augment = None
    if args.augment:
        from workbench.data.transforms import RandomAffine

        augment = RandomAffine(degrees=10, translate=0.05, scale=(0.9, 1.1))
    history = fit(model, train, val, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                  device=args.device, early_stopping=args.early_stopping if val is not None else None,
                  augment=augment, seed=args.seed, progress=not args.no_progress)
    if getattr(args, "concepts", None) and not args.no_head_refit:
        # Koh et al.'s second stage: the head on its own, to convergence (joint models gain from it too:
        # phantom diagnosis, ResNet-18, accuracy 0.768 -> 0.855)
        from workbench.concepts import fit_head

        model = fit_head(model, train, on="true" if args.concept_mode == "independent" else "predicted")
    from workbench.jobs import distributed
    main = distributed().is_main  # under torchrun (DDP) every rank trains; rank 0 writes the files
    ckpt = models.save(model, out / "model") if main else out / "model"
    if main:
        fig = viz.training_curves(history)
        viz.save_figure(fig, out / "training_curves.png", params={"history": history.to_dict()})
    result: dict[str, Any] = {"checkpoint": str(ckpt), "history": history.to_dict(),
                              "model": model.workbench_config}
    if test is not None:
        result["test"] = evaluate(model, test, device=args.device, bootstrap=args.bootstrap).to_dict()
        if getattr(args, "concepts", None):
            from workbench.concepts import quality

            report = quality(model, test, device=args.device)
            result["concepts"] = {**report.summary(), "per_concept": report.concepts.to_dict(orient="index"),
                                  "leakage": report.leakage}
    if main:
        write_json(out / "metrics.json", result)
    return result


def _concept_model(args: argparse.Namespace, train: Any, val: Any, test: Any, size: tuple[int, ...], in_chans: int,
                   mkw: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """A concept bottleneck for ``--concepts`` and the splits restricted to its concepts."""
    from workbench.concepts import create, select_concepts

    have = tuple(getattr(train, "concept_names", ()) or ())
    if not have:
        raise ValueError(f"--concepts needs a dataset with concept labels; {args.data} has none (the phantom has "
                         "its findings; for a folder add --concept-columns col1,col2).")
    names = list(have) if args.concepts.strip() == "all" else [c.strip() for c in args.concepts.split(",") if c.strip()]
    train, val, test = (None if d is None else select_concepts(d, names) for d in (train, val, test))
    model = create(args.model, concepts=names, num_classes=train.num_classes, mode=args.concept_mode,
                   head=args.concept_head, concept_weight=args.concept_weight, sparsity=args.sparsity,
                   classes=train.classes, img_size=size, in_chans=in_chans, **mkw)
    return model, train, val, test


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
    t.add_argument("--task", default=None, help="phantom / .npz: the task (phantom: abnormal, findings or diagnosis)")
    t.add_argument("--early-stopping", type=int, default=5, help="patience in epochs on val AUC")
    t.add_argument("--augment", action="store_true", help="RandomAffine augmentation")
    t.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for test CIs")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-progress", action="store_true")
    c = t.add_argument_group("concept bottleneck (workbench.concepts)")
    c.add_argument("--concepts", default=None, help="train a concept bottleneck on these concepts: 'all' or "
                   "comma-separated names (the phantom: nodule,effusion,cardiomegaly,pneumothorax,consolidation)")
    c.add_argument("--concept-columns", default=None, help="folder datasets: 0/1 columns of labels.csv holding concepts")
    c.add_argument("--concept-mode", default="joint", choices=("joint", "sequential", "independent"),
                   help="Koh et al.'s training; the task head is then fitted to convergence on the true "
                   "(independent) or predicted (joint, sequential) training concepts (workbench.concepts.fit_head)")
    c.add_argument("--no-head-refit", action="store_true", help="keep the task head as wb.fit left it")
    c.add_argument("--concept-head", default="linear", choices=("linear", "mlp"))
    c.add_argument("--concept-weight", type=float, default=10.0,
                   help="weight of the concept loss (default 10: interventions work; see wb.concepts.create)")
    c.add_argument("--sparsity", type=float, default=0.0, help="L1 weight on a linear task head")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from workbench.jobs import distributed
    result = run_train(args)
    if distributed().is_main:
        print(json.dumps({k: result[k] for k in ("checkpoint", "test") if k in result}, indent=2))
    return 0
