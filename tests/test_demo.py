"""`drx demo` end to end: the demo grid (Table 4 rows) through a local Ray, then its report."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from drx.cli import main as drx_main
from drx.search.grid import find_study

VARIANTS = ["image_encoder", "prior_only", "dsdm", "full"]
TABLE5 = ["only_dis", "only_sem", "only_bri", "without_dis", "without_sem", "without_bri", "full"]


def test_the_demo_studies_are_the_papers_table_4_and_table_5_rows_on_10_splits():
    demo = yaml.safe_load(find_study("demo", "ablation").read_text())
    assert list(demo["variants"]) == VARIANTS and demo["splits"] == "all" and demo["baseline"] == "full"
    table5 = yaml.safe_load(find_study("demo_table5", "ablation").read_text())
    assert list(table5["variants"]) == TABLE5 and table5["splits"] == "all"
    assert table5["overrides"] == demo["overrides"]  # one budget, so the two tables compare


@pytest.mark.slow
def test_demo_runs_the_grid_and_writes_the_report(tmp_path, capsys):
    # The demo's own study on two of its splits, each trial cut to two optimiser steps.
    spec = yaml.safe_load(find_study("demo", "ablation").read_text())
    spec["splits"] = [0, 1]
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(spec))
    quick = ["train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=8", "data.test_crops=1", "train.eval_batch_size=144"]
    out = tmp_path / "report"
    rc = drx_main(["demo", "--spec", str(path), "--storage", str(tmp_path / "exp"), "--out", str(out),
                   *sum((["--set", q] for q in quick), [])])
    assert rc == 0
    printed = capsys.readouterr().out
    # The Table 4 layout is printed, every variant a row, full as the baseline, and the wall time.
    for v in VARIANTS:
        assert f"| {v}" in printed
    assert "full (baseline)" in printed and "Embedded SRCC" in printed and "demo finished in" in printed
    for name in ("report.html", "ablation.md", "ablation.tex", "ablation.csv", "results.parquet", "results.csv"):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text()
    for section in ("Ablation tables", "Module contributions", "Learning curves", "Expert weights", "Provenance"):
        assert section in html
    cells = pd.read_csv(out / "ablation.csv")
    assert set(cells["variant"]) == set(VARIANTS)
    assert (cells["n_ok"] == 2).all()
    tidy = pd.read_parquet(out / "results.parquet")
    assert tidy["trial"].nunique() == 8 and set(tidy["status"]) == {"ok"}
    assert "\\toprule" in (out / "ablation.tex").read_text()
    assert (tmp_path / "exp" / "demo" / "splits").is_dir()
