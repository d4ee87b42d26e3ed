"""The Python API ``drx.load_scorer``: the same scores as ``drx predict``, from files, folders, PIL
images and tensors, and ``import drx`` stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import drx
from data_fixtures import make_csv, write_image
from drx.builtin import resolve
from drx.cli import main as drx_main
from drx.config import load_config
from drx.errors import DataError
from drx.model import build_model
from drx.train.trainer import run_trial

QUICK = ["train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=8", "train.eval_batch_size=64", "train.warmup_epochs=0",
         "model.backbone.pretrained=null"]


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    """A tiny trial trained for two steps on 24 small images, whose prior is a saved file (no
    built-in needed), and images to score: two larger than the crop (several crop positions) and
    one of exactly the crop size."""
    root = tmp_path_factory.mktemp("scorer")
    bench = make_csv(root / "bench", n=24, size=(72, 64))
    prior_cfg = load_config("tiny", ["model.prior.checkpoint=null", "model.backbone.pretrained=null"]).model
    prior_file = root / "prior.pt"
    torch.save(build_model(resolve(prior_cfg)).prior.build_state_for_export(), prior_file)
    cfg = load_config("tiny", [*QUICK, f"model.prior.checkpoint={prior_file}", "data.test_crops=3", "data.benchmark=csv",
                               f"data.root={bench.root}", f"data.cache={root / 'cache'}", "data.split.val_fraction=0.25"])
    run_trial(cfg, out_dir=root / "trial", progress=False)
    images = root / "images"
    for i, size in enumerate([(96, 80), (64, 64), (96, 80)]):
        write_image(images / f"photo-{i}.png", size=size, seed=i)
    return root / "trial", images, cfg


def test_load_scorer_gives_drx_predict_scores_for_a_folder_a_tensor_and_pil_images(trial, capsys):
    out, images, cfg = trial
    rc = drx_main(["predict", str(out), str(images), "--format", "json"])
    assert rc == 0
    cli = json.loads(capsys.readouterr().out)["predictions"]

    scorer = drx.load_scorer(out, device="cpu")
    assert scorer.prompts == cfg.model.prior.prompts and scorer.device == torch.device("cpu")
    folder = scorer(images)
    files = sorted(images.glob("*.png"))
    assert folder.images == [str(f) for f in files] == [p["image"] for p in cli]
    assert folder.scores.shape == (3,) and folder.scores.dtype == np.float64
    np.testing.assert_allclose(folder.scores, [p["score"] for p in cli], rtol=0, atol=1e-12)
    assert folder.expert_weights.shape == (3, len(scorer.prompts))
    assert list(folder.expert_weights.columns) == scorer.prompts and list(folder.expert_weights.index) == folder.images
    np.testing.assert_allclose(folder.expert_weights.to_numpy(), [[p["expert_weights"][k] for k in scorer.prompts] for p in cli], atol=1e-12)
    # Crop positions are fixed by the pixels, not the name: a copy of a picture under another name
    # (here with 3 crops at several possible positions) scores as the original.
    copy = images.parent / "elsewhere" / "renamed.png"
    copy.parent.mkdir(exist_ok=True)
    copy.write_bytes(files[0].read_bytes())
    np.testing.assert_allclose(scorer(copy).scores, folder.scores[:1], rtol=0, atol=1e-6)

    # The same pictures as in-memory images: PIL, a list of [3,H,W] tensors in [0, 1], and a batch of
    # the two same-sized ones; each scores exactly as its file.
    pil = [Image.open(f) for f in files]
    tensors = [torch.from_numpy(np.asarray(p.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1) for p in pil]
    np.testing.assert_allclose(scorer(pil).scores, folder.scores, rtol=0, atol=1e-6)
    listed = scorer(tensors)
    assert listed.images == ["tensor[0]", "tensor[1]", "tensor[2]"]
    np.testing.assert_allclose(listed.scores, folder.scores, rtol=0, atol=1e-6)
    batch = scorer(torch.stack([tensors[0], tensors[2]]), batch_size=4)
    np.testing.assert_allclose(batch.scores, folder.scores[[0, 2]], rtol=0, atol=1e-6)
    np.testing.assert_allclose(batch.expert_weights.to_numpy(), folder.expert_weights.to_numpy()[[0, 2]], atol=1e-6)


def test_bad_inputs_are_named(trial):
    out, images, _ = trial
    scorer = drx.load_scorer(out, device="cpu")
    missing = images / "nope.png"
    small = images.parent / "small.png"
    Image.new("RGB", (20, 20)).save(small)
    with pytest.raises(DataError) as err:
        scorer([images, missing, small])
    assert "could not score 2 image(s)" in str(err.value) and str(missing) in str(err.value) and "smaller than the 64x64 crop" in str(err.value)
    kept = scorer([images, missing, small], skip_errors=True)
    assert len(kept.scores) == 3 and [name for name, _ in kept.errors] == [str(missing), str(small)]
    normalised = (torch.rand(1, 3, 64, 64) - 0.45) / 0.22  # an ImageNet-normalised batch
    with pytest.raises(DataError, match=r"expected RGB values in \[0, 1\], not normalised"):
        scorer(normalised)
    with pytest.raises(DataError, match=r"expected an RGB image tensor \[3,H,W\]"):
        scorer(torch.rand(2, 1, 64, 64))


def test_import_drx_does_not_load_torch_until_load_scorer_is_used(tmp_path):
    code = ("import sys, drx; print('torch' in sys.modules); f = drx.load_scorer; "
            "print('torch' in sys.modules, f.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.split() == ["False", "True", "drx.train.predict"]
