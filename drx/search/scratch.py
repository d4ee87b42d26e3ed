"""Node-local scratch folders of running trials, and the removal of those whose process died.

A trial writes its per-epoch checkpoint into a scratch folder before Ray copies it to storage. A
trial process that is killed (SIGKILL of the driver, a lost worker, Ray stopping an actor) never
reaches its ``finally`` and would leave that folder behind: about 17 MB for the tiny model, far
more at paper shapes, once per killed trial. So every folder records its owner (host, pid and the
pid's start time) and whoever next looks (a starting trial, the driver when Ray stops) removes
the folders of owners that are gone. Nothing here imports Ray.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

SCRATCH_ENV = "DRX_SCRATCH"
OWNER_FILE = "owner"


def scratch_root() -> Path:
    """``$DRX_SCRATCH``, else ``<system temp>/drx-trials``: node-local by default."""
    return Path(os.environ.get(SCRATCH_ENV) or Path(tempfile.gettempdir()) / "drx-trials")


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), which tells a reused pid from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name; starttime is field 22 of proc(5).
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    now = _start_time(pid)
    return not (start and now is not None and now != start)


def make_trial_scratch(trial_name: str) -> Path:
    """A new scratch folder for this process's trial, with its owner recorded."""
    root = scratch_root()
    root.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in trial_name)[:80]
    work = Path(tempfile.mkdtemp(prefix=f"{safe}-", dir=root))
    pid = os.getpid()
    (work / OWNER_FILE).write_text(f"{socket.gethostname()}\n{pid}\n{_start_time(pid) or ''}\n")
    return work


def remove_orphaned_scratch(root: Path | None = None) -> list[Path]:
    """Remove the scratch folders on this host whose owning process has ended; returns them.

    Folders of another host (a shared temp folder), of a live owner, or without a readable owner
    record (one being created this instant) are left alone.
    """
    root = scratch_root() if root is None else root
    removed: list[Path] = []
    # On Windows os.kill(pid, 0) terminates the process rather than probing it: never sweep there.
    if os.name == "nt" or not root.is_dir():
        return removed
    host = socket.gethostname()
    for work in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            owner_host, pid, start = ((work / OWNER_FILE).read_text().split("\n") + ["", "", ""])[:3]
            pid_int = int(pid)
        except (OSError, ValueError):
            continue
        if owner_host != host or _alive(pid_int, start):
            continue
        shutil.rmtree(work, ignore_errors=True)
        removed.append(work)
    return removed
