"""Where drx keeps built artefacts (embedded benchmark, tiny prior, split files)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cache_dir() -> Path:
    """``$DRX_CACHE`` if set, else ``~/.cache/drx``; created on first use."""
    root = Path(os.environ.get("DRX_CACHE") or Path.home() / ".cache" / "drx").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def build_progress(message: str) -> None:
    """Progress of a one-off build (embedded photographs, miniature prior, tiny encoder).

    It goes to stderr: stdout may be machine-readable (``drx predict --format json/csv``).
    """
    print(message, file=sys.stderr, flush=True)
