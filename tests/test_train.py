"""One trial: config files, the loop, metrics, determinism, divergence, checkpoints and resume, predict."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from drx.builtin import resolve
from drx.cli import main as drx_main
from drx.config import ConfigError, load_config, save_config
from drx.metrics import iqa_metrics, logistic4
from drx.train.checkpoint import BEST_NAME, CHECKPOINT_NAME, load_checkpoint
from drx.train.optim import LRSchedule, param_groups
from drx.train.trainer import run_trial

# A few optimiser steps of the tiny preset: enough to exercise every part of the loop.
QUICK = [
    "train.epochs=3",
    "train.steps_per_epoch=3",
    "train.batch_size=8",
    "train.eval_batch_size=64",
    "data.test_crops=1",
    "train.warmup_epochs=0",
]


def quick(*extra):
    return load_config("tiny", [*QUICK, *extra])


# ------------------------------------------------------------------------------------- metrics


def test_metrics_against_known_values():
    mos = np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    m = iqa_metrics(mos * 2 + 1, mos)
    assert m["srcc"] == pytest.approx(1.0) and m["plcc"] == pytest.approx(1.0) and m["krcc"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(float(np.sqrt(np.mean((mos + 1) ** 2))))
    rev = iqa_metrics(-mos, mos)
    assert rev["srcc"] == pytest.approx(-1.0)
    # A monotone but non-linear mapping: rank metrics stay 1, raw PLCC drops, the logistic fit restores it.
    x = np.linspace(-3, 3, 40)
    y = logistic4(x, 90.0, 10.0, 0.3, 0.6)
    m = iqa_metrics(x, y)
    assert m["srcc"] == pytest.approx(1.0)
    assert m["plcc"] < 0.97 and m["plcc_logistic"] > 0.999


def test_degenerate_predictions_give_nan_not_zero():
    m = iqa_metrics(np.ones(5), np.arange(5.0))
    assert math.isnan(m["srcc"]) and math.isnan(m["plcc"])
    assert m["rmse"] == pytest.approx(float(np.sqrt(np.mean((1 - np.arange(5.0)) ** 2))))


# ---------------------------------------------------------------------------- optimiser, schedule


def test_step_schedule_matches_the_reference():
    # Reference: 9 epochs, warm-up 3 from 2e-7, x0.1 every 3 epochs counted from 0.
    s = LRSchedule(2e-4, 900, 300, 2e-7, "step", 300, 0.1, 0.0)
    lr = lambda t: 2e-4 * s(t)  # noqa: E731
    assert lr(0) == pytest.approx(2e-7)
    assert lr(150) == pytest.approx(2e-7 + 150 * (2e-4 - 2e-7) / 300)
    assert lr(300) == pytest.approx(2e-5) and lr(599) == pytest.approx(2e-5)
    assert lr(600) == pytest.approx(2e-6) and lr(899) == pytest.approx(2e-6)


def test_param_groups_clean_and_authors():
    from drx.model import build_model

    model = build_model(resolve(load_config("tiny", ["model.prior.checkpoint=null"]).model))
    names = {id(p): n for n, p in model.named_parameters()}

    def undecayed(compat):
        groups = param_groups(model, 0.05, compat)
        return {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}

    clean = undecayed("clean")
    assert {"dsdm.alpha", "dsdm.lambda_", "encoder.vit.pos_embed", "encoder.vit.cls_token"} <= clean
    assert "dsdm.q1.weight" not in clean
    ref = undecayed("authors")
    assert not {"dsdm.alpha", "dsdm.lambda_", "encoder.vit.pos_embed", "encoder.vit.cls_token"} & ref
    assert "dsdm.q1.bias" in ref and "ddwm.mlp.1.weight" in ref  # biases and PReLU weights
    assert not any(n.startswith("prior.") for n in clean | ref)


def test_encoder_lr_scale_gives_the_encoder_its_own_rate():
    from drx.model import build_model
    from drx.train.optim import build_optimizer, build_scheduler

    cfg = load_config("tiny", ["model.prior.checkpoint=null", "model.backbone.pretrained=null", "train.encoder_lr_scale=0.1"])
    model = build_model(cfg.model)
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, cfg.train)
    rates = {names[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert rates["encoder.vit.blocks.0.attn.qkv.weight"] == pytest.approx(1e-4)
    assert rates["encoder.vit.cls_token"] == pytest.approx(1e-4)
    assert rates["dsdm.q1.weight"] == pytest.approx(1e-3) and rates["head.weight"] == pytest.approx(1e-3)
    assert len(rates) == sum(p.requires_grad for p in model.parameters())  # every parameter, once
    scheduler = build_scheduler(optimizer, cfg.train, steps_per_epoch=10)
    for _ in range(25):
        optimizer.step()
        scheduler.step()
    now = {names[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}
    # The schedule scales both rates by the same factor.
    assert now["encoder.vit.blocks.0.attn.qkv.weight"] / now["head.weight"] == pytest.approx(0.1)


# ------------------------------------------------------------------------------------ the loop


def test_trial_writes_metrics_result_config_and_checkpoint(tmp_path):
    cfg = quick()
    reports = []
    result = run_trial(cfg, report=lambda m, d: reports.append((m, d)), out_dir=tmp_path, progress=False)
    assert result.status == "ok" and result.epochs_completed == 3
    assert [r[0]["epoch"] for r in reports] == [1, 2, 3]
    assert all(r[1] == tmp_path for r in reports)
    for key in ("val_srcc", "val_plcc", "test_srcc", "test_plcc", "test_plcc_logistic", "test_krcc", "test_rmse", "train_loss", "lr"):
        assert key in reports[-1][0]
    summary = json.loads((tmp_path / "result.json").read_text())
    for key in ("status", "test_srcc", "test_plcc", "best_val_epoch", "best_val_test_srcc"):
        assert key in summary
    assert summary["best_val_epoch"] in (1, 2, 3)
    best = result.history[summary["best_val_epoch"] - 1]
    assert best["val_srcc"] == max(h["val_srcc"] for h in result.history)
    assert summary["best_val_test_srcc"] == pytest.approx(best["test_srcc"])
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3]
    assert (tmp_path / CHECKPOINT_NAME).is_file() and (tmp_path / BEST_NAME).is_file()
    # The checkpoint holds no prior weights.
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert not any(k.startswith("prior.") for k in state["model"])
    # The saved config reproduces the trial's config.
    assert load_config(tmp_path / "config.yaml").to_dict() == cfg.to_dict()


def test_select_on_test_selects_by_test_plcc(tmp_path):
    result = run_trial(quick("train.select_on=test"), progress=False)
    plccs = [h["test_plcc"] for h in result.history]
    best = max(range(3), key=lambda i: (plccs[i], i))  # >=: later epochs win ties
    assert result.best_epoch == best + 1


def test_same_config_and_seed_give_identical_metrics():
    a = run_trial(quick(), progress=False)
    b = run_trial(quick(), progress=False)
    assert _strip_times(a.history) == _strip_times(b.history)
    c = run_trial(quick("train.seed=1"), progress=False)
    assert _strip_times(c.history) != _strip_times(a.history)


def _strip_times(history):
    """Per-epoch metrics without timings; NaN (a logistic fit that did not converge) compares equal."""
    def same(v):
        return "nan" if isinstance(v, float) and math.isnan(v) else v

    return [{k: same(v) for k, v in h.items() if not k.endswith("_s")} for h in history]


def test_diverging_run_stops_with_status_diverged(tmp_path):
    reports = []
    result = run_trial(quick("train.lr=1e12", "train.grad_clip=null"), report=lambda m, d: reports.append(m), out_dir=tmp_path, progress=False)
    assert result.status == "diverged"
    assert result.diverged_epoch is not None and "non-finite loss" in result.reason
    assert reports[-1]["status"] == "diverged"
    assert len(result.history) == result.diverged_epoch  # it never trained on
    summary = json.loads((tmp_path / "result.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_epoch"] == result.diverged_epoch
    rc = drx_main(["train", "--config", "tiny", *sum((["--set", o] for o in QUICK), []), "--set", "train.lr=1e12", "--set", "train.grad_clip=null", "--out", str(tmp_path / "cli")])
    assert rc == 1


@pytest.mark.slow
def test_killed_trial_resumes_to_the_same_result(tmp_path):
    """Kill `drx train` with SIGKILL after an epoch's checkpoint, resume, compare to an uninterrupted run."""
    sets = [*QUICK, "train.epochs=4", "train.steps_per_epoch=6"]
    args = ["train", "--config", "tiny", *sum((["--set", o] for o in sets), [])]
    full = tmp_path / "full"
    assert drx_main([*args, "--out", str(full)]) == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "drx.cli", *args, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        if (killed / "metrics.csv").is_file() and len(pd.read_csv(killed / "metrics.csv")) >= 2:
            break
        if proc.poll() is not None:
            pytest.fail("the trial finished before it could be killed")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(pd.read_csv(killed / "metrics.csv"))
    assert 2 <= done < 4 and not (killed / "result.json").exists()
    assert drx_main([*args, "--out", str(killed), "--resume", str(killed / CHECKPOINT_NAME)]) == 0
    a = json.loads((full / "result.json").read_text())
    b = json.loads((killed / "result.json").read_text())
    for key in ("test_srcc", "test_plcc", "test_rmse", "val_srcc", "best_val_epoch", "best_val_test_srcc"):
        assert a[key] == b[key], key
    assert _strip_times(pd.read_csv(full / "metrics.csv").to_dict("records")) == _strip_times(pd.read_csv(killed / "metrics.csv").to_dict("records"))


# --------------------------------------------------------------------------------------- configs


def test_bad_configs_fail_clearly(capsys):
    with pytest.raises(ConfigError, match="train.lrr.*did you mean 'train.lr'"):
        load_config("tiny", ["train.lrr=1"])
    with pytest.raises(ConfigError, match="train.epochs = 0"):
        load_config("tiny", ["train.epochs=0"])
    with pytest.raises(ConfigError, match="neither a file nor a packaged preset; did you mean tiny"):
        load_config("tinyy")
    rc = drx_main(["train", "--config", "tiny", "--set", "model.ddwm.grups=[dis]"])
    assert rc == 2
    assert "model.ddwm.grups" in capsys.readouterr().err


def test_presets_inherit_and_merge(tmp_path):
    koniq = load_config("paper-koniq")
    assert koniq.model.backbone.name == "deit3_small_patch16_384"
    assert koniq.data.benchmark == "koniq" and koniq.data.train_crops == 3 and koniq.data.test_crops == 15
    assert koniq.train.lr == 2e-4 and koniq.train.epochs == 9 and koniq.train.warmup_epochs == 3
    child = tmp_path / "child.yaml"
    child.write_text("base: paper-koniq\ntrain:\n  lr: 1.0e-4\nmodel:\n  ddwm:\n    groups: [dis, sem]\n")
    cfg = load_config(child, ["train.batch_size=12"])
    assert cfg.train.lr == 1e-4 and cfg.train.batch_size == 12 and cfg.data.train_crops == 3
    assert cfg.model.ddwm.groups == ["dis", "sem"] and cfg.model.ddwm.hidden == [384, 32, 16]
    saved = save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(saved) == cfg


# --------------------------------------------------------------------------------------- predict


def test_predict_scores_a_folder_with_expert_weights_and_reports_bad_images(tmp_path, capsys):
    out = tmp_path / "trial"
    run_trial(quick("train.epochs=1"), out_dir=out, progress=False)
    from drx.data.embedded import ensure_embedded

    root = ensure_embedded()
    images = tmp_path / "images"
    images.mkdir()
    for name in ("skimage-astronaut-noisy-1.png", "skimage-astronaut-noisy-4.png", "skimage-chelsea-hazy-2.png"):
        (images / name).write_bytes((root / "images" / name).read_bytes())
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    Image.new("RGB", (20, 20)).save(images / "tiny.png")
    rc = drx_main(["predict", str(out / BEST_NAME), str(images), "--format", "json"])
    captured = capsys.readouterr()
    assert rc == 1
    data = json.loads(captured.out)
    scored = {Path(p["image"]).name: p for p in data["predictions"]}
    assert set(scored) == {"skimage-astronaut-noisy-1.png", "skimage-astronaut-noisy-4.png", "skimage-chelsea-hazy-2.png"}
    prompts = load_config("tiny").model.prior.prompts
    for p in scored.values():
        assert math.isfinite(p["score"]) and list(p["expert_weights"]) == prompts
    bad = {Path(e["image"]).name for e in data["errors"]}
    assert bad == {"broken.png", "tiny.png"}
    assert "broken.png" in captured.err and "smaller than the 64x64 crop" in captured.err
    # Table output names the experts behind each score; the same scores come out every time.
    rc = drx_main(["predict", str(out), str(images / "skimage-chelsea-hazy-2.png")])
    table = capsys.readouterr().out
    assert rc == 0 and "top experts" in table and "skimage-chelsea-hazy-2.png" in table
    # The same score as in the folder run, to the table's 3 decimals (a batch of 1 instead of 3 may
    # move the last float bits, so the rounded text can differ by one unit).
    row = next(line for line in table.splitlines() if "skimage-chelsea-hazy-2.png" in line).split()
    shown_score = float(row[row.index(next(t for t in row if t.endswith("skimage-chelsea-hazy-2.png"))) + 1])
    assert abs(shown_score - scored["skimage-chelsea-hazy-2.png"]["score"]) <= 1.5e-3


def test_predict_does_not_need_the_pretrained_encoder_file(tmp_path):
    from drx.model import build_model
    from drx.model.weights import deit3_official_state_dict
    from drx.train.predict import load_trained

    pretrained = tmp_path / "encoder.pt"
    torch.save(deit3_official_state_dict(build_model(load_config("tiny", ["model.prior.checkpoint=null", "model.backbone.pretrained=null"]).model).encoder.vit), pretrained)
    run_trial(quick(f"model.backbone.pretrained={pretrained}", "train.epochs=1"), out_dir=tmp_path / "run", progress=False)
    trained = load_checkpoint(tmp_path / "run" / BEST_NAME)["model"]
    pretrained.unlink()  # e.g. the checkpoint was copied to a machine that only predicts
    model = load_trained(tmp_path / "run" / BEST_NAME).model
    assert torch.equal(model.encoder.vit.pos_embed, trained["encoder.vit.pos_embed"])
