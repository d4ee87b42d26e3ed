"""Checkpoints that cannot run code, and the training inputs' preprocessing carried to predict
(issue 15, items 6 and 2)."""

from __future__ import annotations

import io
import json
import pickle
import random
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from data_fixtures import make_csv
from drx.cli import main as drx_main
from drx.config import load_config
from drx.data.benchmarks import prepare_benchmark
from drx.errors import CheckpointError
from drx.train.checkpoint import BEST_NAME, CHECKPOINT_NAME, FORMAT, load_checkpoint, restore_rng, rng_state, save_checkpoint
from drx.train.predict import load_trained, predict_images
from drx.train.trainer import run_trial

QUICK = ["train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=8", "train.eval_batch_size=64", "data.test_crops=1",
         "train.warmup_epochs=0"]


# ------------------------------------------------------------------------------- nothing runs


class _CreatesAFile:
    """Unpickling this calls open(path, "w"): a stand-in for any code a pickle can run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _crafted(kind: str, marker) -> bytes:
    payload = {"format": FORMAT, "model": {}, "config": {}, "boom": _CreatesAFile(marker)}
    if kind == "torch.save":  # a zip holding data.pkl, as torch.save writes
        buf = io.BytesIO()
        torch.save(payload, buf)
        return buf.getvalue()
    if kind == "pickle-0":  # protocol 0 starts with text, not with the 0x80 protocol byte
        return pickle.dumps(payload, protocol=0)
    return pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)


@pytest.mark.parametrize("kind", ["torch.save", "pickle-0", "pickle-5"])
def test_a_crafted_pickle_is_refused_and_creates_nothing(tmp_path, capsys, kind):
    marker = tmp_path / "pwned"
    for name in (BEST_NAME, "checkpoint.pt"):
        path = tmp_path / name
        path.write_bytes(_crafted(kind, marker))
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        expected = "is a pickle-based file" if kind != "pickle-0" else "is not a readable safetensors checkpoint"
        assert expected in str(err.value) and str(path) in str(err.value)
        # Through the commands: drx predict and drx train --resume.
        img = tmp_path / "img.png"
        Image.new("RGB", (80, 80), (120, 30, 200)).save(img)
        assert drx_main(["predict", str(path), str(img)]) == 2
        assert drx_main(["train", "--config", "tiny", "--resume", str(path), "--out", str(tmp_path / "run")]) == 2
        assert expected in capsys.readouterr().err
    assert not marker.exists()
    # The payload really runs code when unpickled: the test would catch a reader that unpickles.
    pickle.loads(pickle.dumps(_CreatesAFile(marker)))
    assert marker.exists()


def test_a_safetensors_file_without_drx_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(CheckpointError, match="without drx's metadata: not a drx trial checkpoint"):
        load_checkpoint(tmp_path / "x.safetensors")


def test_the_checkpoint_round_trips_weights_optimiser_and_rng_states(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    state = {"format": FORMAT, "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rng_state(),
             "best_value": float("nan"), "history": [{"val_srcc": float("-inf"), "best_epoch": None}], "best": True}
    path = save_checkpoint(state, tmp_path / CHECKPOINT_NAME)
    assert path.read_bytes()[:1] != b"\x80" and not zipfile.is_zipfile(path)
    back = load_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(back["model"][k], v)
    assert list(back["optimizer"]["state"]) == list(opt.state_dict()["state"])  # integer keys kept
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(back["optimizer"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(back["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
    assert np.isnan(back["best_value"]) and back["history"][0]["val_srcc"] == float("-inf") and back["history"][0]["best_epoch"] is None
    with pytest.raises(TypeError, match="checkpoint entry /fn: cannot store a function"):
        save_checkpoint({"fn": lambda: 0}, tmp_path / "bad.safetensors")


# ------------------------------------------------------------------ preprocessing carried to predict


def _png_csv(root, n, size):
    """A csv benchmark of PNG images (re-encoding loses nothing, so copies compare bit for bit)."""
    b = make_csv(root, n=n, size=size, groups=None)
    for rel, path in list(b.images.items()):
        img = Image.open(path).convert("RGB")
        path.unlink()
        img.save(path.with_suffix(".png"))
    (root / "labels.csv").write_text((root / "labels.csv").read_text().replace(".jpg", ".png").replace(".bmp", ".png"))
    return b


def test_predict_repeats_the_prepared_copy_resize_and_warns_on_other_scales(tmp_path, capsys):
    # Square originals of 192 px, prepared at shorter side 64: one crop position, so scores compare.
    b = _png_csv(tmp_path / "orig", 30, (192, 192))
    prepare_benchmark("csv", b.root, tmp_path / "prep", size=64, progress=False)
    prepared_root = tmp_path / "prep" / "csv"
    common = [*QUICK, "data.benchmark=csv", f"data.cache={tmp_path / 'cache'}", "data.split.val_fraction=0.25"]
    out = tmp_path / "run"
    run_trial(load_config("tiny", [*common, f"data.root={prepared_root}", "data.resize=null"]), out_dir=out, progress=False)
    record = load_checkpoint(out / BEST_NAME)["inputs"]
    assert record["prepared"]["resize"] == {"mode": "shorter", "size": 64} and record["resize"] is None
    assert record["prepared"]["source"] == str(b.root.absolute()) and record["train_short_side_px"] == 64.0

    trained = load_trained(out / BEST_NAME)
    original = next(iter(b.images.values())).with_suffix(".png")
    copy = prepared_root / original.relative_to(b.root)
    pred = predict_images(trained, [original, copy])
    scores = pred.scores.set_index("image")["score"]
    # The 192-px original is shrunk as `prepare` shrank it: the same score as its prepared copy,
    # and no warning (before, its 64-px crop covered a third of the image instead of all of it).
    assert scores[str(original)] == pytest.approx(scores[str(copy)], abs=1e-6)
    assert pred.warnings == []

    # A model trained on 64-px images as they are (nothing to repeat) warns about a 4x larger photo.
    small = _png_csv(tmp_path / "small", 30, (64, 64))
    run_trial(load_config("tiny", [*common, f"data.root={small.root}"]), out_dir=tmp_path / "plain", progress=False)
    big = tmp_path / "big.png"
    Image.open(copy).resize((256, 256)).save(big)
    rc = drx_main(["predict", str(tmp_path / "plain"), str(big), "--format", "json"])
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert rc == 0 and len(data["predictions"]) == 1
    assert "1 image(s) are at another scale than the training images (shorter side ~64 px" in data["warnings"][0]
    assert f"{big} (256 px, x4)" in data["warnings"][0]
    assert "drx predict: warning: 1 image(s) are at another scale" in captured.err
