"""``run_trial``: the only training loop in drx. It knows nothing of Ray.

One trial = one ExperimentConfig: one model variant trained on one split (or one cross-dataset
pair) of one benchmark. Each epoch ends with an evaluation of the validation and test parts
(fixed crops, averaged per image), a checkpoint, and a ``report(metrics, checkpoint_dir)`` call.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import pandas as pd
import torch

from tqdm.auto import tqdm

from drx.builtin import resolve
from drx.config import ExperimentConfig, save_config
from drx.data.benchmarks import get_adapter, load_manifest
from drx.data.loader import EvalCrops, TrainCrops, make_train_loader
from drx.data.images import image_size, resized_size
from drx.data.splits import (
    MIN_RANK_IMAGES, OFFICIAL_COLUMN, OFFICIAL_PARTS, SplitParts, SplitSet, check_rankable, cross_dataset_parts, official_splits,
    persisted_splits, select, split_parts,
)
from drx.errors import CheckpointError, ConfigError, DataError
from drx.experiment import NO_SELECTION
from drx.io import atomic_write, atomic_write_json
from drx.metrics import METRICS, iqa_metrics
from drx.model import build_model
from drx.train.checkpoint import BEST_NAME, CHECKPOINT_NAME, FORMAT, load_checkpoint, restore_rng, rng_state, save_checkpoint
from drx.train.explain import write_explanations
from drx.train.optim import autocast_dtype, build_loss, build_optimizer, build_scheduler, compile_model, train_step, use_compile
from drx.train.scoring import mos_scaler, score_images

log = logging.getLogger("drx.train")


class Reporter(Protocol):
    def __call__(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None: ...


@dataclass
class TrialResult:
    """What a trial returns (and writes to ``result.json``)."""

    status: str  # "ok" | "diverged" | "no_selection" (no epoch had a defined selection metric)
    select_on: str  # "val" (best validation SRCC) | "test" (best test PLCC, the authors' habit)
    epochs_completed: int
    best_epoch: int | None  # the selected epoch (1-based); None when no epoch could be selected
    final: dict[str, float]  # last epoch's metrics
    best: dict[str, float]  # metrics at the selected epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    diverged_epoch: int | None = None
    reason: str | None = None
    wall_s: float = 0.0
    data_wait_s: float = 0.0
    compute_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        """Flat record: status, test_* (last epoch), best_val_epoch, best_val_test_* ..."""
        out: dict[str, Any] = {
            "status": self.status,
            "select_on": self.select_on,
            "epochs_completed": self.epochs_completed,
            "best_val_epoch": self.best_epoch,
            "diverged_epoch": self.diverged_epoch,
            "reason": self.reason,
            "wall_s": round(self.wall_s, 3),
            "data_wait_s": round(self.data_wait_s, 3),
            "compute_s": round(self.compute_s, 3),
        }
        for part in ("val", "test"):
            for m in METRICS:
                out[f"{part}_{m}"] = self.final.get(f"{part}_{m}", float("nan"))
        for m in METRICS:
            out[f"best_val_test_{m}"] = self.best.get(f"test_{m}", float("nan"))
            out[f"best_val_val_{m}"] = self.best.get(f"val_{m}", float("nan"))
        return out


# ------------------------------------------------------------------------------------------ data


@dataclass
class TrialData:
    """The datasets of one trial and what the trial records about its inputs.

    ``inputs`` is the trained model's record of what its training images went through (see
    :func:`inputs_record`); ``notes`` are lines the trial prints before training.
    """

    train: Any
    val: Any
    test: Any
    mos_range: tuple[float, float]
    test_mos_range: tuple[float, float]
    counts: dict[str, int]
    inputs: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


#: Training images whose size :func:`inputs_record` samples (header reads only).
SIZE_SAMPLE = 64


def inputs_record(cfg: ExperimentConfig, manifest: pd.DataFrame, train_ids: tuple[str, ...]) -> dict[str, Any]:
    """What the trial's training images went through, for ``drx predict`` to repeat.

    ``prepared``: the resize of the prepared copy the images come from (``drx-prepared.json`` of
    ``data.root``: ``{"resize": {"mode", "size"} | None, "source": original folder}``), or None for
    original files. ``resize``: ``data.resize`` (applied to every image after loading).
    ``train_short_side_px``: median shorter side, in px after both, of up to :data:`SIZE_SAMPLE`
    training images (read from the image headers), the scale ``drx predict`` compares against.
    """
    ids = sorted(train_ids)
    step = max(1, len(ids) // SIZE_SAMPLE)
    paths = select(manifest, ids[::step][:SIZE_SAMPLE])["path"]
    sides = []
    for path in paths:
        try:
            w, h = image_size(path)
        except DataError:
            continue  # an unreadable image fails the trial when it is loaded, with its own message
        w, h = resized_size(w, h, cfg.data.resize)
        sides.append(min(w, h))
    return {
        "prepared": manifest.attrs.get("prepared"),
        "resize": cfg.data.resize.model_dump(mode="json") if cfg.data.resize is not None else None,
        "train_short_side_px": float(np.median(sides)) if sides else None,
        "train_images_sampled": len(sides),
    }


def _split_set(cfg: ExperimentConfig, manifest: pd.DataFrame, benchmark: str, notes: list[str]) -> SplitSet:
    """The split set of the trial's protocol (``data.split.protocol``)."""
    d, s = cfg.data, cfg.data.split
    if s.protocol == "official":
        split_set = official_splits(manifest, s.file, benchmark)
        if len(split_set) != s.n_splits:
            raise DataError(
                f"data.split.protocol official: {split_set.source} holds {len(split_set)} split(s) but data.split.n_splits="
                f"{s.n_splits}; set data.split.n_splits={len(split_set)}"
            )
        notes.append(
            f"official split of {benchmark} ({split_set.source}): its own validation part; data.split.val_fraction, "
            "train_fraction and seed do not shape it"
        )
        return split_set
    if OFFICIAL_COLUMN in manifest.columns:
        # Never silently ignored: the labels carry an official split that this protocol does not use.
        counts = manifest[OFFICIAL_COLUMN].value_counts()
        notes.append(
            f"note: {manifest.attrs.get('official_split_source') or 'the labels'} carry an official split "
            f"({', '.join(f'{int(counts.get(p, 0))} {p}' for p in OFFICIAL_PARTS)}) that data.split.protocol random does not use; "
            "set data.split.protocol=official to train and select on it"
        )
    return persisted_splits(manifest, seed=s.seed, n_splits=s.n_splits, train_fraction=s.train_fraction, path=s.file, benchmark=benchmark, cache=d.cache)


def _check_selection_part(cfg: ExperimentConfig, parts: SplitParts, split_set: SplitSet | None, mos: dict[str, float], test_mos: dict[str, float]) -> None:
    """Refuse, before training, a selection part that cannot rank (see :func:`drx.data.splits.check_rankable`)."""
    s = cfg.data.split
    if cfg.train.select_on == "test":
        check_rankable(parts.test_ids, test_mos, f"the test part ({'official split' if s.protocol == 'official' else f'split {s.index}'}), "
                       "which selects the epoch under train.select_on test,",
                       "lower data.split.train_fraction, or select on the validation part (train.select_on val)")
        return
    if not parts.val_ids and s.protocol == "random":
        return  # val_fraction 0 with select_on val is refused in run_trial with its own message
    if split_set is not None and split_set.protocol == "official":
        check_rankable(parts.val_ids, mos, f"the official validation part ({split_set.source})",
                       "this official split cannot select epochs on these images; use data.split.protocol random "
                       "(a validation part carved with data.split.val_fraction) or labels with more validation images")
        return
    pool = len(parts.val_ids) + len(parts.train_ids)
    if s.fraction < 1.0:
        pool = len(parts.val_ids) + int(round(len(parts.train_ids) / s.fraction))
    need = math.ceil(100 * MIN_RANK_IMAGES / max(1, pool)) / 100
    where = f"split {s.index}" if cfg.data.test_benchmark is None else f"the {cfg.data.benchmark} training images"
    check_rankable(
        parts.val_ids, mos,
        f"the validation part of {where} ({len(parts.val_ids)} of {pool} training images at data.split.val_fraction {s.val_fraction:g})",
        f"raise data.split.val_fraction (to at least {need:.2f} here)" + (" or change data.split.seed" if len(parts.val_ids) >= MIN_RANK_IMAGES else "")
        + ", or use more images",
    )


def build_trial_data(cfg: ExperimentConfig) -> TrialData:
    """Manifest -> split (random persisted, or official) -> train/val/test datasets for this trial.

    Raises DataError before any training when the part that selects epochs cannot rank (too few
    images, or one MOS), naming the numbers and the option to change."""
    d = cfg.data
    s = d.split
    notes: list[str] = []
    manifest = load_manifest(d.benchmark, d.root, d.options)
    adapter = get_adapter(d.benchmark)
    mos_range = tuple(adapter.mos_range(d.options, manifest))

    split_set: SplitSet | None = None
    if d.test_benchmark is None:
        split_set = _split_set(cfg, manifest, d.benchmark, notes)
        parts = split_parts(split_set, s.index, s.val_fraction, s.fraction, s.seed)
        test_manifest, test_mos_range = manifest, mos_range
    else:
        if s.protocol == "official" and d.cross_train == "all":
            raise ConfigError(
                "data.split.protocol official with data.cross_train all: training on every image of the benchmark uses no split; "
                "set data.cross_train split to train on the official training part (and select on its validation part)"
            )
        test_manifest = load_manifest(d.test_benchmark, d.test_root, d.test_options)
        test_mos_range = tuple(get_adapter(d.test_benchmark).mos_range(d.test_options, test_manifest))
        split_set = _split_set(cfg, manifest, d.benchmark, notes) if d.cross_train == "split" else None
        parts = cross_dataset_parts(
            manifest, test_manifest, split_set, s.index if split_set is not None else None, s.val_fraction, s.seed
        )
        if s.fraction < 1.0:
            keep = max(1, int(round(len(parts.train_ids) * s.fraction)))
            order = np.random.default_rng([s.seed, s.index, 2]).permutation(len(parts.train_ids))
            parts = SplitParts(tuple(sorted(parts.train_ids[i] for i in order[:keep])), parts.val_ids, parts.test_ids)
    mos_of = dict(zip(manifest["image_id"].astype(str), manifest["mos"].astype(float)))
    test_mos_of = dict(zip(test_manifest["image_id"].astype(str), test_manifest["mos"].astype(float)))
    _check_selection_part(cfg, parts, split_set, mos_of, test_mos_of)
    to_target, _ = mos_scaler(mos_range, cfg.train.target_range)
    crop = cfg.model.img_size
    common = {"crop_size": crop, "resize": d.resize, "cache_images": d.cache_images}
    train = TrainCrops(
        select(manifest, parts.train_ids), crops_per_image=d.train_crops, hflip=d.hflip, vflip=d.vflip,
        seed=cfg.train.seed, target_fn=to_target, **common,
    )
    val = EvalCrops(select(manifest, parts.val_ids), crops_per_image=d.test_crops, seed=d.test_crop_seed, **common) if parts.val_ids else None
    test = EvalCrops(select(test_manifest, parts.test_ids), crops_per_image=d.test_crops, seed=d.test_crop_seed, **common)
    counts = {"train": len(parts.train_ids), "val": len(parts.val_ids), "test": len(parts.test_ids)}
    return TrialData(train, val, test, mos_range, test_mos_range, counts, inputs_record(cfg, manifest, parts.train_ids), notes)


# ------------------------------------------------------------------------------------- evaluation


def evaluate(model, dataset, cfg: ExperimentConfig, mos_range: tuple[float, float]) -> dict[str, float]:
    """IQA metrics of a dataset (:func:`drx.metrics.iqa_metrics`), predictions mapped back to its MOS scale."""
    scores = score_images(model, dataset, cfg)
    _, to_mos = mos_scaler(mos_range, cfg.train.target_range)
    return iqa_metrics(to_mos(scores.score), scores.mos)


# --------------------------------------------------------------------------------------- the loop


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


#: The metric each selection rule (train.select_on) maximises.
SELECTION_METRIC = {"val": "val_srcc", "test": "test_plcc"}


def _selection_value(metrics: dict[str, Any], select_on: str) -> float | None:
    """The epoch's selection metric, or None when it is undefined (NaN: constant predictions or MOS)."""
    v = metrics.get(SELECTION_METRIC[select_on])
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _improves(value: float | None, best: float | None, select_on: str) -> bool:
    """Whether an epoch's selection value replaces the best so far. An undefined value never does,
    so an epoch with a NaN metric is never selected over one with a defined metric (nor at all).
    val: strictly greater; test: >= (later epochs win ties, as the authors' code selects)."""
    if value is None:
        return False
    if best is None:
        return True
    return value >= best if select_on == "test" else value > best


def _is_tty() -> bool:
    return sys.stderr.isatty()


def run_trial(
    config: ExperimentConfig,
    report: Reporter | None = None,
    out_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
    progress: bool | None = None,
    log_line: Callable[[str], None] | None = None,
) -> TrialResult:
    """Train and evaluate one trial.

    ``report(metrics, checkpoint_dir)`` is called after every epoch with that epoch's metrics and
    the folder holding its checkpoint (``None`` without ``out_dir``). ``resume_from`` (a
    checkpoint file or folder) continues a trial exactly where its checkpoint left it.
    Non-finite loss ends the trial with status ``diverged``.

    Selection: the epoch with the best defined selection metric (:data:`SELECTION_METRIC`); an
    epoch whose metric is NaN is never selected. When no epoch has a defined metric the result's
    status is ``no_selection`` (no best weights are written; ``best_epoch`` is None). A selection
    part that cannot rank at all (too few images, one MOS) is refused before training (DataError).

    ``train.compile`` (:func:`drx.train.optim.use_compile`) runs the forward passes of training and
    evaluation through ``torch.compile``; weights, checkpoints and explanations always come from
    the uncompiled model.
    """
    cfg = config
    t_start = time.perf_counter()
    # Read (and vet) the checkpoint first: a file that is not a drx checkpoint fails before any work.
    resume_state = load_checkpoint(resume_from) if resume_from is not None else None
    if resume_state is not None and "optimizer" not in resume_state:
        raise CheckpointError(
            f"{resume_from} holds weights only (a {BEST_NAME}, or a folder made by `drx import`): it can be scored "
            f"(drx predict, drx.load_scorer) but not resumed; resume from a trial's {CHECKPOINT_NAME}"
        )
    say = log_line or (lambda s: print(s, file=sys.stderr, flush=True))
    show_bars = _is_tty() if progress is None else progress
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    amp = autocast_dtype(cfg.train.precision, device)
    compiled = use_compile(cfg.train, device)
    if cfg.train.select_on == "val" and cfg.data.split.val_fraction == 0.0 and cfg.data.split.protocol == "random":
        raise ConfigError("train.select_on = 'val' selects the epoch on a validation part: data.split.val_fraction must be > 0")

    seed_everything(cfg.train.seed)
    data = build_trial_data(cfg)
    model = build_model(resolve(cfg.model)).to(device)
    steps_per_epoch = cfg.train.steps_per_epoch or max(1, len(data.train) // cfg.train.batch_size)
    optimizer = build_optimizer(model, cfg.train, cfg.model.compat)
    scheduler = build_scheduler(optimizer, cfg.train, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    loss_fn = build_loss(cfg.train)
    # Forward passes (training and evaluation) go through `runner`; weights, checkpoints and
    # explanations are read from `model` itself, so their keys are the same compiled or not.
    runner = compile_model(model) if compiled else model

    def forward(x: torch.Tensor) -> torch.Tensor:
        return runner(x).score

    history: list[dict[str, Any]] = []
    best_value: float | None = None
    best_epoch: int | None = None
    best_metrics: dict[str, float] = {}
    start_epoch = 0
    data_wait = compute = 0.0
    if resume_state is not None:
        state = resume_state
        model.load_trainable_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])
        history = list(state["history"])
        best_value, best_epoch, best_metrics = state["best_value"], state["best_epoch"], dict(state["best_metrics"])
        start_epoch = int(state["epoch"])
        data_wait, compute = state.get("data_wait_s", 0.0), state.get("compute_s", 0.0)
        say(f"resumed from {resume_from} after epoch {start_epoch}")
    say(
        f"trial {cfg.name}: {cfg.model.variant} on {cfg.data.benchmark}"
        + (f"->{cfg.data.test_benchmark}" if cfg.data.test_benchmark else f" split {cfg.data.split.index}")
        + f" | images train {data.counts['train']} val {data.counts['val']} test {data.counts['test']}"
        + f" | {steps_per_epoch} steps/epoch x {cfg.train.epochs} epochs | {device.type}"
        + (f" {str(amp).replace('torch.', '')}" if amp else " fp32")
        + (" compiled" if compiled else "")
    )
    for note in data.notes:
        say(note)

    status, diverged_epoch, reason = "ok", None, None
    for epoch in range(start_epoch, cfg.train.epochs):
        model.train()
        loader = make_train_loader(
            data.train, cfg.train.batch_size, cfg.train.seed, epoch, cfg.train.steps_per_epoch,
            num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
        )
        ep_wait = ep_compute = 0.0
        loss_sum, n_steps = 0.0, 0
        bar = None
        if show_bars:
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False, file=sys.stderr)
        t_fetch = time.perf_counter()
        for images, targets, _ in loader:
            t_got = time.perf_counter()
            ep_wait += t_got - t_fetch
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            loss = train_step(
                model, forward, images, targets, optimizer, loss_fn, amp, scaler, cfg.train.grad_clip
            )
            if not torch.isfinite(loss):
                status, diverged_epoch = "diverged", epoch + 1
                reason = f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {n_steps + 1}"
                break
            scheduler.step()
            loss_sum += float(loss)
            n_steps += 1
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t_fetch = time.perf_counter()
            ep_compute += t_fetch - t_got
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / n_steps:.4f}")
        if bar is not None:
            bar.close()
        data_wait += ep_wait
        compute += ep_compute
        if status == "diverged":
            metrics = {"epoch": epoch + 1, "status": "diverged", "reason": reason, "planned_epochs": cfg.train.epochs}
            # The metric keys exist (NaN) so schedulers and searchers see a value, not a missing key.
            metrics.update({f"{part}_{m}": float("nan") for part in ("val", "test") for m in METRICS})
            history.append(metrics)
            say(f"epoch {epoch + 1}: DIVERGED: {reason}")
            if report is not None:
                report(metrics, None)
            break

        t_eval = time.perf_counter()
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "status": "ok",
            "planned_epochs": cfg.train.epochs,
            "train_loss": loss_sum / max(1, n_steps),
            "lr": optimizer.param_groups[0]["lr"],
            "steps": n_steps,
        }
        if data.val is not None:
            metrics.update({f"val_{k}": v for k, v in evaluate(runner, data.val, cfg, data.mos_range).items()})
        metrics.update({f"test_{k}": v for k, v in evaluate(runner, data.test, cfg, data.test_mos_range).items()})
        metrics.update(
            {
                "epoch_s": time.perf_counter() - t_eval + ep_wait + ep_compute,
                "eval_s": time.perf_counter() - t_eval,
                "data_wait_s": ep_wait,
                "compute_s": ep_compute,
            }
        )
        value = _selection_value(metrics, cfg.train.select_on)
        if _improves(value, best_value, cfg.train.select_on):
            best_value, best_epoch, best_metrics = value, epoch + 1, {k: v for k, v in metrics.items() if isinstance(v, float)}
        metrics["best_epoch"] = best_epoch  # None until an epoch has a defined selection metric
        metrics["select_on"] = cfg.train.select_on
        history.append(metrics)
        say(_epoch_line(metrics, cfg.train.epochs))

        ckpt_dir = None
        if out is not None:
            state = {
                "format": FORMAT,
                "epoch": epoch + 1,
                "model": model.trainable_state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng_state(),
                "config": cfg.to_dict(),
                "history": history,
                "best_value": best_value,
                "best_epoch": best_epoch,
                "best_metrics": best_metrics,
                "mos_range": list(data.mos_range),
                "inputs": data.inputs,
                "data_wait_s": data_wait,
                "compute_s": compute,
            }
            if cfg.train.keep_best and best_epoch == epoch + 1:
                save_checkpoint(
                    {"format": FORMAT, "epoch": epoch + 1, "model": state["model"], "config": state["config"],
                     "mos_range": state["mos_range"], "inputs": data.inputs, "best": True},
                    out / BEST_NAME,
                )
            save_checkpoint(state, out / CHECKPOINT_NAME)
            _write_metrics_csv(history, out / "metrics.csv")
            if epoch + 1 == cfg.train.epochs:
                _explain(model, cfg, data, out, best_weights=(out / BEST_NAME) if cfg.train.keep_best else None)
            ckpt_dir = out
        if report is not None:
            report(metrics, ckpt_dir)

    ok_history = [h for h in history if h.get("status") == "ok"]
    if status == "ok" and ok_history and best_epoch is None:
        metric = SELECTION_METRIC[cfg.train.select_on]
        status = NO_SELECTION
        reason = (f"no epoch selected: {metric} was NaN at all {len(ok_history)} epoch(s) (constant predictions or constant MOS); "
                  "no best weights were written")
        say(f"trial {cfg.name}: {reason}")
    result = TrialResult(
        status=status,
        select_on=cfg.train.select_on,
        epochs_completed=len(ok_history),
        best_epoch=best_epoch,
        final={k: v for k, v in (ok_history[-1] if ok_history else {}).items() if isinstance(v, float)},
        best=best_metrics,
        history=history,
        diverged_epoch=diverged_epoch,
        reason=reason,
        wall_s=time.perf_counter() - t_start,
        data_wait_s=data_wait,
        compute_s=compute,
    )
    if out is not None:
        _write_metrics_csv(history, out / "metrics.csv")
        atomic_write_json(out / "result.json", _jsonable(result.summary()))
    return result


def _explain(model, cfg: ExperimentConfig, data: TrialData, out: Path, best_weights: Path | None) -> None:
    """Expert weights and attention maps of the selected epoch's weights, into ``out/explain``."""
    if model.variant not in ("full", "dsdm"):
        return
    last = {k: v.detach().clone() for k, v in model.trainable_state_dict().items()}
    if best_weights is not None and best_weights.is_file():
        model.load_trainable_state_dict(load_checkpoint(best_weights)["model"])
    try:
        write_explanations(model, cfg, data.test, data.test_mos_range, out / "explain")
    finally:
        model.load_trainable_state_dict(last)


def _epoch_line(m: dict[str, Any], epochs: int) -> str:
    def f(k):
        v = m.get(k)
        return "  -  " if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"

    return (
        f"epoch {m['epoch']}/{epochs} loss {m['train_loss']:.4f} lr {m['lr']:.2e} | "
        f"val SRCC {f('val_srcc')} PLCC {f('val_plcc')} | test SRCC {f('test_srcc')} PLCC {f('test_plcc')} | "
        f"{m['epoch_s']:.1f} s (data wait {m['data_wait_s']:.1f} s, compute {m['compute_s']:.1f} s, eval {m['eval_s']:.1f} s)"
    )


def _write_metrics_csv(history: list[dict[str, Any]], path: Path) -> None:
    atomic_write(path, lambda tmp: pd.DataFrame(history).to_csv(tmp, index=False))


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


__all__ = ["TrialResult", "run_trial", "build_trial_data", "evaluate"]
