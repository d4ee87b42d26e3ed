"""The ``drx`` command: data | train | predict | bench | ablate | tune | report | demo.

Each subpackage registers its own sub-commands (``register(subparsers)``) so this file stays a
thin dispatcher. drx's own errors print as one clear message and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from drx import __version__
from drx.errors import DrxError

# (module, attribute) pairs; each register() adds its sub-commands to the parser.
_COMMAND_MODULES = (
    "drx.data.commands",
    "drx.train.commands",
    "drx.bench",
    "drx.search.commands",
    "drx.report.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drx",
        description="Ablations and hyperparameter search for the DR.Experts BIQA model.",
    )
    parser.add_argument("--version", action="version", version=f"drx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # sub-command family not present in this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except DrxError as exc:
        print(f"drx {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"drx {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
