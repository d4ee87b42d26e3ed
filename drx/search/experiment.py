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


# ------------------------------------------------------------------------- resuming after a crash


def run_folders(exp_dir: Path, base: str) -> list[Path]:
    """``base``, then the fallback continuations ``base-r2``, ``base-r3``... in order."""
    found = [exp_dir / base] if (exp_dir / base).is_dir() else []
    extra = sorted((p for p in exp_dir.glob(f"{base}-r*") if p.is_dir() and p.name[len(base) + 2 :].isdigit()), key=lambda p: int(p.name[len(base) + 2 :]))
    return found + extra


def next_run_name(exp_dir: Path, base: str) -> str:
    runs = run_folders(exp_dir, base)
    return base if not runs else f"{base}-r{len(runs) + 1}"


def validate_ray_state(run_dir: Path) -> bool:
    """True when Ray's newest experiment state parses. A state file cut short by a killed driver
    (Ray copies it to storage non-atomically) is moved aside, so it is never restored from."""
    good = False
    for f in sorted(run_dir.glob("experiment_state-*.json")):
        try:
            json.loads(f.read_text())
            good = True
        except (OSError, json.JSONDecodeError):
            f.rename(f.with_name(f.name + f".corrupt-{int(time.time())}"))
    return good


def trial_progress(trial_dir: Path) -> tuple[str, int]:
    """(``done``/``partial``/``new``, last epoch) of a trial folder, from its result.json."""
    res = trial_dir / "result.json"
    last: dict[str, Any] = {}
    if res.is_file():
        for line in res.read_text().splitlines():
            try:
                last = json.loads(line) or last
            except json.JSONDecodeError:
                continue
    if not last:
        return "new", 0
    epoch = int(last.get("epoch") or 0)
    planned = int(last.get("planned_epochs") or 0)
    if last.get("status") == "diverged" or (planned and epoch >= planned):
        return "done", epoch
    return "partial", epoch


def latest_checkpoint(trial_dir: Path) -> Path | None:
    ckpts = sorted(p for p in trial_dir.glob("checkpoint_*") if (p / "checkpoint.pt").is_file())
    return ckpts[-1] if ckpts else None
