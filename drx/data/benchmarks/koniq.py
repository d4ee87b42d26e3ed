"""KonIQ-10k (Hosu et al. 2020): 10,073 in-the-wild photos, MOS from crowd ratings.

Layout: ``<root>/koniq10k_scores_and_distributions.csv`` and the images in ``<root>/1024x768/``
(or ``512x384/``, option ``resolution``). Option ``score_column``: ``MOS_zscore`` (0-100, the
default) or ``MOS`` (1-5, whose ``SD`` column becomes ``std``).

The official train/validation/test split (7,058 / 1,000 / 2,015 images) is the ``set`` column of
``koniq10k_distributions_sets.csv`` that KonIQ's authors publish (subpic/koniq, ``metadata/``;
columns ``image_name,c1..c5,c_total,MOS,SD,set``). It is read from ``<root>`` (or option
``sets_file``) into the manifest's official split (``data.split.protocol official``). That file
can also be the label file (when the scores file is absent): its ``MOS`` column holds the 0-100
z-score MOS, which ``score_column: MOS_zscore`` (the default) then reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from drx.data.benchmarks.base import (
    OFFICIAL_COLUMN,
    Adapter,
    Labels,
    float_column,
    listing,
    need_file,
    official_part_names,
    read_csv,
    register_benchmark,
    require_columns,
    suggest,
    text_column,
)
from drx.data.images import ResizeConfig
from drx.errors import DataError


@register_benchmark
class KonIQ(Adapter):
    name = "koniq"
    label = "KonIQ"
    real = True
    nominal_range = (0.0, 100.0)  # option score_column=MOS: (1.0, 5.0), see mos_range
    authors_resize = (512, 384)
    default_resize = ResizeConfig(mode="shorter", size=384)
    expected_count = 10073
    defaults = {"resolution": "1024x768", "score_column": "MOS_zscore", "sets_file": None}
    LABEL = "koniq10k_scores_and_distributions.csv"
    SETS = "koniq10k_distributions_sets.csv"
    RESOLUTIONS = ("1024x768", "512x384", "224x224")
    SCORES = {"MOS_zscore": (0.0, 100.0), "MOS": (1.0, 5.0)}
    layout = f"<root>/{LABEL} (or {SETS}) and images in <root>/1024x768/ (or 512x384/, option resolution)"

    def resolve_options(self, options: dict[str, Any] | None) -> dict[str, Any]:
        opts = super().resolve_options(options)
        if opts["resolution"] not in self.RESOLUTIONS:
            raise DataError(f"koniq option resolution={opts['resolution']!r}: expected one of {', '.join(self.RESOLUTIONS)}")
        if opts["score_column"] not in self.SCORES:
            raise DataError(
                f"koniq option score_column={opts['score_column']!r}: expected 'MOS_zscore' (0-100 scale) or 'MOS' (1-5 scale)"
                f"{suggest(str(opts['score_column']), self.SCORES)}"
            )
        return opts

    def mos_range(self, options=None, manifest=None):
        return self.SCORES[self.resolve_options(options)["score_column"]]

    def _label_path(self, root: Path) -> Path:
        for name in (self.LABEL, self.SETS):
            if (root / name).is_file():
                return root / name
        return need_file(root / self.LABEL, f"KonIQ-10k label file (also looked for {self.SETS})")

    def _sets_path(self, root: Path, options) -> Path | None:
        if options["sets_file"] is not None:
            p = Path(str(options["sets_file"])).expanduser()
            return need_file(p if p.is_absolute() else root / p, f"KonIQ official split file (option sets_file; {self.SETS})")
        return root / self.SETS if (root / self.SETS).is_file() else None

    def label_files(self, root, options):
        files = [self._label_path(root)]
        sets = self._sets_path(root, options)
        return files + ([sets] if sets is not None and sets != files[0] else [])

    def scan_dirs(self, root, options):
        return [(root / options["resolution"], False, frozenset())]

    @staticmethod
    def _is_sets_layout(df: pd.DataFrame) -> bool:
        # koniq10k_distributions_sets.csv: image_name,c1..c5,c_total,MOS,SD,set (MOS = the z-score MOS).
        return "set" in df.columns and "MOS_zscore" not in df.columns and "MOS" in df.columns

    def _range_hint(self, path: Path, score: str, sets_layout: bool, mos: pd.Series) -> str:
        """Why MOS values would fall outside the range: computed from the file and the option given."""
        m = mos[np.isfinite(mos)]
        hi = float(m.max()) if len(m) else float("nan")
        if score == "MOS" and sets_layout:
            return (f"{path.name} has KonIQ's koniq10k_distributions_sets.csv layout, whose MOS column is the 0-100 z-score MOS; "
                    "option score_column=MOS asks for the 1-5 MOS, which only koniq10k_scores_and_distributions.csv holds: "
                    "drop the option (the default score_column=MOS_zscore reads this column on 0-100)")
        if score == "MOS" and hi > 5:
            return (f"column MOS of {path.name} reaches {hi:g}, so it is not KonIQ's 1-5 MOS: use option "
                    "score_column=MOS_zscore for the 0-100 scale, or check that this is KonIQ's label file")
        if score == "MOS_zscore" and hi > 100:
            return f"the scores reach {hi:g}, beyond KonIQ's 0-100 z-score scale: check that {path.name} is KonIQ's label file"
        if score == "MOS_zscore" and len(m) and hi <= 5:
            return (f"the scores span {float(m.min()):g}..{hi:g}, which looks like the 1-5 MOS, not the 0-100 z-score MOS: "
                    "if so, option score_column=MOS reads the 1-5 scale")
        return ""

    def _official(self, df: pd.DataFrame, names: pd.Series, label_path: Path, root: Path, options) -> tuple[pd.Series | None, str | None]:
        """Each labelled image's official part, from the label file's `set` column or the sets file."""
        if "set" in df.columns:
            return official_part_names(df["set"], df["_row"], f"{label_path}: column 'set'"), f"column 'set' of {label_path}"
        sets_path = self._sets_path(root, options)
        if sets_path is None:
            return None, None
        sets = read_csv(sets_path)
        require_columns(sets, ["image_name", "set"], sets_path, f" (KonIQ's {self.SETS} has image_name,c1..c5,c_total,MOS,SD,set)")
        part = official_part_names(sets["set"], sets["_row"], f"{sets_path}: column 'set'")
        by_name = dict(zip(text_column(sets, "image_name", sets_path, "image file name"), part))
        absent = [n for n in names if n not in by_name]
        if absent:
            raise DataError(f"{sets_path}: {len(absent)} image(s) of {label_path.name} are in no official part: {listing(map(repr, absent))}")
        return pd.Series([by_name[n] for n in names], index=names.index), f"column 'set' of {sets_path}"

    def parse(self, root, options):
        path = self._label_path(root)
        df = read_csv(path)
        sets_layout = self._is_sets_layout(df)
        score = options["score_column"]
        # In the sets layout the 0-100 z-score MOS is the column named MOS.
        column = "MOS" if sets_layout and score == "MOS_zscore" else score
        require_columns(df, ["image_name", column], path)
        names = text_column(df, "image_name", path, "image file name")
        folder = root / options["resolution"]
        mos = float_column(df, column, path)
        out = pd.DataFrame(
            {
                "image_id": names.values,
                "path": [str(folder / n) for n in names],
                "mos": mos.values,
                "_row": df["_row"].values,
            }
        )
        # SD is on the 1-5 scale of the MOS column; it is kept only when that is the score used.
        if score == "MOS" and not sets_layout and "SD" in df.columns:
            out["std"] = float_column(df, "SD", path).values
        parts, source = self._official(df, names, path, root, options)
        if parts is not None:
            out[OFFICIAL_COLUMN] = parts.values
        return Labels(out, path, range_hint=self._range_hint(path, score, sets_layout, mos), official_source=source)
