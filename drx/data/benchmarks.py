"""Benchmark adapters: each turns a benchmark folder in its official layout into a manifest.

A manifest is a DataFrame with columns ``image_id`` (str, unique), ``path`` (absolute str),
``mos`` (float), and optionally ``group`` (str: images sharing a source photo) and ``std``
(float); ``manifest.attrs`` carries the benchmark name, root, label file and nominal MOS range.

Also here: :func:`check_benchmark` (decode every image, list every fault by name) and
:func:`prepare_benchmark` (a resized copy in the same official layout, resumable).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from drx.config import ResizeConfig
from drx.data import embedded
from drx.data.transforms import load_image, resize_image, resized_size
from drx.errors import DataError

log = logging.getLogger("drx.data")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
EXCLUDED_FILE = "drx-excluded.csv"
PREPARED_FILE = "drx-prepared.json"
TMP_SUFFIX = ".drx-tmp"
MAX_LISTED = 10
JPEG_QUALITY = 95


def _listing(items: Iterable[str], limit: int = MAX_LISTED) -> str:
    items = list(items)
    text = ", ".join(items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _suggest(name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


# --------------------------------------------------------------------------------- file reading


@dataclass
class Labels:
    """An adapter's parsed label file: a frame with image_id, path, mos, [group], [std] and
    ``_row`` (the row's position in the label file, for messages)."""

    frame: pd.DataFrame
    label_file: Path
    warnings: list[str] = field(default_factory=list)


def _need_file(path: Path, what: str) -> Path:
    if not path.is_file():
        found = ""
        if path.parent.is_dir():
            names = sorted(p.name for p in path.parent.iterdir())[:15]
            found = f"; {path.parent} holds: {', '.join(names) or 'nothing'}"
        else:
            found = f"; folder {path.parent} does not exist"
        raise DataError(f"{path}: {what} not found{found}")
    return path


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        # All as text: numeric columns are converted explicitly so bad cells can be named.
        df = pd.read_csv(path, dtype=str, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the label file is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc})") from None
    df.columns = [str(c).strip() for c in df.columns]
    df["_row"] = [f"row {i + 2}" for i in range(len(df))]  # the header is row 1
    return df[df.drop(columns="_row").notna().any(axis=1)]  # blank lines are not rows


def _read_excel(path: Path, sheet: str | int) -> pd.DataFrame:
    engine = "xlrd" if path.suffix.lower() == ".xls" else "openpyxl"
    try:
        df = pd.read_excel(path, sheet_name=sheet, engine=engine)
    except ImportError as exc:
        raise DataError(f"{path}: reading {path.suffix} files needs the {engine} package ({exc})") from None
    except Exception as exc:  # openpyxl/xlrd raise many types for damaged or foreign files
        raise DataError(f"{path}: cannot be read as an Excel workbook ({type(exc).__name__}: {exc})") from None
    df.columns = [str(c).strip() for c in df.columns]
    df["_row"] = [f"row {i + 2}" for i in range(len(df))]
    return df[df.drop(columns="_row").notna().any(axis=1)]


def _require_columns(df: pd.DataFrame, columns: Iterable[str], path: Path, hint: str = "") -> None:
    have = [c for c in df.columns if c != "_row"]
    for col in columns:
        if col not in have:
            raise DataError(
                f"{path}: missing column {col!r}{_suggest(col, have)} (columns found: {', '.join(map(repr, have))}){hint}"
            )


def _text_column(df: pd.DataFrame, col: str, path: Path, what: str) -> pd.Series:
    values = df[col]
    empty = values.isna() | (values.astype(str).str.strip() == "")
    if empty.any():
        rows = df.loc[empty, "_row"].tolist()
        raise DataError(f"{path}: column {col!r} ({what}) is empty in {len(rows)} row(s): {_listing(rows)}")
    return values.astype(str).str.strip()


def _float_column(df: pd.DataFrame, col: str, path: Path) -> pd.Series:
    """Numbers of a column; NaN stays NaN (reported by the caller), text is an error here."""
    raw = df[col]
    num = pd.to_numeric(raw, errors="coerce").astype(float)
    bad = num.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
    if bad.any():
        items = [f"{w} ({v!r})" for w, v in zip(df.loc[bad, "_row"], raw[bad])]
        raise DataError(f"{path}: column {col!r} must hold numbers; {len(items)} row(s) do not: {_listing(items)}")
    return num


# ------------------------------------------------------------------------------------- adapters


class Adapter:
    """Base class: a benchmark layout. Subclasses set `name`, `expected_count`, `defaults`,
    `nominal_range` and implement `parse`, `label_files` and `scan_dirs`."""

    name: str = ""
    expected_count: int | None = None
    # (height, width) of the reference code's fixed resize, used by `prepare --compat reference`.
    reference_resize: tuple[int, int] | None = None
    defaults: dict[str, Any] = {}
    nominal_range: tuple[float, float] = (0.0, 100.0)
    layout: str = ""

    def resolve_options(self, options: dict[str, Any] | None) -> dict[str, Any]:
        """Defaults merged with `options`; DataError on unknown option names."""
        options = dict(options or {})
        for key in options:
            if key not in self.defaults:
                valid = ", ".join(self.defaults) or "none"
                raise DataError(f"benchmark {self.name!r} has no option {key!r}{_suggest(key, self.defaults)} (options: {valid})")
        return {**self.defaults, **options}

    def resolve_root(self, root: str | Path | None, options: dict[str, Any]) -> Path:
        if root is None:
            raise DataError(f"benchmark {self.name!r} needs its folder: set data.root (or --root); expected layout: {self.layout}")
        path = Path(root).expanduser()
        if not path.exists():
            raise DataError(f"{path}: benchmark root for {self.name!r} does not exist (expected layout: {self.layout})")
        if not path.is_dir():
            raise DataError(f"{path}: benchmark root for {self.name!r} must be a folder, found a file")
        return path.absolute()

    def mos_range(self, options: dict[str, Any] | None = None, manifest: pd.DataFrame | None = None) -> tuple[float, float]:
        """The nominal (lo, hi) MOS scale (the trainer rescales labels from it to its target range)."""
        self.resolve_options(options)
        return self.nominal_range

    def parse(self, root: Path, options: dict[str, Any]) -> Labels:
        raise NotImplementedError

    def label_files(self, root: Path, options: dict[str, Any]) -> list[Path]:
        """The label files this adapter reads (copied verbatim by `prepare`)."""
        raise NotImplementedError

    def scan_dirs(self, root: Path, options: dict[str, Any]) -> list[tuple[Path, bool, frozenset[str]]]:
        """Folders holding the images: (folder, recursive, sub-folder names to skip)."""
        return []

    def load(self, root: str | Path | None, options: dict[str, Any] | None = None) -> pd.DataFrame:
        """The validated manifest (see :func:`load_manifest`)."""
        return load_manifest(self.name, root, options)


class KonIQ(Adapter):
    name = "koniq"
    expected_count = 10073
    reference_resize = (512, 384)
    defaults = {"resolution": "1024x768", "score_column": "MOS_zscore"}
    LABEL = "koniq10k_scores_and_distributions.csv"
    RESOLUTIONS = ("1024x768", "512x384", "224x224")
    SCORES = {"MOS_zscore": (0.0, 100.0), "MOS": (1.0, 5.0)}
    layout = f"<root>/{LABEL} and images in <root>/1024x768/ (or 512x384/, option resolution)"

    def resolve_options(self, options: dict[str, Any] | None) -> dict[str, Any]:
        opts = super().resolve_options(options)
        if opts["resolution"] not in self.RESOLUTIONS:
            raise DataError(f"koniq option resolution={opts['resolution']!r}: expected one of {', '.join(self.RESOLUTIONS)}")
        if opts["score_column"] not in self.SCORES:
            raise DataError(
                f"koniq option score_column={opts['score_column']!r}: expected 'MOS_zscore' (0-100 scale) or 'MOS' (1-5 scale)"
                f"{_suggest(str(opts['score_column']), self.SCORES)}"
            )
        return opts

    def mos_range(self, options=None, manifest=None):
        return self.SCORES[self.resolve_options(options)["score_column"]]

    def label_files(self, root, options):
        return [root / self.LABEL]

    def scan_dirs(self, root, options):
        return [(root / options["resolution"], False, frozenset())]

    def parse(self, root, options):
        path = _need_file(root / self.LABEL, "KonIQ-10k label file")
        df = _read_csv(path)
        score = options["score_column"]
        _require_columns(df, ["image_name", score], path)
        names = _text_column(df, "image_name", path, "image file name")
        folder = root / options["resolution"]
        out = pd.DataFrame(
            {
                "image_id": names.values,
                "path": [str(folder / n) for n in names],
                "mos": _float_column(df, score, path).values,
                "_row": df["_row"].values,
            }
        )
        # SD is on the 1-5 scale of the MOS column; it is kept only when that is the score used.
        if score == "MOS" and "SD" in df.columns:
            out["std"] = _float_column(df, "SD", path).values
        return Labels(out, path)


class LIVEC(Adapter):
    name = "livec"
    expected_count = 1162
    reference_resize = None
    defaults: dict[str, Any] = {}
    N_TRAINING = 7  # the first 7 entries are the subjects' training images (names t*.bmp)
    NAMES, MOS, STD = "AllImages_release", "AllMOS_release", "AllStdDev_release"
    layout = "<root>/Data/AllImages_release.mat, <root>/Data/AllMOS_release.mat and images in <root>/Images/"

    def label_files(self, root, options):
        files = [root / "Data" / f"{self.NAMES}.mat", root / "Data" / f"{self.MOS}.mat"]
        std = root / "Data" / f"{self.STD}.mat"
        return files + ([std] if std.is_file() else [])

    def scan_dirs(self, root, options):
        return [(root / "Images", False, frozenset())]  # not recursive: skips trainingImages/

    @staticmethod
    def _load_var(path: Path, var: str) -> np.ndarray:
        from scipy.io import loadmat

        _need_file(path, "LIVE Challenge label file")
        try:
            data = loadmat(str(path))
        except NotImplementedError:
            raise DataError(f"{path}: MATLAB v7.3 (HDF5) .mat files are not readable by scipy; re-save it with save(..., '-v7')") from None
        except Exception as exc:  # scipy raises ValueError/TypeError/... on damaged files
            raise DataError(f"{path}: cannot be read as a MATLAB .mat file ({type(exc).__name__}: {exc})") from None
        if var not in data:
            found = [k for k in data if not k.startswith("__")]
            raise DataError(f"{path}: variable {var!r} not found{_suggest(var, found)} (variables: {', '.join(found) or 'none'})")
        return np.asarray(data[var])

    @staticmethod
    def _names(arr: np.ndarray, path: Path) -> list[str]:
        out = []
        for k, item in enumerate(arr.ravel()):
            value = item
            while isinstance(value, np.ndarray):  # MATLAB cells nest: cell -> char array
                if value.size != 1:
                    break
                value = value.ravel()[0]
            if isinstance(value, np.ndarray) and value.dtype.kind == "U":
                value = "".join(value.ravel().tolist())
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{path}: entry {k + 1} of the image names is not a file name ({value!r})")
            out.append(value.strip())
        return out

    def parse(self, root, options):
        names_path = root / "Data" / f"{self.NAMES}.mat"
        mos_path = root / "Data" / f"{self.MOS}.mat"
        names = self._names(self._load_var(names_path, self.NAMES), names_path)
        mos_raw = self._load_var(mos_path, self.MOS)
        try:
            mos = mos_raw.astype(float).ravel()
        except (TypeError, ValueError):
            raise DataError(f"{mos_path}: variable {self.MOS!r} must hold numbers") from None
        if len(mos) != len(names):
            raise DataError(f"{mos_path} holds {len(mos)} MOS values but {names_path} names {len(names)} images; the files must match entry by entry")
        frame = pd.DataFrame(
            {
                "image_id": names,
                "path": [str(root / "Images" / n) for n in names],
                "mos": mos,
                "_row": [f"entry {k + 1}" for k in range(len(names))],
            }
        )
        std_path = root / "Data" / f"{self.STD}.mat"
        if std_path.is_file():
            std_raw = self._load_var(std_path, self.STD)
            try:
                std = std_raw.astype(float).ravel()
            except (TypeError, ValueError):
                raise DataError(f"{std_path}: variable {self.STD!r} must hold numbers") from None
            if len(std) != len(names):
                raise DataError(f"{std_path} holds {len(std)} values but {names_path} names {len(names)} images")
            frame["std"] = std
        warnings = []
        head = frame.iloc[: self.N_TRAINING]
        odd = [f"{w} ({n!r})" for w, n in zip(head["_row"], head["image_id"]) if not Path(n).name.lower().startswith("t")]
        if odd:
            warnings.append(
                f"{names_path}: the first {self.N_TRAINING} entries are dropped as the subjects' training images (names t*), "
                f"but {_listing(odd)} do not look like training images; is this the official file?"
            )
        # Standard practice (LIVE's README, HyperIQA, DR.Experts, pyiqa): drop the 7 training images.
        frame = frame.iloc[self.N_TRAINING :].reset_index(drop=True)
        return Labels(frame, names_path, warnings)


class SPAQ(Adapter):
    name = "spaq"
    expected_count = 11125
    reference_resize = (512, 384)
    defaults: dict[str, Any] = {}
    LABEL = "Annotations/MOS and Image attribute scores.xlsx"
    layout = f"<root>/{LABEL} and images in <root>/TestImage/"

    def label_files(self, root, options):
        return [root / self.LABEL]

    def scan_dirs(self, root, options):
        return [(root / "TestImage", False, frozenset())]

    def parse(self, root, options):
        path = _need_file(root / self.LABEL, "SPAQ label workbook")
        df = _read_excel(path, 0)
        _require_columns(df, ["Image name", "MOS"], path)
        names = _text_column(df, "Image name", path, "image file name")
        frame = pd.DataFrame(
            {
                "image_id": names.values,
                "path": [str(root / "TestImage" / n) for n in names],
                "mos": _float_column(df, "MOS", path).values,
                "_row": df["_row"].values,
            }
        )
        return Labels(frame, path)


class LIVEFB(Adapter):
    name = "livefb"
    expected_count = 39810
    reference_resize = (512, 384)
    defaults: dict[str, Any] = {}
    LABEL = "labels_image.csv"
    layout = "<root>/labels_image.csv (or <root>/database/labels_image.csv) and images under <root>/database/"
    _PATCH = re.compile(r"(?:_patch_|(?:^|/)patches/)")

    def _label_path(self, root: Path) -> Path:
        for cand in (root / self.LABEL, root / "database" / self.LABEL):
            if cand.is_file():
                return cand
        return _need_file(root / self.LABEL, "LIVE-FB label file (also looked for database/labels_image.csv)")

    def label_files(self, root, options):
        return [self._label_path(root)]

    def scan_dirs(self, root, options):
        return [(root / "database", True, frozenset({"patches"}))]

    def parse(self, root, options):
        path = self._label_path(root)
        df = _read_csv(path)
        hint = ""
        if any("patch" in c for c in df.columns):
            hint = "; this looks like a pyiqa meta file or a patch label file, not PaQ-2-PiQ's labels_image.csv"
        _require_columns(df, ["name", "mos"], path, hint)
        names = _text_column(df, "name", path, "image path under database/")
        patch = names.str.replace("\\", "/", regex=False).str.contains(self._PATCH)
        if patch.any():
            items = [f"{w} ({n!r})" for w, n in zip(df.loc[patch, "_row"], names[patch])]
            raise DataError(
                f"{path}: {len(items)} row(s) are patches, not whole images: {_listing(items)}. labels_image.csv lists "
                f"whole images only; this is probably labels_patch.csv or a pyiqa meta file (use PaQ-2-PiQ's database/labels_image.csv)"
            )
        frame = pd.DataFrame(
            {
                "image_id": names.values,
                "path": [str(root / "database" / n) for n in names],
                "mos": _float_column(df, "mos", path).values,
                "_row": df["_row"].values,
            }
        )
        return Labels(frame, path)


class BID(Adapter):
    name = "bid"
    expected_count = 586
    reference_resize = (512, 512)
    nominal_range = (0.0, 5.0)
    defaults: dict[str, Any] = {}
    COLS = ("Image Number", "Average Subjective Grade")
    layout = "<root>/DatabaseGrades.xlsx (or .xls) and DatabaseImage%04d.JPG in <root>/ (or <root>/ImageDatabase/)"
    _GRADE = re.compile(r"^grade\s*#?\s*\d+$", re.IGNORECASE)

    def _label_path(self, root: Path) -> Path:
        for name in ("DatabaseGrades.xlsx", "DatabaseGrades.xls"):
            if (root / name).is_file():
                return root / name
        return _need_file(root / "DatabaseGrades.xlsx", "BID grade sheet (also looked for DatabaseGrades.xls)")

    def _image_dir(self, root: Path) -> Path:
        sub = root / "ImageDatabase"
        return sub if sub.is_dir() else root

    def label_files(self, root, options):
        return [self._label_path(root)]

    def scan_dirs(self, root, options):
        return [(self._image_dir(root), False, frozenset())]

    @staticmethod
    def _sheet(path: Path) -> str | int:
        """Sheet `Plan1` if present, else the workbook's active sheet (what the reference reads)."""
        try:
            if path.suffix.lower() == ".xlsx":
                from openpyxl import load_workbook

                wb = load_workbook(path, read_only=True)
                try:
                    return "Plan1" if "Plan1" in wb.sheetnames else wb.active.title
                finally:
                    wb.close()
            return "Plan1" if "Plan1" in pd.ExcelFile(path, engine="xlrd").sheet_names else 0
        except DataError:
            raise
        except ImportError as exc:
            raise DataError(f"{path}: reading {path.suffix} files needs another package ({exc})") from None
        except Exception as exc:
            raise DataError(f"{path}: cannot be read as an Excel workbook ({type(exc).__name__}: {exc})") from None

    def parse(self, root, options):
        path = self._label_path(root)
        sheet = self._sheet(path)
        df = _read_excel(path, sheet)
        where_sheet = f" of sheet {sheet!r}" if isinstance(sheet, str) else ""
        cols = [c for c in df.columns if c != "_row"]
        warnings = []
        if all(c in cols for c in self.COLS):
            num_col, mos_col = self.COLS
        else:
            if len(cols) < 2:
                raise DataError(f"{path}{where_sheet}: expected columns {self.COLS[0]!r} and {self.COLS[1]!r} (or at least two columns), found {cols}")
            num_col, mos_col = cols[0], cols[1]
            warnings.append(
                f"{path}: headers {self.COLS[0]!r}/{self.COLS[1]!r} not found (found {cols[:4]}); reading column 1 "
                f"({num_col!r}) as the image number and column 2 ({mos_col!r}) as the MOS, as the reference code does"
            )
        numbers = _float_column(df, num_col, path)
        bad = numbers.isna() | (numbers % 1 != 0) | (numbers < 1)
        if bad.any():
            items = [f"{w} ({v!r})" for w, v in zip(df.loc[bad, "_row"], df.loc[bad, num_col])]
            raise DataError(f"{path}{where_sheet}: column {num_col!r} must hold image numbers (positive integers); {len(items)} row(s) do not: {_listing(items)}")
        folder = self._image_dir(root)
        # The official names are upper-case .JPG; accept the file whatever the case of its name.
        listing = {p.lower(): p for p in os.listdir(folder)} if folder.is_dir() else {}
        files = []
        for n in numbers.astype(int):
            name = f"DatabaseImage{n:04d}.JPG"
            files.append(listing.get(name.lower(), name))
        frame = pd.DataFrame(
            {
                "image_id": [f"DatabaseImage{n:04d}" for n in numbers.astype(int)],
                "path": [str(folder / f) for f in files],
                "mos": _float_column(df, mos_col, path).values,
                "_row": df["_row"].values,
            }
        )
        grades = [c for c in cols if self._GRADE.match(c)]
        if grades:
            g = pd.concat([_float_column(df, c, path) for c in grades], axis=1)
            frame["std"] = g.std(axis=1, ddof=1, skipna=True).values  # NaN with fewer than 2 grades
        return Labels(frame, path, warnings)


class CSVBenchmark(Adapter):
    name = "csv"
    expected_count = None
    reference_resize = None
    defaults: dict[str, Any] = {
        "file": None,
        "path_column": "path",
        "score_column": "mos",
        "group_column": None,
        "id_column": None,
        "std_column": None,
        "mos_range": None,
    }
    layout = "a CSV file (option file, default <root>/labels.csv) with an image path column and a score column"

    def resolve_options(self, options):
        opts = super().resolve_options(options)
        rng = opts["mos_range"]
        if rng is not None:
            ok = isinstance(rng, (list, tuple)) and len(rng) == 2 and all(isinstance(v, (int, float)) for v in rng)
            if not ok or not float(rng[0]) < float(rng[1]):
                raise DataError(f"csv option mos_range={rng!r}: expected [low, high] with low < high")
        return opts

    def _file(self, root: Path | None, options) -> Path:
        f = options["file"]
        if f is None:
            if root is None:
                raise DataError("benchmark 'csv' needs data.root (holding labels.csv) or the option file=<path to the CSV>")
            return root / "labels.csv"
        p = Path(str(f)).expanduser()
        if not p.is_absolute():
            p = (root / p) if root is not None else p.absolute()
        return p

    def resolve_root(self, root, options):
        if root is None:
            return self._file(None, options).parent.absolute()
        return super().resolve_root(root, options)

    def mos_range(self, options=None, manifest=None):
        opts = self.resolve_options(options)
        if opts["mos_range"] is not None:
            return float(opts["mos_range"][0]), float(opts["mos_range"][1])
        if manifest is None or "mos" not in manifest.columns:
            raise DataError("benchmark 'csv' has no option mos_range: its range is the observed min/max, which needs the manifest")
        mos = manifest["mos"].astype(float)
        mos = mos[np.isfinite(mos)]
        if len(mos) == 0:
            raise DataError("benchmark 'csv': no finite scores to take the observed MOS range from")
        lo, hi = float(mos.min()), float(mos.max())
        if not lo < hi:
            raise DataError(f"benchmark 'csv': every score is {lo}; a range needs at least two different scores (or set option mos_range)")
        return lo, hi

    def label_files(self, root, options):
        return [self._file(root, options)]

    def parse(self, root, options):
        path = _need_file(self._file(root, options), "CSV label file")
        df = _read_csv(path)
        options = dict(options)
        # Without group_column/std_column, columns named `group`/`std` are used when present:
        # ignoring a grouping would let one scene straddle a split.
        for key, col in (("group_column", "group"), ("std_column", "std")):
            if options[key] is None and col in df.columns:
                options[key] = col
        cols = [options["path_column"], options["score_column"]]
        cols += [options[k] for k in ("group_column", "id_column", "std_column") if options[k] is not None]
        _require_columns(df, cols, path)
        rel = _text_column(df, options["path_column"], path, "image path")
        base = path.parent
        paths = [p if os.path.isabs(p) else os.path.abspath(os.path.join(base, p)) for p in rel]
        ids = _text_column(df, options["id_column"], path, "image id") if options["id_column"] else rel
        frame = pd.DataFrame(
            {
                "image_id": ids.values,
                "path": paths,
                "mos": _float_column(df, options["score_column"], path).values,
                "_row": df["_row"].values,
            }
        )
        if options["group_column"]:
            frame["group"] = _text_column(df, options["group_column"], path, "group").values
        if options["std_column"]:
            frame["std"] = _float_column(df, options["std_column"], path).values
        return Labels(frame, path)


class Embedded(Adapter):
    name = "embedded"
    expected_count = embedded.expected_count()
    reference_resize = None
    defaults: dict[str, Any] = {}
    layout = "<root>/labels.csv (image_id, path, mos, group, family, level) and <root>/images/*.png; built on first use"

    def resolve_root(self, root, options):
        if root is None:
            return embedded.ensure_embedded(None).absolute()
        return super().resolve_root(root, options)

    def label_files(self, root, options):
        readme = root / "README.txt"
        return [root / "labels.csv"] + ([readme] if readme.is_file() else [])

    def scan_dirs(self, root, options):
        return [(root / "images", False, frozenset())]

    def parse(self, root, options):
        path = _need_file(root / "labels.csv", "embedded benchmark label file")
        df = _read_csv(path)
        _require_columns(df, ["image_id", "path", "mos", "group"], path)
        rel = _text_column(df, "path", path, "image path")
        frame = pd.DataFrame(
            {
                "image_id": _text_column(df, "image_id", path, "image id").values,
                "path": [str(root / p) for p in rel],
                "mos": _float_column(df, "mos", path).values,
                "group": _text_column(df, "group", path, "source scene").values,
                "_row": df["_row"].values,
            }
        )
        if "family" in df.columns:
            frame["family"] = df["family"].astype(str).values
        if "level" in df.columns:
            lv = _float_column(df, "level", path)
            frame["level"] = lv.astype("Int64").values if lv.notna().all() and (lv % 1 == 0).all() else lv.values
        return Labels(frame, path)


ADAPTERS: dict[str, Adapter] = {a.name: a for a in (KonIQ(), LIVEC(), SPAQ(), LIVEFB(), BID(), CSVBenchmark(), Embedded())}


def get_adapter(name: str) -> Adapter:
    """The adapter registered under `name`; DataError with the closest name if unknown."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise DataError(f"unknown benchmark {name!r}{_suggest(str(name), ADAPTERS)} (benchmarks: {', '.join(ADAPTERS)})") from None


def mos_range(benchmark: str, options: dict[str, Any] | None = None, manifest: pd.DataFrame | None = None) -> tuple[float, float]:
    """The nominal MOS range of a benchmark (for csv without option mos_range: the manifest's)."""
    return get_adapter(benchmark).mos_range(options, manifest)


def reference_resize(benchmark: str) -> tuple[int, int] | None:
    """(height, width) of the reference code's fixed resize for a benchmark (None: no resize)."""
    return get_adapter(benchmark).reference_resize


# ------------------------------------------------------------------------------------ validation


def _label_problems(frame: pd.DataFrame, path: Path, lo: float, hi: float, benchmark: str) -> list[str]:
    problems = []
    if len(frame) == 0:
        return [f"{path}: no images: the label file has no data rows for benchmark {benchmark!r}"]
    mos = frame["mos"].astype(float)
    nan = ~np.isfinite(mos)
    if nan.any():
        items = [f"{w} ({i!r})" for w, i in zip(frame.loc[nan, "_row"], frame.loc[nan, "image_id"])]
        problems.append(f"{path}: MOS is missing or not finite in {len(items)} row(s): {_listing(items)}")
    out = np.isfinite(mos) & ((mos < lo) | (mos > hi))
    if out.any():
        items = [f"{w} ({i!r}: {m:g})" for w, i, m in zip(frame.loc[out, "_row"], frame.loc[out, "image_id"], mos[out])]
        problems.append(
            f"{path}: MOS outside the nominal range [{lo:g}, {hi:g}] of {benchmark!r} in {len(items)} row(s): {_listing(items)}"
            + (" (KonIQ: option score_column=MOS reads the 1-5 scale)" if benchmark == "koniq" else "")
        )
    dup = frame["image_id"].duplicated(keep=False)
    if dup.any():
        groups = frame.loc[dup].groupby("image_id", sort=True)["_row"].apply(list)
        items = [f"{i!r} ({', '.join(ws)})" for i, ws in groups.items()]
        problems.append(f"{path}: duplicate image ids in {int(dup.sum())} rows: {_listing(items)}")
    return problems


def _missing_files(frame: pd.DataFrame) -> pd.Series:
    return ~frame["path"].map(os.path.isfile).astype(bool)


def _read_exclusions(root: Path) -> pd.DataFrame | None:
    path = root / EXCLUDED_FILE
    if not path.is_file():
        return None
    df = _read_csv(path)
    _require_columns(df, ["image_id", "path", "reason"], path)
    return df


def _apply_exclusions(frame: pd.DataFrame, root: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    excl = _read_exclusions(root)
    if excl is None:
        return frame, None
    path = root / EXCLUDED_FILE
    ids = set(excl["image_id"].astype(str))
    unknown = sorted(ids - set(frame["image_id"]))
    if unknown:
        raise DataError(f"{path}: lists {len(unknown)} image id(s) that are not in the labels: {_listing(map(repr, unknown))}")
    keep = ~frame["image_id"].isin(ids)
    log.warning("%s: excluding %d image(s) that `drx data prepare --skip-bad` could not read", path, len(ids))
    return frame[keep].reset_index(drop=True), excl


def _check_prepared(root: Path) -> None:
    marker = root / PREPARED_FILE
    if marker.is_file():
        try:
            info = json.loads(marker.read_text())
        except json.JSONDecodeError:
            raise DataError(f"{marker}: damaged (not JSON); rerun `drx data prepare` into a new folder") from None
        if not info.get("complete", False):
            raise DataError(f"{root}: this prepared copy is incomplete (an interrupted `drx data prepare`?); rerun the same prepare command to finish it")


def _finish(frame: pd.DataFrame, adapter: Adapter, root: Path, labels: Labels, rng: tuple[float, float], n_excluded: int) -> pd.DataFrame:
    cols = ["image_id", "path", "mos"] + [c for c in frame.columns if c not in ("image_id", "path", "mos", "_row")]
    out = frame[cols].reset_index(drop=True)
    out["image_id"] = out["image_id"].astype(str)
    out["path"] = out["path"].astype(str)
    out["mos"] = out["mos"].astype(float)
    if "group" in out.columns:
        out["group"] = out["group"].astype(str)
    out.attrs = {
        "benchmark": adapter.name,
        "root": str(root),
        "label_file": str(labels.label_file),
        "mos_range": rng,
        "expected_count": adapter.expected_count,
        "excluded": n_excluded,
        "warnings": list(labels.warnings),
    }
    return out


def load_manifest(benchmark: str, root: str | Path | None, options: dict[str, Any] | None = None) -> pd.DataFrame:
    """Read and validate a benchmark's labels into a manifest DataFrame.

    Columns image_id, path, mos, [group], [std] (+ adapter extras); attrs hold benchmark, root,
    label_file, mos_range, expected_count, warnings. Raises DataError naming the file and rows on
    a missing root or label file, missing columns, NaN or out-of-range MOS, duplicate ids, an
    empty benchmark or missing image files. Images are not decoded here (see check_benchmark).
    """
    adapter = get_adapter(benchmark)
    opts = adapter.resolve_options(options)
    rootp = adapter.resolve_root(root, opts)
    _check_prepared(rootp)
    labels = adapter.parse(rootp, opts)
    for w in labels.warnings:
        log.warning(w)
    frame = labels.frame
    if len(frame) == 0:
        raise DataError(_label_problems(frame, labels.label_file, 0, 0, adapter.name)[0])
    rng = adapter.mos_range(opts, frame)
    problems = _label_problems(frame, labels.label_file, rng[0], rng[1], adapter.name)
    if problems:
        raise DataError("\n  ".join(problems))
    frame, excl = _apply_exclusions(frame, rootp)
    if len(frame) == 0:
        raise DataError(f"{rootp / EXCLUDED_FILE}: every image of {labels.label_file} is excluded; nothing left to use")
    missing = _missing_files(frame)
    if missing.any():
        items = [f"{w} {i!r} -> {p}" for w, i, p in zip(frame.loc[missing, "_row"], frame.loc[missing, "image_id"], frame.loc[missing, "path"])]
        raise DataError(f"{int(missing.sum())} image file(s) listed in {labels.label_file} are missing: {_listing(items)}")
    if adapter.expected_count is not None and len(frame) != adapter.expected_count:
        log.info("%s: %d images, the full %s benchmark has %d (a subset is fine)", labels.label_file, len(frame), adapter.name, adapter.expected_count)
    return _finish(frame, adapter, rootp, labels, rng, 0 if excl is None else len(excl))


# ----------------------------------------------------------------------------------------- check


@dataclass
class CheckReport:
    """Everything `drx data check` found; `usable` is False when training would fail."""

    benchmark: str
    root: str | None = None
    label_file: str | None = None
    expected_count: int | None = None
    n_labels: int = 0
    n_excluded: int = 0
    n_readable: int = 0
    mos_range: tuple[float, float] | None = None
    mos_stats: dict[str, float] = field(default_factory=dict)
    size_stats: dict[str, int] = field(default_factory=dict)
    label_errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)  # (image_id, path)
    unreadable: list[tuple[str, str, str]] = field(default_factory=list)  # (image_id, path, reason)
    unexpected: list[str] = field(default_factory=list)  # image files in the image folders, not in the labels
    scanned: bool = False

    @property
    def usable(self) -> bool:
        return not self.label_errors and not self.missing and not self.unreadable and self.n_readable > 0

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["usable"] = self.usable
        return d

    def format(self) -> str:
        """A human-readable report listing every fault by name."""
        lines = [f"benchmark   {self.benchmark}", f"root        {self.root}"]
        if self.label_file:
            lines.append(f"labels      {self.label_file}")
        exp = f" (the full benchmark has {self.expected_count})" if self.expected_count is not None else ""
        lines.append(f"images      {self.n_labels} scored{exp}; {self.n_readable} readable")
        if self.n_excluded:
            lines.append(f"excluded    {self.n_excluded} (listed in {EXCLUDED_FILE})")
        if self.mos_stats:
            s = self.mos_stats
            nominal = f"  (nominal range {self.mos_range[0]:g}..{self.mos_range[1]:g})" if self.mos_range else ""
            lines.append(
                f"MOS         min {s['min']:.4g}  max {s['max']:.4g}  mean {s['mean']:.4g}  median {s['median']:.4g}  std {s['std']:.4g}{nominal}"
            )
        if self.size_stats:
            z = self.size_stats
            lines.append(f"image size  width {z['min_width']}..{z['max_width']}  height {z['min_height']}..{z['max_height']}")
        for title, items in (
            ("label errors", self.label_errors),
            ("warnings", self.warnings),
            ("missing images", [f"{i}  {p}" for i, p in self.missing]),
            ("unreadable images", [f"{i}  {p}: {r}" for i, p, r in self.unreadable]),
            ("unexpected (unscored) image files", self.unexpected),
        ):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines += [f"  - {x}" for x in items]
        if not self.scanned and not self.label_errors:
            lines.append("unexpected files: not scanned (no fixed image folder for this benchmark)")
        if self.usable:
            lines.append("result      usable")
        else:
            why = []
            if self.label_errors:
                why.append("label errors")
            if self.missing:
                why.append(f"{len(self.missing)} missing")
            if self.unreadable:
                why.append(f"{len(self.unreadable)} unreadable")
            if not why and self.n_readable == 0:
                why.append("no readable images")
            lines.append(f"result      NOT usable ({', '.join(why)})")
        return "\n".join(lines)


@contextlib.contextmanager
def _cancel_on_error(futures: Iterable[Future]):
    """On an error or Ctrl-C, cancel the queued jobs so the pool stops promptly."""
    try:
        yield
    except BaseException:
        for f in futures:
            f.cancel()
        raise


def _decode_size(path: str) -> tuple[int, int]:
    img = load_image(path)
    return img.width, img.height


def _scan(dirs: list[tuple[Path, bool, frozenset[str]]]) -> tuple[list[str], bool]:
    found, scanned = [], False
    for folder, recursive, skip in dirs:
        if not folder.is_dir():
            continue
        scanned = True
        it = folder.rglob("*") if recursive else folder.iterdir()
        for p in it:
            if p.suffix.lower() not in IMAGE_EXTENSIONS or p.name.startswith(".") or not p.is_file():
                continue
            if skip and any(part in skip for part in p.relative_to(folder).parts[:-1]):
                continue
            found.append(os.path.abspath(p))
    return found, scanned


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def check_benchmark(
    benchmark: str,
    root: str | Path | None,
    options: dict[str, Any] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> CheckReport:
    """Validate a benchmark completely: layout, every label row, and a full decode of every image
    (in a thread pool). Collects every problem instead of stopping at the first."""
    report = CheckReport(benchmark=benchmark, root=str(root) if root is not None else None)
    try:
        adapter = get_adapter(benchmark)
        report.expected_count = adapter.expected_count
        opts = adapter.resolve_options(options)
        rootp = adapter.resolve_root(root, opts)
        report.root = str(rootp)
        _check_prepared(rootp)
        labels = adapter.parse(rootp, opts)
    except DataError as exc:
        report.label_errors.append(str(exc))
        return report
    report.label_file = str(labels.label_file)
    report.warnings += labels.warnings
    frame = labels.frame
    report.n_labels = len(frame)
    if len(frame) == 0:
        report.label_errors += _label_problems(frame, labels.label_file, 0, 0, adapter.name)
        return report
    try:
        report.mos_range = adapter.mos_range(opts, frame)
        report.label_errors += _label_problems(frame, labels.label_file, *report.mos_range, adapter.name)
    except DataError as exc:
        report.label_errors.append(str(exc))
    if adapter.expected_count is not None and len(frame) != adapter.expected_count:
        report.warnings.append(
            f"{labels.label_file}: {len(frame)} scored images, the full {adapter.name} benchmark has {adapter.expected_count} (fine for a subset)"
        )
    all_paths = set(frame["path"])
    try:
        frame, excl = _apply_exclusions(frame, rootp)
        report.n_excluded = 0 if excl is None else len(excl)
    except DataError as exc:
        report.label_errors.append(str(exc))
    mos = frame["mos"].astype(float)
    mos = mos[np.isfinite(mos)]
    if len(mos):
        report.mos_stats = {
            "min": float(mos.min()), "max": float(mos.max()), "mean": float(mos.mean()),
            "median": float(mos.median()), "std": float(mos.std(ddof=1)) if len(mos) > 1 else 0.0,
        }
    missing = _missing_files(frame)
    report.missing = list(zip(frame.loc[missing, "image_id"], frame.loc[missing, "path"]))
    present = frame[~missing]
    sizes: list[tuple[int, int]] = []
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        futures = {pool.submit(_decode_size, p): (i, p) for i, p in zip(present["image_id"], present["path"])}
        with tqdm(total=len(futures), desc=f"decoding {benchmark}", unit="img", disable=not progress, leave=False) as bar, \
                _cancel_on_error(futures):
            for fut in as_completed(futures):
                i, p = futures[fut]
                try:
                    sizes.append(fut.result())
                except DataError as exc:
                    reason = str(exc)
                    reason = reason[len(p) + 2 :] if reason.startswith(p + ": ") else reason
                    report.unreadable.append((i, p, reason))
                bar.update(1)
    report.unreadable.sort()
    report.n_readable = len(sizes)
    if sizes:
        w, h = np.array(sizes).T
        report.size_stats = {"min_width": int(w.min()), "max_width": int(w.max()), "min_height": int(h.min()), "max_height": int(h.max())}
    found, report.scanned = _scan(adapter.scan_dirs(rootp, opts))
    report.unexpected = sorted(set(found) - all_paths)
    return report


# --------------------------------------------------------------------------------------- prepare


@dataclass
class PrepareReport:
    out: Path
    n_images: int = 0
    written: int = 0  # resized and re-encoded
    copied: int = 0  # already small enough (or no resize): original bytes copied
    skipped: int = 0  # finished by an earlier run
    excluded: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [
            f"prepared    {self.out}",
            f"images      {self.n_images}: {self.written} resized, {self.copied} copied unchanged, {self.skipped} already done",
        ]
        if self.excluded:
            lines.append(f"excluded ({len(self.excluded)}, listed in {self.out / EXCLUDED_FILE}):")
            lines += [f"  - {i}  {p}: {r}" for i, p, r in self.excluded]
        lines += self.notes
        return "\n".join(lines)


def _save_params(suffix: str) -> tuple[str, dict[str, Any]]:
    s = suffix.lower()
    if s in (".jpg", ".jpeg"):
        # Quality 95 without chroma subsampling (4:4:4): re-encoding loses as little as JPEG allows.
        return "JPEG", {"quality": JPEG_QUALITY, "subsampling": 0}
    if s == ".png":
        return "PNG", {}
    if s == ".bmp":
        return "BMP", {}
    if s in (".tif", ".tiff"):
        return "TIFF", {}
    if s == ".webp":
        return "WEBP", {"lossless": True}
    from PIL import Image

    fmt = Image.registered_extensions().get(s)
    if fmt is None:
        raise DataError(f"cannot write images with extension {suffix!r}")
    return fmt, {}


def _atomic_output(dst: Path):
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=TMP_SUFFIX, dir=dst.parent)
    os.close(fd)
    return tmp


def _prepare_one(src: str, dst: Path, resize: ResizeConfig | None) -> str:
    img = load_image(src)  # DataError names the file
    target = resized_size(img.width, img.height, resize)
    # Never upscale in `shorter` mode: the copy exists to be smaller.
    shrink = resize is not None and (resize.mode == "exact" or min(img.width, img.height) > int(resize.size))  # type: ignore[arg-type]
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic_output(dst)
    try:
        if not shrink or target == (img.width, img.height):
            shutil.copyfile(src, tmp)
            kind = "copied"
        else:
            fmt, params = _save_params(dst.suffix)
            resize_image(img, resize).save(tmp, format=fmt, **params)
            kind = "written"
        os.replace(tmp, dst)  # a file under its final name is always complete
        return kind
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _prepare_settings(adapter: Adapter, root: Path, opts: dict[str, Any], resize: ResizeConfig | None) -> dict[str, Any]:
    return {
        "benchmark": adapter.name,
        "source": str(root),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()},
        "resize": None if resize is None else {"mode": resize.mode, "size": list(resize.size) if isinstance(resize.size, tuple) else resize.size},
        "jpeg": {"quality": JPEG_QUALITY, "subsampling": "4:4:4"},
        "upscale": False,
    }


def prepare_benchmark(
    benchmark: str,
    root: str | Path | None,
    cache: str | Path,
    size: int | None = 384,
    exact: tuple[int, int] | None = None,
    skip_bad: bool = False,
    workers: int | None = None,
    options: dict[str, Any] | None = None,
    progress: bool = True,
) -> PrepareReport:
    """Write a resized copy of a benchmark, in the same official layout, to ``<cache>/<benchmark>/``.

    `size`: shorter side (aspect kept, only ever shrinks); `exact`: (height, width) as the
    reference code (takes precedence); neither: images copied unchanged. Label files are copied
    verbatim, images keep their relative names (JPEG re-encoded at quality 95, 4:4:4). Reruns
    skip finished files; every file is written to a temporary name and renamed, so an
    interrupted run leaves no half-written image. Bad (missing/unreadable) images fail the run,
    naming each one, unless `skip_bad`, which lists them in ``drx-excluded.csv`` instead.
    """
    adapter = get_adapter(benchmark)
    opts = adapter.resolve_options(options)
    rootp = adapter.resolve_root(root, opts)
    _check_prepared(rootp)
    if exact is not None:
        resize: ResizeConfig | None = ResizeConfig(mode="exact", size=tuple(int(v) for v in exact))  # type: ignore[arg-type]
    elif size is not None:
        resize = ResizeConfig(mode="shorter", size=int(size))
    else:
        resize = None
    out = Path(cache).expanduser().absolute() / adapter.name
    if out.resolve() == rootp.resolve():
        raise DataError(f"{out}: the prepared copy would overwrite the benchmark itself; choose another --cache folder")
    labels = adapter.parse(rootp, opts)
    for w in labels.warnings:
        log.warning(w)
    frame = labels.frame
    if len(frame) == 0:
        raise DataError(_label_problems(frame, labels.label_file, 0, 0, adapter.name)[0])
    rng = adapter.mos_range(opts, frame)
    problems = _label_problems(frame, labels.label_file, rng[0], rng[1], adapter.name)
    if problems:
        raise DataError("\n  ".join(problems))
    frame, carried = _apply_exclusions(frame, rootp)
    rel_paths = []
    for p in frame["path"]:
        rel = os.path.relpath(p, rootp)
        if rel.startswith(".." + os.sep) or rel == ".." or os.path.isabs(rel):
            raise DataError(f"{p}: image lies outside the benchmark root {rootp}; prepare copies a self-contained folder (use paths inside the root)")
        rel_paths.append(rel)
    label_files = adapter.label_files(rootp, opts)

    settings = _prepare_settings(adapter, rootp, opts, resize)
    marker = out / PREPARED_FILE
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())
        except json.JSONDecodeError:
            raise DataError(f"{marker}: damaged (not JSON); remove {out} and prepare again") from None
        old_settings = {k: old.get(k) for k in settings}
        if old_settings != settings:
            raise DataError(
                f"{out} was prepared with other settings: existing {json.dumps(old_settings, sort_keys=True)} vs requested "
                f"{json.dumps(settings, sort_keys=True)}; use another --cache folder or remove {out}"
            )
    elif out.exists() and any(p.name != ".drx-prepare.lock" for p in out.iterdir()):
        raise DataError(f"{out}: folder exists and is not a drx prepared copy (no {PREPARED_FILE}); choose another --cache folder")
    out.mkdir(parents=True, exist_ok=True)

    report = PrepareReport(out=out, n_images=len(frame))
    with embedded.file_lock(out / ".drx-prepare.lock", blocking=False):
        _write_text_atomic(marker, json.dumps({**settings, "complete": False}, indent=1) + "\n")
        for stale in out.rglob(f"*{TMP_SUFFIX}"):
            stale.unlink()  # leftovers of an interrupted run: never taken as finished
        for lf in label_files:
            rel = os.path.relpath(lf, rootp)
            if rel.startswith(".."):
                rel = lf.name
                report.notes.append(f"note        the label file {lf} lies outside the root; copied as {out / rel} (set option file={rel})")
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = _atomic_output(dst)
            shutil.copyfile(lf, tmp)
            os.replace(tmp, dst)
        jobs = []
        for (iid, src), rel in zip(zip(frame["image_id"], frame["path"]), rel_paths):
            dst = out / rel
            if dst.is_file():
                report.skipped += 1
            else:
                jobs.append((iid, src, dst))
        bad: list[tuple[str, str, str]] = []
        with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
            futures = {pool.submit(_prepare_one, src, dst, resize): (iid, src) for iid, src, dst in jobs}
            with tqdm(total=len(futures), desc=f"preparing {benchmark}", unit="img", disable=not progress, leave=False) as bar, \
                    _cancel_on_error(futures):
                for fut in as_completed(futures):
                    iid, src = futures[fut]
                    try:
                        kind = fut.result()
                        if kind == "written":
                            report.written += 1
                        else:
                            report.copied += 1
                    except DataError as exc:
                        msg = str(exc)
                        bad.append((iid, src, msg[len(src) + 2 :] if msg.startswith(src + ": ") else msg))
                    bar.update(1)
        bad.sort()
        if bad and not skip_bad:
            items = [f"{i} ({p}: {r})" for i, p, r in bad]
            raise DataError(
                f"{len(bad)} image(s) of {rootp} are missing or unreadable: " + "; ".join(items)
                + f". Fix or replace them, or pass --skip-bad to exclude them (listed in {out / EXCLUDED_FILE}); "
                "the images already written are kept and a rerun continues from there"
            )
        excluded = list(bad)
        if carried is not None:
            excluded += [(str(i), str(p), f"excluded in the source: {r}") for i, p, r in zip(carried["image_id"], carried["path"], carried["reason"])]
        excl_path = out / EXCLUDED_FILE
        if excluded:
            if len(excluded) >= len(frame) + (0 if carried is None else len(carried)):
                raise DataError(f"every image of {labels.label_file} is bad; nothing to prepare")
            table = pd.DataFrame(excluded, columns=["image_id", "path", "reason"]).sort_values("image_id")
            buf = table.to_csv(index=False)
            _write_text_atomic(excl_path, buf)
        elif excl_path.exists():
            excl_path.unlink()  # an earlier run's bad images are readable now
        report.excluded = excluded
        _write_text_atomic(marker, json.dumps({**settings, "complete": True}, indent=1) + "\n")
    report.notes.append(f"use         data.benchmark: {adapter.name}, data.root: {out}")
    return report


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = _atomic_output(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
