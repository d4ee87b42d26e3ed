"""``drx bench model``: throughput, memory and distance to the hardware limit, side by side.

``drx bench model`` measures, per variant and implementation, the real training step (forward,
backward, AdamW step, as the trainer runs it) on random inputs: images/s, the memory once the
model is built, and the peak during the steps. Each measurement runs in a fresh subprocess, since
a process's peak memory only grows (CPU: peak RSS, reset after the build through
``/proc/self/clear_refs``; CUDA: ``torch.cuda.max_memory_allocated``). ``--impl both`` runs the
default path and ``naive`` (drx.testing.naive_forward: the authors' maths step by step) in the same invocation and prints
their ratios. ``max_abs_diff`` compares the two implementations' scores on the same perturbed
weights and input.

How far from the hardware limit each figure is:

* ``flops_per_image`` (FLOP per image; printed in GFLOP): ``torch.utils.flop_counter.FlopCounterMode``
  counts one more training step, outside the timed loop, on the same model, input and loss, and
  the total is divided by the batch. It counts what torch has formulas for, the matrix work
  (``mm``, ``addmm``, ``bmm``, convolutions, fused attention: ``2·m·n·k`` per product, forward and
  backward, the fused attention backward with its recomputed scores, as torch counts it on the
  GPU), not element-wise operations (norms, activations, the AdamW update), which the peaks below
  do not measure either. Part of a step that does not grow with the batch (the naive forward
  re-encodes the prompts every step) is spread over the batch.
* ``achieved_tflops`` (TFLOP/s) = FLOP per image × images/s; printed in GFLOP/s on the CPU.
* ``mfu`` = achieved / peak, the device's dense peak in TFLOP/s at the step's precision (bf16 or
  fp16 under autocast; fp32 on a GPU counts as tf32 when torch lets float32 matmuls use TF32),
  from :data:`PEAK_TFLOPS` (vendor datasheets), or ``--peak-tflops``. Empty on the CPU and on a
  GPU missing from the table unless ``--peak-tflops`` is given: no peak is guessed.

``--packed K`` runs K copies of each measurement at once on the same device, as Ray packs K
trials with fractional GPUs on one GPU: K subprocesses started together whose timed loops start
at one file barrier; on the CPU each gets its share of the cores as threads (unless ``--threads``).
Each copy's row is its own images/s and memory; :func:`aggregate` adds images/s, TFLOP/s and MFU
over the copies.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from drx.builtin import resolve
from drx.config import VARIANTS, load_config
from drx.model import build_model
from drx.testing.naive_forward import naive_forward
from drx.testing.perturb import perturb_parameters_
from drx.train.optim import autocast_dtype, build_loss, build_optimizer, compile_model, train_step, use_compile


# ------------------------------------------------------------------------------ hardware limits

#: Dense peak TFLOP/s by GPU and precision: (pattern searched in ``torch.cuda.get_device_name``,
#: GPU, {precision: TFLOP/s}, source). bf16/fp16 and tf32 are tensor-core peaks, fp32 the plain
#: FP32 units. Datasheets print tensor-core figures "with sparsity"; the dense peak is half of
#: that, the figure used here (a dense model cannot use 2:4 sparsity). A precision missing from an
#: entry has no tensor-core peak on that GPU (V100: no bf16, no tf32). Patterns are anchored so a
#: different product (A10G, RTX 4090 D, GH200) finds no entry rather than a wrong one.
PEAK_TFLOPS: list[tuple[str, str, dict[str, float], str]] = [
    # NVIDIA H200 Tensor Core GPU datasheet: H200 NVL FP32 60, TF32 835*, BF16/FP16 1,671* (* sparse).
    (r"\bH200 NVL\b", "H200 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
     "NVIDIA H200 datasheet (H200 NVL)"),
    # The same datasheet, H200 SXM: FP32 67, TF32 989*, BF16/FP16 1,979*. torch names it "NVIDIA H200".
    (r"\bH200$", "H200 SXM", {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0},
     "NVIDIA H200 datasheet (H200 SXM)"),
    # NVIDIA H100 Tensor Core GPU datasheet: H100 NVL FP32 60, TF32 835*, BF16/FP16 1,671*.
    (r"\bH100 NVL\b", "H100 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
     "NVIDIA H100 datasheet (H100 NVL)"),
    # H100 datasheet, H100 PCIe (HBM2e): FP32 51, TF32 756*, BF16/FP16 1,513*.
    (r"\bH100\b.*(PCIe|HBM2e)", "H100 PCIe", {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.0},
     "NVIDIA H100 datasheet (H100 PCIe)"),
    # H100 datasheet, H100 SXM (HBM3; torch: "NVIDIA H100 80GB HBM3"): FP32 67, TF32 989*, BF16/FP16 1,979*.
    (r"\bH100\b.*(SXM|HBM3)", "H100 SXM", {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0},
     "NVIDIA H100 datasheet (H100 SXM)"),
    # NVIDIA A100 Tensor Core GPU datasheet (40/80 GB, PCIe and SXM alike): FP32 19.5, TF32 156
    # (312*), BF16/FP16 312 (624*).
    (r"\bA100\b", "A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
     "NVIDIA A100 datasheet"),
    # NVIDIA L40S datasheet: FP32 91.6, TF32 183 (366*), BF16/FP16 362.05 (733*).
    (r"\bL40S\b", "L40S", {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6},
     "NVIDIA L40S datasheet"),
    # NVIDIA A10 datasheet: FP32 31.2, TF32 62.5 (125*), BF16/FP16 125 (250*).
    (r"\bA10$", "A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2},
     "NVIDIA A10 datasheet"),
    # NVIDIA Ada Lovelace GPU architecture whitepaper, GeForce RTX 4090: FP32 82.6, TF32 82.6
    # (165.2*), BF16/FP16 with FP32 accumulate (what torch's autocast uses) 165.2 (330.4*).
    (r"\bRTX 4090$", "GeForce RTX 4090", {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6},
     "NVIDIA Ada Lovelace GPU architecture whitepaper (RTX 4090)"),
    # NVIDIA V100 Tensor Core GPU datasheet: V100S PCIe FP32 16.4, tensor 130; V100 PCIe 14, 112;
    # V100 SXM2 15.7, 125 (Volta's tensor cores run fp16 only).
    (r"\bV100S\b", "V100S PCIe", {"fp16": 130.0, "fp32": 16.4}, "NVIDIA V100 datasheet (V100S PCIe)"),
    (r"\bV100-PCIE\b", "V100 PCIe", {"fp16": 112.0, "fp32": 14.0}, "NVIDIA V100 datasheet (V100 PCIe)"),
    (r"\bV100-SXM2\b", "V100 SXM2", {"fp16": 125.0, "fp32": 15.7}, "NVIDIA V100 datasheet (V100 SXM2)"),
]


def peak_tflops(device_name: str, precision: str) -> tuple[float, str] | None:
    """The dense peak (TFLOP/s) of a GPU named as ``torch.cuda.get_device_name`` names it, at
    ``precision`` (bf16, fp16, tf32 or fp32), with its source; None when the table has no entry."""
    for pattern, gpu, peaks, source in PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return (peaks[precision], f"{gpu} {precision} dense, {source}") if precision in peaks else None
    return None


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


# torch's FLOP table has formulas for the GPU's fused attention kernels but not for the CPU's
# (``_scaled_dot_product_flash_attention_for_cpu``), which would count as zero: apply torch's own
# attention formulas to it, so a step counts the same FLOPs on either device.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad_out, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad_out, q, k, v),
}


def count_flops(step: Callable[[], Any]) -> tuple[Any, int, dict[str, int]]:
    """Call ``step()`` once under ``FlopCounterMode``: (its result, FLOP in all, FLOP by operator)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        result = step()
    return result, counter.get_total_flops(), {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}


def _peak_precision(amp: torch.dtype | None, device: torch.device) -> str:
    """The precision the step's matrix products run at, as the peak table names it."""
    if amp is not None:
        return "bf16" if amp == torch.bfloat16 else "fp16"
    if device.type == "cuda" and torch.get_float32_matmul_precision() != "highest":
        return "tf32"  # float32 matmuls on tensor cores
    return "fp32"


def _barrier(sync_dir: str | None, name: str, copy: int, copies: int, timeout: float = 3600.0) -> None:
    """Wait until all ``copies`` packed workers reached ``name`` (a file per copy in ``sync_dir``)."""
    if copies <= 1 or not sync_dir:
        return
    folder = Path(sync_dir)
    (folder / f"{name}-{copy}").touch()
    deadline = time.monotonic() + timeout
    while len(list(folder.glob(f"{name}-*"))) < copies:
        if time.monotonic() > deadline:
            raise RuntimeError(f"packed copy {copy}: the other copies did not reach {name!r} within {timeout:.0f} s")
        time.sleep(0.002)


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
    # train.compile as the trainer reads it (auto: compiled on CUDA): the timed steps run what a
    # trial runs. The naive forward is the reference maths and stays eager.
    compiled = impl == "default" and use_compile(cfg.train, device)
    runner = compile_model(model) if compiled else model
    forward = (lambda x: runner(x).score) if impl == "default" else (lambda x: naive_forward(model, x).score)
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

    def step() -> torch.Tensor:
        return train_step(model, forward, images, targets, optimizer, loss_fn, amp, None, cfg.train.grad_clip)

    for _ in range(int(spec["warmup"])):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    copy, copies, sync_dir = int(spec.get("copy", 0)), int(spec.get("copies", 1)), spec.get("sync_dir")
    # Packed copies start their timed loops together, so the windows overlap.
    _barrier(sync_dir, "start", copy, copies)
    window_start = time.time()
    t0 = time.perf_counter()
    for _ in range(int(spec["steps"])):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    window_end = time.time()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = _rss_mb("VmHWM") if peak_reset else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    # The counted step runs after every copy's timed loop (its dispatch overhead would slow the
    # others) and after the peak is read (the counter's bookkeeping is not the step's memory).
    _barrier(sync_dir, "counted", copy, copies)
    # Counted on the eager module: the same maths, and FlopCounterMode sees every product there
    # (inside a compiled graph it would see the fused kernels' calls or none).
    def eager_step() -> torch.Tensor:
        return train_step(model, lambda x: model(x).score, images, targets, optimizer, loss_fn, amp, None, cfg.train.grad_clip)

    loss, flops, by_op = count_flops(eager_step if compiled else step)
    if not torch.isfinite(loss):
        raise RuntimeError("the counted step's loss is not finite, so it ran no backward pass; its FLOPs would be the forward's alone")
    return {
        "images_per_s": batch * int(spec["steps"]) / elapsed,
        "step_s": elapsed / int(spec["steps"]),
        "flops_per_image": flops / batch,
        "flops_by_op": {op: n / batch for op, n in by_op.items()},
        "peak_precision": _peak_precision(amp, device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "compiled": compiled,
        "fused_adamw": any(bool(g.get("fused")) for g in optimizer.param_groups),
        "copy": copy,
        "copies": copies,
        "window_start": window_start,
        "window_end": window_end,
        "model_mem_mb": model_mem,
        "peak_mem_mb": peak,
        "train_mem_mb": peak - model_mem,
        "base_mem_mb": base_rss,
        "peak_is_training_only": peak_reset,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def _worker_cmd(spec: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "drx.bench.model", "--worker", json.dumps(spec)]


def _worker_env() -> dict[str, str]:
    # A fixed mmap threshold makes glibc return freed large blocks to the OS, so peak RSS measures
    # the memory the step needs rather than what the allocator kept from earlier steps.
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "131072")}


def _run_worker(spec: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    proc = subprocess.run(_worker_cmd(spec), capture_output=True, text=True, timeout=timeout, env=_worker_env())
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({spec['variant']}/{spec.get('impl', 'diff')}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run_packed(spec: dict[str, Any], copies: int) -> list[dict[str, Any]]:
    """Run ``copies`` workers of one spec at once; their timed loops start at one barrier.

    Output goes to files, not pipes: a copy blocked on a full pipe would hold the others at the
    barrier. When one copy fails the others are stopped, since they would wait for it."""
    if copies == 1:
        return [_run_worker({**spec, "copy": 0, "copies": 1}, timeout=None)]
    with tempfile.TemporaryDirectory(prefix="drx-bench-model-") as sync_dir:
        logs = [(Path(sync_dir) / f"copy-{i}.out", Path(sync_dir) / f"copy-{i}.err") for i in range(copies)]
        procs: list[subprocess.Popen] = []
        try:
            for i, (out, err) in enumerate(logs):
                with out.open("w") as fo, err.open("w") as fe:
                    cmd = _worker_cmd({**spec, "copy": i, "copies": copies, "sync_dir": sync_dir})
                    procs.append(subprocess.Popen(cmd, stdout=fo, stderr=fe, env=_worker_env()))
            while any(p.poll() is None for p in procs) and not any(p.returncode for p in procs):
                time.sleep(0.2)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        failed = [i for i, p in enumerate(procs) if p.returncode != 0]
        if failed:
            # The copy that failed on its own, not one stopped above.
            i = next((i for i in failed if procs[i].returncode > 0), failed[0])
            raise RuntimeError(
                f"benchmark worker failed ({spec['variant']}/{spec['impl']}, packed copy {i} of {copies}):\n{logs[i][1].read_text()[-3000:]}"
            )
        return [json.loads(out.read_text().strip().splitlines()[-1]) for out, _ in logs]


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


def _with_limits(record: dict[str, Any], device: str, peak_override: float | None) -> dict[str, Any]:
    """Add GFLOP per image, achieved TFLOP/s and GFLOP/s, the peak (TFLOP/s) and MFU to a record."""
    achieved = record["flops_per_image"] * record["images_per_s"] / 1e12
    if peak_override is not None:
        peak: tuple[float, str] | None = (peak_override, "--peak-tflops")
    elif device == "cuda":
        peak = peak_tflops(record["device_name"], record["peak_precision"])
    else:
        peak = None  # a CPU's peak depends on its vector units and clocks: no table guesses it
    return {
        **record,
        "gflops_per_image": record["flops_per_image"] / 1e9,
        "achieved_tflops": achieved,
        "achieved_gflops": achieved * 1e3,
        "peak_tflops": peak[0] if peak else None,
        "peak_source": peak[1] if peak else None,
        "mfu": achieved / peak[0] if peak else None,
    }


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
    packed: int = 1,
    peak_override: float | None = None,
) -> list[dict[str, Any]]:
    """Measure each (variant, impl) in fresh subprocesses; returns one record per measurement and copy.

    A record holds images/s (per copy), FLOP per image (``flops_per_image``, and by operator in
    ``flops_by_op``), ``gflops_per_image``, ``achieved_tflops`` (TFLOP/s), ``achieved_gflops``,
    ``peak_tflops`` and its ``peak_source``, ``mfu`` (None without a peak), and memory in MB.
    ``packed`` copies run at once (:func:`aggregate` sums them); on the CPU each gets
    ``cores // packed`` threads unless ``threads`` is given. ``peak_override``: the peak in TFLOP/s.
    """
    if threads is None and packed > 1 and device == "cpu":
        threads = max(1, len(os.sched_getaffinity(0)) // packed)
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
            copies = f", {packed} copies at once" if packed > 1 else ""
            progress(f"  measuring {variant} / {impl} (batch {batch}, {steps} steps after {warmup} warm-up{copies}) ...")
            for res in _run_packed({**common, "mode": "train", "impl": impl}, packed):
                record = {"variant": variant, "impl": impl, "batch": batch, "device": device, "precision": precision, **res, "max_abs_diff": diff}
                records.append(_with_limits(record, device, peak_override))
    return records


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (variant, impl), the copies together: images/s, TFLOP/s and MFU summed over the copies.

    ``per_copy_images_per_s`` is their mean; ``peak_mem_mb`` and ``train_mem_mb`` are sums (what
    the device holds at most with all copies at their peaks; CUDA contexts not included).
    ``window_overlap``: the part of the longest timed window in which every copy was timing
    (1.0 for a single copy)."""
    df = pd.DataFrame(records)
    df["window_s"] = df["window_end"] - df["window_start"]
    agg = df.groupby(["variant", "impl"], sort=False).agg(
        batch=("batch", "first"),
        copies=("copy", "size"),
        images_per_s=("images_per_s", "sum"),
        per_copy_images_per_s=("images_per_s", "mean"),
        gflops_per_image=("gflops_per_image", "first"),
        achieved_tflops=("achieved_tflops", "sum"),
        achieved_gflops=("achieved_gflops", "sum"),
        peak_tflops=("peak_tflops", "first"),
        peak_mem_mb=("peak_mem_mb", "sum"),
        train_mem_mb=("train_mem_mb", "sum"),
        last_start=("window_start", "max"),
        first_end=("window_end", "min"),
        longest_window_s=("window_s", "max"),
    )
    agg["mfu"] = agg["achieved_tflops"] / agg["peak_tflops"]
    agg["window_overlap"] = ((agg["first_end"] - agg["last_start"]) / agg["longest_window_s"]).clip(lower=0.0)
    agg = agg.drop(columns=["last_start", "first_end", "longest_window_s"]).reset_index()
    # None rather than NaN where there is no peak: JSON null, "-" in the table.
    return agg.astype(object).where(agg.notna(), None).to_dict("records")


def ratios(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant: default vs naive speed-up and training-memory ratio (all copies together)."""
    out = []
    by = {(r["variant"], r["impl"]): r for r in aggregate(records)}
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


def peak_note(records: list[dict[str, Any]]) -> str:
    """One line: the peak MFU is measured against and its source, or why there is no MFU."""
    r = records[0]
    if r["peak_tflops"] is not None:
        return f"MFU against a peak of {r['peak_tflops']:g} TFLOP/s ({r['peak_source']})"
    if r["device"] == "cpu":
        return "MFU: empty on the CPU; pass --peak-tflops (the CPU's peak in TFLOP/s) to get it"
    return (
        f"MFU: no peak known for {r['device_name']!r} at {r['peak_precision']}; "
        f"pass --peak-tflops (its dense peak in TFLOP/s at {r['peak_precision']}) to get it"
    )


def format_table(records: list[dict[str, Any]]) -> str:
    """The per-copy table, the copies summed when packed, the default vs naive ratios, the peak."""
    df = pd.DataFrame(records)
    # None (no peak, no diff) as NaN, so the table prints it as "-".
    df[["mfu", "max_abs_diff"]] = df[["mfu", "max_abs_diff"]].astype(float)
    cpu = df["device"].iloc[0] == "cpu"
    # GFLOP/s on the CPU, where TFLOP/s would print as 0.00.
    rate, rate_col = ("GFLOP/s", "achieved_gflops") if cpu else ("TFLOP/s", "achieved_tflops")
    packed = df["copies"].max() > 1
    cols = ["variant", "impl", "compiled", *(["copy"] if packed else []), "batch", "images_per_s", "gflops_per_image", rate_col, "mfu",
            "model_mem_mb", "peak_mem_mb", "train_mem_mb", "max_abs_diff"]
    text = df[cols].rename(columns={"gflops_per_image": "GFLOP/image", rate_col: rate, "mfu": "MFU"}).to_string(
        index=False,
        na_rep="-",
        formatters={
            "images_per_s": "{:.2f}".format,
            "GFLOP/image": "{:.3f}".format,
            rate: "{:.2f}".format,
            "MFU": "{:.1%}".format,
            "model_mem_mb": "{:.0f}".format,
            "peak_mem_mb": "{:.0f}".format,
            "train_mem_mb": "{:.0f}".format,
            "max_abs_diff": "{:.1e}".format,
        },
    )
    if packed:
        agg = pd.DataFrame(aggregate(records))
        agg["mfu"] = agg["mfu"].astype(float)
        text += f"\n\nall {int(df['copies'].max())} copies at once (images/s, {rate} and MFU summed; memory summed):\n"
        text += agg[["variant", "impl", "copies", "images_per_s", "per_copy_images_per_s", rate_col, "mfu", "peak_mem_mb", "window_overlap"]].rename(
            columns={"per_copy_images_per_s": "per copy", rate_col: rate, "mfu": "MFU", "window_overlap": "overlap"}
        ).to_string(
            index=False,
            na_rep="-",
            formatters={
                "images_per_s": "{:.2f}".format,
                "per copy": "{:.2f}".format,
                rate: "{:.2f}".format,
                "MFU": "{:.1%}".format,
                "peak_mem_mb": "{:.0f}".format,
                "overlap": "{:.0%}".format,
            },
        )
    rat = ratios(records)
    if rat:
        text += "\n\ndefault vs naive (same run):\n"
        text += pd.DataFrame(rat).to_string(
            index=False,
            formatters={"speedup": "{:.2f}x".format, "train_mem_ratio": "{:.2f}".format, "peak_mem_ratio": "{:.2f}".format},
        )
    return text + "\n" + peak_note(records)


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
        check_diff=not args.no_diff, packed=args.packed, peak_override=args.peak_tflops,
    )
    for r in records:
        r["machine"] = machine
        r["preset"] = args.preset
    print(format_table(records))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps({"records": records, "aggregates": aggregate(records), "ratios": ratios(records), "peak": peak_note(records)}, indent=2)
        )
        print(f"wrote {args.json}")
    return 0


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a peak in TFLOP/s greater than 0, got {text!r}")
    return value


def add_arguments(m: argparse.ArgumentParser) -> None:
    """Arguments of ``drx bench model``."""
    m.add_argument("--preset", default="tiny", help="preset name or config file (default: tiny)")
    m.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted config override (repeatable)")
    m.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANTS)} (default: all)")
    m.add_argument("--impl", choices=["default", "naive", "both"], default="default",
                   help="the model's forward, the naive forward that follows the authors' maths step by step, or both")
    m.add_argument("--batch", type=_int_at_least(1), default=16)
    m.add_argument("--steps", type=_int_at_least(1), default=5, help="timed steps per measurement")
    m.add_argument("--warmup", type=_int_at_least(0), default=2, help="untimed steps first")
    m.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    m.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    m.add_argument("--threads", type=_int_at_least(1), help="torch threads in each measurement (default: torch's; packed on the CPU: cores // K)")
    m.add_argument("--packed", type=_int_at_least(1), default=1, metavar="K",
                   help="run K copies of each measurement at once on the device, as Ray packs K trials on one GPU "
                        "(default 1); prints each copy and their sum")
    m.add_argument("--peak-tflops", type=_positive_float, metavar="X",
                   help="the device's peak in TFLOP/s for MFU (default: the datasheet's dense peak of known GPUs; none on the CPU)")
    m.add_argument("--no-diff", action="store_true", help="skip the default vs naive output check")
    m.add_argument("--json", help="write the records (variant, impl, batch, images_per_s, flops_per_image, mfu, ...) to this file")
    m.set_defaults(func=run)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(json.loads(sys.argv[2]))))
    else:
        print("usage: python -m drx.bench.model --worker SPEC (internal); use `drx bench`", file=sys.stderr)
        sys.exit(2)
