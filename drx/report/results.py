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

#: Metrics of the per-split frame (test metric as ``srcc``..., validation as ``val_srcc``...).
SELECTED_METRICS = ("srcc", "plcc", "plcc_logistic", "krcc", "rmse")

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
        # The last epoch reached (a continuation run holds only the epochs after its resume point).
        epochs_done = max((int(r.get("epoch") or 0) for r in results if r.get("status") == "ok"), default=0)
        last = results[-1] if results else {}
        planned = planned_epochs or last.get("planned_epochs")
        if last.get("status") == "diverged":
            status, reason = "diverged", last.get("reason")
        elif ray_status == "ERROR" or (error and ray_status != "TERMINATED"):
            status, reason = "failed", error or "error"
        elif ray_status == "TERMINATED" or (ray_status is None and planned and epochs_done >= planned):
            # (No Ray state: a run whose state file was lost; the trial's own results tell.)
            status = "ok" if planned is None or epochs_done >= planned else "stopped"
            reason = None if status == "ok" else f"stopped by the scheduler after epoch {epochs_done}"
        else:
            status, reason = "unfinished", f"Ray status {ray_status or 'unknown'} after epoch {epochs_done}"
        base = {"run": run_dir.name, "trial": trial_dir.name, "trial_id": state.get("trial_id"), "status": status, "reason": reason,
                "num_failures": state.get("num_failures", 0), "params": params, "path": str(trial_dir)}
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
    from drx.search.experiment import run_folders

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
        """One row per trial at its selected epoch: ``best`` (the trial's protocol: best validation
        epoch, or best test PLCC under the reference protocol) or ``last``. Columns: variant,
        benchmark, split, fraction, status, srcc, plcc, krcc, rmse, plcc_logistic, epoch."""
        df = self.epochs if run is None else self.epochs[self.epochs["run"] == run]
        ids = ["run", "trial", "variant", "benchmark", "test_benchmark", "split", "fraction", "status", "reason"]
        metric_cols = [c for m in SELECTED_METRICS for c in (m, f"val_{m}")]
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
        for m in SELECTED_METRICS:
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
