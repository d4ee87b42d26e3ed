"""Benchmark trees at real image sizes, for ``drx bench data`` and its tests.

:func:`write_benchmark_tree` writes a benchmark's official layout and label file with images at the
real benchmark's size in px (photographs, so they decode at a realistic speed), read by the real
adapter. Kept apart from :mod:`drx.testing.synthetic` so that ``drx bench`` needs no search stack.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from drx.data.benchmarks import get_adapter
from drx.data.images import image_size
from drx.data.photos import ensure_photos, photo_file, photos_for
from drx.errors import DataError
from drx.io import atomic_write

#: (width, height) in px of the images :func:`write_benchmark_tree` writes: KonIQ-10k's 1024x768
#: release, and a SPAQ phone photo as released (about 4000x3000; `drx data prepare` shrinks it).
TREE_SIZES: dict[str, tuple[int, int]] = {"koniq": (1024, 768), "spaq": (4000, 3000)}
#: JPEG quality of the written images: about 2 bits/px at 1024x768 (KonIQ's release: ~200-400 KB
#: an image) and 0.9 at 4000x3000, below SPAQ's ~2 (34.8 GB for 11,125 photos: the enlarged
#: photographs are smoother than phone photos, so they decode a little faster).
TREE_JPEG_QUALITY = 90


def _tree_labels(benchmark: str, names: list[str]) -> pd.DataFrame:
    """The official label table of `benchmark` for `names`, MOS spread evenly over its scale."""
    k = np.arange(len(names))
    z = np.round(5 + 85 * (k + 1) / (len(names) + 1), 3)  # 0-100 scale
    if benchmark == "koniq":  # koniq10k_scores_and_distributions.csv
        votes = pd.DataFrame({"c1": 0.1, "c2": 0.2, "c3": 0.4, "c4": 0.2, "c5": 0.1, "c_total": 120}, index=k)
        return pd.concat([pd.DataFrame({"image_name": names}), votes,
                          pd.DataFrame({"MOS": np.round(1 + 4 * z / 100, 4), "SD": 0.5, "MOS_zscore": z})], axis=1)
    # SPAQ: "MOS and Image attribute scores.xlsx"
    return pd.DataFrame({"Image name": names, "MOS": z, "Brightness": 50, "Colorfulness": 50, "Contrast": 50,
                         "Noisiness": 50, "Sharpness": 50})


def write_benchmark_tree(benchmark: str, root: str | Path, n: int, quality: int = TREE_JPEG_QUALITY) -> list[Path]:
    """Write `n` JPEGs at the real size of `benchmark` (:data:`TREE_SIZES`, px) and its official
    label file under `root`, in the layout its adapter reads; returns the image paths.

    The images are the embedded benchmark's photographs (fetched through pip on first use), largest
    first, scaled to cover the size and centre-cropped: photographic content, so they decode as fast
    as real photos do (smooth or random images do not). Images already there at the right size
    are kept, so a rerun only rewrites the label file.
    """
    if benchmark not in TREE_SIZES:
        raise DataError(f"no real-sized tree for benchmark {benchmark!r}: one of {', '.join(TREE_SIZES)}")
    if n < 1:
        raise DataError(f"a benchmark tree needs at least 1 image, got {n}")
    root = Path(root)
    size = TREE_SIZES[benchmark]
    adapter = get_adapter(benchmark)
    if benchmark == "koniq":
        names = [f"{10004473376 + k}.jpg" for k in range(n)]  # KonIQ's names are Flickr ids
        folder, label = root / adapter.defaults["resolution"], root / adapter.LABEL
    else:
        names = [f"{k + 1:05d}.jpg" for k in range(n)]
        folder, label = root / "TestImage", root / adapter.LABEL
    photos = photos_for("benchmark")
    ensure_photos(photos)
    # The largest photographs need the least enlargement, so keep the most real detail.
    by_size = sorted(photos, key=lambda p: -np.prod(image_size(photo_file(p))))
    paths = []
    for k, name in enumerate(names):
        path = folder / name
        if not (path.is_file() and image_size(path) == size):
            with Image.open(photo_file(by_size[k % len(by_size)])) as im:
                img = ImageOps.fit(im.convert("RGB"), size, method=Image.Resampling.BICUBIC)
            atomic_write(path, lambda t: img.save(t, format="JPEG", quality=quality))
        paths.append(path)
    table = _tree_labels(benchmark, names)
    if label.suffix == ".xlsx":
        atomic_write(label, lambda t: table.to_excel(t, index=False, engine="openpyxl"))
    else:
        atomic_write(label, lambda t: table.to_csv(t, index=False))
    return paths
