"""Everything that touches Ray: the trainables, the Tuner runs, restore, cluster checks.

Ray Tune >= 2.51 API only (``ray.tune.report/get_checkpoint/Checkpoint/RunConfig/...``). The
trainables are importable top-level functions (restore pickles them by reference) that call
:func:`drx.train.run_trial` with a ``report`` forwarding each epoch's metrics and checkpoint to
``ray.tune.report``. Nothing else in drx imports Ray.
"""

from __future__ import annotations

import fnmatch
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import optuna
import ray
import torch
from ray import tune
from ray.tune import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner
from ray.tune.execution.placement_groups import PlacementGroupFactory
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from tqdm.auto import tqdm

from drx.config import build_config
from drx.errors import ConfigError
from drx.experiment import (
    ABLATE_RUN, CONFIRM_RUN, SEARCH_RUN, error_line, latest_checkpoint, next_run_name, open_study_storage, run_folders, study_url,
    trial_progress, validate_ray_state, write_trial_status,
)
from drx.search.grid import trial_key
from drx.search.scratch import make_trial_scratch, remove_orphaned_scratch
from drx.search.space import config_for
from drx.train.trainer import run_trial

# Testing hook (documented in docs/search.md): "GLOB:EPOCH" makes the trial whose name matches GLOB
# raise once, right after reporting EPOCH, to exercise retries from the last checkpoint.
FAULT_ENV = "DRX_FAULT_INJECT"
FAULT_MARKER = "drx-fault-injected"
SHARED_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "cephfs", "glusterfs", "fuse.glusterfs", "fuse.juicefs", "fuse.s3fs", "fuse.gcsfuse", "9p", "virtiofs", "wekafs", "fuse.sshfs"}


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
        resume = Path(restored) / "checkpoint.pt"
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


def search_trainable(config: dict[str, Any], plan: Any) -> None:
    """Ray trainable of an Optuna search: sampled values -> the base config with them applied."""
    name = f"{plan.spec.name}/search-{tune.get_context().get_trial_id()}"
    _trial_body(config_for(plan, config, name=name), name)


def _confirm_point(config: dict[str, Any]) -> tuple[str, int, str | None]:
    if "pair" in config:  # continuation run: "candidate|split|resume-path"
        cand, split, resume = config["pair"].split("|", 2)
        return cand, int(split), resume or None
    return config["candidate"], int(config["split"]), None


def confirm_trainable(config: dict[str, Any], candidates: dict[str, dict[str, Any]]) -> None:
    """Ray trainable of the confirm stage: one candidate configuration on one persisted split."""
    cand, split, resume = _confirm_point(config)
    cfg = build_config(candidates[cand], cand).to_dict()
    cfg["data"]["split"]["index"] = split
    cfg["name"] = f"{cfg['name']}-s{split}"
    _trial_body(cfg, f"{cand}-s{split}", resume)


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


def alive_nodes() -> int:
    return sum(1 for n in ray.nodes() if n.get("Alive"))


def filesystem_type(path: Path) -> str:
    """The mount type holding `path` (longest matching mount point in /proc/mounts)."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and (target == parts[1] or target.startswith(parts[1].rstrip("/") + "/")) and len(parts[1]) > len(best):
            best, kind = parts[1], parts[2]
    return kind


def check_storage(storage: str, nodes: int) -> None:
    """On a multi-node cluster the experiment must live on storage every node can write."""
    if nodes <= 1 or "://" in storage:
        return
    kind = filesystem_type(Path(storage))
    if kind not in SHARED_FS:
        raise ConfigError(
            f"--storage {storage} is on a local filesystem ({kind}) but the Ray cluster has {nodes} nodes: "
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

    def _line(self, trial, text: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.write(text)
        else:
            self.say(f"[{self.done}/{self.total}, {time.perf_counter() - self.t0:.0f} s] {text}")

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


# --------------------------------------------------------------------------------------- running


def _run_config(name: str, storage: str, max_failures: int, callbacks: list) -> RunConfig:
    return RunConfig(
        name=name,
        storage_path=storage,
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=1),
        verbose=0,
        callbacks=[*callbacks, TrialStatusRecorder()],
        log_to_file=True,
    )


def fit_or_restore(exp_dir: Path, base: str, make_tuner: Callable[[str], Tuner], trainable: Any, resume: bool, say: Callable[[str], None],
                   continuation: Callable[[str, list[Path]], Tuner | None] | None = None):
    """Restore an interrupted run with Ray's own restore (finished trials are kept, unfinished and
    errored ones continue), else start it. When Ray's state was lost, ``continuation`` builds a
    run of what is left in a new folder ``base-rN``."""
    runs = run_folders(exp_dir, base)
    latest = runs[-1] if runs else None
    if latest is not None and Tuner.can_restore(str(latest)) and validate_ray_state(latest):
        say(f"resuming {latest}: finished trials are kept; unfinished and errored trials continue from their last checkpoint")
        return Tuner.restore(str(latest), trainable=trainable, resume_unfinished=True, resume_errored=True).fit()
    if latest is not None and continuation is not None:
        name = next_run_name(exp_dir, base)
        say(f"Ray's experiment state in {latest} is unusable (cut short when the driver was killed); continuing in {exp_dir / name}")
        tuner = continuation(name, runs)
        return tuner.fit() if tuner is not None else None
    if resume and latest is None:
        say(f"--resume: nothing to resume in {exp_dir}; starting it")
    return make_tuner(base).fit()


def run_ablation_grid(plan, storage: str, name: str, max_concurrent: int | None, max_failures: int, resume: bool, say=print):
    """Run (or resume) the grid of an ablation plan under ``storage/name/trials``.

    Resuming uses Ray's own restore. If Ray's experiment state was lost (a driver killed while Ray
    copied it), the trials that have not finished run in a continuation folder ``trials-rN``, each
    from its last checkpoint: finished trials are never run again.
    """
    exp_dir = Path(storage) / name
    trials = {t.key: {"name": t.name, "config": t.config, "cpu": t.cpu, "gpu": t.gpu} for t in plan.trials}
    runs = run_folders(exp_dir, ABLATE_RUN)
    latest = runs[-1] if runs else None
    restorable = latest is not None and Tuner.can_restore(str(latest)) and validate_ray_state(latest)

    space: dict[str, Any] = {
        "variant": tune.grid_search(plan.variants),
        "benchmark": tune.grid_search(plan.benchmarks),
        "split": tune.grid_search(plan.split_indices),
    }
    if len(plan.fractions) > 1 or plan.fractions != [1.0]:
        space["fraction"] = tune.grid_search(plan.fractions)
    run_name = latest.name if latest is not None else ABLATE_RUN
    total = len(plan.trials)
    if latest is not None and not restorable:
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
        say(f"Ray's experiment state in {latest} is unusable (cut short when the driver was killed); "
            f"continuing the {len(todo)} unfinished trial(s) in {exp_dir / run_name}, each from its last checkpoint")
        trials = {**trials, **todo}
        space = {"trial": tune.grid_search(sorted(todo))}
        total = len(todo)

    def resources(config: dict[str, Any]) -> PlacementGroupFactory:
        t = trials[_grid_key(config)]
        return _pgf(t["cpu"], t["gpu"])

    def trial_label(trial) -> str:
        return trials[_grid_key(trial.config)]["name"]

    trainable = tune.with_resources(tune.with_parameters(ablation_trainable, trials=trials), resources=resources)

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
            run_config=_run_config(run_name, str(exp_dir), max_failures, [ProgressPrinter(total, trial_label, say=say)]),
        )

    if restorable:
        say(f"resuming {latest}: finished trials are kept; unfinished and errored trials continue from their last checkpoint")
        return Tuner.restore(str(latest), trainable=trainable, resume_unfinished=True, resume_errored=True).fit()
    if resume and latest is None:
        say(f"--resume: nothing to resume in {exp_dir}; starting it")
    return make().fit()


def run_search(plan, storage: str, name: str, max_failures: int, resume: bool, say=print):
    """The Optuna search over one split's validation objective, on Ray Tune."""
    spec = plan.spec
    exp_dir = str(Path(storage) / name)
    url = study_url(spec.storage, exp_dir)
    study_storage = open_study_storage(url)
    sampler = optuna.samplers.TPESampler(seed=spec.seed)
    searcher = OptunaSearch(
        space=plan.distributions,
        metric=spec.objective,
        mode="max",
        points_to_evaluate=[dict(plan.defaults)] if spec.enqueue_base else None,
        sampler=sampler,
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
    trainable = tune.with_resources(tune.with_parameters(search_trainable, plan=plan), resources=_pgf(cpu, gpu))

    def label(trial) -> str:
        return f"search-{trial.trial_id}"

    def make(run_name: str, num_samples: int | None = None) -> Tuner:
        n = num_samples or spec.budget.num_samples
        return Tuner(
            trainable,
            tune_config=TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=n,
                trial_name_creator=label,
                trial_dirname_creator=label,
            ),
            run_config=_run_config(run_name, exp_dir, max_failures, [ProgressPrinter(n, label, metric=spec.objective, say=say)]),
        )

    def continuation(run_name: str, runs: list[Path]) -> Tuner | None:
        # The Optuna study persists: the sampler continues from every trial it was told about.
        done = sum(1 for run in runs for t in run.iterdir() if t.is_dir() and trial_progress(t)[0] != "new")
        left = spec.budget.num_samples - done
        return make(run_name, left) if left > 0 else None

    return fit_or_restore(Path(exp_dir), SEARCH_RUN, make, trainable, resume, say, continuation), url


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

    def make(run_name: str, space: dict[str, Any] | None = None) -> Tuner:
        return Tuner(
            trainable,
            param_space=space or {"candidate": tune.grid_search(list(candidates)), "split": tune.grid_search(splits)},
            tune_config=TuneConfig(scheduler=FIFOScheduler(), trial_name_creator=label, trial_dirname_creator=label),
            run_config=_run_config(run_name, exp_dir, max_failures, [ProgressPrinter(len(candidates) * len(splits), label, say=say)]),
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
