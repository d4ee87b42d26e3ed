"""What both built-ins share: their names and cache files, the build-once lock, the tiny preset
they are built for, the multi-core data generation and the training loop."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import torch

from drx.config import PRESET_DIR, ModelConfig, load_config
from drx.errors import ConfigError
from drx.io import file_lock
from drx.model.weights import BUILTIN_PREFIX
from drx.paths import cache_dir

__all__ = ["BUILTIN_PREFIX", "builtin_name", "builtin_path", "ensure_built", "fit_one_cycle", "map_on_cores", "tiny_model_config"]

T = TypeVar("T")


def builtin_name(ref: str, key: str, available: Iterable[str]) -> str | None:
    """The built-in's name when `ref` is ``builtin:<name>`` (None for a file path); an unknown
    name is a ConfigError naming `key`."""
    if not ref.startswith(BUILTIN_PREFIX):
        return None
    name = ref[len(BUILTIN_PREFIX) :]
    available = list(available)
    if name not in available:
        raise ConfigError(f"{key}: unknown built-in {ref!r}; available: {', '.join(BUILTIN_PREFIX + a for a in available)}")
    return name


def builtin_path(name: str, version: int) -> Path:
    """Where a built-in's weights live: ``<cache_dir()>/<name>-v<version>.pt`` (its record beside it)."""
    return cache_dir() / f"{name}-v{version}.pt"


def ensure_built(path: Path, build: Callable[[Path], Any]) -> Path:
    """`path`, calling ``build(path)`` first if it does not exist, under a file lock (parallel
    trials wait for one build instead of racing)."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock")):
        if not path.is_file():
            build(path)
    return path


def tiny_model_config() -> ModelConfig:
    """The ``tiny`` preset's model section: the one definition of the built-ins' architectures
    (encoder name, kwargs and input size; prior arch and overrides).

    Read from the packaged file itself, not by preset name, which a file named ``tiny`` in the
    working folder would shadow.
    """
    return load_config(PRESET_DIR / "tiny.yaml").model


def map_on_cores(fn: Callable[[Any], T], jobs: list[Any], max_workers: int = 4) -> list[T]:
    """``[fn(j) for j in jobs]`` on up to `max_workers` processes (in order; one process: inline)."""
    workers = max(1, min(max_workers, os.cpu_count() or 1))
    if workers == 1:
        return [fn(j) for j in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(fn, jobs, chunksize=8))


def fit_one_cycle(
    params: list[Any], loss_of: Callable[[Any], Any], batches: Iterator[Any], steps: int, lr: float,
    log: Callable[[str], None], what: str,
) -> None:
    """The loop both built-ins train with: AdamW (weight decay 0.05) under a one-cycle schedule,
    ``loss_of(next(batches))`` per step, four progress lines."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        loss = loss_of(next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(1, steps // 4) == 0:
            log(f"  {what}: step {step + 1}/{steps} loss {loss.item():.4f}")
