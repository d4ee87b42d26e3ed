"""``drx bench data``: input-pipeline throughput through the real TrainCrops + DataLoader.

For each worker count (``--workers 0,1,2``) the crops/s of the loader and of one of its worker
processes; with ``--feed IMAGES_PER_S`` the workers needed to feed that training rate. With
``--synthetic-tree DIR`` it first writes a tree of real-sized photographs in the benchmark's
official layout (:func:`drx.testing.trees.write_benchmark_tree`) and measures on it. With
``--compare-decoders`` it also times, in one process and side by side, each way of turning a file
into a training crop that the installed libraries offer (:data:`DECODERS`); only ``pil``,
``prepared`` and ``cache`` are paths the loader takes in training.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as tvF
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset, get_worker_info
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from drx.data.benchmarks import load_manifest, prepare_benchmark
from drx.data.commands import parse_options
from drx.data.images import ResizeConfig, image_size, load_image, resize_image, resized_size
from drx.data.loader import TrainCrops, make_train_loader
from drx.data.transforms import crop_array, random_crop_position, to_tensor
from drx.errors import DataError
from drx.testing.trees import TREE_SIZES, write_benchmark_tree

#: Decoding paths of ``--compare-decoders``, in the order printed, with what each is.
DECODERS = {
    "pil": "PIL full decode + resize + crop: the loader today (TrainCrops)",
    "pil-draft": "PIL Image.draft (DCT-domain 1/2-1/8 downscale while decoding) + resize + crop; needs a resize",
    "torchvision": "torchvision.io.decode_jpeg on the CPU + antialiased bicubic resize + crop",
    "prepared": "PIL decode of the `drx data prepare` copy at training size (TrainCrops on it)",
    "cache": "the loader's decoded-image cache, data.cache_images (TrainCrops, after the first pass)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``drx bench data``."""
    parser.add_argument("benchmark", metavar="BENCHMARK")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--root", help="benchmark folder (optional for 'embedded')")
    where.add_argument("--synthetic-tree", metavar="DIR",
                       help=f"write (or reuse) a tree of real-sized JPEGs in the official layout in DIR and measure on it ({', '.join(TREE_SIZES)})")
    parser.add_argument("--tree-images", type=int, default=8, metavar="N", help="images in the --synthetic-tree (default 8)")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE", help="adapter option (repeatable)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--workers", default="0", metavar="N[,N...]",
                        help="DataLoader worker processes; a comma list measures each, e.g. 0,1,2 (default 0)")
    parser.add_argument("--feed", type=float, default=None, metavar="IMAGES_PER_S",
                        help="training rate to feed, in crops/s (e.g. 561: one paper trial on an H200; 4x that for 4 packed trials): "
                             "prints the workers needed")
    parser.add_argument("--crops", type=int, default=1, help="training crops per image (default 1)")
    parser.add_argument("--crop-size", type=int, default=None, help="crop side in px (default 384; 64 for the embedded benchmark, as the tiny preset)")
    parser.add_argument("--resize", type=int, default=None, help="resize the shorter side to N px first (the paper presets: 384)")
    parser.add_argument("--compare-decoders", action="store_true",
                        help=f"also time each decoding path side by side in one process: {', '.join(DECODERS)}")
    parser.add_argument("--prepared", metavar="CACHE",
                        help="with --compare-decoders: the `drx data prepare --cache` folder of this benchmark's prepared copy "
                             "(written there at the --resize size when absent)")
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument("--seconds", type=float, default=None, help="measure for S seconds per worker count (default 10)")
    stop.add_argument("--images", type=int, default=None, help="measure N images' worth of crops (N x crops) per worker count")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")


class _Counted(Dataset):
    """The real dataset, counting the items each loader process makes (a shared tensor, one slot per
    worker: no lock, and it survives both fork and spawn)."""

    def __init__(self, dataset: TrainCrops, workers: int):
        self.dataset = dataset
        self.made = torch.zeros(max(workers, 1), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        info = get_worker_info()
        self.made[info.id if info is not None else 0] += 1
        return self.dataset[i]


def measure(
    manifest, batch: int, workers: int, crops: int, crop_size: int, resize: ResizeConfig | None,
    seconds: float | None, images: int | None,
) -> dict[str, float]:
    """Iterate training batches until the time or crop budget is spent; returns the rates
    (crops/s, images/s, batches/s), the time of the first batch in seconds, and the crops made per
    CPU-second of a loading process (``crops_per_cpu_s``).

    The first batch (worker start-up) is timed separately and left out of the wall-clock rates.
    ``crops_per_cpu_s`` counts every crop the loading processes made (prefetched ones included)
    over the CPU time they used (the worker processes, or the main process with no workers): a
    process's crops/s when it has a core to itself, which other jobs on a shared machine lower
    far less than they lower wall-clock rates.
    """
    ds = _Counted(TrainCrops(manifest, crop_size, crops, resize=resize), workers)
    target = None if images is None else images * crops
    steps = max(2, -(-(target or 0) // batch) + 1) if target is not None else 1_000_000
    loader = make_train_loader(ds, batch, seed=0, epoch=0, steps=steps, num_workers=workers)
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN) if workers else time.process_time()
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
    if workers:
        del it  # shuts the workers down and joins them: their CPU time is then the children's
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    else:
        cpu = time.process_time() - cpu0
        del it
    made = int(ds.made.sum())
    crops_s = n_crops / elapsed
    return {
        "crops": n_crops,
        "batches": n_batches,
        "seconds": elapsed,
        "first_batch_s": first,
        "crops_per_s": crops_s,
        # A loader with no workers decodes in the main process: one process either way.
        "crops_per_s_per_worker": crops_s / max(workers, 1),
        "crops_made": made,
        "cpu_seconds": cpu,
        "crops_per_cpu_s": made / cpu if cpu > 0 else float("nan"),  # no CPU time read: no rate
        # Every crop item decodes (and resizes) its image: one decode per crop.
        "decoded_images_per_s": crops_s,
        "training_images_per_s": crops_s / crops,
        "batches_per_s": n_batches / elapsed,
        "epoch_estimate_s": len(ds) / crops_s if crops_s > 0 else float("inf"),
    }


def per_worker_run(runs: list[dict], cores: int) -> dict:
    """The run whose rates stand for one worker process: the one with the most workers that
    still leave the main process a core (workers + 1 <= `cores`), else the one with the fewest
    workers. More workers than that share cores, which lowers a worker's wall-clock rate below
    what it has on a machine with the cores (the GPU host)."""
    fitting = [r for r in runs if r["workers"] + 1 <= cores or r["workers"] == 0]
    return max(fitting, key=lambda r: r["workers"]) if fitting else min(runs, key=lambda r: r["workers"])


def workers_needed(feed: float, per_worker: float) -> int:
    """Loader worker processes needed to deliver `feed` crops/s at `per_worker` crops/s each."""
    if not (per_worker > 0 and math.isfinite(per_worker)):  # NaN: the run read no CPU time
        raise DataError(f"cannot feed {feed:g} crops/s: the measured rate per worker is {per_worker:g} crops/s")
    return math.ceil(feed / per_worker)


# ------------------------------------------------------------------------------ decoding paths


def _crop(arr: np.ndarray, crop_size: int, rng: np.random.Generator) -> torch.Tensor:
    """A random square crop of an HxWx3 uint8 array as TrainCrops makes it (float32 [3,S,S])."""
    top, left = random_crop_position(arr.shape[0], arr.shape[1], crop_size, rng)
    return to_tensor(crop_array(arr, top, left, crop_size))


def _draft_image(path: str, resize: ResizeConfig) -> Image.Image:
    """The image decoded by PIL's JPEG draft mode straight to the smallest power-of-two reduction
    at least as large as the resize target, then resized to that target (px)."""
    with Image.open(path) as im:
        im.draft("RGB", resized_size(im.width, im.height, resize))
        return resize_image(im.convert("RGB"), resize)


def _torchvision_image(path: str, resize: ResizeConfig | None) -> torch.Tensor:
    """uint8 [3,H,W]: torchvision's CPU decode_jpeg, then its antialiased resize to the target (px)."""
    img = decode_jpeg(read_file(path), mode=ImageReadMode.RGB)
    if resize is None:
        return img
    w, h = resized_size(img.shape[2], img.shape[1], resize)
    interp = tvF.InterpolationMode.BICUBIC if resize.mode == "shorter" else tvF.InterpolationMode.BILINEAR
    return tvF.resize(img, [h, w], interpolation=interp, antialias=True)


def _torchvision_crop(img: torch.Tensor, crop_size: int, rng: np.random.Generator) -> torch.Tensor:
    """A random square crop of a uint8 [3,H,W] tensor, ImageNet-normalised like TrainCrops' (float32 [3,S,S])."""
    top, left = random_crop_position(img.shape[1], img.shape[2], crop_size, rng)
    crop = tvF.crop(img, top, left, crop_size, crop_size)
    return tvF.normalize(crop.float() / 255.0, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)


def _prepared_manifest(args: argparse.Namespace, resize: ResizeConfig | None):
    """The manifest of the benchmark's prepared copy under ``--prepared``, written first when absent."""
    out = Path(args.prepared) / args.benchmark
    if not out.is_dir():
        prepare_benchmark(args.benchmark, args.root, args.prepared, size=resize.size if resize is not None else None,
                          options=parse_options(args.option), progress=False)
    return load_manifest(args.benchmark, str(out), parse_options(args.option))


def compare_decoders(manifest, crop_size: int, resize: ResizeConfig | None, prepared=None, seconds: float = 10.0) -> dict[str, dict]:
    """Crops/s of one process (one thread, as a loader worker) for each decoding path of
    :data:`DECODERS`, timed in interleaved rounds over the images so that a busy shared machine
    slows all of them alike; the first pass (which also fills the cache) is not timed.

    Per path: ``crops_per_s`` (crops per CPU-second of the thread: its rate with a core to
    itself), ``wall_crops_per_s`` (wall clock, here), ``ratio`` (``crops_per_s`` to ``pil``'s),
    ``mean_abs_diff`` (mean |difference| in 8-bit levels of its resized first image from the
    ``pil`` path's; NaN where not comparable), or ``skipped`` with the reason.
    """
    paths = manifest["path"].astype(str).tolist()
    rng = np.random.default_rng(0)
    pil_ds = TrainCrops(manifest, crop_size, 1, resize=resize)
    cache_ds = TrainCrops(manifest, crop_size, 1, resize=resize, cache_images=True)
    fns: dict[str, Callable[[int], torch.Tensor]] = {
        "pil": lambda i: pil_ds[i][0],
        "torchvision": lambda i: _torchvision_crop(_torchvision_image(paths[i], resize), crop_size, rng),
        "cache": lambda i: cache_ds[i][0],
    }
    skipped: dict[str, str] = {}
    if resize is not None:
        fns["pil-draft"] = lambda i: _crop(np.asarray(_draft_image(paths[i], resize)), crop_size, rng)
    else:
        skipped["pil-draft"] = "needs a resize (--resize): draft mode decodes at a reduced size"
    if prepared is not None:
        prep_ds = TrainCrops(prepared, crop_size, 1, resize=resize)
        fns["prepared"] = lambda i: prep_ds[i][0]
    else:
        skipped["prepared"] = "no prepared copy (--prepared CACHE)"
    if not all(p.lower().endswith((".jpg", ".jpeg")) for p in paths):
        skipped["torchvision"] = "decode_jpeg reads JPEG files only"
        del fns["torchvision"]
        if "pil-draft" in fns:
            skipped["pil-draft"] = "draft mode reduces JPEG files only"
            del fns["pil-draft"]
    # Pixels of the first image on each path, against the loader's: what a switch would change.
    reference = np.asarray(resize_image(load_image(paths[0]), resize), dtype=np.int16)
    resized = {
        "pil-draft": lambda: np.asarray(_draft_image(paths[0], resize)),
        "torchvision": lambda: _torchvision_image(paths[0], resize).permute(1, 2, 0).numpy(),
        "prepared": lambda: np.asarray(resize_image(load_image(str(prepared["path"].iloc[0])), resize)),
    }

    def diff(name: str) -> float:
        if name in ("pil", "cache"):
            return 0.0
        arr = resized[name]().astype(np.int16)
        return float(np.abs(arr - reference).mean()) if arr.shape == reference.shape else float("nan")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a loader worker (drx.data.loader._worker_init)
    try:
        for fn in fns.values():  # untimed first pass: file cache, the decoded-image cache
            for i in range(len(paths)):
                fn(i)
        spent = dict.fromkeys(fns, 0.0)
        cpu = dict.fromkeys(fns, 0.0)
        counts = dict.fromkeys(fns, 0)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or min(counts.values()) < 2:
            for i in range(len(paths)):
                for name, fn in fns.items():
                    t, c = time.perf_counter(), time.thread_time()
                    fn(i)
                    cpu[name] += time.thread_time() - c
                    spent[name] += time.perf_counter() - t
                    counts[name] += 1
    finally:
        torch.set_num_threads(threads)
    # CPU time of this thread (every path runs on it with one torch thread): what the path costs,
    # whatever else the machine runs.
    rates = {name: counts[name] / max(cpu[name], 1e-9) for name in fns}
    out: dict[str, dict] = {}
    for name in DECODERS:
        if name in rates:
            out[name] = {"crops_per_s": rates[name], "ratio": rates[name] / rates["pil"], "mean_abs_diff": diff(name),
                         "crops": counts[name], "cpu_seconds": cpu[name], "wall_crops_per_s": counts[name] / max(spent[name], 1e-9)}
        else:
            out[name] = {"skipped": skipped[name]}
    return out


# ---------------------------------------------------------------------------------------- run


def _worker_counts(text: str) -> list[int]:
    try:
        counts = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise DataError(f"--workers: expected worker counts such as 0 or 0,1,2, got {text!r}") from None
    bad = [v for v in counts if v < 0]
    if bad:
        raise DataError(f"--workers must be >= 0, got {bad[0]}")
    return list(dict.fromkeys(counts))


def _check_args(args: argparse.Namespace) -> list[int]:
    if args.crop_size is None:
        args.crop_size = 64 if args.benchmark == "embedded" else 384
    for name in ("batch", "crops", "crop_size", "tree_images"):
        if getattr(args, name) < 1:
            raise DataError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.feed is not None and not args.feed > 0:
        raise DataError(f"--feed must be > 0 images/s, got {args.feed:g}")
    if args.resize is not None and args.resize < 1:
        raise DataError(f"--resize must be >= 1 px, got {args.resize}")
    if args.seconds is not None and not args.seconds > 0:
        raise DataError(f"--seconds must be > 0, got {args.seconds:g}")
    if args.images is not None and args.images < 1:
        raise DataError(f"--images must be >= 1, got {args.images}")
    if args.prepared and not args.compare_decoders:
        raise DataError("--prepared is used only with --compare-decoders")
    if args.synthetic_tree is not None and args.benchmark not in TREE_SIZES:
        raise DataError(f"--synthetic-tree writes {', '.join(TREE_SIZES)} trees, not {args.benchmark!r}")
    return _worker_counts(args.workers)


def run(args: argparse.Namespace) -> int:
    """Run ``drx bench data`` and print small tables; returns the exit code."""
    counts = _check_args(args)
    if args.synthetic_tree is not None:
        write_benchmark_tree(args.benchmark, args.synthetic_tree, args.tree_images)
        args.root = args.synthetic_tree
    manifest = load_manifest(args.benchmark, args.root, parse_options(args.option))
    resize = ResizeConfig(mode="shorter", size=args.resize) if args.resize else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    runs = [{"workers": w, **measure(manifest, args.batch, w, args.crops, args.crop_size, resize, args.seconds, args.images)}
            for w in counts]
    chosen = per_worker_run(runs, cores)
    # A worker's crops/s with a core to itself: crops per CPU-second (wall-clock rates on a shared
    # machine depend on what else runs; both are printed).
    per_worker = chosen["crops_per_cpu_s"]
    needed = workers_needed(args.feed, per_worker) if args.feed is not None else None
    needed_wall = workers_needed(args.feed, chosen["crops_per_s_per_worker"]) if args.feed is not None else None
    w, h = image_size(manifest["path"].iloc[0])
    rows = [
        ("benchmark", f"{args.benchmark} ({len(manifest)} images, the first {w}x{h} px)"),
        ("setup", f"batch {args.batch}, crops/image {args.crops}, crop {args.crop_size} px"
                  + (f", resize shorter side to {args.resize} px" if args.resize else ", no resize") + f"; {cores} CPU cores"),
    ]
    head = f"{'workers':>7}  {'crops/s':>8}  {'per worker':>10}  {'per worker-CPU-s':>16}  {'first batch s':>13}  measured"
    table = [head]
    for r in runs:
        note = f"{r['crops']} crops in {r['seconds']:.1f} s"
        if r["workers"] + 1 > cores and r["workers"] > 0:
            note += f"; {r['workers'] + 1} processes share {cores} cores"
        table.append(f"{r['workers']:>7}  {r['crops_per_s']:>8.1f}  {r['crops_per_s_per_worker']:>10.1f}  {r['crops_per_cpu_s']:>16.1f}  "
                     f"{r['first_batch_s']:>13.2f}  {note}")
    rows2 = [
        ("crops/s", f"{chosen['crops_per_s']:.1f} (the {chosen['workers']}-worker run)"),
        ("decoded images/s", f"{chosen['decoded_images_per_s']:.1f} (each crop decodes its image)"),
        ("training images/s", f"{chosen['training_images_per_s']:.1f} (crops/s / crops per image)"),
        ("batches/s", f"{chosen['batches_per_s']:.2f}"),
        ("epoch", f"{chosen['epoch_estimate_s']:.1f} s estimated for {len(manifest) * args.crops} crops"),
    ]
    rows2 += [("per worker", f"{per_worker:.1f} crops/s with a core to itself ({chosen['crops_made']} crops in {chosen['cpu_seconds']:.1f} CPU-s, "
                            f"{chosen['workers']}-worker run); wall clock here {chosen['crops_per_s_per_worker']:.1f} crops/s")]
    if needed is not None:
        rows2.append(("workers needed", f"{needed} = ceil({args.feed:g} / {per_worker:.1f}) to feed {args.feed:g} images/s; "
                                        f"resources.cpu >= {needed + 1} with the training process "
                                        f"(wall-clock rate here: {needed_wall})"))
    decoders = None
    if args.compare_decoders:
        prepared = _prepared_manifest(args, resize) if args.prepared else None
        decoders = compare_decoders(manifest, args.crop_size, resize, prepared, args.seconds if args.seconds is not None else 10.0)
    width = max(len(k) for k, _ in rows + rows2)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    print("\n".join(table))
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows2))
    if decoders is not None:
        print("\ndecoding paths, one process with one thread (decode + resize + crop + normalise), interleaved; crops per CPU-second:")
        print(f"{'path':<12}  {'crops/s':>8}  {'x pil':>6}  {'mean |diff|':>11}" + ("  workers needed" if needed is not None else "") + "  what")
        for name, d in decoders.items():
            if "skipped" in d:
                print(f"{name:<12}  {'-':>8}  {'-':>6}  {'-':>11}" + ("  " + "-".rjust(14) if needed is not None else "") + f"  skipped: {d['skipped']}")
                continue
            d["workers_needed"] = workers_needed(args.feed, d["crops_per_s"]) if needed is not None else None
            print(f"{name:<12}  {d['crops_per_s']:>8.1f}  {d['ratio']:>6.2f}  {d['mean_abs_diff']:>11.2f}"
                  + (f"  {d['workers_needed']:>14}" if needed is not None else "") + f"  {DECODERS[name]}")
        print("(mean |diff|: 8-bit levels from the loader's resized image; workers needed here leave out the loader's own cost)")
    if args.json:
        result = {"benchmark": args.benchmark, "n_images": len(manifest), "image_size": [w, h], "batch": args.batch,
                  "crops_per_image": args.crops, "crop_size": args.crop_size, "resize": args.resize, "cores": cores,
                  # The chosen run's figures at the top level (one run: that run), as before worker lists.
                  **chosen, "runs": runs, "per_worker_crops_per_s": per_worker, "per_worker_from_workers": chosen["workers"],
                  "feed": args.feed, "workers_needed": needed, "workers_needed_wall_clock": needed_wall, "decoders": decoders}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0
