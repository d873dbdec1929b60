"""``workbench notebook``: run a notebook with other parameters, list them, check or sync the pairs.

    workbench notebook quickstart --param EPOCHS=1 --param SOURCE=phantom --out runs/quick
    workbench notebook --list                 # notebooks and their parameters
    workbench notebook --check                # exit 1 when a .py / .ipynb pair is out of sync
    workbench notebook --sync                 # rewrite each .ipynb from its .py (no outputs)

The work is done by ``workbench.notebook`` (papermill and jupytext underneath).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("notebook", help="run a notebook with other parameters; --list, --check, --sync",
                       description="Execute a notebook (papermill) with parameters checked against its "
                       "'parameters' cell and write the executed copy and its figures to --out.")
    p.add_argument("name", nargs="?", help="notebook: 00_quickstart, quickstart or 00 (see --list)")
    p.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter (repeat): VALUE as a Python literal (3, 0.5, [1, 2], None), else a string")
    p.add_argument("--out", help="folder for the executed copy and the notebook's figures")
    p.add_argument("--small", action="store_true", help="start from the small settings the tests use")
    p.add_argument("--dir", default=None, help="the notebooks folder (default: the repository's notebooks/)")
    p.add_argument("--timeout", type=int, default=None, help="seconds each cell may run (default 600)")
    p.add_argument("--log", action="store_true", help="echo the cells' outputs while running")
    p.add_argument("--list", action="store_true", help="list the notebooks and their parameters")
    p.add_argument("--check", action="store_true", help="check that every .py / .ipynb pair is in sync")
    p.add_argument("--sync", action="store_true", help="rewrite each .ipynb from its .py source")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from workbench import notebook as nb

    if args.check:
        problems = nb.check(args.dir)
        for line in problems:
            print(line, file=sys.stderr)
        print(f"{len(nb.names(args.dir))} notebook pairs checked: "
              + (f"{len(problems)} problem(s)" if problems else "all in sync"))
        return 1 if problems else 0
    if args.sync:
        written = nb.sync(args.dir)
        print("\n".join(f"wrote {p}" for p in written) or "every .ipynb already matches its .py")
        return 0
    if args.list:
        for name in ([nb.find(args.name, args.dir).stem] if args.name else nb.names(args.dir)):
            print(name)
            for p in nb.parameters(name, args.dir).values():
                print(f"  {p.name} = {p.source}  [{p.type}]" + (f"  # {p.help}" if p.help else ""))
        return 0
    if not args.name or not args.out:
        valid = ", ".join(nb.names(args.dir))
        raise ValueError(f"give a notebook and --out DIR (e.g. workbench notebook quickstart --out runs/quick), "
                         f"or --list / --check / --sync; notebooks: {valid}.")
    params = nb.test_parameters(args.name, args.dir) if args.small else {}
    params.update(nb.parse_param(text) for text in args.param)
    kw = {"timeout": args.timeout} if args.timeout else {}
    try:
        result = nb.run(args.name, params, out=args.out, root=args.dir, log_output=args.log, **kw)
    except nb.NotebookError as e:
        print(f"workbench notebook: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"notebook": result.name, "output": str(result.output), "seconds": round(result.seconds, 1),
                      "parameters": result.parameters}, indent=2, default=str))
    return 0
