"""Trial checkpoints: everything needed to resume a trial exactly, written atomically.

A checkpoint holds the trainable weights (never the frozen prior, which is loaded from its own
file), the optimiser, scheduler and grad-scaler states, the epoch, the RNG states, the resolved
config, the per-epoch metrics so far and the best-epoch bookkeeping.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drx.errors import CheckpointError
from drx.io import atomic_write

FORMAT = "drx-trial-v1"
CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save through :func:`drx.io.atomic_write`: never a half-written file."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a trial checkpoint (``checkpoint.pt`` / ``best.pt``, or a folder holding one)."""
    p = Path(path)
    if p.is_dir():
        for name in (CHECKPOINT_NAME, BEST_NAME):
            if (p / name).is_file():
                p = p / name
                break
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist (expected a {CHECKPOINT_NAME} or {BEST_NAME} from `drx train`)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {str(p)!r} could not be read: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(p)!r} is not a drx trial checkpoint (format {FORMAT})")
    return state
