"""``drx bench report``: time ``drx report`` on a large synthetic experiment.

Writes a synthetic ``drx ablate`` experiment (default 500 trials × 10 epochs: 10 variants × 5
benchmarks × 10 splits, with failed/diverged/missing trials and explain/ files for the ``full``
rows) into a temporary folder, then times :func:`drx.report.commands.run_report` on it (the
whole command: reading, tables, tidy files, HTML) and, once, its stages separately.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from drx.experiment import read_experiment, save_tidy
from drx.report.commands import ablation_tables, run_report
from drx.report.html import write_report
from drx.testing.synthetic import write_synthetic_experiment

__all__ = ["add_arguments", "run", "grid_for"]

TARGET_S = 15.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=500, help="trials of the synthetic experiment (default 500)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per trial (default 10)")
    parser.add_argument("--images", type=int, default=200, help="test images per expert_weights.csv (default 200)")
    parser.add_argument("--repeat", type=int, default=1, help="time run_report this many times, report the fastest (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", metavar="DIR", help="write the experiment and the report under DIR and keep them")
    parser.add_argument("--json", metavar="PATH", help="also write the timings as JSON")


def grid_for(trials: int) -> tuple[int, int, int]:
    """(variants, benchmarks, splits) with variants × benchmarks × splits close to ``trials``."""
    if trials < 1:
        raise ValueError("--trials must be at least 1")
    splits = min(10, max(2, trials // 10)) if trials >= 4 else 1
    benchmarks = 5 if trials >= 100 else max(1, min(5, trials // (2 * splits)))
    variants = max(1 if trials < 2 else 2, round(trials / (benchmarks * splits)))
    return variants, benchmarks, splits


def run(args: argparse.Namespace) -> int:

    variants, benchmarks, splits = grid_for(args.trials)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="drx-bench-report-"))
    exp_dir, out_dir = root / "experiment", root / "report"
    try:
        if exp_dir.exists():
            shutil.rmtree(exp_dir)
        t0 = time.perf_counter()
        syn = write_synthetic_experiment(exp_dir, n_variants=variants, n_splits=splits, n_epochs=args.epochs, n_benchmarks=benchmarks,
                                         seed=args.seed, n_images=args.images, image_size=384)
        t_gen = time.perf_counter() - t0
        print(f"synthetic experiment: {syn.n_trials} trials ({variants} variants x {benchmarks} benchmarks x {splits} splits) x "
              f"{args.epochs} epochs, written in {t_gen:.1f} s to {exp_dir}")
        totals = []
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                rc = run_report(exp_dir, out_dir, say=lambda *_: None)
            totals.append(time.perf_counter() - t0)
            if rc != 0:
                print(f"run_report returned {rc}")
                return rc
        stages: dict[str, float] = {}
        t0 = time.perf_counter()
        exp = read_experiment(exp_dir)
        stages["read experiment folder"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        save_tidy(exp, out_dir / "stage-check")
        stages["tidy parquet + csv"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        tables = ablation_tables(exp)
        stages["tables + statistics"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        path = write_report(exp, out_dir, tables=[t for _, t in tables])
        stages["figures + report.html"] = time.perf_counter() - t0
        shutil.rmtree(out_dir / "stage-check", ignore_errors=True)
        size_mb = path.stat().st_size / 1e6
        frag_mb = sum(p.stat().st_size for p in (out_dir / "figures").glob("*.html")) / 1e6
        best = min(totals)
        rows = [("run_report (total)", best)] + list(stages.items())
        width = max(len(r[0]) for r in rows)
        print(f"\n{'stage':<{width}}  seconds")
        for name, sec in rows:
            print(f"{name:<{width}}  {sec:7.2f}")
        print(f"\nreport.html {size_mb:.1f} MB (plotly.js ~4.8 MB of it); figure fragments {frag_mb:.1f} MB")
        verdict = "within" if best <= TARGET_S else "OVER"
        print(f"run_report on {syn.n_trials} trials x {args.epochs} epochs: {best:.2f} s ({verdict} the {TARGET_S:g} s target)")
        result: dict[str, Any] = {
            "trials": syn.n_trials, "epochs": args.epochs, "variants": variants, "benchmarks": benchmarks, "splits": splits,
            "images": args.images, "generate_s": round(t_gen, 3), "run_report_s": round(best, 3),
            "run_report_all_s": [round(t, 3) for t in totals], "stages_s": {k: round(v, 3) for k, v in stages.items()},
            "report_mb": round(size_mb, 2), "fragments_mb": round(frag_mb, 2), "target_s": TARGET_S,
        }
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=2))
            print(f"timings: {args.json}")
        return 0 if math.isfinite(best) else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
