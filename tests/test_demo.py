"""`drx demo` end to end: the demo grid (Table 4 and 5 variants) through a local Ray, then its report."""

from __future__ import annotations

import pandas as pd
import pytest

from drx.cli import main as drx_main

VARIANTS = ["image_encoder", "prior_only", "dsdm", "only_dis", "only_sem", "only_bri", "without_dis", "without_sem", "without_bri", "full"]


@pytest.mark.slow
def test_demo_runs_the_grid_and_writes_the_report(tmp_path, capsys):
    # The demo's own grid and report, with each of its 30 trials cut to two optimiser steps.
    quick = ["train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=8", "data.test_crops=1", "train.eval_batch_size=144"]
    out = tmp_path / "report"
    rc = drx_main(["demo", "--storage", str(tmp_path / "exp"), "--out", str(out), *sum((["--set", q] for q in quick), [])])
    assert rc == 0
    printed = capsys.readouterr().out
    # The Table 4/5 layout is printed, every variant a row, full as the baseline.
    for v in VARIANTS:
        assert f"| {v}" in printed
    assert "full (baseline)" in printed and "Embedded SRCC" in printed
    for name in ("report.html", "ablation.md", "ablation.tex", "ablation.csv", "results.parquet", "results.csv"):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text()
    for section in ("Ablation tables", "Module contributions", "Learning curves", "Expert weights", "Provenance"):
        assert section in html
    cells = pd.read_csv(out / "ablation.csv")
    assert set(cells["variant"]) == set(VARIANTS)
    assert (cells["n_ok"] == 3).all()
    tidy = pd.read_parquet(out / "results.parquet")
    assert tidy["trial"].nunique() == 30 and set(tidy["status"]) == {"ok"}
    assert "\\toprule" in (out / "ablation.tex").read_text()
    assert (tmp_path / "exp" / "demo" / "splits").is_dir()
