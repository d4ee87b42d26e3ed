"""Experiment trackers: every trial's resolved config, per-epoch metrics and final result in MLflow,
TensorBoard or Weights & Biases (``tracking.backends``, or ``--track`` on the command line).

This module is the one place that decides what a tracker sees:

* :func:`run_identity`: a trial's run name, its tags (study, trial, variant, benchmark, split) and
  its parameters (the resolved config flattened to dotted keys, ``tracking`` left out);
* :func:`epoch_metrics`: which values of an epoch's report are logged, at step = the epoch (1-based);
* :func:`final_metrics` and :func:`trial_status`: the final result (the selected epoch's metrics) and
  the status word (``ok``, ``diverged``, ``no_selection``, ``stopped``, ``failed``).

A study is one group (MLflow experiment, W&B group, TensorBoard folder) with one run per trial. The
writers use each library's own client API: ``mlflow.MlflowClient``; ``tensorboardX.SummaryWriter``
(the writer of Ray Tune's TBXLoggerCallback) with its hparams summary; ``wandb.init(...,
reinit="create_new")``, one W&B run per trial, several open at once in one process.

``drx train`` feeds a :class:`Tracking` from run_trial's per-epoch report (:func:`tracked_trial`);
``drx ablate`` and ``drx tune`` feed the same class from Ray Tune's callbacks on the driver
(:class:`drx.search.tune.TrackingCallback`), so only the driver needs to reach the tracker.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drx.config import ExperimentConfig, TrackingConfig, without_tracking
from drx.errors import TrackingError
from drx.experiment import NO_SELECTION

#: Backend -> (the module it needs, the drx extra that installs it).
REQUIREMENTS = {"mlflow": ("mlflow", "mlflow"), "tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb", "wandb")}

#: The tags of every run, in this order.
TAG_KEYS = ("study", "trial", "variant", "benchmark", "split")

#: Report keys that are not metrics: the step itself and the planned length.
NOT_METRICS = ("epoch", "planned_epochs")

#: MLflow accepts at most this many parameters (or metrics) in one log_batch call.
MLFLOW_BATCH = 100

#: How a trial's status (:func:`trial_status`) ends its MLflow run (else FINISHED); a W&B run ends
#: with exit code 1 for these.
MLFLOW_STATUS = {"failed": "FAILED", "diverged": "FAILED", "interrupted": "KILLED"}


# ---------------------------------------------------------------------------------- what is logged


@dataclass(frozen=True)
class RunIdentity:
    """What a tracker knows a trial by: its run name (the trial's folder name), tags and parameters."""

    name: str
    tags: dict[str, str]
    params: dict[str, Any]  # dotted key -> value (lists and mappings kept as values)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``; lists stay values, an empty mapping
    stays ``{}`` (so every key of the config appears)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def param_text(value: Any) -> str:
    """A parameter as text for trackers that store strings: strings as they are, anything else as
    JSON (``[dis, sem]`` -> ``["dis", "sem"]``, None -> ``null``)."""
    return value if isinstance(value, str) else json.dumps(value)


def group_name(tracking: TrackingConfig, study: str) -> str:
    """The group of a study's runs: ``tracking.group``, else the study's name."""
    return tracking.group or study


def study_of(cfg: ExperimentConfig) -> str:
    """The study a config belongs to when no study names it (``drx train``): the first part of
    its name (trials of a study are named ``<study>/<trial>``; a preset's name is its own study)."""
    return cfg.name.split("/", 1)[0]


def run_identity(cfg: ExperimentConfig, study: str | None = None, trial: str | None = None, variant: str | None = None) -> RunIdentity:
    """The run of one trial. `study` defaults to :func:`study_of`, `trial` to the last part of the
    config's name, `variant` to ``model.variant`` (an ablation passes its row's name). The benchmark
    tag is ``train->test`` for a cross-dataset pair; ``fraction`` is tagged when below 1."""
    d = cfg.data
    trial = trial or cfg.name.rsplit("/", 1)[-1]
    tags = {
        "study": study or study_of(cfg),
        "trial": trial,
        "variant": variant or cfg.model.variant,
        "benchmark": d.benchmark if d.test_benchmark is None else f"{d.benchmark}->{d.test_benchmark}",
        "split": str(d.split.index),
    }
    if d.split.fraction != 1.0:
        tags["fraction"] = f"{d.split.fraction:g}"
    return RunIdentity(trial, tags, flatten(without_tracking(cfg.to_dict())))


def epoch_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The numbers of one epoch's report (run_trial's ``report`` dict: ``train_loss``, ``lr``,
    ``val_srcc``, ``test_plcc``, ``epoch_s``, ``best_epoch``, ...), without the step itself. NaN
    stays NaN (an undefined metric is not a zero); None and words (status, select_on) are not metrics."""
    return {k: float(v) for k, v in report.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_METRICS}


def trial_status(history: list[dict[str, Any]], failed: bool = False, interrupted: bool = False) -> str:
    """How a trial ended, from its epoch reports: ``interrupted`` (Ctrl-C), ``failed`` (raised),
    ``diverged``, ``stopped`` (by the scheduler before its planned epochs), ``no_selection`` (no
    epoch had a defined selection metric), ``ok``; ``no_result`` when it reported nothing."""
    if interrupted:
        return "interrupted"
    if failed:
        return "failed"
    if not history:
        return "no_result"
    last = history[-1]
    if last.get("status") == "diverged":
        return "diverged"
    planned = last.get("planned_epochs")
    if planned is not None and int(last.get("epoch") or 0) < int(planned):
        return "stopped"
    ok = [h for h in history if h.get("status") == "ok"]
    if ok and ok[-1].get("best_epoch") is None:
        return NO_SELECTION
    return "ok"


def final_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    """The final result: ``epochs_completed``, and the selected epoch (``selected_epoch``) with its
    validation and test metrics (``selected_val_srcc``, ``selected_test_plcc``, ...): the epoch
    run_trial selected (``best_epoch`` of the last report), as it reported it."""
    ok = [h for h in history if h.get("status") == "ok"]
    out: dict[str, float] = {"epochs_completed": float(len(ok))}
    best = ok[-1].get("best_epoch") if ok else None
    if best is None:
        return out
    out["selected_epoch"] = float(best)
    row = next((h for h in ok if h.get("epoch") == best), None)
    if row is not None:  # absent when a driver restarted after the selected epoch: its report was not seen
        out.update({f"selected_{k}": v for k, v in epoch_metrics(row).items() if k.startswith(("val_", "test_"))})
    return out


# ----------------------------------------------------------------------------------------- writers


def check_installed(tracking: TrackingConfig) -> None:
    """Raise :class:`TrackingError` naming the drx extra of every backend whose library is missing."""
    missing = []
    for backend in tracking.backends:
        module, extra = REQUIREMENTS[backend]
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append((backend, module, extra))
    if missing:
        names = ", ".join(f"{b} needs the {m} package" for b, m, _ in missing)
        extras = ",".join(e for _, _, e in missing)
        raise TrackingError(f"tracking.backends {[b for b, _, _ in missing]}: {names}, which is not installed; "
                            f"pip install 'drx[{extras}]'")


class _MLflow:
    """One MLflow experiment per group, one run per trial (``mlflow.MlflowClient``)."""

    name = "mlflow"

    def __init__(self, tracking: TrackingConfig, group: str, tensorboard_dir: Path):
        import mlflow  # optional extra drx[mlflow]; checked by check_installed
        from mlflow.exceptions import MlflowException  # with mlflow, above

        self.uri = tracking.mlflow_uri or mlflow.get_tracking_uri()
        self.client = mlflow.MlflowClient(tracking_uri=self.uri)
        try:
            found = self.client.get_experiment_by_name(group)
            self.experiment_id = found.experiment_id if found is not None else self.client.create_experiment(group)
        except MlflowException as exc:
            raise TrackingError(f"tracking: MLflow at {self.uri} cannot open the experiment {group!r}: {exc}; "
                                "check tracking.mlflow_uri (or MLFLOW_TRACKING_URI) and that the server is up") from None
        self.where = f"MLflow {self.uri}, experiment {group!r}"

    def start(self, ident: RunIdentity, resume: bool) -> str:
        from mlflow.entities import Param  # with mlflow (see __init__)

        run_id = None
        if resume and "'" not in ident.name:
            # A trial that continues after its driver was killed (or interrupted) continues its run.
            found = self.client.search_runs([self.experiment_id], max_results=20, filter_string=f"tags.trial = '{ident.name}'",
                                            order_by=["attributes.start_time DESC"])
            run_id = next((r.info.run_id for r in found if r.info.status in ("RUNNING", "KILLED")), None)
        if run_id is None:
            run_id = self.client.create_run(self.experiment_id, run_name=ident.name, tags=ident.tags).info.run_id
        params = [Param(k, param_text(v)) for k, v in ident.params.items()]
        for i in range(0, len(params), MLFLOW_BATCH):
            self.client.log_batch(run_id, params=params[i:i + MLFLOW_BATCH])
        return run_id

    def _metrics(self, metrics: dict[str, float], step: int) -> list:
        from mlflow.entities import Metric  # with mlflow (see __init__)

        now = int(time.time() * 1000)
        return [Metric(k, v, now, step) for k, v in metrics.items()]

    def log(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        self.client.log_batch(run_id, metrics=self._metrics(metrics, step))

    def finish(self, run_id: str, step: int, status: str, final: dict[str, float]) -> None:
        from mlflow.entities import RunTag  # with mlflow (see __init__)

        self.client.log_batch(run_id, metrics=self._metrics(final, step), tags=[RunTag("status", status)])
        self.client.set_terminated(run_id, MLFLOW_STATUS.get(status, "FINISHED"))


class _TensorBoard:
    """One folder per trial, ``<tensorboard_dir>/<group>/<trial>`` (``tensorboardX.SummaryWriter``):
    a scalar per metric per epoch; at the end the tags, parameters and final result as hparams."""

    name = "tensorboard"

    def __init__(self, tracking: TrackingConfig, group: str, tensorboard_dir: Path):
        importlib.import_module("tensorboardX")  # optional: fails here, not at the first trial
        self.root = Path(tracking.tensorboard_dir or tensorboard_dir).expanduser().resolve() / group
        self.root.mkdir(parents=True, exist_ok=True)
        self.where = f"TensorBoard {self.root} (tensorboard --logdir {self.root.parent})"

    def start(self, ident: RunIdentity, resume: bool):
        from tensorboardX import SummaryWriter  # optional extra drx[tensorboard]

        return (SummaryWriter(logdir=str(self.root / ident.name), flush_secs=10), ident)

    def log(self, handle, step: int, metrics: dict[str, float]) -> None:
        writer, _ = handle
        for key, value in metrics.items():
            writer.add_scalar(key, value, global_step=step)
        writer.flush()

    def finish(self, handle, step: int, status: str, final: dict[str, float]) -> None:
        from tensorboardX.summary import hparams  # with tensorboardX (see start)

        writer, ident = handle
        for key, value in final.items():
            writer.add_scalar(key, value, global_step=step)
        # The HParams dashboard takes numbers, strings and booleans: lists and mappings go as JSON text.
        values = {**{k: v if isinstance(v, (int, float, str, bool)) else param_text(v) for k, v in ident.params.items()},
                  **ident.tags, "status": status}
        for summary in hparams(hparam_dict=values, metric_dict=final):
            writer.file_writer.add_summary(summary)
        writer.close()


class _Wandb:
    """One W&B run per trial in the group (``wandb.init(reinit="create_new")``); W&B's own
    variables choose the entity, mode (``WANDB_MODE=offline``) and folder (``WANDB_DIR``)."""

    name = "wandb"

    def __init__(self, tracking: TrackingConfig, group: str, tensorboard_dir: Path):
        import wandb  # optional extra drx[wandb]; checked by check_installed

        self.wandb = wandb
        self.group = group
        self.project = tracking.wandb_project or os.environ.get("WANDB_PROJECT") or "drx"
        mode = os.environ.get("WANDB_MODE", "online")
        self.where = f"W&B project {self.project!r}, group {group!r}" + (f" ({mode})" if mode != "online" else "")

    def start(self, ident: RunIdentity, resume: bool):
        # A W&B tag holds at most 64 characters; the full values are in the config too.
        tags = [f"{k}:{ident.tags[k]}"[:64] for k in TAG_KEYS if k in ident.tags]
        return self.wandb.init(
            project=self.project, group=self.group, name=ident.name, job_type=ident.tags["variant"], tags=tags,
            config={**ident.params, **ident.tags}, reinit="create_new",
            # console off: the driver's own output stays where it is; W&B's banner lines stay quiet.
            settings=self.wandb.Settings(console="off", silent=True),
        )

    def log(self, run, step: int, metrics: dict[str, float]) -> None:
        run.log(metrics, step=step)

    def finish(self, run, step: int, status: str, final: dict[str, float]) -> None:
        run.summary.update({**final, "status": status})
        run.finish(exit_code=1 if status in MLFLOW_STATUS else 0)


WRITERS = {"mlflow": _MLflow, "tensorboard": _TensorBoard, "wandb": _Wandb}


# ----------------------------------------------------------------------------------------- runs


@dataclass
class TrackedRun:
    """One trial in every backend. Keeps the trial's reports, from which :meth:`finish` derives the
    status and the final result. A backend that fails mid-run is reported once and left out for
    the rest of the run: tracking never stops training (the experiment folder is the record)."""

    ident: RunIdentity
    handles: list[tuple[Any, Any]]
    say: Callable[[str], None]
    history: list[dict[str, Any]] = field(default_factory=list)

    def _each(self, what: str, call: Callable[[Any, Any], None]) -> None:
        kept = []
        for writer, handle in self.handles:
            try:
                call(writer, handle)
                kept.append((writer, handle))
            except Exception as exc:  # a tracker down mid-run must not end the trial; said once
                self.say(f"tracking: {writer.name} failed to {what} for trial {self.ident.name} ({type(exc).__name__}: {exc}); "
                         f"{writer.name} logs nothing more for this trial")
        self.handles = kept

    def log_epoch(self, report: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        """Log one epoch's report (run_trial's ``report`` signature), at step = its epoch."""
        self.history.append(dict(report))
        step, metrics = int(report.get("epoch") or len(self.history)), epoch_metrics(report)
        self._each("log epoch", lambda w, h: w.log(h, step, metrics))

    def finish(self, failed: bool = False, interrupted: bool = False) -> str:
        """Log the final result and the status (:func:`trial_status`), close the run; returns the status."""
        status = trial_status(self.history, failed, interrupted)
        final = final_metrics(self.history)
        step = int(self.history[-1].get("epoch") or 0) if self.history else 0
        self._each("finish", lambda w, h: w.finish(h, step, status, final))
        self.handles = []
        return status


class Tracking:
    """The backends of one command (``tracking.backends``), each opened once for the study's group:
    missing libraries and an unreachable MLflow raise :class:`TrackingError` here, before any training.

    ``tensorboard_dir``: where TensorBoard files go when ``tracking.tensorboard_dir`` is not set."""

    def __init__(self, tracking: TrackingConfig, study: str, tensorboard_dir: str | Path, say: Callable[[str], None] = print):
        check_installed(tracking)
        self.group = group_name(tracking, study)
        self.say = say
        self.writers = [WRITERS[b](tracking, self.group, Path(tensorboard_dir)) for b in tracking.backends]

    def describe(self) -> list[str]:
        """One line per backend: where its runs go."""
        return [f"tracking: {w.where}" for w in self.writers]

    def start(self, ident: RunIdentity, resume: bool = False) -> TrackedRun:
        """Open the trial's run in every backend. `resume`: continue the trial's MLflow run that a
        killed or interrupted driver left RUNNING or KILLED (W&B and TensorBoard add to the group)."""
        run = TrackedRun(ident, [], self.say)
        for writer in self.writers:
            try:
                run.handles.append((writer, writer.start(ident, resume)))
            except Exception as exc:  # e.g. W&B not logged in: said, and the trial trains on
                self.say(f"tracking: {writer.name} could not start a run for trial {ident.name} ({type(exc).__name__}: {exc})")
        return run


def track_overrides(track: str | None) -> list[str]:
    """``--track mlflow,tensorboard`` -> the dotted override ``tracking.backends=[mlflow,tensorboard]``
    (validated with the config: an unknown name is an error naming the closest)."""
    if track is None:
        return []
    names = [n.strip() for n in track.split(",")]
    if not all(names):
        raise TrackingError(f"--track {track!r}: expected backend names separated by commas (mlflow, tensorboard, wandb)")
    return [f"tracking.backends=[{','.join(names)}]"]


@contextmanager
def tracked_trial(cfg: ExperimentConfig, tensorboard_dir: str | Path, resume: bool = False,
                  say: Callable[[str], None] = print) -> Iterator[Callable[..., None] | None]:
    """``drx train``'s tracking: yields the ``report`` to pass to run_trial (None when no backend is
    set), and finishes the run when the block ends (``interrupted`` on Ctrl-C, ``failed`` if it
    raised). `resume` (``--resume``): continue the MLflow run of the interrupted run."""
    if not cfg.tracking.backends:
        yield None
        return
    tracking = Tracking(cfg.tracking, study_of(cfg), tensorboard_dir, say)
    for line in tracking.describe():
        say(line)
    run = tracking.start(run_identity(cfg), resume=resume)
    try:
        yield run.log_epoch
    except KeyboardInterrupt:
        run.finish(interrupted=True)
        raise
    except BaseException:
        run.finish(failed=True)
        raise
    run.finish()


__all__ = ["RunIdentity", "Tracking", "TrackedRun", "check_installed", "epoch_metrics", "final_metrics", "run_identity",
           "track_overrides", "tracked_trial", "trial_status"]
