"""Paper-style ablation tables from the tidy per-split frame: Markdown, LaTeX (booktabs), CSV.

Input: one row per trial at its selected epoch with columns ``variant, benchmark, split, status``
and metric columns (``srcc``, ``plcc``, optionally ``krcc``, ``rmse``). A cell of the table is one
(variant, benchmark, metric): its aggregate over splits, how many splits stand behind it, why the
others are absent, and (for every row but the baseline) the paired comparison with the
baseline row computed by :mod:`drx.report.stats`.

Rendering: :func:`cell_view` computes once what a cell shows (its numbers as text, the bold
marker, the ± and the interval, the p text, the gap text) and :func:`table_notes` the notes; the
templates ``drx/report/templates/table.{md,tex,html}.j2`` only typeset them.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from drx.data.benchmarks import benchmark_label
from drx.errors import DataError
from drx.metrics import HIGHER_IS_BETTER, metric_label
from drx.report import stats as st
from drx.report.render import latex_escape, render

__all__ = [
    "AblationTable",
    "CellView",
    "Note",
    "build_ablation_table",
    "per_split_deltas_frame",
    "cell_view",
    "cell_views",
    "table_notes",
    "render_table",
    "latex_escape",
    "to_markdown",
    "to_latex",
    "to_csv",
    "write_table",
]

_CELL_COLUMNS = [
    "variant", "benchmark", "metric", "is_baseline", "value", "std", "iqr",
    "n_expected", "n_ok", "n_failed", "failed_kinds", "n_missing", "n_paired",
    "delta_median", "delta_mean", "ci_low", "ci_high", "p_raw", "p_holm", "rbc",
    "test_method", "is_best",
]

_DELTA_COLUMNS = ["variant", "benchmark", "metric", "split", "value", "baseline_value", "delta"]

# Status of a row whose trial finished but whose metric is not a number (e.g. SRCC of constant
# predictions): it is counted with the failures so the cell explains the gap.
_NO_VALUE = "no value"

# A Holm-adjusted p below this colours a Δ cell of the HTML report as a gain or a loss.
_ALPHA = 0.05


@dataclass(frozen=True)
class AblationTable:
    """An ablation table: the long ``cells`` frame plus what the renderers need to print it.

    ``cells`` has one row per (variant, benchmark, metric) with columns ``variant, benchmark,
    metric, is_baseline, value, std, iqr, n_expected, n_ok, n_failed, failed_kinds, n_missing,
    n_paired, delta_median, delta_mean, ci_low, ci_high, p_raw, p_holm, rbc, test_method,
    is_best``. ``deltas`` is :func:`per_split_deltas_frame` of the same input. ``baseline`` is
    the row every Δ is computed against (one of ``variants``).
    """

    cells: pd.DataFrame
    deltas: pd.DataFrame
    variants: tuple[str, ...]
    baseline: str
    benchmarks: tuple[str, ...]
    metrics: tuple[str, ...]
    aggregate: str
    expected_splits: Mapping[str, tuple[int, ...]]
    protocol: str = ""
    title: str = ""
    seed: int = 0
    n_resamples: int = 9999
    confidence: float = 0.95
    digits: int = 3

    def cell(self, variant: str, benchmark: str, metric: str) -> pd.Series:
        """The row of ``cells`` for one (variant, benchmark, metric)."""
        c = self.cells
        hit = c[(c["variant"] == variant) & (c["benchmark"] == benchmark) & (c["metric"] == metric)]
        if hit.empty:
            raise KeyError((variant, benchmark, metric))
        return hit.iloc[0]

    @property
    def small_n(self) -> bool:
        """True when some shown p-value rests on 2–5 paired splits, so it cannot reach 0.05."""
        n = self.cells["n_paired"].dropna().astype(int)
        return any(k >= 2 and not st.can_reach(k) for k in n)

    @property
    def incomplete(self) -> bool:
        """True when some cell aggregates fewer splits than expected."""
        return bool((self.cells["n_ok"] < self.cells["n_expected"]).any())


# ----------------------------------------------------------------------------------- building


def _prepare(
    per_split: pd.DataFrame,
    variants: Sequence[str],
    metrics: Sequence[str],
    expected_splits: Mapping[str, Iterable[int]] | Iterable[int] | None,
    benchmarks: Sequence[str] | None,
) -> tuple[pd.DataFrame, tuple[str, ...], dict[str, tuple[int, ...]]]:
    """Validate the per-split frame; resolve column order and expected splits per benchmark."""
    if expected_splits is not None and not isinstance(expected_splits, Mapping):
        expected_splits = tuple(expected_splits)  # a generator would serve only one benchmark
    required = {"variant", "benchmark", "split", "status", *metrics}
    lacking = required - set(per_split.columns)
    if lacking:
        raise DataError(
            f"per-split frame lacks column(s) {sorted(lacking)}; has {sorted(per_split.columns)}"
        )
    frame = per_split.copy()
    frame["split"] = pd.to_numeric(frame["split"], errors="raise").astype(int)
    frame["status"] = frame["status"].astype(str)
    frame["benchmark"] = frame["benchmark"].astype(str)
    frame["variant"] = frame["variant"].astype(str)
    for m in metrics:
        frame[m] = pd.to_numeric(frame[m], errors="coerce").astype(float)

    key = ["variant", "benchmark", "split"]
    dup = frame.duplicated(key, keep=False)
    if dup.any():
        bad = frame.loc[dup, key].drop_duplicates().to_records(index=False).tolist()
        raise DataError(
            f"per-split frame has several rows for (variant, benchmark, split) {bad[:5]}; "
            "expected one row per trial at its selected epoch"
        )

    seen = list(dict.fromkeys(frame.loc[frame["variant"].isin(variants), "benchmark"]))
    if benchmarks is None:
        if isinstance(expected_splits, Mapping):
            order = [str(b) for b in expected_splits] + seen
        else:
            order = seen
        benchmarks = tuple(dict.fromkeys(order))
    else:
        benchmarks = tuple(str(b) for b in benchmarks)
    if not benchmarks:
        raise DataError(f"per-split frame has no rows for the variants {list(variants)}")

    expected: dict[str, tuple[int, ...]] = {}
    for b in benchmarks:
        if isinstance(expected_splits, Mapping) and b in expected_splits:
            chosen = expected_splits[b]
        elif expected_splits is not None and not isinstance(expected_splits, Mapping):
            chosen = expected_splits
        else:
            # Union over every variant of the frame, not only the table's rows: a split that
            # any trial used is one the protocol had, so its absence elsewhere is "missing".
            chosen = frame.loc[frame["benchmark"] == b, "split"]
        expected[b] = tuple(sorted({int(s) for s in chosen}))
    return frame, benchmarks, expected


def _check_args(variants: Sequence[str], baseline: str, metrics: Sequence[str], aggregate: str):
    variants = [str(v) for v in variants]
    if len(set(variants)) != len(variants):
        raise ValueError(f"variants must be unique, got {variants}")
    if baseline not in variants:
        raise ValueError(f"baseline {baseline!r} is not one of the variants {variants}")
    unknown = [m for m in metrics if m not in HIGHER_IS_BETTER]
    if unknown:
        raise ValueError(
            f"metric(s) {unknown} have no known direction; known: {sorted(HIGHER_IS_BETTER)}"
        )
    if aggregate not in ("median", "mean"):
        raise ValueError(f"aggregate must be 'median' or 'mean', got {aggregate!r}")
    return variants


def _kinds_text(kinds: Counter) -> str:
    ordered = sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{n} {k}" for k, n in ordered)


def per_split_deltas_frame(
    per_split: pd.DataFrame,
    variants: Sequence[str],
    baseline: str,
    metrics: Sequence[str] = ("srcc", "plcc"),
    expected_splits: Mapping[str, Iterable[int]] | Iterable[int] | None = None,
    benchmarks: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Long frame of paired per-split differences, for paired dot plots.

    Columns ``variant, benchmark, metric, split, value, baseline_value, delta`` (Δ = value −
    baseline_value), one row per non-baseline variant and split where both trials are "ok"
    with a finite metric.
    """
    metrics = tuple(metrics)
    variants = _check_args(variants, baseline, metrics, "median")
    frame, benchmarks, expected = _prepare(
        per_split, variants, metrics, expected_splits, benchmarks
    )
    return _deltas_long(frame, variants, baseline, metrics, benchmarks, expected)


def _deltas_long(frame, variants, baseline, metrics, benchmarks, expected) -> pd.DataFrame:
    ok = frame[(frame["status"] == "ok") & frame["variant"].isin(variants)]
    parts = []
    for b in benchmarks:
        rows = ok[(ok["benchmark"] == b) & ok["split"].isin(expected[b])]
        for m in metrics:
            wide = rows.pivot(index="split", columns="variant", values=m)
            if baseline not in wide.columns:
                continue
            for v in variants:
                if v == baseline or v not in wide.columns:
                    continue
                d = st.paired_deltas(wide[v], wide[baseline])
                if d.empty:
                    continue
                parts.append(
                    pd.DataFrame(
                        {
                            "variant": v,
                            "benchmark": b,
                            "metric": m,
                            "split": d.index.astype(int),
                            "value": wide.loc[d.index, v].to_numpy(),
                            "baseline_value": wide.loc[d.index, baseline].to_numpy(),
                            "delta": d.to_numpy(),
                        }
                    )
                )
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in _DELTA_COLUMNS}).astype(
            {"variant": str, "benchmark": str, "metric": str, "split": int}
        )
    return pd.concat(parts, ignore_index=True)[_DELTA_COLUMNS]


def build_ablation_table(
    per_split: pd.DataFrame,
    variants: Sequence[str],
    baseline: str,
    metrics: Sequence[str] = ("srcc", "plcc"),
    aggregate: str = "median",
    expected_splits: Mapping[str, Iterable[int]] | Iterable[int] | None = None,
    protocol: str = "",
    title: str = "",
    seed: int = 0,
    n_resamples: int = 9999,
    *,
    benchmarks: Sequence[str] | None = None,
    confidence: float = 0.95,
    digits: int = 3,
) -> AblationTable:
    """Aggregate the per-split frame into an :class:`AblationTable`.

    ``variants`` gives the rows in order and ``baseline`` (one of them) the row every other is
    compared with. ``expected_splits`` is one list of splits for every benchmark, a mapping
    benchmark → splits, or None to take the union of splits seen per benchmark; only those
    splits enter the table, and an expected split without any row counts as missing.
    ``aggregate`` is ``"median"`` (BIQA convention) or ``"mean"`` (shown as mean ± std).
    ``benchmarks`` fixes the column order (default: order of appearance). "Best" in a column is
    decided on values rounded to ``digits``, so equal printed numbers are bolded alike.
    """
    metrics = tuple(metrics)
    variants = _check_args(variants, baseline, metrics, aggregate)
    frame, benchmarks, expected = _prepare(
        per_split, variants, metrics, expected_splits, benchmarks
    )
    mine = frame[frame["variant"].isin(variants)]

    records = []
    for b in benchmarks:
        splits = expected[b]
        rows_b = mine[(mine["benchmark"] == b) & mine["split"].isin(splits)]
        for m in metrics:
            cmp = st.compare_to_baseline(
                rows_b, baseline, m, b, variants, splits=splits,
                confidence=confidence, n_resamples=n_resamples, seed=seed,
            )
            for v in variants:
                rows = rows_b[rows_b["variant"] == v]
                finite = rows[m].notna() & np.isfinite(rows[m].to_numpy())
                good = rows.loc[(rows["status"] == "ok") & finite, m].to_numpy(dtype=float)
                kinds = Counter(rows.loc[rows["status"] != "ok", "status"])
                n_no_value = int(((rows["status"] == "ok") & ~finite).sum())
                if n_no_value:
                    kinds[_NO_VALUE] += n_no_value
                n_ok = int(good.size)
                if n_ok == 0:
                    value = np.nan
                elif aggregate == "median":
                    value = float(np.median(good))
                else:
                    value = float(np.mean(good))
                rec = {
                    "variant": v,
                    "benchmark": b,
                    "metric": m,
                    "is_baseline": v == baseline,
                    "value": value,
                    "std": float(np.std(good, ddof=1)) if n_ok >= 2 else np.nan,
                    "iqr": float(np.subtract(*np.percentile(good, [75, 25]))) if n_ok else np.nan,
                    "n_expected": len(splits),
                    "n_ok": n_ok,
                    "n_failed": int(sum(kinds.values())),
                    "failed_kinds": _kinds_text(kinds),
                    "n_missing": len(splits) - int(rows["split"].nunique()),
                    "n_paired": pd.NA,
                    "delta_median": np.nan,
                    "delta_mean": np.nan,
                    "ci_low": np.nan,
                    "ci_high": np.nan,
                    "p_raw": np.nan,
                    "p_holm": np.nan,
                    "rbc": np.nan,
                    "test_method": "",
                }
                if v != baseline:
                    c = cmp.loc[v]
                    rec.update(
                        n_paired=int(c["n_paired"]),
                        delta_median=c["delta_median"],
                        delta_mean=c["delta_mean"],
                        ci_low=c["ci_low"],
                        ci_high=c["ci_high"],
                        p_raw=c["p_raw"],
                        p_holm=c["p_holm"],
                        rbc=c["rbc"],
                        test_method=c["test_method"],
                    )
                records.append(rec)

    cells = pd.DataFrame.from_records(records)
    cells["n_paired"] = cells["n_paired"].astype("Int64")
    cells["is_best"] = False
    for (b, m), idx in cells.groupby(["benchmark", "metric"], sort=False).groups.items():
        vals = cells.loc[idx, "value"].round(digits)
        if vals.notna().any():
            best = vals.max() if HIGHER_IS_BETTER[m] else vals.min()
            cells.loc[idx, "is_best"] = (vals == best).to_numpy()
    cells = cells[_CELL_COLUMNS]

    return AblationTable(
        cells=cells,
        deltas=_deltas_long(frame, variants, baseline, metrics, benchmarks, expected),
        variants=tuple(variants),
        baseline=baseline,
        benchmarks=benchmarks,
        metrics=metrics,
        aggregate=aggregate,
        expected_splits=expected,
        protocol=protocol,
        title=title,
        seed=seed,
        n_resamples=n_resamples,
        confidence=confidence,
        digits=digits,
    )


# ---------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class CellView:
    """What one cell of an :class:`AblationTable` shows, computed once for every output format.

    Numbers are text with ASCII ``-`` for minus (each template typesets the sign for its format:
    U+2212 in Markdown and HTML, math mode in LaTeX); ``""`` stands for a number that does not
    exist. The value part serves every row; the Δ part (to the baseline) only the other rows.
    """

    variant: str
    is_baseline: bool
    # -- the value cell
    has_value: bool  # at least one usable split
    value: str  # aggregate over the usable splits, ``digits`` decimals
    best: bool  # best of its column (printed bold)
    std: str  # sample std when the aggregate is the mean (shown as ±), else ""
    n_ok: int  # usable splits
    n_expected: int  # planned splits
    partial: bool  # fewer usable splits than planned: the cell says n=a/b and why
    gaps: str  # why splits are absent ("3 failed, 1 diverged, 2 missing"); "" when none
    iqr: str  # interquartile range over splits (4 decimals; the HTML hover)
    # -- the Δ cell
    n_paired: int  # splits both this row and the baseline finished (0 on the baseline row)
    delta: str  # median Δ over the paired splits, signed, ``digits`` decimals
    tested: bool  # ≥ 2 paired splits: the interval and the test exist
    ci_low: str  # bootstrap interval of the median Δ, signed
    ci_high: str
    p: str  # Holm-adjusted p ("<0.001", "0.125"); "" when untested
    p_raw: str  # unadjusted p, same format
    significant: str  # "pos"/"neg": Holm p < 0.05 with a gain/loss; else ""
    delta_median: str  # median and mean Δ, 4 decimals signed, and the rank-biserial r,
    delta_mean: str  # 2 decimals signed: the HTML hover
    rbc: str
    test_method: str  # which null distribution gave p ("exact", "exact permutation (ties)"...)


@dataclass(frozen=True)
class Note:
    """One note under a table. ``floor``: the note ends with the exact Wilcoxon floor 2/2^n,
    which each format typesets itself (`` (exact floor 2/2^n).`` after ``text``)."""

    text: str
    floor: bool = False


def finite(x: Any) -> float | None:
    """``float(x)`` when `x` is a finite number, else None (None, NaN, text): the report's one test
    of whether a value can be shown."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fixed(x: Any, digits: int, signed: bool = False, missing: str = "") -> str:
    """``x`` with ``digits`` decimals (ASCII minus; ``signed`` adds +), `missing` when not finite."""
    v = finite(x)
    if v is None:
        return missing
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _fixed(x: Any, digits: int, signed: bool = False) -> str:
    return fixed(x, digits, signed)


def _p_text(p: Any) -> str:
    v = finite(p)
    if v is None:
        return ""
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def _gaps_text(c: Mapping[str, Any]) -> str:
    """'2 failed, 1 missing' style explanation of the splits a cell lacks."""
    parts = [c["failed_kinds"]] if c["failed_kinds"] else []
    if c["n_missing"]:
        parts.append(f"{c['n_missing']} missing")
    return ", ".join(parts)


def cell_view(c: Mapping[str, Any], table: AblationTable) -> CellView:
    """The display values of one row ``c`` of ``table.cells`` (a Series or a mapping)."""
    digits = table.digits
    n_ok, n_expected = int(c["n_ok"]), int(c["n_expected"])
    n_paired = 0 if pd.isna(c["n_paired"]) else int(c["n_paired"])
    tested = n_paired >= 2
    p_holm = float(c["p_holm"])
    median = float(c["delta_median"])
    significant = ""
    if tested and math.isfinite(p_holm) and p_holm < _ALPHA:
        significant = "pos" if median > 0 else "neg" if median < 0 else ""
    show_std = table.aggregate == "mean" and math.isfinite(float(c["std"]))
    return CellView(
        variant=str(c["variant"]),
        is_baseline=bool(c["is_baseline"]),
        has_value=n_ok > 0,
        value=_fixed(c["value"], digits),
        best=bool(c["is_best"]),
        std=_fixed(c["std"], digits) if show_std else "",
        n_ok=n_ok,
        n_expected=n_expected,
        partial=n_ok < n_expected,
        gaps=_gaps_text(c),
        iqr=_fixed(c["iqr"], 4),
        n_paired=n_paired,
        delta=_fixed(median, digits, signed=True),
        tested=tested,
        ci_low=_fixed(c["ci_low"], digits, signed=True) if tested else "",
        ci_high=_fixed(c["ci_high"], digits, signed=True) if tested else "",
        p=_p_text(p_holm) if tested else "",
        p_raw=_p_text(c["p_raw"]) if tested else "",
        significant=significant,
        delta_median=_fixed(median, 4, signed=True),
        delta_mean=_fixed(c["delta_mean"], 4, signed=True),
        rbc=_fixed(c["rbc"], 2, signed=True),
        test_method=str(c["test_method"] or ""),
    )


def cell_views(table: AblationTable) -> list[tuple[str, list[CellView]]]:
    """Every row of ``table`` in order: ``(variant, [CellView per (benchmark, metric) column])``."""
    cells = {(r["variant"], r["benchmark"], r["metric"]): r for r in table.cells.to_dict("records")}
    return [
        (v, [cell_view(cells[(v, b, m)], table) for b in table.benchmarks for m in table.metrics])
        for v in table.variants
    ]


def _pct(table: AblationTable) -> str:
    return f"{100 * table.confidence:g}%"


def table_notes(table: AblationTable) -> list[Note]:
    """The notes printed under the table, as plain text (each template escapes them)."""
    notes = []
    if table.protocol:
        notes.append(Note(f"Protocol: {table.protocol.strip().rstrip('.')}."))
    n_exp = sorted({len(s) for s in table.expected_splits.values()})
    split_txt = "/".join(str(n) for n in n_exp)
    if table.aggregate == "median":
        notes.append(Note(f"Cells: median over {split_txt} splits."))
    else:
        notes.append(Note(f"Cells: mean ± sample std over {split_txt} splits."))
    higher = [metric_label(m) for m in table.metrics if HIGHER_IS_BETTER[m]]
    lower = [metric_label(m) for m in table.metrics if not HIGHER_IS_BETTER[m]]
    direction = "; ".join(
        part
        for part in (
            f"higher is better for {', '.join(higher)}" if higher else "",
            f"lower is better for {', '.join(lower)}" if lower else "",
        )
        if part
    )
    notes.append(Note(f"Bold: best in its column ({direction})."))
    notes.append(
        Note(
            "Test: paired exact Wilcoxon signed-rank across splits, Holm-corrected within each "
            f"column; Δ = row − baseline ({table.baseline}); {_pct(table)} percentile "
            f"bootstrap interval of the median Δ ({table.n_resamples} resamples, seed "
            f"{table.seed})."
        )
    )
    other = sorted(
        {m for m in table.cells["test_method"] if m and m != "exact" and not m.startswith("not ")}
    )
    if other:
        notes.append(Note(f"Some cells had tied or zero differences; p from: {', '.join(other)}."))
    if table.incomplete:
        notes.append(
            Note(
                "n=a/b: the cell rests on a of the b expected splits; '—': no usable split. "
                "Failed counts are trial statuses; missing = the trial never reported."
            )
        )
    if table.small_n:
        notes.append(
            Note(f"With fewer than {st.SMALL_N} paired splits no p-value can reach 0.05", floor=True)
        )
    notes.append(
        Note(
            "Random splits overlap, so per-split results are correlated and p-values are "
            "optimistic (Nadeau & Bengio, 2003)."
        )
    )
    return notes


def render_table(table: AblationTable, fmt: str, **extra: Any) -> str:
    """``table`` through the template ``table.<fmt>.j2`` (fmt: ``md``, ``tex`` or ``html``).

    The context: ``t`` (the table), ``rows`` (:func:`cell_views`), ``others`` (those rows
    without the baseline), ``benchmarks`` and ``metrics`` as display labels, ``pct`` (the
    interval's level, "95%"), ``notes`` (:func:`table_notes`), plus ``extra``.
    """
    rows = cell_views(table)
    return render(
        f"table.{fmt}.j2",
        t=table,
        rows=rows,
        others=[r for r in rows if r[0] != table.baseline],
        benchmarks=[benchmark_label(b) for b in table.benchmarks],
        metrics=[metric_label(m) for m in table.metrics],
        pct=_pct(table),
        notes=table_notes(table),
        **extra,
    )


def to_markdown(table: AblationTable) -> str:
    """Markdown: a value table, a Δ-to-baseline table (median Δ [CI] Holm p), then notes."""
    return render_table(table, "md")


def to_latex(table: AblationTable) -> str:
    """LaTeX ``table`` with a booktabs ``tabular``: values, Δ to the baseline, Holm p, notes.

    Needs ``\\usepackage{booktabs}``. Benchmarks are multicolumn headers over their metrics;
    the best value of each column is ``\\textbf``; notes follow the tabular in footnote size.
    """
    return render_table(table, "tex")


def to_csv(table: AblationTable) -> str:
    """The long cell frame as CSV (full precision; one row per variant × benchmark × metric)."""
    return table.cells.to_csv(index=False)


def write_table(table: AblationTable, out_dir: str | Path, stem: str) -> dict[str, Path]:
    """Write ``stem.md``, ``stem.tex`` and ``stem.csv`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for ext, write in (("md", to_markdown), ("tex", to_latex), ("csv", to_csv)):
        path = out / f"{stem}.{ext}"
        path.write_text(write(table), encoding="utf-8")
        paths[ext] = path
    return paths
