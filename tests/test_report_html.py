"""The HTML report and its figures, on synthetic experiments whose numbers are known.

Every experiment here is written by :mod:`drx.testing.synthetic` in the formats drx and Ray
write (no Ray, no training), then read back and reported; assertions compare the report with
the generator's truth and with independent recomputations from the experiment's files.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import plotly.offline
import pytest

from drx.report import figures as F
from drx.bench.report import grid_for
from drx.bench.report import run as bench_run
from drx.report.commands import ablation_tables, run_report
from drx.report.html import write_report
from drx.data.benchmarks import benchmark_label
from drx.experiment import read_experiment
from drx.testing.synthetic import write_synthetic_experiment

PLOTLY_JS = plotly.offline.get_plotlyjs()
PLOTLY_BANNER = PLOTLY_JS[:60]
ABLATION_FIGURES = ["forest", "paired-splits", "learning-curves", "expert-weights", "attention-maps"]
TUNE_FIGURES = ["optuna-history", "optuna-importances", "optuna-parallel", "optuna-slices", "search-curves",
                "confirm-learning-curves", "expert-weights", "attention-maps"]


def _quiet(*_args, **_kwargs) -> None:
    pass


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    syn = write_synthetic_experiment(root / "exp", n_variants=4, n_splits=6, n_epochs=4, n_benchmarks=2, seed=3)
    out = root / "report"
    assert run_report(syn.path, out, say=_quiet) == 0
    return syn, out, (out / "report.html").read_text(encoding="utf-8")


def _own(html: str) -> str:
    """The page without the inlined plotly.js bundle (whose text mentions errors, URLs...)."""
    assert html.count(PLOTLY_JS) == 1
    return html.replace(PLOTLY_JS, "")


def _section(html: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)(?=<section id="|</main>)', html, re.S)
    assert m, f"section {sid} missing"
    return m.group(1)


def _fmt3(x: float) -> str:
    return f"{x:.3f}".replace("-", "−")


def test_the_report_imports_neither_torch_nor_the_search_layer():
    # drx.report reads experiment folders only (through drx.experiment): a report must work
    # where neither a GPU stack nor Ray is installed, and start fast.
    code = ("import sys, drx.report.commands, drx.report.figures; "
            "bad = [m for m in ('torch', 'ray', 'optuna', 'drx.search', 'drx.train') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------------------ reading back


def test_synthetic_experiment_reads_back_with_its_truth(ablation):
    syn, _, _ = ablation
    exp = read_experiment(syn.path)
    trials = exp.trials().set_index("trial")
    truth = syn.truth.set_index("trial")
    assert sorted(trials.index) == sorted(truth.index)
    # The trial's status, not the epoch's: a trial that raised after two good epochs is "failed".
    assert (trials.loc[truth.index, "status"] == truth["status"]).all()
    assert sorted(truth["status"].unique()) == ["diverged", "failed", "missing", "ok"]
    best = exp.per_split("best").set_index("trial").loc[truth.index]
    ok = truth["status"] == "ok"
    np.testing.assert_allclose(best.loc[ok, "srcc"], truth.loc[ok, "srcc"])
    np.testing.assert_allclose(best.loc[ok, "epoch"], truth.loc[ok, "epoch"])
    assert best.loc[~ok, "srcc"].isna().all()
    # "last" takes the final epoch, which differs from the selected one on some trials.
    last = exp.per_split("last").set_index("trial").loc[truth.index]
    assert (last.loc[ok, "epoch"] == 4).all()
    assert (best.loc[ok, "epoch"] < 4).any()


# ---------------------------------------------------------------------------------- the page


def test_report_is_one_self_contained_page_with_every_section(ablation):
    _, out, html = ablation
    assert html.count(PLOTLY_BANNER) == 1  # plotly.js inlined exactly once
    page = _own(html)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched: opens offline
    for sid in ("summary", "tables", "contributions", "per-split", "learning", "explain", "provenance"):
        assert f'<section id="{sid}">' in html
        assert f'href="#{sid}"' in html  # table of contents
    for name in ABLATION_FIGURES:
        frag = (out / "figures" / f"{name}.html").read_text(encoding="utf-8")
        assert f'id="fig-{name}"' in frag and f'id="fig-{name}"' in html
        assert PLOTLY_BANNER not in frag and "<html" not in frag.lower()
        assert f'href="#figure-{name}"' in html
    assert 'class="error"' not in page and "not shown" not in page
    # No sweep and a single fraction: those sections are left out, not drawn empty.
    assert 'id="sweep"' not in html and 'id="data-efficiency"' not in html


def test_tables_show_the_known_medians_and_the_gaps(ablation):
    syn, out, html = ablation
    tables = _section(html, "tables")
    truth = syn.truth
    ok = truth[truth["status"] == "ok"]
    exp = read_experiment(syn.path)
    (_, table), = ablation_tables(exp)
    for (v, b), g in ok.groupby(["variant", "benchmark"]):
        for m in ("srcc", "plcc"):
            expected = float(np.median(g[m]))
            cell = table.cell(v, b, m)
            assert cell["value"] == pytest.approx(expected, abs=1e-12)
            assert int(cell["n_ok"]) == len(g)
            assert _fmt3(expected) in tables
    # Failed, diverged and missing trials are named in their cells, never dropped.
    for status in ("failed", "diverged", "missing"):
        row = truth[truth["status"] == status].iloc[0]
        cell = table.cell(row["variant"], row["benchmark"], "srcc")
        assert status in cell["failed_kinds"] or (status == "missing" and cell["n_missing"] == 1)
        assert f"n=5/6: 1 {status}" in tables
    assert "How to read these tables" in tables
    for phrase in ("Holm", "Wilcoxon", "bootstrap", "median over"):
        assert phrase in tables
    assert (out / "ablation.md").is_file() and (out / "results.parquet").is_file()


def test_known_effects_come_out_with_the_right_sign(ablation):
    syn, _, _ = ablation
    (_, table), = ablation_tables(read_experiment(syn.path))
    for v, effect in syn.effects.items():
        if v == syn.baseline:
            continue
        for b in syn.benchmarks:
            d = table.cell(v, b, "srcc")["delta_median"]
            assert d == pytest.approx(effect, abs=0.012)
    prior = table.cell("prior_only", syn.benchmarks[0], "srcc")
    # Every split lower: the interval excludes 0 and the exact test gives its floor 2/2^n.
    assert prior["ci_high"] < 0
    assert prior["p_raw"] == pytest.approx(2 / 2 ** int(prior["n_paired"]))


def test_summary_and_provenance(ablation):
    syn, _, html = ablation
    meta = json.loads((syn.path / "drx-experiment.json").read_text())
    summary = _section(html, "summary")
    n_ok = int((syn.truth["status"] == "ok").sum())
    assert f"<td>{len(syn.truth)} &nbsp;" in summary and f"{n_ok} ok" in summary
    for status in ("1 failed", "1 diverged", "1 missing"):
        assert status in summary
    failed = syn.truth[syn.truth["status"] == "failed"].iloc[0]["trial"]
    assert failed in summary and "OutOfMemoryError" in summary
    prov = _section(html, "provenance")
    assert meta["versions"]["drx"] in prov and meta["versions"]["plotly"] in prov
    if meta["git_commit"]:
        assert meta["git_commit"] in prov
    assert "gpu-node-1" in prov and "NVIDIA A100" in prov
    assert "model.variant = &quot;image_encoder&quot;" in prov
    assert "train.epochs = 4" in prov  # the overrides common to every trial
    assert "deit3_small_patch16_384" in prov  # the resolved config
    assert "Wall times" in prov and "min" in prov


def test_rerun_replaces_stale_fragments(ablation, tmp_path):
    syn, out, _ = ablation
    target = tmp_path / "again"
    (target / "figures").mkdir(parents=True)
    (target / "figures" / "old-figure.html").write_text("<div>stale</div>")
    exp = read_experiment(syn.path)
    path = write_report(exp, target, tables=[t for _, t in ablation_tables(exp)])
    assert path == target / "report.html"
    assert sorted(p.stem for p in (target / "figures").glob("*.html")) == sorted(ABLATION_FIGURES)


# -------------------------------------------------------------------------------- the figures


def test_forest_plot_draws_each_cell_with_its_interval(ablation):
    syn, _, _ = ablation
    (_, table), = ablation_tables(read_experiment(syn.path))
    fig = F.forest_plot(table)
    others = [v for v in table.variants if v != table.baseline]
    traces = [t for t in fig.data if t.error_x is not None and t.error_x.array is not None]
    assert len(traces) == len(table.benchmarks) * 2  # a trace per benchmark and metric
    for t in traces:
        assert len(t.x) == len(others)
        for x, custom, plus in zip(t.x, t.customdata, t.error_x.array):
            v = custom[0]
            bench = next(b for b in table.benchmarks if benchmark_label(b) == custom[1])
            metric = "srcc" if t.xaxis in ("x", None) else "plcc"
            cell = table.cell(v, bench, metric)
            assert x == pytest.approx(cell["delta_median"])
            assert x + plus == pytest.approx(cell["ci_high"])
    assert fig.layout.title.text and fig.layout.xaxis.title.text.startswith("Δ SRCC")
    assert any(s.type == "line" and s.x0 == 0 and s.x1 == 0 for s in fig.layout.shapes)  # the zero line


def test_paired_plot_has_one_segment_per_paired_split(ablation):
    syn, _, _ = ablation
    (_, table), = ablation_tables(read_experiment(syn.path))
    fig = F.paired_splits_plot(table)
    lines = [t for t in fig.data if t.name not in ("median",)]
    srcc = [t for t in lines if t.visible is not False]
    segments = sum(int(np.isfinite(np.asarray(t.x, dtype=float)).sum()) // 2 for t in srcc)
    d = table.deltas
    assert segments == int((d["metric"] == "srcc").sum())
    # The menu switches every trace to PLCC.
    (menu,) = fig.layout.updatemenus
    labels = [b.label for b in menu.buttons]
    assert labels == ["metric: SRCC", "metric: PLCC"]
    vis = menu.buttons[1].args[0]["visible"]
    assert len(vis) == len(fig.data) and sum(vis) == sum(1 for t in fig.data if t.visible is False)


def test_colours_are_the_same_for_a_variant_in_every_figure(ablation):
    syn, _, _ = ablation
    exp = read_experiment(syn.path)
    (_, table), = ablation_tables(exp)
    colours = F.variant_colours(exp.meta["variants"], exp.meta["baseline"])
    lc = F.learning_curves(exp, colours)
    pairs = F.paired_splits_plot(table, colours)
    ew = F.expert_weights_plot(exp, colours)
    for v in exp.meta["variants"]:
        c = colours[v]
        assert any(t.name == v and t.line.color == c for t in lc.data)
        if v != exp.meta["baseline"]:
            assert any(t.name == v and c in list(t.marker.color) for t in pairs.data)
    assert all(t.marker.color == colours[t.name] for t in ew.data)
    assert len(set(colours.values())) == len(colours)


def test_learning_curves_are_medians_over_splits(ablation):
    syn, _, _ = ablation
    exp = read_experiment(syn.path)
    fig = F.learning_curves(exp)
    ok = exp.epochs[exp.epochs["row_status"] == "ok"]
    g = ok[(ok["variant"] == "full") & (ok["benchmark"] == syn.benchmarks[0])]
    expected = g.groupby("epoch")["test_srcc"].median()
    (trace,) = [t for t in fig.data if t.name == "full" and t.mode == "lines+markers" and t.xaxis == "x2"]
    np.testing.assert_allclose(trace.y, expected.to_numpy())
    assert list(trace.x) == list(expected.index.astype(float))


def test_expert_weights_pool_every_split(ablation):
    syn, _, _ = ablation
    exp = read_experiment(syn.path)
    fig = F.expert_weights_plot(exp)
    files = sorted(syn.path.glob(f"trials/full-{syn.benchmarks[0]}-s*/checkpoint_*/explain/expert_weights.csv"))
    assert len(files) == len(syn.splits)
    pooled = pd.concat([pd.read_csv(f) for f in files])
    experts = [c for c in pooled.columns if c not in ("image_id", "mos", "prediction")]
    (box,) = [t for t in fig.data if t.name == "full" and t.xaxis in ("x", None)]
    assert list(box.x) == experts
    np.testing.assert_allclose(box.median, [pooled[e].median() for e in experts])
    np.testing.assert_allclose(box.q1, [pooled[e].quantile(0.25) for e in experts])
    e0 = pooled[experts[0]]
    q1, q3 = e0.quantile(0.25), e0.quantile(0.75)
    assert box.upperfence[0] == pytest.approx(e0[e0 <= q3 + 1.5 * (q3 - q1)].max())


def test_attention_maps_show_the_heaviest_expert(ablation):
    syn, _, _ = ablation
    exp = read_experiment(syn.path)
    fig = F.attention_maps(exp)
    trial = f"full-{syn.benchmarks[0]}-s0"
    (npz,) = syn.path.glob(f"trials/{trial}/checkpoint_*/explain/attention.npz")
    data = np.load(npz)
    weights = pd.read_csv(npz.with_name("expert_weights.csv")).set_index("image_id")
    prompts = list(data["prompts"])
    heat = [t for t in fig.data if t.type == "heatmap"]
    images = [t for t in fig.data if t.type == "image"]
    assert len(images) == 4 and len(heat) == 12
    for i, image_id in enumerate(data["image_ids"]):
        e = int(np.argmax(weights.loc[str(image_id), prompts].to_numpy(dtype=float)))
        prior = heat[3 * i]
        expected = data["prior"][i, e]  # shown to 4 significant digits of the map's peak
        np.testing.assert_allclose(np.asarray(prior.z, dtype=float), expected, rtol=0, atol=1e-3 * float(expected.max()))
        assert fig.layout.annotations[4 * i + 1].text == f"prior: {prompts[e]}"
    (menu,) = fig.layout.updatemenus
    assert len(menu.buttons) == len(prompts) + 1
    assert trial in fig.layout.title.text
    with pytest.raises(F.NoFigure, match="not one of"):
        F.attention_maps(exp, expert="no-such-expert")


def test_missing_explain_files_are_explained_not_drawn(ablation, tmp_path):
    syn, _, _ = ablation
    copy = tmp_path / "exp"
    shutil.copytree(syn.path, copy)
    for d in copy.glob("trials/*/checkpoint_*/explain"):
        shutil.rmtree(d)
    exp = read_experiment(copy)
    html = write_report(exp, tmp_path / "out", tables=[t for _, t in ablation_tables(exp)]).read_text()
    assert "not shown: no finished trial wrote explain/expert_weights.csv" in html
    assert "not shown: no trial wrote explain/attention.npz" in html
    assert not (tmp_path / "out" / "figures" / "expert-weights.html").exists()


# ------------------------------------------------------------------------- sweeps, fractions


def test_sweep_plot_reads_the_swept_value_of_every_variant(tmp_path):
    syn = write_synthetic_experiment(tmp_path / "exp", n_variants=4, n_splits=3, n_epochs=3, n_benchmarks=1,
                                     sweep_key="model.dsdm.lambda_init", failures=False, n_images=8)
    exp = read_experiment(syn.path)
    key, values, title = F.sweep_values(exp)
    assert key == "model.dsdm.lambda_init" and values == syn.sweep_values and title == key
    fig = F.sweep_plot(exp, exp.per_split())
    (line,) = [t for t in fig.data if t.mode == "lines+markers" and t.xaxis in ("x", None)]
    ok = syn.truth
    expected = ok.assign(x=ok["variant"].map(values)).groupby("x")["srcc"].median()
    np.testing.assert_allclose(line.x, expected.index.to_numpy())
    np.testing.assert_allclose(line.y, expected.to_numpy())
    out = tmp_path / "report"
    assert run_report(syn.path, out, say=_quiet) == 0
    html = (out / "report.html").read_text()
    assert '<section id="sweep">' in html and 'id="fig-sweep"' in html


def test_expert_count_sweep_uses_the_number_of_prompts(tmp_path):
    syn = write_synthetic_experiment(tmp_path / "exp", n_variants=3, n_splits=2, n_epochs=2, n_benchmarks=1,
                                     sweep_key="model.prior.prompts", failures=False, n_images=8)
    _, values, title = F.sweep_values(read_experiment(syn.path))
    assert title == "number of experts (prompts)"
    assert values == {v: len(p) for v, p in syn.sweep_values.items()}
    assert max(values.values()) == 10


def test_data_efficiency_report(tmp_path):
    syn = write_synthetic_experiment(tmp_path / "exp", n_variants=2, n_splits=3, n_epochs=2, n_benchmarks=1,
                                     fractions=[0.25, 0.5, 1.0], failures=False, n_images=8)
    exp = read_experiment(syn.path)
    fig = F.fraction_plot(exp, exp.per_split())
    (line,) = [t for t in fig.data if t.name == "full" and t.mode == "lines+markers" and t.xaxis in ("x", None)]
    assert list(line.x) == [25.0, 50.0, 100.0]
    full = syn.truth[syn.truth["variant"] == "full"]
    np.testing.assert_allclose(line.y, full.groupby("fraction")["srcc"].median().to_numpy())
    out = tmp_path / "report"
    assert run_report(syn.path, out, say=_quiet) == 0
    html = (out / "report.html").read_text()
    assert 'id="fig-data-efficiency"' in html
    assert html.count('class="abl"') == 3  # one table per training fraction
    one = type(exp)(exp.path, {**exp.meta, "fractions": [1.0]}, exp.plan, exp.epochs)
    with pytest.raises(F.NoFigure, match="one training fraction"):
        F.fraction_plot(one, exp.per_split())


# ------------------------------------------------------------------------------------- tune


@pytest.fixture(scope="module")
def tune(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    syn = write_synthetic_experiment(root / "exp", n_variants=14, n_splits=3, n_epochs=4, kind="tune", seed=1, n_images=12)
    out = root / "report"
    assert run_report(syn.path, out, say=_quiet) == 0
    return syn, out, (out / "report.html").read_text(encoding="utf-8")


def test_tune_report_has_the_study_figures_and_the_confirm_table(tune):
    syn, out, html = tune
    assert html.count(PLOTLY_BANNER) == 1
    for name in TUNE_FIGURES:
        assert (out / "figures" / f"{name}.html").is_file(), name
        assert f'id="fig-{name}"' in html
    page = _own(html)
    assert 'class="error"' not in page and "not shown" not in page
    confirm = _section(html, "confirm")
    table = pd.read_csv(syn.path / "confirm.csv")
    for cand, value in zip(table["candidate"], table["test_srcc (median)"]):
        assert cand in confirm and f"{value:.4f}" in confirm
    assert "model.ddwm.groups = [" in confirm  # choices shown decoded, not as JSON text
    prov = _section(html, "provenance")
    assert "Search space" in prov and "train.lr" in prov and "loguniform" in prov
    summary = _section(html, "summary")
    assert "stopped" in summary and "1 failed" in summary


def test_tune_figures_match_the_stored_study(tune):
    syn, _, _ = tune
    import optuna

    exp = read_experiment(syn.path)
    study = F.load_study(exp)
    assert study.study_name == syn.study_name
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    fig = F.optimization_history(study, "val_srcc")
    assert sorted(fig.data[0].y) == sorted(t.value for t in complete)
    imp = F.param_importances(study, "val_srcc")
    assert set(imp.data[0].y) == {"train.lr", "model.dsdm.lambda_init", "model.ddwm.groups"}
    curves = F.search_curves(exp)
    assert sorted(t.name.split(" ")[0] for t in curves.data[1:]) == ["top1", "top2", "top3"]


def test_too_few_trials_and_a_lost_study_leave_a_note(tmp_path):
    syn = write_synthetic_experiment(tmp_path / "few", n_variants=4, n_splits=2, n_epochs=3, kind="tune", failures=False, n_images=8)
    out = tmp_path / "report"
    assert run_report(syn.path, out, say=_quiet) == 0
    html = (out / "report.html").read_text()
    assert "PED-ANOVA needs at least 10 completed search trials to rank parameters; this study has 4" in html
    assert 'id="fig-optuna-history"' in html and 'id="fig-optuna-importances"' not in html
    (syn.path / "optuna.db").unlink()
    assert run_report(syn.path, tmp_path / "report2", say=_quiet) == 0
    html = (tmp_path / "report2" / "report.html").read_text()
    assert "cannot open the Optuna study" in html
    assert not (syn.path / "optuna.db").exists()  # reading never creates an empty study database
    assert 'id="fig-search-curves"' in html  # what the folder itself holds is still drawn


# ------------------------------------------------------------------------------------ bench


def test_bench_grid_and_a_small_run(tmp_path, capsys):
    assert grid_for(500) == (10, 5, 10)
    v, b, s = grid_for(40)
    assert v * b * s == 40
    args = argparse.Namespace(trials=12, epochs=2, images=8, repeat=1, seed=0, keep=str(tmp_path / "keep"), json=str(tmp_path / "t.json"))
    assert bench_run(args) == 0
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["trials"] == math.prod(grid_for(12))
    assert result["run_report_s"] > 0 and set(result["stages_s"]) >= {"read experiment folder", "figures + report.html"}
    assert (tmp_path / "keep" / "report" / "report.html").is_file()
    assert "run_report on" in capsys.readouterr().out
