"""Paper-style ablation tables from the tidy per-split frame: Markdown, LaTeX (booktabs), CSV.

Input: one row per trial at its selected epoch with columns ``variant, benchmark, split, status``
and metric columns (``srcc``, ``plcc``, optionally ``krcc``, ``rmse``). A cell of the table is one
(variant, benchmark, metric): its aggregate over splits, how many splits stand behind it, why the
others are absent, and (for every row but the reference) the paired comparison with the
reference row computed by :mod:`drx.report.stats`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from drx.errors import DataError
from drx.report import stats as st

__all__ = [
    "HIGHER_IS_BETTER",
    "AblationTable",
    "build_ablation_table",
    "per_split_deltas_frame",
    "benchmark_label",
    "metric_label",
    "to_markdown",
    "to_latex",
    "to_csv",
    "write_table",
]

#: Direction of each metric known to the tables ("best" is the max for True, the min for False).
HIGHER_IS_BETTER: dict[str, bool] = {
    "srcc": True,
    "plcc": True,
    "krcc": True,
    "rmse": False,
    "mae": False,
}

_BENCHMARK_LABELS = {
    "koniq": "KonIQ",
    "livec": "LIVEC",
    "spaq": "SPAQ",
    "livefb": "LIVE-FB",
    "bid": "BID",
    "embedded": "Embedded",
    "csv": "CSV",
}

_CELL_COLUMNS = [
    "variant", "benchmark", "metric", "is_reference", "value", "std", "iqr",
    "n_expected", "n_ok", "n_failed", "failed_kinds", "n_missing", "n_paired",
    "delta_median", "delta_mean", "ci_low", "ci_high", "p_raw", "p_holm", "rbc",
    "test_method", "is_best",
]

_DELTA_COLUMNS = ["variant", "benchmark", "metric", "split", "value", "reference_value", "delta"]

# Status of a row whose trial finished but whose metric is not a number (e.g. SRCC of constant
# predictions): it is counted with the failures so the cell explains the gap.
_NO_VALUE = "no value"


def benchmark_label(name: str) -> str:
    """Display name of a benchmark key: ``"livefb→koniq"`` → ``"LIVE-FB→KonIQ"``."""
    parts = str(name).replace("->", "→").split("→")
    return "→".join(_BENCHMARK_LABELS.get(p.strip().lower(), p.strip()) for p in parts)


def metric_label(metric: str) -> str:
    """Display name of a metric column (``"srcc"`` → ``"SRCC"``)."""
    return str(metric).upper()


@dataclass(frozen=True)
class AblationTable:
    """An ablation table: the long ``cells`` frame plus what the renderers need to print it.

    ``cells`` has one row per (variant, benchmark, metric) with columns ``variant, benchmark,
    metric, is_reference, value, std, iqr, n_expected, n_ok, n_failed, failed_kinds, n_missing,
    n_paired, delta_median, delta_mean, ci_low, ci_high, p_raw, p_holm, rbc, test_method,
    is_best``. ``deltas`` is :func:`per_split_deltas_frame` of the same input.
    """

    cells: pd.DataFrame
    deltas: pd.DataFrame
    variants: tuple[str, ...]
    reference: str
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


def _check_args(variants: Sequence[str], reference: str, metrics: Sequence[str], aggregate: str):
    variants = [str(v) for v in variants]
    if len(set(variants)) != len(variants):
        raise ValueError(f"variants must be unique, got {variants}")
    if reference not in variants:
        raise ValueError(f"reference {reference!r} is not one of the variants {variants}")
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
    reference: str,
    metrics: Sequence[str] = ("srcc", "plcc"),
    expected_splits: Mapping[str, Iterable[int]] | Iterable[int] | None = None,
    benchmarks: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Long frame of paired per-split differences, for paired dot plots.

    Columns ``variant, benchmark, metric, split, value, reference_value, delta`` (Δ = value −
    reference_value), one row per non-reference variant and split where both trials are "ok"
    with a finite metric.
    """
    metrics = tuple(metrics)
    variants = _check_args(variants, reference, metrics, "median")
    frame, benchmarks, expected = _prepare(
        per_split, variants, metrics, expected_splits, benchmarks
    )
    return _deltas_long(frame, variants, reference, metrics, benchmarks, expected)


def _deltas_long(frame, variants, reference, metrics, benchmarks, expected) -> pd.DataFrame:
    ok = frame[(frame["status"] == "ok") & frame["variant"].isin(variants)]
    parts = []
    for b in benchmarks:
        rows = ok[(ok["benchmark"] == b) & ok["split"].isin(expected[b])]
        for m in metrics:
            wide = rows.pivot(index="split", columns="variant", values=m)
            if reference not in wide.columns:
                continue
            for v in variants:
                if v == reference or v not in wide.columns:
                    continue
                d = st.paired_deltas(wide[v], wide[reference])
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
                            "reference_value": wide.loc[d.index, reference].to_numpy(),
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
    reference: str,
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

    ``variants`` gives the rows in order and ``reference`` (one of them) the row every other is
    compared with. ``expected_splits`` is one list of splits for every benchmark, a mapping
    benchmark → splits, or None to take the union of splits seen per benchmark; only those
    splits enter the table, and an expected split without any row counts as missing.
    ``aggregate`` is ``"median"`` (BIQA convention) or ``"mean"`` (shown as mean ± std).
    ``benchmarks`` fixes the column order (default: order of appearance). "Best" in a column is
    decided on values rounded to ``digits``, so equal printed numbers are bolded alike.
    """
    metrics = tuple(metrics)
    variants = _check_args(variants, reference, metrics, aggregate)
    frame, benchmarks, expected = _prepare(
        per_split, variants, metrics, expected_splits, benchmarks
    )
    mine = frame[frame["variant"].isin(variants)]

    records = []
    for b in benchmarks:
        splits = expected[b]
        rows_b = mine[(mine["benchmark"] == b) & mine["split"].isin(splits)]
        for m in metrics:
            cmp = st.compare_to_reference(
                rows_b, reference, m, b, variants, splits=splits,
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
                    "is_reference": v == reference,
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
                if v != reference:
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
        deltas=_deltas_long(frame, variants, reference, metrics, benchmarks, expected),
        variants=tuple(variants),
        reference=reference,
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


def _num(x: float, digits: int, signed: bool = False) -> str:
    # U+2212 minus: reads as a real minus sign in Markdown (LaTeX uses math mode instead).
    s = f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
    return s.replace("-", "−")


def _p_text(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _missing_text(c: pd.Series) -> str:
    """'2 failed, 1 missing' style explanation of the splits a cell lacks."""
    parts = [c["failed_kinds"]] if c["failed_kinds"] else []
    if c["n_missing"]:
        parts.append(f"{c['n_missing']} missing")
    return ", ".join(parts)


def _pct(table: AblationTable) -> str:
    return f"{100 * table.confidence:g}%"


def _notes(table: AblationTable, esc=lambda s: s, floor: str = "2/2^n") -> list[str]:
    """Notes printed under the table. ``esc`` escapes plain text for the output format and
    ``floor`` is the already-formatted Wilcoxon floor formula (math mode in LaTeX)."""
    notes = []
    if table.protocol:
        notes.append(esc(f"Protocol: {table.protocol.strip().rstrip('.')}."))
    n_exp = sorted({len(s) for s in table.expected_splits.values()})
    split_txt = "/".join(str(n) for n in n_exp)
    if table.aggregate == "median":
        notes.append(esc(f"Cells: median over {split_txt} splits."))
    else:
        notes.append(esc(f"Cells: mean ± sample std over {split_txt} splits."))
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
    notes.append(esc(f"Bold: best in its column ({direction})."))
    notes.append(
        esc(
            "Test: paired exact Wilcoxon signed-rank across splits, Holm-corrected within each "
            f"column; Δ = row − reference ({table.reference}); {_pct(table)} percentile "
            f"bootstrap interval of the median Δ ({table.n_resamples} resamples, seed "
            f"{table.seed})."
        )
    )
    other = sorted(
        {m for m in table.cells["test_method"] if m and m != "exact" and not m.startswith("not ")}
    )
    if other:
        notes.append(esc(f"Some cells had tied or zero differences; p from: {', '.join(other)}."))
    if table.incomplete:
        notes.append(
            esc(
                "n=a/b: the cell rests on a of the b expected splits; '—': no usable split. "
                "Failed counts are trial statuses; missing = the trial never reported."
            )
        )
    if table.small_n:
        notes.append(
            esc(f"With fewer than {st.SMALL_N} paired splits no p-value can reach 0.05 ")
            + esc("(exact floor ")
            + floor
            + esc(").")
        )
    notes.append(
        esc(
            "Random splits overlap, so per-split results are correlated and p-values are "
            "optimistic (Nadeau & Bengio, 2003)."
        )
    )
    return notes


def _value_md(c: pd.Series, table: AblationTable) -> str:
    if c["n_ok"] == 0:
        why = _missing_text(c) or "no splits"
        return f"— ({why})"
    num = _num(c["value"], table.digits)
    text = f"**{num}**" if c["is_best"] else num
    if table.aggregate == "mean" and np.isfinite(c["std"]):
        text += f" ± {_num(c['std'], table.digits)}"
    if c["n_ok"] < c["n_expected"]:
        text += f" (n={c['n_ok']}/{c['n_expected']}: {_missing_text(c)})"
    return text


def _delta_md(c: pd.Series, table: AblationTable) -> str:
    n, n_exp = int(c["n_paired"]), int(c["n_expected"])
    if n == 0:
        return "— (no paired splits)"
    d = _num(c["delta_median"], table.digits, signed=True)
    if n < 2:
        return f"{d} (n={n}/{n_exp}, no test)"
    lo, hi = _num(c["ci_low"], table.digits, True), _num(c["ci_high"], table.digits, True)
    text = f"{d} [{lo}, {hi}] p={_p_text(c['p_holm'])}"
    if n < n_exp:
        text += f" (n={n}/{n_exp})"
    return text


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|")


def _md_grid(header: list[str], rows: list[list[str]]) -> list[str]:
    """A pipe table padded to column width, so it also reads as plain text in a terminal."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(x.ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    rule = "|" + "|".join(
        ":" + "-" * (w + 1) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)
    ) + "|"
    return [line(header), rule, *(line(r) for r in rows)]


def _columns(table: AblationTable) -> list[tuple[str, str]]:
    return [(b, m) for b in table.benchmarks for m in table.metrics]


def _lookup(table: AblationTable) -> dict[tuple[str, str, str], pd.Series]:
    return {(r.variant, r.benchmark, r.metric): r for _, r in table.cells.iterrows()}


def to_markdown(table: AblationTable) -> str:
    """Markdown: a value table, a Δ-to-reference table (median Δ [CI] Holm p), then notes."""
    cols = _columns(table)
    cells = _lookup(table)
    header = ["Variant"] + [f"{benchmark_label(b)} {metric_label(m)}" for b, m in cols]
    header = [_md_escape(h) for h in header]

    def name(v: str) -> str:
        return _md_escape(f"{v} (reference)" if v == table.reference else v)

    value_rows = [
        [name(v)] + [_md_escape(_value_md(cells[(v, b, m)], table)) for b, m in cols]
        for v in table.variants
    ]
    out = []
    if table.title:
        out += [f"### {table.title}", ""]
    out += _md_grid(header, value_rows)

    others = [v for v in table.variants if v != table.reference]
    if others:
        delta_rows = [
            [name(v)] + [_md_escape(_delta_md(cells[(v, b, m)], table)) for b, m in cols]
            for v in others
        ]
        out += [
            "",
            f"Δ to {_md_escape(table.reference)}: median Δ over paired splits "
            f"[{_pct(table)} CI], Holm-adjusted p",
            "",
        ]
        out += _md_grid(header, delta_rows)
    out.append("")
    out += [f"- {n}" for n in _notes(table)]
    return "\n".join(out) + "\n"


# LaTeX: characters with a special meaning, and the non-ASCII symbols drx labels use.
_LATEX_MAP = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "→": r"$\rightarrow$",
    "←": r"$\leftarrow$",
    "−": r"$-$",
    "–": "--",
    "—": "---",
    "±": r"$\pm$",
    "×": r"$\times$",
    "≤": r"$\leq$",
    "≥": r"$\geq$",
    "Δ": r"$\Delta$",
    "λ": r"$\lambda$",
    "α": r"$\alpha$",
    "<": r"$<$",
    ">": r"$>$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters and map drx's symbols (→, Δ, ±, …) to math mode."""
    return "".join(_LATEX_MAP.get(ch, ch) for ch in str(text))


def _tex_num(x: float, digits: int, signed: bool = False) -> str:
    s = f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
    return f"${s}$"


def _value_tex(c: pd.Series, table: AblationTable) -> str:
    if c["n_ok"] == 0:
        return r"--- {\scriptsize(" + latex_escape(_missing_text(c) or "no splits") + ")}"
    num = f"{c['value']:.{table.digits}f}"
    text = rf"\textbf{{{num}}}" if c["is_best"] else num
    if table.aggregate == "mean" and np.isfinite(c["std"]):
        text += rf"\,{{\scriptsize$\pm${c['std']:.{table.digits}f}}}"
    if c["n_ok"] < c["n_expected"]:
        text += rf"\,{{\scriptsize({c['n_ok']}/{c['n_expected']})}}"
    return text


def _delta_tex(c: pd.Series, table: AblationTable) -> str:
    n, n_exp = int(c["n_paired"]), int(c["n_expected"])
    if n == 0:
        return "---"
    text = _tex_num(c["delta_median"], table.digits, signed=True)
    if n >= 2:
        lo = f"{c['ci_low']:+.{table.digits}f}"
        hi = f"{c['ci_high']:+.{table.digits}f}"
        text += rf" {{\scriptsize$[{lo}, {hi}]$}}"
    if n < n_exp:
        text += rf"\,{{\scriptsize({n}/{n_exp})}}"
    return text


def _p_tex(c: pd.Series) -> str:
    p = c["p_holm"]
    if not np.isfinite(p):
        return "---"
    return "$<$0.001" if p < 0.001 else f"{p:.3f}"


def to_latex(table: AblationTable) -> str:
    """LaTeX ``table`` with a booktabs ``tabular``: values, Δ to the reference, Holm p, notes.

    Needs ``\\usepackage{booktabs}``. Benchmarks are multicolumn headers over their metrics;
    the best value of each column is ``\\textbf``; notes follow the tabular in footnote size.
    """
    cols = _columns(table)
    cells = _lookup(table)
    n_cols = 1 + len(cols)
    k = len(table.metrics)
    lines = [r"\begin{table}[t]", r"\centering", r"\small"]
    if table.title:
        lines.append(rf"\caption{{{latex_escape(table.title)}}}")
    lines.append(r"\begin{tabular}{l" + " ".join(["c" * k] * len(table.benchmarks)) + "}")
    lines.append(r"\toprule")
    heads = [
        rf"\multicolumn{{{k}}}{{c}}{{{latex_escape(benchmark_label(b))}}}"
        for b in table.benchmarks
    ]
    lines.append(" & " + " & ".join(heads) + r" \\")
    rules = [
        rf"\cmidrule(lr){{{2 + i * k}-{1 + (i + 1) * k}}}" for i in range(len(table.benchmarks))
    ]
    lines.append(" ".join(rules))
    lines.append("Variant & " + " & ".join(latex_escape(metric_label(m)) for _, m in cols) + r" \\")
    lines.append(r"\midrule")

    def name(v: str) -> str:
        return latex_escape(v) + (r" {\scriptsize(ref.)}" if v == table.reference else "")

    for v in table.variants:
        lines.append(
            name(v) + " & "
            + " & ".join(_value_tex(cells[(v, b, m)], table) for b, m in cols)
            + r" \\"
        )
    others = [v for v in table.variants if v != table.reference]
    if others:
        ref = latex_escape(table.reference)
        lines += [
            r"\midrule",
            rf"\multicolumn{{{n_cols}}}{{l}}{{\textit{{$\Delta$ to {ref}: median over paired "
            rf"splits [{latex_escape(_pct(table))} bootstrap CI]}}}} \\",
        ]
        for v in others:
            lines.append(
                name(v) + " & " + " & ".join(_delta_tex(cells[(v, b, m)], table) for b, m in cols)
                + r" \\"
            )
        lines += [
            r"\midrule",
            rf"\multicolumn{{{n_cols}}}{{l}}{{\textit{{Holm-adjusted $p$, paired exact Wilcoxon "
            r"signed-rank}} \\",
        ]
        for v in others:
            lines.append(
                name(v) + " & " + " & ".join(_p_tex(cells[(v, b, m)]) for b, m in cols) + r" \\"
            )
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip"]
    notes = " ".join(_notes(table, latex_escape, "$2/2^n$"))
    lines += [r"{\footnotesize\raggedright " + notes + r"\par}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(table: AblationTable) -> str:
    """The long cell frame as CSV (full precision; one row per variant × benchmark × metric)."""
    return table.cells.to_csv(index=False)


def write_table(table: AblationTable, out_dir: str | Path, stem: str) -> dict[str, Path]:
    """Write ``stem.md``, ``stem.tex`` and ``stem.csv`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for ext, render in (("md", to_markdown), ("tex", to_latex), ("csv", to_csv)):
        path = out / f"{stem}.{ext}"
        path.write_text(render(table), encoding="utf-8")
        paths[ext] = path
    return paths
