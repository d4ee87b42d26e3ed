"""The embedded benchmark (drx.data.embedded): 3,024 distorted photographs (84 scenes) labelled by
a full-reference formula, built on first use when no root is given.

Layout: ``<root>/labels.csv`` (image_id, path, mos, group, family, level) and ``<root>/images/*.png``.
"""

from __future__ import annotations

import pandas as pd

from drx.data import embedded
from drx.data.photos import ARCHIVES, photos_for
from drx.data.benchmarks.base import (
    Adapter,
    Labels,
    float_column,
    need_file,
    read_csv,
    register_benchmark,
    require_columns,
    text_column,
)


@register_benchmark
class Embedded(Adapter):
    name = "embedded"
    label = "Embedded"
    real = False
    nominal_range = (0.0, 100.0)
    authors_resize = None
    default_resize = None
    expected_count = embedded.expected_count()
    defaults = {}
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
        path = need_file(root / "labels.csv", "embedded benchmark label file")
        df = read_csv(path)
        require_columns(df, ["image_id", "path", "mos", "group"], path)
        rel = text_column(df, "path", path, "image path")
        frame = pd.DataFrame(
            {
                "image_id": text_column(df, "image_id", path, "image id").values,
                "path": [str(root / p) for p in rel],
                "mos": float_column(df, "mos", path).values,
                "group": text_column(df, "group", path, "source scene").values,
                "_row": df["_row"].values,
            }
        )
        if "family" in df.columns:
            frame["family"] = df["family"].astype(str).values
        if "level" in df.columns:
            lv = float_column(df, "level", path)
            frame["level"] = lv.astype("Int64").values if lv.notna().all() and (lv % 1 == 0).all() else lv.values
        return Labels(frame, path)

    def sources(self, frame):
        """Each scene's photograph: package, version, member path in its archive, the package's license."""
        groups = set(frame["group"]) if "group" in frame.columns else set()
        rows = []
        for photo in photos_for("benchmark"):
            if photo.name in groups:
                archive = ARCHIVES[photo.archive]
                rows.append({"scene": photo.name, "package": archive.project, "version": archive.version,
                             "member": photo.member, "license": archive.license, "shows": photo.shows})
        return rows
