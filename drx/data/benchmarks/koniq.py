"""KonIQ-10k (Hosu et al. 2020): 10,073 in-the-wild photos, MOS from crowd ratings.

Layout: ``<root>/koniq10k_scores_and_distributions.csv`` and the images in ``<root>/1024x768/``
(or ``512x384/``, option ``resolution``). Option ``score_column``: ``MOS_zscore`` (0-100, the
default) or ``MOS`` (1-5, whose ``SD`` column becomes ``std``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from drx.data.benchmarks.base import (
    Adapter,
    Labels,
    float_column,
    need_file,
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
                f"{suggest(str(opts['score_column']), self.SCORES)}"
            )
        return opts

    def mos_range(self, options=None, manifest=None):
        return self.SCORES[self.resolve_options(options)["score_column"]]

    def label_files(self, root, options):
        return [root / self.LABEL]

    def scan_dirs(self, root, options):
        return [(root / options["resolution"], False, frozenset())]

    def parse(self, root, options):
        path = need_file(root / self.LABEL, "KonIQ-10k label file")
        df = read_csv(path)
        score = options["score_column"]
        require_columns(df, ["image_name", score], path)
        names = text_column(df, "image_name", path, "image file name")
        folder = root / options["resolution"]
        out = pd.DataFrame(
            {
                "image_id": names.values,
                "path": [str(folder / n) for n in names],
                "mos": float_column(df, score, path).values,
                "_row": df["_row"].values,
            }
        )
        # SD is on the 1-5 scale of the MOS column; it is kept only when that is the score used.
        if score == "MOS" and "SD" in df.columns:
            out["std"] = float_column(df, "SD", path).values
        return Labels(out, path)
