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
from drx.data.splits import SplitParts, cross_dataset_parts, persisted_splits, select, split_parts
from drx.errors import ConfigError
from drx.io import atomic_write, atomic_write_json
from drx.metrics import METRICS, iqa_metrics
from drx.model import build_model
from drx.train.checkpoint import BEST_NAME, CHECKPOINT_NAME, FORMAT, atomic_save, load_checkpoint, restore_rng, rng_state
from drx.train.explain import write_explanations
from drx.train.optim import autocast_dtype, build_loss, build_optimizer, build_scheduler, train_step
from drx.train.scoring import mos_scaler, score_images

log = logging.getLogger("drx.train")


class Reporter(Protocol):
    def __call__(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None: ...


@dataclass
class TrialResult:
    """What a trial returns (and writes to ``result.json``)."""

    status: str  # "ok" | "diverged"
    select_on: str  # "val" (best validation SRCC) | "test" (best test PLCC, the authors' habit)
    epochs_completed: int
    best_epoch: int | None  # the selected epoch (1-based)
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
    train: Any
    val: Any
    test: Any
    mos_range: tuple[float, float]
    test_mos_range: tuple[float, float]
    counts: dict[str, int]


def build_trial_data(cfg: ExperimentConfig) -> TrialData:
    """Manifest -> persisted split -> train/val/test datasets for this trial."""
    d = cfg.data
    s = d.split
    manifest = load_manifest(d.benchmark, d.root, d.options)
    adapter = get_adapter(d.benchmark)
    mos_range = tuple(adapter.mos_range(d.options, manifest))

    def splits_of(m, benchmark):
        return persisted_splits(m, seed=s.seed, n_splits=s.n_splits, train_fraction=s.train_fraction, path=s.file, benchmark=benchmark, cache=d.cache)

    if d.test_benchmark is None:
        parts = split_parts(splits_of(manifest, d.benchmark), s.index, s.val_fraction, s.fraction, s.seed)
        test_manifest, test_mos_range = manifest, mos_range
    else:
        test_manifest = load_manifest(d.test_benchmark, d.test_root, d.test_options)
        test_mos_range = tuple(get_adapter(d.test_benchmark).mos_range(d.test_options, test_manifest))
        split_set = splits_of(manifest, d.benchmark) if d.cross_train == "split" else None
        parts = cross_dataset_parts(
            manifest, test_manifest, split_set, s.index if split_set is not None else None, s.val_fraction, s.seed
        )
        if s.fraction < 1.0:
            keep = max(1, int(round(len(parts.train_ids) * s.fraction)))
            order = np.random.default_rng([s.seed, s.index, 2]).permutation(len(parts.train_ids))
            parts = SplitParts(tuple(sorted(parts.train_ids[i] for i in order[:keep])), parts.val_ids, parts.test_ids)
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
    return TrialData(train, val, test, mos_range, test_mos_range, counts)


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


def _selection_key(metrics: dict[str, float], select_on: str) -> float:
    # val: validation SRCC; test: test PLCC, as the authors' code selects (>=, so later epochs win ties).
    v = metrics.get("test_plcc" if select_on == "test" else "val_srcc", float("nan"))
    return v if math.isfinite(v) else -math.inf


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
    """
    cfg = config
    t_start = time.perf_counter()
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
    if cfg.train.select_on == "val" and cfg.data.split.val_fraction == 0.0:
        raise ConfigError("train.select_on = 'val' selects the epoch on a validation part: data.split.val_fraction must be > 0")

    seed_everything(cfg.train.seed)
    data = build_trial_data(cfg)
    model = build_model(resolve(cfg.model)).to(device)
    steps_per_epoch = cfg.train.steps_per_epoch or max(1, len(data.train) // cfg.train.batch_size)
    optimizer = build_optimizer(model, cfg.train, cfg.model.compat)
    scheduler = build_scheduler(optimizer, cfg.train, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    loss_fn = build_loss(cfg.train)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x).score

    history: list[dict[str, Any]] = []
    best_key, best_epoch, best_metrics = -math.inf, None, {}
    start_epoch = 0
    data_wait = compute = 0.0
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        model.load_trainable_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])
        history = list(state["history"])
        best_key, best_epoch, best_metrics = state["best_key"], state["best_epoch"], dict(state["best_metrics"])
        start_epoch = int(state["epoch"])
        data_wait, compute = state.get("data_wait_s", 0.0), state.get("compute_s", 0.0)
        say(f"resumed from {resume_from} after epoch {start_epoch}")
    say(
        f"trial {cfg.name}: {cfg.model.variant} on {cfg.data.benchmark}"
        + (f"->{cfg.data.test_benchmark}" if cfg.data.test_benchmark else f" split {cfg.data.split.index}")
        + f" | images train {data.counts['train']} val {data.counts['val']} test {data.counts['test']}"
        + f" | {steps_per_epoch} steps/epoch x {cfg.train.epochs} epochs | {device.type}"
        + (f" {str(amp).replace('torch.', '')}" if amp else " fp32")
    )

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
            metrics.update({f"val_{k}": v for k, v in evaluate(model, data.val, cfg, data.mos_range).items()})
        metrics.update({f"test_{k}": v for k, v in evaluate(model, data.test, cfg, data.test_mos_range).items()})
        metrics.update(
            {
                "epoch_s": time.perf_counter() - t_eval + ep_wait + ep_compute,
                "eval_s": time.perf_counter() - t_eval,
                "data_wait_s": ep_wait,
                "compute_s": ep_compute,
            }
        )
        key = _selection_key(metrics, cfg.train.select_on)
        improved = key >= best_key if cfg.train.select_on == "test" else key > best_key
        if improved or best_epoch is None:
            best_key, best_epoch, best_metrics = key, epoch + 1, {k: v for k, v in metrics.items() if isinstance(v, float)}
        metrics["best_epoch"] = best_epoch
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
                "best_key": best_key,
                "best_epoch": best_epoch,
                "best_metrics": best_metrics,
                "mos_range": list(data.mos_range),
                "data_wait_s": data_wait,
                "compute_s": compute,
            }
            if cfg.train.keep_best and best_epoch == epoch + 1:
                atomic_save(
                    {"format": FORMAT, "epoch": epoch + 1, "model": state["model"], "config": state["config"], "mos_range": state["mos_range"], "best": True},
                    out / BEST_NAME,
                )
            atomic_save(state, out / CHECKPOINT_NAME)
            _write_metrics_csv(history, out / "metrics.csv")
            if epoch + 1 == cfg.train.epochs:
                _explain(model, cfg, data, out, best_weights=(out / BEST_NAME) if cfg.train.keep_best else None)
            ckpt_dir = out
        if report is not None:
            report(metrics, ckpt_dir)

    ok_history = [h for h in history if h.get("status") == "ok"]
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
