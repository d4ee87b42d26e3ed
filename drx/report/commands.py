"""``drx report EXPERIMENT``: the tidy table, the paper-style tables, and the HTML report."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from drx.report.results import Experiment, read_experiment, save_tidy
from drx.report.tables import AblationTable, build_ablation_table, to_markdown, write_table


def protocol_text(exp: Experiment, selection: str) -> str:
    """Which protocol produced the numbers, for the note under each table."""
    meta = exp.meta
    cfg: dict[str, Any] = {}
    if exp.plan:
        cfg = exp.plan[0]["config"]
    elif meta.get("base_config"):
        cfg = meta["base_config"]
    split = cfg.get("data", {}).get("split", {})
    protocol = meta.get("protocol", cfg.get("train", {}).get("protocol", "clean"))
    if selection == "last":
        chosen = "test metrics at the last epoch"
    elif protocol == "reference":
        chosen = "test metrics at the epoch of best TEST PLCC (the reference code's test-set selection)"
    else:
        chosen = "test metrics at the best-validation epoch (validation carved from the training images)"
    parts = [
        f"{protocol} protocol: {chosen}",
        f"model.compat {meta.get('compat', cfg.get('model', {}).get('compat', 'clean'))}",
    ]
    if split:
        parts.append(
            f"persisted splits {split.get('train_fraction', 0.8):g}/{1 - split.get('train_fraction', 0.8):g} (seed {split.get('seed', 0)}), "
            f"validation {split.get('val_fraction', 0.1):g} of the training part"
        )
    return "; ".join(parts)


def ablation_tables(exp: Experiment, selection: str = "best", aggregate: str = "median", seed: int = 0) -> list[tuple[str, AblationTable]]:
    """The paper-style tables of an ablation experiment: one per data fraction when several ran."""
    meta = exp.meta
    per_split = exp.per_split(selection)
    if per_split.empty:
        return []
    variants = list(meta.get("variants") or per_split["variant"].dropna().unique())
    reference = meta.get("reference") or variants[0]
    fractions = [float(f) for f in meta.get("fractions") or [1.0]]
    splits = [int(s) for s in meta.get("splits") or sorted(per_split["split"].dropna().unique())]
    protocol = protocol_text(exp, selection)
    title = meta.get("spec", {}).get("description") or meta["name"]
    tables = []
    if len(fractions) > 1 and len(variants) == 1:
        # Data efficiency: the rows are the fractions, compared with the largest.
        df = per_split.copy()
        df["variant"] = df["fraction"].map(lambda f: f"{float(f) * 100:g}% of training")
        rows = [f"{f * 100:g}% of training" for f in fractions]
        ref = f"{max(fractions) * 100:g}% of training"
        tables.append(("ablation", build_ablation_table(df, rows, ref, aggregate=aggregate, expected_splits=splits, protocol=protocol, title=title, seed=seed)))
        return tables
    for fraction in fractions:
        df = per_split[per_split["fraction"].astype(float) == fraction]
        stem = "ablation" if len(fractions) == 1 else f"ablation-f{int(round(fraction * 100))}"
        t = title if len(fractions) == 1 else f"{title} ({fraction * 100:g}% of the training part)"
        tables.append((stem, build_ablation_table(df, variants, reference, aggregate=aggregate, expected_splits=splits, protocol=protocol, title=t, seed=seed)))
    return tables


def run_report(exp_dir: str | Path, out: str | Path | None = None, selection: str = "best", aggregate: str = "median",
               html: bool = True, seed: int = 0, say=print) -> int:
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
    if html:
        try:
            from drx.report.html import write_report
        except ImportError:
            write_report = None
        if write_report is not None:
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
