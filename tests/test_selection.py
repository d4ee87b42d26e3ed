"""Selection on a metric that can be undefined (issue 15, item 1): a selection part too small to
rank is refused when the split is made; a NaN epoch is never selected over a defined one; a trial
with no defined epoch has status ``no_selection`` (trainer, experiment reader, report); an Optuna
trial whose objective is NaN is recorded as failed, with the reason, in the study."""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pytest

from data_fixtures import make_csv, make_koniq, write_csv
from drx.cli import main as drx_main
from drx.config import load_config
from drx.errors import DataError
from drx.experiment import open_study_storage, read_experiment
from drx.report.commands import run_report
from drx.testing.synthetic import write_synthetic_experiment
from drx.train import trainer as T
from drx.train.checkpoint import BEST_NAME, CHECKPOINT_NAME, load_checkpoint
from drx.train.predict import load_trained

QUICK = ["train.epochs=3", "train.steps_per_epoch=2", "train.batch_size=8", "train.eval_batch_size=64", "data.test_crops=1",
         "train.warmup_epochs=0"]


def _csv_config(root, tmp_path, *extra):
    return load_config("tiny", [*QUICK, "data.benchmark=csv", f"data.root={root}", f"data.cache={tmp_path / 'cache'}", *extra])


# ------------------------------------------------------------------ refused when the split is made


def test_a_24_image_csv_with_the_default_split_is_refused_naming_the_numbers_and_the_option(tmp_path):
    b = make_csv(tmp_path / "b", n=24, size=(80, 64), groups=None)
    with pytest.raises(DataError) as err:
        T.build_trial_data(_csv_config(b.root, tmp_path))
    msg = str(err.value)
    # 24 images: 19 train+val (0.8), of which 2 validation (0.1): SRCC of 2 points is undefined.
    assert "the validation part of split 0 (2 of 19 training images at data.split.val_fraction 0.1) has 2 image(s)" in msg
    assert f"at least {5}" in msg and "raise data.split.val_fraction (to at least 0.27 here)" in msg
    # What the message asks for works: the part has 5 images and the trial data builds.
    data = T.build_trial_data(_csv_config(b.root, tmp_path, "data.split.val_fraction=0.27"))
    assert data.counts["val"] == 5


def test_a_constant_mos_validation_part_is_refused(tmp_path):
    # KonIQ's official split whose validation images all have MOS 50: no ranking is possible.
    mos = [10.0 + 3 * k for k in range(20)]
    mos[10:15] = [50.0] * 5
    b = make_koniq(tmp_path / "k", n=20, mos=mos, size=(80, 64))
    _write_sets(b, ["training"] * 10 + ["validation"] * 5 + ["test"] * 5, mos)
    cfg = load_config("tiny", [*QUICK, "data.benchmark=koniq", f"data.root={b.root}", "data.split.protocol=official"])
    with pytest.raises(DataError, match=r"the official validation part \(column 'set' of .*koniq10k_distributions_sets.csv\): "
                                         r"all 5 images have MOS 50, so SRCC/PLCC are undefined at every epoch: .*data.split.protocol random"):
        T.build_trial_data(cfg)


def test_select_on_test_checks_the_test_part(tmp_path):
    b = make_csv(tmp_path / "b", n=20, size=(80, 64), groups=None)
    cfg = _csv_config(b.root, tmp_path, "train.select_on=test", "data.split.train_fraction=0.9")
    with pytest.raises(DataError, match=r"the test part \(split 0\), which selects the epoch under train.select_on test, has 2 image\(s\).*"
                                         r"lower data.split.train_fraction"):
        T.build_trial_data(cfg)


def _write_sets(b, sets, mos):
    """KonIQ's koniq10k_distributions_sets.csv (image_name,c1..c5,c_total,MOS,SD,set; MOS = the z-score MOS)."""
    rows = [[n, 0.1, 0.2, 0.4, 0.2, 0.1, 100, m, 0.5, s] for n, m, s in zip(b.ids, mos, sets)]
    write_csv(b.root / "koniq10k_distributions_sets.csv", ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "set"], rows)


# ------------------------------------------------------------------------- selection in the loop


def _nan_at(monkeypatch, part_metric: str, epochs: set[int]):
    """Make `part_metric` (e.g. val_srcc) NaN at the given epochs, as constant predictions do."""
    real_evaluate, real_build = T.evaluate, T.build_trial_data
    part, metric = part_metric.split("_", 1)
    seen = {"val": None, "calls": 0}

    def build(cfg):
        data = real_build(cfg)
        seen["val"] = data.val
        return data

    def evaluate(model, dataset, cfg, mos_range):
        out = real_evaluate(model, dataset, cfg, mos_range)
        if (dataset is seen["val"]) == (part == "val"):
            seen["calls"] += 1
            if seen["calls"] in epochs:
                out = {**out, metric: float("nan")}
        return out

    monkeypatch.setattr(T, "evaluate", evaluate)
    monkeypatch.setattr(T, "build_trial_data", build)


def test_an_epoch_with_a_nan_selection_metric_is_never_selected(tmp_path, monkeypatch):
    _nan_at(monkeypatch, "val_srcc", {1, 3})
    result = T.run_trial(load_config("tiny", QUICK), out_dir=tmp_path, progress=False)
    assert [math.isnan(h["val_srcc"]) for h in result.history] == [True, False, True]
    assert result.status == "ok" and result.best_epoch == 2
    assert [h["best_epoch"] for h in result.history] == [None, 2, 2]
    assert load_checkpoint(tmp_path / BEST_NAME)["epoch"] == 2


def test_select_on_test_never_prefers_a_later_nan_epoch(tmp_path, monkeypatch):
    # Under select_on test a later epoch wins ties (>=); a NaN one must still never win.
    _nan_at(monkeypatch, "test_plcc", {2, 3})
    result = T.run_trial(load_config("tiny", [*QUICK, "train.select_on=test"]), progress=False)
    assert result.best_epoch == 1 and result.status == "ok"


def test_no_defined_epoch_gives_status_no_selection_and_no_best_weights(tmp_path, monkeypatch, capsys):
    _nan_at(monkeypatch, "val_srcc", {1, 2, 3})
    out = tmp_path / "run"
    rc = drx_main(["train", "--config", "tiny", *sum((["--set", o] for o in QUICK), []), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "trial no_selection: no epoch selected: val_srcc was NaN at all 3 epoch(s)" in err
    summary = json.loads((out / "result.json").read_text())
    assert summary["status"] == "no_selection" and summary["best_val_epoch"] is None
    assert "no best weights were written" in summary["reason"]
    assert not (out / BEST_NAME).exists() and (out / CHECKPOINT_NAME).is_file()
    # drx predict on the folder says it scores with the last epoch's weights.
    trained = load_trained(out)
    assert trained.checkpoint == out and "no " + BEST_NAME in trained.notes[0]


def test_the_experiment_reader_and_the_report_show_no_selection(tmp_path):
    syn = write_synthetic_experiment(tmp_path / "exp", n_variants=2, n_splits=3, n_epochs=3, n_benchmarks=1, failures=False, seed=1)
    exp = read_experiment(syn.path)
    victim = next(t for t in exp.plan if t["variant"] != exp.meta["baseline"])["name"]
    trial_dir = next(p for p in (syn.path / "trials").iterdir() if p.name == victim)
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]
    for r in rows:
        r.update({"val_srcc": float("nan"), "best_epoch": None})
    (trial_dir / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))

    exp = read_experiment(syn.path)
    t = exp.trials().set_index("trial").loc[victim]
    assert t["status"] == "no_selection"
    assert t["reason"].startswith("no epoch selected: val_srcc was NaN at all 3 epoch(s)")
    per_split = exp.per_split().set_index("trial")
    assert math.isnan(per_split.loc[victim, "srcc"])  # no selected epoch: no number in the tables
    out = tmp_path / "report"
    assert run_report(syn.path, out, say=lambda *_: None) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert '<span class="badge st-no_selection">1 no_selection</span>' in html
    assert "no epoch selected: val_srcc was NaN" in html
    tables = "".join(p.read_text() for p in out.glob("*.md"))
    assert "1 no_selection" in tables


# --------------------------------------------------------------------------------- the HPO study


def test_an_optuna_trial_with_a_nan_objective_is_recorded_failed_with_its_reason(tmp_path):
    from drx.search.tune import FAIL_REASON_ATTR, NanFailingOptunaSearch  # imports Ray: only here

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = NanFailingOptunaSearch(space={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)},
                                      metric="val_srcc", mode="max", study_name="s", storage=open_study_storage(url))
    for trial_id in ("a", "b", "c"):
        assert searcher.suggest(trial_id) is not None
    searcher.on_trial_complete("a", {"val_srcc": 0.61, "epoch": 3, "best_epoch": 2})
    searcher.on_trial_complete("b", {"val_srcc": float("nan"), "epoch": 3, "best_epoch": None})
    searcher.on_trial_complete("c", {"val_srcc": float("nan"), "epoch": 2, "status": "diverged",
                                     "reason": "non-finite loss (nan) at epoch 2, step 1"})
    study = optuna.load_study(study_name="s", storage=open_study_storage(url))
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.FAIL]
    assert study.trials[0].value == pytest.approx(0.61)
    assert study.trials[1].user_attrs[FAIL_REASON_ATTR] == (
        "objective val_srcc is nan after epoch 3: no epoch had a defined value (constant predictions or constant validation MOS)")
    assert study.trials[2].user_attrs[FAIL_REASON_ATTR].endswith("non-finite loss (nan) at epoch 2, step 1")
    assert study.best_trial.number == 0


def test_the_improvement_rule():
    assert not T._improves(None, None, "val") and not T._improves(None, 0.2, "test")
    assert T._improves(0.1, None, "val") and T._improves(0.3, 0.3, "test") and not T._improves(0.3, 0.3, "val")
    assert T._selection_value({"val_srcc": np.nan}, "val") is None and T._selection_value({"test_plcc": 0.5}, "test") == 0.5
