"""``workbench figure``: rebuild a saved figure from its sidecar, or list the figure recipes.

    workbench figure rebuild outputs/quickstart/attention_communities.json [--out DIR] [--checkpoint PATH]
    workbench figure recipes

The work is done by ``workbench.viz`` (``rebuild``, ``recipes``).
"""
from __future__ import annotations

import argparse
import inspect
import json
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("figure", help="rebuild a saved figure from its JSON sidecar; list figure recipes",
                       description="Rebuild a figure drawn with workbench.viz.draw from its sidecar: the same "
                       "checkpoint (SHA-256 checked), the same data (hash checked), parameters, seed and style.")
    verbs = p.add_subparsers(dest="verb", required=True)
    r = verbs.add_parser("rebuild", help="draw a figure again from its sidecar JSON and save it")
    r.add_argument("sidecar", help="the .json written beside the figure")
    r.add_argument("--out", default=None, help="a folder or path stem to write to (default: overwrite the original)")
    r.add_argument("--checkpoint", default=None, help="the model checkpoint's new place, if it moved")
    r.set_defaults(func=run_rebuild)
    ls = verbs.add_parser("recipes", help="list the figure recipes and their parameters")
    ls.set_defaults(func=run_recipes)


def run_rebuild(args: argparse.Namespace) -> int:
    from workbench.viz import rebuild

    written = rebuild(args.sidecar, args.out, checkpoint=args.checkpoint)
    print(json.dumps({"rebuilt": [str(p) for p in written]}, indent=2))
    return 0


def run_recipes(args: argparse.Namespace) -> int:
    from workbench.viz._recipes import RECIPES, recipes

    for name in recipes():
        r = RECIPES.get(name)
        takes = " ".join(w for w, on in (("model", r.model), ("data", r.data)) if on) or "parameters only"
        params = ", ".join(k if v is inspect.Parameter.empty else f"{k}={v!r}" for k, v in r.parameters().items())
        print(f"{name} ({takes}): {params}")
    return 0
