"""The experiment folder: its one definition (drx writes it in drx.search, reads it in drx.report).

``STORAGE/NAME/`` holds:

* ``drx-experiment.json``: what ran: kind (``ablate``/``tune``), the spec as given, the baseline
  variant, the selection rule, the plan fingerprint, versions, git commit, machine, wall times.
* ``plan.json``: every planned trial (name, variant, benchmark, split, fraction, resolved config),
  so a report can show trials that never ran.
* ``splits/``: the persisted split files every trial reads (made before any trial starts).
* ``trials/`` (ablate) or ``search/`` + ``confirm/`` (tune): Ray Tune's run folders, one folder
  per trial with ``params.json`` and ``result.json`` (JSON lines, one per epoch).

Reading gives one tidy table (one row per trial x epoch); no Ray and no torch are needed. Works on
finished and partial experiments, with no Ray cluster running.

Trial ``status``: ``ok`` (all planned epochs), ``diverged`` (non-finite loss; reason kept),
``failed`` (raised, retries exhausted; the error's last line kept), ``stopped`` (ended early by the
search scheduler), ``unfinished`` (started, not done: an interrupted or running experiment),
``missing`` (planned, never started).
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from drx.errors import DataError
from drx.io import atomic_write_json
from drx.metrics import METRICS

META_NAME = "drx-experiment.json"
PLAN_NAME = "plan.json"
SPLITS_DIR = "splits"
ABLATE_RUN = "trials"
SEARCH_RUN = "search"
CONFIRM_RUN = "confirm"
CONFIRM_TABLE = "confirm.csv"
FORMAT = "drx-experiment-v1"


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


def validate_ray_state(run_dir: Path) -> bool:
    """True when Ray's newest experiment state parses. A state file cut short by a killed driver
    (Ray copies it to storage non-atomically) is moved aside, so it is never restored from."""
    good = False
    for f in sorted(run_dir.glob("experiment_state-*.json")):
        try:
            json.loads(f.read_text())
            good = True
        except (OSError, json.JSONDecodeError):
            f.rename(f.with_name(f.name + f".corrupt-{int(time.time())}"))
    return good


def trial_progress(trial_dir: Path) -> tuple[str, int]:
    """(``done``/``partial``/``new``, last epoch) of a trial folder, from its result.json."""
    res = trial_dir / "result.json"
    last: dict[str, Any] = {}
    if res.is_file():
        for line in res.read_text().splitlines():
            try:
                last = json.loads(line) or last
            except json.JSONDecodeError:
                continue
    if not last:
        return "new", 0
    epoch = int(last.get("epoch") or 0)
    planned = int(last.get("planned_epochs") or 0)
    if last.get("status") == "diverged" or (planned and epoch >= planned):
        return "done", epoch
    return "partial", epoch


def latest_checkpoint(trial_dir: Path) -> Path | None:
    """The trial's newest checkpoint folder (``checkpoint_NNNNNN`` holding drx's checkpoint.pt), or None."""
    ckpts = sorted(p for p in trial_dir.glob("checkpoint_*") if (p / "checkpoint.pt").is_file())
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


def open_study_storage(url: str):
    """The Optuna storage behind `url`: ``sqlite:///PATH`` or any RDB URL, or ``journal:PATH`` (a
    journal file, for shared file systems). Used by the search layer (which creates the study) and
    by the report (which only loads it)."""
    import optuna  # heavy, and only the search and the report's study views need it

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend  # with optuna, above

        path = Path(url[len("journal:") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return optuna.storages.RDBStorage(url)


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
    df = df.sort_values("run_order").drop_duplicates(["trial", "epoch"], keep="last")
    df = df[~(df["epoch"].isna() & df.duplicated("trial", keep=False))]
    for col in ("status", "reason", "run", "path"):
        df[col] = df["trial"].map(final[col])
    df["num_failures"] = df.groupby("trial")["num_failures"].transform("sum")
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
