"""``drx ablate`` and ``drx tune``.

Everything that can fail before Ray starts fails here first: the YAML is validated, every trial's
config is built, the split files are written (so every variant pairs on the same images), the
embedded benchmark and the built-in weights are built once, and resource requests are checked
against the cluster. Ray itself is only touched through :mod:`drx.search.tune`, imported when a run
starts (Ray and Optuna are heavy: ``--help`` and ``--dry-run`` do without them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from drx.builtin import resolve
from drx.config import build_config, without_tracking
from drx.data.benchmarks import load_manifest
from drx.data.embedded import ensure_embedded
from drx.data.splits import persisted_splits
from drx.errors import ConfigError, DataError
from drx.experiment import (
    ABLATE_RUN, CONFIRM_RUN, CONFIRM_TABLE, DRIVER_LOCK, META_NAME, SEARCH_RUN, SPLITS_DIR, confirm_summary, dashboard_command,
    new_meta, read_experiment, read_meta, study_url, write_meta, write_plan,
)
from drx.io import file_lock
from drx.search.grid import describe_plan, load_ablation
from drx.train.tracking import check_installed, track_overrides


def _say(text: str) -> None:
    print(text, flush=True)


def storage_of(args: argparse.Namespace) -> str:
    """The experiments folder: --storage, else $DRX_STORAGE, else ./experiments (absolute)."""
    storage = args.storage or os.environ.get("DRX_STORAGE") or "experiments"
    if "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve())


def prepare_shared_inputs(configs: list[dict[str, Any]], say=_say) -> None:
    """Build what trials would otherwise race to build: the embedded benchmark and the built-in
    weights (:func:`drx.builtin.resolve` builds each once and caches it)."""
    seen: set[str] = set()
    for c in configs:
        cfg = build_config(c)
        for bench, root in ((cfg.data.benchmark, cfg.data.root), (cfg.data.test_benchmark, cfg.data.test_root)):
            if bench == "embedded" and "embedded" not in seen:
                ensure_embedded(root)
                seen.add("embedded")
        resolve(cfg.model)


def make_split_files(jobs: dict[str, dict[str, Any]], exp_dir: Path, say=_say) -> dict[str, str]:
    """Persist the splits of each benchmark in the experiment folder, before any trial starts."""
    files: dict[str, str] = {}
    for key, job in jobs.items():
        manifest = load_manifest(job["benchmark"], job["root"], job["options"])
        if job.get("test_benchmark"):
            load_manifest(job["test_benchmark"], job.get("test_root"), job.get("test_options"))  # fail early
        if not job["needs_split"]:
            continue
        path = exp_dir / SPLITS_DIR / f"{job['benchmark']}-s{job['seed']}-n{job['n_splits']}-t{job['train_fraction']:g}.json"
        persisted_splits(manifest, job["seed"], job["n_splits"], job["train_fraction"], path=path, benchmark=job["benchmark"])
        files[key] = str(path)
        say(f"splits of {job['benchmark']}: {path} ({len(manifest)} images, {job['n_splits']} splits)")
    return files


@contextmanager
def driver_lock(exp_dir: Path) -> Iterator[None]:
    """Hold the experiment's driver lock: one ``drx ablate``/``drx tune`` per experiment folder.
    What a resume does (marking the study's RUNNING trials dead, continuing unfinished trials) is
    only right when no other driver is alive. Raises :class:`DataError` naming the folder otherwise."""
    try:
        with file_lock(exp_dir / DRIVER_LOCK, blocking=False):
            yield
    except DataError as exc:
        if str(exc).startswith(str(exp_dir / DRIVER_LOCK)):
            raise DataError(f"{exp_dir}: another drx ablate/tune is running this experiment (it holds {DRIVER_LOCK}); "
                            "wait for it to finish or stop it, then rerun") from None
        raise


def continue_command(args: argparse.Namespace, command: str) -> str:
    """The command line that continues this experiment (the same spec, storage and name)."""
    parts = ["drx", command, str(args.spec)]
    for flag, value in (("--storage", args.storage), ("--name", args.name), ("--address", args.address)):
        if value:
            parts += [flag, str(value)]
    for item in args.set or []:
        parts += ["--set", item]
    if getattr(args, "track", None):
        parts += ["--track", args.track]
    return shlex.join(parts)


def overrides_of(args: argparse.Namespace) -> list[str]:
    """The dotted overrides every trial gets: ``--set`` items, then ``--track`` (``tracking.backends``)."""
    return [*(args.set or []), *track_overrides(args.track)]


@contextmanager
def continue_hint(args: argparse.Namespace, command: str) -> Iterator[None]:
    """Add the command that continues the experiment to a run that stopped stuck (StuckRunError)."""
    from drx.search.tune import StuckRunError  # Ray: heavy, loaded only when a run starts

    try:
        yield
    except StuckRunError as exc:
        raise StuckRunError(f"{exc} Run `{continue_command(args, command)}` to continue the unfinished trials from their "
                            "last checkpoints.") from None


def _load_meta_or_new(exp_dir: Path, kind: str, fingerprint: str, make_meta) -> dict[str, Any]:
    if (exp_dir / META_NAME).is_file():
        meta = read_meta(exp_dir)
        if meta.get("fingerprint") != fingerprint or meta.get("kind") != kind:
            raise ConfigError(
                f"{exp_dir} holds a different experiment ({meta.get('kind')} {meta.get('name')}, started from "
                f"{meta.get('spec_file')}); its trials would not match this spec. Use --name NEW_NAME to start a new "
                "experiment, or delete the folder to start this one over."
            )
        return meta
    return make_meta()


# ------------------------------------------------------------------------------------------ ablate


def cmd_ablate(args: argparse.Namespace) -> int:
    plan = load_ablation(args.spec, overrides_of(args))
    name = args.name or plan.spec.name
    if args.dry_run:
        print(describe_plan(plan))
        return 0
    check_installed(build_config(plan.trials[0].config).tracking)  # before Ray starts
    storage = storage_of(args)
    if "://" in storage:
        raise ConfigError("drx ablate writes its split files and metadata beside the results: --storage must be a path "
                          "(local, or on a shared filesystem such as NFS for clusters)")
    exp_dir = Path(storage) / name
    exp_dir.mkdir(parents=True, exist_ok=True)
    with driver_lock(exp_dir):
        return _ablate(args, plan, name, storage, exp_dir)


def _ablate(args: argparse.Namespace, plan, name: str, storage: str, exp_dir: Path) -> int:
    """The part of ``drx ablate`` that runs under the experiment's driver lock."""
    t0 = time.time()
    fingerprint = plan.fingerprint()  # before split paths enter the configs: a moved experiment still matches
    split_files = make_split_files(plan.split_jobs, exp_dir)
    for t in plan.trials:
        f = split_files.get(t.benchmark)
        if f is not None:
            t.config["data"]["split"]["file"] = f
    meta = _load_meta_or_new(
        exp_dir,
        "ablate",
        fingerprint,
        lambda: new_meta(
            "ablate", name, plan.spec.model_dump(mode="json"), str(plan.source) if plan.source else None, fingerprint,
            {"baseline": plan.spec.baseline, "variants": plan.variants, "benchmarks": plan.benchmarks,
             "splits": plan.split_indices, "fractions": plan.fractions, "sweep_key": plan.spec.sweep_key,
             "select_on": plan.trials[0].config["train"]["select_on"], "compat": plan.trials[0].config["model"]["compat"]},
        ),
    )
    write_plan(exp_dir, [{"name": t.name, "key": t.key, "variant": t.variant, "benchmark": t.benchmark, "split": t.split,
                                      "fraction": t.fraction, "cpu": t.cpu, "gpu": t.gpu, "config": t.config} for t in plan.trials])
    write_meta(exp_dir, meta)
    prepare_shared_inputs([t.config for t in plan.trials])

    from drx.search import tune as rt  # Ray: heavy, loaded only when a run starts

    with continue_hint(args, "ablate"):
        cluster = rt.start_ray(args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus)
        try:
            rt.check_storage(storage, rt.alive_hosts())
            rt.check_resources([(t.name, t.cpu, t.gpu) for t in plan.trials], cluster)
            _say(f"ablation {name}: {len(plan.trials)} trials on Ray ({cluster.get('CPU', 0):g} CPU, {cluster.get('GPU', 0):g} GPU); results in {exp_dir}")
            t_fit = time.time()
            grid = rt.run_ablation_grid(plan, storage, name, args.max_concurrent, args.max_failures, args.resume)
        except KeyboardInterrupt:
            _say(f"\ninterrupted: finished trials are kept in {exp_dir}; rerun the same command to run only what is unfinished")
            return 130
        finally:
            rt.stop_ray()
    meta["runs"].append({"run": ABLATE_RUN, "started": t_fit, "wall_s": round(time.time() - t0, 1), "fit_s": round(time.time() - t_fit, 1)})
    write_meta(exp_dir, meta)
    n_err = grid.num_errors if grid is not None else 0  # None: every trial had finished before this run
    _say(f"\nablation {name} done in {time.time() - t0:.0f} s: {len(plan.trials) - n_err} trials finished, {n_err} failed. "
         f"Results: {exp_dir}\nNext: drx report {exp_dir}")
    return 1 if n_err else 0


# -------------------------------------------------------------------------------------------- tune


def cmd_tune(args: argparse.Namespace) -> int:
    from drx.search.space import load_search  # Optuna: heavy, loaded for tune only

    plan = load_search(args.spec, overrides_of(args))
    spec = plan.spec
    name = args.name or spec.name
    if args.dry_run:
        print(f"search {spec.name}: {spec.budget.num_samples} samples over {list(spec.space)} on {spec.benchmark.key} split {spec.split}, "
              f"objective {spec.objective} (max), scheduler {spec.scheduler.type}, max {plan.max_epochs} epochs; "
              f"confirm the best {spec.confirm.top_k} on splits {plan.confirm_splits}")
        if spec.enqueue_base:
            print(f"  first trial (the base config): {plan.defaults}")
        return 0
    check_installed(build_config(plan.base_config).tracking)  # before Ray starts
    storage = storage_of(args)
    if "://" in storage:
        raise ConfigError("drx tune keeps its split files and Optuna study beside the results: --storage must be a path "
                          "(local, or a shared filesystem such as NFS for clusters)")
    exp_dir = Path(storage) / name
    exp_dir.mkdir(parents=True, exist_ok=True)
    with driver_lock(exp_dir):
        return _tune(args, plan, name, storage, exp_dir)


def _tune(args: argparse.Namespace, plan, name: str, storage: str, exp_dir: Path) -> int:
    """The part of ``drx tune`` that runs under the experiment's driver lock."""
    from drx.search.space import config_for  # Optuna: heavy, loaded for tune only
    from drx.search.study import params_key  # with Optuna, above

    spec = plan.spec
    t0 = time.time()
    base = build_config(plan.base_config)
    job = {"benchmark": base.data.benchmark, "root": base.data.root, "options": base.data.options, "seed": base.data.split.seed,
           "n_splits": base.data.split.n_splits, "train_fraction": base.data.split.train_fraction, "needs_split": True}
    # Before the split path enters the config: a moved experiment still matches its spec.
    # (Without `tracking`: turning a tracker on resumes the same experiment.)
    fingerprint = hashlib.sha256(json.dumps([without_tracking(plan.base_config), spec.model_dump(mode="json")], sort_keys=True,
                                            default=str).encode()).hexdigest()[:16]
    files = make_split_files({base.data.benchmark: job}, exp_dir)
    plan.base_config["data"]["split"]["file"] = files[base.data.benchmark]
    meta = _load_meta_or_new(
        exp_dir, "tune", fingerprint,
        lambda: new_meta("tune", name, spec.model_dump(mode="json"), str(plan.source) if plan.source else None, fingerprint,
                         {"objective": spec.objective, "base_config": plan.base_config, "defaults": plan.defaults,
                          "select_on": "val", "compat": plan.base_config["model"]["compat"]}),
    )
    write_meta(exp_dir, meta)
    prepare_shared_inputs([plan.base_config])

    from drx.search import tune as rt  # Ray: heavy, loaded only when a run starts

    with continue_hint(args, "tune"):
        cluster = rt.start_ray(args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus)
        try:
            rt.check_storage(storage, rt.alive_hosts())
            cpu = spec.resources.cpu or base.resources.cpu
            gpu = spec.resources.gpu if spec.resources.gpu is not None else base.resources.gpu
            rt.check_resources([("search", cpu, gpu)], cluster)
            _say(f"search {name}: {spec.budget.num_samples} samples, objective {spec.objective}; results in {exp_dir}")
            _say(f"watch the study while it runs (read-only, safe during the search; pip install optuna-dashboard):\n  "
                 f"{dashboard_command(study_url(spec.storage, exp_dir))}")
            t_fit = time.time()
            outcome = rt.run_search(plan, storage, name, args.max_failures, args.resume)
            _say(outcome.account)
            meta["optuna_storage"] = outcome.url
            meta["study_name"] = outcome.study_name
            meta["runs"].append({"run": SEARCH_RUN, "fit_s": round(time.time() - t_fit, 1)})
            write_meta(exp_dir, meta)
            # From the study, each configuration once: a configuration trained twice never fills two slots.
            top = outcome.ranked[: spec.confirm.top_k]
            if not top and spec.confirm.top_k:
                _say("no search trial reported the objective; nothing to confirm")
                return 1
            candidates = {}
            for i, (value, params, number) in enumerate(top):
                cand = f"top{i + 1}"
                candidates[cand] = config_for(plan, params, name=f"{spec.name}/confirm-{cand}")
                candidates[cand]["train"]["epochs"] = plan.max_epochs
            meta["confirm_candidates"] = {}
            for c, (v, params, number) in zip(candidates, top):
                folder = outcome.folders.get(params_key(params, plan.distributions), "")
                meta["confirm_candidates"][c] = {
                    "search_trial": folder.removeprefix("search-") or None, "trial": folder or None, "study_trial": number,
                    "objective": v, "params": {k: p for k, p in params.items() if k in spec.space}}
            write_meta(exp_dir, meta)
            if candidates:
                _say(f"confirm stage: the best {len(candidates)} configurations on splits {plan.confirm_splits}, without early stopping")
                t_c = time.time()
                rt.run_confirm(candidates, plan.confirm_splits, storage, name, args.max_failures, args.resume)
                meta["runs"].append({"run": CONFIRM_RUN, "fit_s": round(time.time() - t_c, 1)})
            else:
                _say("confirm stage: confirm.top_k is 0; skipped")
        except KeyboardInterrupt:
            _say(f"\ninterrupted: finished trials are kept in {exp_dir}; rerun the same command to continue")
            return 130
        finally:
            rt.stop_ray()
    meta["runs"].append({"run": "total", "wall_s": round(time.time() - t0, 1)})
    write_meta(exp_dir, meta)
    if candidates:
        table = confirm_summary(read_experiment(exp_dir), meta)
        table.to_csv(exp_dir / CONFIRM_TABLE, index=False)
        _say("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    _say(f"\nsearch {name} done in {time.time() - t0:.0f} s. Study: {meta.get('optuna_storage')} (study {spec.name}). "
         f"Next: drx report {exp_dir}")
    return 0


# -------------------------------------------------------------------------------------------- CLI


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted override applied to every trial (repeatable)")
    p.add_argument("--name", help="experiment name (default: the YAML's name)")
    p.add_argument("--storage", help="where experiments live: a path (shared, e.g. NFS, on a multi-node cluster); default ./experiments or $DRX_STORAGE")
    p.add_argument("--address", help="attach to a running Ray cluster: auto or HOST:PORT (default: $RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: this machine's)")
    p.add_argument("--num-gpus", type=int, help="GPUs of the local Ray (default: this machine's)")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a trial that raised, from its last checkpoint (default 2)")
    p.add_argument("--resume", action="store_true", help="resume the experiment (rerunning the same command resumes too)")
    p.add_argument("--dry-run", action="store_true", help="validate and list the trials without starting Ray")
    p.add_argument("--track", metavar="BACKEND[,BACKEND]",
                   help="log every trial to experiment trackers: mlflow, tensorboard, wandb (sets tracking.backends; docs/search.md)")


def register(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("ablate", help="run an ablation grid (variants x benchmarks x splits) on Ray Tune")
    a.add_argument("spec", metavar="ABLATION.yaml")
    a.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
    _common(a)
    a.set_defaults(func=cmd_ablate)

    t = sub.add_parser("tune", help="Optuna hyperparameter search on Ray Tune, then a confirm stage on all splits")
    t.add_argument("spec", metavar="SEARCH_SPACE.yaml")
    _common(t)
    t.set_defaults(func=cmd_tune)
