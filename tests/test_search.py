"""Ablation grids and Optuna search through a real local Ray (CPU only)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from drx.cli import main as drx_main
from drx.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

# Trials of a few optimiser steps: the grid machinery is under test, not the learning.
FAST = {
    "train.epochs": 2,
    "train.steps_per_epoch": 3,
    "train.batch_size": 8,
    "train.eval_batch_size": 144,
    "data.test_crops": 1,
    "train.warmup_epochs": 0,
}


def write_spec(path: Path, **fields) -> Path:
    spec = {
        "name": "grid",
        "base": "tiny",
        "benchmarks": ["embedded"],
        "splits": [0, 1],
        "baseline": "full",
        "overrides": dict(FAST),
        "variants": {"full": {}, "image_encoder": {"model.variant": "image_encoder"}},
        **fields,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_scratch_folders_of_ended_trials_are_removed_and_live_or_foreign_ones_kept(tmp_path, monkeypatch):
    from drx.search.scratch import _start_time, make_trial_scratch, remove_orphaned_scratch

    monkeypatch.setenv("DRX_SCRATCH", str(tmp_path))
    mine = make_trial_scratch("full-embedded-s0/odd name")
    assert mine.parent == tmp_path and mine.name.startswith("full-embedded-s0_odd_name-")
    host = socket.gethostname()

    def folder(name: str, owner: str | None) -> Path:
        (tmp_path / name).mkdir()
        if owner is not None:
            (tmp_path / name / "owner").write_text(owner)
        return tmp_path / name

    dead = folder("dead", f"{host}\n{dead_pid()}\n\n")
    # A live pid whose start time differs is a reused pid: its trial has ended.
    reused = folder("reused", f"{host}\n{os.getpid()}\n{int(_start_time(os.getpid()) or 0) + 1}\n")
    foreign = folder("foreign", f"another-host\n{dead_pid()}\n\n")
    creating = folder("creating", None)
    garbled = folder("garbled", "not an owner record")
    removed = remove_orphaned_scratch()
    assert sorted(removed) == sorted([dead, reused] if _start_time(os.getpid()) else [dead])
    for kept in (mine, foreign, creating, garbled):
        assert kept.is_dir()


@pytest.fixture(scope="module")
def grid_experiment(tmp_path_factory):
    """One Ray run: 3 variants x 2 splits; one trial fails once after epoch 1, one variant diverges."""
    tmp = tmp_path_factory.mktemp("grid")
    spec = write_spec(
        tmp / "grid.yaml",
        variants={
            "full": {},
            "image_encoder": {"model.variant": "image_encoder"},
            "unstable": {"model.variant": "image_encoder", "train.lr": 1.0e12, "train.grad_clip": None},
        },
    )
    os.environ["DRX_FAULT_INJECT"] = "full-embedded-s1:1"
    try:
        rc = drx_main(["ablate", str(spec), "--storage", str(tmp / "exp"), "--max-failures", "2"])
    finally:
        del os.environ["DRX_FAULT_INJECT"]
    return rc, tmp / "exp" / "grid"


@pytest.mark.slow
def test_grid_runs_through_ray_and_lands_where_the_report_reads(grid_experiment):
    from drx.experiment import read_experiment

    rc, exp_dir = grid_experiment
    assert rc == 0
    exp = read_experiment(exp_dir)
    trials = exp.trials().set_index("trial")
    assert set(trials.index) == {f"{v}-embedded-s{s}" for v in ("full", "image_encoder", "unstable") for s in (0, 1)}
    # Every variant ran on the same persisted split file, made before the trials.
    split_files = {p["config"]["data"]["split"]["file"] for p in exp.plan}
    assert len(split_files) == 1 and Path(split_files.pop()).parent == exp_dir / "splits"
    per_split = exp.per_split()
    ok = per_split[per_split["variant"].isin(["full", "image_encoder"])]
    assert (ok["status"] == "ok").all() and ok["srcc"].notna().all()
    assert sorted(ok["split"].tolist()) == [0, 0, 1, 1]
    epochs = exp.epochs
    assert set(epochs[epochs["trial"] == "full-embedded-s0"]["epoch"]) == {1, 2}


@pytest.mark.slow
def test_a_trial_that_raises_is_retried_from_its_checkpoint(grid_experiment):
    from drx.experiment import read_experiment

    _, exp_dir = grid_experiment
    exp = read_experiment(exp_dir)
    t = exp.trials().set_index("trial").loc["full-embedded-s1"]
    assert t["status"] == "ok" and t["num_failures"] == 1
    rows = exp.epochs[exp.epochs["trial"] == "full-embedded-s1"]
    # Resumed after epoch 1: epoch 1 is not trained (or reported) twice.
    assert sorted(rows["epoch"].tolist()) == [1, 2]


@pytest.mark.slow
def test_a_diverging_trial_is_recorded_with_its_reason_and_not_retried(grid_experiment):
    from drx.experiment import read_experiment

    _, exp_dir = grid_experiment
    exp = read_experiment(exp_dir)
    trials = exp.trials().set_index("trial")
    for s in (0, 1):
        t = trials.loc[f"unstable-embedded-s{s}"]
        assert t["status"] == "diverged" and "non-finite loss" in t["reason"]
        assert t["num_failures"] == 0
    # The table shows the failure instead of dropping the row.
    from drx.report.commands import ablation_tables
    from drx.report.tables import to_markdown

    (stem, table), = ablation_tables(exp)
    md = to_markdown(table)
    assert "2 diverged" in md


# The killed-driver tests (grids and searches, one killing helper) are in test_resume.py.


@pytest.mark.slow
def test_rerunning_a_finished_grid_restores_it_and_runs_nothing_again(grid_experiment, tmp_path):
    import shutil

    _, exp_dir = grid_experiment
    copy = tmp_path / "exp" / "grid"
    shutil.copytree(exp_dir, copy)
    before = {p.parent.name: p.read_text() for p in (copy / "trials").glob("*/result.json")}
    spec = copy.parent / "grid.yaml"
    meta = json.loads((copy / "drx-experiment.json").read_text())
    spec.write_text(Path(meta["spec_file"]).read_text())
    assert drx_main(["ablate", str(spec), "--storage", str(copy.parent), "--resume"]) == 0
    after = {p.parent.name: p.read_text() for p in (copy / "trials").glob("*/result.json")}
    assert after == before


def test_unknown_keys_fail_before_ray_starts(tmp_path, capsys):
    spec = write_spec(tmp_path / "bad.yaml", variants={"full": {}, "typo": {"model.ddwm.grups": ["dis"]}})
    with pytest.raises(ConfigError, match="variant 'typo'.*model.ddwm.grups.*did you mean 'model.ddwm.groups'"):
        from drx.search.grid import load_ablation

        load_ablation(spec)
    rc = drx_main(["ablate", str(spec), "--storage", str(tmp_path / "exp")])
    assert rc == 2 and not (tmp_path / "exp").exists()
    assert "typo" in capsys.readouterr().err
    spec2 = write_spec(tmp_path / "bad2.yaml", baselin="full")
    with pytest.raises(ConfigError, match="baselin.*did you mean 'baseline'"):
        load_ablation(spec2)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"name": "s", "base": "tiny", "benchmark": "embedded", "space": {"train.lrr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}))
    with pytest.raises(ConfigError, match="train.lrr.*did you mean 'train.lr'"):
        from drx.search.space import load_search

        load_search(space)
    space.write_text(yaml.safe_dump({"name": "s", "base": "tiny", "benchmark": "embedded", "objective": "test_srcc", "space": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}))
    with pytest.raises(ConfigError, match="test metric"):
        load_search(space)


def test_gpu_requests_on_a_cpu_cluster_and_local_storage_on_many_nodes_fail_clearly(tmp_path):
    from drx.search.tune import check_resources, check_storage

    with pytest.raises(ConfigError, match="asks for 0.5 GPU but the Ray cluster has 0"):
        check_resources([("full-koniq-s0", 1.0, 0.5)], {"CPU": 2.0})
    check_resources([("full-koniq-s0", 1.0, 0.0)], {"CPU": 2.0})
    check_storage(str(tmp_path), 1)
    with pytest.raises(ConfigError, match="shared storage.*s3://"):
        check_storage(str(tmp_path), 3)
    check_storage("s3://bucket/experiments", 3)


@pytest.mark.parametrize("study", sorted((REPO / "drx" / "studies" / "ablations").glob("*.yaml")), ids=lambda p: p.name)
def test_every_ablation_study_validates(study, capsys):
    assert drx_main(["ablate", str(study), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "trials; baseline row" in out


@pytest.mark.parametrize("study", sorted((REPO / "drx" / "studies" / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_every_search_space_validates(study, capsys):
    assert drx_main(["tune", str(study), "--dry-run"]) == 0
    assert "first trial (the base config)" in capsys.readouterr().out


@pytest.mark.slow
def test_optuna_search_writes_a_loadable_study_with_the_base_config_first_and_confirms(tmp_path):
    space = {
        "name": "search",
        "base": "tiny",
        "benchmark": "embedded",
        "split": 0,
        "objective": "val_srcc",
        "overrides": dict(FAST),
        "space": {
            "train.lr": {"type": "loguniform", "low": 1.0e-4, "high": 3.0e-3},
            "model.ddwm.hidden": {"type": "choice", "values": [[128, 32, 16], [64]]},
        },
        "budget": {"num_samples": 3, "max_concurrent": 2},
        "scheduler": {"type": "asha", "grace_period": 1, "max_epochs": 2, "reduction_factor": 2},
        "confirm": {"top_k": 1, "splits": [0, 1]},
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(space))
    rc = drx_main(["tune", str(path), "--storage", str(tmp_path / "exp")])
    assert rc == 0
    exp_dir = tmp_path / "exp" / "search"
    meta = json.loads((exp_dir / "drx-experiment.json").read_text())
    study = optuna.load_study(study_name=meta["study_name"], storage=meta["optuna_storage"])
    trials = sorted(study.trials, key=lambda t: t.number)
    assert len(trials) == 3
    # The paper/base defaults were really evaluated, as trial 0.
    assert trials[0].params["train.lr"] == pytest.approx(1.0e-3)
    assert json.loads(trials[0].params["model.ddwm.hidden"]) == [128, 32, 16]
    assert trials[0].state == optuna.trial.TrialState.COMPLETE and trials[0].value is not None
    import pandas as pd

    confirm = pd.read_csv(exp_dir / "confirm.csv")
    assert len(confirm) == 1 and confirm.loc[0, "splits"] == "2/2"
    assert 0.0 <= abs(confirm.loc[0, "test_srcc (median)"]) <= 1.0
