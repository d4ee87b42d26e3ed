"""``drx bench data``: input-pipeline throughput through the real TrainCrops + DataLoader."""

from __future__ import annotations

import argparse
import json
import time

from drx.data.benchmarks import load_manifest
from drx.data.commands import parse_options
from drx.data.images import ResizeConfig
from drx.data.loader import TrainCrops, make_train_loader
from drx.errors import DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``drx bench data``."""
    parser.add_argument("benchmark", metavar="BENCHMARK")
    parser.add_argument("--root", help="benchmark folder (optional for 'embedded')")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE", help="adapter option (repeatable)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    parser.add_argument("--crops", type=int, default=1, help="training crops per image (default 1)")
    parser.add_argument("--crop-size", type=int, default=None, help="crop side in px (default 384; 64 for the embedded benchmark, as the tiny preset)")
    parser.add_argument("--resize", type=int, default=None, help="resize the shorter side to N px first")
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument("--seconds", type=float, default=None, help="measure for S seconds (default 10)")
    stop.add_argument("--images", type=int, default=None, help="measure N images' worth of crops (N x crops)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")


def measure(
    manifest, batch: int, workers: int, crops: int, crop_size: int, resize: ResizeConfig | None,
    seconds: float | None, images: int | None,
) -> dict[str, float]:
    """Iterate training batches until the time or crop budget is spent; returns the rates.

    The first batch (worker start-up) is timed separately and left out of the rates.
    """
    ds = TrainCrops(manifest, crop_size, crops, resize=resize)
    target = None if images is None else images * crops
    steps = max(2, -(-(target or 0) // batch) + 1) if target is not None else 1_000_000
    loader = make_train_loader(ds, batch, seed=0, epoch=0, steps=steps, num_workers=workers)
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - t0
    n_crops, n_batches = 0, 0
    start = time.perf_counter()
    for x, _, _ in it:
        n_crops += x.shape[0]
        n_batches += 1
        elapsed = time.perf_counter() - start
        if target is not None and n_crops >= target:
            break
        if target is None and elapsed >= (seconds if seconds is not None else 10.0):
            break
    elapsed = max(time.perf_counter() - start, 1e-9)
    del it
    crops_s = n_crops / elapsed
    return {
        "crops": n_crops,
        "batches": n_batches,
        "seconds": elapsed,
        "first_batch_s": first,
        "crops_per_s": crops_s,
        # Every crop item decodes (and resizes) its image: one decode per crop.
        "decoded_images_per_s": crops_s,
        "training_images_per_s": crops_s / crops,
        "batches_per_s": n_batches / elapsed,
        "epoch_estimate_s": len(ds) / crops_s if crops_s > 0 else float("inf"),
    }


def run(args: argparse.Namespace) -> int:
    """Run ``drx bench data`` and print a small table; returns the exit code."""
    if args.crop_size is None:
        args.crop_size = 64 if args.benchmark == "embedded" else 384
    for name in ("batch", "crops", "crop_size"):
        if getattr(args, name) < 1:
            raise DataError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.workers < 0:
        raise DataError(f"--workers must be >= 0, got {args.workers}")
    manifest = load_manifest(args.benchmark, args.root, parse_options(args.option))
    resize = ResizeConfig(mode="shorter", size=args.resize) if args.resize else None
    res = measure(manifest, args.batch, args.workers, args.crops, args.crop_size, resize, args.seconds, args.images)
    rows = [
        ("benchmark", f"{args.benchmark} ({len(manifest)} images)"),
        ("setup", f"batch {args.batch}, workers {args.workers}, crops/image {args.crops}, crop {args.crop_size}"
                  + (f", resize {args.resize}" if args.resize else "")),
        ("measured", f"{res['crops']} crops in {res['batches']} batches, {res['seconds']:.2f} s (first batch {res['first_batch_s']:.2f} s, excluded)"),
        ("crops/s", f"{res['crops_per_s']:.1f}"),
        ("decoded images/s", f"{res['decoded_images_per_s']:.1f} (each crop decodes its image)"),
        ("training images/s", f"{res['training_images_per_s']:.1f} (crops/s / crops per image)"),
        ("batches/s", f"{res['batches_per_s']:.2f}"),
        ("epoch", f"{res['epoch_estimate_s']:.1f} s estimated for {len(manifest) * args.crops} crops"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": args.benchmark, "n_images": len(manifest), "batch": args.batch, "workers": args.workers,
                       "crops_per_image": args.crops, "crop_size": args.crop_size, "resize": args.resize, **res}, f, indent=1)
    return 0
