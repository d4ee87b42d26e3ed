"""Plotly figures of an experiment: read from the tidy table, the ablation tables and explain/ files.

Every function returns a :class:`plotly.graph_objects.Figure` with a title, labelled axes and
hover text, or raises :class:`NoFigure` with a one-line reason when the experiment has nothing
to draw (no sweep, no explain files, too few search trials...), so the report can say why.
Colours are fixed per variant (:func:`variant_colours`) and per benchmark
(:func:`benchmark_colours`) so one variant looks the same in every figure. No torch, no Ray:
plain files only (``explain/expert_weights.csv`` and ``explain/attention.npz`` are read from
each trial's latest Ray checkpoint folder).
"""

from __future__ import annotations

import base64
import io
import json
import math
import warnings
import zlib
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from drx.data.benchmarks import benchmark_label
from drx.experiment import Experiment, explain_file, open_study_storage
from drx.metrics import metric_label
from drx.report.tables import AblationTable, finite, fixed

__all__ = [
    "NoFigure",
    "BASELINE_COLOUR",
    "in_run",
    "variant_colours",
    "benchmark_colours",
    "forest_plot",
    "paired_splits_plot",
    "sweep_values",
    "sweep_plot",
    "fraction_plot",
    "learning_curves",
    "explain_files",
    "expert_weights_plot",
    "attention_maps",
    "load_study",
    "optimization_history",
    "param_importances",
    "parallel_coordinates",
    "slices",
    "search_curves",
    "confirm_table",
]

#: The baseline row's colour (a neutral dark slate), so the other rows' colours stand out.
BASELINE_COLOUR = "#3b4a5e"
# D3's ten without its grey (kept for the baseline), then more for long grids.
_VARIANT_PALETTE = [
    "#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD", "#8C564B", "#E377C2", "#BCBD22", "#17BECF",
    "#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#B68100", "#750D86", "#EB663B", "#511CFB",
]
# Okabe-Ito: colour-blind safe, and distinct from the variant palette's first colours.
_BENCHMARK_PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
_FONT = "-apple-system, BlinkMacSystemFont, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"


class NoFigure(Exception):
    """The experiment has no data for this figure; the message says why (shown in the report)."""


# ------------------------------------------------------------------------------------ colours


def variant_colours(variants: Iterable[str], baseline: str | None = None) -> dict[str, str]:
    """A fixed colour per variant, in the given order; the baseline is neutral dark slate."""
    out: dict[str, str] = {}
    i = 0
    for v in dict.fromkeys(str(v) for v in variants):
        if v == baseline:
            out[v] = BASELINE_COLOUR
            continue
        out[v] = _VARIANT_PALETTE[i % len(_VARIANT_PALETTE)]
        i += 1
    return out


def benchmark_colours(benchmarks: Iterable[str]) -> dict[str, str]:
    """A fixed colour per benchmark column, in the given order."""
    return {b: _BENCHMARK_PALETTE[i % len(_BENCHMARK_PALETTE)] for i, b in enumerate(dict.fromkeys(str(b) for b in benchmarks))}


def _rgba(colour: str, alpha: float) -> str:
    c = colour.lstrip("#")
    r, g, b = int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)
    return f"rgba({r},{g},{b},{alpha})"


def _colour_of(colours: Mapping[str, str], key: str) -> str:
    """The mapped colour, else a stable one derived from the name (the same in every run)."""
    return colours.get(key, _VARIANT_PALETTE[zlib.crc32(str(key).encode()) % len(_VARIANT_PALETTE)])


def _style(fig: go.Figure, title: str, height: int, legend: bool = True, top: int | None = None, bottom: int = 60) -> go.Figure:
    """Shared look: white template, left-aligned title, a horizontal legend between the title and
    the plots (above any subplot titles), readable fonts."""
    subtitles = bool(fig.layout.annotations)
    top = top if top is not None else (118 if subtitles else 92) if legend else (88 if subtitles else 64)
    plot_h = max(1.0, float(height) - top - bottom)
    fig.update_layout(
        template="plotly_white",
        title=dict(text=title, x=0.0, xanchor="left", xref="container", y=1.0, yanchor="top", yref="container",
                   pad=dict(t=14, l=12), font=dict(size=16)),
        font=dict(family=_FONT, size=12.5, color="#222"),
        height=int(height),
        margin=dict(l=70, r=24, t=top, b=bottom),
        hoverlabel=dict(font=dict(family=_FONT, size=12)),
        showlegend=legend,
        legend=dict(orientation="h", yanchor="bottom", y=1.0 + (30 if subtitles else 8) / plot_h, xanchor="left", x=0.0,
                    bgcolor="rgba(255,255,255,0)", font=dict(size=12.5)),
    )
    fig.update_annotations(font=dict(size=13))  # subplot titles
    return fig


def in_run(runs: pd.Series, base: str | None) -> pd.Series:
    """Rows of Ray run ``base`` and of its continuations (``base-r2``... written after a lost Ray state)."""
    if base is None:
        return pd.Series(True, index=runs.index)
    r = runs.astype(str)
    return (r == base) | r.str.match(rf"^{base}-r\d+$")


def _fmt(x: Any, digits: int = 4, signed: bool = False) -> str:
    return fixed(x, digits, signed, missing="–")


def _p(p: Any) -> str:
    v = finite(p)
    if v is None:
        return "not tested"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"


# ------------------------------------------------------------------------- module contributions


def forest_plot(table: AblationTable, metrics: Sequence[str] | None = None, colours: Mapping[str, str] | None = None) -> go.Figure:
    """Δ (variant − baseline) per non-baseline row and benchmark, with the bootstrap interval.

    Rows are the variants (top to bottom in table order), one marker per benchmark with its
    percentile-bootstrap interval of the median Δ; filled markers: Holm-adjusted Wilcoxon
    p < 0.05, open: not significant; grey × at 0: no paired split (failed/missing). One panel
    per metric (SRCC, PLCC), a dashed line at Δ = 0.
    """
    metrics = list(metrics or [m for m in table.metrics if m in ("srcc", "plcc")] or list(table.metrics)[:2])
    others = [v for v in table.variants if v != table.baseline]
    if not others:
        raise NoFigure("the table has only the baseline row, so there is nothing to compare with it")
    cells = table.cells[(~table.cells["is_baseline"]) & table.cells["metric"].isin(metrics)]
    if not np.isfinite(cells["delta_median"].to_numpy(dtype=float)).any():
        raise NoFigure("no variant shares a finished split with the baseline (all comparisons failed or are missing)")
    colours = dict(colours or variant_colours(table.variants, table.baseline))
    bcol = benchmark_colours(table.benchmarks)
    n, nb = len(others), len(table.benchmarks)
    ypos = {v: n - 1 - i for i, v in enumerate(others)}
    step = min(0.7 / max(nb, 1), 0.22)
    offset = {b: ((nb - 1) / 2 - j) * step for j, b in enumerate(table.benchmarks)}
    pct = f"{100 * table.confidence:g}%"
    fig = make_subplots(rows=1, cols=len(metrics), shared_yaxes=True, horizontal_spacing=0.035,
                        subplot_titles=[f"Δ {metric_label(m)}" for m in metrics])
    hover = (
        "<b>%{customdata[0]}</b> on %{customdata[1]}<br>"
        "median Δ %{customdata[9]} = %{x:+.4f}<br>"
        f"{pct} bootstrap CI [%{{customdata[2]}}, %{{customdata[3]}}]<br>"
        "Holm p %{customdata[4]} (raw %{customdata[8]}, %{customdata[7]})<br>"
        "paired splits %{customdata[5]}/%{customdata[6]}<br>"
        "%{customdata[10]}<extra></extra>"
    )
    for j, b in enumerate(table.benchmarks):
        for k, m in enumerate(metrics):
            c = cells[(cells["benchmark"] == b) & (cells["metric"] == m)].set_index("variant").reindex(others)
            d = c["delta_median"].to_numpy(dtype=float)
            lo = c["ci_low"].to_numpy(dtype=float)
            hi = c["ci_high"].to_numpy(dtype=float)
            p = c["p_holm"].to_numpy(dtype=float)
            y = np.array([ypos[v] + offset[b] for v in others])
            has = np.isfinite(d)
            values = [f"{v} median {_fmt(val, 3)} (n={int(nok) if pd.notna(nok) else 0}/{int(nexp) if pd.notna(nexp) else 0}"
                      + (f": {fk}" if isinstance(fk, str) and fk else "") + ")"
                      for v, val, nok, nexp, fk in zip(others, c["value"], c["n_ok"], c["n_expected"], c["failed_kinds"])]
            custom = np.column_stack([
                others, [benchmark_label(b)] * n, [_fmt(x, 4, True) for x in lo], [_fmt(x, 4, True) for x in hi],
                [_p(x) for x in p], [("0" if pd.isna(x) else str(int(x))) for x in c["n_paired"]],
                [("0" if pd.isna(x) else str(int(x))) for x in c["n_expected"]],
                [str(x) if isinstance(x, str) and x else "no test" for x in c["test_method"]], [_p(x) for x in c["p_raw"]],
                [metric_label(m)] * n, values,
            ])
            symbols = ["circle" if (np.isfinite(pi) and pi < 0.05) else "circle-open" for pi in p]
            fig.add_trace(go.Scatter(
                x=d[has], y=y[has], mode="markers", name=benchmark_label(b), legendgroup=b, showlegend=k == 0,
                marker=dict(color=bcol[b], size=9, symbol=[s for s, h in zip(symbols, has) if h], line=dict(width=1.8, color=bcol[b])),
                error_x=dict(type="data", symmetric=False, array=np.where(np.isfinite(hi), hi - d, np.nan)[has],
                             arrayminus=np.where(np.isfinite(lo), d - lo, np.nan)[has], color=bcol[b], thickness=1.6, width=3),
                customdata=custom[has], hovertemplate=hover,
            ), row=1, col=k + 1)
            if (~has).any():
                fig.add_trace(go.Scatter(
                    x=np.zeros(int((~has).sum())), y=y[~has], mode="markers", name="no paired split", legendgroup="none",
                    showlegend=False, marker=dict(symbol="x-thin-open", size=10, color="#999", line=dict(width=2, color="#999")),
                    customdata=np.column_stack([np.array(others)[~has], [benchmark_label(b)] * int((~has).sum()), np.array(values)[~has]]),
                    hovertemplate="<b>%{customdata[0]}</b> on %{customdata[1]}: no split where both this row and the baseline "
                                  "finished<br>%{customdata[2]}<extra></extra>",
                ), row=1, col=k + 1)
    for k, m in enumerate(metrics):
        fig.add_vline(x=0, line=dict(color="#666", width=1.2, dash="dash"), row=1, col=k + 1)
        fig.update_xaxes(title_text=f"Δ {metric_label(m)} = variant − {table.baseline}", zeroline=False, row=1, col=k + 1)
    for v, yv in ypos.items():
        if yv % 2 == 0:
            fig.add_hrect(y0=yv - 0.5, y1=yv + 0.5, fillcolor="#f2f4f7", line_width=0, layer="below", row=1, col="all")
    ticks = [f"<span style='color:{_colour_of(colours, v)}'><b>{v}</b></span>" for v in others]
    fig.update_yaxes(tickvals=[ypos[v] for v in others], ticktext=ticks, range=[-0.6, n - 0.4], showgrid=False, row=1, col=1)
    fig.update_yaxes(showgrid=False)
    left = 40 + 7 * max(len(v) for v in others)
    _style(fig, f"Module contributions: Δ to <b>{table.baseline}</b>, median over paired splits with {pct} bootstrap CI "
                f"(filled: Holm p < 0.05)", max(270, 150 + n * max(46, 15 * nb + 16)))
    fig.update_layout(margin=dict(l=left))
    return fig


# ------------------------------------------------------------------------------ per-split pairs


def paired_splits_plot(table: AblationTable, colours: Mapping[str, str] | None = None, metrics: Sequence[str] | None = None) -> go.Figure:
    """Per split, a line from the baseline's value (left, dark) to the variant's (right).

    Small multiples: one panel per benchmark (rows) and non-baseline variant (columns), each
    with its own y range so that small effects stay visible next to large ones; the panel's
    label gives the median Δ and how many splits went down/up. The black diamonds join the
    medians. A menu switches the metric (SRCC, PLCC). Lines mostly sloping one way: a
    consistent effect; crossing lines: the median moves with one or two lucky splits.
    """
    d = table.deltas
    if d.empty:
        raise NoFigure("no split has both the baseline and another row finished")
    metrics = [m for m in (metrics or ["srcc", "plcc"]) if m in set(d["metric"])] or list(dict.fromkeys(d["metric"]))[:2]
    benches = [b for b in table.benchmarks if b in set(d["benchmark"])]
    others = [v for v in table.variants if v != table.baseline and v in set(d["variant"])]
    colours = dict(colours or variant_colours(table.variants, table.baseline))
    nr, nc = len(benches), len(others)
    titles = [f"<span style='color:{_colour_of(colours, v)}'><b>{v}</b></span>" for v in others] + [""] * (nc * (nr - 1))
    fig = make_subplots(rows=nr, cols=nc, horizontal_spacing=min(0.045, 0.3 / max(1, nc)),
                        vertical_spacing=min(0.09, 0.3 / max(1, nr)), subplot_titles=titles)
    groups = {k: g for k, g in d.groupby(["benchmark", "metric", "variant"], sort=False)}
    visible_of: list[str] = []  # metric of each trace
    notes: list[tuple[str, dict[str, Any]]] = []  # (metric, annotation)
    base = table.baseline
    for r, b in enumerate(benches, start=1):
        for c, v in enumerate(others, start=1):
            k = (r - 1) * nc + c
            col = _colour_of(colours, v)
            for m in metrics:
                g = groups.get((b, m, v))
                if g is None or g.empty:
                    continue
                shown = m == metrics[0]
                n = len(g)
                xs = np.tile([0.0, 1.0, np.nan], n)
                ys = np.column_stack([g["baseline_value"], g["value"], np.full(n, np.nan)]).ravel()
                custom = np.repeat(np.column_stack([g["split"].astype(int).astype(str), [_fmt(x) for x in g["baseline_value"]],
                                                    [_fmt(x) for x in g["value"]], [_fmt(x, 4, True) for x in g["delta"]]]), 3, axis=0)
                fig.add_trace(go.Scatter(
                    x=xs, y=ys, mode="lines+markers", name=v, showlegend=False, visible=shown,
                    line=dict(color=_rgba(col, 0.6), width=1.3), marker=dict(size=5.5, color=np.tile([BASELINE_COLOUR, col, col], n)),
                    customdata=custom,
                    hovertemplate=f"<b>{v}</b> vs {base} on {benchmark_label(b)}<br>split %{{customdata[0]}}: test {metric_label(m)} "
                                  f"{base} %{{customdata[1]}} → {v} %{{customdata[2]}}<br>Δ %{{customdata[3]}}<extra></extra>",
                ), row=r, col=c)
                visible_of.append(m)
                med_b, med_v = float(np.median(g["baseline_value"])), float(np.median(g["value"]))
                fig.add_trace(go.Scatter(
                    x=[0.0, 1.0], y=[med_b, med_v], mode="lines+markers", name="median", showlegend=False, visible=shown,
                    line=dict(color="#111", width=2.6), marker=dict(symbol="diamond", size=9, color=[BASELINE_COLOUR, col],
                                                                    line=dict(width=1, color="#111")),
                    hovertemplate=f"median over {n} paired splits: {base} {med_b:.4f} → {v} {med_v:.4f}<extra></extra>",
                ), row=r, col=c)
                visible_of.append(m)
                delta = float(np.median(g["delta"]))
                down, up = int((g["delta"] < 0).sum()), int((g["delta"] > 0).sum())
                notes.append((m, dict(
                    text=f"Δ {_fmt(delta, 3, True)} · {down}↓ {up}↑", xref=f"x{k if k > 1 else ''} domain",
                    yref=f"y{k if k > 1 else ''} domain", x=0.5, y=1.0, xanchor="center", yanchor="bottom", showarrow=False,
                    font=dict(size=11, color="#9b1c1c" if delta < 0 else "#166534" if delta > 0 else "#555"), visible=shown)))
            fig.update_xaxes(range=[-0.3, 1.3], tickvals=[0, 1], ticktext=["base", "var"], showgrid=False, zeroline=False,
                             tickfont=dict(size=10), row=r, col=c)
            fig.update_yaxes(nticks=4, tickfont=dict(size=10), row=r, col=c)
        fig.update_yaxes(title_text=f"{benchmark_label(b)}<br>test {metric_label(metrics[0])}", row=r, col=1)
    base = len(fig.layout.annotations)
    for _, a in notes:
        fig.add_annotation(**a)
    # Variant names sit above the first row's Δ labels.
    fig.update_annotations(selector=dict(yanchor="bottom", xref="paper"), yshift=16)
    if len(metrics) > 1:
        buttons = []
        for m in metrics:
            lay: dict[str, Any] = {f"annotations[{base + i}].visible": mm == m for i, (mm, _) in enumerate(notes)}
            for r, b in enumerate(benches, start=1):
                k = (r - 1) * nc + 1
                lay[f"yaxis{k if k > 1 else ''}.title.text"] = f"{benchmark_label(b)}<br>test {metric_label(m)}"
            buttons.append(dict(label=f"metric: {metric_label(m)}", method="update", args=[{"visible": [mm == m for mm in visible_of]}, lay]))
        fig.update_layout(updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.0, yanchor="bottom",
                                            showactive=True, active=0, bgcolor="#fff", bordercolor="#bbb", font=dict(size=12))])
    height = 150 + nr * 210
    _style(fig, f"Per-split pairs: each line joins {base} (left) and the variant (right) on one split", height, legend=False, top=120)
    if len(metrics) > 1:
        fig.layout.updatemenus[0].y = 1.0 + 62 / max(1.0, height - 120 - 60)
    fig.update_layout(margin=dict(l=80))
    return fig


# ------------------------------------------------------------------------------------- sweeps


def _dotted(cfg: Mapping[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def sweep_values(exp: Experiment) -> tuple[str, dict[str, Any], str]:
    """(key, variant → swept value, axis title) of an ablation with ``sweep_key``.

    Values come from each variant's resolved config in plan.json, else its overrides in the
    spec; a list value (``model.prior.prompts``) becomes its length (the expert count).
    """
    key = exp.meta.get("sweep_key")
    if not key:
        raise NoFigure("this ablation sets no sweep_key")
    variants = list(exp.meta.get("variants") or [])
    spec_vars = (exp.meta.get("spec") or {}).get("variants") or {}
    values: dict[str, Any] = {}
    by_variant = {}
    for p in exp.plan:
        by_variant.setdefault(p["variant"], p)
    for v in variants:
        val: Any = None
        if v in by_variant:
            try:
                val = _dotted(by_variant[v]["config"], key)
            except KeyError:
                val = None
        if val is None and key in spec_vars.get(v, {}):
            val = spec_vars[v][key]
        if val is not None:
            values[v] = val
    if not values:
        raise NoFigure(f"no variant has a value for the sweep key {key}")
    title = key
    if all(isinstance(x, (list, tuple)) for x in values.values()):
        values = {v: len(x) for v, x in values.items()}
        title = "number of experts (prompts)" if key.endswith("prompts") else f"len({key})"
    return key, values, title


#: Learning curves draw their min–max bands by default up to this many series (a menu toggles them).
BANDS_UP_TO = 4


def _band(x: Sequence[Any], lo: Sequence[float], hi: Sequence[float], colour: str, name: str, group: str,
          visible: bool = True) -> go.Scatter:
    xs = list(x) + list(x)[::-1]
    ys = list(lo) + list(hi)[::-1]
    return go.Scatter(x=xs, y=ys, fill="toself", fillcolor=_rgba(colour, 0.16), line=dict(width=0), mode="lines",
                      hoverinfo="skip", showlegend=False, name=f"{name} min–max", legendgroup=group, visible=visible)


def sweep_plot(exp: Experiment, per_split: pd.DataFrame, metrics: Sequence[str] = ("srcc", "plcc")) -> go.Figure:
    """Test metric vs the swept value, per benchmark: median over splits, min–max band, each split."""
    key, values, xtitle = sweep_values(exp)
    ok = per_split[(per_split["status"] == "ok") & per_split["variant"].isin(list(values))].copy()
    if "fraction" in ok and ok["fraction"].notna().any():
        ok = ok[ok["fraction"].astype(float) == ok["fraction"].astype(float).max()]
    if ok.empty:
        raise NoFigure("no finished trial of the sweep")
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values())
    ok["x"] = ok["variant"].map(values)
    order = sorted(values, key=lambda v: values[v]) if numeric else list(values)
    benches = [b for b in (exp.meta.get("benchmarks") or list(dict.fromkeys(ok["benchmark"]))) if b in set(ok["benchmark"])]
    bcol = benchmark_colours(exp.meta.get("benchmarks") or benches)
    base = exp.meta.get("baseline")
    fig = make_subplots(rows=1, cols=len(metrics), horizontal_spacing=0.08, subplot_titles=[f"test {metric_label(m)}" for m in metrics])
    for c, m in enumerate(metrics, start=1):
        for b in benches:
            g = ok[ok["benchmark"] == b]
            agg = g.groupby("variant")[m].agg(["median", "min", "max", "count"]).reindex(order).dropna(subset=["median"])
            xs = [values[v] for v in agg.index]
            col = bcol.get(b, "#333")
            fig.add_trace(_band(xs, agg["min"], agg["max"], col, benchmark_label(b), b), row=1, col=c)
            fig.add_trace(go.Scatter(
                x=xs, y=agg["median"], mode="lines+markers", name=benchmark_label(b), legendgroup=b, showlegend=c == 1,
                line=dict(color=col, width=2.2), marker=dict(size=8, color=col),
                customdata=np.column_stack([list(agg.index), agg["count"].astype(int), [_fmt(x) for x in agg["min"]], [_fmt(x) for x in agg["max"]]]),
                hovertemplate=f"<b>{benchmark_label(b)}</b> %{{customdata[0]}}<br>{xtitle} = %{{x}}<br>median test {metric_label(m)} %{{y:.4f}} "
                              "over %{customdata[1]} splits<br>range [%{customdata[2]}, %{customdata[3]}]<extra></extra>",
            ), row=1, col=c)
            fig.add_trace(go.Scatter(
                x=g["x"], y=g[m], mode="markers", name=f"{benchmark_label(b)} splits", legendgroup=b, showlegend=False,
                marker=dict(size=5, color=_rgba(col, 0.55)),
                customdata=np.column_stack([g["variant"], g["split"].astype(int)]),
                hovertemplate=f"%{{customdata[0]}}, split %{{customdata[1]}}<br>test {metric_label(m)} %{{y:.4f}}<extra>{benchmark_label(b)}</extra>",
            ), row=1, col=c)
        if base in values and numeric:
            fig.add_vline(x=values[base], line=dict(color="#888", dash="dot", width=1.2), row=1, col=c)
        fig.update_xaxes(title_text=xtitle, row=1, col=c)
        fig.update_yaxes(title_text=f"test {metric_label(m)} (selected epoch)", row=1, col=c)
    if not numeric:
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=[values[v] for v in order])
    note = f" (dotted: the baseline {base})" if base in values and numeric else ""
    _style(fig, f"Sweep of <b>{key}</b>: median over splits, band = min–max across splits{note}", 470)
    return fig


def fraction_plot(exp: Experiment, per_split: pd.DataFrame, colours: Mapping[str, str] | None = None,
                  metrics: Sequence[str] = ("srcc", "plcc")) -> go.Figure:
    """Data efficiency: test metric vs the fraction of the training part, per variant and benchmark."""
    fractions = [float(f) for f in exp.meta.get("fractions") or []]
    if len(fractions) < 2:
        raise NoFigure("the ablation ran one training fraction only")
    ok = per_split[per_split["status"] == "ok"].copy()
    if ok.empty:
        raise NoFigure("no finished trial")
    ok["pct"] = ok["fraction"].astype(float) * 100
    variants = [v for v in exp.meta.get("variants") or list(dict.fromkeys(ok["variant"])) if v in set(ok["variant"])]
    colours = dict(colours or variant_colours(exp.meta.get("variants") or variants, exp.meta.get("baseline")))
    benches = [b for b in exp.meta.get("benchmarks") or list(dict.fromkeys(ok["benchmark"])) if b in set(ok["benchmark"])]
    fig = make_subplots(rows=len(benches), cols=len(metrics), shared_xaxes=True, horizontal_spacing=0.08,
                        vertical_spacing=min(0.12, 0.35 / max(1, len(benches))),
                        subplot_titles=[f"{benchmark_label(b)} · test {metric_label(m)}" for b in benches for m in metrics])
    agg = ok.groupby(["benchmark", "variant", "pct"])[list(metrics)].agg(["median", "min", "max", "count"])
    for r, b in enumerate(benches, start=1):
        for c, m in enumerate(metrics, start=1):
            for v in variants:
                try:
                    a = agg.loc[(b, v)][m].sort_index()
                except KeyError:
                    continue
                col = _colour_of(colours, v)
                xs = list(a.index)
                fig.add_trace(_band(xs, a["min"], a["max"], col, v, v), row=r, col=c)
                fig.add_trace(go.Scatter(
                    x=xs, y=a["median"], mode="lines+markers", name=v, legendgroup=v, showlegend=(r == 1 and c == 1),
                    line=dict(color=col, width=2.2), marker=dict(size=7, color=col),
                    customdata=np.column_stack([a["count"].astype(int), [_fmt(x) for x in a["min"]], [_fmt(x) for x in a["max"]]]),
                    hovertemplate=f"<b>{v}</b> on {benchmark_label(b)}<br>%{{x:g}}% of the training part<br>median test {metric_label(m)} "
                                  "%{y:.4f} over %{customdata[0]} splits<br>range [%{customdata[1]}, %{customdata[2]}]<extra></extra>",
                ), row=r, col=c)
                g = ok[(ok["benchmark"] == b) & (ok["variant"] == v)]
                fig.add_trace(go.Scatter(
                    x=g["pct"], y=g[m], mode="markers", showlegend=False, legendgroup=v, name=f"{v} splits",
                    marker=dict(size=5, color=_rgba(col, 0.5)), customdata=g["split"].astype(int),
                    hovertemplate=f"{v}, split %{{customdata}}: %{{y:.4f}}<extra></extra>",
                ), row=r, col=c)
            fig.update_yaxes(title_text=f"test {metric_label(m)}", row=r, col=c)
            if r == len(benches):
                fig.update_xaxes(title_text="training images used (% of the training part)", row=r, col=c)
    ticks = sorted({f * 100 for f in fractions})
    fig.update_xaxes(tickvals=ticks, ticktext=[f"{t:g}%" for t in ticks])
    _style(fig, "Data efficiency: median over splits vs training fraction (band = min–max across splits)", 140 + 300 * len(benches))
    return fig


# ----------------------------------------------------------------------------- learning curves


def learning_curves(exp: Experiment, colours: Mapping[str, str] | None = None, metric: str = "srcc", run: str | None = None) -> go.Figure:
    """Validation and test ``metric`` per epoch per variant: median over splits, min–max band.

    Only epochs a trial finished (``row_status`` ok) count; the hover gives how many splits
    stand behind each point (fewer when trials failed, diverged or were stopped early).
    """
    df = exp.epochs
    if run is not None:
        df = df[in_run(df["run"], run)]
    if "row_status" not in df:
        raise NoFigure("no trial reported an epoch")
    df = df[df["row_status"] == "ok"]
    parts = [(p, lab) for p, lab in (("val", "validation"), ("test", "test")) if f"{p}_{metric}" in df and df[f"{p}_{metric}"].notna().any()]
    if df.empty or not parts:
        raise NoFigure(f"no trial reported {metric} for an epoch")
    df = df.copy()
    fractions = sorted(df["fraction"].dropna().astype(float).unique()) if "fraction" in df else []
    if len(fractions) > 1:
        df["series"] = df["variant"].astype(str) + " · " + (df["fraction"].astype(float) * 100).map(lambda f: f"{f:g}%")
    else:
        df["series"] = df["variant"].astype(str)
    order_v = list(exp.meta.get("variants") or []) + list(dict.fromkeys(df["variant"].astype(str)))
    order_v = list(dict.fromkeys(order_v))
    series = sorted(df["series"].unique(), key=lambda s: (order_v.index(s.split(" · ")[0]) if s.split(" · ")[0] in order_v else 1e9, s))
    colours = dict(colours or variant_colours(order_v, exp.meta.get("baseline")))
    ser_colour = {}
    for s in series:
        base = s.split(" · ")[0]
        ser_colour[s] = _colour_of(colours, base) if len(fractions) <= 1 else None
    if len(fractions) > 1:
        ser_colour = variant_colours(series)
    benches = [b for b in (exp.meta.get("benchmarks") or []) if b in set(df["benchmark"])] + \
        [b for b in dict.fromkeys(df["benchmark"]) if b not in (exp.meta.get("benchmarks") or [])]
    cols = [f"{p}_{metric}" for p, _ in parts]
    agg = df.groupby(["series", "benchmark", "epoch"])[cols].agg(["median", "min", "max", "count"])
    bands_on = len(series) <= BANDS_UP_TO
    band_idx: list[int] = []
    fig = make_subplots(rows=len(benches), cols=len(parts), shared_xaxes=True, horizontal_spacing=0.07,
                        vertical_spacing=min(0.1, 0.3 / max(1, len(benches))),
                        subplot_titles=[f"{benchmark_label(b)} · {lab} {metric_label(metric)}" for b in benches for _, lab in parts])
    for r, b in enumerate(benches, start=1):
        for c, (p, lab) in enumerate(parts, start=1):
            col = f"{p}_{metric}"
            for s in series:
                try:
                    a = agg.loc[(s, b)][col]
                except KeyError:
                    continue
                a = a.dropna(subset=["median"]).sort_index()
                if a.empty:
                    continue
                colour = ser_colour[s]
                xs = list(a.index.astype(float))
                band_idx.append(len(fig.data))
                fig.add_trace(_band(xs, a["min"], a["max"], colour, s, s, visible=bands_on), row=r, col=c)
                fig.add_trace(go.Scatter(
                    x=xs, y=a["median"], mode="lines+markers", name=s, legendgroup=s, showlegend=(r == 1 and c == 1),
                    line=dict(color=colour, width=2), marker=dict(size=5, color=colour),
                    customdata=np.column_stack([a["count"].astype(int), [_fmt(x) for x in a["min"]], [_fmt(x) for x in a["max"]]]),
                    hovertemplate=f"<b>{s}</b> · {benchmark_label(b)}<br>epoch %{{x:g}}: median {lab} {metric_label(metric)} %{{y:.4f}}"
                                  "<br>over %{customdata[0]} splits, range [%{customdata[1]}, %{customdata[2]}]<extra></extra>",
                ), row=r, col=c)
            fig.update_yaxes(title_text=f"{lab} {metric_label(metric)}", row=r, col=c)
            if r == len(benches):
                fig.update_xaxes(title_text="epoch", row=r, col=c)
    fig.update_xaxes(dtick=1 if df["epoch"].max() <= 12 else None)
    if band_idx:  # many overlapping bands hide the lines: a menu shows them on demand
        fig.update_layout(updatemenus=[dict(
            type="buttons", direction="right", x=1.0, xanchor="right", y=1.0 + 62 / max(1.0, 140 + 270 * len(benches) - 178),
            yanchor="bottom", showactive=True, active=0 if bands_on else 1, bgcolor="#fff", bordercolor="#bbb", font=dict(size=12),
            buttons=[dict(label="min–max bands on", method="restyle", args=[{"visible": True}, band_idx]),
                     dict(label="off", method="restyle", args=[{"visible": False}, band_idx])])])
    what = "confirm-stage candidates" if run == "confirm" else "variants"
    _style(fig, f"Learning curves of the {what}: median over splits per epoch (band = min–max across splits)",
           140 + 270 * len(benches))
    return fig


# ------------------------------------------------------------------------------ explain files


def explain_files(exp: Experiment, filename: str, run: str | None = None) -> pd.DataFrame:
    """One row per trial holding ``explain/<filename>`` in its latest Ray checkpoint folder.

    Columns ``trial, run, variant, benchmark, split, status, file``. Trials without a folder
    (missing) or without the file (variants that write none, unfinished trials) are absent.
    """
    t = exp.trials()
    if run is not None:
        t = t[in_run(t["run"], run)]
    if "path" not in t:
        return pd.DataFrame(columns=["trial", "run", "variant", "benchmark", "split", "status", "file"])
    rows = []
    for trial, r, variant, bench, split, status, path in zip(t["trial"], t["run"], t["variant"], t["benchmark"], t["split"], t["status"], t["path"]):
        if not isinstance(path, str):
            continue
        found = explain_file(path, filename)
        if found is not None:
            rows.append({"trial": trial, "run": r, "variant": variant, "benchmark": bench, "split": split, "status": status, "file": found})
    return pd.DataFrame(rows, columns=["trial", "run", "variant", "benchmark", "split", "status", "file"])


def expert_weights_plot(exp: Experiment, colours: Mapping[str, str] | None = None, run: str | None = None) -> go.Figure:
    """Distribution of the per-image DDWM weight of each expert over the test images.

    Pooled over every finished trial (split) of a variant on a benchmark; one box per expert
    and variant (median, quartiles, whiskers at the most extreme weight within 1.5 IQR, mean as
    a dashed line), one panel per benchmark. Box statistics are computed here, so the page stays
    small however many test images there are.
    """
    files = explain_files(exp, "expert_weights.csv", run)
    files = files[files["status"].isin(["ok", "stopped"])]
    if files.empty:
        raise NoFigure("no finished trial wrote explain/expert_weights.csv (only `full` trials do, at their last epoch)")
    frames, experts = [], []
    for trial, variant, bench, f in zip(files["trial"], files["variant"], files["benchmark"], files["file"]):
        w = pd.read_csv(f)
        prompts = [c for c in w.columns if c not in ("image_id", "mos", "prediction")]
        experts += [p for p in prompts if p not in experts]
        w = w[prompts].astype(float)
        w["variant"], w["benchmark"], w["trial"] = variant, bench, trial
        frames.append(w)
    wide = pd.concat(frames, ignore_index=True)  # one column per expert; NaN where a trial lacks that expert
    keys = ["benchmark", "variant"]
    g = wide.groupby(keys, sort=False)
    q1, q3 = g[experts].transform("quantile", 0.25), g[experts].transform("quantile", 0.75)
    iqr = q3 - q1
    vals = wide[experts]
    inside = vals.where((vals >= q1 - 1.5 * iqr) & (vals <= q3 + 1.5 * iqr))
    inside[keys] = wide[keys]
    gi = inside.groupby(keys, sort=False)

    def long(frame: pd.DataFrame, name: str) -> pd.Series:
        return frame[experts].stack().rename(name)

    quart = g[experts].quantile([0.25, 0.5, 0.75])
    st = pd.concat([
        long(quart.xs(0.25, level=-1), "q1"), long(quart.xs(0.5, level=-1), "median"), long(quart.xs(0.75, level=-1), "q3"),
        long(g[experts].mean(), "mean"), long(g[experts].count(), "n"),
        long(gi[experts].min(), "lowerfence"), long(gi[experts].max(), "upperfence"),
    ], axis=1)
    st.index = st.index.set_names(["benchmark", "variant", "expert"])
    st = st.reset_index()
    st["trials"] = st.set_index(keys).index.map(g["trial"].nunique())
    variants = [v for v in list(exp.meta.get("variants") or []) + list(dict.fromkeys(st["variant"])) if v in set(st["variant"])]
    variants = list(dict.fromkeys(variants))
    colours = dict(colours or variant_colours(exp.meta.get("variants") or variants, exp.meta.get("baseline")))
    benches = [b for b in list(exp.meta.get("benchmarks") or []) + list(dict.fromkeys(st["benchmark"])) if b in set(st["benchmark"])]
    benches = list(dict.fromkeys(benches))
    titles = []
    for b in benches:
        s = st[st["benchmark"] == b]
        titles.append(f"{benchmark_label(b)}: {int(s['trials'].max())} trial(s) per variant, "
                      f"{int(s['n'].max() // max(1, s['trials'].max()))} test images each")
    fig = make_subplots(rows=len(benches), cols=1, shared_xaxes=True, vertical_spacing=min(0.12, 0.3 / max(1, len(benches))),
                        subplot_titles=titles)
    for r, b in enumerate(benches, start=1):
        for v in variants:
            s = st[(st["benchmark"] == b) & (st["variant"] == v)].set_index("expert").reindex(experts).dropna(subset=["median"])
            if s.empty:
                continue
            col = _colour_of(colours, v)
            fig.add_trace(go.Box(
                x=list(s.index), q1=s["q1"], median=s["median"], q3=s["q3"], lowerfence=s["lowerfence"], upperfence=s["upperfence"],
                mean=s["mean"], name=v, legendgroup=v, showlegend=r == 1, marker_color=col, line=dict(color=col, width=1.5),
                offsetgroup=v, alignmentgroup="experts",  # one slot per variant, the same in every panel
                fillcolor=_rgba(col, 0.25), boxpoints=False, hoverinfo="x+y+name",
            ), row=r, col=1)
        fig.update_yaxes(title_text="DDWM weight", row=r, col=1)
    fig.update_xaxes(title_text="expert (degradation prompt)", row=len(benches), col=1)
    fig.update_layout(boxmode="group", boxgap=0.25, boxgroupgap=0.1)
    _style(fig, "Expert weights: DDWM weight of each expert over the test images (pooled over splits)", 140 + 300 * len(benches),
           legend=len(variants) > 1)
    return fig


def _sig(a: np.ndarray, digits: int = 4) -> np.ndarray:
    """``a`` rounded to ``digits`` significant digits of its largest magnitude (smaller pages)."""
    a = np.asarray(a, dtype=float)
    top = float(np.nanmax(np.abs(a))) if a.size and np.isfinite(a).any() else 0.0
    if top == 0.0:
        return a
    return np.round(a, max(0, digits - 1 - int(math.floor(math.log10(top)))))


def _image_uri(crop: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(crop, dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def attention_maps(exp: Experiment, trial: str | None = None, expert: str | None = None, max_images: int = 4,
                   colours: Mapping[str, str] | None = None) -> go.Figure:
    """The paper's Fig. 3 for a few test images of one trial: crop, prior map, image map, refined map.

    Heatmaps over the patch grid (row 0 of each attention over the patch tokens). The prior and
    refined maps show one expert: ``expert`` if given, else per image the expert with the largest
    DDWM weight (from the trial's expert_weights.csv; the first prompt when the trial has no
    DDWM); a menu switches the expert. Trial: ``trial`` if given, else a finished trial of the
    baseline row (else of any row) on the first benchmark, lowest split.
    """
    files = explain_files(exp, "attention.npz")
    if files.empty:
        raise NoFigure("no trial wrote explain/attention.npz (dsdm and full trials do, at their last epoch)")
    if trial is not None:
        pick = files[files["trial"] == trial]
        if pick.empty:
            raise NoFigure(f"trial {trial} has no explain/attention.npz")
        row = pick.iloc[0]
    else:
        benches = list(exp.meta.get("benchmarks") or [])
        files = files.assign(
            _ok=(files["status"] != "ok").astype(int),
            _base=(files["variant"] != exp.meta.get("baseline")).astype(int),
            _b=files["benchmark"].map(lambda b: benches.index(b) if b in benches else len(benches)),
            _s=pd.to_numeric(files["split"], errors="coerce").fillna(1e9),
        ).sort_values(["_ok", "_base", "_b", "_s", "trial"])
        row = files.iloc[0]
    with np.load(row["file"], allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    prompts = [str(p) for p in data["prompts"]]
    n = min(int(max_images), len(data["crops"]))
    if n == 0:
        raise NoFigure(f"{row['file']} holds no images")
    prior, refined, image = data["prior"][:n], data["refined"][:n], data["image"][:n]
    ids = [str(i) for i in data["image_ids"][:n]]
    mos = [float(m) for m in data["mos"][:n]]
    weights_file = Path(row["file"]).with_name("expert_weights.csv")
    chosen: list[int]
    how: str
    if expert is not None:
        if expert not in prompts:
            raise NoFigure(f"expert {expert!r} is not one of this trial's prompts {prompts}")
        chosen, how = [prompts.index(expert)] * n, f"selected expert {expert}"
    elif weights_file.is_file():
        w = pd.read_csv(weights_file).set_index("image_id")
        chosen = []
        for i in ids:
            if i in w.index:
                vals = w.loc[i, [p for p in prompts if p in w.columns]].astype(float).to_numpy().ravel()
                chosen.append(int(np.argmax(vals)))
            else:
                chosen.append(0)
        how = "expert with the largest DDWM weight per image"
    else:
        chosen, how = [0] * n, f"first expert ({prompts[0]}; this trial has no DDWM weights)"
    per_expert_image = image.ndim == 4

    def img_map(i: int, e: int) -> np.ndarray:
        return image[i, e] if per_expert_image else image[i]

    titles = []
    for i in range(n):
        e = chosen[i]
        titles += [f"{ids[i]} · MOS {mos[i]:.3g}", f"prior: {prompts[e]}", "image encoder" + (f": {prompts[e]}" if per_expert_image else ""),
                   f"refined: {prompts[e]}"]
    fig = make_subplots(rows=n, cols=4, horizontal_spacing=0.025, vertical_spacing=0.06 if n > 1 else 0.1, subplot_titles=titles)
    grid_h, grid_w = prior.shape[-2:]
    prior_idx, refined_idx, image_idx = [], [], []
    for i in range(n):
        e = chosen[i]
        r = i + 1
        fig.add_trace(go.Image(source=_image_uri(data["crops"][i]), hovertemplate=f"{ids[i]}<br>MOS {mos[i]:.4g}<br>"
                               "pixel (%{x}, %{y})<extra></extra>", name=ids[i]), row=r, col=1)
        sx = data["crops"].shape[2] / grid_w
        sy = data["crops"].shape[1] / grid_h
        common = dict(x0=sx / 2 - 0.5, dx=sx, y0=sy / 2 - 0.5, dy=sy)  # patch centres in pixel units
        for c, (arr, axis, label, idx) in enumerate(((prior[i, e], "coloraxis", "prior", prior_idx),
                                                     (img_map(i, e), "coloraxis2", "image encoder", image_idx),
                                                     (refined[i, e], "coloraxis3", "refined", refined_idx)), start=2):
            idx.append(len(fig.data))
            fig.add_trace(go.Heatmap(z=_sig(arr), coloraxis=axis, name=label, **common,
                                     hovertemplate=f"{ids[i]} · {label}<br>patch centre (%{{x:.0f}}, %{{y:.0f}}) px"
                                                   "<br>attention %{z:.5f}<extra></extra>"), row=r, col=c)
    h = max(data["crops"].shape[1], 1)
    wpx = max(data["crops"].shape[2], 1)
    for i in range(n):
        for c in range(1, 5):
            k = i * 4 + c
            xa, ya = ("xaxis" if k == 1 else f"xaxis{k}"), ("yaxis" if k == 1 else f"yaxis{k}")
            fig.layout[xa].update(showticklabels=False, showgrid=False, zeroline=False, range=[-0.5, wpx - 0.5], constrain="domain")
            fig.layout[ya].update(showticklabels=False, showgrid=False, zeroline=False, range=[h - 0.5, -0.5],
                                  scaleanchor="x" if k == 1 else f"x{k}", constrain="domain")
    # Colour bars under each map column.
    bars = {}
    for c, (axis, label) in enumerate((("coloraxis", "prior attention"), ("coloraxis2", "image-encoder attention"),
                                       ("coloraxis3", "refined = prior − α·image")), start=2):
        dom = fig.layout["xaxis" if c == 1 else f"xaxis{c}"].domain
        bars[axis] = dict(colorbar=dict(orientation="h", x=(dom[0] + dom[1]) / 2, xanchor="center", y=-0.02, yanchor="top",
                                        len=(dom[1] - dom[0]) * 0.92, thickness=10, title=dict(text=label, side="top"),
                                        tickformat=".2~g", nticks=4, ticks="outside"))
    fig.update_layout(coloraxis=dict(colorscale="Viridis", **bars["coloraxis"]),
                      coloraxis2=dict(colorscale="Viridis", **bars["coloraxis2"]),
                      coloraxis3=dict(colorscale="RdBu", reversescale=True, cmid=0.0, **bars["coloraxis3"]))
    # A menu to show another expert in the prior / refined (and per-expert image) maps.
    buttons = []

    def title_updates(sel: list[int]) -> dict[str, str]:
        out = {}
        for i in range(n):
            out[f"annotations[{i * 4 + 1}].text"] = f"prior: {prompts[sel[i]]}"
            if per_expert_image:
                out[f"annotations[{i * 4 + 2}].text"] = f"image encoder: {prompts[sel[i]]}"
            out[f"annotations[{i * 4 + 3}].text"] = f"refined: {prompts[sel[i]]}"
        return out

    def z_of(sel: list[int]) -> tuple[list[Any], list[int]]:
        # numpy arrays (serialised as lists): cheap for plotly to copy while it validates the layout
        zs = [_sig(prior[i, sel[i]]) for i in range(n)]
        idx = list(prior_idx)
        zs += [_sig(refined[i, sel[i]]) for i in range(n)]
        idx += refined_idx
        if per_expert_image:
            zs += [_sig(image[i, sel[i]]) for i in range(n)]
            idx += image_idx
        return zs, idx

    if len(prompts) > 1:
        by_weight = "DDWM weight" in how
        options = ([("expert: largest DDWM weight", chosen)] if by_weight else []) + [(f"expert: {p}", [j] * n) for j, p in enumerate(prompts)]
        active = 0 if by_weight else chosen[0]
        for label, sel in options:
            zs, idx = z_of(sel)
            buttons.append(dict(label=label, method="update", args=[{"z": zs}, title_updates(sel), idx]))
        fig.update_layout(updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.0, yanchor="bottom",
                                            showactive=True, active=active, bgcolor="#fff", bordercolor="#bbb", font=dict(size=12),
                                            pad=dict(b=0))])
    trial_txt = f"{row['variant']} on {benchmark_label(row['benchmark'])}, split {row['split']} (trial {row['trial']})"
    _style(fig, f"Attention maps (Fig. 3): {trial_txt}<br><span style='font-size:12px;color:#555'>"
                f"prior and refined maps: {how}; grid {grid_h}×{grid_w} patches over the {h}×{wpx} crop</span>",
           150 + 215 * n, legend=False, top=118, bottom=90)
    fig.update_layout(margin=dict(l=20, r=20))
    if buttons:  # the expert menu sits in the title band, right-aligned, above the subplot titles
        fig.layout.updatemenus[0].y = 1.0 + 34 / max(1.0, 150 + 215 * n - 118 - 90)
    return fig


# ------------------------------------------------------------------------------------- search


def load_study(exp: Experiment):
    """The stored Optuna study of a ``tune`` experiment, opened read-only (SQLite ``mode=ro``; a
    journal is only read), without creating one.

    The report's only opener of a study. Tries ``meta["optuna_storage"]`` (an SQLAlchemy URL,
    ``sqlite:///...`` or ``journal:<file>``), then ``optuna.db`` in the experiment folder, for
    the study ``meta["study_name"]`` (else ``meta["spec"]["name"]``). Raises :class:`NoFigure`
    naming every storage tried and why it failed.
    """
    import optuna  # heavy (SQLAlchemy, alembic): imported only when a tune report needs the study

    meta = exp.meta
    name = meta.get("study_name") or (meta.get("spec") or {}).get("name")
    url = meta.get("optuna_storage")
    candidates: list[str] = []
    if url:
        candidates.append(url)
    local = exp.path / "optuna.db"
    if local.is_file():
        candidates.append(f"sqlite:///{local.resolve()}")
    if not name or not candidates:
        raise NoFigure("the experiment records no Optuna study (the search did not get to start)")
    reasons = []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for u in dict.fromkeys(candidates):
        try:
            for prefix in ("sqlite:///", "journal:"):
                if u.startswith(prefix) and not Path(u[len(prefix):]).is_file():
                    raise FileNotFoundError(f"{u[len(prefix):]} does not exist")
            # Read-only: the report never writes to, nor locks, a study a search may be writing.
            storage = open_study_storage(u, read_only=True)
            return optuna.load_study(study_name=name, storage=storage)
        except Exception as exc:  # an unreachable database, a renamed study: say so in the report
            reasons.append(f"{u}: {type(exc).__name__}: {exc}")
    raise NoFigure(f"cannot open the Optuna study {name!r}: " + "; ".join(reasons))


def _completed(study) -> list:
    import optuna  # heavy: only for tune reports (see load_study)

    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def optimization_history(study, objective: str = "objective") -> go.Figure:
    """Optuna's optimisation history: each trial's objective and the best so far."""
    import optuna.visualization as ov  # heavy: only for tune reports (see load_study)

    if not _completed(study):
        raise NoFigure("no search trial completed")
    fig = ov.plot_optimization_history(study, target_name=objective)
    fig.update_xaxes(title_text="search trial (Optuna number)")
    fig.update_yaxes(title_text=f"{objective} (validation, last reported epoch)")
    return _style(fig, f"Optimisation history: {objective} per search trial and best so far", 430)


#: PED-ANOVA is asked for the top quantile holding at least this many trials (Optuna's advice).
PED_ANOVA_MIN_TOP = 5
#: and needs at least this many completed trials to say anything.
PED_ANOVA_MIN_TRIALS = 10


def param_importances(study, objective: str = "objective") -> go.Figure:
    """PED-ANOVA importances (Optuna) of each searched parameter for reaching the top trials.

    The top quantile is 10% or enough to hold 5 trials, at most half; with fewer than 10
    completed trials importances are not estimated (NoFigure says so).
    """
    import optuna.visualization as ov  # heavy: only for tune reports (see load_study)
    from optuna.importance import PedAnovaImportanceEvaluator

    done = _completed(study)
    if len(done) < PED_ANOVA_MIN_TRIALS:
        raise NoFigure(f"PED-ANOVA needs at least {PED_ANOVA_MIN_TRIALS} completed search trials to rank parameters; "
                       f"this study has {len(done)}")
    q = min(0.5, max(0.1, PED_ANOVA_MIN_TOP / len(done)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fig = ov.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator(target_quantile=q), target_name=objective)
        except Exception as exc:  # degenerate studies (a single distinct value everywhere...)
            raise NoFigure(f"PED-ANOVA could not rank the parameters: {type(exc).__name__}: {exc}") from None
    noted = [str(w.message) for w in caught if "importance" in str(w.message).lower() or "quantile" in str(w.message).lower()]
    if noted:
        raise NoFigure("PED-ANOVA could not rank the parameters: " + noted[0])
    fig.update_xaxes(title_text=f"PED-ANOVA importance for reaching the top {100 * q:.0f}% of {objective}")
    fig.update_yaxes(title_text="parameter")
    n_params = len(fig.data[0].y) if fig.data else 1
    return _style(fig, f"Parameter importances (PED-ANOVA, top {100 * q:.0f}% of {len(done)} completed trials)",
                  190 + 34 * n_params, legend=False)


def parallel_coordinates(study, objective: str = "objective") -> go.Figure:
    """Optuna's parallel coordinates of the completed trials, coloured by the objective."""
    import optuna.visualization as ov  # heavy: only for tune reports (see load_study)

    if not _completed(study):
        raise NoFigure("no search trial completed")
    fig = ov.plot_parallel_coordinate(study, target_name=objective)
    return _style(fig, f"Parallel coordinates: searched values of each completed trial, coloured by {objective}", 470, legend=False, top=110)


def slices(study, objective: str = "objective") -> go.Figure:
    """Optuna's slice plot: the objective against each parameter."""
    import optuna.visualization as ov  # heavy: only for tune reports (see load_study)

    if not _completed(study):
        raise NoFigure("no search trial completed")
    fig = ov.plot_slice(study, target_name=objective)
    fig.update_yaxes(title_text=objective, col=1)
    return _style(fig, f"Slices: {objective} against each searched parameter (colour: trial number)", 430, legend=False)


def search_curves(exp: Experiment, colours: Mapping[str, str] | None = None) -> go.Figure:
    """The search objective per epoch of every search trial; the confirmed candidates highlighted."""
    objective = exp.meta.get("objective") or "val_srcc"
    df = exp.epochs
    df = df[in_run(df["run"], "search")]
    if "row_status" not in df or objective not in df:
        raise NoFigure("no search trial reported an epoch")
    df = df[df["row_status"] == "ok"].sort_values(["trial", "epoch"])
    if df.empty:
        raise NoFigure("no search trial reported an epoch")
    cands = exp.meta.get("confirm_candidates") or {}
    by_tid = {info.get("search_trial"): c for c, info in cands.items()}
    colours = dict(colours or variant_colours(list(cands)))
    fig = go.Figure()
    xs, ys, cd = [], [], []
    for trial, g in df.groupby("trial", sort=False):
        xs += list(g["epoch"].astype(float)) + [None]
        ys += list(g[objective].astype(float)) + [None]
        status = g["status"].iloc[0]
        cd += [[trial, status]] * len(g) + [[trial, status]]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name="search trials", line=dict(color="rgba(120,120,120,0.45)", width=1.2),
                             marker=dict(size=4, color="rgba(120,120,120,0.6)"), customdata=cd,
                             hovertemplate="%{customdata[0]} (%{customdata[1]})<br>epoch %{x}: " + objective + " %{y:.4f}<extra></extra>"))
    picked = []
    for trial, g in df.groupby("trial", sort=False):
        tid = g["trial_id"].iloc[0] if "trial_id" in g else None
        if by_tid.get(tid) is not None:
            picked.append((by_tid[tid], trial, g))
    for cand, trial, g in sorted(picked, key=lambda x: x[0]):
        col = _colour_of(colours, cand)
        fig.add_trace(go.Scatter(x=g["epoch"], y=g[objective], mode="lines+markers", name=f"{cand} ({trial})",
                                 line=dict(color=col, width=2.5), marker=dict(size=6, color=col),
                                 hovertemplate=f"<b>{cand}</b> = {trial}<br>epoch %{{x}}: {objective} %{{y:.4f}}<extra></extra>"))
    fig.update_xaxes(title_text="epoch", dtick=1 if df["epoch"].max() <= 12 else None)
    fig.update_yaxes(title_text=f"{objective} (validation)")
    trials = exp.trials()
    n_stopped = int((trials.loc[in_run(trials["run"], "search"), "status"] == "stopped").sum())
    return _style(fig, f"Search trials: {objective} per epoch ({n_stopped} stopped early by the scheduler); confirmed candidates in colour", 440)


def confirm_table(exp: Experiment) -> pd.DataFrame:
    """The confirm stage's table (``confirm.csv``: per candidate, search objective and test medians)."""
    f = exp.path / "confirm.csv"
    if not f.is_file():
        raise NoFigure("the experiment has no confirm.csv (the confirm stage did not finish)")
    df = pd.read_csv(f)
    if df.empty:
        raise NoFigure("confirm.csv is empty")
    if "params" in df:
        df["params"] = df["params"].map(_params_text)
    return df


def _params_text(text: Any) -> str:
    """``{"train.lr": 0.00013, "model.ddwm.groups": "[\"dis\"]"}`` -> ``train.lr = 0.00013; model.ddwm.groups = [dis]``."""
    try:
        params = json.loads(text)
    except (TypeError, ValueError):
        return str(text)
    if not isinstance(params, dict):
        return str(text)
    parts = []
    for k, v in params.items():
        if isinstance(v, str):  # choices are stored as JSON text for Optuna
            try:
                v = json.loads(v)
            except ValueError:
                pass
        if isinstance(v, float):
            shown = f"{v:.4g}"
        elif isinstance(v, list):
            shown = "[" + ", ".join(str(x) for x in v) + "]"
        else:
            shown = str(v)
        parts.append(f"{k} = {shown}")
    return "; ".join(parts)
