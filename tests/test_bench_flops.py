"""`drx bench model`: FLOP per image, achieved FLOP/s, MFU and `--packed`, on the CPU with real torch.

The FLOP count `drx bench model` reports (from its measurement subprocess) is checked against a
count made here, in the test's own process, with torch's FlopCounterMode over the forward and
backward of a freshly built model of the same config, input shape and loss.
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, bmm_flop, sdpa_backward_flop_count, sdpa_flop_count

from drx.bench import model as bench
from drx.builtin import resolve
from drx.cli import main
from drx.config import VARIANTS, load_config
from drx.model import build_model
from drx.train.optim import build_loss

# torch counts its CPU fused attention as zero (its table has formulas for the GPU kernels only):
# the test applies torch's attention formulas to it, as the GPU kernels are counted.
_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(q, k, v),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda g, q, k, v, *a, out_shape=None, **kw: sdpa_backward_flop_count(g, q, k, v),
}


def _bench(preset: str, variant: str, batch: int, **kwargs) -> list[dict]:
    # One thread: FLOP counts do not depend on it, and on 2 busy cores it is the faster setting.
    return bench.bench_model(
        preset, [], [variant], ["default"], batch=batch, steps=1, warmup=0, device="cpu", precision="fp32",
        threads=kwargs.pop("threads", 1), check_diff=False, progress=lambda _: None, **kwargs,
    )


def _counted_here(preset: str, variant: str, batch: int) -> tuple[float, dict[str, float]]:
    """FLOP per image of forward + loss + backward, counted in this process: (total, by operator)."""
    cfg = load_config(preset, [f"model.variant={variant}", "model.prior.checkpoint=null", "model.backbone.pretrained=null"])
    model = build_model(resolve(cfg.model)).train()
    images = torch.randn(batch, 3, *model.input_size)
    targets = torch.rand(batch)
    with FlopCounterMode(display=False, custom_mapping=_ATTENTION) as counter:
        build_loss(cfg.train)(model(images).score, targets).backward()
    by_op = {str(op): n / batch for op, n in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops() / batch, by_op


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_flops_per_image_equal_an_independent_count(variant):
    (rec,) = _bench("tiny", variant, batch=2)
    total, by_op = _counted_here("tiny", variant, batch=2)
    assert rec["flops_per_image"] == total > 0
    assert rec["flops_by_op"] == by_op
    assert rec["gflops_per_image"] == pytest.approx(total / 1e9)
    # TFLOP/s = FLOP/image x images/s; no MFU on the CPU without a peak.
    assert rec["achieved_tflops"] == pytest.approx(total * rec["images_per_s"] / 1e12)
    assert rec["achieved_gflops"] == pytest.approx(rec["achieved_tflops"] * 1e3)
    assert rec["mfu"] is None and rec["peak_tflops"] is None


def test_paper_full_flops_per_image_at_batch_1():
    # DeiT-III-S at 384 px and a ViT-B/32 prior: one timed step at batch 1 is the cheapest honest
    # run; the count here overlaps the subprocess's start-up (imports, model build) to save time.
    with ThreadPoolExecutor(1) as pool:
        measured = pool.submit(_bench, "paper", "full", 1)
        total, by_op = _counted_here("paper", "full", batch=1)
        (rec,) = measured.result()
    assert rec["flops_per_image"] == total
    assert rec["flops_by_op"] == by_op
    # The encoder alone (577 tokens, 12 blocks of width 384) is about 31 GFLOP forward, three
    # times that with the backward.
    assert 90e9 < total < 150e9


def test_flops_per_image_do_not_depend_on_the_batch():
    (one,) = _bench("tiny", "full", batch=1)
    (two,) = _bench("tiny", "full", batch=2, peak_override=0.5)
    assert one["flops_per_image"] == two["flops_per_image"] > 0
    # (torch may run a product as mm at one batch and addmm at another: only the total is fixed.)
    assert sum(one["flops_by_op"].values()) == one["flops_per_image"]
    # With --peak-tflops the CPU gets an MFU against that peak.
    assert two["peak_tflops"] == 0.5 and two["peak_source"] == "--peak-tflops"
    assert two["mfu"] == pytest.approx(two["achieved_tflops"] / 0.5)


def test_packed_two_copies_report_each_and_their_sum(tmp_path, capsys):
    out = tmp_path / "bench.json"
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    args = p.parse_args(["--device", "cpu", "--variants", "full", "--batch", "2", "--steps", "3", "--warmup", "1",
                         "--no-diff", "--packed", "2", "--json", str(out)])
    assert bench.run(args) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    rows, (agg,) = res["records"], res["aggregates"]
    assert sorted(r["copy"] for r in rows) == [0, 1] and all(r["copies"] == 2 for r in rows)
    # Each copy gets its share of the cores as threads (1 each on 2 cores, at least 1).
    assert all(r["threads"] == max(1, len(os.sched_getaffinity(0)) // 2) for r in rows)
    assert rows[0]["flops_per_image"] == rows[1]["flops_per_image"] > 0
    assert agg["copies"] == 2
    assert agg["images_per_s"] == pytest.approx(sum(r["images_per_s"] for r in rows))
    assert agg["achieved_tflops"] == pytest.approx(sum(r["achieved_tflops"] for r in rows))
    assert agg["achieved_gflops"] == pytest.approx(sum(r["achieved_gflops"] for r in rows))
    assert agg["peak_mem_mb"] == pytest.approx(sum(r["peak_mem_mb"] for r in rows))
    assert agg["mfu"] is None
    # The copies' timed loops start at one barrier, so their windows overlap.
    assert agg["window_overlap"] > 0
    for column in ("GFLOP/image", "GFLOP/s", "MFU", "all 2 copies at once", "--peak-tflops"):
        assert column in printed


def test_cpu_attention_counts_as_torch_counts_the_gpu_kernels():
    # The math backend runs attention as plain bmm's (counted by torch as they are); the fused
    # kernels' backward also recomputes the scores, one more q @ k^T, as torch's GPU formulas count.
    q, k, v = (torch.randn(2, 3, 17, 8, requires_grad=True) for _ in range(3))
    _, fused, _ = bench.count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    assert fused == counter.get_total_flops() + bmm_flop((6, 17, 8), (6, 8, 17)) > 0


def test_peaks_come_from_the_table_and_an_unknown_gpu_gets_no_guess():
    assert bench.peak_tflops("NVIDIA H200", "bf16")[0] == 989.5
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "bf16")[0] == 989.5
    assert bench.peak_tflops("NVIDIA H100 PCIe", "bf16")[0] == 756.5
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB", "tf32")[0] == 156.0
    assert bench.peak_tflops("NVIDIA A10", "bf16")[0] == 125.0  # not the A100's
    assert bench.peak_tflops("Tesla V100-SXM2-32GB", "fp16")[0] == 125.0
    assert bench.peak_tflops("Tesla V100-SXM2-32GB", "bf16") is None  # no bf16 tensor cores
    assert bench.peak_tflops("NVIDIA A10G", "bf16") is None
    rec = {"device": "cuda", "device_name": "NVIDIA Future GPU", "peak_precision": "bf16", "peak_tflops": None}
    note = bench.peak_note([rec])
    assert "NVIDIA Future GPU" in note and "--peak-tflops" in note and "\n" not in note


@pytest.mark.parametrize(
    "argv, option, expected",
    [(["--packed", "0"], "--packed", "whole number >= 1"), (["--peak-tflops", "-1"], "--peak-tflops", "greater than 0")],
)
def test_bad_options_are_refused_naming_the_option(argv, option, expected, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "model", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}:" in err and expected in err
