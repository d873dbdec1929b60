"""Command line: ``workbench <command> ...`` (``workbench --help`` lists the commands).

Each command is a module of this package with ``register(subparsers)``, which adds its parser and
sets ``func`` (``run(args) -> exit code``); add a module's name to ``COMMANDS`` to expose it.
``print`` is used only in this package (the library itself logs and warns). Expected errors (bad
input, missing files) print one line and exit with code 2; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from workbench.cli._common import check_args
from workbench.cli.demo import DEMO_DEFAULTS, DEMO_QUICK, run_demo

__all__ = ["main", "build_parser", "run_demo", "DEMO_DEFAULTS", "DEMO_QUICK", "COMMANDS"]

# subcommand modules, in the order ``--help`` lists them
COMMANDS = ("demo", "train", "evaluate", "notebook", "figure", "explain", "sae", "prune")

# errors a user can fix from the message alone: one line, exit code 2 (``--debug``: traceback)
EXPECTED_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError,
                   NotADirectoryError, IsADirectoryError, KeyError, ImportError)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="workbench", description="Medical imaging interpretability workbench.")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error (also "
                   "accepted after the command)")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"workbench.cli.{name}").register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``workbench`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    try:
        check_args(args, out_is_folder=False)  # --out writable, --device present: before any command's work
        return int(args.func(args) or 0)
    except EXPECTED_ERRORS as e:
        if args.debug:
            raise
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"workbench {args.command}: error: {msg} (run with --debug for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
