"""BID, the Blurred Image Database (Ciancio et al. 2011): 586 photos, MOS on 0-5.

Layout: ``<root>/DatabaseGrades.xlsx`` (or ``.xls``) and ``DatabaseImage%04d.JPG`` in ``<root>/``
(or ``<root>/ImageDatabase/``). The spread of the individual grades becomes ``std``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from drx.data.benchmarks.base import Adapter, Labels, float_column, listing, need_file, read_excel, register_benchmark
from drx.data.images import ResizeConfig
from drx.errors import DataError


@register_benchmark
class BID(Adapter):
    name = "bid"
    label = "BID"
    real = True
    nominal_range = (0.0, 5.0)
    authors_resize = (512, 512)
    default_resize = ResizeConfig(mode="shorter", size=512)
    expected_count = 586
    defaults = {}
    COLS = ("Image Number", "Average Subjective Grade")
    layout = "<root>/DatabaseGrades.xlsx (or .xls) and DatabaseImage%04d.JPG in <root>/ (or <root>/ImageDatabase/)"
    _GRADE = re.compile(r"^grade\s*#?\s*\d+$", re.IGNORECASE)

    def _label_path(self, root: Path) -> Path:
        for name in ("DatabaseGrades.xlsx", "DatabaseGrades.xls"):
            if (root / name).is_file():
                return root / name
        return need_file(root / "DatabaseGrades.xlsx", "BID grade sheet (also looked for DatabaseGrades.xls)")

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
                # Imported here so that a missing package becomes the DataError below.
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
        df = read_excel(path, sheet)
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
        numbers = float_column(df, num_col, path)
        bad = numbers.isna() | (numbers % 1 != 0) | (numbers < 1)
        if bad.any():
            items = [f"{w} ({v!r})" for w, v in zip(df.loc[bad, "_row"], df.loc[bad, num_col])]
            raise DataError(f"{path}{where_sheet}: column {num_col!r} must hold image numbers (positive integers); {len(items)} row(s) do not: {listing(items)}")
        folder = self._image_dir(root)
        # The official names are upper-case .JPG; accept the file whatever the case of its name.
        by_lower = {p.lower(): p for p in os.listdir(folder)} if folder.is_dir() else {}
        files = []
        for n in numbers.astype(int):
            name = f"DatabaseImage{n:04d}.JPG"
            files.append(by_lower.get(name.lower(), name))
        frame = pd.DataFrame(
            {
                "image_id": [f"DatabaseImage{n:04d}" for n in numbers.astype(int)],
                "path": [str(folder / f) for f in files],
                "mos": float_column(df, mos_col, path).values,
                "_row": df["_row"].values,
            }
        )
        grades = [c for c in cols if self._GRADE.match(c)]
        if grades:
            g = pd.concat([float_column(df, c, path) for c in grades], axis=1)
            frame["std"] = g.std(axis=1, ddof=1, skipna=True).values  # NaN with fewer than 2 grades
        return Labels(frame, path, warnings)
