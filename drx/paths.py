"""Where drx keeps built artefacts (embedded benchmark, tiny prior, split files)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$DRX_CACHE`` if set, else ``~/.cache/drx``; created on first use."""
    root = Path(os.environ.get("DRX_CACHE") or Path.home() / ".cache" / "drx").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root
