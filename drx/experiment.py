"""The experiment folder: its one definition (drx writes it in drx.search, reads it in drx.report).

``STORAGE/NAME/`` holds:

* ``drx-experiment.json``: what ran: kind (``ablate``/``tune``), the spec as given, the baseline
  variant, the selection rule, the plan fingerprint, versions, git commit, machine, wall times.
* ``plan.json``: every planned trial (name, variant, benchmark, split, fraction, resolved config),
  so a report can show trials that never ran.
* ``splits/``: the persisted split files every trial reads (made before any trial starts).
* ``.drx-driver.lock``: held by the running driver (one per experiment).
* ``trials/`` (ablate) or ``search/`` + ``confirm/`` (tune), and their continuations ``trials-r2``...
  after a kill (:func:`run_folders`): Ray Tune's run folders, one folder
  per trial with ``params.json`` and ``result.json`` (JSON lines, one per epoch), and Ray's
  ``checkpoint_NNNNNN/`` folders holding drx's trial checkpoint (:data:`TRIAL_CHECKPOINT`, the
  selected epoch's weights :data:`TRIAL_BEST`; format in :mod:`drx.train.checkpoint`).

Reading gives one tidy table (one row per trial x epoch); no Ray and no torch are needed. Works on
finished and partial experiments, with no Ray cluster running.

Trial ``status``: ``ok`` (all planned epochs), ``diverged`` (non-finite loss; reason kept),
``failed`` (raised, retries exhausted; the error's last line kept), ``stopped`` (ended early by the
search scheduler), ``no_selection`` (finished, but no epoch had a defined selection metric: every
epoch's validation SRCC, or test PLCC under ``train.select_on test``, was NaN, so no epoch was
selected), ``unfinished`` (started, not done: an interrupted or running experiment), ``missing``
(planned, never started).
"""

from __future__ import annotations

import json
import math
import os
import pickletools
import platform
import shlex
import socket
import sqlite3
import subprocess
import time
from contextlib import closing
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from drx.errors import DataError
from drx.io import NETWORK_FILESYSTEMS, atomic_write_bytes, atomic_write_json, filesystem_type
from drx.metrics import METRICS

META_NAME = "drx-experiment.json"
PLAN_NAME = "plan.json"
SPLITS_DIR = "splits"
ABLATE_RUN = "trials"
SEARCH_RUN = "search"
CONFIRM_RUN = "confirm"
CONFIRM_TABLE = "confirm.csv"
#: The lock the running ``drx ablate``/``drx tune`` holds in its experiment folder (the kernel
#: releases it when the driver dies, so a killed driver never blocks the rerun).
DRIVER_LOCK = ".drx-driver.lock"
FORMAT = "drx-experiment-v1"
#: drx's trial checkpoint and the selected epoch's weights, in a trial's output folder (written by
#: drx.train.checkpoint: safetensors, never a pickle).
TRIAL_CHECKPOINT = "checkpoint.safetensors"
TRIAL_BEST = "best.safetensors"
#: The trial status of a finished trial whose every epoch had an undefined (NaN) selection metric.
NO_SELECTION = "no_selection"


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("drx", "torch", "torchvision", "timm", "open_clip_torch", "ray", "optuna", "pandas", "scipy", "plotly", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit(start: Path | None = None) -> str | None:
    here = start or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine(gpus: list[str] | None = None) -> dict[str, Any]:
    """Host, platform, Python, CPU count, and the GPU names the caller found (this module has no torch)."""
    info: dict[str, Any] = {"host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    if gpus:
        info["gpus"] = list(gpus)
    return info


def read_meta(folder: str | Path) -> dict[str, Any]:
    p = Path(folder) / META_NAME
    if not p.is_file():
        raise DataError(f"{folder}: not a drx experiment folder (no {META_NAME}; expected the STORAGE/NAME folder of `drx ablate` or `drx tune`)")
    return json.loads(p.read_text())


def write_meta(exp_dir: Path, meta: dict[str, Any]) -> Path:
    """Write ``drx-experiment.json`` atomically."""
    return atomic_write_json(Path(exp_dir) / META_NAME, meta)


def write_plan(exp_dir: Path, trials: list[dict[str, Any]]) -> Path:
    """Write ``plan.json`` (one entry per planned trial) atomically."""
    return atomic_write_json(Path(exp_dir) / PLAN_NAME, trials)


def new_meta(kind: str, name: str, spec: dict[str, Any], source: str | None, fingerprint: str, extra: dict[str, Any],
             gpus: list[str] | None = None) -> dict[str, Any]:
    """The metadata of a new experiment (written by the search layer before any trial starts)."""
    return {
        "format": FORMAT,
        "kind": kind,
        "name": name,
        "spec": spec,
        "spec_file": source,
        "fingerprint": fingerprint,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "git_commit": git_commit(),
        "machine": machine(gpus),
        "runs": [],
        **extra,
    }


# ------------------------------------------------------------------------- resuming after a crash


def run_folders(exp_dir: Path, base: str) -> list[Path]:
    """``base``, then the fallback continuations ``base-r2``, ``base-r3``... in order."""
    found = [exp_dir / base] if (exp_dir / base).is_dir() else []
    extra = sorted((p for p in exp_dir.glob(f"{base}-r*") if p.is_dir() and p.name[len(base) + 2 :].isdigit()), key=lambda p: int(p.name[len(base) + 2 :]))
    return found + extra


def next_run_name(exp_dir: Path, base: str) -> str:
    runs = run_folders(exp_dir, base)
    return base if not runs else f"{base}-r{len(runs) + 1}"


#: Ray Tune's restore files in a run folder. ``tuner.pkl`` is written once when the run starts; the
#: others are snapshots Ray writes in a staging folder and then copies to storage. Neither write is
#: atomic at the destination, so a driver killed at the wrong moment leaves any of them cut short
#: (ray-project/ray#58179: an empty tuner.pkl). The search-state files are pickles whatever their suffix.
RAY_TUNER_FILE = "tuner.pkl"
RAY_EXPERIMENT_STATE = "experiment_state-*.json"
RAY_SEARCH_STATE = ("search_gen_state-*.json", "searcher-state-*.pkl", "basic-variant-state-*.json")
RAY_CALLBACK_STATE = "callback-states-*.pkl"
#: Suffix of a file moved aside (``NAME.torn-<unix time>``; ``.corrupt-`` from drx before 0.3). Ray
#: looks only for names ending in .json/.pkl, so a moved file is never restored from.
TORN_MARKS = (".torn-", ".corrupt-")


@dataclass
class RayRunCheck:
    """What :func:`check_ray_run` found in one Ray run folder."""

    restorable: bool  # Ray's experiment and search state are intact and agree with the trial folders
    tuner_torn: bool  # tuner.pkl was missing or cut short (moved aside): rebuild it before restoring
    moved: list[str]  # one line per file moved aside, saying which and why
    why: str | None = None  # why an intact state is still not restorable (it lags the trial folders)


def pickle_problem(path: Path) -> str | None:
    """Why the pickle at `path` cannot be complete (empty, cut short, not a pickle), or None.

    Reads the opcode stream with :mod:`pickletools` and never unpickles: no code in the file runs.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if not data:
        return "empty (0 bytes)"
    last = None
    try:
        for last, _, _ in pickletools.genops(data):
            pass
    except Exception as exc:  # pickletools raises ValueError, and others on garbage: all mean "damaged"
        return f"cut short or damaged ({len(data)} bytes: {exc})"
    if last is None or last.name != "STOP":
        return f"cut short ({len(data)} bytes, no end-of-pickle mark)"
    return None


def json_problem(path: Path) -> str | None:
    """Why the JSON file at `path` does not parse (empty, cut short), or None."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return f"unreadable ({exc})"
    if not text.strip():
        return f"empty ({len(text)} bytes)"
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"cut short or damaged ({len(text)} bytes: {exc.msg} at line {exc.lineno} column {exc.colno})"
    return None


def move_aside(path: Path, why: str) -> str:
    """Rename `path` to ``NAME.torn-<unix time>`` beside it; returns the one line that says so."""
    target = path.with_name(f"{path.name}{TORN_MARKS[0]}{int(time.time())}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}{TORN_MARKS[0]}{int(time.time())}-{n}")
        n += 1
    path.rename(target)
    return f"{path}: {why}; moved aside to {target.name}"


def _moved_before(run_dir: Path, patterns: tuple[str, ...]) -> bool:
    return any(next(run_dir.glob(f"{p}{mark}*"), None) is not None for p in patterns for mark in TORN_MARKS)


def check_ray_run(run_dir: Path) -> RayRunCheck:
    """Validate every file Ray restores a run from, before it tries; move the torn ones aside.

    * ``tuner.pkl`` missing or cut short: moved aside, ``tuner_torn`` (it only holds the run's
      settings, which the same command rebuilds);
    * an experiment state that does not parse, or a search-state pickle cut short: moved aside,
      and the run is not ``restorable`` (Ray would restore an older snapshot, or a searcher that
      starts over and repeats trials), now and on every later look (the moved file stays as the
      mark);
    * a callback-state pickle cut short: moved aside (drx's callbacks keep no state to restore);
    * an intact experiment state that lags the trial folders (``why`` says how): not restorable.

    Pickles are checked with :func:`pickle_problem` (never unpickled). Returns what was found.
    """
    moved: list[str] = []
    tuner = run_dir / RAY_TUNER_FILE
    tuner_torn = True
    if tuner.is_file():
        why = pickle_problem(tuner)
        if why is None:
            tuner_torn = False
        else:
            moved.append(move_aside(tuner, why))
    good_state = False
    for f in sorted(run_dir.glob(RAY_EXPERIMENT_STATE)):
        why = json_problem(f)
        if why is None:
            good_state = True
        else:
            moved.append(move_aside(f, why))
    for pattern in (*RAY_SEARCH_STATE, RAY_CALLBACK_STATE):
        for f in sorted(run_dir.glob(pattern)):
            why = pickle_problem(f)
            if why is not None:
                moved.append(move_aside(f, why))
    restorable = good_state and not _moved_before(run_dir, (RAY_EXPERIMENT_STATE, *RAY_SEARCH_STATE))
    why = _state_lags_folders(run_dir) if restorable else None
    return RayRunCheck(restorable and why is None, tuner_torn and good_state, moved, why)


def _state_lags_folders(run_dir: Path) -> str | None:
    """Why Ray's newest experiment state cannot be restored although it parses, or None. Ray
    snapshots it every ten seconds or more, so after a kill it may list a trial that finished
    since as still running (Ray would run it again) or miss a trial that started since (Ray would
    start it over from epoch 0). drx's trial folders, written as each epoch ends, tell."""
    newest = max(run_dir.glob(RAY_EXPERIMENT_STATE))
    try:
        listed = {}
        for entry in json.loads(newest.read_text())["trial_data"]:
            trial = json.loads(entry[0])
            listed[trial["relative_logdir"]] = trial["status"]
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        return f"{newest}: not in the format drx knows ({type(exc).__name__}: {exc}); the run is continued from its trial folders"
    for tdir in sorted(p for p in run_dir.iterdir() if p.is_dir() and (p / "params.json").is_file()):
        state, epoch = trial_progress(tdir)
        if state == "new":
            continue
        if tdir.name not in listed:
            return (f"{newest.name} predates trial {tdir.name} (it reached epoch {epoch}): Ray would start it over; "
                    "the run is continued from its trial folders instead")
        if state == "done" and listed[tdir.name] != "TERMINATED":
            return (f"{newest.name} lists trial {tdir.name} as {listed[tdir.name]} but it has finished: Ray would run it again; "
                    "the run is continued from its trial folders instead")
    return None


def last_result(trial_dir: Path) -> dict[str, Any]:
    """The last complete line of the trial's result.json (Ray's per-epoch results), or {}."""
    rows = _read_json_lines(Path(trial_dir) / "result.json")
    return rows[-1] if rows else {}


def trial_progress(trial_dir: Path) -> tuple[str, int]:
    """(``done``/``partial``/``new``, last epoch) of a trial folder, from its result.json and drx's
    status record: a trial the scheduler stopped early (record ``stopped``) is done too."""
    recorded = (read_trial_status(trial_dir) or {}).get("status")
    last = last_result(trial_dir)
    if not last:
        return "new", 0
    epoch = int(last.get("epoch") or 0)
    planned = int(last.get("planned_epochs") or 0)
    if last.get("status") == "diverged" or (planned and epoch >= planned) or recorded in ("ok", "stopped", "diverged"):
        return "done", epoch
    return "partial", epoch


def latest_checkpoint(trial_dir: Path) -> Path | None:
    """The trial's newest checkpoint folder (``checkpoint_NNNNNN`` holding drx's :data:`TRIAL_CHECKPOINT`), or None."""
    ckpts = sorted(p for p in trial_dir.glob("checkpoint_*") if (p / TRIAL_CHECKPOINT).is_file())
    return ckpts[-1] if ckpts else None


def explain_file(trial_dir: str | Path, filename: str) -> Path | None:
    """``explain/<filename>`` in the trial's newest checkpoint folder that holds one, or None."""
    found = sorted(Path(trial_dir).glob(f"checkpoint_*/explain/{filename}"))
    return found[-1] if found else None


# ------------------------------------------------------------------------- the trial status record

#: drx's own record of a trial's outcome, written by the search layer into each trial folder from
#: Ray's callbacks (start, each result, completion, error, retry). The report reads only this, never
#: Ray's private experiment state.
STATUS_NAME = "drx-status.json"
#: Values of ``status`` in the record (``running`` until Ray reports an end).
RECORD_STATUSES = ("running", "ok", "stopped", "diverged", "failed")


def write_trial_status(trial_dir: str | Path, status: str, reason: str | None = None, **fields: Any) -> Path:
    """Update ``<trial_dir>/drx-status.json``: `status` (one of RECORD_STATUSES), `reason`, and any
    other fields (``failures``: retries so far, ``epoch``, ``trial_id``, ``checkpoint``, ...); fields
    not given keep their recorded values."""
    if status not in RECORD_STATUSES:
        raise ValueError(f"trial status {status!r}; expected one of {RECORD_STATUSES}")
    path = Path(trial_dir) / STATUS_NAME
    record = read_trial_status(trial_dir) or {}
    record.update(fields)
    record.update({"status": status, "reason": reason, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return atomic_write_json(path, record)


def error_line(trial_dir: str | Path) -> str | None:
    """The last line of Ray's ``error.txt`` in a trial folder (the exception), or None."""
    err = Path(trial_dir) / "error.txt"
    if not err.is_file():
        return None
    lines = [ln.strip() for ln in err.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "error (error.txt is empty)"


def read_trial_status(trial_dir: str | Path) -> dict[str, Any] | None:
    """The trial's status record, or None when it has none (or it cannot be parsed)."""
    path = Path(trial_dir) / STATUS_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


# ------------------------------------------------------------------------- the Optuna study


#: How long an SQLite statement waits for another connection's lock (optuna-dashboard, a notebook's
#: ``optuna.load_study``, ``drx report``) before it fails. SQLite's own default is 5 s, shorter than
#: a dashboard's read; past this, the search retries the write with back-off (drx.search.study).
SQLITE_BUSY_TIMEOUT_S = 30.0
JOURNAL_PREFIX = "journal:"


def sqlite_file(url: str) -> Path | None:
    """The database file of an ``sqlite:///PATH`` URL (``sqlite:////abs/path`` is absolute), or
    None for other URLs and in-memory databases."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :].split("?", 1)[0]
    if path.startswith("file:"):
        path = path[len("file:") :]
    return Path(path) if path and path != ":memory:" else None


def journal_file(url: str) -> Path | None:
    """The log file of a ``journal:PATH`` URL, or None."""
    return Path(url[len(JOURNAL_PREFIX) :]) if url.startswith(JOURNAL_PREFIX) else None


def read_only_sqlite_url(db: Path) -> str:
    """The URL that opens the SQLite study `db` read-only (``mode=ro``): a stray write fails instead
    of taking the lock the search's writes wait for."""
    return f"sqlite:///file:{db.resolve()}?mode=ro&uri=true"


def dashboard_command(url: str) -> str:
    """The shell command that opens optuna-dashboard (an optional package) on the study storage `url`
    (as :func:`study_url` gives it), safe while the search runs.

    SQLite: through :func:`read_only_sqlite_url` (optuna-dashboard has no read-only switch; this
    URL is one: the dashboard's buttons that write fail, and its reads never lock the search out).
    A journal file (``journal:PATH``): the file, with optuna-dashboard's ``--storage-class
    JournalFileStorage`` (a reader takes no lock). Any other URL (PostgreSQL, MySQL) as it is:
    a read-only database user makes it safe."""
    log = journal_file(url)
    if log is not None:
        args = ["--storage-class", "JournalFileStorage", str(log.expanduser().resolve())]
    else:
        db = sqlite_file(url)
        args = [read_only_sqlite_url(db)] if db is not None else [url]
    return shlex.join(["optuna-dashboard", *args])


def sqlite_wal_possible(db: Path) -> bool:
    """Whether SQLite's WAL mode can be used for `db`: not on a network file system (NFS, Lustre,
    ...), where the shared memory WAL needs between processes does not exist."""
    return filesystem_type(db.parent) not in NETWORK_FILESYSTEMS


def _set_sqlite_journal_mode(db: Path) -> str | None:
    """Put `db` in WAL mode where possible (readers then never block the search's writes), else
    the rollback journal; the mode is stored in the file. Returns a line when it could not."""
    want = "wal" if sqlite_wal_possible(db) else "delete"
    try:
        with closing(sqlite3.connect(str(db), timeout=SQLITE_BUSY_TIMEOUT_S)) as con:
            got = con.execute(f"PRAGMA journal_mode={want}").fetchone()[0]
    except sqlite3.Error as exc:
        return f"{db}: could not set SQLite journal mode {want} ({exc}); continuing in the mode it has"
    return None if str(got).lower() == want else f"{db}: SQLite kept journal mode {got} (asked for {want})"


def check_study_storage(url: str) -> list[str]:
    """Validate the study's storage file before a search opens it for writing; returns one line per
    thing moved aside or repaired (nothing for server databases, which keep their own integrity).

    * SQLite: ``PRAGMA quick_check`` on a read-only connection; a file that is not a database or is
      malformed is moved aside (with its ``-wal``/``-shm``), and the search rebuilds the study
      from the trial folders. A lock held by another connection is not damage: the file is kept.
    * Journal: a last line cut short by a killed writer (Optuna skips it when reading, but the next
      append would glue onto it and make the log unreadable) is cut off and kept beside it as
      ``NAME.torn-<time>``; a damaged line before the end moves the whole log aside. A lock file
      left by a killed writer is removed (the caller holds the experiment's driver lock, so no
      other writer is alive; Optuna would otherwise wait 30 s and break it itself).
    """
    lines: list[str] = []
    db = sqlite_file(url)
    if db is not None and db.is_file() and db.stat().st_size > 0:
        why = None
        try:
            with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT_S)) as con:
                result = [r[0] for r in con.execute("PRAGMA quick_check").fetchall()]
            if result != ["ok"]:
                why = "SQLite integrity check failed: " + "; ".join(map(str, result[:3]))
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                why = f"SQLite cannot read it ({exc})"
        except sqlite3.DatabaseError as exc:
            why = f"not a readable SQLite database ({exc})"
        if why is not None:
            lines.append(move_aside(db, why) + "; the study is rebuilt from the trial folders")
            for extra in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"), db.with_name(db.name + "-journal")):
                if extra.exists():
                    move_aside(extra, "belongs to the database moved aside")
    log = journal_file(url)
    if log is not None and log.is_file():
        lock = log.with_name(log.name + ".lock")
        if lock.exists() or lock.is_symlink():
            lock.unlink()
            lines.append(f"{lock}: lock left by a killed writer; removed")
        lines.extend(_repair_journal(log))
    return lines


def _repair_journal(log: Path) -> list[str]:
    data = log.read_bytes()
    good = 0  # bytes of complete, parseable lines
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            json.loads(line)
        except ValueError:
            break
        good += len(line)
    if good == len(data):
        return []
    rest = data[good:]
    if b"\n" in rest.rstrip(b"\n"):  # damage before the last line: Optuna cannot replay past it
        return [move_aside(log, f"journal line at byte {good} does not parse and more lines follow") + "; the study is rebuilt from the trial folders"]
    stamp = int(time.time())
    atomic_write_bytes(log.with_name(f"{log.name}{TORN_MARKS[0]}{stamp}"), rest)
    with log.open("r+b") as fh:
        fh.truncate(good)
    return [f"{log}: last line cut short ({len(rest)} bytes, a writer was killed mid-append); cut off and kept in {log.name}{TORN_MARKS[0]}{stamp}"]


def open_study_storage(url: str, read_only: bool = False, rdb_class: Any = None, journal_class: Any = None):
    """The Optuna storage behind `url`: ``sqlite:///PATH`` or any RDB URL, or ``journal:PATH`` (a
    journal file, for shared file systems). The one opener: the search layer (which creates the
    study, passing its retrying storage classes) and the report (``read_only=True``) use it.

    SQLite is opened with a busy timeout of :data:`SQLITE_BUSY_TIMEOUT_S` (kept when Ray pickles the
    storage: it is an engine argument) and, for writers on a local file system, in WAL mode.
    ``read_only`` opens SQLite with ``mode=ro`` (a stray write fails instead of locking out the
    search) and neither creates tables nor a missing journal. Raises :class:`DataError` for a
    read-only open of a file that does not exist.
    """
    import optuna  # heavy, and only the search and the report's study views need it

    log = journal_file(url)
    if log is not None:
        from optuna.storages.journal import JournalFileBackend  # with optuna, above

        if read_only and not log.is_file():
            raise DataError(f"{log}: no such Optuna journal file")
        if not read_only:
            log.parent.mkdir(parents=True, exist_ok=True)
        return (journal_class or optuna.storages.JournalStorage)(JournalFileBackend(str(log)))
    db = sqlite_file(url)
    rdb = rdb_class or optuna.storages.RDBStorage
    if db is None:
        return rdb(url)
    engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    if read_only:
        if not db.is_file():
            raise DataError(f"{db}: no such Optuna database")
        return rdb(read_only_sqlite_url(db), engine_kwargs=engine_kwargs, skip_table_creation=True)
    db.parent.mkdir(parents=True, exist_ok=True)
    storage = rdb(url, engine_kwargs=engine_kwargs)  # creates the file and its tables
    note = _set_sqlite_journal_mode(db)
    if note:
        print(note, flush=True)
    return storage


#: Optuna user attribute of a trial drx marked FAIL because the driver that ran it was killed: the
#: reason. Its configuration continues as a new study trial (system attributes ``failed_trial`` and
#: ``retry_history``, Optuna's RetryHeartbeatStaleTrialCallback convention) from the last checkpoint.
LOST_ATTR = "drx_lost"
#: Optuna user attribute of a trial drx added from a finished trial folder the study did not know
#: (the study was rebuilt, or the driver died between the trial's end and Optuna's tell).
RECOVERED_ATTR = "drx_recovered"


def study_account(study) -> dict[str, int]:
    """How the study's trials ended: ``complete``, ``pruned``, ``failed`` (FAIL: raised after Ray's
    retries, or a NaN objective), ``lost`` (FAIL by drx: their driver was killed), ``continued``
    (trials that carry on a lost one), ``recovered`` (added from trial folders), ``running``, ``waiting``."""
    out = dict.fromkeys(("complete", "pruned", "failed", "lost", "continued", "recovered", "running", "waiting"), 0)
    for t in study.get_trials(deepcopy=False):
        state = t.state.name.lower()
        if state == "fail":
            out["lost" if LOST_ATTR in t.user_attrs else "failed"] += 1
        elif state in out:
            out[state] += 1
        if "failed_trial" in t.system_attrs:
            out["continued"] += 1
        if RECOVERED_ATTR in t.user_attrs:
            out["recovered"] += 1
    return out


def study_url(spec_storage: str | None, exp_dir: str | Path) -> str:
    """The study's storage URL: `spec_storage` as given, or SQLite in the experiment folder."""
    return spec_storage or f"sqlite:///{Path(exp_dir).resolve() / 'optuna.db'}"


# ------------------------------------------------------------------------- reading

ID_COLUMNS = ["run", "trial", "variant", "benchmark", "test_benchmark", "split", "fraction", "status", "reason", "epoch"]


def _read_json_lines(path: Path) -> list[dict[str, Any]]:
    rows = []
    if not path.is_file():
        return rows
    with path.open() as fh:
        for line in fh:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by a killed writer; the earlier lines stand
    return rows


def _no_selection_reason(results: list[dict[str, Any]]) -> str | None:
    """Why no epoch of a finished trial was selected (its last epoch reports ``best_epoch`` null:
    every epoch's selection metric was NaN), or None when one was."""
    ok = [r for r in results if r.get("status") == "ok"]
    if not ok or "best_epoch" not in ok[-1] or ok[-1]["best_epoch"] is not None:
        return None
    metric = "test_plcc" if ok[-1].get("select_on") == "test" else "val_srcc"
    return (f"no epoch selected: {metric} was NaN at all {len(ok)} epoch(s) (constant predictions or constant MOS); "
            "no best weights were written")


def read_run(run_dir: Path, meta: dict[str, Any], planned_epochs: int | None = None) -> pd.DataFrame:
    """Every trial folder of one Ray run: one row per reported epoch (or one status row)."""
    rows: list[dict[str, Any]] = []
    if not run_dir.is_dir():
        return pd.DataFrame(columns=ID_COLUMNS)
    for trial_dir in sorted(p for p in run_dir.iterdir() if p.is_dir() and (p / "params.json").is_file()):
        params = json.loads((trial_dir / "params.json").read_text())
        results = _read_json_lines(trial_dir / "result.json")
        record = read_trial_status(trial_dir) or {}
        # The last epoch reached (a continuation run holds only the epochs after its resume point).
        epochs_done = max((int(r.get("epoch") or 0) for r in results if r.get("status") == "ok"), default=0)
        last = results[-1] if results else {}
        planned = planned_epochs or last.get("planned_epochs")
        recorded = record.get("status")
        if last.get("status") == "diverged" or recorded == "diverged":
            status, reason = "diverged", last.get("reason") or record.get("reason")
        elif recorded == "failed":
            status, reason = "failed", record.get("reason") or "error"
        elif recorded in ("ok", "stopped") or (recorded is None and planned and epochs_done >= planned):
            # (No record: a run whose driver was killed before it could write one; the trial's own results tell.)
            status = "ok" if planned is None or epochs_done >= planned else "stopped"
            reason = None if status == "ok" else f"stopped by the scheduler after epoch {epochs_done}"
            unselected = _no_selection_reason(results)
            if unselected is not None:
                status, reason = NO_SELECTION, unselected
        else:
            status, reason = "unfinished", f"{'running or interrupted' if recorded else 'no drx status record'} after epoch {epochs_done}"
        base = {"run": run_dir.name, "trial": trial_dir.name, "trial_id": record.get("trial_id"), "status": status, "reason": reason,
                "num_failures": int(record.get("failures") or 0), "params": params, "path": str(trial_dir)}
        if not results:
            rows.append({**base, "epoch": np.nan})
        for r in results:
            # The epoch's own "status"/"reason" go to row_status; "status" is the trial's.
            row = {**base, **{k: v for k, v in r.items() if k not in ("config", "status", "reason") and not isinstance(v, (dict, list))}}
            row["epoch"] = r.get("epoch", np.nan)
            row["row_status"] = r.get("status")
            rows.append(row)
    return pd.DataFrame(rows)


def read_runs(exp_dir: Path, base: str, meta: dict[str, Any], planned_epochs: int | None = None) -> pd.DataFrame:
    """A run and its continuations (``base-rN``, after Ray's state was lost): one row per trial ×
    epoch, later runs superseding earlier ones; a trial's status is that of its latest run."""
    frames = []
    for order, run in enumerate(run_folders(exp_dir, base)):
        df = read_run(run, meta, planned_epochs)
        if len(df):
            df["run_order"] = order
            frames.append(df)
    if not frames:
        return pd.DataFrame(columns=ID_COLUMNS)
    df = pd.concat(frames, ignore_index=True)
    if len(frames) == 1:
        return df.drop(columns="run_order")
    latest = df.groupby("trial")["run_order"].transform("max")
    final = df[df["run_order"] == latest].drop_duplicates("trial").set_index("trial")
    # Each run's record counts its own retries (one value per row of the run): add them up per run, once.
    failures = df.groupby(["trial", "run_order"])["num_failures"].max().groupby("trial").sum()
    df = df.sort_values("run_order").drop_duplicates(["trial", "epoch"], keep="last")
    df = df[~(df["epoch"].isna() & df.duplicated("trial", keep=False))]
    for col in ("status", "reason", "run", "path"):
        df[col] = df["trial"].map(final[col])
    df["num_failures"] = df["trial"].map(failures)
    return df.drop(columns="run_order").sort_values(["trial", "epoch"]).reset_index(drop=True)


@dataclass
class Experiment:
    """A drx experiment, read back: metadata, plan, and the tidy per-epoch table."""

    path: Path
    meta: dict[str, Any]
    plan: list[dict[str, Any]]
    epochs: pd.DataFrame  # one row per trial × epoch (ID_COLUMNS first)

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    def trials(self) -> pd.DataFrame:
        """One row per trial: its last reported epoch."""
        df = self.epochs.sort_values(["trial", "epoch"], na_position="first")
        return df.groupby("trial", as_index=False, sort=False).tail(1).reset_index(drop=True)

    def per_split(self, selection: str = "best", run: str | None = None) -> pd.DataFrame:
        """One row per trial at its selected epoch: ``best`` (the trial's selection rule: best validation
        epoch, or best test PLCC under train.select_on test) or ``last``. Columns: variant,
        benchmark, split, fraction, status, srcc, plcc, krcc, rmse, plcc_logistic, epoch."""
        df = self.epochs if run is None else self.epochs[self.epochs["run"] == run]
        ids = ["run", "trial", "variant", "benchmark", "test_benchmark", "split", "fraction", "status", "reason"]
        metric_cols = [c for m in METRICS for c in (m, f"val_{m}")]
        if df.empty:
            return pd.DataFrame(columns=ids + metric_cols + ["epoch"])
        # Grouped, not one pandas call per trial: thousands of trials stay fast.
        ordered = df.sort_values(["trial", "epoch"], kind="stable", na_position="last")
        first = ordered.groupby("trial", sort=False).head(1).set_index("trial")
        order = list(pd.unique(df["trial"]))
        if self.plan:  # planned order (benchmark, variant, split as the spec lists them), not folder names
            rank = {p["name"]: i for i, p in enumerate(self.plan)}
            order.sort(key=lambda t: rank.get(t, len(rank)))
        out = first.reindex(order)
        # From plain lists, so column types are inferred as for any fresh frame (None -> NaN in text columns).
        out = pd.DataFrame({c: (list(out.index) if c == "trial" else out[c].tolist() if c in out else [None] * len(out)) for c in ids})
        pick = pd.DataFrame()
        if "row_status" in ordered:
            ok = ordered[(ordered["row_status"] == "ok") & ordered["status"].isin(["ok", "stopped", "unfinished"])]
            last = ok.groupby("trial", sort=False).tail(1).set_index("trial")
            pick = last
            if selection != "last" and len(last):
                best = pd.to_numeric(last["best_epoch"], errors="coerce") if "best_epoch" in last else pd.Series(np.nan, index=last.index)
                target = best.where(best.notna(), pd.to_numeric(last["epoch"], errors="coerce"))
                hit = ok[pd.to_numeric(ok["epoch"], errors="coerce").to_numpy() == ok["trial"].map(target).to_numpy()]
                match = hit.groupby("trial", sort=False).tail(1).set_index("trial")
                pick = pd.concat([match, last[~last.index.isin(match.index)]])
        for m in METRICS:
            for col, src in ((m, f"test_{m}"), (f"val_{m}", f"val_{m}")):
                if src in pick:
                    out[col] = out["trial"].map(pd.to_numeric(pick[src], errors="coerce")).astype(float)
                else:
                    out[col] = math.nan
        out["epoch"] = out["trial"].map(pick["epoch"]).astype(float) if "epoch" in pick else math.nan
        return out


def read_experiment(path: str | Path) -> Experiment:
    """Read a finished or partial ``drx ablate``/``drx tune`` experiment folder."""
    exp = Path(path)
    if not exp.is_dir():
        raise DataError(f"{path}: no such experiment folder")
    meta = read_meta(exp)
    plan_file = exp / PLAN_NAME
    plan = json.loads(plan_file.read_text()) if plan_file.is_file() else []
    frames = []
    if meta["kind"] == "ablate":
        by_name = {p["name"]: p for p in plan}
        df = read_runs(exp, ABLATE_RUN, meta)
        if len(df):
            for col in ("variant", "benchmark", "split", "fraction"):
                df[col] = df["trial"].map(lambda t, c=col: by_name.get(t, {}).get(c))
        seen = set(df["trial"]) if len(df) else set()
        missing = [
            {"run": ABLATE_RUN, "trial": p["name"], "variant": p["variant"], "benchmark": p["benchmark"], "split": p["split"],
             "fraction": p["fraction"], "status": "missing", "reason": "never started", "epoch": np.nan}
            for p in plan if p["name"] not in seen
        ]
        frames = [df, pd.DataFrame(missing)]
    else:
        spec = meta["spec"]
        bench = spec["benchmark"]["name"] if isinstance(spec["benchmark"], dict) else spec["benchmark"]
        max_epochs = meta.get("base_config", {}).get("train", {}).get("epochs")
        s = read_runs(exp, SEARCH_RUN, meta, planned_epochs=max_epochs)
        if len(s):
            s["variant"] = s["trial"]
            s["benchmark"] = bench
            s["split"] = spec.get("split", 0)
            s["fraction"] = 1.0
            for key in spec["space"]:
                s[f"param:{key}"] = s["params"].map(lambda p, k=key: _decode(p.get(k)))
        c = read_runs(exp, CONFIRM_RUN, meta, planned_epochs=max_epochs)
        if len(c):
            c["variant"] = c["trial"].str.rsplit("-s", n=1).str[0]
            c["benchmark"] = bench
            c["split"] = c["trial"].str.rsplit("-s", n=1).str[1].astype(int)
            c["fraction"] = 1.0
        frames = [s, c]
    frames = [f for f in frames if len(f)]
    epochs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ID_COLUMNS)
    if "test_benchmark" not in epochs:
        epochs["test_benchmark"] = None
    epochs["test_benchmark"] = epochs["benchmark"].map(lambda b: str(b).split("->")[1] if isinstance(b, str) and "->" in b else b)
    epochs["experiment"] = meta["name"]
    front = ["experiment", *ID_COLUMNS]
    rest = [c for c in epochs.columns if c not in front and c != "params"]
    return Experiment(exp, meta, plan, epochs[[c for c in front if c in epochs] + rest + (["params"] if "params" in epochs else [])])


def _decode(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v


def save_tidy(exp: Experiment, out_dir: Path) -> dict[str, Path]:
    """The tidy per-epoch table as Parquet and CSV (params as JSON text)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    df = exp.epochs.copy()
    if "params" in df:
        df["params"] = df["params"].map(lambda p: json.dumps(p, default=str) if isinstance(p, dict) else p)
    for c in df.columns:
        if df[c].dtype == object:
            df[c] = df[c].map(lambda v: json.dumps(v, default=str) if isinstance(v, (list, dict)) else v)
    paths = {"parquet": out_dir / "results.parquet", "csv": out_dir / "results.csv"}
    df.to_parquet(paths["parquet"], index=False)
    df.to_csv(paths["csv"], index=False)
    return paths


def confirm_summary(exp: Experiment, meta: dict[str, Any] | None = None) -> pd.DataFrame:
    """The confirm stage of a ``tune`` experiment, one row per confirmed candidate: the search's
    validation objective, how many splits finished, and the median test SRCC/PLCC over the
    persisted splits at each trial's selected epoch. Written as ``confirm.csv`` by ``drx tune``."""
    meta = meta or exp.meta
    per_split = exp.per_split("best", run=None)
    per_split = per_split[per_split["run"].astype(str).str.startswith(CONFIRM_RUN)]
    out = []
    for cand, info in meta.get("confirm_candidates", {}).items():
        sub = per_split[per_split["variant"] == cand]
        ok = sub[sub["status"] == "ok"]
        out.append({
            "candidate": cand,
            f"search {meta['objective']}": info["objective"],
            "splits": f"{len(ok)}/{len(sub)}",
            "test_srcc (median)": float(ok["srcc"].median()) if len(ok) else math.nan,
            "test_plcc (median)": float(ok["plcc"].median()) if len(ok) else math.nan,
            "params": json.dumps(info["params"]),
        })
    return pd.DataFrame(out)
