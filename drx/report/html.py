"""The HTML report of an experiment: one self-contained ``report.html`` plus figure fragments.

``report.html`` opens offline: plotly.js is inlined once in the head and every figure is a
``<div>`` drawn by it. Each figure is also written alone to ``figures/<name>.html`` (an HTML
fragment without plotly.js, to embed elsewhere). Sections: Summary, Tables (ablate), Figures,
Hyperparameter search (tune), Provenance. A figure whose data the experiment lacks is replaced
by one sentence saying why; a figure that fails to draw shows the error instead of hiding it.
"""

from __future__ import annotations

import html
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.offline
import yaml

from drx.data.benchmarks import benchmark_label
from drx.experiment import Experiment, dashboard_command, study_account
from drx.report import figures as F
from drx.report.protocol import protocol_note
from drx.report.render import static_text
from drx.report.tables import AblationTable, finite, fixed, render_table

__all__ = ["write_report", "PLOTLY_CONFIG", "STATUS_ORDER"]

PLOTLY_CONFIG = {
    "responsive": True,
    "displaylogo": False,
    "modeBarButtonsToRemove": ["lasso2d", "select2d"],
    "toImageButtonOptions": {"format": "png", "scale": 2},
}
STATUS_ORDER = ["ok", "stopped", "unfinished", "no_selection", "diverged", "failed", "missing"]
_MAX_PROBLEM_ROWS = 40
esc = html.escape


@dataclass
class _Item:
    """One figure (or the note replacing it) inside a section."""

    name: str
    heading: str
    body: str
    drawn: bool


@dataclass
class _Section:
    id: str
    title: str
    intro: str = ""
    blocks: list[str] = field(default_factory=list)
    items: list[_Item] = field(default_factory=list)


class _Figures:
    """Builds figures, writes their fragments, and remembers what was drawn."""

    def __init__(self, out: Path):
        self.dir = out / "figures"
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.glob("*.html"):
            old.unlink()  # fragments of an earlier report of this folder
        self.names: list[str] = []

    def item(self, name: str, heading: str, caption: str, build: Callable[[], go.Figure]) -> _Item:
        try:
            fig = build()
        except F.NoFigure as why:
            return _Item(name, heading, f'<p class="skip"><b>{esc(heading)}</b>: not shown: {esc(str(why))}.</p>', False)
        except Exception as exc:  # a figure that cannot be drawn must not take the report down, nor vanish
            warnings.warn(f"report figure {name} failed: {type(exc).__name__}: {exc}", stacklevel=2)
            return _Item(name, heading, f'<p class="error"><b>{esc(heading)}</b>: could not be drawn '
                                        f"({esc(type(exc).__name__)}: {esc(str(exc))}).</p>", False)
        config = dict(PLOTLY_CONFIG, toImageButtonOptions={**PLOTLY_CONFIG["toImageButtonOptions"], "filename": name})
        frag = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{name}", config=config, default_width="100%")
        (self.dir / f"{name}.html").write_text(frag, encoding="utf-8")
        self.names.append(name)
        body = (f'<figure class="fig" id="figure-{esc(name)}" data-figure="{esc(name)}">{frag}'
                f'<figcaption>{caption}</figcaption></figure>')
        return _Item(name, heading, body, True)


# ---------------------------------------------------------------------------------- formatting


def _num(x: Any, digits: int = 3, signed: bool = False) -> str:
    return fixed(x, digits, signed, missing="—").replace("-", "−")


def _duration(seconds: Any) -> str:
    s = finite(seconds)
    if s is None:
        return "—"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _kv_table(rows: Iterable[tuple[str, Any]], cls: str = "kv") -> str:
    body = "".join(f"<tr><th>{esc(str(k))}</th><td>{v if isinstance(v, _Raw) else esc(_text(v))}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


class _Raw(str):
    """Already-escaped HTML for :func:`_kv_table`."""


def _text(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_text(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    return str(v)


def _frame_table(df: pd.DataFrame, cls: str = "data", floats: int = 4) -> str:
    head = "".join(f"<th>{esc(str(c))}</th>" for c in df.columns)
    rows = []
    for rec in df.itertuples(index=False):
        cells = []
        for v in rec:
            if isinstance(v, (float, np.floating)):
                txt = _num(v, floats)
                cells.append(f'<td class="num">{esc(txt)}</td>')
            else:
                cells.append(f"<td>{esc(_text(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _dot(colour: str) -> str:
    return f'<span class="dot" style="background:{esc(colour)}"></span>'


# ------------------------------------------------------------------------------------- tables


HOW_TO_READ = """
<div class="howto"><b>How to read these tables.</b>
<ul>
<li><b>Values</b>: each cell is the median over the splits of the test metric at each trial's selected epoch
(the protocol under the table says which epoch). <b>Bold</b>: the best value of its column.</li>
<li><b>Δ to the baseline</b>: the median over the splits both rows finished of (row − baseline row), with its
{pct} percentile-bootstrap interval in brackets. A gain that is real shows an interval that excludes 0.</li>
<li><b>p</b>: exact two-sided Wilcoxon signed-rank test on those paired per-split differences, Holm-corrected
within each column (one benchmark × one metric). Green/red: p &lt; 0.05 with a gain/loss. With fewer than 6
paired splits no p can reach 0.05.</li>
<li><b>n = a/b</b>: the cell rests on a of the b planned splits; the rest are listed (failed: the trial raised and
its retries ran out; diverged: non-finite loss; no_selection: no epoch had a defined selection metric (NaN at
every epoch: constant predictions or MOS), so no epoch was selected; missing: never started; unfinished: still
running or interrupted). <b>—</b>: no usable split. Failed trials are never dropped silently.</li>
</ul></div>
"""


def table_html(table: AblationTable, colours: dict[str, str]) -> str:
    """An AblationTable as two HTML tables (values; Δ to the baseline) and its notes.

    ``colours`` maps a variant to the CSS colour of its dot (``#888`` for one it lacks); the
    markup comes from ``templates/table.html.j2``.
    """
    return render_table(table, "html", colours=colours).rstrip("\n")


# ------------------------------------------------------------------------------------ summary


def search_account(exp: Experiment, study: Any | None) -> str:
    """One sentence: how the search's trials ended, from the study (complete, lost to a killed
    driver and continued, failed) and the trial folders (retried by Ray after an error)."""
    df = exp.epochs
    search = df[df["run"].astype(str).str.startswith("search")] if len(df) else df
    per_trial = search.groupby("trial").agg(failures=("num_failures", "max"), status=("status", "last")) if len(search) and "num_failures" in search else None
    retried = int((per_trial["failures"] > 0).sum()) if per_trial is not None else 0
    unfinished = int((per_trial["status"] == "unfinished").sum()) if per_trial is not None else 0
    if study is None:
        return f"Search trials: {retried} retried by Ray after an error, {unfinished} unfinished (the Optuna study could not be read)."
    a = study_account(study)
    text = (f"Search trials: {a['complete']} complete in the Optuna study, {a['lost']} lost to a killed driver "
            f"({a['continued']} continued from their last checkpoint as new study trials), {retried} retried by Ray after an error, "
            f"{a['failed']} failed")
    if a["pruned"]:
        text += f", {a['pruned']} pruned"
    if a["recovered"]:
        text += f", {a['recovered']} recovered from their trial folders"
    if a["running"] or unfinished:
        text += f"; {a['running']} still running in the study, {unfinished} trial folders unfinished"
    return text + "."




def _status_badges(counts: dict[str, int]) -> str:
    order = [s for s in STATUS_ORDER if s in counts] + [s for s in counts if s not in STATUS_ORDER]
    return " ".join(f'<span class="badge st-{esc(s)}">{counts[s]} {esc(s)}</span>' for s in order)


def _summary(exp: Experiment, trials: pd.DataFrame, selection: str) -> str:
    meta = exp.meta
    counts = {k: int(v) for k, v in trials["status"].value_counts().items()}
    total = int(sum(counts.values()))
    runs = meta.get("runs") or []
    wall = next((r.get("wall_s") for r in runs if r.get("run") == "total"), None)
    if wall is None and runs:
        wall = sum(float(r.get("wall_s") or r.get("fit_s") or 0) for r in runs)
    compute = None
    if "time_total_s" in trials:
        compute = float(pd.to_numeric(trials["time_total_s"], errors="coerce").fillna(0).sum())
    facts: list[tuple[str, Any]] = [("kind", meta.get("kind")), ("created", meta.get("created"))]
    if meta.get("kind") == "ablate":
        facts += [
            ("baseline row", meta.get("baseline")),
            ("variants", f"{len(meta.get('variants') or [])}: " + ", ".join(meta.get("variants") or [])),
            ("benchmarks", ", ".join(benchmark_label(b) for b in meta.get("benchmarks") or [])),
            ("splits", _text(meta.get("splits"))),
        ]
        if meta.get("fractions") and len(meta["fractions"]) > 1:
            facts.append(("training fractions", ", ".join(f"{100 * float(f):g}%" for f in meta["fractions"])))
        if meta.get("sweep_key"):
            facts.append(("swept key", meta["sweep_key"]))
    else:
        spec = meta.get("spec") or {}
        bench = spec.get("benchmark")
        facts += [
            ("objective", f"{meta.get('objective')} (maximised; validation part of split {spec.get('split', 0)})"),
            ("benchmark", benchmark_label(bench.get("name") if isinstance(bench, dict) else str(bench))),
            ("searched keys", ", ".join(spec.get("space") or {})),
            ("budget", f"{(spec.get('budget') or {}).get('num_samples')} samples, scheduler {(spec.get('scheduler') or {}).get('type')}"),
        ]
    planned = trials["epoch"].notna().sum() if "epoch" in trials else 0
    facts += [
        ("trials", _Raw(f"{total} &nbsp; " + _status_badges(counts))),
        ("epochs reported", f"{len(exp.epochs[exp.epochs['epoch'].notna()]) if 'epoch' in exp.epochs else 0} (by {planned} trials)"),
        ("epoch selection", protocol_note(exp, selection)),
        ("wall time", _duration(wall) + (f" (trial time summed: {_duration(compute)})" if compute else "")),
    ]
    if meta.get("synthetic"):
        facts.append(("synthetic", "yes: written by drx.testing.synthetic for tests and benchmarks, not a training run"))
    out = [_kv_table(facts, "kv summary")]
    bad = trials[trials["status"] != "ok"]
    if meta.get("kind") == "tune":
        bad = bad[bad["status"] != "stopped"]
    if len(bad):
        shown = bad.head(_MAX_PROBLEM_ROWS)
        cols = [c for c in ("run", "trial", "variant", "benchmark", "split", "status", "epoch", "reason") if c in shown]
        frame = shown[cols].rename(columns={"epoch": "last epoch"}).copy()
        if "split" in frame:
            frame["split"] = frame["split"].map(lambda s: "" if pd.isna(s) else str(int(s)))
        if "last epoch" in frame:
            frame["last epoch"] = frame["last epoch"].map(lambda s: "—" if pd.isna(s) else str(int(s)))
        out.append(f"<h3>Trials that did not finish ({len(bad)})</h3>")
        out.append(_frame_table(frame, "data problems"))
        if len(bad) > _MAX_PROBLEM_ROWS:
            out.append(f"<p class='skip'>… and {len(bad) - _MAX_PROBLEM_ROWS} more: see results.csv (column status).</p>")
    return "\n".join(out)


# --------------------------------------------------------------------------------- provenance


def _overrides_text(o: dict[str, Any]) -> str:
    if not o:
        return "(none: the base config)"
    return "; ".join(f"{k} = {json.dumps(v)}" for k, v in o.items())


def _provenance(exp: Experiment, colours: dict[str, str]) -> str:
    meta = exp.meta
    spec = meta.get("spec") or {}
    out = []
    facts = [
        ("experiment folder", str(exp.path)),
        ("format", meta.get("format")),
        ("created", meta.get("created")),
        ("spec file", meta.get("spec_file")),
        ("fingerprint", meta.get("fingerprint")),
        ("git commit", meta.get("git_commit")),
        ("train.select_on", meta.get("select_on")),
        ("model.compat", meta.get("compat")),
    ]
    out.append(_kv_table(facts))
    mach = meta.get("machine") or {}
    if mach:
        out.append("<h3>Machine</h3>" + _kv_table(list(mach.items())))
    vers = meta.get("versions") or {}
    if vers:
        out.append("<h3>Versions</h3>" + _kv_table(list(vers.items())))
    runs = meta.get("runs") or []
    if runs:
        rows = []
        for r in runs:
            started = r.get("started")
            rows.append({
                "run": r.get("run"),
                "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)) + " UTC" if isinstance(started, (int, float)) else "—",
                "wall time": _duration(r.get("wall_s")),
                "Ray fit time": _duration(r.get("fit_s")),
            })
        out.append("<h3>Wall times</h3>" + _frame_table(pd.DataFrame(rows)))
    if meta.get("kind") == "ablate":
        if spec.get("overrides"):
            out.append("<h3>Overrides common to every trial</h3><p class='mono'>" + esc(_overrides_text(spec["overrides"])) + "</p>")
        variants = spec.get("variants") or {}
        if variants:
            rows_html = "".join(
                f"<tr><th class='row'>{_dot(colours.get(v, '#888'))}{esc(v)}"
                f"{' <span class=tag>baseline</span>' if v == meta.get('baseline') else ''}</th>"
                f"<td class='mono'>{esc(_overrides_text(o))}</td></tr>"
                for v, o in variants.items()
            )
            out.append(f"<h3>Variants (dotted overrides of the base config)</h3><table class='data'><tbody>{rows_html}</tbody></table>")
        base_cfg, base_from = None, ""
        baseline = meta.get("baseline")
        for p in exp.plan:
            if p.get("variant") == baseline:
                base_cfg, base_from = p.get("config"), p.get("name")
                break
        if base_cfg is None and exp.plan:
            base_cfg, base_from = exp.plan[0].get("config"), exp.plan[0].get("name")
        if base_cfg is not None:
            out.append(f"<h3>Resolved config</h3><details><summary>config of trial {esc(str(base_from))} (the baseline row; "
                       "other rows differ by the overrides above, other trials by split index and name)</summary>"
                       f"<pre>{esc(yaml.safe_dump(base_cfg, sort_keys=False))}</pre></details>")
    else:
        space = spec.get("space") or {}
        if space:
            rows = [{"key": k, **{f: v.get(f) for f in ("type", "low", "high", "step", "log")},
                     "values": json.dumps(v.get("values")) if v.get("values") is not None else ""} for k, v in space.items()]
            out.append("<h3>Search space</h3>" + _frame_table(pd.DataFrame(rows), floats=6))
        storage = meta.get("optuna_storage")
        facts = [("objective", meta.get("objective")), ("Optuna study", meta.get("study_name")), ("Optuna storage", storage),
                 ("explore it live (read-only)", _Raw(f"<code>pip install optuna-dashboard &amp;&amp; {esc(dashboard_command(storage))}</code>")
                  if storage else None),
                 ("scheduler", json.dumps(spec.get("scheduler"))), ("budget", json.dumps(spec.get("budget"))),
                 ("confirm", json.dumps(spec.get("confirm"))), ("search seed", spec.get("seed"))]
        out.append("<h3>Search settings</h3>" + _kv_table(facts))
        cands = meta.get("confirm_candidates") or {}
        if cands:
            rows = [{"candidate": c, "search trial": info.get("search_trial"), "objective": info.get("objective"),
                     "params": json.dumps(info.get("params"))} for c, info in cands.items()]
            out.append("<h3>Confirmed candidates</h3>" + _frame_table(pd.DataFrame(rows)))
        if meta.get("base_config"):
            out.append("<h3>Resolved base config</h3><details><summary>the search's base config (before sampled values)</summary>"
                       f"<pre>{esc(yaml.safe_dump(meta['base_config'], sort_keys=False))}</pre></details>")
    split_dir = exp.path / "splits"
    if split_dir.is_dir():
        files = sorted(p.name for p in split_dir.glob("*.json"))
        if files:
            out.append("<h3>Persisted split files</h3><p class='mono'>" + esc(", ".join(files)) + "</p>")
    return "\n".join(out)


# ---------------------------------------------------------------------------------- document


def _toc(sections: Sequence[_Section]) -> str:
    items = []
    for s in sections:
        subs = "".join(f'<li><a href="#figure-{esc(i.name)}">{esc(i.heading)}</a></li>' for i in s.items if i.drawn)
        items.append(f'<li><a href="#{esc(s.id)}">{esc(s.title)}</a>' + (f"<ol>{subs}</ol>" if subs else "") + "</li>")
    return "<ol>" + "".join(items) + "</ol>"


def _render_section(s: _Section) -> str:
    parts = [f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>']
    if s.intro:
        parts.append(f'<p class="intro">{s.intro}</p>')
    parts += s.blocks
    for it in s.items:
        if it.drawn:
            parts.append(f'<section class="fig-group"><h3>{esc(it.heading)}</h3>{it.body}</section>')
        else:
            parts.append(it.body)
    parts.append("</section>")
    return "\n".join(parts)


def _table_colours(table: AblationTable, colours: dict[str, str]) -> dict[str, str]:
    """The experiment's variant colours, plus colours for rows only this table has (data-efficiency
    tables name their rows by training fraction)."""
    out = F.variant_colours(table.variants, table.baseline)
    out.update({v: colours[v] for v in table.variants if v in colours})
    return out


def write_report(exp: Experiment, out_dir: str | Path, tables: Sequence[AblationTable] = (), selection: str = "best") -> Path:
    """Write ``out_dir/report.html`` (self-contained) and ``out_dir/figures/<name>.html``; return the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = exp.meta
    kind = meta.get("kind")
    figs = _Figures(out)
    trials = exp.trials()
    tables = list(tables)
    if kind == "ablate":
        order = list(meta.get("variants") or dict.fromkeys(trials["variant"].dropna()))
        colours = F.variant_colours(order, meta.get("baseline"))
    else:
        colours = F.variant_colours(list(meta.get("confirm_candidates") or []))
    sections: list[_Section] = []

    sections.append(_Section("summary", "Summary", blocks=[_summary(exp, trials, selection)]))

    if kind == "ablate":
        per_split = exp.per_split(selection)
        pct = f"{100 * tables[0].confidence:g}%" if tables else "95%"
        tab = _Section("tables", "Ablation tables")
        if tables:
            tab.blocks.append(HOW_TO_READ.format(pct=pct))
            tab.blocks += [table_html(t, _table_colours(t, colours)) for t in tables]
        else:
            tab.blocks.append("<p class='skip'>No table: no trial of this experiment reported a result yet.</p>")
        sections.append(tab)

        mods = _Section("contributions", "Module contributions",
                        intro="Each row's Δ to the baseline row per benchmark: a marker left of the dashed zero line means removing or "
                              "changing that part lowers the score.")
        pairs = _Section("per-split", "Per-split comparisons",
                         intro="Medians can hide one lucky split: here every split is one line, so a consistent effect shows as "
                               "lines sloping the same way.")
        many = len(tables) > 1
        for i, t in enumerate(tables):
            tcol = _table_colours(t, colours)
            suffix = f"-{i + 1}" if many else ""
            label = f" ({t.title})" if many and t.title else ""
            mods.items.append(figs.item(
                f"forest{suffix}", f"Δ to {t.baseline}{label}",
                f"Median over the paired splits of Δ = variant − <b>{esc(t.baseline)}</b> (marker) with its {100 * t.confidence:g}% "
                "percentile-bootstrap interval (bar), per benchmark (colour). Filled markers: Holm-corrected exact Wilcoxon p &lt; 0.05; "
                "open: not significant; grey ×: no split where both finished. Hover for the p-values and the number of paired splits.",
                lambda t=t, c=tcol: F.forest_plot(t, colours=c)))
            pairs.items.append(figs.item(
                f"paired-splits{suffix}", f"Per-split pairs{label}",
                f"One panel per variant (columns) and benchmark (rows), each with its own y range: one line per split from "
                f"<b>{esc(t.baseline)}</b>'s test score (dark dot, left) to the variant's (coloured dot, right); black diamonds join the "
                "medians. Above each panel: the median Δ and how many splits went down (↓) or up (↑). The menu switches SRCC/PLCC. "
                "Only splits where both trials finished are drawn.",
                lambda t=t, c=tcol: F.paired_splits_plot(t, c)))
        if tables:
            sections += [mods, pairs]
        if meta.get("sweep_key"):
            sw = _Section("sweep", "Sweep")
            sw.items.append(figs.item(
                "sweep", f"Sweep of {meta['sweep_key']}",
                "Test score (at the selected epoch) against the swept value: line = median over splits, band = min–max across splits, "
                "small dots = single splits, one colour per benchmark.",
                lambda: F.sweep_plot(exp, per_split)))
            sections.append(sw)
        if len(meta.get("fractions") or []) > 1:
            de = _Section("data-efficiency", "Data efficiency")
            de.items.append(figs.item(
                "data-efficiency", "Score vs training fraction",
                "Test score against the share of the training part used (same test images): median over splits, band = min–max, "
                "dots = single splits.",
                lambda: F.fraction_plot(exp, per_split, colours)))
            sections.append(de)
        lc = _Section("learning", "Learning curves")
        lc.items.append(figs.item(
            "learning-curves", "Validation and test SRCC per epoch",
            "Median over splits per epoch (line) and min–max across splits (band; with many variants the bands start hidden, the "
            "buttons show them), per variant; click a legend entry to hide a variant. The validation part is carved from the "
            "training images and selects the epoch; the test curve is shown for reading only. Hover for the number of splits.",
            lambda: F.learning_curves(exp, colours)))
        sections.append(lc)
        ex = _Section("explain", "What drove the scores")
        ex.items.append(figs.item(
            "expert-weights", "Expert weights (DDWM)",
            "Per expert (degradation prompt), the distribution over the test images of the weight the DDWM gives it, pooled over the "
            "splits: box = quartiles, line = median, dashed = mean, whiskers = most extreme weight within 1.5 IQR.",
            lambda: F.expert_weights_plot(exp, colours)))
        ex.items.append(figs.item(
            "attention-maps", "Attention maps (as in the paper's Fig. 3)",
            "For a few test images: the crop, the prior's attention (DA-CLIP controller, one expert), the image encoder's class-token "
            "attention, and the refined map (prior − α·image; red = more than the image encoder, blue = less). Use the menu to show "
            "another expert.",
            lambda: F.attention_maps(exp)))
        sections.append(ex)
    else:
        objective = meta.get("objective") or "objective"
        search = _Section("search", "Hyperparameter search",
                          intro=f"Optuna proposed configurations, Ray Tune trained them on one split and the scheduler stopped weak ones "
                                f"early; the objective is <b>{esc(objective)}</b> on the validation part, never the test images.")
        try:
            study = F.load_study(exp)
            why = None
        except F.NoFigure as e:
            study, why = None, str(e)
        search.blocks.append(f"<p class='account'>{esc(search_account(exp, study))}</p>")

        def with_study(fn):
            def build():
                if study is None:
                    raise F.NoFigure(why or "no study")
                return fn(study, objective)
            return build

        search.items.append(figs.item("optuna-history", "Optimisation history",
                                      "Each completed search trial's objective (dots) and the best value so far (line), in Optuna's trial order. "
                                      "A trial the scheduler stopped early reports the objective of the epoch it stopped at, so it sits low.",
                                      with_study(F.optimization_history)))
        search.items.append(figs.item("optuna-importances", "Parameter importances (PED-ANOVA)",
                                      "How much each parameter's distribution differs between the top trials and all trials (Optuna's "
                                      "PED-ANOVA); higher = more important for reaching the top.",
                                      with_study(F.param_importances)))
        search.items.append(figs.item("optuna-parallel", "Parallel coordinates",
                                      "One line per completed trial through its parameter values, coloured by the objective.",
                                      with_study(F.parallel_coordinates)))
        search.items.append(figs.item("optuna-slices", "Slices",
                                      "The objective against each parameter separately (colour: trial number).",
                                      with_study(F.slices)))
        search.items.append(figs.item("search-curves", "Search trials per epoch",
                                      "Every search trial's objective per epoch (grey); the trials whose configurations went to the confirm "
                                      "stage are coloured. Short lines: trials the scheduler stopped early.",
                                      lambda: F.search_curves(exp, colours)))
        sections.append(search)
        conf = _Section("confirm", "Confirm stage",
                        intro="The best configurations of the search, retrained without early stopping on every persisted split and "
                              "scored on the test parts.")
        try:
            ct = F.confirm_table(exp)
            conf.blocks.append(_frame_table(ct))
        except F.NoFigure as e:
            conf.blocks.append(f"<p class='skip'>No confirm table: {esc(str(e))}.</p>")
        conf.items.append(figs.item("confirm-learning-curves", "Confirm-stage learning curves",
                                    "Median over the confirm splits per epoch (line), min–max (band), per candidate.",
                                    lambda: F.learning_curves(exp, colours, run="confirm")))
        conf.items.append(figs.item("expert-weights", "Expert weights (DDWM) of the confirmed candidates",
                                    "Per expert, the distribution of its DDWM weight over the test images, pooled over the confirm splits.",
                                    lambda: F.expert_weights_plot(exp, colours, run="confirm")))
        conf.items.append(figs.item("attention-maps", "Attention maps (as in the paper's Fig. 3)",
                                    "Crop, prior map (one expert), image-encoder map and refined map for a few test images; the menu "
                                    "switches the expert.",
                                    lambda: F.attention_maps(exp)))
        sections.append(conf)

    sections.append(_Section("provenance", "Provenance", blocks=[_provenance(exp, colours)]))

    title = f"drx report · {meta.get('name')}"
    desc = (meta.get("spec") or {}).get("description") or ""
    lead = f"{esc(str(kind))} experiment" + (f" · {esc(desc)}" if desc else "") + f" · {esc(str(exp.path))}"
    body = "\n".join(_render_section(s) for s in sections)
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<meta name="generator" content="drx report">
<style>
{static_text('report.css')}</style>
<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>
</head><body>
<div class="layout">
<nav class="toc"><div class="brand">{esc(str(meta.get('name')))}</div><div class="sub">drx {esc(str(kind))} report</div>{_toc(sections)}</nav>
<main>
<h1>{esc(str(meta.get('name')))}</h1><p class="lead">{lead}</p>
{body}
<footer>Written by drx report on {esc(time.strftime('%Y-%m-%d %H:%M:%S'))}: {len(figs.names)} figures
(also as fragments in figures/), tables in ablation*.md/.tex/.csv, the tidy per-epoch table in results.parquet/.csv.</footer>
</main></div>
</body></html>
"""
    path = out / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path
