"""One table of deploy/gpu-check.sh's figures, and $OUT/gpu-check.json.

    python deploy/gpu_summary.py OUT [--failed "NAMES"]   print the table, write OUT/gpu-check.json
    python deploy/gpu_summary.py OUT --images-per-s        print the compiled (else eager) step's images/s

Reads the JSON files the script's steps wrote (``drx bench model --json``, ``drx bench data --json``);
a step that failed or wrote nothing is named in the table, never filled in.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd


def _read(out: Path, name: str) -> dict[str, Any] | None:
    path = out / f"{name}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        print(f"gpu_summary: {path} is not JSON ({exc}); left out", file=sys.stderr)
        return None


def _full_default(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """The aggregate row of the `full` variant's default path (all copies together when packed)."""
    if doc is None:
        return None
    rows = [r for r in doc["aggregates"] if r["variant"] == "full" and r["impl"] == "default"]
    return rows[0] if rows else None


def step_rate(out: Path) -> float | None:
    """images/s of one compiled trial's step, else of the eager one (what the loader must feed)."""
    for name in ("model_compiled", "model_eager"):
        row = _full_default(_read(out, name))
        if row is not None:
            return float(row["images_per_s"])
    return None


def summary(out: Path, failed: list[str]) -> dict[str, Any]:
    """Everything gpu-check.sh measured, as one JSON-able dict (see the module docstring)."""
    docs = {n: _read(out, n) for n in ("model_eager", "model_compiled", "model_packed")}
    eager, compiled, packed = (_full_default(d) for d in docs.values())
    variants = _read(out, "model_variants")
    data = _read(out, "data")
    rows = []
    for label, row in (("full, eager (today's step)", eager), ("full, compiled", compiled), ("full, compiled, packed", packed)):
        if row is not None:
            rows.append({"step": label, "copies": row.get("copies", 1), "images/s": row["images_per_s"],
                         "TFLOP/s": row.get("achieved_tflops"), "MFU": row.get("mfu"), "peak MB": row.get("peak_mem_mb")})
    speedup = compiled["images_per_s"] / eager["images_per_s"] if eager and compiled else None
    return {
        "gpu": (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").is_file() else None,
        "steps": rows,
        "compiled_speedup": speedup,
        "packed_mfu": packed.get("mfu") if packed else None,
        "variants": variants["aggregates"] if variants else None,
        # The line each bench model run printed about its peak (the same for every run on one GPU).
        "peak": next((d["peak"] for d in [*docs.values(), variants] if d and d.get("peak")), None),
        "data": data,
        "failed": failed,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the folder gpu-check.sh wrote ($OUT)")
    ap.add_argument("--failed", default="", help="names of the steps that failed, space-separated")
    ap.add_argument("--images-per-s", action="store_true", help="print the step's images/s and exit (1 if none)")
    args = ap.parse_args(argv)
    if not args.out.is_dir():
        ap.error(f"{args.out}: no such folder (expected gpu-check.sh's $OUT)")
    if args.images_per_s:
        rate = step_rate(args.out)
        if rate is None:
            return 1
        print(f"{rate:.1f}")
        return 0
    doc = summary(args.out, args.failed.split())
    (args.out / "gpu-check.json").write_text(json.dumps(doc, indent=1, default=str))
    print(f"\n=== gpu-check: {doc['gpu'] or 'no GPU named'}")
    if doc["steps"]:
        print(pd.DataFrame(doc["steps"]).to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.3g}"))
    if doc["compiled_speedup"] is not None:
        print(f"compiled vs eager, one trial: {doc['compiled_speedup']:.2f}x images/s")
    if doc["variants"]:
        cols = ["variant", "images_per_s", "gflops_per_image", "mfu", "peak_mem_mb"]
        print("\nevery variant (eager):\n" + pd.DataFrame(doc["variants"])[cols].to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.3g}"))
    if doc["data"]:
        print("\nloader at 384-px crops:\n" + json.dumps(doc["data"], indent=1, default=str)[:3000])
    if doc["failed"]:
        print(f"\nsteps that failed (their logs are in {args.out}): {', '.join(doc['failed'])}")
    print(f"wrote {args.out / 'gpu-check.json'}")
    return 1 if doc["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
