"""Persisted train/test splits, the validation carve-out, official splits, nested
data-efficiency subsets, cross-dataset parts, and the check that a selection part can rank.

Two protocols (``data.split.protocol``):

* ``random``: a split file is written once per (benchmark, manifest ids, seed, n_splits,
  train_fraction) and read by every variant and trial afterwards, so results pair by split index.
  A file that does not match the manifest or the request is an error, never silently regenerated.
  The validation part is carved from the training part.
* ``official``: the benchmark's own train/validation/test parts, from the manifest's
  ``official_split`` column (filled by the adapter from the labels' ``set``/``split`` column) or
  from a split file whose splits list ``train``, ``val`` and ``test`` ids (:func:`official_splits`).

The test part of a split is never used for any selection. A part that selects epochs (the
validation part; the test part under ``train.select_on test``) must be able to rank: at least
:data:`MIN_RANK_IMAGES` images with at least two different MOS (:func:`check_rankable`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from drx.data.benchmarks.base import OFFICIAL_COLUMN, OFFICIAL_PARTS
from drx.data.embedded import VERSION as EMBEDDED_VERSION
from drx.data.transforms import rng_seed
from drx.errors import DataError
from drx.io import atomic_write_text
from drx.paths import cache_dir

FORMAT = "drx-splits-v1"
#: The fewest images a selection part (validation; test under train.select_on test) may have. SRCC
#: and PLCC are defined from 3 images and a constant MOS makes them undefined; 5 is the floor at
#: which a ranking can move at all (it is not a reliable one: use tens of images or more).
MIN_RANK_IMAGES = 5


def _few(items: Iterable[str], limit: int = 5) -> str:
    items = list(items)
    shown = ", ".join(repr(x) for x in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def manifest_fingerprint(ids: Iterable[str]) -> str:
    """sha256 (hex) of the sorted image ids: identifies a manifest's set of images."""
    text = "\n".join(sorted(str(i) for i in ids))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def default_split_path(
    benchmark: str, fingerprint: str, seed: int, n_splits: int, train_fraction: float, cache: str | Path | None = None
) -> Path:
    """``<cache or cache_dir()>/splits/<benchmark>-<fingerprint8>-s<seed>-n<n>-t<train_fraction>.json``."""
    base = Path(cache).expanduser() if cache is not None else cache_dir()
    return base / "splits" / f"{benchmark}-{fingerprint[:8]}-s{seed}-n{n_splits}-t{train_fraction:g}.json"


@dataclass(frozen=True)
class Split:
    """One split's image ids. ``val`` is the split's own validation part (official splits); None
    means the validation part is carved from ``train`` (random splits)."""

    index: int
    train: tuple[str, ...]
    test: tuple[str, ...]
    val: tuple[str, ...] | None = None


@dataclass
class SplitSet:
    """n persisted train/test splits of one manifest (image ids), and where they are stored."""

    benchmark: str
    seed: int
    n_splits: int
    train_fraction: float
    grouped: bool
    fingerprint: str
    splits: list[Split]
    path: Path | None = None
    # image_id -> group, from the manifest (not stored in the file; used for grouped carve-outs).
    groups: dict[str, str] | None = field(default=None, repr=False)
    # "random" (carved validation parts) or "official" (each split has its own validation part).
    protocol: str = "random"
    # Where an official split comes from ("column 'set' of .../koniq10k_distributions_sets.csv").
    source: str | None = None

    def __len__(self) -> int:
        return len(self.splits)

    def __getitem__(self, index: int) -> Split:
        if not 0 <= index < len(self.splits):
            raise DataError(f"split index {index} is out of range: {self.path or 'this split set'} has {len(self.splits)} splits (0..{len(self.splits) - 1})")
        return self.splits[index]

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "benchmark": self.benchmark,
            "seed": self.seed,
            "n_splits": self.n_splits,
            "train_fraction": self.train_fraction,
            "grouped": self.grouped,
            "fingerprint": self.fingerprint,
            "n_images": len(self.splits[0].train) + len(self.splits[0].test) if self.splits else 0,
            "splits": [{"index": s.index, "train": list(s.train), "test": list(s.test)} for s in self.splits],
            # The embedded benchmark's build version: a split of another version is refused by name.
            **({"embedded_version": EMBEDDED_VERSION} if self.benchmark == "embedded" else {}),
        }


@dataclass(frozen=True)
class SplitParts:
    """Image ids of the three parts used by one trial (each sorted)."""

    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    test_ids: tuple[str, ...]


# ------------------------------------------------------------------------------------ splitting


def _groups_of(manifest: pd.DataFrame) -> dict[str, str] | None:
    if "group" not in manifest.columns:
        return None
    g = manifest["group"]
    if g.isna().any():
        rows = manifest.loc[g.isna(), "image_id"].astype(str).tolist()
        raise DataError(f"manifest column 'group' is empty for image(s) {_few(rows)}; every image needs a group when the column is present")
    return dict(zip(manifest["image_id"].astype(str), g.astype(str)))


def _cut_nearest(sizes: Sequence[int], target: float, min_k: int, max_k: int) -> int:
    """Number k of leading units whose cumulative size is nearest to target, min_k <= k <= max_k."""
    cum = np.cumsum(np.asarray(sizes, dtype=np.int64))
    ks = np.arange(min_k, max_k + 1)
    if len(ks) == 0:
        return min_k
    totals = np.where(ks > 0, cum[np.maximum(ks - 1, 0)], 0)
    # argmin takes the first minimum, so the cut is monotone in target (nesting relies on it).
    return int(ks[np.argmin(np.abs(totals - target))])


def _unit_order(ids: Sequence[str], groups: dict[str, str] | None, rng: np.random.Generator) -> list[list[str]]:
    """Shuffle ids as units: single ids, or whole groups (each group's ids sorted)."""
    ids = sorted(ids)
    if groups is None:
        units = [[i] for i in ids]
    else:
        by: dict[str, list[str]] = {}
        for i in ids:
            by.setdefault(groups[i], []).append(i)
        units = [by[g] for g in sorted(by)]
    order = rng.permutation(len(units))
    return [units[k] for k in order]


def _take(units: list[list[str]], fraction: float, at_least_one: bool, leave_one: bool) -> tuple[list[str], list[str]]:
    n = sum(len(u) for u in units)
    min_k = 1 if at_least_one else 0
    max_k = len(units) - 1 if leave_one else len(units)
    k = _cut_nearest([len(u) for u in units], fraction * n, min_k, max_k)
    head = [i for u in units[:k] for i in u]
    tail = [i for u in units[k:] for i in u]
    return head, tail


def make_splits(
    ids: Sequence[str], seed: int, n_splits: int, train_fraction: float, groups: dict[str, str] | None = None
) -> list[Split]:
    """n train/test splits of ids; split k permutes the (sorted) ids or groups with
    ``default_rng([seed, k])``. With groups, whole groups go to one side."""
    units_n = len(set(groups[i] for i in ids)) if groups is not None else len(ids)
    what = "groups" if groups is not None else "images"
    if units_n < 2:
        raise DataError(f"cannot split {units_n} {what} into train and test parts: need at least 2")
    out = []
    for k in range(n_splits):
        rng = np.random.default_rng([rng_seed(seed), k])
        train, test = _take(_unit_order(ids, groups, rng), train_fraction, at_least_one=True, leave_one=True)
        out.append(Split(k, tuple(sorted(train)), tuple(sorted(test))))
    return out


# ---------------------------------------------------------------------------------- persistence


def _read_split_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not a valid split file (JSON error: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"{path}: not a drx split file (expected format {FORMAT!r})")
    if data.get("protocol") == "official" or any(isinstance(s, dict) and "val" in s for s in data.get("splits") or []):
        raise DataError(
            f"{path}: an official split file (its splits list their own validation part, 'val'); the random protocol "
            "would not use it: set data.split.protocol official"
        )
    for key in ("benchmark", "seed", "n_splits", "train_fraction", "grouped", "fingerprint", "splits"):
        if key not in data:
            raise DataError(f"{path}: split file lacks the key {key!r}")
    return data


def _check_embedded_version(path: Path, data: dict) -> None:
    """Refuse a split file of another build of the embedded benchmark (files without the key are v1's)."""
    if data.get("benchmark") != "embedded":
        return
    version = data.get("embedded_version", 1)
    if version != EMBEDDED_VERSION:
        raise DataError(
            f"{path}: a split file of the embedded benchmark v{version}, but this drx builds v{EMBEDDED_VERSION} "
            f"(other scenes and image ids: v1 had 18 scikit-image scenes, v2 has 84 photographs from the package index). "
            "Results on the two are not comparable, so its splits are not reused: delete the file, or give "
            "data.split.file another path, and drx writes v2's splits"
        )


def _check_file(path: Path, data: dict, ids: set[str], seed: int, n_splits: int, train_fraction: float, grouped: bool) -> list[Split]:
    asked = {"seed": seed, "n_splits": n_splits, "train_fraction": train_fraction, "grouped": grouped}
    for key, want in asked.items():
        have = data[key]
        same = abs(float(have) - float(want)) < 1e-12 if key == "train_fraction" else have == want
        if not same:
            raise DataError(
                f"{path}: split file has {key}={have!r} but {key}={want!r} was asked; "
                f"use another split file (data.split.file) or delete this one if it is no longer used by any experiment"
            )
    splits = []
    for k, s in enumerate(data["splits"]):
        train, test = [str(x) for x in s["train"]], [str(x) for x in s["test"]]
        in_file = set(train) | set(test)
        unknown = sorted(in_file - ids)
        if unknown:
            raise DataError(
                f"{path}: split {k} names {len(unknown)} image id(s) that are not in the manifest: {_few(unknown)}; "
                f"the split file was made for other data"
            )
        absent = sorted(ids - in_file)
        if absent:
            raise DataError(
                f"{path}: {len(absent)} manifest image id(s) are absent from split {k}: {_few(absent)}; "
                f"the split file was made for other data"
            )
        both = sorted(set(train) & set(test))
        if both:
            raise DataError(f"{path}: split {k} puts image id(s) {_few(both)} in both train and test")
        splits.append(Split(k, tuple(sorted(train)), tuple(sorted(test))))
    if len(splits) != n_splits:
        raise DataError(f"{path}: split file holds {len(splits)} splits but n_splits={n_splits}")
    return splits


def persisted_splits(
    manifest: pd.DataFrame,
    seed: int,
    n_splits: int = 10,
    train_fraction: float = 0.8,
    path: str | Path | None = None,
    benchmark: str | None = None,
    cache: str | Path | None = None,
) -> SplitSet:
    """Load the split file for this manifest, or create it on first use.

    Splits are grouped (whole groups on one side; the fraction then holds approximately, by
    groups) when the manifest has a ``group`` column. ``path`` None means
    :func:`default_split_path` under ``cache`` (default ``cache_dir()``). Raises DataError when an
    existing file does not match the manifest's ids or the requested seed/n_splits/fraction.
    """
    if n_splits < 1:
        raise DataError(f"n_splits must be >= 1, got {n_splits}")
    if not 0.0 < train_fraction < 1.0:
        raise DataError(f"train_fraction must be in (0, 1), got {train_fraction}")
    if "image_id" not in manifest.columns:
        raise DataError(f"manifest lacks the 'image_id' column; found {list(manifest.columns)}")
    ids_list = manifest["image_id"].astype(str).tolist()
    ids = set(ids_list)
    if len(ids) != len(ids_list):
        s = pd.Series(ids_list)
        dups = sorted(s[s.duplicated()].unique())
        raise DataError(f"manifest has duplicate image ids: {_few(dups)}")
    benchmark = benchmark or str(manifest.attrs.get("benchmark", "custom"))
    groups = _groups_of(manifest)
    fingerprint = manifest_fingerprint(ids)
    path = Path(path).expanduser() if path is not None else default_split_path(benchmark, fingerprint, seed, n_splits, train_fraction, cache)
    grouped = groups is not None
    if path.exists():
        data = _read_split_file(path)
        _check_embedded_version(path, data)
        splits = _check_file(path, data, ids, seed, n_splits, train_fraction, grouped)
        return SplitSet(str(data["benchmark"]), seed, n_splits, train_fraction, grouped, fingerprint, splits, path, groups)
    splits = make_splits(ids_list, seed, n_splits, train_fraction, groups)
    split_set = SplitSet(benchmark, seed, n_splits, train_fraction, grouped, fingerprint, splits, path, groups)
    # Concurrent trials may race to create the same file; the content is identical (and atomic).
    atomic_write_text(path, json.dumps(split_set.to_json(), indent=1))
    return split_set


# ------------------------------------------------------------------------------ official splits


def _read_official_file(path: Path, ids: set[str]) -> list[Split]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not a valid split file (JSON error: {exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the split file ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("splits"), list) or not data["splits"]:
        raise DataError(f"{path}: not a drx split file (expected format {FORMAT!r} and a non-empty list 'splits')")
    splits = []
    for k, s in enumerate(data["splits"]):
        if not isinstance(s, dict) or not all(isinstance(s.get(p), list) for p in OFFICIAL_PARTS):
            raise DataError(f"{path}: split {k} must list image ids under 'train', 'val' and 'test' (an official split has its own validation part)")
        parts = {p: [str(x) for x in s[p]] for p in OFFICIAL_PARTS}
        listed = [i for p in OFFICIAL_PARTS for i in parts[p]]
        unknown = sorted(set(listed) - ids)
        if unknown:
            raise DataError(
                f"{path}: split {k} names {len(unknown)} image id(s) that are not in the manifest: {_few(unknown)}; "
                "the split file was made for other data (images excluded by drx-excluded.csv must leave the split file too)"
            )
        absent = sorted(ids - set(listed))
        if absent:
            raise DataError(f"{path}: {len(absent)} manifest image id(s) are in no part of split {k}: {_few(absent)}")
        seen: dict[str, str] = {}
        for p in OFFICIAL_PARTS:
            for i in parts[p]:
                if i in seen:
                    raise DataError(f"{path}: split {k} puts image id {i!r} in both {seen[i]} and {p}")
                seen[i] = p
        splits.append(Split(k, tuple(sorted(parts["train"])), tuple(sorted(parts["test"])), tuple(sorted(parts["val"]))))
    return splits


def official_splits(manifest: pd.DataFrame, path: str | Path | None = None, benchmark: str | None = None) -> SplitSet:
    """The benchmark's official split(s), each with its own validation part.

    From `path` when given: a drx split file (format ``drx-splits-v1``) whose ``splits`` each list
    the image ids of ``train``, ``val`` and ``test`` (every manifest id in exactly one part). Else
    from the manifest's :data:`OFFICIAL_COLUMN` column (one split, index 0), which the adapters fill
    from the labels' split column (KonIQ's ``set``, the csv option ``split_column``). DataError
    naming the file, ids or column when there is no official split or it does not fit the manifest.
    """
    ids_list = manifest["image_id"].astype(str).tolist()
    ids = set(ids_list)
    benchmark = benchmark or str(manifest.attrs.get("benchmark", "custom"))
    groups = _groups_of(manifest)
    fingerprint = manifest_fingerprint(ids)
    if path is not None:
        p = Path(path).expanduser()
        splits = _read_official_file(p, ids)
        return SplitSet(benchmark, 0, len(splits), float("nan"), groups is not None, fingerprint, splits, p, groups, "official", f"split file {p}")
    if OFFICIAL_COLUMN not in manifest.columns:
        label = manifest.attrs.get("label_file") or "the label file"
        raise DataError(
            f"data.split.protocol official: {label} ({benchmark}) carries no official split. Give the labels' split column "
            "(csv: option split_column=<column>; koniq: koniq10k_distributions_sets.csv with its `set` column, in the root or "
            "option sets_file=<path>) or a split file listing train/val/test ids (data.split.file); see docs/data.md"
        )
    part = manifest[OFFICIAL_COLUMN].astype(str)
    by = {p: tuple(sorted(manifest.loc[part == p, "image_id"].astype(str))) for p in OFFICIAL_PARTS}
    source = manifest.attrs.get("official_split_source") or f"column {OFFICIAL_COLUMN!r} of the manifest"
    split = Split(0, by["train"], by["test"], by["val"])
    if not split.train or not split.test:
        counts = ", ".join(f"{len(by[p])} {p}" for p in OFFICIAL_PARTS)
        raise DataError(f"data.split.protocol official: the official split ({source}) has {counts}; it needs training and test images")
    return SplitSet(benchmark, 0, 1, float("nan"), groups is not None, fingerprint, [split], None, groups, "official", source)


def check_rankable(ids: Sequence[str], mos: dict[str, float], what: str, remedy: str) -> None:
    """DataError when the images `ids` cannot rank epochs: fewer than :data:`MIN_RANK_IMAGES` of
    them, or all with the same MOS (SRCC and PLCC are then undefined at every epoch). `what` names
    the part (``"the validation part of split 0"``), `remedy` the option to change."""
    n = len(ids)
    if n < MIN_RANK_IMAGES:
        raise DataError(
            f"{what} has {n} image(s); selecting an epoch ranks images by SRCC/PLCC, which needs at least {MIN_RANK_IMAGES} "
            f"images with different MOS (more for a reliable choice): {remedy}"
        )
    values = {float(mos[i]) for i in ids}
    if len(values) < 2:
        raise DataError(f"{what}: all {n} images have MOS {values.pop():g}, so SRCC/PLCC are undefined at every epoch: {remedy}")


# -------------------------------------------------------------------------------------- parts


def _carve_val(train: Sequence[str], groups: dict[str, str] | None, val_fraction: float, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    if val_fraction <= 0.0:
        return [], sorted(train)
    units = _unit_order(train, groups, rng)
    if len(units) < 2:
        raise DataError(
            f"cannot carve a validation part ({val_fraction:g}) from {len(units)} training "
            f"{'group' if groups else 'image'}(s): need at least 2"
        )
    val, rest = _take(units, val_fraction, at_least_one=True, leave_one=True)
    return sorted(val), rest


def _subset(rest: Sequence[str], groups: dict[str, str] | None, fraction: float, rng: np.random.Generator) -> list[str]:
    if fraction >= 1.0:
        return sorted(rest)
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"fraction must be in (0, 1], got {fraction}")
    units = _unit_order(rest, groups, rng)
    head, _ = _take(units, fraction, at_least_one=True, leave_one=False)
    return sorted(head)


def split_parts(split_set: SplitSet, index: int, val_fraction: float = 0.1, fraction: float = 1.0, seed: int = 0) -> SplitParts:
    """Train/val/test ids of split `index`.

    An official split (``split.val`` set) keeps its own validation part and `val_fraction` is not
    used. Otherwise the validation part (``val_fraction`` of the training part; whole groups when grouped) is
    drawn with ``default_rng([seed, index, 1])`` and is the same for every `fraction`. The
    training part is then the first `fraction` of the rest in the order of
    ``default_rng([seed, index, 2])``, so smaller fractions are nested in larger ones. The test
    part is the split's test part, never used for selection.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    split = split_set[index]
    groups = split_set.groups
    if split.val is not None:  # an official split: its own validation part, nothing carved
        val, rest = sorted(split.val), sorted(split.train)
    else:
        val, rest = _carve_val(split.train, groups, val_fraction, np.random.default_rng([rng_seed(seed), index, 1]))
    train = _subset(rest, groups, fraction, np.random.default_rng([rng_seed(seed), index, 2]))
    return SplitParts(tuple(train), tuple(val), tuple(split.test))


def cross_dataset_parts(
    train_manifest: pd.DataFrame,
    test_manifest: pd.DataFrame,
    split_set: SplitSet | None = None,
    index: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> SplitParts:
    """Cross-dataset parts: train on benchmark A (all its images, or the training part of
    ``split_set[index]``), validate on a part carved from those training images (or, for an
    official split, on its own validation part), test on every image of benchmark B."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    a_ids = set(train_manifest["image_id"].astype(str))
    if split_set is not None:
        if index is None:
            raise DataError("cross_dataset_parts: a split_set was given without a split index")
        pool = list(split_set[index].train)
        stray = sorted(set(pool) - a_ids)
        if stray:
            raise DataError(f"split {index} of {split_set.path} names training ids absent from the training manifest: {_few(stray)}")
        k = index
    else:
        pool = sorted(a_ids)
        k = 0
    groups = _groups_of(train_manifest)
    own_val = split_set[index].val if split_set is not None and index is not None else None
    if own_val is not None:  # an official split: its own validation part
        val, train = sorted(own_val), sorted(pool)
    else:
        val, train = _carve_val(pool, groups, val_fraction, np.random.default_rng([rng_seed(seed), k, 1]))
    test = sorted(test_manifest["image_id"].astype(str))
    if not test:
        raise DataError("cross_dataset_parts: the test manifest is empty")
    return SplitParts(tuple(sorted(train)), tuple(val), tuple(test))


def select(manifest: pd.DataFrame, ids: Sequence[str]) -> pd.DataFrame:
    """The manifest rows of `ids`, in the order given (index reset). DataError on unknown ids."""
    by_id = manifest.assign(_pos=np.arange(len(manifest))).set_index(manifest["image_id"].astype(str))
    unknown = [i for i in ids if i not in by_id.index]
    if unknown:
        raise DataError(f"{len(unknown)} image id(s) are not in the manifest: {_few(unknown)}")
    out = manifest.iloc[by_id.loc[list(ids), "_pos"].to_numpy()].reset_index(drop=True)
    out.attrs = dict(manifest.attrs)
    return out
