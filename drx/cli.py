"""The ``drx`` command: data | train | predict | import | bench | ablate | tune | report | demo.

Each command family registers its own sub-commands (``register(subparsers)``) so this file stays a
thin dispatcher. Only the family of the command being run is imported (``drx report`` never loads
torch or Ray); ``drx --help`` imports them all. drx's own errors print as one clear message and
exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from drx import __version__
from drx.errors import DrxError

#: Command -> the module whose register() adds it (and its siblings) to the parser.
COMMANDS = {
    "data": "drx.data.commands",
    "train": "drx.train.commands",
    "predict": "drx.train.commands",
    "import": "drx.train.commands",
    "bench": "drx.bench",
    "ablate": "drx.search.commands",
    "tune": "drx.search.commands",
    "report": "drx.report.commands",
    "demo": "drx.demo",
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with only the command family named in `argv` registered (all when none is)."""
    parser = argparse.ArgumentParser(
        prog="drx",
        description="Ablations and hyperparameter search for the DR.Experts BIQA model.",
    )
    parser.add_argument("--version", action="version", version=f"drx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    named = [a for a in (argv or []) if a in COMMANDS][:1]
    for module in dict.fromkeys(COMMANDS[c] for c in (named or COMMANDS)):
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
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
