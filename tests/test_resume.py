"""Grids and searches survive real failures: a SIGKILLed driver, Ray or Optuna files left torn, a
study held locked by a reader, a lost node. Real Ray, Optuna and SQLite throughout; the driver is
killed with SIGKILL (with everything it started), the damage is done to the real files, and every
rerun must finish the missing trials without running a finished one again."""

from __future__ import annotations

import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import optuna
import pytest
import yaml

from drx.cli import main as drx_main
from drx.errors import DataError
from drx.experiment import (
    LOST_ATTR, RECOVERED_ATTR, check_ray_run, check_study_storage, open_study_storage, pickle_problem, read_experiment,
    read_trial_status,
)

from test_search import FAST  # trials of a few optimiser steps, as the grid tests use

SPACE = {"train.lr": {"type": "loguniform", "low": 1.0e-4, "high": 3.0e-3}}


# ------------------------------------------------------------------------------ the killing helper


def session_pids(sid: int) -> list[int]:
    """Live processes of session `sid` (the driver and everything it started: Ray's GCS, raylet,
    workers), from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields[3]: the session id (proc(5) field 6)
            pids.append(int(stat.parent.name))
    return pids


def run_and_kill(cmd: list[str], kill_when: Callable[[], bool], log: Path, timeout: float = 400) -> float:
    """Start the drx command `cmd` in a session of its own, wait until `kill_when()` holds, then
    SIGKILL the driver and every process of its session at once (as a node's OOM killer or a
    scheduler's preemption would), and wait until they are gone. Returns the seconds it ran. The one
    killing helper of these tests, for ``drx ablate`` and ``drx tune`` alike."""
    t0 = time.time()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while not kill_when():
            if proc.poll() is not None:
                raise AssertionError(f"{cmd[3]} ended (exit {proc.returncode}) before the kill point:\n{log.read_text()[-3000:]}")
            if time.time() - t0 > timeout:
                raise AssertionError(f"the kill point was not reached in {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
    finally:
        for _ in range(50):
            pids = session_pids(proc.pid)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        proc.wait()
    assert not session_pids(proc.pid), "processes of the killed driver survived"
    return time.time() - t0


def finished(run_dirs: list[Path]) -> dict[str, tuple[int, str]]:
    """Trial folders whose drx status record says ok: name -> (result.json mtime in ns, its text)."""
    out = {}
    for run in run_dirs:
        for rec in run.glob("*/drx-status.json"):
            res = rec.parent / "result.json"
            if (read_trial_status(rec.parent) or {}).get("status") == "ok" and res.is_file():
                out[rec.parent.name] = (res.stat().st_mtime_ns, res.read_text())
    return out


def partial(run_dir: Path) -> list[str]:
    """Trial folders that reported an epoch and hold a checkpoint but have not finished."""
    names = []
    for res in run_dir.glob("*/result.json"):
        t = res.parent
        if (read_trial_status(t) or {}).get("status") == "running" and res.read_text().strip() and any(t.glob("checkpoint_*/checkpoint.*")):
            names.append(t.name)
    return names


def tear(path: Path, keep: float = 0.5) -> None:
    """Cut `path` short, as a copy interrupted by a kill leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def search_spec(path: Path, name: str, **fields) -> Path:
    spec = {
        "name": name, "base": "tiny", "benchmark": "embedded", "split": 0, "objective": "val_srcc", "overrides": dict(FAST),
        "space": SPACE, "budget": {"num_samples": 4, "max_concurrent": 2}, "scheduler": {"type": "fifo"},
        "confirm": {"top_k": 0}, **fields,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def hold(db: Path, mode: str, seconds: float) -> subprocess.Popen:
    """Another process holding `db`: ``read`` (an open read transaction, as optuna-dashboard or a
    notebook's load_study) or ``write`` (SQLite's exclusive write lock, which blocks every writer in
    any journal mode: the worst a reader can do on NFS, where there is no WAL)."""
    begin = "BEGIN EXCLUSIVE" if mode == "write" else "BEGIN"
    code = (f"import sqlite3, sys, time\ncon = sqlite3.connect({str(db)!r}, isolation_level=None, timeout=60)\n"
            f"con.execute({begin!r})\ncon.execute('SELECT count(*) FROM trials').fetchall()\n"
            f"print('held', flush=True)\ntime.sleep({seconds})\ncon.execute('COMMIT')\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# ------------------------------------------------------------------ Ray's restore files (no Ray)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch /nonexistent-drx-would-have-run-this",))


def test_torn_ray_files_are_found_without_unpickling_and_moved_aside(tmp_path):
    run = tmp_path / "trials"
    run.mkdir()
    (run / "tuner.pkl").write_bytes(pickle.dumps({"settings": _Boom()}))
    (run / "experiment_state-2026.json").write_text(json.dumps({"trial_data": []}))
    (run / "search_gen_state-2026.json").write_bytes(pickle.dumps({"counter": 3}))
    (run / "callback-states-2026.pkl").write_bytes(pickle.dumps({0: {}}))
    # Complete pickles pass, and checking one runs none of its code.
    assert pickle_problem(run / "tuner.pkl") is None
    check = check_ray_run(run)
    assert check.restorable and not check.tuner_torn and check.moved == []

    (run / "tuner.pkl").write_bytes(b"")  # ray-project/ray#58179: EOFError on every restore
    tear(run / "callback-states-2026.pkl")
    check = check_ray_run(run)
    assert check.restorable and check.tuner_torn  # the tuner's settings are rebuilt by the same command
    assert any("tuner.pkl: empty (0 bytes); moved aside" in line for line in check.moved)
    assert any("callback-states-2026.pkl: cut short" in line for line in check.moved)
    assert not (run / "tuner.pkl").exists() and len(list(run.glob("tuner.pkl.torn-*"))) == 1

    tear(run / "search_gen_state-2026.json")
    check = check_ray_run(run)
    assert not check.restorable and "search_gen_state-2026.json: cut short" in check.moved[0]
    # The moved file is the mark: a later look still refuses Ray's restore (its searcher would start over).
    assert not check_ray_run(run).restorable

    run2 = tmp_path / "trials-r2"
    run2.mkdir()
    (run2 / "experiment_state-2026.json").write_text('{"trial_data": [[')
    check = check_ray_run(run2)
    assert not check.restorable and "experiment_state-2026.json: cut short or damaged" in check.moved[0]


# ------------------------------------------------------------------------ the study (no Ray)


def _study(url: str, name: str = "s") -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=open_study_storage(url), study_name=name, direction="maximize", load_if_exists=True)


def test_sqlite_study_runs_in_wal_mode_and_the_report_opens_it_read_only(tmp_path):
    db = tmp_path / "optuna.db"
    study = _study(f"sqlite:///{db}")
    study.enqueue_trial({"train.lr": 1e-3})
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    ro = optuna.load_study(study_name="s", storage=open_study_storage(f"sqlite:///{db}", read_only=True))
    assert len(ro.trials) == 1
    with pytest.raises(Exception, match="commit"):  # attempt to write a readonly database
        ro.enqueue_trial({"train.lr": 2e-3})
    with pytest.raises(DataError, match="no such Optuna database"):
        open_study_storage(f"sqlite:///{tmp_path / 'missing.db'}", read_only=True)


def test_a_torn_sqlite_study_is_moved_aside(tmp_path):
    db = tmp_path / "optuna.db"
    study = _study(f"sqlite:///{db}")
    for _ in range(30):
        study.enqueue_trial({"train.lr": 1e-3})
    del study
    data = db.read_bytes()
    db.write_bytes(data[:4096] + b"\0" * (len(data) - 4096))
    lines = check_study_storage(f"sqlite:///{db}")
    assert len(lines) == 1 and "optuna.db:" in lines[0] and "moved aside" in lines[0] and "rebuilt from the trial folders" in lines[0]
    assert not db.exists() and list(tmp_path.glob("optuna.db.torn-*"))
    assert check_study_storage(f"sqlite:///{db}") == []


def test_a_journal_cut_mid_append_is_repaired_and_its_stale_lock_removed(tmp_path):
    log = tmp_path / "study.log"
    url = f"journal:{log}"
    study = _study(url)
    study.enqueue_trial({"train.lr": 1e-3})
    good = log.read_bytes()
    log.write_bytes(good + b'{"op_code": 5, "worker_id": "x", "trial')  # a writer killed mid-append
    os.symlink(str(log), str(log) + ".lock")  # ...while holding Optuna's journal lock
    lines = check_study_storage(url)
    assert any("lock left by a killed writer; removed" in ln for ln in lines)
    assert any("last line cut short" in ln for ln in lines)
    assert log.read_bytes() == good and not os.path.lexists(str(log) + ".lock")
    study = _study(url)
    study.enqueue_trial({"train.lr": 2e-3})  # appends after the cut: the log stays readable
    assert len(_study(url).trials) == 2
    # Damage before the end cannot be cut off: the whole log goes aside.
    log.write_bytes(b"not json\n" + log.read_bytes())
    lines = check_study_storage(url)
    assert "does not parse and more lines follow" in lines[0] and not log.exists()


def test_a_study_write_waits_out_a_lock_held_past_the_busy_timeout(tmp_path, monkeypatch, capsys):
    from drx import experiment
    from drx.search.study import open_search_storage

    monkeypatch.setattr(experiment, "SQLITE_BUSY_TIMEOUT_S", 1.0)  # SQLite's wait, shortened: the retries are under test
    db = tmp_path / "optuna.db"
    url = f"sqlite:///{db}"
    study = optuna.create_study(storage=open_search_storage(url), study_name="s", direction="maximize")
    trial = study.ask({"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    holder = hold(db, "write", 4)
    t0 = time.time()
    study.tell(trial, 0.5)  # a plain RDBStorage raises "database is locked" here after 1 s (Ray's on_trial_complete)
    assert time.time() - t0 >= 3
    holder.wait()
    assert study.trials[0].state.name == "COMPLETE"
    out = capsys.readouterr().out
    assert "database is locked" in out and "retry 1 in 1 s" in out


def test_the_journal_recipe_survives_a_reader_and_a_lock_held_by_a_dead_writer(tmp_path, capsys):
    from drx.search.study import open_search_storage

    log = tmp_path / "study.log"
    url = f"journal:{log}"
    study = optuna.create_study(storage=open_search_storage(url), study_name="s", direction="maximize")
    with log.open("rb") as reader:  # a reader with the log open (optuna-dashboard, drx report) blocks nothing
        reader.read(10)
        study.enqueue_trial({"train.lr": 1e-3})
    os.symlink(str(log), str(log) + ".lock")  # the lock of a writer that was killed
    study = optuna.create_study(storage=open_search_storage(url), study_name="s", direction="maximize", load_if_exists=True)
    assert "lock left by a killed writer; removed" in capsys.readouterr().out
    t0 = time.time()
    study.enqueue_trial({"train.lr": 2e-3})
    assert time.time() - t0 < 5 and len(study.trials) == 2


def _trial_folder(run: Path, name: str, lr: float, epochs: list[int], status: str, val: float = 0.3) -> Path:
    from drx.experiment import TRIAL_CHECKPOINT, write_trial_status

    t = run / name
    t.mkdir(parents=True)
    (t / "params.json").write_text(json.dumps({"train.lr": lr}))
    (t / "result.json").write_text("".join(json.dumps({"epoch": e, "status": "ok", "planned_epochs": 2, "val_srcc": val + e / 100}) + "\n"
                                           for e in epochs))
    for e in epochs:
        (t / f"checkpoint_{e - 1:06d}").mkdir()
        (t / f"checkpoint_{e - 1:06d}" / TRIAL_CHECKPOINT).write_bytes(b"weights")
    write_trial_status(t, status, epoch=max(epochs, default=0))
    return t


def test_reconcile_marks_dead_trials_requeues_them_from_checkpoints_and_never_repeats_a_start_point(tmp_path):
    from drx.search.space import load_search
    from drx.search.study import RETRY_DELAYS_S, ranked_configurations, reconcile, sampler_seed

    assert RETRY_DELAYS_S[0] >= 1
    plan = load_search({"name": "s", "base": "tiny", "benchmark": "embedded", "space": SPACE, "budget": {"num_samples": 5}})
    exp = tmp_path / "s"
    study = _study(f"sqlite:///{exp / 'optuna.db'}")
    dists = plan.distributions
    first = reconcile(study, plan, exp, 5, [dict(plan.defaults)])
    assert first.waiting == 1 and first.new == 4 and sampler_seed(0, study) == 1
    # A driver ran three trials and was killed: A finished, B had a checkpoint, C had finished in Ray
    # but was never told to Optuna.
    a, b, c = (study.ask(dists) for _ in range(3))
    study.tell(a, 0.31)
    run = exp / "search"
    _trial_folder(run, "search-a", a.params["train.lr"], [1, 2], "ok", 0.29)
    _trial_folder(run, "search-b", b.params["train.lr"], [1], "running")
    _trial_folder(run, "search-c", c.params["train.lr"], [1, 2], "ok", 0.40)
    ledger = reconcile(study, plan, exp, 5, [dict(plan.defaults)])
    states = {t.number: t for t in study.get_trials()}
    assert states[b.number].state.name == "FAIL" and "killed" in states[b.number].user_attrs[LOST_ATTR]
    assert states[c.number].state.name == "FAIL"  # its tell never came: lost ...
    recovered = [t for t in study.get_trials() if RECOVERED_ATTR in t.user_attrs]
    assert len(recovered) == 1 and recovered[0].value == pytest.approx(0.42)  # ... but its folder says it finished
    requeued = [t for t in study.get_trials() if t.state.name == "WAITING" and "failed_trial" in t.system_attrs]
    assert [t.params["train.lr"] for t in requeued] == [b.params["train.lr"]]
    # Optuna's convention (RetryHeartbeatStaleTrialCallback.retried_trial_number reads it).
    assert requeued[0].system_attrs["failed_trial"] == b.number and requeued[0].system_attrs["retry_history"] == [b.number]
    # B continues from its checkpoint under its own name; the start point (asked first: it was a) is not enqueued again.
    (resume,) = ledger.resume.values()
    assert resume.name == "search-b" and resume.checkpoint.endswith("checkpoint_000000")
    assert sum(1 for t in study.get_trials() if t.state.name == "WAITING") == 1 == ledger.waiting
    assert len(ledger.finished) == 2 and ledger.new == 2 and ledger.to_run == 3
    assert not [t for t in study.get_trials() if t.state.name == "RUNNING"]
    # A second look changes nothing; the confirm stage sees each configuration once.
    again = reconcile(study, plan, exp, 5, [dict(plan.defaults)])
    assert again.to_run == 3 and len(study.get_trials()) == len(states)
    study.add_trial(optuna.trial.create_trial(params=dict(a.params), distributions=dists, value=0.30))  # the same config again
    ranked = ranked_configurations(study, dists)
    assert [r[0] for r in ranked] == [pytest.approx(0.42), 0.31] and sampler_seed(0, study) > 3


# ------------------------------------------------------------------------ end to end, real Ray


@pytest.mark.slow
def test_a_killed_search_with_torn_ray_files_and_a_locked_study_finishes_its_budget_once(tmp_path, monkeypatch, capsys):
    """drx tune is SIGKILLed with two trials finished and others half-way; every Ray restore file is
    then torn. The rerun runs while a reader holds optuna.db for 60 s and a writer locks it past the
    busy timeout (shortened here to 5 s). It must end with the budget's configurations trained once each, the study and
    Ray in agreement, nothing left RUNNING, and a line for each file moved aside or wait retried."""
    monkeypatch.setenv("DRX_SCRATCH", str(tmp_path / "scratch"))
    spec = search_spec(tmp_path / "s.yaml", "s")
    storage = tmp_path / "exp"
    exp = storage / "s"
    cmd = [sys.executable, "-m", "drx.cli", "tune", str(spec), "--storage", str(storage)]
    run_and_kill(cmd, lambda: len(finished([exp / "search"])) >= 2 and bool(partial(exp / "search")), tmp_path / "first.log")
    before = finished([exp / "search"])
    cut = partial(exp / "search")
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{exp / 'optuna.db'}")
    assert [t.state.name for t in study.trials].count("RUNNING") >= len(cut)  # what the kill left: ray#11854's state
    for f in [exp / "search" / "tuner.pkl", *(exp / "search").glob("*state-*.json"), *(exp / "search").glob("*state-*.pkl")]:
        f.write_bytes(b"") if f.name == "tuner.pkl" else tear(f)

    db = exp / "optuna.db"
    holders: list[subprocess.Popen] = []
    from drx import experiment

    monkeypatch.setattr(experiment, "SQLITE_BUSY_TIMEOUT_S", 1.0)  # SQLite's own wait, far shorter than the hold below

    def lock_when_trials_report():
        holders.append(hold(db, "read", 60))  # optuna-dashboard / a notebook reading the study
        deadline = time.time() + 300
        while time.time() < deadline and not list((exp / "search-r2").glob("*/result.json")):
            time.sleep(0.2)
        holders.append(hold(db, "write", 20))  # the next report or tell comes inside it, past the busy timeout: it is retried

    locker = threading.Thread(target=lock_when_trials_report)
    locker.start()
    t0 = time.time()
    rc = drx_main(["tune", str(spec), "--storage", str(storage)])
    locker.join()
    assert all(h.wait() == 0 for h in holders) and len(holders) == 2
    out = capsys.readouterr().out
    print(out, f"\nrerun took {time.time() - t0:.0f} s")
    assert rc == 0
    for name in ("tuner.pkl", "experiment_state-", "search_gen_state-", "searcher-state-"):
        assert any(name in line and "moved aside" in line for line in out.splitlines()), name
    assert "left RUNNING by a killed driver: marked FAIL" in out
    assert "database is locked" in out and "retry 1 in 1 s" in out

    # Nothing that had finished ran again.
    after = finished([exp / "search"])
    assert {n: after[n] for n in before} == before
    # The budget's configurations, each trained once, and the study agrees with Ray's trial folders.
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and "WAITING" not in states
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and len({t.params["train.lr"] for t in complete}) == 4
    lost = [t for t in study.trials if t.state.name == "FAIL"]
    assert lost and all("killed" in t.user_attrs[LOST_ATTR] for t in lost)
    folders = finished([exp / "search", exp / "search-r2"])
    assert len(folders) == 4
    params = {json.loads((p / "params.json").read_text())["train.lr"] for r in ("search", "search-r2") for p in (exp / r).glob("search-*")
              if p.name in folders}
    assert params == {t.params["train.lr"] for t in complete}
    # The half-way trials continued from their checkpoints: epoch 1 was not trained again.
    tidy = read_experiment(exp)
    for name in cut:
        rows = tidy.epochs[tidy.epochs["trial"] == name]
        assert sorted(rows["epoch"].tolist()) == [1, 2] and set(rows["status"]) == {"ok"}
        assert [json.loads(x)["epoch"] for x in (exp / "search-r2" / name / "result.json").read_text().splitlines()] == [2]


@pytest.mark.slow
def test_a_killed_grid_resumes_past_a_torn_tuner_pkl_then_a_torn_experiment_state(tmp_path, monkeypatch):
    """drx ablate killed twice: first tuner.pkl is left empty (ray-project/ray#58179: an EOFError on
    every rerun), and the rerun restores the grid in place; then the experiment state is cut short,
    and the rerun continues the unfinished trials from their checkpoints in trials-r2."""
    import socket

    scratch = tmp_path / "scratch"
    monkeypatch.setenv("DRX_SCRATCH", str(scratch))  # inherited by the drivers below and by Ray's workers
    spec = tmp_path / "kill.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "kill", "base": "tiny", "benchmarks": ["embedded"], "splits": [0, 1], "baseline": "full", "overrides": dict(FAST),
        "variants": {"full": {}, "image_encoder": {"model.variant": "image_encoder"}},
    }, sort_keys=False))
    storage = tmp_path / "exp"
    run_dir = storage / "kill" / "trials"
    cmd = [sys.executable, "-m", "drx.cli", "ablate", str(spec), "--storage", str(storage), "--max-concurrent", "1"]

    def snapshot_agrees() -> bool:  # Ray's last snapshot lists the finished trial as finished (it lags by up to ~10 s)
        done, cut = finished([run_dir]), partial(run_dir)
        states = {}
        for f in run_dir.glob("experiment_state-*.json"):
            try:
                states = {json.loads(t[0])["relative_logdir"]: json.loads(t[0])["status"] for t in json.loads(f.read_text())["trial_data"]}
            except ValueError:
                return False
        return bool(done) and bool(cut) and all(states.get(n) == "TERMINATED" for n in done) and all(n in states for n in cut)

    run_and_kill(cmd, snapshot_agrees, tmp_path / "first.log")
    (run_dir / "tuner.pkl").write_bytes(b"")
    first, cut = finished([run_dir]), partial(run_dir)

    run_and_kill(cmd, lambda: len(finished([run_dir])) > len(first), tmp_path / "second.log")
    log = (tmp_path / "second.log").read_text()
    assert "tuner.pkl: empty (0 bytes); moved aside" in log and "tuner.pkl: written again" in log and f"resuming {run_dir}" in log
    assert not (storage / "kill" / "trials-r2").exists()
    second = finished([run_dir])
    assert {n: second[n] for n in first} == first
    for name in cut:  # restored by Ray from its checkpoint: epoch 1 not trained again
        assert [json.loads(x)["epoch"] for x in (run_dir / name / "result.json").read_text().splitlines()] == [1, 2]
    # Ray copies its experiment state to storage non-atomically: a kill during the copy cuts it short.
    for state in run_dir.glob("experiment_state-*.json"):
        state.write_text(state.read_text()[:20])
    # A scratch folder of a process that has ended (the killed trial's may or may not exist).
    orphan = scratch / "orphan-trial-x"
    orphan.mkdir(parents=True)
    (orphan / "checkpoint.safetensors").write_bytes(b"0" * 1000)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    (orphan / "owner").write_text(f"{socket.gethostname()}\n{ended.pid}\n\n")

    assert drx_main(["ablate", str(spec), "--storage", str(storage), "--max-concurrent", "1"]) == 0
    assert (storage / "kill" / "trials-r2").is_dir()
    assert sorted(p.name for p in scratch.iterdir()) == []  # the rerun's trials removed theirs; the dead one was swept
    exp = read_experiment(storage / "kill")
    assert (exp.trials()["status"] == "ok").all() and len(exp.trials()) == 4
    after = finished([run_dir])
    assert {n: after[n] for n in second} == second  # no finished trial ran again


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


@pytest.mark.slow
def test_a_lost_node_costs_no_trial_and_no_epoch(tmp_path, monkeypatch):
    """A two-node Ray cluster on this machine (Ray's own cluster_utils: a head and a worker node,
    each its own raylet), the driver attached with --address as on a real cluster. The worker node
    is killed while both trials run: its trial resumes on the head from its last checkpoint."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("DRX_SCRATCH", str(tmp_path / "scratch"))  # the raylets (and so the trials) inherit it
    quick = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 10**8, "_system_config": quick})
    try:
        worker = cluster.add_node(num_cpus=1, object_store_memory=10**8)
        cluster.wait_for_nodes()
        raylet = worker.all_processes["raylet"][0].process.pid
        spec = tmp_path / "node.yaml"
        spec.write_text(yaml.safe_dump({
            "name": "node", "base": "tiny", "benchmarks": ["embedded"], "splits": [0, 1], "baseline": "full",
            "overrides": {**FAST, "train.epochs": 3}, "variants": {"full": {}},
        }, sort_keys=False))
        run_dir = tmp_path / "exp" / "node" / "trials"
        log = tmp_path / "driver.log"
        with log.open("w") as out:
            driver = subprocess.Popen([sys.executable, "-m", "drx.cli", "ablate", str(spec), "--storage", str(tmp_path / "exp"),
                                       "--address", cluster.address], stdout=out, stderr=subprocess.STDOUT)
        on_worker: str | None = None
        deadline = time.time() + 400
        while on_worker is None and time.time() < deadline and driver.poll() is None:
            for res in run_dir.glob("*/result.json"):
                lines = res.read_text().splitlines()
                if lines and _parent(json.loads(lines[0])["pid"]) == raylet:  # the trial's process is a worker of that node
                    on_worker = res.parent.name
            time.sleep(0.2)
        assert on_worker is not None, f"no trial reported from the worker node:\n{log.read_text()[-3000:]}"
        cluster.remove_node(worker, allow_graceful=False)  # the node dies: raylet and its workers killed
        assert driver.wait(timeout=400) == 0, log.read_text()[-3000:]
    finally:
        cluster.shutdown()
    exp = read_experiment(tmp_path / "exp" / "node")
    trials = exp.trials().set_index("trial")
    assert (trials["status"] == "ok").all() and len(trials) == 2
    assert trials.loc[on_worker, "num_failures"] == 1 and trials["num_failures"].sum() == 1
    epochs = [json.loads(x)["epoch"] for x in (run_dir / on_worker / "result.json").read_text().splitlines()]
    assert epochs == [1, 2, 3]  # continued from its checkpoint: no epoch trained (or reported) twice, none from epoch 0
    assert "actor" in (run_dir / on_worker / "error.txt").read_text()  # Ray's account: the trial's actor was lost with its node


@pytest.mark.slow
def test_a_restore_ray_cannot_do_stops_before_anything_runs_and_names_the_file_and_the_command(tmp_path):
    """Ray reports a failed restore only in its log, then starts the run over from nothing (or
    waits forever on a searcher restored halfway). Here its search state is a complete pickle that
    cannot be loaded (a class that no longer exists): drx stops at Ray's first step, moves the
    experiment state aside, and names it and the command that continues."""
    import argparse

    import ray
    from ray import tune

    from drx.search.commands import continue_command, continue_hint
    from drx.search.tune import StuckRunError, _fit, _run_config, restore_run

    def trainable(config):
        tune.report({"x": float(config["i"])})

    def make(run_name: str) -> tune.Tuner:
        return tune.Tuner(trainable, param_space={"i": tune.grid_search([0, 1])}, run_config=_run_config(run_name, str(tmp_path), 0, []))

    ray.init(num_cpus=1, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        _fit(make("trials"))
        run = tmp_path / "trials"
        (state,) = run.glob("basic-variant-state-*.json")
        state.write_bytes(b"cdrx_renamed_module\nGridState\n.")  # a whole pickle of a global that is gone
        assert pickle_problem(state) is None and check_ray_run(run).restorable
        before = {p: p.stat().st_mtime_ns for p in run.glob("*/result.json")}
        args = argparse.Namespace(spec="grid.yaml", storage="/data/exp dir", name=None, address=None, set=["train.epochs=2"])
        lines: list[str] = []
        with pytest.raises(StuckRunError) as err, continue_hint(args, "ablate"):
            restore_run(run, make, trainable, lines.append)
    finally:
        ray.shutdown()
    msg = str(err.value)
    assert f"Ray could not restore {run} (ModuleNotFoundError: No module named 'drx_renamed_module')" in msg
    assert "experiment_state-" in msg and "moved aside" in msg and list(run.glob("experiment_state-*.json.torn-*"))
    assert msg.endswith(f"Run `{continue_command(args, 'ablate')}` to continue the unfinished trials from their last checkpoints.")
    assert continue_command(args, "ablate") == "drx ablate grid.yaml --storage '/data/exp dir' --set train.epochs=2"
    assert {p: p.stat().st_mtime_ns for p in run.glob("*/result.json")} == before  # Ray started nothing over
    assert not check_ray_run(run).restorable  # the rerun continues from the trial folders


def test_a_second_driver_on_a_running_experiment_is_refused(tmp_path, capsys):
    """Marking the study's RUNNING trials dead is right only when no other driver is alive: one
    driver per experiment folder (its lock dies with it, so a killed driver never blocks a rerun)."""
    from drx.experiment import DRIVER_LOCK

    spec = tmp_path / "grid.yaml"
    spec.write_text(yaml.safe_dump({"name": "grid", "base": "tiny", "benchmarks": ["embedded"], "splits": [0], "baseline": "full",
                                    "variants": {"full": {}}}))
    exp_dir = tmp_path / "exp" / "grid"
    exp_dir.mkdir(parents=True)
    code = "import sys, time\nfrom filelock import FileLock\nlock = FileLock(sys.argv[1])\nlock.acquire()\nprint('held', flush=True)\ntime.sleep(60)\n"
    holder = subprocess.Popen([sys.executable, "-c", code, str(exp_dir / DRIVER_LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert drx_main(["ablate", str(spec), "--storage", str(tmp_path / "exp")]) == 2
    finally:
        holder.kill()
        holder.wait()
    assert "another drx ablate/tune is running this experiment" in capsys.readouterr().err
    assert not (exp_dir / "trials").exists()


def test_the_report_says_how_many_search_trials_were_lost_retried_or_failed(tmp_path):
    from drx.report.figures import load_study
    from drx.report.html import search_account
    from drx.testing.synthetic import write_synthetic_experiment

    syn = write_synthetic_experiment(tmp_path / "exp", n_variants=5, n_splits=2, n_epochs=2, kind="tune", seed=1, n_images=12)
    exp = read_experiment(syn.path)
    study = optuna.load_study(study_name=exp.meta["study_name"], storage=exp.meta["optuna_storage"])
    failed = sum(t.state.name == "FAIL" for t in study.trials)
    lost = study.ask(study.trials[0].distributions)  # a trial a killed driver left RUNNING, marked by drx, then continued
    optuna.trial.Trial(study, lost._trial_id).set_user_attr(LOST_ATTR, "its driver was killed")
    study.tell(lost, state=optuna.trial.TrialState.FAIL)
    study.add_trial(optuna.trial.create_trial(params=lost.params, distributions=study.trials[0].distributions, value=0.5,
                                              system_attrs={"failed_trial": lost.number, "retry_history": [lost.number]}))
    text = search_account(exp, load_study(exp))
    complete = sum(t.state.name == "COMPLETE" for t in study.trials)
    assert text.startswith(f"Search trials: {complete} complete in the Optuna study, 1 lost to a killed driver (1 continued")
    assert f"{failed} failed" in text and "retried by Ray after an error" in text


@pytest.mark.slow
def test_a_search_on_the_journal_recipe_runs_past_a_dead_writers_lock_and_a_torn_line(tmp_path, monkeypatch, capsys):
    """docs/cluster.md's shared-storage recipe (`storage: journal:...`) through a real search: the
    journal a killed driver left (its lock file, a last line cut mid-append) is repaired, readers of
    the log block nothing, and the study ends with the budget's trials complete and none RUNNING."""
    monkeypatch.setenv("DRX_SCRATCH", str(tmp_path / "scratch"))
    log = tmp_path / "shared" / "study.log"
    spec = search_spec(tmp_path / "j.yaml", "j", storage=f"journal:{log}", budget={"num_samples": 2, "max_concurrent": 2})
    study = optuna.create_study(storage=open_study_storage(f"journal:{log}"), study_name="j", direction="maximize")
    del study
    log.write_bytes(log.read_bytes() + b'{"op_code": 4, "worker_id": "dead"')  # a writer killed mid-append ...
    os.symlink(str(log), str(log) + ".lock")  # ... while holding the journal's lock
    stop = threading.Event()

    def read_all_along():  # optuna-dashboard polling the log
        while not stop.is_set():
            with log.open("rb") as fh:
                fh.read()
            time.sleep(0.5)

    reader = threading.Thread(target=read_all_along)
    reader.start()
    t0 = time.time()
    try:
        rc = drx_main(["tune", str(spec), "--storage", str(tmp_path / "exp")])
    finally:
        stop.set()
        reader.join()
    out = capsys.readouterr().out
    print(out, f"\ntook {time.time() - t0:.0f} s")
    assert rc == 0
    assert "lock left by a killed writer; removed" in out and "last line cut short" in out
    study = optuna.load_study(study_name="j", storage=open_study_storage(f"journal:{log}", read_only=True))
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE"]
    assert len({t.params["train.lr"] for t in study.trials}) == 2


def test_only_errors_that_may_pass_are_retried(tmp_path):
    from drx.search.study import is_transient

    db = tmp_path / "x.db"
    sqlite3.connect(db).execute("CREATE TABLE t (a)").connection.commit()
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"sqlite:///{db}", connect_args={"timeout": 0.1})
    with pytest.raises(sqlalchemy.exc.OperationalError) as locked:
        with engine.begin() as con:
            con.execute(sqlalchemy.text("INSERT INTO t VALUES (1)"))
    locker.execute("COMMIT")
    with pytest.raises(sqlalchemy.exc.OperationalError) as missing:
        with engine.begin() as con:
            con.execute(sqlalchemy.text("INSERT INTO nope VALUES (1)"))
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = locked.value
    assert is_transient(locked.value) and is_transient(wrapped) and is_transient(TimeoutError("nfs"))
    assert not is_transient(missing.value) and not is_transient(ValueError("nan")) and not is_transient(FileNotFoundError("x"))
