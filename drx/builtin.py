"""``builtin:`` weights: small models drx trains once for the CPU preset and keeps in its cache.

``builtin:tiny-daclip`` (the prior, drx/model/tiny_prior.py) and ``builtin:tiny-deit3`` (the image
encoder, drx/model/tiny_encoder.py). Both are saved in their official key layouts and loaded through
the same strict loaders as the real DA-CLIP and DeiT-III files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from drx.errors import ConfigError

BUILTIN_PREFIX = "builtin:"
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
    from drx.paths import cache_dir

    return cache_dir() / f"{name}-v{version}.pt"


def ensure_built(path: Path, build: Callable[[Path], Any]) -> Path:
    """`path`, calling ``build(path)`` first if it does not exist, under a file lock (parallel
    trials wait for one build instead of racing)."""
    from drx.data.embedded import file_lock

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock")):
        if not path.is_file():
            build(path)
    return path


def map_on_cores(fn: Callable[[Any], T], jobs: list[Any], max_workers: int = 4) -> list[T]:
    """``[fn(j) for j in jobs]`` on up to `max_workers` processes (in order; one process: inline)."""
    from concurrent.futures import ProcessPoolExecutor

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
    import torch

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
