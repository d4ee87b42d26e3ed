"""LIVE-FB / PaQ-2-PiQ (Ying et al. 2020): 39,810 whole images (patches are not used), MOS on 0-100.

Layout: ``<root>/labels_image.csv`` (or ``<root>/database/labels_image.csv``) and the images
under ``<root>/database/``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from drx.data.benchmarks.base import (
    Adapter,
    Labels,
    float_column,
    listing,
    need_file,
    read_csv,
    register_benchmark,
    require_columns,
    text_column,
)
from drx.data.images import ResizeConfig
from drx.errors import DataError


@register_benchmark
class LIVEFB(Adapter):
    name = "livefb"
    label = "LIVE-FB"
    real = True
    nominal_range = (0.0, 100.0)
    authors_resize = (512, 384)
    default_resize = ResizeConfig(mode="shorter", size=384)
    expected_count = 39810
    defaults = {}
    LABEL = "labels_image.csv"
    layout = "<root>/labels_image.csv (or <root>/database/labels_image.csv) and images under <root>/database/"
    _PATCH = re.compile(r"(?:_patch_|(?:^|/)patches/)")

    def _label_path(self, root: Path) -> Path:
        for cand in (root / self.LABEL, root / "database" / self.LABEL):
            if cand.is_file():
                return cand
        return need_file(root / self.LABEL, "LIVE-FB label file (also looked for database/labels_image.csv)")

    def _check_layout(self, df: pd.DataFrame, path: Path, root: Path) -> None:
        """DataError naming the file a user gave in place of labels_image.csv and where the image
        labels are, computed from its columns (a "did you mean" column would mislead here)."""
        cols = [c for c in df.columns if c != "_row"]
        if {"name", "mos"} <= set(cols):
            return
        shown = ", ".join(cols[:8]) + (", ..." if len(cols) > 8 else "")
        where = f"labels_image.csv (columns name, mos) in {root} or {root / 'database'}"
        if "img_name/patch_name" in cols:
            what = ("pyiqa's meta_info_FLIVEDataset.csv (patches as extra rows); read it with benchmark csv "
                    "(docs/data.md, pyiqa meta-info files), or give PaQ-2-PiQ's")
        elif "name_image" in cols and "mos_image" in cols:
            what = "PaQ-2-PiQ's labels640.csv (the 1,827 images of the official test part, with their patch boxes); the labels of all 39,810 images are"
        elif any("patch" in c for c in cols):
            what = "patch labels (PaQ-2-PiQ's labels_patch.csv: one row per patch); drx trains on whole images, whose labels are"
        else:
            return
        raise DataError(f"{path} holds {what} {where}. Columns found: {shown}")

    def label_files(self, root, options):
        return [self._label_path(root)]

    def scan_dirs(self, root, options):
        return [(root / "database", True, frozenset({"patches"}))]

    def parse(self, root, options):
        path = self._label_path(root)
        df = read_csv(path)
        self._check_layout(df, path, root)
        require_columns(df, ["name", "mos"], path)
        names = text_column(df, "name", path, "image path under database/")
        patch = names.str.replace("\\", "/", regex=False).str.contains(self._PATCH)
        if patch.any():
            items = [f"{w} ({n!r})" for w, n in zip(df.loc[patch, "_row"], names[patch])]
            raise DataError(
                f"{path}: {len(items)} row(s) are patches, not whole images: {listing(items)}. labels_image.csv lists "
                f"whole images only; this is probably labels_patch.csv or a pyiqa meta file (use PaQ-2-PiQ's database/labels_image.csv)"
            )
        frame = pd.DataFrame(
            {
                "image_id": names.values,
                "path": [str(root / "database" / n) for n in names],
                "mos": float_column(df, "mos", path).values,
                "_row": df["_row"].values,
            }
        )
        return Labels(frame, path)
