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


def parse_splits(text: str) -> list[int]:
    """``"0-9"``, ``"0,2,5"`` or ``"0-2,7"`` -> split indices; ValueError naming a bad item."""
    out: list[int] = []
    for item in text.split(","):
        a, sep, b = item.strip().partition("-")
        if not a.isdigit() or (sep and not b.isdigit()):
            raise ValueError(f"--splits: {item!r} is not a split index or a range like 0-9")
        out += list(range(int(a), int(b) + 1)) if sep else [int(a)]
    return out


def run(args: argparse.Namespace) -> int:
    """Train a preset on several splits of a benchmark: the test SRCC of the selected epoch (the
    clean protocol: best validation SRCC) and of the last, per split and as median and minimum over
    the splits, the wall time per split, and the learning curve (median test SRCC after each epoch,
    against training steps). Exit status 0 when the targets are met, 1 otherwise."""
    try:
        splits = parse_splits(args.splits)
    except ValueError as exc:
        print(f"drx bench learn: {exc}")
        return 2
    rows, curves = [], []
    machine = machine_description("cpu")
    print(f"drx bench learn: preset {args.preset} on splits {args.splits}; {machine}")
    for split in splits:
        cfg = load_config(args.preset, [*(args.set or []), f"data.split.index={split}"])
        t0 = time.perf_counter()
        result = run_trial(cfg, progress=False, log_line=lambda line: None)
        wall = time.perf_counter() - t0
        summary = result.summary()
        rows.append({
            "split": split,
            "status": summary["status"],
            "test_srcc_selected": summary["best_val_test_srcc"],
            "selected_epoch": summary["best_val_epoch"],
            "test_srcc_last": summary["test_srcc"],
            "test_plcc_selected": summary["best_val_test_plcc"],
            "wall_s": wall,
        })
        for record in result.history:
            curves.append({"split": split, "epoch": record["epoch"], "steps": record["epoch"] * cfg.train.steps_per_epoch,
                           "test_srcc": record.get("test_srcc", float("nan"))})
        per_epoch = " ".join(f"{r.get('test_srcc', float('nan')):.3f}" for r in result.history)
        print(f"  split {split}: test SRCC {summary['best_val_test_srcc']:.3f} at the selected epoch "
              f"{summary['best_val_epoch']} (last epoch {summary['test_srcc']:.3f}; by epoch {per_epoch}), {wall:.0f} s", flush=True)
    table = pd.DataFrame(rows)
    selected = table["test_srcc_selected"]
    curve = pd.DataFrame(curves).groupby(["epoch", "steps"], as_index=False)["test_srcc"].median() if curves else pd.DataFrame()
    met = bool(selected.median() >= args.target_median and selected.min() >= args.target_min
               and table["wall_s"].max() <= args.target_seconds)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if not curve.empty:
        print("learning curve (median test SRCC over the splits after each epoch):")
        print(curve.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"test SRCC at the selected epoch: median {selected.median():.3f} (target {args.target_median}), "
          f"min {selected.min():.3f} (target {args.target_min}); wall time per split at most {table['wall_s'].max():.0f} s "
          f"(target {args.target_seconds:.0f}): {'met' if met else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine, "preset": args.preset, "overrides": args.set or [], "records": rows,
            "curve": curve.to_dict("records"), "median": selected.median(), "min": selected.min(), "met": met,
        }, indent=2, default=str))
    return 0 if met else 1


def add_arguments(le: argparse.ArgumentParser) -> None:
    """Arguments of ``drx bench learn``."""
    le.add_argument("--preset", default="tiny")
    le.add_argument("--splits", default="0-9", help="split indices: 0-9, 0,2,5 or 0-2,7 (default 0-9)")
    le.add_argument("--set", action="append", metavar="KEY=VALUE")
    le.add_argument("--target-median", type=float, default=0.75, help="target median test SRCC over the splits (default 0.75)")
    le.add_argument("--target-min", type=float, default=0.65, help="target lowest test SRCC of a split (default 0.65)")
    le.add_argument("--target-seconds", type=float, default=150.0, help="target wall time per split in seconds (default 150)")
    le.add_argument("--json")
    le.set_defaults(func=run)
