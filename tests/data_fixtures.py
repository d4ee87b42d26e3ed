"""Builders of small benchmark trees in each official format, for tests.

Every builder writes real files (CSV, MATLAB .mat via scipy.io.savemat, .xlsx via openpyxl,
JPEG/PNG/BMP images) into `root` and returns a :class:`Bench` describing what it wrote. Label
values can be overridden to plant faults (NaN, out of range, duplicates, ...).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

JPEG_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}


@dataclass
class Bench:
    root: Path
    label_file: Path
    ids: list[str]
    images: dict[str, Path]  # image_id -> image file
    mos: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def write_image(path: Path, size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    """A smooth random RGB image of size (width, height), in the format of the file's suffix."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.integers(0, 256, size=(max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    img = Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = JPEG_FORMATS[path.suffix.lower()]
    img.save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to a fraction of its bytes (a truncated download)."""
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def garble(path: Path) -> Path:
    """Replace a file's bytes with non-image text."""
    path.write_bytes(b"this is not an image\n" * 4)
    return path


def _mos(n: int, lo: float, hi: float) -> list[float]:
    return [round(lo + (hi - lo) * (k + 1) / (n + 1), 3) for k in range(n)]


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return str(v)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([",".join(header)] + [",".join(cell(v) for v in r) for r in rows]) + "\n")


def _write_xlsx(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]], sheet: str = "Sheet1", extra_sheets: Sequence[str] = ()) -> None:
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = sheet
    ws.append(list(header))
    for r in rows:
        ws.append([None if (isinstance(v, float) and math.isnan(v)) else v for v in r])
    for name in extra_sheets:
        wb.create_sheet(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)


def make_koniq(
    root: Path, n: int = 4, *, mos: Sequence[float] | None = None, names: Sequence[str] | None = None,
    resolution: str = "1024x768", size: tuple[int, int] = (64, 48), unscored: int = 0,
    columns: Sequence[str] | None = None,
) -> Bench:
    """KonIQ-10k: koniq10k_scores_and_distributions.csv + <resolution>/<name>.jpg."""
    names = list(names) if names is not None else [f"{10004473376 + k}.jpg" for k in range(n)]
    mos = list(mos) if mos is not None else _mos(len(names), 5, 90)
    header = list(columns) if columns is not None else ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore"]
    rows = []
    for k, (name, m) in enumerate(zip(names, mos)):
        mos15 = 1 + 4 * (m / 100) if isinstance(m, (int, float)) and not math.isnan(m) else m
        rows.append([name, 0.1, 0.2, 0.4, 0.2, 0.1, 120, round(mos15, 4) if isinstance(mos15, float) else mos15, 0.5 + 0.01 * k, m])
    label = root / "koniq10k_scores_and_distributions.csv"
    _write_csv(label, header, rows)
    images = {}
    for k, name in enumerate(dict.fromkeys(names)):
        images[name] = write_image(root / resolution / name, size, seed=k)
    for k in range(unscored):
        write_image(root / resolution / f"unscored{k}.jpg", size, seed=100 + k)
    return Bench(root, label, list(names), images, list(mos))


def make_livec(root: Path, n: int = 4, *, mos: Sequence[float] | None = None, names: Sequence[str] | None = None,
               std: bool = True, size: tuple[int, int] = (64, 48)) -> Bench:
    """LIVE Challenge: Data/AllImages_release.mat, AllMOS_release.mat, AllStdDev_release.mat; the
    first 7 entries are training images t1..t7.bmp (in Images/trainingImages/) with MOS 99.x."""
    from scipy.io import savemat

    names = list(names) if names is not None else [f"{k + 10}.bmp" if k % 2 else f"{k + 10}.JPG" for k in range(n)]
    mos = list(mos) if mos is not None else _mos(len(names), 5, 90)
    train_names = [f"t{k + 1}.bmp" for k in range(7)]
    train_mos = [99.0 + k / 10 for k in range(7)]  # distinctive: must never survive
    all_names = train_names + names
    all_mos = train_mos + mos
    data = root / "Data"
    data.mkdir(parents=True, exist_ok=True)
    cell = np.empty((len(all_names), 1), dtype=object)
    for k, name in enumerate(all_names):
        cell[k, 0] = name
    savemat(data / "AllImages_release.mat", {"AllImages_release": cell})
    savemat(data / "AllMOS_release.mat", {"AllMOS_release": np.array([all_mos], dtype=float)})
    if std:
        savemat(data / "AllStdDev_release.mat", {"AllStdDev_release": np.array([[10.0 + k for k in range(len(all_names))]])})
    images = {}
    for k, name in enumerate(train_names):
        write_image(root / "Images" / "trainingImages" / name, size, seed=50 + k)
    for k, name in enumerate(dict.fromkeys(names)):
        images[name] = write_image(root / "Images" / name, size, seed=k)
    return Bench(root, data / "AllImages_release.mat", list(names), images, list(mos), {"train_names": train_names, "train_mos": train_mos})


def make_spaq(root: Path, n: int = 4, *, mos: Sequence[float] | None = None, names: Sequence[str] | None = None,
              size: tuple[int, int] = (64, 48), columns: Sequence[str] = ("Image name", "MOS")) -> Bench:
    """SPAQ: Annotations/MOS and Image attribute scores.xlsx + TestImage/<name>.jpg."""
    names = list(names) if names is not None else [f"{k + 1:05d}.jpg" for k in range(n)]
    mos = list(mos) if mos is not None else _mos(len(names), 2, 96)
    header = list(columns) + ["Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness"]
    rows = [[name, m, 50, 50, 50, 50, 50] for name, m in zip(names, mos)]
    label = root / "Annotations" / "MOS and Image attribute scores.xlsx"
    _write_xlsx(label, header, rows)
    images = {}
    for k, name in enumerate(dict.fromkeys(names)):
        images[name] = write_image(root / "TestImage" / name, size, seed=k)
    return Bench(root, label, list(names), images, list(mos))


def make_livefb(root: Path, n: int = 4, *, mos: Sequence[float] | None = None, names: Sequence[str] | None = None,
                size: tuple[int, int] = (64, 48), in_database: bool = False, patches: int = 0) -> Bench:
    """LIVE-FB: labels_image.csv (name, mos) at the root (or in database/) + database/<name>."""
    if names is None:
        subs = ["voc_emotic_ava", "blur_dataset", "EE371R"]
        names = [f"{subs[k % 3]}/{'AVA__' if k % 3 == 0 else ''}{k + 1}.jpg" for k in range(n)]
    names = list(names)
    mos = list(mos) if mos is not None else _mos(len(names), 0, 94)
    label = (root / "database" / "labels_image.csv") if in_database else (root / "labels_image.csv")
    _write_csv(label, ["name", "mos"], [[a, b] for a, b in zip(names, mos)])
    images = {}
    for k, name in enumerate(dict.fromkeys(names)):
        images[name] = write_image(root / "database" / name, size, seed=k)
    for k in range(patches):
        write_image(root / "database" / "patches" / f"{k + 1}_patch_1.jpg", (32, 32), seed=200 + k)
    return Bench(root, label, list(names), images, list(mos))


def make_bid(root: Path, numbers: Sequence[Any] = (1, 3, 4, 5), *, mos: Sequence[float] | None = None,
             subfolder: bool = False, headers: Sequence[str] = ("Image Number", "Average Subjective Grade"),
             sheet: str = "Plan1", grades: int = 3, lower_case: bool = False, size: tuple[int, int] = (64, 48)) -> Bench:
    """BID: DatabaseGrades.xlsx (sheet Plan1: Image Number, Average Subjective Grade, Number of
    Grades, Grade #1..) + DatabaseImage%04d.JPG in the root (or ImageDatabase/)."""
    numbers = list(numbers)
    mos = list(mos) if mos is not None else _mos(len(numbers), 0.2, 4.9)
    header = list(headers) + ["Number of Grades"] + [f"Grade #{k + 1}" for k in range(grades)]
    rows = []
    for num, m in zip(numbers, mos):
        g = [round(min(5, max(0, (m if isinstance(m, (int, float)) and not math.isnan(m) else 2) + d)), 2) for d in (-0.5, 0.0, 0.5)[:grades]]
        rows.append([num, m, grades] + g)
    label = root / "DatabaseGrades.xlsx"
    _write_xlsx(label, header, rows, sheet=sheet, extra_sheets=("Plan2", "Plan3") if sheet == "Plan1" else ())
    folder = root / "ImageDatabase" if subfolder else root
    images = {}
    ids = []
    for k, num in enumerate(numbers):
        iid = f"DatabaseImage{int(num):04d}" if isinstance(num, (int, float)) and not (isinstance(num, float) and math.isnan(num)) else str(num)
        ids.append(iid)
        if isinstance(num, (int, float)) and float(num).is_integer():
            name = f"{iid}.jpg" if lower_case else f"{iid}.JPG"
            images[iid] = write_image(folder / name, size, seed=k)
    return Bench(root, label, ids, images, list(mos))


def make_csv(root: Path, n: int = 6, *, mos: Sequence[float] | None = None, groups: int | None = 3,
             size: tuple[int, int] = (64, 48), file: str = "labels.csv", absolute: bool = False) -> Bench:
    """A user CSV: path (relative to the CSV's folder), mos, group; mixed PNG/JPEG/BMP images."""
    mos = list(mos) if mos is not None else _mos(n, 1, 9)
    exts = [".png", ".jpg", ".bmp"]
    rels = [f"imgs/img{k}{exts[k % 3]}" for k in range(n)]
    label = root / file
    header = ["path", "mos"] + (["group"] if groups else [])
    rows = []
    images = {}
    for k, (rel, m) in enumerate(zip(rels, mos)):
        images[rel] = write_image(label.parent / rel, size, seed=k)
        shown = str(label.parent / rel) if absolute else rel
        rows.append([shown, m] + ([f"scene{k % groups}"] if groups else []))
    _write_csv(label, header, rows)
    ids = [str(label.parent / r) for r in rels] if absolute else rels
    return Bench(root, label, ids, {i: p for i, p in zip(ids, images.values())}, mos)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a small CSV (None/NaN as empty cells)."""
    _write_csv(path, header, rows)


def write_xlsx(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]], sheet: str = "Sheet1") -> None:
    """Write a one-sheet .xlsx workbook."""
    _write_xlsx(path, header, rows, sheet=sheet)


BUILDERS = {
    "koniq": make_koniq,
    "livec": make_livec,
    "spaq": make_spaq,
    "livefb": make_livefb,
    "bid": make_bid,
    "csv": make_csv,
}
