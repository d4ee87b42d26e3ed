"""The experiment folder drx writes next to Ray's results (no Ray here).

``STORAGE/NAME/`` holds:

* ``drx-experiment.json``: what ran: kind (``ablate``/``tune``), the spec as given, the reference
  variant, the protocol, the plan fingerprint, versions, git commit, machine, wall times.
* ``plan.json``: every planned trial (name, variant, benchmark, split, fraction, resolved config),
  so a report can show trials that never ran.
* ``splits/``: the persisted split files every trial reads (made before any trial starts).
* ``trials/`` (ablate) or ``search/`` + ``confirm/`` (tune): Ray Tune's own experiment folders.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

META_NAME = "drx-experiment.json"
PLAN_NAME = "plan.json"
SPLITS_DIR = "splits"
ABLATE_RUN = "trials"
SEARCH_RUN = "search"
CONFIRM_RUN = "confirm"
CONFIRM_TABLE = "confirm.csv"
FORMAT = "drx-experiment-v1"


def is_uri(path: str) -> bool:
    return "://" in str(path)


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("drx", "torch", "torchvision", "timm", "open_clip_torch", "ray", "optuna", "pandas", "scipy", "plotly", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit(start: Path | None = None) -> str | None:
    here = start or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # torch is optional for reading metadata
        pass
    return info


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def read_meta(folder: str | Path) -> dict[str, Any]:
    from drx.errors import DataError

    p = Path(folder) / META_NAME
    if not p.is_file():
        raise DataError(f"{folder}: not a drx experiment folder (no {META_NAME}; expected the STORAGE/NAME folder of `drx ablate` or `drx tune`)")
    return json.loads(p.read_text())


def new_meta(kind: str, name: str, spec: dict[str, Any], source: str | None, fingerprint: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "kind": kind,
        "name": name,
        "spec": spec,
        "spec_file": source,
        "fingerprint": fingerprint,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "git_commit": git_commit(),
        "machine": machine(),
        "runs": [],
        **extra,
    }
