"""``drx train``, ``drx predict`` and ``drx import``."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from drx.config import load_config
from drx.data.benchmarks import BENCHMARKS
from drx.metrics import METRICS
from drx.train.authors import import_authors
from drx.train.checkpoint import BEST_NAME, CHECKPOINT_NAME
from drx.train.tracking import track_overrides, tracked_trial
from drx.train.predict import load_scorer
from drx.train.trainer import run_trial


def _cmd_train(args: argparse.Namespace) -> int:

    cfg = load_config(args.config, [*(args.set or []), *track_overrides(args.track)])
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    # Trackers (tracking.backends / --track) get each epoch's report; TensorBoard files default beside the run.
    with tracked_trial(cfg, tensorboard_dir=out.resolve().parent / "tensorboard", resume=args.resume is not None) as report:
        result = run_trial(cfg, report=report, out_dir=out, resume_from=args.resume)
    summary = result.summary()
    print()
    print(_final_table(result))
    print(f"\nresult: {out / 'result.json'}  metrics: {out / 'metrics.csv'}  config: {out / 'config.yaml'}  checkpoint: {out / CHECKPOINT_NAME}")
    if result.status != "ok":
        print(f"trial {result.status}: {result.reason}", file=sys.stderr)
        return 1
    return 0 if summary["status"] == "ok" else 1


def _final_table(result) -> str:
    def f(v):
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"

    selected = f"selected epoch ({result.best_epoch}, selected on {result.select_on})" if result.best_epoch else f"selected epoch (none: {result.status})"
    rows = [("metric", f"last epoch ({result.epochs_completed})", selected)]
    for m in METRICS:
        rows.append((f"test {m}", f(result.final.get(f"test_{m}")), f(result.best.get(f"test_{m}"))))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def _cmd_predict(args: argparse.Namespace) -> int:
    # The command is a view of the Python API: the same scorer, with unreadable images listed, not raised.
    scorer = load_scorer(args.checkpoint, args.device)
    pred = scorer(args.images, batch_size=args.batch, skip_errors=True)
    errors, table, prompts = pred.errors, pred.table, scorer.prompts
    if args.format == "csv":
        sys.stdout.write(table.to_csv(index=False))
    elif args.format == "json":
        records = []
        for row in table.to_dict(orient="records"):
            rec = {"image": row["image"], "score": row["score"]}
            if prompts and prompts[0] in row:
                rec["expert_weights"] = {p: row[p] for p in prompts}
            records.append(rec)
        print(json.dumps({"predictions": records, "errors": [{"image": p, "reason": r} for p, r in errors], "warnings": pred.warnings}, indent=2))
    else:
        if len(table):
            shown = table.copy()
            experts = [p for p in prompts if p in shown.columns]
            if experts:
                # Which experts drove each score: the three largest DDWM weights.
                shown["top experts"] = shown[experts].apply(
                    lambda r: ", ".join(f"{k} {v:.2f}" for k, v in r.sort_values(ascending=False).head(3).items()), axis=1
                )
            print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for warning in pred.warnings:
        print(f"drx predict: warning: {warning}", file=sys.stderr)
    for path, reason in errors:
        print(f"drx predict: could not score {path}: {reason}", file=sys.stderr)
    return 1 if errors else 0


def _cmd_import_authors(args: argparse.Namespace) -> int:
    result = import_authors(args.checkpoint, args.out, preset=args.preset, benchmark=args.benchmark, overrides=args.set or [],
                            use_authors_resize=args.authors_resize)
    for line in result.lines:
        print(line)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train and evaluate one trial (no Ray)")
    t.add_argument("--config", required=True, metavar="FILE_OR_PRESET", help="YAML config or packaged preset (e.g. tiny, paper-koniq)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted override, e.g. train.lr=1e-4 (repeatable)")
    t.add_argument("--out", help="output folder (default: runs/<name>)")
    t.add_argument("--resume", metavar="CHECKPOINT", help=f"continue from the {CHECKPOINT_NAME} (or the folder) of an earlier run")
    t.add_argument("--track", metavar="BACKEND[,BACKEND]",
                   help="log the trial to experiment trackers: mlflow, tensorboard, wandb (sets tracking.backends; docs/training.md)")
    t.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", help="score images with a trained trial and name the experts behind each score")
    p.add_argument("checkpoint", help=f"{BEST_NAME} / {CHECKPOINT_NAME} (or the trial folder) written by drx train or drx import; "
                   "safetensors only: drx never unpickles a checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.set_defaults(func=_cmd_predict)

    i = sub.add_parser("import", help="turn another code's checkpoint into a drx trial that drx predict and drx.load_scorer score")
    sources = i.add_subparsers(dest="source", metavar="SOURCE")
    sources.required = True
    a = sources.add_parser("authors", help="the DR.Experts authors' ckpt_epoch_<n>.pth, read without running its pickled code",
                           description="Map the DR.Experts authors' training checkpoint (ckpt_epoch_<n>.pth: their model, DA-CLIP "
                           "included) to a drx trial with model.compat authors. The pickle is read by torch's weights-only "
                           "unpickler; classes outside its allow-list (their yacs config) are kept as inert data and reported.")
    a.add_argument("checkpoint", metavar="CKPT", help="the authors' ckpt_epoch_<n>.pth")
    a.add_argument("--out", required=True, metavar="DIR", help=f"trial folder to write ({BEST_NAME}, config.yaml)")
    a.add_argument("--benchmark", choices=BENCHMARKS,
                   help="the benchmark it was trained on (MOS scale, preset); default: the checkpoint's DATA.DATASET")
    a.add_argument("--preset", metavar="FILE_OR_PRESET",
                   help="config supplying what the weights do not say (prompts, heads, test crops); default paper-<benchmark> or paper")
    a.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted override of the preset, e.g. data.test_crops=20 (repeatable)")
    a.add_argument("--authors-resize", action="store_true",
                   help="resize images to the authors' fixed (height, width) for the benchmark (KonIQ, LIVE-FB: 512x384) instead of the preset's resize")
    a.set_defaults(func=_cmd_import_authors)
