"""Experiment trackers and optuna-dashboard, against the real things: an ``mlflow server`` started
here on 127.0.0.1 and read back through MLflow's client, TensorBoard event files read by the
tensorboard package's EventAccumulator, W&B offline runs read by wandb's own ``.wandb`` reader
(``wandb leet inspect``), and a read-only SQLite study opened the way optuna-dashboard opens it."""

from __future__ import annotations

import html
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from drx.cli import main as drx_main
from drx.config import TrackingConfig, load_config
from drx.errors import ConfigError, TrackingError
from drx.experiment import dashboard_command, read_experiment, study_url
from drx.report.commands import run_report
from drx.search.grid import load_ablation
from drx.search.space import load_search
from drx.testing.synthetic import write_synthetic_experiment
from drx.train.tracking import Tracking, check_installed, final_metrics, run_identity, track_overrides, trial_status

from test_search import FAST, write_spec  # trials of a few optimiser steps, as the grid tests use

# The trackers are under test, not the weights: random initial weights need no built-in weights
# built, and a smaller test part (10 % of the images) keeps each epoch's evaluation short.
TRACKED = {**FAST, "model.backbone.pretrained": None, "model.prior.checkpoint": None, "data.split.train_fraction": 0.9}
EPOCHS = FAST["train.epochs"]
TAGS = ("study", "trial", "variant", "benchmark", "split")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expected_params(config: dict) -> dict[str, str]:
    """A trial's resolved config as the trackers' parameters: dotted keys (pandas' own flattening),
    strings as they are and other values as JSON, the tracking section and ``train.compile`` (how
    the same maths runs, not what it is) left out."""
    flat = pd.json_normalize({k: v for k, v in config.items() if k != "tracking"}, sep=".").to_dict("records")[0]
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in flat.items() if k != "train.compile"}


def wandb_records(run_dir: Path) -> list[dict]:
    """The records of an offline W&B run, read by wandb's own reader of its .wandb log."""
    out = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(run_dir)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


# ----------------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` (SQLite backend store in a temporary folder) on a free port."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (root / "server.log").open("w")
    # Its background job runners are not needed to log runs (and would start five more processes).
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--default-artifact-root", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited ({proc.returncode}): {(root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after 180 s: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        # The server and the uvicorn worker it started: its own session, ended together.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        log.close()


@pytest.fixture(scope="module")
def tracked_grid(tmp_path_factory, mlflow_server):
    """One Ray run of a 4-trial ablation (2 variants x 2 splits) with --track mlflow,tensorboard,wandb
    (W&B offline)."""
    tmp = tmp_path_factory.mktemp("tracked-grid")
    spec = write_spec(tmp / "grid.yaml", name="tracked", overrides=dict(TRACKED))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(tmp / "wandb-dir"))
        (tmp / "wandb-dir").mkdir()
        rc = drx_main(["ablate", str(spec), "--storage", str(tmp / "exp"), "--track", "mlflow,tensorboard,wandb",
                       "--set", f"tracking.mlflow_uri={mlflow_server}"])
    return rc, tmp, read_experiment(tmp / "exp" / "tracked")


@pytest.mark.slow
def test_an_ablation_grid_is_one_mlflow_experiment_with_one_run_per_trial(tracked_grid, mlflow_server):
    rc, _, exp = tracked_grid
    assert rc == 0
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    planned = {p["name"]: p for p in exp.plan}
    assert sorted(r.info.run_name for r in runs) == sorted(planned) and len(runs) == 4
    for run in runs:
        plan = planned[run.info.run_name]
        tags = run.data.tags
        assert {k: tags[k] for k in TAGS} == {"study": "tracked", "trial": plan["name"], "variant": plan["variant"],
                                             "benchmark": "embedded", "split": str(plan["split"])}
        assert tags["status"] == "ok" and run.info.status == "FINISHED"
        params = run.data.params
        expected = expected_params(plan["config"])
        assert {k: params[k] for k in expected} == expected
        # The keys pandas drops are the empty mappings (data.options: {}), logged as {}.
        assert all(params[k] == "{}" for k in set(params) - set(expected))
        assert not any(k.startswith("tracking.") for k in params)
        for metric in ("test_srcc", "val_srcc", "train_loss"):
            history = client.get_metric_history(run.info.run_id, metric)
            assert [m.step for m in history] == list(range(1, EPOCHS + 1))
        # The final result: the selected epoch's metrics, as the trial reported them.
        rows = exp.epochs[exp.epochs["trial"] == plan["name"]].set_index("epoch")
        best = int(run.data.metrics["selected_epoch"])
        assert run.data.metrics["selected_test_srcc"] == pytest.approx(rows.loc[best, "test_srcc"])


@pytest.mark.slow
def test_the_grid_in_tensorboard_one_folder_per_trial(tracked_grid):
    rc, tmp, exp = tracked_grid
    assert rc == 0
    group = tmp / "exp" / "tensorboard" / "tracked"
    assert sorted(p.name for p in group.iterdir()) == sorted(p["name"] for p in exp.plan)
    for p in exp.plan:
        events = EventAccumulator(str(group / p["name"]))
        events.Reload()
        scalars = events.Scalars("test_srcc")
        assert [s.step for s in scalars] == list(range(1, EPOCHS + 1))
        rows = exp.epochs[exp.epochs["trial"] == p["name"]].set_index("epoch")
        assert [s.value for s in scalars] == pytest.approx([rows.loc[e, "test_srcc"] for e in range(1, EPOCHS + 1)], abs=1e-6)
        # Tags and parameters in TensorBoard's HParams view.
        content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        assert hparams["variant"].string_value == p["variant"] and hparams["status"].string_value == "ok"
        assert hparams["train.lr"].number_value == pytest.approx(p["config"]["train"]["lr"])


@pytest.mark.slow
def test_the_grid_in_wandb_offline_one_run_per_trial_in_the_study_group(tracked_grid):
    rc, tmp, exp = tracked_grid
    assert rc == 0
    run_dirs = sorted((tmp / "wandb-dir" / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 4
    planned = {p["name"]: p for p in exp.plan}
    seen = set()
    for run_dir in run_dirs:
        records = wandb_records(run_dir)
        run = next(r["run"] for r in records if r["type"] == "run")
        plan = planned[run["display_name"]]
        seen.add(run["display_name"])
        assert run["run_group"] == "tracked" and run["project"] == "drx"
        assert f"variant:{plan['variant']}" in run["tags"] and f"split:{plan['split']}" in run["tags"]
        config = run["config"]["update"]
        assert config["train.lr"] == pytest.approx(plan["config"]["train"]["lr"])
        assert config["model.variant"] == plan["config"]["model"]["variant"]
        history = [r["history"] for r in records if r["type"] == "history"]
        assert [h["step"]["num"] for h in history] == list(range(1, EPOCHS + 1))
        assert all("test_srcc" in h["item"] for h in history)
        assert next(r["exit"] for r in records if r["type"] == "exit").get("exit_code", 0) == 0
    assert seen == set(planned)


@pytest.mark.slow
def test_drx_train_logs_the_same_through_the_same_code(tmp_path, capsys):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = [f"{k}={json.dumps(v)}" for k, v in TRACKED.items()]
    rc = drx_main(["train", "--config", "tiny", "--out", str(tmp_path / "run"), "--track", "mlflow",
                   "--set", f"tracking.mlflow_uri={store}", "--set", "name=lab-study/trial-7", *[a for s in sets for a in ("--set", s)]])
    assert rc == 0
    assert f"tracking: MLflow {store}, experiment 'lab-study'" in capsys.readouterr().out
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("lab-study").experiment_id])
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert run.info.run_name == "trial-7" and run.info.status == "FINISHED"
    assert {k: run.data.tags[k] for k in (*TAGS, "status")} == {
        "study": "lab-study", "trial": "trial-7", "variant": "full", "benchmark": "embedded", "split": "0", "status": "ok"}
    expected = expected_params(config)
    assert {k: run.data.params[k] for k in expected} == expected
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv").set_index("epoch")
    history = client.get_metric_history(run.info.run_id, "test_srcc")
    assert [(m.step, m.value) for m in history] == [(e, pytest.approx(metrics.loc[e, "test_srcc"])) for e in range(1, EPOCHS + 1)]


@pytest.mark.slow
def test_a_search_and_its_confirm_stage_are_tracked_and_the_dashboard_command_is_printed(tmp_path, capsys):
    space = {
        "name": "tracked-search", "base": "tiny", "benchmark": "embedded", "split": 0, "objective": "val_srcc",
        "overrides": dict(TRACKED), "space": {"train.lr": {"type": "loguniform", "low": 1.0e-4, "high": 3.0e-3}},
        "budget": {"num_samples": 1}, "scheduler": {"type": "fifo"}, "confirm": {"top_k": 1, "splits": [1]},
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(space))
    assert drx_main(["tune", str(path), "--storage", str(tmp_path / "exp"), "--track", "tensorboard"]) == 0
    out = capsys.readouterr().out
    exp_dir = tmp_path / "exp" / "tracked-search"
    db = (exp_dir / "optuna.db").resolve()
    assert f"optuna-dashboard 'sqlite:///file:{db}?mode=ro&uri=true'" in out
    group = tmp_path / "exp" / "tensorboard" / "tracked-search"
    runs = sorted(p.name for p in group.iterdir())
    assert len([r for r in runs if r.startswith("search-")]) == 1 and "top1-s1" in runs and len(runs) == 2
    for name in runs:
        events = EventAccumulator(str(group / name))
        events.Reload()
        assert [s.step for s in events.Scalars("val_srcc")] == list(range(1, EPOCHS + 1))
        content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        assert hparams["variant"].string_value == ("top1" if name == "top1-s1" else "search")
        assert hparams["split"].string_value == ("1" if name == "top1-s1" else "0")


# ------------------------------------------------------------------------ configuration and errors


def test_tracking_settings_are_validated_with_clear_errors():
    with pytest.raises(ConfigError, match=r"tracking\.backends\.0 = 'mlfow'.*did you mean 'mlflow'"):
        load_config("tiny", track_overrides("mlfow"))
    with pytest.raises(ConfigError, match="must not repeat"):
        load_config("tiny", ["tracking.backends=[wandb, wandb]"])
    with pytest.raises(ConfigError, match="unknown key 'tracking.uri' in tracking; valid keys: backends, mlflow_uri"):
        load_config("tiny", ["tracking.uri=http://localhost:5000"])
    with pytest.raises(TrackingError, match="separated by commas"):
        track_overrides("mlflow,,wandb")
    assert load_config("tiny", ["tracking.backends=tensorboard"]).tracking.backends == ["tensorboard"]


def test_a_missing_tracker_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # how Python reports a package that is not installed
    with pytest.raises(TrackingError, match=r"wandb needs the wandb package.*pip install 'drx\[wandb\]'"):
        check_installed(TrackingConfig(backends=["tensorboard", "wandb"]))


def test_an_unreachable_mlflow_server_fails_before_training(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingError, match=f"MLflow at {url} cannot open the experiment 'study'"):
        Tracking(TrackingConfig(backends=["mlflow"], mlflow_uri=url), "study", tmp_path)


def test_a_resumed_trial_continues_the_mlflow_run_its_interrupted_run_left(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config("tiny", ["name=study/t1", "tracking.backends=[mlflow]", f"tracking.mlflow_uri={store}"])
    epoch = {"status": "ok", "planned_epochs": 2, "val_srcc": 0.5, "test_srcc": 0.4, "best_epoch": 1}
    tracking = Tracking(cfg.tracking, "study", tmp_path)
    first = tracking.start(run_identity(cfg))
    first.log_epoch({**epoch, "epoch": 1})
    assert first.finish(interrupted=True) == "interrupted"
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["status"] == "interrupted"
    again = Tracking(cfg.tracking, "study", tmp_path).start(run_identity(cfg), resume=True)
    again.log_epoch({**epoch, "epoch": 2})
    again.finish()
    (run,) = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "ok"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_srcc")] == [1, 2]
    # Without resume (a new drx train of the same name) it is a new run.
    Tracking(cfg.tracking, "study", tmp_path).start(run_identity(cfg)).finish()
    assert len(client.search_runs([client.get_experiment_by_name("study").experiment_id])) == 2


def test_tracking_is_the_studys_and_not_part_of_what_a_trial_computes(tmp_path):
    spec = write_spec(tmp_path / "grid.yaml", overrides=dict(FAST))
    # Turning a tracker on resumes the same experiment.
    assert load_ablation(spec).fingerprint() == load_ablation(spec, track_overrides("mlflow,wandb")).fingerprint()
    bad = write_spec(tmp_path / "bad.yaml", overrides=dict(FAST), variants={"full": {"tracking.group": "mine"}})
    with pytest.raises(ConfigError, match="variant 'full'.*'tracking.group' cannot be set by a variant"):
        load_ablation(bad)
    space = {"name": "s", "base": "tiny", "benchmark": "embedded", "space": {"tracking.group": {"type": "choice", "values": ["a", "b"]}}}
    with pytest.raises(ConfigError, match="'tracking.group' cannot be set by the search space"):
        load_search(space)


def test_status_and_final_result_come_from_the_trials_reports():
    ok = [{"epoch": 1, "status": "ok", "planned_epochs": 2, "val_srcc": 0.5, "test_srcc": 0.4, "best_epoch": 1},
          {"epoch": 2, "status": "ok", "planned_epochs": 2, "val_srcc": 0.3, "test_srcc": 0.6, "best_epoch": 1}]
    assert trial_status(ok) == "ok" and trial_status(ok, failed=True) == "failed"
    assert final_metrics(ok) == {"epochs_completed": 2.0, "selected_epoch": 1.0, "selected_val_srcc": 0.5, "selected_test_srcc": 0.4}
    assert trial_status(ok[:1]) == "stopped"  # by the scheduler, before its planned epochs
    assert trial_status([{**ok[0], "best_epoch": None}, {**ok[1], "best_epoch": None}]) == "no_selection"
    assert trial_status([ok[0], {"epoch": 2, "status": "diverged", "planned_epochs": 2}]) == "diverged"


# ------------------------------------------------------------------------------ optuna-dashboard


def test_the_dashboard_command_opens_the_study_read_only(tmp_path):
    url = study_url(None, tmp_path)
    study = optuna.create_study(storage=url, study_name="s", direction="maximize")
    study.enqueue_trial({"x": 1.0})
    cmd = dashboard_command(url)
    ro_url = f"sqlite:///file:{(tmp_path / 'optuna.db').resolve()}?mode=ro&uri=true"
    assert cmd == f"optuna-dashboard '{ro_url}'"
    # Opened as optuna-dashboard opens an RDB URL: it reads the study, and a write fails.
    storage = optuna.storages.RDBStorage(ro_url, skip_compatibility_check=True, skip_table_creation=True)
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["s"]
    with pytest.raises(optuna.exceptions.StorageInternalError) as refused:
        optuna.create_study(storage=storage, study_name="another")
    assert "readonly database" in str(refused.value.__cause__)
    journal = tmp_path / "study.log"
    assert dashboard_command(f"journal:{journal}") == f"optuna-dashboard --storage-class JournalFileStorage {journal.resolve()}"
    assert dashboard_command("postgresql://drx@db/optuna") == "optuna-dashboard postgresql://drx@db/optuna"


def test_the_report_of_a_search_names_its_study_and_the_dashboard_command(tmp_path):
    syn = write_synthetic_experiment(tmp_path / "exp", n_variants=4, n_splits=2, n_epochs=2, kind="tune", failures=False, n_images=8)
    said = []
    run_report(syn.path, tmp_path / "report", say=said.append)
    url = read_experiment(syn.path).meta["optuna_storage"]
    page = html.unescape((tmp_path / "report" / "report.html").read_text())
    assert url in page and f"pip install optuna-dashboard && {dashboard_command(url)}" in page
    assert any(dashboard_command(url) in line for line in said)
