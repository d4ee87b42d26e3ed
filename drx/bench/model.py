"""``drx bench model``: throughput and memory, measured side by side.

``drx bench model`` measures, per variant and implementation, the real training step (forward,
backward, AdamW step, as the trainer runs it) on random inputs: images/s, the memory once the
model is built, and the peak during the steps. Each measurement runs in a fresh subprocess, since
a process's peak memory only grows (CPU: peak RSS, reset after the build through
``/proc/self/clear_refs``; CUDA: ``torch.cuda.max_memory_allocated``). ``--impl both`` runs the
default path and ``naive`` (drx.testing.naive_forward: the authors' maths step by step) in the same invocation and prints
their ratios. ``max_abs_diff`` compares the two implementations' scores on the same perturbed
weights and input.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from drx.builtin import resolve
from drx.config import VARIANTS, load_config
from drx.model import build_model
from drx.testing.naive_forward import naive_forward
from drx.testing.perturb import perturb_parameters_
from drx.train.optim import autocast_dtype, build_loss, build_optimizer, train_step


# ------------------------------------------------------------------------------------ worker side


def _rss_mb(field: str = "VmRSS") -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs inside the measurement subprocess."""

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    cfg = load_config(spec["config"], spec["overrides"])
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    base_rss = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(resolve(cfg.model)).to(device)
    model.train()
    batch = int(spec["batch"])
    size = model.input_size
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, *size, generator=gen).to(device)
    targets = torch.rand(batch, generator=gen).to(device)
    amp = autocast_dtype(spec["precision"], device)

    if spec["mode"] == "diff":
        # A correctness check: always in float32 (bf16 rounding would hide nothing and show noise).
        perturb_parameters_(model, seed=11)
        model.eval()
        with torch.no_grad():
            a = model(images).score.float()
            b = naive_forward(model, images).score.float()
        return {"max_abs_diff": float((a - b).abs().max()), "score_scale": float(b.abs().max())}

    impl = spec["impl"]
    forward = (lambda x: model(x).score) if impl == "default" else (lambda x: naive_forward(model, x).score)
    optimizer = build_optimizer(model, cfg.train, cfg.model.compat)
    loss_fn = build_loss(cfg.train)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        model_mem = torch.cuda.memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        peak_reset = True
    else:
        model_mem = _rss_mb() or float("nan")
        peak_reset = _reset_peak_rss()

    def step():
        train_step(model, forward, images, targets, optimizer, loss_fn, amp, None, cfg.train.grad_clip)

    for _ in range(int(spec["warmup"])):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(int(spec["steps"])):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = _rss_mb("VmHWM") if peak_reset else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {
        "images_per_s": batch * int(spec["steps"]) / elapsed,
        "step_s": elapsed / int(spec["steps"]),
        "model_mem_mb": model_mem,
        "peak_mem_mb": peak,
        "train_mem_mb": peak - model_mem,
        "base_mem_mb": base_rss,
        "peak_is_training_only": peak_reset,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def _run_worker(spec: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "drx.bench.model", "--worker", json.dumps(spec)]
    # A fixed mmap threshold makes glibc return freed large blocks to the OS, so peak RSS measures
    # the memory the step needs rather than what the allocator kept from earlier steps.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "131072")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({spec['variant']}/{spec.get('impl', 'diff')}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ driver side


def machine_description(device: str) -> str:
    """The machine in words: GPU (when measuring on one), CPU model and cores, torch version and threads."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads"
    if device == "cuda" and torch.cuda.is_available():
        desc = f"{torch.cuda.get_device_name(0)}; " + desc
    return desc


def bench_model(
    config: str,
    overrides: list[str],
    variants: list[str],
    impls: list[str],
    batch: int,
    steps: int,
    warmup: int,
    device: str,
    precision: str,
    threads: int | None,
    check_diff: bool = True,
    progress=print,
) -> list[dict[str, Any]]:
    """Measure each (variant, impl) in its own subprocess; returns one record per measurement."""
    records = []
    for variant in variants:
        common = {
            "config": config,
            # Weights do not change speed or memory: random initialisation, no files needed.
            "overrides": [*overrides, f"model.variant={variant}", "model.prior.checkpoint=null", "model.backbone.pretrained=null"],
            "variant": variant,
            "batch": batch,
            "device": device,
            "precision": precision,
            "threads": threads,
            "steps": steps,
            "warmup": warmup,
        }
        diff = None
        if check_diff:
            diff = _run_worker({**common, "mode": "diff"}, timeout=None)["max_abs_diff"]
        for impl in impls:
            progress(f"  measuring {variant} / {impl} (batch {batch}, {steps} steps after {warmup} warm-up) ...")
            res = _run_worker({**common, "mode": "train", "impl": impl}, timeout=None)
            records.append(
                {"variant": variant, "impl": impl, "batch": batch, "device": device, "precision": precision, **res, "max_abs_diff": diff}
            )
    return records


def ratios(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant: default vs naive speed-up and training-memory ratio."""
    out = []
    by = {(r["variant"], r["impl"]): r for r in records}
    for variant in dict.fromkeys(r["variant"] for r in records):
        d, ref = by.get((variant, "default")), by.get((variant, "naive"))
        if d and ref:
            out.append(
                {
                    "variant": variant,
                    "speedup": d["images_per_s"] / ref["images_per_s"],
                    "train_mem_ratio": d["train_mem_mb"] / ref["train_mem_mb"] if ref["train_mem_mb"] > 0 else float("nan"),
                    "peak_mem_ratio": d["peak_mem_mb"] / ref["peak_mem_mb"],
                }
            )
    return out


def format_table(records: list[dict[str, Any]]) -> str:
    df = pd.DataFrame(records)
    cols = ["variant", "impl", "batch", "images_per_s", "model_mem_mb", "peak_mem_mb", "train_mem_mb", "max_abs_diff"]
    text = df[cols].to_string(
        index=False,
        formatters={
            "images_per_s": "{:.2f}".format,
            "model_mem_mb": "{:.0f}".format,
            "peak_mem_mb": "{:.0f}".format,
            "train_mem_mb": "{:.0f}".format,
            "max_abs_diff": lambda v: "-" if v is None or v != v else f"{v:.1e}",
        },
    )
    rat = ratios(records)
    if rat:
        text += "\n\ndefault vs naive (same run):\n"
        text += pd.DataFrame(rat).to_string(
            index=False,
            formatters={"speedup": "{:.2f}x".format, "train_mem_ratio": "{:.2f}".format, "peak_mem_ratio": "{:.2f}".format},
        )
    return text


def run(args: argparse.Namespace) -> int:
    """Run ``drx bench model``; returns the exit code."""
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    variants = [v.strip() for v in args.variants.split(",")] if args.variants else list(VARIANTS)
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        print(f"drx bench model: unknown variant(s) {bad}; expected some of {list(VARIANTS)}", file=sys.stderr)
        return 2
    impls = ["default", "naive"] if args.impl == "both" else [args.impl]
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if device == "cuda" else "fp32"
    machine = machine_description(device)
    print(f"drx bench model: preset {args.preset}, {device} {precision}; {machine}")
    records = bench_model(
        args.preset, args.set or [], variants, impls, args.batch, args.steps, args.warmup, device, precision, args.threads,
        check_diff=not args.no_diff,
    )
    for r in records:
        r["machine"] = machine
        r["preset"] = args.preset
    print(format_table(records))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"records": records, "ratios": ratios(records)}, indent=2))
        print(f"wrote {args.json}")
    return 0


def add_arguments(m: argparse.ArgumentParser) -> None:
    """Arguments of ``drx bench model``."""
    m.add_argument("--preset", default="tiny", help="preset name or config file (default: tiny)")
    m.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted config override (repeatable)")
    m.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANTS)} (default: all)")
    m.add_argument("--impl", choices=["default", "naive", "both"], default="default",
                   help="the model's forward, the naive forward that follows the authors' maths step by step, or both")
    m.add_argument("--batch", type=int, default=16)
    m.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    m.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    m.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    m.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    m.add_argument("--threads", type=int, help="torch threads in each measurement (default: torch's)")
    m.add_argument("--no-diff", action="store_true", help="skip the default vs naive output check")
    m.add_argument("--json", help="write the records (variant, impl, batch, images_per_s, ...) to this file")
    m.set_defaults(func=run)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(json.loads(sys.argv[2]))))
    else:
        print("usage: python -m drx.bench.model --worker SPEC (internal); use `drx bench`", file=sys.stderr)
        sys.exit(2)
