"""Any benchmark as one CSV file: an image path column and a score column, optionally a group,
an id, a std and an official-split column (options ``file``, ``path_column``, ``score_column``,
``group_column``, ``id_column``, ``std_column``, ``split_column``, ``image_root``, ``mos_range``).

pyiqa's meta-info files (``meta_info_<Dataset>.csv``: ``img_name,mos,std,split``, kept apart from
the images) read as ``file=<meta>``, ``path_column=img_name`` and ``image_root=<image folder>``
(or ``--root <image folder>``): see docs/data.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from drx.data.benchmarks.base import (
    OFFICIAL_COLUMN,
    Adapter,
    Labels,
    float_column,
    need_file,
    official_part_names,
    read_csv,
    register_benchmark,
    require_columns,
    text_column,
)
from drx.errors import DataError


@register_benchmark
class CSVBenchmark(Adapter):
    name = "csv"
    label = "CSV"
    real = False
    nominal_range = None  # option mos_range, else the observed range: see mos_range
    authors_resize = None
    default_resize = None
    expected_count = None
    defaults = {
        "file": None,
        "path_column": "path",
        "score_column": "mos",
        "group_column": None,
        "id_column": None,
        "std_column": None,
        "split_column": None,
        "image_root": None,
        "mos_range": None,
    }
    layout = "a CSV file (option file, default <root>/labels.csv) with an image path column and a score column"
    # Without option split_column, the first of these columns whose every value names a part.
    SPLIT_COLUMNS = ("official_split", "split", "set")

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

    def _image_base(self, root: Path, csv_path: Path, options) -> tuple[Path, str]:
        """(folder the CSV's relative image paths resolve against, why that one)."""
        if options["image_root"] is not None:
            base = Path(str(options["image_root"])).expanduser()
            if not base.is_absolute():
                base = root / base
            return base.absolute(), "option image_root"
        if csv_path.parent.absolute() == root or root in csv_path.absolute().parents:
            return csv_path.parent.absolute(), "the label file's folder"
        # The CSV lies outside data.root (pyiqa keeps its meta-info files apart from the images):
        # the root the user gave is the image folder, never silently unused.
        return root, "data.root (--root), since the label file lies outside it"

    def _split(self, df: pd.DataFrame, path: Path, options, warnings: list[str]) -> tuple[pd.Series | None, str | None]:
        col = options["split_column"]
        if col is not None:
            require_columns(df, [col], path)
            return official_part_names(df[col], df["_row"], f"{path}: column {col!r} (option split_column)"), col
        for cand in self.SPLIT_COLUMNS:
            if cand in df.columns:
                try:
                    return official_part_names(df[cand], df["_row"], f"{path}: column {cand!r}"), cand
                except DataError as exc:
                    warnings.append(f"column {cand!r} is not read as an official split ({exc}); name a split column with option split_column")
        return None, None

    def parse(self, root, options):
        path = need_file(self._file(root, options), "CSV label file")
        df = read_csv(path)
        options = dict(options)
        # Without group_column/std_column, columns named `group`/`std` are used when present:
        # ignoring a grouping would let one scene straddle a split.
        for key, col in (("group_column", "group"), ("std_column", "std")):
            if options[key] is None and col in df.columns:
                options[key] = col
        cols = [options["path_column"], options["score_column"]]
        cols += [options[k] for k in ("group_column", "id_column", "std_column") if options[k] is not None]
        require_columns(df, cols, path)
        rel = text_column(df, options["path_column"], path, "image path")
        base, why = self._image_base(root, path, options)
        paths = [p if os.path.isabs(p) else os.path.abspath(os.path.join(base, p)) for p in rel]
        ids = text_column(df, options["id_column"], path, "image id") if options["id_column"] else rel
        frame = pd.DataFrame(
            {
                "image_id": ids.values,
                "path": paths,
                "mos": float_column(df, options["score_column"], path).values,
                "_row": df["_row"].values,
            }
        )
        if options["group_column"]:
            frame["group"] = text_column(df, options["group_column"], path, "group").values
        if options["std_column"]:
            frame["std"] = float_column(df, options["std_column"], path).values
        warnings: list[str] = []
        parts, split_col = self._split(df, path, options, warnings)
        if parts is not None:
            frame[OFFICIAL_COLUMN] = parts.values
        hint = ""
        if any(not os.path.isabs(p) for p in rel):
            hint = (f"relative paths of column {options['path_column']!r} were resolved against {base} ({why}); "
                    "set option image_root=<the folder holding the images> if they lie elsewhere")
        return Labels(frame, path, warnings, path_hint=hint,
                      official_source=f"column {split_col!r} of {path}" if split_col else None)
