"""Synthetic experiment folders, in the formats ``drx ablate``/``drx tune`` and Ray Tune write.

For tests and for ``drx bench report``: an experiment of any size whose per-variant effects are
known, so a report's numbers can be checked against the truth. What is written, per the real
layout (see :mod:`drx.experiment`):

* ``drx-experiment.json`` and ``plan.json``, built with drx's own planner
  (:func:`drx.search.grid.load_ablation` / :func:`drx.search.space.load_search`) from a spec over
  the packaged ``paper-<benchmark>`` presets, so every trial's resolved config is real;
* Ray's run folder (``trials/``, or ``search/`` + ``confirm/``): per trial ``params.json``,
  ``result.json`` (JSON lines: the metrics ``run_trial`` reports plus Ray's automatic keys),
  ``progress.csv``, ``error.txt`` for failed trials, the latest ``checkpoint_NNNNNN/`` with
  ``config.yaml``, ``metrics.csv`` and, for finished ``full``/``dsdm`` trials, ``explain/``
  (``expert_weights.csv``, ``attention.npz``), and drx's status record ``drx-status.json`` (what
  the search layer writes from Ray's callbacks); and ``experiment_state-<session>.json`` whose
  ``trial_data`` items are ``[trial_json, runtime_json]`` with Ray's string-valued fields;
* for ``tune``: a real Optuna study (SQLite ``optuna.db``) holding the search trials as Ray's
  OptunaSearch records them, and ``confirm.csv``.

Nothing here imports torch or Ray. Metrics are drawn from a seeded model: benchmark level + a
split offset shared by all variants (so pairing by split matters) + the variant's effect + trial
noise, approached over the epochs by a saturating curve with validation noise (so the selected
epoch varies).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import yaml

from drx.experiment import (
    ABLATE_RUN,
    CONFIRM_RUN,
    CONFIRM_TABLE,
    FORMAT,
    META_NAME,
    PLAN_NAME,
    SEARCH_RUN,
    git_commit,
    versions,
    write_trial_status,
)
from drx.io import atomic_write_json
from drx.metrics import METRICS
from drx.search.grid import load_ablation
from drx.search.space import config_for, load_search

__all__ = ["SyntheticExperiment", "write_synthetic_experiment", "DEFAULT_FAILURES", "BENCHMARK_LEVELS"]

#: Benchmarks in table order, with a typical median test SRCC of DR.Experts and the MOS scale.
BENCHMARK_LEVELS: dict[str, tuple[float, float, float]] = {
    # name: (SRCC level, MOS low, MOS high)
    "koniq": (0.925, 1.0, 100.0),
    "livec": (0.885, 0.0, 100.0),
    "spaq": (0.920, 0.0, 100.0),
    "livefb": (0.590, 0.0, 100.0),
    "bid": (0.885, 0.0, 5.0),
}

#: Ablation rows of the paper's Tables 4 and 5 (modules, DDWM feature groups), baseline first,
#: with the SRCC effect the synthetic model gives each (Δ to ``full``).
MODULE_VARIANTS: list[tuple[str, dict[str, Any], float]] = [
    ("full", {}, 0.0),
    ("image_encoder", {"model.variant": "image_encoder"}, -0.035),
    ("prior_only", {"model.variant": "prior_only"}, -0.120),
    ("dsdm", {"model.variant": "dsdm"}, -0.012),
    ("no_dis", {"model.ddwm.groups": ["sem", "bri"]}, -0.008),
    ("no_sem", {"model.ddwm.groups": ["dis", "bri"]}, -0.004),
    ("no_bri", {"model.ddwm.groups": ["dis", "sem"]}, 0.0),
    ("dis_only", {"model.ddwm.groups": ["dis"]}, -0.015),
    ("sem_only", {"model.ddwm.groups": ["sem"]}, -0.020),
    ("bri_only", {"model.ddwm.groups": ["bri"]}, -0.030),
]

#: Trials made to fail by default: one each of a Ray error, a divergence, a never-started trial.
DEFAULT_FAILURES: dict[str, int] = {"failed": 1, "diverged": 1, "missing": 1}

DACLIP_PROMPTS = (
    "motion-blurry", "hazy", "jpeg-compressed", "low-light", "noisy",
    "raindrop", "rainy", "shadowed", "snowy", "uncompleted",
)

_SESSION = "2026-01-15_09-30-00"
_T0 = 1768469400.0  # the session's start (Unix time)
_ERROR_TEXT = """Failure # 1 (occurred at {date})
ray::ImplicitFunc.train() (pid={pid}, ip=192.0.2.2, actor_id=4f1c2d, repr={name})
  File "/opt/venv/lib/python3.11/site-packages/ray/tune/trainable/trainable.py", line 331, in train
    raise skipped from exception_cause(skipped)
  File "/opt/drx/drx/search/tune.py", line 71, in _trial_body
    run_trial(cfg, report=report, out_dir=out, resume_from=resume, progress=False, log_line=lambda s: print(s, flush=True))
  File "/opt/drx/drx/train/trainer.py", line 290, in run_trial
    loss.backward()
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.13 GiB. GPU 0 has a total capacity of 23.64 GiB of which 402.06 MiB is free.
"""


@dataclass
class SyntheticExperiment:
    """What :func:`write_synthetic_experiment` wrote, and the truth a report must reproduce.

    ``truth`` has one row per planned trial (``trial, variant, benchmark, split, fraction,
    status, srcc, plcc, epoch``): the status the report must show and the test metrics at the
    selected (best-validation) epoch, NaN where the trial has none. ``effects`` is the SRCC
    effect (Δ to the baseline) the generator gave each variant; ``sweep_values`` maps each
    variant to its swept value when a sweep was written.
    """

    path: Path
    kind: str
    baseline: str
    variants: list[str]
    benchmarks: list[str]
    splits: list[int]
    fractions: list[float]
    effects: dict[str, float]
    truth: pd.DataFrame
    sweep_key: str | None = None
    sweep_values: dict[str, Any] = field(default_factory=dict)
    study_name: str | None = None

    @property
    def n_trials(self) -> int:
        return len(self.truth)


# ------------------------------------------------------------------------------------ helpers


def _ray_str(v: Any) -> str:
    """Ray's experiment state stores most trial attributes as their Python ``str``."""
    return v if isinstance(v, str) else str(v)


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    return v


class _RunWriter:
    """Writes one Ray Tune run folder (trial folders + experiment_state) as Ray does."""

    def __init__(self, run_dir: Path, trainable: str, rng: np.random.Generator, max_failures: int = 2):
        self.run_dir = run_dir
        self.trainable = trainable
        self.max_failures = max_failures
        self.prefix = "".join(rng.choice(list("0123456789abcdef"), 5))
        self.items: list[list[str]] = []
        self.clock = _T0
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ".validate_storage_marker").write_text("")

    def trial_id(self, index: int) -> str:
        return f"{self.prefix}_{index:05d}"

    def add(self, index: int, name: str, params: dict[str, Any], rows: list[dict[str, Any]], ray_status: str,
            config: dict[str, Any] | None, error: bool = False, started: bool = True, explain: dict[str, Any] | None = None) -> str:
        """Write one trial. ``rows`` are the metrics run_trial reported (one per epoch)."""
        tid = self.trial_id(index)
        start = self.clock
        results: list[dict[str, Any]] = []
        if started:
            tdir = self.run_dir / name
            tdir.mkdir(parents=True, exist_ok=True)
            (tdir / "params.json").write_text(json.dumps(params, indent=2))
            total = 0.0
            for i, r in enumerate(rows):
                took = float(r.get("epoch_s", 1.0)) + 0.4
                total += took
                stamp = start + total
                res = dict(r)
                res.update({
                    "timestamp": int(stamp),
                    "checkpoint_dir_name": f"checkpoint_{i:06d}" if r.get("status") == "ok" else None,
                    "should_checkpoint": r.get("status") == "ok",
                    "done": False,
                    "training_iteration": i + 1,
                    "trial_id": tid,
                    "date": time.strftime("%Y-%m-%d_%H-%M-%S", time.gmtime(stamp)),
                    "time_this_iter_s": took,
                    "time_total_s": total,
                    "pid": 4000 + index,
                    "hostname": "gpu-node-1",
                    "node_ip": "192.0.2.2",
                    "config": params,
                    "time_since_restore": total,
                    "iterations_since_restore": i + 1,
                })
                results.append(res)
            with (tdir / "result.json").open("w") as fh:
                for res in results:
                    fh.write(json.dumps(res) + "\n")
            if results:
                cols = [k for k in results[0] if k != "config"]
                for res in results[1:]:
                    cols += [k for k in res if k not in cols and k != "config"]
                buf = io.StringIO()
                w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
                w.writeheader()
                w.writerows(results)
                (tdir / "progress.csv").write_text(buf.getvalue())
            ok_rows = [r for r in rows if r.get("status") == "ok"]
            if ok_rows and config is not None:
                ck = tdir / f"checkpoint_{len(ok_rows) - 1:06d}"
                ck.mkdir(exist_ok=True)
                (ck / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
                keys = [k for k in ok_rows[0]]
                buf = io.StringIO()
                w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
                w.writeheader()
                w.writerows(ok_rows)
                (ck / "metrics.csv").write_text(buf.getvalue())
                if explain:
                    ex = ck / "explain"
                    ex.mkdir(exist_ok=True)
                    if "weights" in explain:
                        explain["weights"].to_csv(ex / "expert_weights.csv", index=False)
                    if "attention" in explain:
                        np.savez_compressed(ex / "attention.npz", **explain["attention"])
            if error:
                (tdir / "error.txt").write_text(
                    _ERROR_TEXT.format(date=time.strftime("%Y-%m-%d_%H-%M-%S", time.gmtime(start + total)), pid=4000 + index, name=name))
            self._record(tdir, rows, ray_status, error, index)
            self.clock = start + total * 0.1 + 5.0  # trials overlap: the next starts soon after
        last = results[-1] if results else None
        trial = {
            "stub": False,
            "trainable_name": self.trainable,
            "trial_id": tid,
            "config": params,
            "_Trial__unresolved_config": params,
            "evaluated_params": params,
            "experiment_tag": f"{index}_" + ",".join(f"{k}={v}" for k, v in sorted(params.items())),
            "stopping_criterion": {},
            "log_to_file": ["stdout", "stderr"],
            "max_failures": self.max_failures,
            "export_formats": [],
            "status": ray_status,
            "relative_logdir": name,
            "custom_trial_name": name,
            "custom_dirname": name,
            "restore_path": None,
        }
        runtime = {
            "start_time": start if started else None,
            "num_failures": self.max_failures + 1 if error else 0,
            "num_failures_after_restore": 0,
            "error_filename": "error.txt" if error else None,
            "pickled_error_filename": "error.pkl" if error else None,
            "last_result": {k: v for k, v in (last or {}).items() if k != "config"},
            "last_result_time": (start + (last or {}).get("time_total_s", 0.0)) if last else None,
        }
        self.items.append([json.dumps({k: _ray_str(v) for k, v in trial.items()}),
                           json.dumps({k: _ray_str(v) for k, v in runtime.items()})])
        return tid

    def _record(self, tdir: Path, rows: list[dict[str, Any]], ray_status: str, error: bool, index: int) -> None:
        """drx's status record, as the search layer's TrialStatusRecorder writes it from Ray's callbacks."""
        last = rows[-1] if rows else {}
        epoch = max((int(r.get("epoch") or 0) for r in rows if r.get("status") == "ok"), default=0)
        failures = self.max_failures + 1 if error else 0
        if error:
            lines = [ln for ln in (tdir / "error.txt").read_text().splitlines() if ln.strip()]
            status, reason = "failed", lines[-1].strip()[:300]
        elif ray_status != "TERMINATED":
            status, reason = "running", None
        elif last.get("status") == "diverged":
            status, reason = "diverged", last.get("reason")
        elif last.get("planned_epochs") and epoch < int(last["planned_epochs"]):
            status, reason = "stopped", f"stopped by the scheduler after epoch {epoch}"
        else:
            status, reason = "ok", None
        write_trial_status(tdir, status, reason, trial_id=self.trial_id(index), failures=failures, epoch=epoch)

    def finish(self) -> None:
        state = {
            "trial_data": self.items,
            "runner_data": {"_total_time": self.clock - _T0, "_iteration": 10 * len(self.items), "_has_errored": False,
                            "_fail_fast": False, "_session_str": _SESSION, "_start_time": _T0, "_resumed": False},
            "stats": {"start_time": _T0},
        }
        (self.run_dir / f"experiment_state-{_SESSION}.json").write_text(json.dumps(state))


def _epoch_rows(rng: np.random.Generator, final_val: float, final_test: float, n_epochs: int, planned: int, mos: tuple[float, float],
                lr: float, stop_after: int | None = None, diverge_at: int | None = None, epoch_s: float = 120.0) -> list[dict[str, Any]]:
    """Per-epoch metrics as run_trial reports them; best_epoch chosen on validation SRCC."""
    rows: list[dict[str, Any]] = []
    span = mos[1] - mos[0]
    best_val, best_epoch = -math.inf, None
    last = n_epochs if stop_after is None else min(stop_after, n_epochs)
    for e in range(1, last + 1):
        if diverge_at is not None and e == diverge_at:
            row: dict[str, Any] = {"epoch": e, "status": "diverged", "reason": f"non-finite loss (nan) at step {e * 97 - 13}",
                                   "planned_epochs": planned}
            row.update({f"{p}_{m}": float("nan") for p in ("val", "test") for m in METRICS})
            rows.append(row)
            break
        shape = math.exp(-(e - 1) / max(0.5, n_epochs / 6))  # a rise, then a plateau where noise picks the best epoch
        v = float(np.clip(final_val - 0.22 * shape + rng.normal(0, 0.004), -1, 0.999))
        t = float(np.clip(final_test - 0.22 * shape + rng.normal(0, 0.002), -1, 0.999))
        row = {"epoch": e, "status": "ok", "planned_epochs": planned,
               "train_loss": float(0.012 + 0.06 * shape + abs(rng.normal(0, 0.002))),
               "lr": float(lr * (0.1 ** ((e - 1) // 3))), "steps": 240}
        for part, s in (("val", v), ("test", t)):
            p = float(np.clip(s + 0.012 + rng.normal(0, 0.002), -1, 0.999))
            row[f"{part}_srcc"] = s
            row[f"{part}_plcc"] = p
            row[f"{part}_plcc_logistic"] = float(np.clip(p + 0.004, -1, 0.999))
            row[f"{part}_krcc"] = float(2 / math.pi * math.asin(np.clip(s, -1, 1)))
            row[f"{part}_rmse"] = float(span * 0.2 * math.sqrt(max(0.0, 1 - p * p)))
        eval_s = epoch_s * 0.18
        wait = epoch_s * 0.05
        row.update({"epoch_s": epoch_s, "eval_s": eval_s, "data_wait_s": wait, "compute_s": epoch_s - eval_s - wait})
        if v > best_val:
            best_val, best_epoch = v, e
        row["best_epoch"] = best_epoch
        rows.append(row)
    return rows


def _selected(rows: list[dict[str, Any]]) -> tuple[float, float, float]:
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return math.nan, math.nan, math.nan
    best = ok[-1]["best_epoch"]
    pick = next(r for r in ok if r["epoch"] == best)
    return pick["test_srcc"], pick["test_plcc"], float(best)


def _patch(image_size: int) -> int:
    """Patch size of the synthetic encoder: DeiT-III/16 at paper sizes, 8 px for tiny crops."""
    return 16 if image_size >= 128 else 8


def _smooth_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A plausible photo-like crop: colour gradients plus a few soft blobs, uint8 [H,W,3]
    (drawn at up to 64 px and upsampled, so paper-sized crops cost little)."""
    small = min(size, 64)
    yy, xx = np.mgrid[0:small, 0:small] / max(1, small - 1)
    img = np.zeros((small, small, 3))
    base = rng.uniform(0.2, 0.8, 3)
    slope = rng.uniform(-0.3, 0.3, (2, 3))
    img += base + xx[..., None] * slope[0] + yy[..., None] * slope[1]
    for _ in range(4):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.25)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-0.4, 0.4, 3)
    img += rng.normal(0, 0.02, img.shape)
    if small < size:
        k = -(-size // small)
        img = np.repeat(np.repeat(img, k, axis=0), k, axis=1)[:size, :size]
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def _attention(rng: np.random.Generator, prompts: list[str], ids: list[str], mos: np.ndarray, size: int, patch: int,
               per_expert_image: bool) -> dict[str, np.ndarray]:
    """attention.npz content as drx.train.explain writes it (4 images, row 0 over patch tokens)."""
    n, e, g = len(ids), len(prompts), size // patch
    yy, xx = np.mgrid[0:g, 0:g] / max(1, g - 1)

    def soft(logits: np.ndarray) -> np.ndarray:
        z = np.exp(logits - logits.max(axis=(-2, -1), keepdims=True))
        return z / z.sum(axis=(-2, -1), keepdims=True) * 0.985  # the class token keeps the rest

    prior = np.empty((n, e, g, g))
    for i in range(n):
        for j in range(e):
            cy, cx = rng.uniform(0.15, 0.85, 2)
            prior[i, j] = -((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(0.03, 0.12)) + rng.normal(0, 0.3, (g, g))
    prior = soft(prior)
    img_logits = rng.normal(0, 0.6, (n, g, g)) - ((yy - 0.5) ** 2 + (xx - 0.5) ** 2)[None] * 3
    image = soft(img_logits)
    refined = prior - 0.5 * image[:, None]
    if per_expert_image:
        image = np.repeat(image[:, None], e, axis=1)
    return {
        "crops": np.stack([_smooth_image(rng, size) for _ in range(n)]),
        "prior": prior.astype(np.float32),
        "image": image.astype(np.float32),
        "refined": refined.astype(np.float32),
        "prompts": np.array(prompts),
        "image_ids": np.array(ids),
        "mos": np.asarray(mos, dtype=np.float64),
    }


def _expert_weights(rng: np.random.Generator, prompts: list[str], bench: str, n_images: int, mos_range: tuple[float, float],
                    srcc: float, groups_shift: float) -> pd.DataFrame:
    """expert_weights.csv content: per test image, MOS, prediction and each expert's DDWM weight."""
    lo, hi = mos_range
    mos = rng.uniform(lo + 0.1 * (hi - lo), hi - 0.1 * (hi - lo), n_images)
    noise = rng.normal(0, 1, n_images) * (hi - lo) * 0.2 * math.sqrt(max(0.0, 1 - srcc ** 2))
    table: dict[str, Any] = {
        "image_id": [f"{bench}_{k:05d}.jpg" for k in range(n_images)],
        "mos": mos,
        "prediction": mos + noise,
    }
    quality = (mos - lo) / (hi - lo)
    for j, p in enumerate(prompts):
        centre = 0.25 + 0.18 * math.cos(1.3 * j) + groups_shift
        table[p] = centre + 0.08 * (quality - 0.5) * (1 if j % 2 else -1) + rng.normal(0, 0.05, n_images)
    return pd.DataFrame(table)


def _sweep_points(key: str, n: int) -> tuple[list[str], dict[str, Any], dict[str, dict[str, Any]], dict[str, float], str]:
    """Variant names, swept values, overrides and effects of a sweep over ``key``."""
    names, values, overrides, effects = [], {}, {}, {}
    if key == "model.prior.prompts":
        counts = sorted({max(1, int(round(c))) for c in np.linspace(1, len(DACLIP_PROMPTS), n)}, reverse=True)
        for c in counts:
            name = f"experts={c}"
            names.append(name)
            values[name] = list(DACLIP_PROMPTS[:c])
            overrides[name] = {} if c == len(DACLIP_PROMPTS) else {key: list(DACLIP_PROMPTS[:c])}
            effects[name] = -0.03 * math.exp(-(c - 1) / 2.5) + (0.0 if c == len(DACLIP_PROMPTS) else -0.0005 * (10 - c))
        return names, values, overrides, effects, names[0]
    default = 0.0 if key.endswith("lambda_init") else 0.5
    short = key.rsplit(".", 1)[-1]
    pts = sorted({round(float(v), 3) for v in np.linspace(0.0, 0.9, n)} | {default})
    while len(pts) > n:  # keep the default, drop the point nearest to it
        drop = min((p for p in pts if p != default), key=lambda p: abs(p - default))
        pts.remove(drop)
    optimum = 0.3
    ref_effect = -0.05 * (default - optimum) ** 2
    for v in pts:
        name = f"{short}={v:g}"
        names.append(name)
        values[name] = v
        overrides[name] = {} if v == default else {key: v}
        effects[name] = -0.05 * (v - optimum) ** 2 - ref_effect
    ref = f"{short}={default:g}"
    return names, values, overrides, effects, ref


# ------------------------------------------------------------------------------------ public


def write_synthetic_experiment(
    path: str | Path,
    n_variants: int = 4,
    n_splits: int = 5,
    n_epochs: int = 6,
    n_benchmarks: int = 2,
    seed: int = 0,
    kind: str = "ablate",
    failures: bool | Mapping[str, int] = True,
    *,
    fractions: list[float] | None = None,
    sweep_key: str | None = None,
    n_images: int = 40,
    image_size: int = 64,
    noise: float = 0.004,
    name: str | None = None,
) -> SyntheticExperiment:
    """Write a synthetic ``drx ablate`` (or ``drx tune``) experiment folder at ``path``.

    ablate: ``n_variants`` rows (the paper's Table 4/5 modules and feature groups, ``full`` the
    baseline; or, with ``sweep_key`` = ``model.dsdm.lambda_init`` / ``model.dsdm.alpha_init`` /
    ``model.prior.prompts``, points of that sweep) × ``n_benchmarks`` of koniq, livec, spaq,
    livefb, bid × ``n_splits`` splits (× ``fractions``), ``n_epochs`` each. ``failures``: True
    for :data:`DEFAULT_FAILURES`, False for none, or counts of ``failed`` (Ray error,
    ``error.txt``), ``diverged`` (NaN loss), ``missing`` (planned, never started) and
    ``unfinished`` (still running) trials, taken from non-baseline rows.

    tune: ``n_variants`` Optuna search trials on the first benchmark's split 0 (ASHA early
    stopping; a real study in ``optuna.db``), then a confirm stage of the best three on
    ``n_splits`` splits, and ``confirm.csv``. ``failures`` makes search trials fail/diverge.

    ``n_images`` test images per ``expert_weights.csv``; ``image_size`` pixels of the
    attention crops (16-pixel patches from 128 px up, as DeiT-III/16 at 384 px; else 8). Returns the truth (see :class:`SyntheticExperiment`).
    """
    if kind not in ("ablate", "tune"):
        raise ValueError(f"kind must be 'ablate' or 'tune', got {kind!r}")
    if n_splits < 1 or n_epochs < 1 or n_variants < 1:
        raise ValueError("n_variants, n_splits and n_epochs must be at least 1")
    if not 1 <= n_benchmarks <= len(BENCHMARK_LEVELS):
        raise ValueError(f"n_benchmarks must be 1..{len(BENCHMARK_LEVELS)}, got {n_benchmarks}")
    if n_splits > 10:
        raise ValueError("the paper presets persist 10 splits: n_splits must be at most 10")
    if failures is True:
        counts = dict(DEFAULT_FAILURES) if kind == "ablate" else {"failed": 1, "diverged": 1}
    else:
        counts = {} if failures is False else dict(failures)
    unknown = set(counts) - {"failed", "diverged", "missing", "unfinished"}
    if unknown:
        raise ValueError(f"unknown failure kinds {sorted(unknown)}; use failed, diverged, missing, unfinished")
    exp = Path(path)
    exp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    benchmarks = list(BENCHMARK_LEVELS)[:n_benchmarks]
    if kind == "tune":
        return _write_tune(exp, rng, benchmarks[0], n_variants, n_splits, n_epochs, seed, counts, n_images, image_size, name or "synthetic-tune")
    return _write_ablate(exp, rng, benchmarks, n_variants, n_splits, n_epochs, seed, counts, fractions, sweep_key,
                         n_images, image_size, noise, name or "synthetic-ablation")


def _meta(kind: str, name: str, spec: dict[str, Any], fingerprint: str, seed: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "kind": kind,
        "name": name,
        "spec": spec,
        "spec_file": None,
        "fingerprint": fingerprint,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(_T0)),
        "versions": versions(),
        "git_commit": git_commit(),
        "machine": {"host": "gpu-node-1", "platform": "Linux-6.8.0-x86_64-with-glibc2.39", "python": "3.11.9", "cpus": 32,
                    "gpus": ["NVIDIA A100-SXM4-80GB"] * 4},
        "runs": [],
        "synthetic": {"generator": "drx.testing.synthetic", "seed": seed},
        **extra,
    }


def _write_ablate(exp, rng, benchmarks, n_variants, n_splits, n_epochs, seed, counts, fractions, sweep_key, n_images, image_size,
                  noise, name) -> SyntheticExperiment:
    sweep_values: dict[str, Any] = {}
    if sweep_key:
        names, sweep_values, overrides, effects, baseline = _sweep_points(sweep_key, n_variants)
        variants = {v: overrides[v] for v in names}
    else:
        rows = list(MODULE_VARIANTS[:n_variants])
        for i in range(len(rows), n_variants):
            lam = round(0.05 * (i - len(MODULE_VARIANTS) + 1), 3)
            rows.append((f"lambda_{lam:g}", {"model.dsdm.lambda_init": lam}, -0.002 * (i - len(MODULE_VARIANTS) + 1)))
        variants = {v: o for v, o, _ in rows}
        effects = {v: e for v, _, e in rows}
        baseline = rows[0][0]
    spec = {
        "name": name,
        "description": "Synthetic ablation (drx.testing.synthetic): "
        + (f"sweep of {sweep_key}" if sweep_key else "modules and DDWM feature groups (Tables 4-5)"),
        "base": "paper-{benchmark}",
        "overrides": {"train.epochs": n_epochs},
        "benchmarks": benchmarks,
        "splits": list(range(n_splits)),
        "baseline": baseline,
        "variants": variants,
        "sweep_key": sweep_key,
    }
    if fractions:
        spec["fractions"] = [float(f) for f in fractions]
    plan = load_ablation(spec)
    trials = plan.trials
    meta = _meta("ablate", name, plan.spec.model_dump(mode="json"), plan.fingerprint(), seed, {
        "baseline": plan.spec.baseline, "variants": plan.variants, "benchmarks": plan.benchmarks, "splits": plan.split_indices,
        "fractions": plan.fractions, "sweep_key": plan.spec.sweep_key, "select_on": trials[0].config["train"]["select_on"],
        "compat": trials[0].config["model"]["compat"],
    })
    split_dir = exp / "splits"
    split_dir.mkdir(exist_ok=True)
    for b in plan.benchmarks:
        f = split_dir / f"{b}-s0-n10-t0.8.json"
        f.write_text(json.dumps({"benchmark": b, "seed": 0, "n_splits": 10, "train_fraction": 0.8, "synthetic": True}))
        for t in trials:
            if t.benchmark == b:
                t.config["data"]["split"]["file"] = str(f)
    atomic_write_json(exp / PLAN_NAME, [{"name": t.name, "key": t.key, "variant": t.variant, "benchmark": t.benchmark, "split": t.split,
                                  "fraction": t.fraction, "cpu": t.cpu, "gpu": t.gpu, "config": t.config} for t in trials])

    # Who fails: distinct non-baseline trials, in a seeded order.
    candidates = [i for i, t in enumerate(trials) if t.variant != baseline]
    order = list(rng.permutation(candidates)) if candidates else []
    fate: dict[int, str] = {}
    for what in ("failed", "diverged", "missing", "unfinished"):
        for _ in range(int(counts.get(what, 0))):
            if not order:
                raise ValueError(f"not enough non-baseline trials for the requested failures {counts}")
            fate[int(order.pop())] = what

    split_offset = {(b, s): rng.normal(0, 0.012) for b in plan.benchmarks for s in plan.split_indices}
    run = _RunWriter(exp / ABLATE_RUN, "ablation_trainable", rng)
    truth = []
    max_fraction = max(plan.fractions)
    for i, t in enumerate(trials):
        level, lo, hi = BENCHMARK_LEVELS[t.benchmark]
        frac_effect = -0.08 * math.log(max_fraction / t.fraction) if t.fraction < max_fraction else 0.0
        final_test = level + split_offset[(t.benchmark, t.split)] + effects[t.variant] + frac_effect + rng.normal(0, noise)
        final_val = final_test + rng.normal(0.01, 0.01)
        what = fate.get(i, "ok")
        stop = {"failed": max(1, n_epochs // 2), "unfinished": max(1, n_epochs // 2)}.get(what)
        rows = _epoch_rows(rng, final_val, final_test, n_epochs, n_epochs, (lo, hi), t.config["train"]["lr"],
                           stop_after=stop if what in ("failed", "unfinished") else None,
                           diverge_at=min(n_epochs, 2) if what == "diverged" else None,
                           epoch_s=float(rng.uniform(60, 240)))
        if what == "failed" and stop == n_epochs:
            rows = rows[:-1]
        params = {"benchmark": t.benchmark, "split": t.split, "variant": t.variant}
        if len(plan.fractions) > 1 or plan.fractions != [1.0]:
            params["fraction"] = t.fraction
        explain = None
        model = t.config["model"]
        if what == "ok" and model["variant"] in ("full", "dsdm"):
            prompts = list(model["prior"]["prompts"])
            srcc_sel = _selected(rows)[0]
            explain = {}
            if model["variant"] == "full":
                shift = 0.02 * (3 - len(model["ddwm"]["groups"]))
                explain["weights"] = _expert_weights(rng, prompts, t.benchmark, n_images, (lo, hi), srcc_sel, shift)
            ids = [f"{t.benchmark}_{k:05d}.jpg" for k in range(4)]
            mos = (explain["weights"]["mos"].to_numpy()[:4] if "weights" in explain else rng.uniform(lo, hi, 4))
            explain["attention"] = _attention(rng, prompts, ids, mos, image_size, _patch(image_size), model["compat"] == "authors")
        ray_status = {"ok": "TERMINATED", "diverged": "TERMINATED", "failed": "ERROR", "unfinished": "RUNNING", "missing": "PENDING"}[what]
        run.add(i, t.name, params, rows, ray_status, t.config, error=what == "failed", started=what != "missing", explain=explain)
        srcc, plcc, ep = _selected(rows) if what in ("ok",) else (math.nan, math.nan, math.nan)
        if what == "unfinished":
            srcc, plcc, ep = _selected(rows)
        truth.append({"trial": t.name, "variant": t.variant, "benchmark": t.benchmark, "split": t.split, "fraction": t.fraction,
                      "status": what, "srcc": srcc, "plcc": plcc, "epoch": ep})
    run.finish()
    wall = round(run.clock - _T0 + 60.0, 1)
    meta["runs"].append({"run": ABLATE_RUN, "started": _T0, "wall_s": wall, "fit_s": round(wall - 30.0, 1)})
    atomic_write_json(exp / META_NAME, meta)
    return SyntheticExperiment(exp, "ablate", baseline, plan.variants, plan.benchmarks, plan.split_indices, plan.fractions,
                               effects, pd.DataFrame(truth), sweep_key, sweep_values)


def _write_tune(exp, rng, bench, n_trials, n_splits, n_epochs, seed, counts, n_images, image_size, name) -> SyntheticExperiment:
    import optuna  # heavy: only a synthetic search writes a study

    if counts.get("missing") or counts.get("unfinished"):
        raise ValueError("a synthetic tune experiment supports failed and diverged search trials only")
    spec_in = {
        "name": name,
        "description": "Synthetic search (drx.testing.synthetic) over DSDM initialisation, learning rate and DDWM groups",
        "base": "paper-{benchmark}",
        "overrides": {"train.epochs": n_epochs},
        "benchmark": bench,
        "split": 0,
        "objective": "val_srcc",
        "space": {
            "train.lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
            "model.dsdm.lambda_init": {"type": "uniform", "low": 0.0, "high": 0.9},
            "model.ddwm.groups": {"type": "choice", "values": [["dis", "sem", "bri"], ["dis", "sem"], ["sem"]]},
        },
        "budget": {"num_samples": n_trials},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 3},
        "seed": seed,
        "confirm": {"top_k": 3, "splits": list(range(n_splits))},
    }
    plan = load_search(spec_in)
    spec = plan.spec
    split_file = exp / "splits" / f"{bench}-s0-n10-t0.8.json"
    split_file.parent.mkdir(exist_ok=True)
    split_file.write_text(json.dumps({"benchmark": bench, "seed": 0, "n_splits": 10, "train_fraction": 0.8, "synthetic": True}))
    plan.base_config["data"]["split"]["file"] = str(split_file)
    db = exp / "optuna.db"
    if db.exists():
        db.unlink()
    url = f"sqlite:///{db.resolve()}"
    fingerprint = "synthetic" + format(seed, "07d")
    meta = _meta("tune", name, spec.model_dump(mode="json"), fingerprint, seed, {
        "objective": spec.objective, "base_config": plan.base_config, "defaults": plan.defaults, "select_on": "val",
        "compat": plan.base_config["model"]["compat"],
    })
    level, lo, hi = BENCHMARK_LEVELS[bench]

    def quality(p: dict[str, Any]) -> float:
        groups = json.loads(p["model.ddwm.groups"])
        return (level - 0.010 * (math.log10(p["train.lr"]) - math.log10(2e-4)) ** 2 - 0.05 * (p["model.dsdm.lambda_init"] - 0.3) ** 2
                - 0.006 * (3 - len(groups)))

    dists = plan.distributions
    fates: dict[int, str] = {}
    order = list(rng.permutation(list(range(1, n_trials)))) if n_trials > 1 else []
    for what in ("failed", "diverged"):
        for _ in range(int(counts.get(what, 0))):
            if order:
                fates[int(order.pop())] = what
    run = _RunWriter(exp / SEARCH_RUN, "search_trainable", rng)
    rungs = [r for r in (1, 3, 9, 27) if r < n_epochs]
    at_rung: dict[int, list[float]] = {r: [] for r in rungs}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(study_name=spec.name, storage=storage, direction="maximize")
    searched: list[tuple[float, dict[str, Any], str]] = []
    for i in range(n_trials):
        if i == 0:
            params = dict(plan.defaults)
        else:
            params = {}
            for key, d in dists.items():
                if isinstance(d, optuna.distributions.CategoricalDistribution):
                    params[key] = d.choices[int(rng.integers(len(d.choices)))]
                elif d.log:
                    params[key] = float(10 ** rng.uniform(math.log10(d.low), math.log10(d.high)))
                else:
                    params[key] = float(rng.uniform(d.low, d.high))
        q = quality(params)
        what = fates.get(i, "ok")
        final_val = q + rng.normal(0, 0.004)
        rows = _epoch_rows(rng, final_val, final_val - 0.01, n_epochs, n_epochs, (lo, hi), params["train.lr"],
                           stop_after=max(1, n_epochs // 2) if what == "failed" else None,
                           diverge_at=min(n_epochs, 2) if what == "diverged" else None, epoch_s=float(rng.uniform(60, 200)))
        if what == "ok":  # ASHA: stop at a rung when below the top 1/3 seen there so far
            for r in rungs:
                seen = at_rung[r]
                value = rows[r - 1]["val_srcc"]
                seen.append(value)
                if len(seen) >= 3 and value < np.quantile(seen, 1 - 1 / 3):
                    rows = rows[:r]
                    break
        tid = run.add(i, f"search-{run.trial_id(i)}", params, rows, "ERROR" if what == "failed" else "TERMINATED",
                      config_for(plan, params), error=what == "failed")
        distributions = {k: dists[k] for k in params}
        last = rows[-1] if rows else {}
        value = last.get(spec.objective)
        if what == "failed" or value is None or not math.isfinite(value):
            study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, state=optuna.trial.TrialState.FAIL))
        else:
            study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=float(value)))
            searched.append((float(value), params, tid))
    run.finish()
    searched.sort(key=lambda r: -r[0])
    top = searched[: spec.confirm.top_k]
    meta["optuna_storage"] = url
    meta["study_name"] = spec.name
    meta["runs"].append({"run": SEARCH_RUN, "fit_s": round(run.clock - _T0, 1)})
    meta["confirm_candidates"] = {f"top{k + 1}": {"search_trial": t, "objective": v, "params": p} for k, (v, p, t) in enumerate(top)}
    splits = list(range(n_splits))
    crun = _RunWriter(exp / CONFIRM_RUN, "confirm_trainable", rng)
    truth = []
    offsets = {s: rng.normal(0, 0.01) for s in splits}
    idx = 0
    for k, (value, params, _tid) in enumerate(top):
        cand = f"top{k + 1}"
        cfg = config_for(plan, params, name=f"{spec.name}/confirm-{cand}")
        cfg["train"]["epochs"] = plan.max_epochs
        q = quality(params)
        for s in splits:
            final_test = q - 0.01 + offsets[s] + rng.normal(0, 0.003)
            rows = _epoch_rows(rng, final_test + 0.01, final_test, plan.max_epochs, plan.max_epochs, (lo, hi), params["train.lr"],
                               epoch_s=float(rng.uniform(60, 200)))
            c = copy.deepcopy(cfg)
            c["data"]["split"]["index"] = s
            explain = None
            if c["model"]["variant"] == "full":
                prompts = list(c["model"]["prior"]["prompts"])
                w = _expert_weights(rng, prompts, bench, n_images, (lo, hi), _selected(rows)[0], 0.0)
                explain = {"weights": w, "attention": _attention(rng, prompts, list(w["image_id"][:4]), w["mos"].to_numpy()[:4],
                                                                 image_size, _patch(image_size), False)}
            crun.add(idx, f"{cand}-s{s}", {"candidate": cand, "split": s}, rows, "TERMINATED", c, explain=explain)
            idx += 1
            srcc, plcc, ep = _selected(rows)
            truth.append({"trial": f"{cand}-s{s}", "variant": cand, "benchmark": bench, "split": s, "fraction": 1.0, "status": "ok",
                          "srcc": srcc, "plcc": plcc, "epoch": ep})
    crun.finish()
    meta["runs"].append({"run": CONFIRM_RUN, "fit_s": round(crun.clock - _T0, 1)})
    meta["runs"].append({"run": "total", "wall_s": round(run.clock + crun.clock - 2 * _T0 + 90.0, 1)})
    atomic_write_json(exp / META_NAME, meta)
    tr = pd.DataFrame(truth)
    table = []
    for k, (value, params, _tid) in enumerate(top):
        cand = f"top{k + 1}"
        sub = tr[tr["variant"] == cand]
        table.append({"candidate": cand, f"search {spec.objective}": value, "splits": f"{len(sub)}/{len(sub)}",
                      "test_srcc (median)": float(sub["srcc"].median()), "test_plcc (median)": float(sub["plcc"].median()),
                      "params": json.dumps(params)})
    pd.DataFrame(table).to_csv(exp / CONFIRM_TABLE, index=False)
    effects = {f"top{k + 1}": quality(p) - level for k, (_, p, _) in enumerate(top)}
    return SyntheticExperiment(exp, "tune", "top1", list(effects), [bench], splits, [1.0], effects, tr, study_name=spec.name)
