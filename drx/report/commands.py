"""``drx report EXPERIMENT``: the tidy table, the paper-style tables, and the HTML report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from drx.experiment import Experiment, dashboard_command, read_experiment, save_tidy
from drx.report.html import write_report
from drx.report.protocol import protocol_note
from drx.report.tables import AblationTable, build_ablation_table, to_markdown, write_table


def ablation_tables(exp: Experiment, selection: str = "best", aggregate: str = "median", seed: int = 0) -> list[tuple[str, AblationTable]]:
    """The paper-style tables of an ablation experiment: one per data fraction when several ran.

    Returns ``[(file stem, table)]``. Rows are ``meta["variants"]``, compared with
    ``meta["baseline"]`` (default: the first variant); the expected splits are ``meta["splits"]``;
    a single-variant experiment over several ``meta["fractions"]`` gives one data-efficiency
    table whose rows are the fractions (the largest is the baseline). Empty when no trial
    reported a result.
    """
    meta = exp.meta
    per_split = exp.per_split(selection)
    if per_split.empty:
        return []
    variants = list(meta.get("variants") or per_split["variant"].dropna().unique())
    baseline = meta.get("baseline") or variants[0]
    fractions = [float(f) for f in meta.get("fractions") or [1.0]]
    splits = [int(s) for s in meta.get("splits") or sorted(per_split["split"].dropna().unique())]
    protocol = protocol_note(exp, selection)
    title = meta.get("spec", {}).get("description") or meta["name"]
    tables = []
    if len(fractions) > 1 and len(variants) == 1:
        # Data efficiency: the rows are the fractions, compared with the largest (the baseline).
        df = per_split.copy()
        df["variant"] = df["fraction"].map(lambda f: f"{float(f) * 100:g}% of training")
        rows = [f"{f * 100:g}% of training" for f in fractions]
        largest = f"{max(fractions) * 100:g}% of training"
        tables.append(("ablation", build_ablation_table(df, rows, largest, aggregate=aggregate, expected_splits=splits, protocol=protocol, title=title, seed=seed)))
        return tables
    for fraction in fractions:
        df = per_split[per_split["fraction"].astype(float) == fraction]
        stem = "ablation" if len(fractions) == 1 else f"ablation-f{int(round(fraction * 100))}"
        t = title if len(fractions) == 1 else f"{title} ({fraction * 100:g}% of the training part)"
        tables.append((stem, build_ablation_table(df, variants, baseline, aggregate=aggregate, expected_splits=splits, protocol=protocol, title=t, seed=seed)))
    return tables


def run_report(exp_dir: str | Path, out: str | Path | None = None, selection: str = "best", aggregate: str = "median",
               html: bool = True, seed: int = 0, say=print) -> int:
    """``drx report``: write the tidy table, the ablation tables (ablate) or ``confirm.csv`` (tune),
    and unless ``html`` is False the HTML report, into ``out`` (default ``reports/<name>``).

    Progress goes to ``say``; returns the exit status (0). Raises :class:`drx.errors.DataError`
    for a folder that is not an experiment (from :func:`drx.experiment.read_experiment`).
    """
    t0 = time.perf_counter()
    exp = read_experiment(exp_dir)
    out = Path(out) if out is not None else Path("reports") / exp.meta["name"]
    out.mkdir(parents=True, exist_ok=True)
    paths = save_tidy(exp, out)
    counts = exp.trials()["status"].value_counts().to_dict()
    say(f"{exp.kind} experiment {exp.meta['name']}: {sum(counts.values())} trials ({', '.join(f'{v} {k}' for k, v in counts.items())}); "
        f"tidy table {paths['parquet']} and {paths['csv']}")
    tables: list[tuple[str, AblationTable]] = []
    if exp.kind == "ablate":
        tables = ablation_tables(exp, selection, aggregate, seed)
        for stem, table in tables:
            write_table(table, out, stem)
            say("\n" + to_markdown(table))
    else:
        confirm = out / "confirm.csv"
        src = Path(exp_dir) / "confirm.csv"
        if src.is_file():
            df = pd.read_csv(src)
            df.to_csv(confirm, index=False)
            say("\nconfirm stage (test metrics, median over splits):\n" + df.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        if exp.meta.get("optuna_storage"):
            say(f"\nOptuna study {exp.meta.get('study_name')!r}: {exp.meta['optuna_storage']}\n"
                f"explore it (read-only; pip install optuna-dashboard): {dashboard_command(exp.meta['optuna_storage'])}")
    if html:
        path = write_report(exp, out, tables=[t for _, t in tables], selection=selection)
        say(f"\nreport: {path}")
    say(f"(report written in {time.perf_counter() - t0:.1f} s to {out})")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    return run_report(args.experiment, args.out, args.selection, args.aggregate, html=not args.no_html, seed=args.seed)


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("report", help="tables (Markdown, LaTeX, CSV) and the HTML report of an ablate/tune experiment")
    r.add_argument("experiment", help="the experiment folder (STORAGE/NAME of drx ablate or drx tune)")
    r.add_argument("--out", help="output folder (default: reports/<name>)")
    r.add_argument("--selection", choices=["best", "last"], default="best",
                   help="epoch whose test metrics enter the tables: the trial's selected epoch (default) or the last")
    r.add_argument("--aggregate", choices=["median", "mean"], default="median", help="cell value over splits (mean shows ± std)")
    r.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    r.add_argument("--no-html", action="store_true", help="tables and tidy data only")
    r.set_defaults(func=_cmd_report)
