"""``drx data prepare``: a resized copy of a benchmark in its official layout, resumable."""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image
from tqdm import tqdm

from drx.data.benchmarks.base import EXCLUDED_FILE, PREPARED_FILE, Adapter, get_adapter
from drx.data.benchmarks.check import cancel_on_error, default_workers
from drx.data.benchmarks.manifest import apply_exclusions, check_prepared, checked_labels
from drx.data.images import ResizeConfig, inspect_image, prepared_resize, resize_image, resized_size
from drx.errors import DataError
from drx.io import TMP_SUFFIX, atomic_write, atomic_write_text, file_lock

JPEG_QUALITY = 95


@dataclass
class PrepareReport:
    """What `drx data prepare` did: image counts and the images it excluded."""

    out: Path
    n_images: int = 0
    written: int = 0  # resized and re-encoded
    copied: int = 0  # already small enough (or no resize): original bytes copied
    skipped: int = 0  # finished by an earlier run
    excluded: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [
            f"prepared    {self.out}",
            f"images      {self.n_images}: {self.written} resized, {self.copied} copied unchanged, {self.skipped} already done",
        ]
        if self.excluded:
            lines.append(f"excluded ({len(self.excluded)}, listed in {self.out / EXCLUDED_FILE}):")
            lines += [f"  - {i}  {p}: {r}" for i, p, r in self.excluded]
        lines += self.notes
        return "\n".join(lines)


def _save_params(suffix: str) -> tuple[str, dict[str, Any]]:
    s = suffix.lower()
    if s in (".jpg", ".jpeg"):
        # Quality 95 without chroma subsampling (4:4:4): re-encoding loses as little as JPEG allows.
        return "JPEG", {"quality": JPEG_QUALITY, "subsampling": 0}
    if s == ".png":
        return "PNG", {}
    if s == ".bmp":
        return "BMP", {}
    if s in (".tif", ".tiff"):
        return "TIFF", {}
    if s == ".webp":
        return "WEBP", {"lossless": True}
    fmt = Image.registered_extensions().get(s)
    if fmt is None:
        raise DataError(f"cannot write images with extension {suffix!r}")
    return fmt, {}


def _prepare_one(src: str, dst: Path, resize: ResizeConfig | None) -> str:
    """Write the prepared copy of image `src` to `dst` (atomically: a file under its final name
    is always complete); "written" when resized and re-encoded, "copied" when its bytes are kept.

    DataError naming `src` when it is unreadable or decodes but is probably damaged
    (:func:`drx.data.images.damage_signs`): damage is never baked into a clean-looking copy."""
    img, signs = inspect_image(src)  # DataError names the file
    if signs:
        raise DataError(f"{src}: probably damaged although it decodes: {'; '.join(signs)}")
    # Never upscale in `shorter` mode: the copy exists to be smaller (one rule, shared with predict).
    step = prepared_resize(img.width, img.height, resize)
    if step is None or resized_size(img.width, img.height, step) == (img.width, img.height):
        atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
        return "copied"
    fmt, params = _save_params(dst.suffix)
    atomic_write(dst, lambda tmp: resize_image(img, step).save(tmp, format=fmt, **params))
    return "written"


def _prepare_settings(adapter: Adapter, root: Path, opts: dict[str, Any], resize: ResizeConfig | None) -> dict[str, Any]:
    return {
        "benchmark": adapter.name,
        "source": str(root),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()},
        "resize": None if resize is None else {"mode": resize.mode, "size": list(resize.size) if isinstance(resize.size, tuple) else resize.size},
        "jpeg": {"quality": JPEG_QUALITY, "subsampling": "4:4:4"},
        "upscale": False,
    }


def prepare_benchmark(
    benchmark: str,
    root: str | Path | None,
    cache: str | Path,
    size: int | None = 384,
    exact: tuple[int, int] | None = None,
    skip_bad: bool = False,
    workers: int | None = None,
    options: dict[str, Any] | None = None,
    progress: bool = True,
) -> PrepareReport:
    """Write a resized copy of a benchmark, in the same official layout, to ``<cache>/<benchmark>/``.

    `size`: shorter side (aspect kept, only ever shrinks); `exact`: (height, width) as the
    reference code (takes precedence); neither: images copied unchanged. Label files are copied
    verbatim, images keep their relative names (JPEG re-encoded at quality 95, 4:4:4). Reruns
    skip finished files; every file is written to a temporary name and renamed, so an
    interrupted run leaves no half-written image. Bad images (missing, unreadable, or decoding but
    probably damaged: :func:`drx.data.images.damage_signs`) fail the run, naming each one, unless
    `skip_bad`, which lists them with the reason in ``drx-excluded.csv`` instead.
    """
    adapter = get_adapter(benchmark)
    opts = adapter.resolve_options(options)
    rootp = adapter.resolve_root(root, opts)
    check_prepared(rootp)
    if exact is not None:
        resize: ResizeConfig | None = ResizeConfig(mode="exact", size=tuple(int(v) for v in exact))  # type: ignore[arg-type]
    elif size is not None:
        resize = ResizeConfig(mode="shorter", size=int(size))
    else:
        resize = None
    out = Path(cache).expanduser().absolute() / adapter.name
    if out.resolve() == rootp.resolve():
        raise DataError(f"{out}: the prepared copy would overwrite the benchmark itself; choose another --cache folder")
    labels, frame, rng = checked_labels(adapter, rootp, opts)
    frame, carried = apply_exclusions(frame, rootp)
    rel_paths = []
    for p in frame["path"]:
        rel = os.path.relpath(p, rootp)
        if rel.startswith(".." + os.sep) or rel == ".." or os.path.isabs(rel):
            raise DataError(f"{p}: image lies outside the benchmark root {rootp}; prepare copies a self-contained folder (use paths inside the root)")
        rel_paths.append(rel)
    label_files = adapter.label_files(rootp, opts)

    settings = _prepare_settings(adapter, rootp, opts, resize)
    marker = out / PREPARED_FILE
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())
        except json.JSONDecodeError:
            raise DataError(f"{marker}: damaged (not JSON); remove {out} and prepare again") from None
        old_settings = {k: old.get(k) for k in settings}
        if old_settings != settings:
            raise DataError(
                f"{out} was prepared with other settings: existing {json.dumps(old_settings, sort_keys=True)} vs requested "
                f"{json.dumps(settings, sort_keys=True)}; use another --cache folder or remove {out}"
            )
    elif out.exists() and any(p.name != ".drx-prepare.lock" for p in out.iterdir()):
        raise DataError(f"{out}: folder exists and is not a drx prepared copy (no {PREPARED_FILE}); choose another --cache folder")
    out.mkdir(parents=True, exist_ok=True)

    report = PrepareReport(out=out, n_images=len(frame))
    with file_lock(out / ".drx-prepare.lock", blocking=False):
        atomic_write_text(marker, json.dumps({**settings, "complete": False}, indent=1) + "\n")
        for stale in out.rglob(f"*{TMP_SUFFIX}"):
            stale.unlink()  # leftovers of an interrupted run: never taken as finished
        for lf in label_files:
            rel = os.path.relpath(lf, rootp)
            if rel.startswith(".."):
                rel = lf.name
                option = {"csv": "file", "koniq": "sets_file"}.get(adapter.name)
                report.notes.append(f"note        the label file {lf} lies outside the root; copied as {out / rel}"
                                    + (f" (set option {option}={rel} when using the copy)" if option else ""))
            atomic_write(out / rel, lambda tmp: shutil.copyfile(lf, tmp))
        jobs = []
        for (iid, src), rel in zip(zip(frame["image_id"], frame["path"]), rel_paths):
            dst = out / rel
            if dst.is_file():
                report.skipped += 1
            else:
                jobs.append((iid, src, dst))
        bad: list[tuple[str, str, str]] = []
        with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
            futures = {pool.submit(_prepare_one, src, dst, resize): (iid, src) for iid, src, dst in jobs}
            with tqdm(total=len(futures), desc=f"preparing {benchmark}", unit="img", disable=not progress, leave=False) as bar, \
                    cancel_on_error(futures):
                for fut in as_completed(futures):
                    iid, src = futures[fut]
                    try:
                        kind = fut.result()
                        if kind == "written":
                            report.written += 1
                        else:
                            report.copied += 1
                    except DataError as exc:
                        msg = str(exc)
                        bad.append((iid, src, msg[len(src) + 2 :] if msg.startswith(src + ": ") else msg))
                    bar.update(1)
        bad.sort()
        if bad and not skip_bad:
            items = [f"{i} ({p}: {r})" for i, p, r in bad]
            raise DataError(
                f"{len(bad)} image(s) of {rootp} are missing, unreadable or probably damaged: " + "; ".join(items)
                + f". Fix or replace them, or pass --skip-bad to exclude them (listed in {out / EXCLUDED_FILE}); "
                "the images already written are kept and a rerun continues from there"
            )
        excluded = list(bad)
        if carried is not None:
            excluded += [(str(i), str(p), f"excluded in the source: {r}") for i, p, r in zip(carried["image_id"], carried["path"], carried["reason"])]
        excl_path = out / EXCLUDED_FILE
        if excluded:
            if len(excluded) >= len(frame) + (0 if carried is None else len(carried)):
                raise DataError(f"every image of {labels.label_file} is bad; nothing to prepare")
            table = pd.DataFrame(excluded, columns=["image_id", "path", "reason"]).sort_values("image_id")
            buf = table.to_csv(index=False)
            atomic_write_text(excl_path, buf)
        elif excl_path.exists():
            excl_path.unlink()  # an earlier run's bad images are readable now
        report.excluded = excluded
        atomic_write_text(marker, json.dumps({**settings, "complete": True}, indent=1) + "\n")
    report.notes.append(f"use         data.benchmark: {adapter.name}, data.root: {out}")
    return report
