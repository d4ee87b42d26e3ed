"""``drx demo``: the main job on the embedded default, the one place that chains ablate and report.

It runs the packaged demo study (the paper's Table 4 rows on the 10 splits of the embedded benchmark;
``--spec demo_table5`` runs Table 5's) through a local Ray with ``drx ablate``, then writes its tables and HTML report with ``drx report``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from drx.report.commands import run_report
from drx.search.commands import cmd_ablate, prepare_shared_inputs, storage_of
from drx.search.grid import find_study, load_ablation

DEMO_STUDY = "demo"


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo ablation, then its report; prints the wall time. Returns the exit status."""
    spec = find_study(args.spec, "ablation")
    ns = argparse.Namespace(spec=str(spec), set=args.set, name=args.name, storage=args.storage, dry_run=False, address=args.address,
                            num_cpus=args.num_cpus, num_gpus=None, max_concurrent=args.max_concurrent, max_failures=1, resume=False,
                            track=None)
    t0 = time.time()
    # The one-time builds (benchmark, built-in weights; cached afterwards) first, timed apart from
    # the trials: the demo's budget is the trials' time.
    plan = load_ablation(spec, args.set or [])
    prepare_shared_inputs([t.config for t in plan.trials])
    t1 = time.time()
    rc = cmd_ablate(ns)
    if rc not in (0, 1):
        return rc
    name = args.name or plan.spec.name
    exp_dir = Path(storage_of(ns)) / name
    out = Path(args.out or Path("reports") / name)
    rc_report = run_report(exp_dir, out)
    t2 = time.time()
    print(f"demo finished in {t2 - t0:.0f} s ({t1 - t0:.0f} s of one-time builds, {t2 - t1:.0f} s of trials and report): "
          f"experiment {exp_dir}, report {out / 'report.html'}", flush=True)
    return rc or rc_report


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="the Table 4 ablation on the embedded benchmark (10 splits) through a local Ray, then its report; --spec demo_table5 for Table 5")
    d.add_argument("--spec", default=DEMO_STUDY, help=f"ablation file or packaged study (default: the packaged {DEMO_STUDY!r} study)")
    d.add_argument("--set", action="append", metavar="KEY=VALUE")
    d.add_argument("--name")
    d.add_argument("--storage")
    d.add_argument("--address")
    d.add_argument("--num-cpus", type=int)
    d.add_argument("--max-concurrent", type=int)
    d.add_argument("--out", help="report folder (default: reports/<name>)")
    d.set_defaults(func=cmd_demo)
