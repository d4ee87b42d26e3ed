"""An experiment folder -> one tidy table (one row per trial × epoch). No Ray, no torch.

Reads Ray Tune's own files (``result.json`` JSON lines and ``params.json`` per trial folder, the
latest ``experiment_state-*.json`` for trial statuses, ``error.txt``) and drx's
``drx-experiment.json``/``plan.json``. Works on finished and partial experiments, with no Ray
cluster running.

Trial ``status``: ``ok`` (all planned epochs), ``diverged`` (non-finite loss; reason kept),
``failed`` (raised, retries exhausted; the error's last line kept), ``stopped`` (ended early by the
search scheduler), ``unfinished`` (started, not done: an interrupted or running experiment),
``missing`` (planned, never started).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from drx.errors import DataError
from drx.search.experiment import ABLATE_RUN, CONFIRM_RUN, PLAN_NAME, SEARCH_RUN, read_meta

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


def ray_trial_states(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Trial folder name -> {status, num_failures, trial_id} from Ray's latest experiment state."""
    files = sorted(run_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        return {}
    try:
        data = json.loads(files[-1].read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    out = {}
    for item in data.get("trial_data", []):
        try:
            trial = json.loads(item[0])
            runtime = json.loads(item[1]) if len(item) > 1 and isinstance(item[1], str) else {}
        except (TypeError, json.JSONDecodeError):
            continue
        out[str(trial.get("relative_logdir"))] = {
            "ray_status": trial.get("status"),
            "num_failures": runtime.get("num_failures", 0),
            "trial_id": trial.get("trial_id"),
        }
    return out


def _error_line(trial_dir: Path) -> str | None:
    err = trial_dir / "error.txt"
    if not err.is_file():
        return None
    lines = [ln.strip() for ln in err.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "error (error.txt is empty)"


def read_run(run_dir: Path, meta: dict[str, Any], planned_epochs: int | None = None) -> pd.DataFrame:
    """Every trial folder of one Ray run: one row per reported epoch (or one status row)."""
    states = ray_trial_states(run_dir)
    rows: list[dict[str, Any]] = []
    if not run_dir.is_dir():
        return pd.DataFrame(columns=ID_COLUMNS)
    for trial_dir in sorted(p for p in run_dir.iterdir() if p.is_dir() and (p / "params.json").is_file()):
        params = json.loads((trial_dir / "params.json").read_text())
        results = _read_json_lines(trial_dir / "result.json")
        state = states.get(trial_dir.name, {})
        error = _error_line(trial_dir)
        ray_status = state.get("ray_status")
        epochs_done = sum(1 for r in results if r.get("status") == "ok")
        last = results[-1] if results else {}
        planned = planned_epochs or last.get("planned_epochs")
        if last.get("status") == "diverged":
            status, reason = "diverged", last.get("reason")
        elif ray_status == "ERROR" or (error and ray_status != "TERMINATED"):
            status, reason = "failed", error or "error"
        elif ray_status == "TERMINATED":
            status = "ok" if planned is None or epochs_done >= planned else "stopped"
            reason = None if status == "ok" else f"stopped by the scheduler after epoch {epochs_done}"
        else:
            status, reason = "unfinished", f"Ray status {ray_status or 'unknown'} after epoch {epochs_done}"
        base = {"run": run_dir.name, "trial": trial_dir.name, "trial_id": state.get("trial_id"), "status": status, "reason": reason,
                "num_failures": state.get("num_failures", 0), "params": params, "path": str(trial_dir)}
        if not results:
            rows.append({**base, "epoch": np.nan})
        for r in results:
            row = {**base, **{k: v for k, v in r.items() if k != "config" and not isinstance(v, (dict, list))}}
            row["epoch"] = r.get("epoch", np.nan)
            row["row_status"] = r.get("status")
            rows.append(row)
    return pd.DataFrame(rows)


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
        """One row per trial at its selected epoch: ``best`` (the trial's protocol: best validation
        epoch, or best test PLCC under the reference protocol) or ``last``. Columns: variant,
        benchmark, split, fraction, status, srcc, plcc, krcc, rmse, plcc_logistic, epoch."""
        df = self.epochs if run is None else self.epochs[self.epochs["run"] == run]
        out = []
        for trial, g in df.groupby("trial", sort=False):
            g = g.sort_values("epoch")
            first = g.iloc[0]
            ok_rows = g[g.get("row_status", pd.Series(index=g.index, dtype=object)) == "ok"] if "row_status" in g else g.iloc[0:0]
            row = {c: first.get(c) for c in ("run", "trial", "variant", "benchmark", "test_benchmark", "split", "fraction", "status", "reason")}
            pick = None
            if first["status"] in ("ok", "stopped", "unfinished") and len(ok_rows):
                if selection == "last":
                    pick = ok_rows.iloc[-1]
                else:
                    best = ok_rows.iloc[-1].get("best_epoch")
                    match = ok_rows[ok_rows["epoch"] == best] if best is not None and not _isnan(best) else ok_rows.iloc[-1:]
                    pick = match.iloc[-1] if len(match) else ok_rows.iloc[-1]
            for m in ("srcc", "plcc", "plcc_logistic", "krcc", "rmse"):
                row[m] = float(pick.get(f"test_{m}")) if pick is not None and pick.get(f"test_{m}") is not None else math.nan
                row[f"val_{m}"] = float(pick.get(f"val_{m}")) if pick is not None and pick.get(f"val_{m}") is not None else math.nan
            row["epoch"] = pick.get("epoch") if pick is not None else math.nan
            out.append(row)
        return pd.DataFrame(out)


def _isnan(v: Any) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return False


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
        df = read_run(exp / ABLATE_RUN, meta)
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
        s = read_run(exp / SEARCH_RUN, meta, planned_epochs=max_epochs)
        if len(s):
            s["variant"] = s["trial"]
            s["benchmark"] = bench
            s["split"] = spec.get("split", 0)
            s["fraction"] = 1.0
            for key in spec["space"]:
                s[f"param:{key}"] = s["params"].map(lambda p, k=key: _decode(p.get(k)))
        c = read_run(exp / CONFIRM_RUN, meta, planned_epochs=max_epochs)
        if len(c):
            c["variant"] = c["params"].map(lambda p: p.get("candidate"))
            c["benchmark"] = bench
            c["split"] = c["params"].map(lambda p: p.get("split"))
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
