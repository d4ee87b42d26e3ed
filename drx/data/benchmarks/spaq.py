"""SPAQ (Fang et al. 2020): 11,125 smartphone photos, MOS on 0-100.

Layout: ``<root>/Annotations/MOS and Image attribute scores.xlsx`` and the images in
``<root>/TestImage/``.
"""

from __future__ import annotations

import pandas as pd

from drx.data.benchmarks.base import (
    Adapter,
    Labels,
    float_column,
    need_file,
    read_excel,
    register_benchmark,
    require_columns,
    text_column,
)
from drx.data.images import ResizeConfig


@register_benchmark
class SPAQ(Adapter):
    name = "spaq"
    label = "SPAQ"
    real = True
    nominal_range = (0.0, 100.0)
    authors_resize = (512, 384)
    default_resize = ResizeConfig(mode="shorter", size=384)
    expected_count = 11125
    defaults = {}
    LABEL = "Annotations/MOS and Image attribute scores.xlsx"
    layout = f"<root>/{LABEL} and images in <root>/TestImage/"

    def label_files(self, root, options):
        return [root / self.LABEL]

    def scan_dirs(self, root, options):
        return [(root / "TestImage", False, frozenset())]

    def parse(self, root, options):
        path = need_file(root / self.LABEL, "SPAQ label workbook")
        df = read_excel(path, 0)
        require_columns(df, ["Image name", "MOS"], path)
        names = text_column(df, "Image name", path, "image file name")
        frame = pd.DataFrame(
            {
                "image_id": names.values,
                "path": [str(root / "TestImage" / n) for n in names],
                "mos": float_column(df, "MOS", path).values,
                "_row": df["_row"].values,
            }
        )
        return Labels(frame, path)
