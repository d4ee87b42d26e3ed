"""``drx data check``: decode every image of a benchmark and list every fault by name."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from drx.data.benchmarks.base import EXCLUDED_FILE, IMAGE_EXTENSIONS, get_adapter
from drx.data.benchmarks.manifest import apply_exclusions, check_prepared, label_problems, missing_files
from drx.data.images import inspect_image
from drx.data.benchmarks.base import OFFICIAL_COLUMN, OFFICIAL_PARTS
from drx.errors import DataError


@dataclass
class CheckReport:
    """Everything `drx data check` found; `usable` is False when training would fail."""

    benchmark: str
    root: str | None = None
    label_file: str | None = None
    expected_count: int | None = None
    n_labels: int = 0
    n_excluded: int = 0
    n_readable: int = 0
    mos_range: tuple[float, float] | None = None
    mos_stats: dict[str, float] = field(default_factory=dict)
    size_stats: dict[str, int] = field(default_factory=dict)
    label_errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)  # (image_id, path)
    unreadable: list[tuple[str, str, str]] = field(default_factory=list)  # (image_id, path, reason)
    # Decode without error but are probably damaged (drx.data.images.damage_signs): (image_id, path, signs).
    suspect: list[tuple[str, str, str]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # image files in the image folders, not in the labels
    scanned: bool = False
    official_split: dict[str, int] = field(default_factory=dict)  # images per official part (train/val/test)
    official_source: str | None = None
    sources: list[dict[str, str]] = field(default_factory=list)  # per scene: package, version, member, license

    @property
    def usable(self) -> bool:
        return not self.label_errors and not self.missing and not self.unreadable and self.n_readable > 0

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["usable"] = self.usable
        return d

    def format(self) -> str:
        """A human-readable report listing every fault by name."""
        lines = [f"benchmark   {self.benchmark}", f"root        {self.root}"]
        if self.label_file:
            lines.append(f"labels      {self.label_file}")
        exp = f" (the full benchmark has {self.expected_count})" if self.expected_count is not None else ""
        damaged = f", {len(self.suspect)} of them probably damaged (see below)" if self.suspect else ""
        lines.append(f"images      {self.n_labels} scored{exp}; {self.n_readable} readable{damaged}")
        if self.n_excluded:
            lines.append(f"excluded    {self.n_excluded} (listed in {EXCLUDED_FILE})")
        if self.mos_stats:
            s = self.mos_stats
            nominal = f"  (nominal range {self.mos_range[0]:g}..{self.mos_range[1]:g})" if self.mos_range else ""
            lines.append(
                f"MOS         min {s['min']:.4g}  max {s['max']:.4g}  mean {s['mean']:.4g}  median {s['median']:.4g}  std {s['std']:.4g}{nominal}"
            )
        if self.official_split:
            o = self.official_split
            lines.append(f"official    split {o['train']} train / {o['val']} validation / {o['test']} test ({self.official_source}); "
                         "used with data.split.protocol official")
        if self.size_stats:
            z = self.size_stats
            lines.append(f"image size  width {z['min_width']}..{z['max_width']}  height {z['min_height']}..{z['max_height']}")
        if self.sources:
            lines.append(f"scenes      {len(self.sources)}, each a photograph from a pinned file in the package index:")
            width = max(len(r["scene"]) for r in self.sources)
            lines += [f"  {r['scene']:<{width}}  {r['package']}=={r['version']}:{r['member']}  ({r['license']}): {r['shows']}"
                      for r in self.sources]
        for title, items in (
            ("label errors", self.label_errors),
            ("warnings", self.warnings),
            ("missing images", [f"{i}  {p}" for i, p in self.missing]),
            ("unreadable images", [f"{i}  {p}: {r}" for i, p, r in self.unreadable]),
            ("probably damaged images (they decode, but: `drx data prepare` excludes them only with --skip-bad)",
             [f"{i}  {p}: {r}" for i, p, r in self.suspect]),
            ("unexpected (unscored) image files", self.unexpected),
        ):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines += [f"  - {x}" for x in items]
        if not self.scanned and not self.label_errors:
            lines.append("unexpected files: not scanned (no fixed image folder for this benchmark)")
        if self.usable:
            lines.append("result      usable")
        else:
            why = []
            if self.label_errors:
                why.append("label errors")
            if self.missing:
                why.append(f"{len(self.missing)} missing")
            if self.unreadable:
                why.append(f"{len(self.unreadable)} unreadable")
            if not why and self.n_readable == 0:
                why.append("no readable images")
            lines.append(f"result      NOT usable ({', '.join(why)})")
        return "\n".join(lines)


@contextlib.contextmanager
def cancel_on_error(futures: Iterable[Future]):
    """On an error or Ctrl-C, cancel the queued jobs so the pool stops promptly."""
    try:
        yield
    except BaseException:
        for f in futures:
            f.cancel()
        raise


def _decode_size(path: str) -> tuple[int, int, list[str]]:
    img, signs = inspect_image(path)
    return img.width, img.height, signs


def _scan(dirs: list[tuple[Path, bool, frozenset[str]]]) -> tuple[list[str], bool]:
    found, scanned = [], False
    for folder, recursive, skip in dirs:
        if not folder.is_dir():
            continue
        scanned = True
        it = folder.rglob("*") if recursive else folder.iterdir()
        for p in it:
            if p.suffix.lower() not in IMAGE_EXTENSIONS or p.name.startswith(".") or not p.is_file():
                continue
            if skip and any(part in skip for part in p.relative_to(folder).parts[:-1]):
                continue
            found.append(os.path.abspath(p))
    return found, scanned


def default_workers() -> int:
    """Threads for decoding and writing images: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def check_benchmark(
    benchmark: str,
    root: str | Path | None,
    options: dict[str, Any] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> CheckReport:
    """Validate a benchmark completely: layout, every label row, and a full decode of every image
    (in a thread pool). Collects every problem instead of stopping at the first. Images that
    decode but are probably damaged (:func:`drx.data.images.damage_signs`) are listed by name in
    ``suspect`` (a warning: the benchmark stays usable)."""
    report = CheckReport(benchmark=benchmark, root=str(root) if root is not None else None)
    try:
        adapter = get_adapter(benchmark)
        report.expected_count = adapter.expected_count
        opts = adapter.resolve_options(options)
        rootp = adapter.resolve_root(root, opts)
        report.root = str(rootp)
        check_prepared(rootp)
        labels = adapter.parse(rootp, opts)
    except DataError as exc:
        report.label_errors.append(str(exc))
        return report
    report.label_file = str(labels.label_file)
    report.warnings += labels.warnings
    frame = labels.frame
    report.n_labels = len(frame)
    if len(frame) == 0:
        report.label_errors += label_problems(frame, labels.label_file, 0, 0, adapter.name)
        return report
    try:
        report.mos_range = adapter.mos_range(opts, frame)
        report.label_errors += label_problems(frame, labels.label_file, *report.mos_range, adapter.name, labels.range_hint)
    except DataError as exc:
        report.label_errors.append(str(exc))
    if adapter.expected_count is not None and len(frame) != adapter.expected_count:
        report.warnings.append(
            f"{labels.label_file}: {len(frame)} scored images, the full {adapter.name} benchmark has {adapter.expected_count} (fine for a subset)"
        )
    all_paths = set(frame["path"])
    try:
        frame, excl = apply_exclusions(frame, rootp)
        report.n_excluded = 0 if excl is None else len(excl)
    except DataError as exc:
        report.label_errors.append(str(exc))
    mos = frame["mos"].astype(float)
    mos = mos[np.isfinite(mos)]
    if len(mos):
        report.mos_stats = {
            "min": float(mos.min()), "max": float(mos.max()), "mean": float(mos.mean()),
            "median": float(mos.median()), "std": float(mos.std(ddof=1)) if len(mos) > 1 else 0.0,
        }
    missing = missing_files(frame)
    report.missing = list(zip(frame.loc[missing, "image_id"], frame.loc[missing, "path"]))
    if report.missing and labels.path_hint:
        report.warnings.append(f"{len(report.missing)} image(s) missing: {labels.path_hint}")
    if OFFICIAL_COLUMN in frame.columns:
        counts = frame[OFFICIAL_COLUMN].value_counts()
        report.official_split = {p: int(counts.get(p, 0)) for p in OFFICIAL_PARTS}
        report.official_source = labels.official_source
    report.sources = adapter.sources(frame)
    present = frame[~missing]
    sizes: list[tuple[int, int]] = []
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        futures = {pool.submit(_decode_size, p): (i, p) for i, p in zip(present["image_id"], present["path"])}
        with tqdm(total=len(futures), desc=f"decoding {benchmark}", unit="img", disable=not progress, leave=False) as bar, \
                cancel_on_error(futures):
            for fut in as_completed(futures):
                i, p = futures[fut]
                try:
                    w, h, signs = fut.result()
                    sizes.append((w, h))
                    if signs:
                        report.suspect.append((i, p, "; ".join(signs)))
                except DataError as exc:
                    reason = str(exc)
                    reason = reason[len(p) + 2 :] if reason.startswith(p + ": ") else reason
                    report.unreadable.append((i, p, reason))
                bar.update(1)
    report.unreadable.sort()
    report.suspect.sort()
    report.n_readable = len(sizes)
    if sizes:
        w, h = np.array(sizes).T
        report.size_stats = {"min_width": int(w.min()), "max_width": int(w.max()), "min_height": int(h.min()), "max_height": int(h.max())}
    found, report.scanned = _scan(adapter.scan_dirs(rootp, opts))
    report.unexpected = sorted(set(found) - all_paths)
    return report
