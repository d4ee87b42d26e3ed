"""``drx bench learn``: train a preset on several splits of its benchmark, without Ray.

The learning figure (test SRCC at the last and at the selected epoch) and the wall time per split,
on the machine it runs on (named in the output).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from drx.bench.model import machine_description
from drx.config import load_config
from drx.train.trainer import run_trial


def run(args: argparse.Namespace) -> int:
    """Train a preset on several splits of a benchmark: the learning figure and its time per split."""
    rows = []
    machine = machine_description("cpu")
    print(f"drx bench learn: preset {args.preset} on splits {args.splits}; {machine}")
    for split in [int(s) for s in args.splits.split(",")]:
        cfg = load_config(args.preset, [*(args.set or []), f"data.split.index={split}"])
        t0 = time.perf_counter()
        result = run_trial(cfg, progress=False, log_line=lambda line: None)
        wall = time.perf_counter() - t0
        summary = result.summary()
        rows.append({
            "split": split,
            "status": summary["status"],
            "test_srcc_last": summary["test_srcc"],
            "test_srcc_selected": summary["best_val_test_srcc"],
            "test_plcc_last": summary["test_plcc"],
            "wall_s": wall,
            "target_srcc": args.target_srcc,
            "met": summary["test_srcc"] >= args.target_srcc and wall <= args.target_seconds,
        })
        print(f"  split {split}: test SRCC {summary['test_srcc']:.3f} (selected epoch {summary['best_val_test_srcc']:.3f}), {wall:.0f} s")
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "preset": args.preset, "records": rows}, indent=2, default=str))
    return 0


def add_arguments(le: argparse.ArgumentParser) -> None:
    """Arguments of ``drx bench learn``."""
    le.add_argument("--preset", default="tiny")
    le.add_argument("--splits", default="0,1,2")
    le.add_argument("--set", action="append", metavar="KEY=VALUE")
    le.add_argument("--target-srcc", type=float, default=0.60, help="the learning target per split (default 0.60)")
    le.add_argument("--target-seconds", type=float, default=120.0, help="the time target per split (default 120)")
    le.add_argument("--json")
    le.set_defaults(func=run)
