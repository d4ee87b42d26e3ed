"""Resolving ``model.prior.checkpoint`` (a local file, or a prior drx builds itself)."""

from __future__ import annotations

from pathlib import Path

from drx.config import PriorConfig
from drx.errors import ConfigError

BUILTIN_PREFIX = "builtin:"


def resolve_prior_checkpoint(cfg: PriorConfig) -> Path:
    ref = cfg.checkpoint
    if ref is None:
        raise ConfigError("model.prior.checkpoint is null: nothing to load")
    if ref.startswith(BUILTIN_PREFIX):
        raise ConfigError(f"model.prior.checkpoint: unknown built-in prior {ref!r}")
    return Path(ref).expanduser()
