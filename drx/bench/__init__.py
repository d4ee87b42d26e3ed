"""``drx bench``: measurements of drx itself (model, learning, data pipeline, report).

Each sub-command lives in its own module (model, learn, data, report) with ``add_arguments`` and
``run``; this package only builds the ``drx bench`` parser from them.
"""

from __future__ import annotations

import argparse
import importlib

#: sub-command -> (module, help)
SUBCOMMANDS = {
    "model": ("drx.bench.model", "train-step throughput and memory per variant"),
    "learn": ("drx.bench.learn", "train a preset on splits of its benchmark: test SRCC and time per split"),
    "data": ("drx.bench.data", "decoded images/s and crops/s through the real loader"),
    "report": ("drx.bench.report", "time `drx report` on a synthetic experiment (default 500 trials x 10 epochs)"),
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``drx bench <what>`` to the drx parser."""
    bench = sub.add_parser("bench", help="measure model and data throughput")
    bsub = bench.add_subparsers(dest="bench_command", metavar="WHAT")
    bsub.required = True
    for name, (module, text) in SUBCOMMANDS.items():
        mod = importlib.import_module(module)
        parser = bsub.add_parser(name, help=text)
        mod.add_arguments(parser)
        parser.set_defaults(func=mod.run)
