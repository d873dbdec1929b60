"""``workbench sae cache|train|atlas``: an activation store, an SAE trained from it, its latent atlas.

    workbench sae cache --checkpoint runs/vit/model --data phantom --split train --layer blocks.1 --out runs/acts
    workbench sae train --store runs/acts --kind topk --expansion 8 --k 32 --out runs/sae
    workbench sae atlas --sae runs/sae --checkpoint runs/vit/model --data phantom --split test --out runs/atlas

``cache`` runs unchanged under ``torchrun --nproc_per_node N`` (each rank caches its share) and
resumes when rerun. Each prints a JSON summary; ``train`` also writes ``OUT.log.json``; ``atlas``
writes ``best.csv`` (per structure its best latents, pixel AUROC and AP), ``mass.csv`` (latent x
structure mass shares), ``fidelity.json`` and ``atlas.png`` (+ sidecar) into ``--out``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from workbench.cli._common import data_kw, load_split, write_json


def _data(args: argparse.Namespace, model: Any) -> Any:
    cfg = model.workbench_config
    kw = data_kw(args)
    h, w = (int(v) for v in cfg["img_size"])
    kw.setdefault("size", h if h == w else (h, w))  # the phantom takes one int
    kw["channels"] = int(cfg["in_chans"]) if int(cfg["in_chans"]) in (1, 3) else None
    if getattr(args, "n", None):
        kw["n"] = args.n
    return load_split(args.data, args.split, **kw)


def run_cache(args: argparse.Namespace) -> dict[str, Any]:
    from workbench import models, sae

    model = models.load(args.checkpoint)
    layer = int(args.layer) if args.layer.lstrip("-").isdigit() else args.layer
    store = sae.cache(model, _data(args, model), layer=layer, out=args.out, tokens=args.tokens,
                      batch_size=args.batch_size, shard_size=args.shard_size, num_workers=args.num_workers,
                      device=args.device, progress=not args.no_progress)
    return {"store": str(store.out), "layer": store.layer, "images": store.n_images, "tokens": store.n_tokens,
            "d": store.d, "layout": store.layout.to_dict(), "gigabytes": round(store.nbytes / 2**30, 3)}


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    from workbench import sae

    store = sae.open_store(args.store)
    trained, log = sae.train(store, args.kind, expansion=args.expansion, k=args.k, l1_coef=args.l1, lr=args.lr,
                             batch_size=args.batch_size, epochs=args.epochs, device=args.device, seed=args.seed,
                             progress=not args.no_progress)
    path = sae.save(trained, args.out)
    write_json(Path(str(path)[: -len(".safetensors")] + ".log.json"), log.to_dict())
    return {"sae": str(path), "kind": args.kind, "d_sae": trained.d_sae, "k": trained.k, "final": log.final,
            "tokens_per_second": round(log.tokens_per_second)}


def run_atlas(args: argparse.Namespace) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from workbench import models, sae, viz
    from workbench._checks import check_output_path

    out = check_output_path(args.out, directory=True, name="--out")
    model = models.load(args.checkpoint)
    s = sae.load(args.sae)
    data = _data(args, model)
    at = sae.atlas(s, model, data, top=args.top, upsample_mode=args.upsample, region=args.region,
                   combine=args.combine, batch_size=args.batch_size, device=args.device)
    at.best.to_csv(out / "best.csv", index=False)
    at.unions.assign(latents=at.unions["latents"].map(lambda t: " ".join(map(str, t)))).to_csv(
        out / "unions.csv", index=False)
    at.table().to_csv(out / "mass.csv")
    fig = at.plot()
    viz.save_figure(fig, out / "atlas.png", params={"sae": str(args.sae), "checkpoint": str(args.checkpoint),
                                                    "data": args.data, "split": args.split})
    plt.close(fig)
    result = {"atlas": str(out), "best": at.best_per_structure().to_dict(orient="records")}
    if not args.no_fidelity:
        f = sae.fidelity(s, model, data, batch_size=args.batch_size, device=args.device)
        write_json(out / "fidelity.json", f.to_dict())
        result["fidelity"] = f.to_dict()
    return result


def register(sub: Any) -> None:
    p = sub.add_parser("sae", help="sparse autoencoders: cache a layer's activations, train an SAE, map its latents")
    verbs = p.add_subparsers(dest="sae_command", required=True)

    def data_args(q: argparse.ArgumentParser, split: str) -> None:
        q.add_argument("--checkpoint", required=True, help="the model: PATH of PATH.safetensors + PATH.json")
        q.add_argument("--data", required=True, help="phantom, medmnist:<name>, an .npz path or a folder")
        q.add_argument("--split", default=split)
        q.add_argument("--n", type=int, default=None, help="phantom: number of images")
        q.add_argument("--size", type=int, default=None, help="default: the checkpoint's image size")
        q.add_argument("--label-column", default=None)
        q.add_argument("--batch-size", type=int, default=64)
        q.add_argument("--device", default="auto")

    c = verbs.add_parser("cache", help="cache a layer's token activations as float16 shards (resumable)")
    data_args(c, "train")
    c.add_argument("--layer", required=True, help="a submodule name (blocks.3, layer3) or a ViT block index")
    c.add_argument("--out", required=True, help="the store's folder")
    c.add_argument("--tokens", default="patch", choices=["patch", "prefix", "all"])
    c.add_argument("--shard-size", type=int, default=None, help="images per shard (default: ~64 MB)")
    c.add_argument("--num-workers", type=int, default=0)
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=lambda a: _print(run_cache(a)))

    t = verbs.add_parser("train", help="train an SAE from a store; writes OUT.safetensors + OUT.json + OUT.log.json")
    t.add_argument("--store", required=True)
    t.add_argument("--out", required=True, help="the SAE's path (without suffix)")
    t.add_argument("--kind", default="topk", help="topk, batchtopk or relu (workbench.sae.KINDS)")
    t.add_argument("--expansion", type=float, default=8)
    t.add_argument("--k", type=int, default=32, help="active latents per token (topk, batchtopk)")
    t.add_argument("--l1", type=float, default=0.2, help="L1 coefficient (relu; larger is sparser)")
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--epochs", type=float, default=1.0)
    t.add_argument("--batch-size", type=int, default=4096, help="tokens per step")
    t.add_argument("--device", default="auto")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=lambda a: _print(run_train(a)))

    a = verbs.add_parser("atlas", help="map an SAE's latents onto structure masks; also its fidelity")
    data_args(a, "test")
    a.add_argument("--sae", required=True, help="PATH of an SAE written by `workbench sae train`")
    a.add_argument("--out", required=True, help="a folder for best.csv, unions.csv, mass.csv, fidelity.json, "
                   "atlas.png")
    a.add_argument("--top", type=int, default=5, help="latents reported per structure")
    a.add_argument("--combine", type=int, default=3, help="largest union of latents scored per structure (0: none)")
    a.add_argument("--upsample", default="bilinear", choices=["bilinear", "nearest"])
    a.add_argument("--region", default=None, help="score only pixels inside this structure (e.g. body)")
    a.add_argument("--no-fidelity", action="store_true", help="skip FVU / L0 / spliced AUC")
    a.set_defaults(func=lambda a: _print(run_atlas(a)))


def _print(result: dict[str, Any]) -> int:
    print(json.dumps(result, indent=2, default=str))
    return 0
