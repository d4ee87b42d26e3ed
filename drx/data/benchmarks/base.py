"""What every benchmark adapter shares: the :class:`Adapter` base class, the registry it is
entered in (:func:`register_benchmark`, :func:`get_adapter`), and the readers of label files that
name the file, row and column of every fault.

A manifest is a DataFrame with columns ``image_id`` (str, unique), ``path`` (absolute str),
``mos`` (float), and optionally ``group`` (str: images sharing a source photo) and ``std``
(float); ``manifest.attrs`` carries the benchmark name, root, label file and nominal MOS range.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pandas as pd

from drx.data.images import ResizeConfig
from drx.errors import DataError

log = logging.getLogger("drx.data")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
EXCLUDED_FILE = "drx-excluded.csv"
PREPARED_FILE = "drx-prepared.json"
MAX_LISTED = 10
#: The manifest column holding each image's official part (one of OFFICIAL_PARTS), when the labels
#: carry an official split (data.split.protocol official uses it; drx.data.splits).
OFFICIAL_COLUMN = "official_split"
OFFICIAL_PARTS = ("train", "val", "test")
# Spellings of the parts in published label files: KonIQ's `set` (training/validation/test),
# pyiqa's meta-info split columns (train/val/test).
_PART_NAMES = {
    "train": "train", "training": "train", "trn": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "tst": "test",
}


def listing(items: Iterable[str], limit: int = MAX_LISTED) -> str:
    """The first `limit` items joined by commas, then "and N more"."""
    items = list(items)
    text = ", ".join(items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


def suggest(name: str, valid: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest valid name, or an empty string."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


# --------------------------------------------------------------------------------- file reading


@dataclass
class Labels:
    """An adapter's parsed label file: a frame with image_id, path, mos, [group], [std],
    [official_split] and ``_row`` (the row's position in the label file, for messages).

    The hints are computed by the adapter from what the user gave (which file, which options) and
    end the matching error: ``range_hint`` an out-of-range MOS, ``path_hint`` missing image files.
    ``official_source`` says where the ``official_split`` column came from."""

    frame: pd.DataFrame
    label_file: Path
    warnings: list[str] = field(default_factory=list)
    range_hint: str = ""
    path_hint: str = ""
    official_source: str | None = None


def need_file(path: Path, what: str) -> Path:
    """`path` if it is a file; else DataError naming it and what its folder holds."""
    if not path.is_file():
        found = ""
        if path.parent.is_dir():
            names = sorted(p.name for p in path.parent.iterdir())[:15]
            found = f"; {path.parent} holds: {', '.join(names) or 'nothing'}"
        else:
            found = f"; folder {path.parent} does not exist"
        raise DataError(f"{path}: {what} not found{found}")
    return path


def read_csv(path: Path) -> pd.DataFrame:
    """A CSV label file as text columns plus ``_row`` ("row 2" is the first data row); blank
    lines dropped. DataError naming the file when it is empty or not CSV."""
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


def read_excel(path: Path, sheet: str | int) -> pd.DataFrame:
    """One sheet of an .xlsx/.xls workbook plus ``_row``; DataError naming the file when unreadable."""
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


def require_columns(df: pd.DataFrame, columns: Iterable[str], path: Path, hint: str = "") -> None:
    """DataError naming the first missing column, the closest present one and all present ones."""
    have = [c for c in df.columns if c != "_row"]
    for col in columns:
        if col not in have:
            raise DataError(
                f"{path}: missing column {col!r}{suggest(col, have)} (columns found: {', '.join(map(repr, have))}){hint}"
            )


def text_column(df: pd.DataFrame, col: str, path: Path, what: str) -> pd.Series:
    """The stripped text of a column; DataError naming the rows where it is empty."""
    values = df[col]
    empty = values.isna() | (values.astype(str).str.strip() == "")
    if empty.any():
        rows = df.loc[empty, "_row"].tolist()
        raise DataError(f"{path}: column {col!r} ({what}) is empty in {len(rows)} row(s): {listing(rows)}")
    return values.astype(str).str.strip()


def float_column(df: pd.DataFrame, col: str, path: Path) -> pd.Series:
    """Numbers of a column; NaN stays NaN (reported by the caller), text is an error here."""
    raw = df[col]
    num = pd.to_numeric(raw, errors="coerce").astype(float)
    bad = num.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
    if bad.any():
        items = [f"{w} ({v!r})" for w, v in zip(df.loc[bad, "_row"], raw[bad])]
        raise DataError(f"{path}: column {col!r} must hold numbers; {len(items)} row(s) do not: {listing(items)}")
    return num


def official_part_names(values: pd.Series, rows: Iterable[str], where: str) -> pd.Series:
    """Label-file spellings of the official parts (``training``/``validation``/``test``,
    ``train``/``val``/``test``, ...) -> ``train``/``val``/``test``. DataError naming `where`, the
    rows and the values it does not know (an empty cell included)."""
    text = values.astype(str).str.strip().str.lower().where(values.notna(), "")
    out = text.map(_PART_NAMES)
    bad = out.isna()
    if bad.any():
        items = [f"{r} ({v!r})" for r, v in zip(pd.Series(list(rows), index=values.index)[bad], values[bad])]
        raise DataError(
            f"{where}: {len(items)} row(s) name no official part: {listing(items)}; expected one of "
            f"{', '.join(sorted(_PART_NAMES))} (train / validation / test)"
        )
    return out


# ------------------------------------------------------------------------------------- adapters


class Adapter:
    """Base class: a benchmark layout. Subclasses set the class attributes below and implement
    `parse` and `label_files` (and `scan_dirs` when the images lie in fixed folders)."""

    name: ClassVar[str] = ""  # the key in configs (data.benchmark) and on the command line
    label: ClassVar[str] = ""  # display name in tables and figures
    real: ClassVar[bool] = False  # a published benchmark scored by human raters
    # Nominal (lo, hi) MOS scale: the trainer rescales labels from it to its target range.
    nominal_range: ClassVar[tuple[float, float] | None] = (0.0, 100.0)
    # (height, width) of the authors' fixed resize, used by `drx data prepare --compat authors`.
    authors_resize: ClassVar[tuple[int, int] | None] = None
    # The resize drx's paper presets use for this benchmark (None: images at their native size).
    default_resize: ClassVar[ResizeConfig | None] = None
    expected_count: ClassVar[int | None] = None  # images in the full official release
    defaults: ClassVar[dict[str, Any]] = {}  # adapter options and their default values
    layout: ClassVar[str] = ""  # the official folder layout, for messages

    def resolve_options(self, options: dict[str, Any] | None) -> dict[str, Any]:
        """Defaults merged with `options`; DataError on unknown option names."""
        options = dict(options or {})
        for key in options:
            if key not in self.defaults:
                valid = ", ".join(self.defaults) or "none"
                raise DataError(f"benchmark {self.name!r} has no option {key!r}{suggest(key, self.defaults)} (options: {valid})")
        return {**self.defaults, **options}

    def resolve_root(self, root: str | Path | None, options: dict[str, Any]) -> Path:
        """The benchmark folder as an absolute path; DataError when it is unset, absent or a file."""
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
        if self.nominal_range is None:
            raise NotImplementedError(f"{type(self).__name__} declares no nominal_range: it must override mos_range")
        return self.nominal_range

    def parse(self, root: Path, options: dict[str, Any]) -> Labels:
        """The label file(s) under `root` read into :class:`Labels` (not yet validated)."""
        raise NotImplementedError

    def label_files(self, root: Path, options: dict[str, Any]) -> list[Path]:
        """The label files this adapter reads (copied verbatim by `prepare`)."""
        raise NotImplementedError

    def scan_dirs(self, root: Path, options: dict[str, Any]) -> list[tuple[Path, bool, frozenset[str]]]:
        """Folders holding the images: (folder, recursive, sub-folder names to skip)."""
        return []

    def sources(self, frame: pd.DataFrame) -> list[dict[str, str]]:
        """Where the scenes of `frame` come from, one row per group (for ``drx data check``): empty
        for benchmarks whose provenance is their publication."""
        return []


# ------------------------------------------------------------------------------------- registry

#: name -> adapter, in registry order (the import order of drx.data.benchmarks' adapter modules).
ADAPTERS: dict[str, Adapter] = {}

A = TypeVar("A", bound=type[Adapter])


def register_benchmark(cls: A) -> A:
    """Class decorator: enter one instance of an adapter class in :data:`ADAPTERS` under its name.

    TypeError when the class lacks a name or label, or its name is taken.
    """
    if not cls.name or not cls.label:
        raise TypeError(f"{cls.__name__}: a benchmark adapter needs a name and a label")
    if cls.name in ADAPTERS:
        raise TypeError(f"{cls.__name__}: benchmark {cls.name!r} is already registered by {type(ADAPTERS[cls.name]).__name__}")
    ADAPTERS[cls.name] = cls()
    return cls


def get_adapter(name: str) -> Adapter:
    """The adapter registered under `name`; DataError with the closest name if unknown."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise DataError(f"unknown benchmark {name!r}{suggest(str(name), ADAPTERS)} (benchmarks: {', '.join(ADAPTERS)})") from None
