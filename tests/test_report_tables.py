"""Ablation tables from a synthetic per-split frame whose medians are known by construction."""

import io
import math
import re

import numpy as np
import pandas as pd
import pytest

from drx.errors import DataError
from drx.data.benchmarks import benchmark_label
from drx.report import tables as tb

CROSS = "livefb→koniq"
VARIANTS = ["full", "w/o_dsdm", "w/o prior", "flaky", "dead"]
NRES = 499  # bootstrap resamples: enough for the tests, fast on 2 shared cores


def _row(variant, benchmark, split, status, srcc):
    plcc = srcc + 0.010 if status == "ok" else np.nan
    return dict(variant=variant, benchmark=benchmark, split=split, status=status, srcc=srcc, plcc=plcc)


def per_split_frame() -> pd.DataFrame:
    """Values chosen so every median lands away from a rounding boundary.

    koniq SRCC medians: full 0.909, w/o_dsdm 0.8981, w/o prior 0.9129 (best), flaky 0.880 on 4 of 10
    splits (3 failed, 1 diverged, 2 never ran), dead has nothing usable. PLCC = SRCC + 0.010.
    """
    rows = []
    for s in range(10):
        for bench, base in (("koniq", 0.90), (CROSS, 0.80)):
            full = base + 0.002 * s
            rows.append(_row("full", bench, s, "ok", full))
            rows.append(_row("w/o_dsdm", bench, s, "ok", full - 0.010 - 0.0002 * s))
            sign = 1 if bench == "koniq" else -1
            rows.append(_row("w/o prior", bench, s, "ok", full + sign * (0.003 + 0.0002 * s)))
        # flaky: koniq splits 0-2 failed, 3 diverged, 8-9 never ran; all fine on the cross set
        if s < 3:
            rows.append(_row("flaky", "koniq", s, "failed", np.nan))
        elif s == 3:
            rows.append(_row("flaky", "koniq", s, "diverged", np.nan))
        elif s < 8:
            rows.append(_row("flaky", "koniq", s, "ok", 0.90 + 0.002 * s - 0.020 - 0.002 * s))
        rows.append(_row("flaky", CROSS, s, "ok", 0.80 + 0.002 * s - 0.001 - 0.0002 * s))
        # dead: 9 failed + 1 finished without a number on koniq; never ran on the cross set
        rows.append(_row("dead", "koniq", s, "failed" if s else "ok", np.nan))
    return pd.DataFrame(rows)


PROTOCOL = "test metrics at the best-validation epoch (selected on the validation part); 10 splits of 80/20, seed 0"


@pytest.fixture(scope="module")
def table():
    return tb.build_ablation_table(
        per_split_frame(), VARIANTS, "full", protocol=PROTOCOL, title="Module ablation",
        seed=0, n_resamples=NRES,
    )


def md_tables(md: str) -> list[dict[str, dict[str, str]]]:
    """Parse the pipe tables of a Markdown string into {row label: {column header: cell}}."""
    out, block = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split(" | ")])
        elif block:
            header, body = block[0], block[2:]
            out.append({r[0]: dict(zip(header[1:], r[1:])) for r in body})
            block = []
    return out


# ---------------------------------------------------------------------------------- cells


def test_cells_values_counts_and_stats(table):
    c = table.cells
    assert len(c) == len(VARIANTS) * 2 * 2
    assert list(c.columns[:3]) == ["variant", "benchmark", "metric"]
    assert table.cell("full", "koniq", "srcc")["value"] == pytest.approx(0.909)
    assert table.cell("full", "koniq", "plcc")["value"] == pytest.approx(0.919)
    assert table.cell("w/o_dsdm", "koniq", "srcc")["value"] == pytest.approx(0.8981)
    assert table.cell("w/o prior", "koniq", "srcc")["value"] == pytest.approx(0.9129)
    assert table.cell("full", CROSS, "srcc")["value"] == pytest.approx(0.809)

    ref = table.cell("full", "koniq", "srcc")
    assert ref["is_baseline"] and pd.isna(ref["n_paired"]) and math.isnan(ref["p_raw"])

    d = table.cell("w/o_dsdm", "koniq", "srcc")
    assert d["n_paired"] == 10 and d["n_ok"] == 10 and d["n_missing"] == 0 and d["n_failed"] == 0
    assert d["delta_median"] == pytest.approx(-0.0109)
    assert d["p_raw"] == 0.001953125 and d["rbc"] == -1.0 and d["test_method"] == "exact"
    assert d["ci_low"] <= -0.0109 <= d["ci_high"] < 0
    # Holm family of koniq SRCC: raw [1/512, 1/512, 1/8] (dead is untested) -> [3/512, 3/512, 1/8]
    assert d["p_holm"] == pytest.approx(3 / 512)
    assert table.cell("w/o prior", "koniq", "srcc")["p_holm"] == pytest.approx(3 / 512)
    assert table.cell("flaky", "koniq", "srcc")["p_raw"] == pytest.approx(2 / 16)
    assert table.cell("flaky", "koniq", "srcc")["p_holm"] == pytest.approx(2 / 16)

    f = table.cell("flaky", "koniq", "srcc")
    assert (f["n_ok"], f["n_failed"], f["n_missing"], f["n_paired"]) == (4, 4, 2, 4)
    assert f["failed_kinds"] == "3 failed, 1 diverged"
    assert f["value"] == pytest.approx(0.880)

    x = table.cell("dead", "koniq", "srcc")
    assert (x["n_ok"], x["n_failed"], x["n_missing"], x["n_paired"]) == (0, 10, 0, 0)
    assert x["failed_kinds"] == "9 failed, 1 no value"
    assert math.isnan(x["value"]) and math.isnan(x["p_raw"]) and math.isnan(x["p_holm"])
    y = table.cell("dead", CROSS, "srcc")
    assert (y["n_ok"], y["n_failed"], y["n_missing"]) == (0, 0, 10)


def test_best_per_column_respects_direction(table):
    best = table.cells[table.cells["is_best"]]
    got = set(zip(best["variant"], best["benchmark"], best["metric"]))
    assert got == {
        ("w/o prior", "koniq", "srcc"), ("w/o prior", "koniq", "plcc"),
        ("full", CROSS, "srcc"), ("full", CROSS, "plcc"),
    }


def test_lower_is_better_metric_and_ties_on_printed_value():
    df = pd.DataFrame(
        [dict(variant=v, benchmark="bid", split=s, status="ok", rmse=r + 0.01 * s)
         for s in range(6) for v, r in (("full", 0.30), ("a", 0.2501), ("b", 0.2502))]
    )
    t = tb.build_ablation_table(df, ["full", "a", "b"], "full", metrics=["rmse"], n_resamples=NRES)
    best = t.cells.set_index("variant")["is_best"]
    # 0.2751 and 0.2752 both print as 0.275: both bold, never only one of two equal numbers.
    assert best.to_dict() == {"full": False, "a": True, "b": True}
    assert "lower is better for RMSE" in tb.to_markdown(t)


# -------------------------------------------------------------------------------- markdown


def test_markdown_values_bold_and_failures(table):
    md = tb.to_markdown(table)
    values, deltas = md_tables(md)
    assert list(values) == ["full (baseline)", "w/o_dsdm", "w/o prior", "flaky", "dead"]
    col, colp, cross = "KonIQ SRCC", "KonIQ PLCC", "LIVE-FB→KonIQ SRCC"
    assert values["full (baseline)"][col] == "0.909"
    assert values["full (baseline)"][colp] == "0.919"
    assert values["full (baseline)"][cross] == "**0.809**"
    assert values["w/o_dsdm"][col] == "0.898"
    assert values["w/o prior"][col] == "**0.913**"
    assert values["w/o prior"][cross] == "0.805"
    assert values["flaky"][col] == "0.880 (n=4/10: 3 failed, 1 diverged, 2 missing)"
    assert values["dead"][col] == "— (9 failed, 1 no value)"
    assert values["dead"][cross] == "— (10 missing)"
    assert sum(c.startswith("**") for r in values.values() for c in r.values()) == 4

    assert "full (baseline)" not in deltas
    assert re.fullmatch(r"−0\.011 \[−0\.01\d, −0\.01\d\] p=0\.006", deltas["w/o_dsdm"][col])
    assert deltas["w/o prior"][col].startswith("+0.004 [+0.00")
    assert deltas["flaky"][col].endswith("p=0.125 (n=4/10)")
    assert deltas["dead"][col] == "— (no paired splits)"
    assert deltas["dead"][cross] == "— (no paired splits)"


def test_markdown_notes(table):
    md = tb.to_markdown(table)
    assert md.startswith("### Module ablation\n")
    assert f"Protocol: {PROTOCOL}." in md
    assert "Cells: median over 10 splits." in md
    assert ("paired exact Wilcoxon signed-rank across splits, Holm-corrected within each column; "
            "Δ = row − baseline (full); 95% percentile bootstrap interval of the median Δ") in md
    assert "n=a/b" in md
    # flaky has 4 paired splits on KonIQ: its p can never reach 0.05
    assert "with fewer than 6 paired splits no p-value can reach 0.05 (exact floor 2/2^n)" in md.lower()


def test_small_n_note_only_when_due():
    full = tb.build_ablation_table(
        per_split_frame(), ["full", "w/o_dsdm", "w/o prior"], "full", n_resamples=NRES
    )
    md = tb.to_markdown(full)
    assert not full.small_n and "fewer than 6" not in md
    assert not full.incomplete and "n=a/b" not in md and "n=" not in md_tables(md)[0]["w/o_dsdm"]["KonIQ SRCC"]
    five = tb.build_ablation_table(
        per_split_frame(), ["full", "w/o_dsdm"], "full", expected_splits=range(5), n_resamples=NRES
    )
    assert five.small_n and "fewer than 6 paired splits" in tb.to_markdown(five)
    assert five.cell("w/o_dsdm", "koniq", "srcc")["p_raw"] == pytest.approx(2 / 32)


def test_single_paired_split_has_no_test():
    df = per_split_frame()
    df = df[~((df["variant"] == "w/o_dsdm") & (df["benchmark"] == "koniq") & (df["split"] > 0))]
    t = tb.build_ablation_table(df, ["full", "w/o_dsdm"], "full", n_resamples=NRES)
    c = t.cell("w/o_dsdm", "koniq", "srcc")
    assert c["n_paired"] == 1 and math.isnan(c["p_raw"]) and math.isnan(c["ci_low"])
    assert c["n_missing"] == 9
    _, deltas = md_tables(tb.to_markdown(t))
    assert deltas["w/o_dsdm"]["KonIQ SRCC"] == "−0.010 (n=1/10, no test)"
    # One split and no p: the small-n note is about shown p-values, so it stays off.
    assert "fewer than 6" not in tb.to_markdown(t)


def test_expected_splits_count_missing_and_restrict():
    t = tb.build_ablation_table(per_split_frame(), ["full", "w/o_dsdm"], "full",
                                expected_splits=(s for s in range(12)), n_resamples=NRES)
    for bench in ("koniq", CROSS):
        c = t.cell("full", bench, "srcc")
        assert (c["n_expected"], c["n_ok"], c["n_missing"]) == (12, 10, 2)
    assert md_tables(tb.to_markdown(t))[0]["full (baseline)"]["KonIQ SRCC"] == (
        "**0.909** (n=10/12: 2 missing)"
    )
    # Mapping form: a benchmark nobody ran still gets a (fully missing) column.
    t = tb.build_ablation_table(
        per_split_frame(), ["full", "w/o_dsdm"], "full",
        expected_splits={"koniq": range(10), "spaq": range(10)}, n_resamples=NRES,
    )
    assert t.benchmarks == ("koniq", "spaq", CROSS)
    assert t.cell("full", "spaq", "srcc")["n_missing"] == 10
    assert t.expected_splits[CROSS] == tuple(range(10))  # inferred for the unnamed one


def test_mean_aggregate():
    t = tb.build_ablation_table(per_split_frame(), ["full", "w/o_dsdm"], "full",
                                aggregate="mean", n_resamples=NRES)
    c = t.cell("full", "koniq", "srcc")
    vals = 0.90 + 0.002 * np.arange(10)
    assert c["value"] == pytest.approx(vals.mean())
    assert c["std"] == pytest.approx(vals.std(ddof=1))
    md = tb.to_markdown(t)
    assert md_tables(md)[0]["full (baseline)"]["KonIQ SRCC"] == f"**0.909** ± {vals.std(ddof=1):.3f}"
    assert "mean ± sample std" in md


def test_tied_differences_are_noted():
    df = per_split_frame()
    m = (df["variant"] == "w/o_dsdm")
    df.loc[m, ["srcc", "plcc"]] = df.loc[df["variant"] == "full", ["srcc", "plcc"]].to_numpy() - 0.01
    t = tb.build_ablation_table(df, ["full", "w/o_dsdm"], "full", n_resamples=NRES)
    assert t.cell("w/o_dsdm", "koniq", "srcc")["test_method"] == "exact permutation (ties)"
    assert "exact permutation (ties)" in tb.to_markdown(t)


def test_cell_view_is_computed_once_for_every_format(table):
    w = tb.cell_view(table.cell("w/o_dsdm", "koniq", "srcc"), table)
    assert (w.value, w.delta, w.p, w.significant, w.n_paired) == ("0.898", "-0.011", "0.006", "neg", 10)
    assert w.tested and not w.partial and w.ci_low.startswith("-0.01")
    f = tb.cell_view(table.cell("flaky", "koniq", "srcc"), table)
    assert f.partial and (f.n_ok, f.n_expected) == (4, 10) and f.gaps == "3 failed, 1 diverged, 2 missing"
    assert f.p == "0.125" and f.significant == ""
    b = tb.cell_view(table.cell("full", "koniq", "srcc"), table)
    assert b.is_baseline and b.n_paired == 0 and b.delta == "" and b.p == ""
    d = tb.cell_view(table.cell("dead", CROSS, "srcc"), table)
    assert not d.has_value and d.value == "" and d.gaps == "10 missing"
    # The same numbers in the three renderings, each with its own minus sign.
    assert f"{w.delta.replace('-', '−')} [" in tb.to_markdown(table)
    assert f"${w.delta}$ {{\\scriptsize$[{w.ci_low}, {w.ci_high}]$}}" in tb.to_latex(table)
    assert f">{w.delta.replace('-', '−')}<small>[" in tb.render_table(table, "html", colours={})


# ----------------------------------------------------------------------------------- latex


def _balanced(tex: str) -> bool:
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def test_latex_booktabs_and_escaping(table):
    tex = tb.to_latex(table)
    assert _balanced(tex)
    assert tex.count("$") % 2 == 0
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\cmidrule(lr){2-3}", r"\cmidrule(lr){4-5}"):
        assert rule in tex
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    assert r"\begin{tabular}{lcc cc}" in tex and tex.count(r"\begin{") == tex.count(r"\end{")
    assert r"\multicolumn{2}{c}{KonIQ}" in tex
    assert r"\multicolumn{2}{c}{LIVE-FB$\rightarrow$KonIQ}" in tex
    assert "→" not in tex and "−" not in tex and "Δ" not in tex
    assert r"w/o\_dsdm" in tex and re.search(r"[^\\]_", tex) is None
    assert r"\textbf{0.913}" in tex and r"\textbf{0.809}" in tex and tex.count(r"\textbf") == 4
    assert r"--- {\scriptsize(9 failed, 1 no value)}" in tex
    assert r"0.880\,{\scriptsize(4/10)}" in tex
    assert r"\caption{Module ablation}" in tex
    assert r"95\% percentile bootstrap" in tex and "$2/2^n$" in tex
    # Every body row has as many cells as the header.
    body = [l for l in tex.splitlines() if l.endswith(r"\\") and not l.startswith(r"\multicolumn")
            and not l.startswith(" &")]
    assert body and all(l.count("&") == 4 for l in body)


def test_latex_escape():
    assert tb.latex_escape("a_b & 50% #1 {x} ~ ^") == r"a\_b \& 50\% \#1 \{x\} \textasciitilde{} \textasciicircum{}"
    assert tb.latex_escape("livefb→koniq") == r"livefb$\rightarrow$koniq"
    assert benchmark_label("livefb→koniq") == "LIVE-FB→KonIQ"
    assert benchmark_label("spaq->bid") == "SPAQ→BID"
    assert benchmark_label("mydata") == "mydata"


# ------------------------------------------------------------------------------ csv / files


def test_csv_and_write_table(table, tmp_path):
    back = pd.read_csv(io.StringIO(tb.to_csv(table)))
    assert list(back.columns) == list(table.cells.columns)
    assert len(back) == 20
    row = back[(back.variant == "w/o_dsdm") & (back.benchmark == CROSS) & (back.metric == "srcc")]
    assert row["p_raw"].item() == 0.001953125
    paths = tb.write_table(table, tmp_path / "out", "table4")
    assert {p.name for p in paths.values()} == {"table4.md", "table4.tex", "table4.csv"}
    assert paths["md"].read_text(encoding="utf-8") == tb.to_markdown(table)


def test_per_split_deltas_frame(table):
    d = tb.per_split_deltas_frame(per_split_frame(), VARIANTS, "full")
    assert list(d.columns) == ["variant", "benchmark", "metric", "split", "value", "baseline_value", "delta"]
    np.testing.assert_allclose(d["delta"], d["value"] - d["baseline_value"])
    sub = d[(d.variant == "flaky") & (d.benchmark == "koniq") & (d.metric == "srcc")]
    assert sorted(sub["split"]) == [4, 5, 6, 7]
    assert set(d["variant"]) == {"w/o_dsdm", "w/o prior", "flaky"}
    pd.testing.assert_frame_equal(d, table.deltas)


# ---------------------------------------------------------------------------------- errors


def test_input_errors():
    df = per_split_frame()
    with pytest.raises(ValueError, match="baseline"):
        tb.build_ablation_table(df, ["a", "b"], "full")
    with pytest.raises(ValueError, match="direction"):
        tb.build_ablation_table(df.assign(psnr=1.0), ["full"], "full", metrics=["psnr"])
    with pytest.raises(ValueError, match="aggregate"):
        tb.build_ablation_table(df, ["full"], "full", aggregate="max")
    with pytest.raises(DataError, match="krcc"):
        tb.build_ablation_table(df, ["full"], "full", metrics=["srcc", "krcc"])
    with pytest.raises(DataError, match="several rows"):
        tb.build_ablation_table(pd.concat([df, df.iloc[:1]]), ["full"], "full")
