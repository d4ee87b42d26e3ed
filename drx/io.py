"""Atomic writes and file locks: the one home for both (every writer in drx goes through here).

A file drx writes is either absent, the old version or the complete new version, never half a file:
the data goes to a temporary file in the same folder, then ``os.replace`` renames it over the target
(atomic on POSIX and Windows within one file system). Locks are ``filelock.FileLock``: parallel
trials or processes that would build the same cached file wait for one build instead of racing.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from drx.errors import DataError

TMP_SUFFIX = ".drx-tmp"


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside `path`, then rename it to `path`.

    The temporary file is removed if `write` raises. Parent folders are created. Returns `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """Write `data` as JSON (values JSON cannot hold written with ``str``) to `path` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=indent, default=str) + "\n")


@contextmanager
def file_lock(path: str | Path, blocking: bool = True) -> Iterator[None]:
    """An exclusive lock on `path` (created if needed) for the ``with`` block.

    ``blocking=False`` raises :class:`DataError` at once when another process holds it.
    """
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=-1 if blocking else 0)
    except Timeout:
        raise DataError(f"{path}: locked by another running drx process; wait for it to finish") from None
    try:
        yield
    finally:
        lock.release()


#: Mount types of network and cluster file systems: several machines see one folder, and SQLite's
#: WAL mode (which needs shared memory between its users) cannot work there.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "cephfs", "glusterfs", "fuse.glusterfs",
    "fuse.juicefs", "fuse.s3fs", "fuse.gcsfuse", "9p", "virtiofs", "wekafs", "fuse.sshfs",
})


def filesystem_type(path: str | Path) -> str:
    """The mount type holding `path` (the longest matching mount point in /proc/mounts), or
    ``unknown`` where /proc/mounts cannot be read (macOS, Windows)."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    target = str(Path(path).resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and (target == parts[1] or target.startswith(parts[1].rstrip("/") + "/")) and len(parts[1]) > len(best):
            best, kind = parts[1], parts[2]
    return kind
