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
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import ray
from ray import tune
from ray.tune import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner
from ray.tune.execution.placement_groups import PlacementGroupFactory
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from drx.config import build_config
from drx.errors import ConfigError

# Testing hook (documented in docs/search.md): "GLOB:EPOCH" makes the trial whose name matches GLOB
# raise once, right after reporting EPOCH, to exercise retries from the last checkpoint.
FAULT_ENV = "DRX_FAULT_INJECT"
FAULT_MARKER = "drx-fault-injected"
SHARED_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "cephfs", "glusterfs", "fuse.glusterfs", "fuse.juicefs", "fuse.s3fs", "fuse.gcsfuse", "9p", "virtiofs", "wekafs", "fuse.sshfs"}


# --------------------------------------------------------------------------------- the trainables


def _trial_body(cfg_dict: dict[str, Any], trial_name: str) -> None:
    """Run one trial inside a Ray worker, resuming from Ray's checkpoint after a failure."""
    import torch

    from drx.train.trainer import run_trial

    cfg = build_config(cfg_dict, trial_name)
    torch.set_num_threads(max(1, int(cfg.resources.cpu)))
    work = Path(tempfile.mkdtemp(prefix="drx-trial-"))
    out = work / "out"
    resume = None
    checkpoint = tune.get_checkpoint()
    faulted = False
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
    from drx.search.grid import trial_key

    key = trial_key(config["variant"], config["benchmark"], config["split"], config.get("fraction", 1.0))
    planned = trials[key]
    _trial_body(planned["config"], planned["name"])


def search_trainable(config: dict[str, Any], plan: Any) -> None:
    """Ray trainable of an Optuna search: sampled values -> the base config with them applied."""
    from drx.search.space import config_for

    name = f"{plan.spec.name}/search-{tune.get_context().get_trial_id()}"
    _trial_body(config_for(plan, config, name=name), name)


def confirm_trainable(config: dict[str, Any], candidates: dict[str, dict[str, Any]]) -> None:
    """Ray trainable of the confirm stage: one candidate configuration on one persisted split."""
    base = candidates[config["candidate"]]
    cfg = build_config(base, config["candidate"]).to_dict()
    cfg["data"]["split"]["index"] = int(config["split"])
    cfg["name"] = f"{cfg['name']}-s{config['split']}"
    _trial_body(cfg, f"{config['candidate']}-s{config['split']}")


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
    if ray.is_initialized():
        ray.shutdown()


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
            from tqdm.auto import tqdm

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


# --------------------------------------------------------------------------------------- running


def _run_config(name: str, storage: str, max_failures: int, callbacks: list) -> RunConfig:
    return RunConfig(
        name=name,
        storage_path=storage,
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=1),
        verbose=0,
        callbacks=callbacks,
        log_to_file=True,
    )


def fit_or_restore(path: str, make_tuner: Callable[[], Tuner], trainable: Any, resume: bool, say: Callable[[str], None]):
    """Restore an interrupted run (finished trials are kept, unfinished and errored ones continue), else start it."""
    if Tuner.can_restore(path):
        say(f"resuming {path}: finished trials are kept; unfinished and errored trials continue from their last checkpoint")
        tuner = Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        if resume:
            say(f"--resume: nothing to resume at {path}; starting it")
        tuner = make_tuner()
    return tuner.fit()


def run_ablation_grid(plan, storage: str, name: str, max_concurrent: int | None, max_failures: int, resume: bool, say=print):
    """Run (or resume) the grid of an ablation plan under ``storage/name/trials``."""
    trials = {t.key: {"name": t.name, "config": t.config, "cpu": t.cpu, "gpu": t.gpu} for t in plan.trials}
    by_key = trials

    def resources(config: dict[str, Any]) -> PlacementGroupFactory:
        from drx.search.grid import trial_key

        t = by_key[trial_key(config["variant"], config["benchmark"], config["split"], config.get("fraction", 1.0))]
        return _pgf(t["cpu"], t["gpu"])

    trainable = tune.with_resources(tune.with_parameters(ablation_trainable, trials=trials), resources=resources)

    def trial_label(trial) -> str:
        from drx.search.grid import trial_key

        c = trial.config
        return by_key[trial_key(c["variant"], c["benchmark"], c["split"], c.get("fraction", 1.0))]["name"]

    space: dict[str, Any] = {
        "variant": tune.grid_search(plan.variants),
        "benchmark": tune.grid_search(plan.benchmarks),
        "split": tune.grid_search(plan.split_indices),
    }
    if len(plan.fractions) > 1 or plan.fractions != [1.0]:
        space["fraction"] = tune.grid_search(plan.fractions)
    exp_dir = str(Path(storage) / name) if "://" not in storage else f"{storage.rstrip('/')}/{name}"
    from drx.search.experiment import ABLATE_RUN

    def make() -> Tuner:
        return Tuner(
            trainable,
            param_space=space,
            tune_config=TuneConfig(
                scheduler=FIFOScheduler(),  # no early stopping: an ablation compares fully trained models
                max_concurrent_trials=max_concurrent,
                reuse_actors=False,
                trial_name_creator=trial_label,
                trial_dirname_creator=trial_label,
            ),
            run_config=_run_config(ABLATE_RUN, exp_dir, max_failures, [ProgressPrinter(len(plan.trials), trial_label, say=say)]),
        )

    run_path = f"{exp_dir}/{ABLATE_RUN}"
    return fit_or_restore(run_path, make, trainable, resume, say)


def optuna_storage(spec_storage: str | None, exp_dir: str):
    """The study's persistent storage: SQLite in the experiment folder, any RDB URL, or a journal file."""
    import optuna

    if spec_storage is None:
        url = f"sqlite:///{Path(exp_dir).resolve() / 'optuna.db'}"
        return optuna.storages.RDBStorage(url), url
    if spec_storage.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = spec_storage[len("journal:") :]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(path)), spec_storage
    return optuna.storages.RDBStorage(spec_storage), spec_storage


def run_search(plan, storage: str, name: str, max_failures: int, resume: bool, say=print):
    """The Optuna search over one split's validation objective, on Ray Tune."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from drx.search.experiment import SEARCH_RUN

    spec = plan.spec
    exp_dir = str(Path(storage) / name)
    study_storage, url = optuna_storage(spec.storage, exp_dir)
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

    def make() -> Tuner:
        return Tuner(
            trainable,
            tune_config=TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=spec.budget.num_samples,
                trial_name_creator=label,
                trial_dirname_creator=label,
            ),
            run_config=_run_config(SEARCH_RUN, exp_dir, max_failures, [ProgressPrinter(spec.budget.num_samples, label, metric=spec.objective, say=say)]),
        )

    return fit_or_restore(f"{exp_dir}/{SEARCH_RUN}", make, trainable, resume, say), url


def run_confirm(candidates: dict[str, dict[str, Any]], splits: list[int], storage: str, name: str, max_failures: int, resume: bool, say=print):
    """Re-run the best configurations without early stopping on the persisted splits."""
    from drx.search.experiment import CONFIRM_RUN

    exp_dir = str(Path(storage) / name)
    any_cfg = build_config(next(iter(candidates.values())))
    trainable = tune.with_resources(
        tune.with_parameters(confirm_trainable, candidates=candidates), resources=_pgf(any_cfg.resources.cpu, any_cfg.resources.gpu)
    )

    def label(trial) -> str:
        return f"{trial.config['candidate']}-s{trial.config['split']}"

    def make() -> Tuner:
        return Tuner(
            trainable,
            param_space={"candidate": tune.grid_search(list(candidates)), "split": tune.grid_search(splits)},
            tune_config=TuneConfig(scheduler=FIFOScheduler(), trial_name_creator=label, trial_dirname_creator=label),
            run_config=_run_config(CONFIRM_RUN, exp_dir, max_failures, [ProgressPrinter(len(candidates) * len(splits), label, say=say)]),
        )

    return fit_or_restore(f"{exp_dir}/{CONFIRM_RUN}", make, trainable, resume, say)
