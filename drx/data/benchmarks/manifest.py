"""Reading a benchmark into a validated manifest (:func:`load_manifest`), and the label and
exclusion checks that `check` and `prepare` share with it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from drx.data.benchmarks.base import (
    EXCLUDED_FILE,
    PREPARED_FILE,
    Adapter,
    Labels,
    get_adapter,
    listing,
    log,
    read_csv,
    require_columns,
)
from drx.errors import DataError


def label_problems(frame: pd.DataFrame, path: Path, lo: float, hi: float, benchmark: str, range_hint: str = "") -> list[str]:
    """One message per kind of label fault (no rows, missing or out-of-[lo, hi] MOS, duplicate
    ids), each naming the label file `path` and the rows; `range_hint` (the adapter's
    :attr:`Labels.range_hint`, computed from what the user gave) ends the out-of-range message."""
    problems = []
    if len(frame) == 0:
        return [f"{path}: no images: the label file has no data rows for benchmark {benchmark!r}"]
    mos = frame["mos"].astype(float)
    nan = ~np.isfinite(mos)
    if nan.any():
        items = [f"{w} ({i!r})" for w, i in zip(frame.loc[nan, "_row"], frame.loc[nan, "image_id"])]
        problems.append(f"{path}: MOS is missing or not finite in {len(items)} row(s): {listing(items)}")
    out = np.isfinite(mos) & ((mos < lo) | (mos > hi))
    if out.any():
        items = [f"{w} ({i!r}: {m:g})" for w, i, m in zip(frame.loc[out, "_row"], frame.loc[out, "image_id"], mos[out])]
        problems.append(
            f"{path}: MOS outside the nominal range [{lo:g}, {hi:g}] of {benchmark!r} in {len(items)} row(s): {listing(items)}"
            + (f" ({range_hint})" if range_hint else "")
        )
    dup = frame["image_id"].duplicated(keep=False)
    if dup.any():
        groups = frame.loc[dup].groupby("image_id", sort=True)["_row"].apply(list)
        items = [f"{i!r} ({', '.join(ws)})" for i, ws in groups.items()]
        problems.append(f"{path}: duplicate image ids in {int(dup.sum())} rows: {listing(items)}")
    return problems


def missing_files(frame: pd.DataFrame) -> pd.Series:
    """Boolean per row: its image file does not exist."""
    return ~frame["path"].map(os.path.isfile).astype(bool)


def _read_exclusions(root: Path) -> pd.DataFrame | None:
    path = root / EXCLUDED_FILE
    if not path.is_file():
        return None
    df = read_csv(path)
    require_columns(df, ["image_id", "path", "reason"], path)
    return df


def apply_exclusions(frame: pd.DataFrame, root: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """`frame` without the images listed in ``<root>/drx-excluded.csv`` (written by
    ``prepare --skip-bad``), and that list (None without the file)."""
    excl = _read_exclusions(root)
    if excl is None:
        return frame, None
    path = root / EXCLUDED_FILE
    ids = set(excl["image_id"].astype(str))
    unknown = sorted(ids - set(frame["image_id"]))
    if unknown:
        raise DataError(f"{path}: lists {len(unknown)} image id(s) that are not in the labels: {listing(map(repr, unknown))}")
    keep = ~frame["image_id"].isin(ids)
    log.warning("%s: excluding %d image(s) that `drx data prepare --skip-bad` could not read", path, len(ids))
    return frame[keep].reset_index(drop=True), excl


def checked_labels(adapter, root: Path, opts: dict) -> pd.DataFrame:
    """The adapter's labels of `root`, with its warnings logged and the MOS checked against its
    range; raises DataError listing every problem (empty file, NaN or out-of-range MOS, ...)."""
    labels = adapter.parse(root, opts)
    for w in labels.warnings:
        log.warning(w)
    frame = labels.frame
    if len(frame) == 0:
        raise DataError(label_problems(frame, labels.label_file, 0, 0, adapter.name)[0])
    rng = adapter.mos_range(opts, frame)
    problems = label_problems(frame, labels.label_file, rng[0], rng[1], adapter.name, labels.range_hint)
    if problems:
        raise DataError("\n  ".join(problems))
    return labels, frame, rng


def check_prepared(root: Path) -> dict[str, Any] | None:
    """What `root`'s prepared copy went through (``{"resize": {"mode", "size"} | None, "source":
    original folder}`` from ``drx-prepared.json``), or None when `root` is not a prepared copy.
    DataError when it is a prepared copy that is damaged or was left incomplete."""
    marker = root / PREPARED_FILE
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text())
    except json.JSONDecodeError:
        raise DataError(f"{marker}: damaged (not JSON); rerun `drx data prepare` into a new folder") from None
    if not info.get("complete", False):
        raise DataError(f"{root}: this prepared copy is incomplete (an interrupted `drx data prepare`?); rerun the same prepare command to finish it")
    return {"resize": info.get("resize"), "source": info.get("source")}


def _finish(frame: pd.DataFrame, adapter: Adapter, root: Path, labels: Labels, rng: tuple[float, float], n_excluded: int,
            prepared: dict[str, Any] | None = None) -> pd.DataFrame:
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
        "prepared": prepared,
        "official_split_source": labels.official_source,
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
    prepared = check_prepared(rootp)
    labels, frame, rng = checked_labels(adapter, rootp, opts)
    frame, excl = apply_exclusions(frame, rootp)
    if len(frame) == 0:
        raise DataError(f"{rootp / EXCLUDED_FILE}: every image of {labels.label_file} is excluded; nothing left to use")
    missing = missing_files(frame)
    if missing.any():
        items = [f"{w} {i!r} -> {p}" for w, i, p in zip(frame.loc[missing, "_row"], frame.loc[missing, "image_id"], frame.loc[missing, "path"])]
        raise DataError(f"{int(missing.sum())} image file(s) listed in {labels.label_file} are missing: {listing(items)}"
                        + (f" ({labels.path_hint})" if labels.path_hint else ""))
    if adapter.expected_count is not None and len(frame) != adapter.expected_count:
        log.info("%s: %d images, the full %s benchmark has %d (a subset is fine)", labels.label_file, len(frame), adapter.name, adapter.expected_count)
    return _finish(frame, adapter, rootp, labels, rng, 0 if excl is None else len(excl), prepared)
