"""Everything that touches Ray: the trainables, the Tuner runs, restore, cluster checks.

Ray Tune >= 2.51 API only (``ray.tune.report/get_checkpoint/Checkpoint/RunConfig/...``). The
trainables are importable top-level functions (restore pickles them by reference) that call
:func:`drx.train.run_trial` with a ``report`` forwarding each epoch's metrics and checkpoint to
``ray.tune.report``. Nothing else in drx imports Ray.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
import ray
import torch
from ray import tune
from ray.tune import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner
from ray.tune.execution.placement_groups import PlacementGroupFactory
from ray.tune.logger import LoggerCallback
from ray.tune.result import AUTO_RESULT_KEYS
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from tqdm.auto import tqdm

from drx.config import TrackingConfig, build_config
from drx.errors import ConfigError, DrxError
from drx.experiment import (
    ABLATE_RUN, CONFIRM_RUN, RAY_EXPERIMENT_STATE, SEARCH_RUN, check_ray_run, error_line, latest_checkpoint, move_aside, next_run_name,
    read_trial_status, run_folders, study_url, trial_progress, write_trial_status,
)
from drx.io import NETWORK_FILESYSTEMS, filesystem_type
from drx.search.grid import trial_key
from drx.search.scratch import make_trial_scratch, remove_orphaned_scratch
from drx.search.space import config_for
from drx.search.study import (
    Resume, describe_account, mark_abandoned, open_search_storage, params_key, ranked_configurations, reconcile, sampler_seed,
)
from drx.train.checkpoint import CHECKPOINT_NAME
from drx.train.tracking import RunIdentity, TrackedRun, Tracking, run_identity
from drx.train.trainer import run_trial

# Testing hook (documented in docs/search.md): "GLOB:EPOCH" makes the trial whose name matches GLOB
# raise once, right after reporting EPOCH, to exercise retries from the last checkpoint.
FAULT_ENV = "DRX_FAULT_INJECT"
FAULT_MARKER = "drx-fault-injected"


# --------------------------------------------------------------------------------- the trainables


def _trial_body(cfg_dict: dict[str, Any], trial_name: str, fallback_resume: str | None = None) -> None:
    """Run one trial inside a Ray worker, resuming from Ray's checkpoint after a failure (or, when
    Ray's own state was lost, from the trial's last checkpoint of an earlier run)."""
    cfg = build_config(cfg_dict, trial_name)
    torch.set_num_threads(max(1, int(cfg.resources.cpu)))
    remove_orphaned_scratch()  # left by trials killed earlier on this node
    work = make_trial_scratch(trial_name)
    out = work / "out"
    resume = None
    checkpoint = tune.get_checkpoint()
    faulted = False
    if checkpoint is None and fallback_resume is not None:
        checkpoint = Checkpoint.from_directory(fallback_resume)
    if checkpoint is not None:
        restored = checkpoint.to_directory(str(work / "restored"))
        resume = Path(restored) / CHECKPOINT_NAME
        faulted = (Path(restored) / FAULT_MARKER).exists()
        # Keep the best-epoch weights and the metrics file of the interrupted run.
        shutil.copytree(restored, out, dirs_exist_ok=True)
    fault = os.environ.get(FAULT_ENV, "")
    fault_glob, _, fault_epoch = fault.rpartition(":")

    def report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        inject = bool(fault_glob) and not faulted and fnmatch.fnmatch(trial_name, fault_glob) and str(metrics.get("epoch")) == fault_epoch
        if inject and checkpoint_dir is not None:
            (checkpoint_dir / FAULT_MARKER).write_text("injected by DRX_FAULT_INJECT\n")
        tune.report(dict(metrics), checkpoint=Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None)
        if inject:
            raise RuntimeError(f"{FAULT_ENV}: injected failure after epoch {fault_epoch} of {trial_name}")

    try:
        run_trial(cfg, report=report, out_dir=out, resume_from=resume, progress=False, log_line=lambda s: print(s, flush=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ablation_trainable(config: dict[str, Any], trials: dict[str, dict[str, Any]]) -> None:
    """Ray trainable of an ablation grid: the grid point (variant, benchmark, split, fraction) -> its planned trial."""
    key = _grid_key(config)
    planned = trials[key]
    _trial_body(planned["config"], planned["name"], planned.get("resume"))


def _grid_key(config: dict[str, Any]) -> str:
    """The planned trial of a grid point: the axes (variant, benchmark, split, fraction), or the
    trial key itself in a continuation run."""
    if "trial" in config:
        return config["trial"]
    return trial_key(config["variant"], config["benchmark"], config["split"], config.get("fraction", 1.0))


def search_trainable(config: dict[str, Any], plan: Any, resume: dict[str, Resume] | None = None) -> None:
    """Ray trainable of an Optuna search: sampled values -> the base config with them applied. A
    configuration in `resume` (by :func:`drx.search.study.params_key`) continues from its checkpoint."""
    earlier = (resume or {}).get(params_key(config, plan.distributions))
    name = f"{plan.spec.name}/{tune.get_context().get_trial_name()}"
    _trial_body(config_for(plan, config, name=name), name, earlier.checkpoint if earlier else None)


def _confirm_point(config: dict[str, Any]) -> tuple[str, int, str | None]:
    if "pair" in config:  # continuation run: "candidate|split|resume-path"
        cand, split, resume = config["pair"].split("|", 2)
        return cand, int(split), resume or None
    return config["candidate"], int(config["split"]), None


def _confirm_config(candidates: dict[str, dict[str, Any]], cand: str, split: int) -> dict[str, Any]:
    """The resolved config of one confirm trial: the candidate on persisted split `split`."""
    cfg = build_config(candidates[cand], cand).to_dict()
    cfg["data"]["split"]["index"] = split
    cfg["name"] = f"{cfg['name']}-s{split}"
    return cfg


def confirm_trainable(config: dict[str, Any], candidates: dict[str, dict[str, Any]]) -> None:
    """Ray trainable of the confirm stage: one candidate configuration on one persisted split."""
    cand, split, resume = _confirm_point(config)
    _trial_body(_confirm_config(candidates, cand, split), f"{cand}-s{split}", resume)


# ------------------------------------------------------------------------------------- ray set-up


def start_ray(address: str | None, num_cpus: int | None = None, num_gpus: int | None = None, quiet: bool = True) -> dict[str, float]:
    """Attach to a cluster (``--address`` or ``RAY_ADDRESS``) or start a local Ray; returns its resources."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Trial results carry the resolved metrics only; Ray's "insufficient resources" hint still shows.
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": not quiet, "configure_logging": True, "logging_level": "WARNING"}
    if ray.is_initialized():
        return ray.cluster_resources()
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)
    return ray.cluster_resources()


def stop_ray() -> None:
    """Shut the local Ray down, then remove the scratch folders of trials it killed on this node."""
    if ray.is_initialized():
        ray.shutdown()
    remove_orphaned_scratch()


def alive_hosts() -> int:
    """Machines the Ray cluster's live nodes run on. Several nodes on one machine (``ray start``
    twice, Ray's cluster_utils) share its local disk, so local storage serves them all."""
    return len({n.get("NodeManagerAddress") for n in ray.nodes() if n.get("Alive")})


def check_storage(storage: str, nodes: int) -> None:
    """On a cluster of several machines (`nodes`: :func:`alive_hosts`) the experiment must live on
    storage every machine can write."""
    if nodes <= 1 or "://" in storage:
        return
    kind = filesystem_type(Path(storage))
    if kind not in NETWORK_FILESYSTEMS:
        raise ConfigError(
            f"--storage {storage} is on a local filesystem ({kind}) but the Ray cluster spans {nodes} machines: "
            "trials on other nodes could not write their results there. Use shared storage mounted on every "
            "node (NFS, Lustre, GPFS, CephFS, ...) or an object store URI (s3://bucket/path, gs://bucket/path)."
        )


def check_resources(requests: list[tuple[str, float, float]], cluster: dict[str, float]) -> None:
    """Fail fast when a trial asks for more than the whole cluster has (it would wait forever)."""
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    for name, cpu, gpu in requests:
        if gpu > gpus + 1e-9:
            raise ConfigError(
                f"trial {name} asks for {gpu:g} GPU but the Ray cluster has {gpus:g}: set resources.gpu=0 "
                "(e.g. --set resources.gpu=0) on a CPU-only machine, or attach to a GPU cluster with --address"
            )
        if cpu > cpus + 1e-9:
            raise ConfigError(f"trial {name} asks for {cpu:g} CPUs but the Ray cluster has {cpus:g}: lower resources.cpu")


def _pgf(cpu: float, gpu: float) -> PlacementGroupFactory:
    bundle: dict[str, float] = {"CPU": float(cpu)}
    if gpu > 0:
        bundle["GPU"] = float(gpu)
    return PlacementGroupFactory([bundle])


class ProgressPrinter(tune.Callback):
    """One line per finished or failed trial (and a tqdm bar on a terminal)."""

    def __init__(self, total: int, label: Callable[[Any], str], metric: str = "test_srcc", say: Callable[[str], None] = print):
        self.total = total
        self.label = label
        self.metric = metric
        self.say = say
        self.done = 0
        self.t0 = time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            self.bar = tqdm(total=total, desc="trials", file=sys.stderr)

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles the callbacks into tuner.pkl. Where lines go is this process's business, and
        # ray.init(log_to_driver=True) replaces builtins.print, after which print cannot be pickled.
        return {**self.__dict__, "say": None, "bar": None}

    def _line(self, trial, text: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.write(text)
        else:
            (self.say or print)(f"[{self.done}/{self.total}, {time.perf_counter() - self.t0:.0f} s] {text}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        status = r.get("status", "ok")
        if status == "diverged":
            self._line(trial, f"{self.label(trial)}: DIVERGED ({r.get('reason')})")
            return
        value = r.get(self.metric)
        shown = f"{value:.3f}" if isinstance(value, float) and math.isfinite(value) else "-"
        self._line(trial, f"{self.label(trial)}: {self.metric} {shown} after epoch {r.get('epoch')} ({r.get('time_total_s', 0):.0f} s)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, f"{self.label(trial)}: FAILED (error in {trial.path}/error.txt)")

    def on_experiment_end(self, trials, **info):
        if self.bar is not None:
            self.bar.close()


class TrialStatusRecorder(tune.Callback):
    """Writes drx's status record (:data:`drx.experiment.STATUS_NAME`) into each trial folder from
    Ray's callbacks, so the report never reads Ray's private experiment state: ``running`` at start
    and after each result, ``ok``/``stopped``/``diverged`` at completion, ``failed`` (with the
    error's last line) when retries are exhausted; ``failures`` counts Ray's retries."""

    def _write(self, trial, status: str, reason: str | None = None, **fields: Any) -> None:
        write_trial_status(trial.path, status, reason, trial_id=trial.trial_id, failures=int(trial.num_failures), **fields)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._write(trial, "running")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._write(trial, "running", epoch=result.get("epoch"))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._write(trial, "running", f"retrying after failure {trial.num_failures}: {error_line(trial.path) or 'error'}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        epoch, planned = int(r.get("epoch") or 0), r.get("planned_epochs")
        if r.get("status") == "diverged":
            self._write(trial, "diverged", r.get("reason"), epoch=epoch)
        elif planned is not None and epoch < int(planned):
            self._write(trial, "stopped", f"stopped by the scheduler after epoch {epoch}", epoch=epoch)
        else:
            self._write(trial, "ok", epoch=epoch)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._write(trial, "failed", error_line(trial.path) or "error")


class TrackingCallback(LoggerCallback):
    """Every trial of a Ray run in drx's experiment trackers (:mod:`drx.train.tracking`), from the
    driver: the trial's run opens when it starts, each reported epoch is logged, and the final
    result and status when it ends; a trial Ray retries continues its run. Only the driver needs
    to reach the tracker (MLflow server, W&B), not every node.

    Not Ray's MLflowLoggerCallback, WandbLoggerCallback or TBXLoggerCallback: they log Ray's
    ``trial.config`` (here the grid point or Optuna's sampled values, not the trial's resolved
    config) under Ray's names (``ray/tune/<metric>``), so ``drx train`` could not log the same.
    :mod:`drx.train.tracking` decides the names, tags and parameters for both; `identify` gives a
    Ray trial's :class:`~drx.train.tracking.RunIdentity`. (Ray's default TBXLoggerCallback still
    writes its own event files into each trial folder.)
    """

    def __init__(self, tracking: TrackingConfig, study: str, tensorboard_dir: str, identify: Callable[[Any], RunIdentity],
                 say: Callable[[str], None] = print):
        self.tracking = tracking
        self.study = study
        self.tensorboard_dir = tensorboard_dir
        self.identify = identify
        self.say = say
        self._backends: Tracking | None = None
        self._runs: dict[Any, TrackedRun] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles the callbacks into tuner.pkl: open clients and runs belong to this driver (and,
        # as for ProgressPrinter, print may be Ray's replacement, which does not pickle).
        return {**self.__dict__, "say": None, "_backends": None, "_runs": {}}

    def setup(self, *args, **kwargs):
        self._backends = Tracking(self.tracking, self.study, self.tensorboard_dir, self.say or print)
        for line in self._backends.describe():
            (self.say or print)(line)

    def log_trial_start(self, trial):
        if trial not in self._runs:
            # resume: a trial continuing after its driver was killed continues its MLflow run.
            self._runs[trial] = self._backends.start(self.identify(trial), resume=True)

    def log_trial_result(self, iteration, trial, result):
        if trial not in self._runs:
            self.log_trial_start(trial)
        self._runs[trial].log_epoch({k: v for k, v in result.items() if k not in AUTO_RESULT_KEYS})

    def log_trial_end(self, trial, failed: bool = False):
        run = self._runs.pop(trial, None)
        if run is not None:
            run.finish(failed=failed)


def tracking_callbacks(config: dict[str, Any], study: str, storage: str, identify: Callable[[Any], RunIdentity],
                       say: Callable[[str], None] = print) -> list[TrackingCallback]:
    """The :class:`TrackingCallback` of a run whose trials share `config`'s ``tracking`` section
    (none when it names no backend); TensorBoard files default to ``<storage>/tensorboard``."""
    tracking = build_config(config).tracking
    if not tracking.backends:
        return []
    return [TrackingCallback(tracking, study, str(Path(storage) / "tensorboard"), identify, say)]


# --------------------------------------------------------------------------------------- running


#: Seconds a run may sit with no trial running, pending or paused while Ray's search has not
#: finished before :class:`IdleGuard` stops it. (Ray itself first waits up to ten minutes for its
#: search to offer a trial, without calling back; the guard acts at the first step after that.)
IDLE_LIMIT_S = 60.0
#: Ray's logger that reports a failed restore (``Failed to restore the run state``), after which Ray
#: does not stop: it starts the run over from nothing in the same folder (TuneController.__init__).
RAY_RESTORE_LOGGER = "ray.tune.execution.tune_controller"


class StuckRunError(DrxError):
    """A Ray run that cannot go on: Ray could not restore it, or it sits idle with its search not
    finished. The message names the state files moved aside; the caller adds the command that
    continues (from the trial folders, as the state is gone)."""


class _RestoreFailures(logging.Handler):
    """Collects Ray's "Failed to restore the run state" reports while a restore starts."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "Failed to restore" in record.getMessage():
            exc = record.exc_info[1] if record.exc_info else None
            self.reasons.append(f"{type(exc).__name__}: {exc}" if exc else record.getMessage())


_RESTORE_WATCH = _RestoreFailures()


class IdleGuard(tune.Callback):
    """Stops a run that Ray could not restore, before it does anything, and one that sits idle.

    * Ray reports a restore that failed only in its log and then starts the run over in the same
      folder (every trial from nothing, finished ones too), or waits forever on a searcher restored
      halfway. At the first step after such a report this raises :class:`StuckRunError`.
    * No trial running, pending or paused for `limit_s` while Ray waits for its search (a snapshot's
      searcher or concurrency limiter counting trials that Ray's restored list does not hold): the
      same, at the first step Ray takes after its own wait.

    Either way it first moves the run's experiment state aside, so the rerun continues the
    unfinished trials from their checkpoints in a continuation folder instead of trying again."""

    def __init__(self, run_dir: str, limit_s: float = IDLE_LIMIT_S):
        self.run_dir = run_dir
        self.limit_s = limit_s
        self._since: float | None = None

    def _stop(self, why: str) -> None:
        moved = [move_aside(f, why) for f in sorted(Path(self.run_dir).glob(RAY_EXPERIMENT_STATE))]
        raise StuckRunError(f"{why}. " + ("; ".join(moved) or f"{self.run_dir} holds no experiment state to move aside") + ".")

    def on_step_begin(self, iteration, trials, **info):
        if _RESTORE_WATCH.reasons:
            reasons = "; ".join(dict.fromkeys(_RESTORE_WATCH.reasons))
            _RESTORE_WATCH.reasons.clear()
            self._stop(f"Ray could not restore {self.run_dir} ({reasons}) and would start it over from nothing")

    def on_step_end(self, iteration, trials, **info):
        if any(t.status in ("RUNNING", "PENDING", "PAUSED") for t in trials):
            self._since = None
            return
        now = time.monotonic()
        if self._since is None:
            self._since = now
        elif now - self._since > self.limit_s:
            self._stop(f"Ray Tune has had no trial running or pending in {self.run_dir} for {now - self._since:.0f} s while its search "
                       f"is not finished ({sum(t.status == 'TERMINATED' for t in trials)} of {len(trials)} trials finished): its restored "
                       "state does not match its trials")


def _fit(tuner: Tuner):
    """``tuner.fit()``, with drx's own errors raised from Ray's callbacks passed through unwrapped."""
    try:
        return tuner.fit()
    except Exception as exc:
        seen: BaseException | None = exc
        while seen is not None:
            if isinstance(seen, DrxError):
                raise seen from None
            seen = seen.__cause__ or seen.__context__
        raise


def _run_config(name: str, storage: str, max_failures: int, callbacks: list) -> RunConfig:
    return RunConfig(
        name=name,
        storage_path=storage,
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=1),
        verbose=0,
        callbacks=[*callbacks, TrialStatusRecorder(), IdleGuard(str(Path(storage) / name))],
        log_to_file=True,
    )


def restore_run(latest: Path, make_tuner: Callable[[str], Tuner], trainable: Any, say: Callable[[str], None]):
    """Ray's restore of the run folder `latest` (finished trials kept, unfinished and errored ones
    continue from their last checkpoints) after :func:`drx.experiment.check_ray_run` has moved its
    torn files aside (one line each through `say`); None when Ray's state cannot be trusted. A torn
    ``tuner.pkl`` (ray-project/ray#58179) is rebuilt: it holds only the run's settings, and
    `make_tuner` (the same command's) writes them again."""
    check = check_ray_run(latest)
    for line in check.moved:
        say(line)
    if check.why:
        say(check.why)
    if not check.restorable:
        return None
    if check.tuner_torn:
        make_tuner(latest.name)  # constructing the Tuner writes tuner.pkl; the experiment state stays
        say(f"{latest / 'tuner.pkl'}: written again from this command's settings")
    say(f"resuming {latest}: finished trials are kept; unfinished and errored trials continue from their last checkpoint")
    ray_log = logging.getLogger(RAY_RESTORE_LOGGER)
    _RESTORE_WATCH.reasons.clear()
    ray_log.addHandler(_RESTORE_WATCH)  # IdleGuard, in the run's callbacks, acts on what it collects
    try:
        return _fit(Tuner.restore(str(latest), trainable=trainable, resume_unfinished=True, resume_errored=True))
    finally:
        ray_log.removeHandler(_RESTORE_WATCH)


_NOT_RESTORABLE = "Ray's restore files in {latest} are unusable (see above, or its run ended before Ray wrote them)"


def fit_or_restore(exp_dir: Path, base: str, make_tuner: Callable[[str], Tuner], trainable: Any, resume: bool, say: Callable[[str], None],
                   continuation: Callable[[str, list[Path]], Tuner | None] | None = None):
    """Restore an interrupted run with Ray's own restore (:func:`restore_run`), else start it. When
    Ray's state cannot be trusted, ``continuation`` builds a run of what is left in a new folder
    ``base-rN``, each unfinished trial from its last checkpoint."""
    runs = run_folders(exp_dir, base)
    latest = runs[-1] if runs else None
    if latest is not None:
        restored = restore_run(latest, make_tuner, trainable, say)
        if restored is not None:
            return restored
    if latest is not None and continuation is not None:
        name = next_run_name(exp_dir, base)
        say(_NOT_RESTORABLE.format(latest=latest) + f"; continuing in {exp_dir / name}")
        tuner = continuation(name, runs)
        return _fit(tuner) if tuner is not None else None
    if resume and latest is None:
        say(f"--resume: nothing to resume in {exp_dir}; starting it")
    return _fit(make_tuner(base))


def run_ablation_grid(plan, storage: str, name: str, max_concurrent: int | None, max_failures: int, resume: bool, say=print):
    """Run (or resume) the grid of an ablation plan under ``storage/name/trials``.

    Resuming uses Ray's own restore (:func:`restore_run`: torn restore files moved aside first, a
    torn tuner.pkl rebuilt). If Ray's experiment or search state cannot be trusted, the trials
    that have not finished run in a continuation folder ``trials-rN``, each from its last
    checkpoint: finished trials are never run again.
    """
    exp_dir = Path(storage) / name
    trials = {t.key: {"name": t.name, "variant": t.variant, "config": t.config, "cpu": t.cpu, "gpu": t.gpu} for t in plan.trials}
    runs = run_folders(exp_dir, ABLATE_RUN)
    latest = runs[-1] if runs else None

    space: dict[str, Any] = {
        "variant": tune.grid_search(plan.variants),
        "benchmark": tune.grid_search(plan.benchmarks),
        "split": tune.grid_search(plan.split_indices),
    }
    if len(plan.fractions) > 1 or plan.fractions != [1.0]:
        space["fraction"] = tune.grid_search(plan.fractions)

    def build(planned: dict[str, dict[str, Any]], space: dict[str, Any], run_name: str, total: int) -> tuple[Any, Callable[[], Tuner]]:
        def resources(config: dict[str, Any]) -> PlacementGroupFactory:
            t = planned[_grid_key(config)]
            return _pgf(t["cpu"], t["gpu"])

        def trial_label(trial) -> str:
            return planned[_grid_key(trial.config)]["name"]

        def identify(trial) -> RunIdentity:
            t = planned[_grid_key(trial.config)]
            return run_identity(build_config(t["config"]), study=name, trial=t["name"], variant=t["variant"])

        trainable = tune.with_resources(tune.with_parameters(ablation_trainable, trials=planned), resources=resources)
        callbacks = [ProgressPrinter(total, trial_label, say=say), *tracking_callbacks(plan.trials[0].config, name, storage, identify, say)]

        def make() -> Tuner:
            return Tuner(
                trainable,
                param_space=space,
                tune_config=TuneConfig(
                    scheduler=FIFOScheduler(),  # no early stopping: an ablation compares fully trained models
                    max_concurrent_trials=max_concurrent,
                    # Trials of equal resources reuse worker processes: no re-import of torch per trial.
                    reuse_actors=True,
                    trial_name_creator=trial_label,
                    trial_dirname_creator=trial_label,
                ),
                run_config=_run_config(run_name, str(exp_dir), max_failures, callbacks),
            )

        return trainable, make

    if latest is None:
        if resume:
            say(f"--resume: nothing to resume in {exp_dir}; starting it")
        return _fit(build(trials, space, ABLATE_RUN, len(trials))[1]())
    trainable, make = build(trials, space, latest.name, len(trials))
    restored = restore_run(latest, lambda _name: make(), trainable, say)
    if restored is not None:
        return restored
    progress: dict[str, tuple[str, Path]] = {}
    for run in runs:  # later runs supersede earlier ones
        for tdir in (p for p in run.iterdir() if p.is_dir()):
            state, _ = trial_progress(tdir)
            if state != "new" or tdir.name not in progress:
                progress[tdir.name] = (state, tdir)
    todo = {}
    for key, t in trials.items():
        state, tdir = progress.get(t["name"], ("new", None))
        if state == "done":
            continue
        ckpt = latest_checkpoint(tdir) if tdir is not None else None
        todo[key] = {**t, "resume": str(ckpt) if ckpt else None}
    if not todo:
        say(f"every trial of {exp_dir} has finished; nothing to run")
        return None
    run_name = next_run_name(exp_dir, ABLATE_RUN)
    say(_NOT_RESTORABLE.format(latest=latest) + f"; continuing the {len(todo)} unfinished trial(s) in {exp_dir / run_name}, "
        "each from its last checkpoint")
    return _fit(build({**trials, **todo}, {"trial": tune.grid_search(sorted(todo))}, run_name, len(todo))[1]())


#: The Optuna user attribute holding why a trial was told FAIL (a NaN or missing objective).
FAIL_REASON_ATTR = "fail_reason"


class NanFailingOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, except that a trial ending with a NaN (or missing) objective is told to
    Optuna as FAILED, its reason in the user attribute :data:`FAIL_REASON_ATTR`. (Ray's own tell
    passes NaN as a COMPLETE value, Optuna refuses it, Ray only logs that, and the study keeps the
    trial RUNNING forever.) Uses OptunaSearch's ``_ot_trials``/``_ot_study``/``_completed_trials``."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        value = (result or {}).get(self.metric)
        defined = isinstance(value, (int, float)) and math.isfinite(value)
        ot_trial = self._ot_trials.get(trial_id)
        if error or defined or ot_trial is None or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        r = result or {}
        if r.get("reason"):
            why = str(r["reason"])  # a diverged trial's own reason
        elif r.get("best_epoch") is None:
            why = "no epoch had a defined value (constant predictions or constant validation MOS)"
        else:
            why = "the last epoch's value is undefined (constant predictions)"
        reason = f"objective {self.metric} is {'missing' if value is None else value} after epoch {r.get('epoch')}: {why}"
        ot_trial.set_user_attr(FAIL_REASON_ATTR, reason)
        self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
        self._completed_trials.add(trial_id)


@dataclass
class SearchOutcome:
    """What a search left: the study's storage URL and name, its configurations ranked best first
    ((objective, params, study trial number), each configuration once), the trial folder of each
    configuration, and the one-line account of the study's trials."""

    url: str
    study_name: str
    ranked: list[tuple[float, dict[str, Any], int]]
    folders: dict[str, str]
    account: str


def run_search(plan, storage: str, name: str, max_failures: int, resume: bool, say=print) -> SearchOutcome:
    """The Optuna search over one split's validation objective, on Ray Tune.

    Every run, the first or a continuation after any kill, starts from
    :func:`drx.search.study.reconcile` (the study and the trial folders brought into agreement:
    dead trials marked FAIL, unfinished configurations re-queued to continue from their
    checkpoints under their old names, the start point enqueued once) and runs only what the
    budget still lacks, in ``search`` or a continuation folder ``search-rN``. Ray's own restore
    files are not used for a search (they lag the study and the folders by up to a snapshot).
    """
    spec = plan.spec
    exp_dir = Path(storage) / name
    url = study_url(spec.storage, exp_dir)
    runs = run_folders(exp_dir, SEARCH_RUN)
    if runs:
        for line in check_ray_run(runs[-1]).moved:
            say(line)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # drx says what matters about the study in its own lines
    study_storage = open_search_storage(url, say)
    study = optuna.create_study(storage=study_storage, study_name=spec.name, direction="maximize", load_if_exists=True)
    seed = sampler_seed(spec.seed, study)
    ledger = reconcile(study, plan, exp_dir, spec.budget.num_samples, [dict(plan.defaults)] if spec.enqueue_base else [])
    for line in ledger.lines:
        say(line)
    if ledger.to_run:
        run_name = next_run_name(exp_dir, SEARCH_RUN)
        if runs:
            say(f"continuing the search in {exp_dir / run_name}: {len(ledger.finished)} of {spec.budget.num_samples} configurations "
                f"have finished; {ledger.waiting} queued and {ledger.new} new (sampler seed {seed}, from the study's trial count)")
        elif resume:
            say(f"--resume: nothing to resume in {exp_dir}; starting it")
        _fit(_search_tuner(plan, study_storage, seed, ledger.resume, run_name, ledger.to_run, str(exp_dir), max_failures, say))
        left = mark_abandoned(study, "left RUNNING when its search run ended (an ask or tell that failed past its retries)")
        if left:
            say(f"study {spec.name}: trial(s) {', '.join(f'#{n}' for n in left)} left RUNNING at the end of the run: marked FAIL")
    else:
        say(f"search {name}: all {len(ledger.finished)} configurations of the budget have finished; nothing to run")
    names = {}
    for run in run_folders(exp_dir, SEARCH_RUN):
        for tdir in (p for p in run.iterdir() if p.is_dir() and (p / "params.json").is_file()):
            names[params_key(json.loads((tdir / "params.json").read_text()), plan.distributions)] = tdir.name
    retried = sum(int((read_trial_status(p) or {}).get("failures") or 0) for run in run_folders(exp_dir, SEARCH_RUN) for p in run.iterdir() if p.is_dir())
    ranked = ranked_configurations(study, plan.distributions)
    folders = {params_key(p, plan.distributions): names.get(params_key(p, plan.distributions), "") for _, p, _ in ranked}
    return SearchOutcome(url, spec.name, ranked, folders, describe_account(study, retried))


def _search_tuner(plan, study_storage, seed: int, resume: dict[str, Resume], run_name: str, num_samples: int, exp_dir: str,
                  max_failures: int, say) -> Tuner:
    """The Tuner of one search run: Ray's OptunaSearch on the persistent study (its start points
    are already in the study, as WAITING trials), ASHA or FIFO, `num_samples` trials."""
    spec = plan.spec
    searcher = NanFailingOptunaSearch(
        space=plan.distributions,
        metric=spec.objective,
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=seed),
        study_name=spec.name,
        storage=study_storage,
    )
    if spec.budget.max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=spec.budget.max_concurrent)
    if spec.scheduler.type == "asha":
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            metric=spec.objective,
            mode="max",
            max_t=plan.max_epochs,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    base = build_config(plan.base_config)
    cpu = spec.resources.cpu or base.resources.cpu
    gpu = spec.resources.gpu if spec.resources.gpu is not None else base.resources.gpu
    trainable = tune.with_resources(tune.with_parameters(search_trainable, plan=plan, resume=resume), resources=_pgf(cpu, gpu))
    names = {key: r.name for key, r in resume.items()}

    def label(trial) -> str:
        # A configuration continued from an earlier run keeps its trial's name: the report merges the folders by name.
        return names.get(params_key(trial.config, plan.distributions), f"search-{trial.trial_id}")

    def identify(trial) -> RunIdentity:
        # The trial's name as search_trainable gives it (Ray's trial name is the label above).
        cfg = build_config(config_for(plan, trial.config, name=f"{spec.name}/{label(trial)}"))
        return run_identity(cfg, study=Path(exp_dir).name, trial=label(trial), variant="search")

    study = Path(exp_dir)
    callbacks = [ProgressPrinter(num_samples, label, metric=spec.objective, say=say),
                 *tracking_callbacks(plan.base_config, study.name, str(study.parent), identify, say)]
    return Tuner(
        trainable,
        tune_config=TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=num_samples, trial_name_creator=label,
                               trial_dirname_creator=label),
        run_config=_run_config(run_name, exp_dir, max_failures, callbacks),
    )


def run_confirm(candidates: dict[str, dict[str, Any]], splits: list[int], storage: str, name: str, max_failures: int, resume: bool, say=print):
    """Re-run the best configurations without early stopping on the persisted splits."""
    exp_dir = str(Path(storage) / name)
    any_cfg = build_config(next(iter(candidates.values())))
    trainable = tune.with_resources(
        tune.with_parameters(confirm_trainable, candidates=candidates), resources=_pgf(any_cfg.resources.cpu, any_cfg.resources.gpu)
    )

    def label(trial) -> str:
        cand, split, _ = _confirm_point(trial.config)
        return f"{cand}-s{split}"

    def identify(trial) -> RunIdentity:
        cand, split, _ = _confirm_point(trial.config)
        return run_identity(build_config(_confirm_config(candidates, cand, split)), study=name, trial=label(trial), variant=cand)

    def make(run_name: str, space: dict[str, Any] | None = None) -> Tuner:
        callbacks = [ProgressPrinter(len(candidates) * len(splits), label, say=say),
                     *tracking_callbacks(next(iter(candidates.values())), name, storage, identify, say)]
        return Tuner(
            trainable,
            param_space=space or {"candidate": tune.grid_search(list(candidates)), "split": tune.grid_search(splits)},
            tune_config=TuneConfig(scheduler=FIFOScheduler(), trial_name_creator=label, trial_dirname_creator=label),
            run_config=_run_config(run_name, exp_dir, max_failures, callbacks),
        )

    def continuation(run_name: str, runs: list[Path]) -> Tuner | None:
        progress: dict[str, tuple[str, Path]] = {}
        for run in runs:
            for t in (p for p in run.iterdir() if p.is_dir()):
                state, _ = trial_progress(t)
                if state != "new" or t.name not in progress:
                    progress[t.name] = (state, t)
        pairs = []
        for cand in candidates:
            for split in splits:
                state, tdir = progress.get(f"{cand}-s{split}", ("new", None))
                if state != "done":
                    ckpt = latest_checkpoint(tdir) if tdir is not None else None
                    pairs.append(f"{cand}|{split}|{ckpt or ''}")
        return make(run_name, {"pair": tune.grid_search(pairs)}) if pairs else None

    return fit_or_restore(Path(exp_dir), CONFIRM_RUN, make, trainable, resume, say, continuation)
