"""``drx import authors``: the authors' own checkpoints, read without running pickled code, scored by
``drx predict`` and ``drx.load_scorer`` exactly as the authors' maths scores them."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pickle
import sys
import uuid

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import drx
from data_fixtures import write_image
from drx.cli import main as drx_main
from drx.config import load_config
from drx.data.transforms import to_tensor
from drx.errors import CheckpointError, ConfigError
from drx.testing.authors import AuthorsModel
from drx.testing.perturb import perturb_parameters_
from drx.train.authors import authors_model_config, import_authors
from drx.train.checkpoint import BEST_NAME, load_checkpoint
from tests.conftest import TINY_MODEL

# A stand-in for yacs.config.CfgNode (a dict subclass with attributes in its __dict__), written to
# a module that is deleted after pickling: on load the class exists nowhere, as for a user without yacs.
FAKE_YACS = '''
class CfgNode(dict):
    def __init__(self, init=None):
        super().__init__({k: CfgNode(v) if isinstance(v, dict) else v for k, v in (init or {}).items()})
        self.__dict__["__immutable__"] = False
        self.__dict__["__new_allowed__"] = False
'''


class _CreatesAFile:
    """Unpickling this calls open(path, "w"): a stand-in for any code a pickle can run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _RunsAShellCommand:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _authors_checkpoint(state_dict, config, path, **extra):
    """What the authors' utils.py save_checkpoint writes."""
    torch.save({"model": state_dict, "optimizer": {"state": {}, "param_groups": [{"lr": 2e-6, "params": [0, 1]}]},
                "lr_scheduler": {"decay_t": 462, "base_values": [2e-4]}, "max_plcc": torch.tensor(0.93),
                "scaler": {"scale": 65536.0, "_growth_tracker": 7}, "epoch": 8, "config": config, **extra}, path)
    return path


@pytest.fixture(scope="module")
def authors(tmp_path_factory):
    """The authors' model at tiny sizes with every parameter perturbed, saved as their training
    script saves it (a yacs-like config included), a preset with those sizes, and 64-px images."""
    root = tmp_path_factory.mktemp("authors")
    cfg = load_config({"model": {**TINY_MODEL, "compat": "authors"}}).model
    torch.manual_seed(0)
    model = perturb_parameters_(AuthorsModel(cfg), seed=5).eval()
    state_dict = model.authors_state_dict()
    name = f"fake_yacs_{uuid.uuid4().hex[:8]}"
    (root / f"{name}.py").write_text(FAKE_YACS)
    sys.path.insert(0, str(root))
    try:
        config = importlib.import_module(name).CfgNode({"DATA": {"DATASET": "koniq", "TEST_PATCH_NUM": 15, "CROP_SIZE": (384, 384)}})
        path = _authors_checkpoint(state_dict, config, root / "ckpt_epoch_8.pth")
    finally:
        sys.path.remove(str(root))
        sys.modules.pop(name)
        (root / f"{name}.py").unlink()
    assert importlib.util.find_spec(name) is None
    with pytest.raises(pickle.UnpicklingError, match=f"{name}.CfgNode"):  # torch alone refuses the file
        torch.load(path, weights_only=True)
    preset = root / "tiny-authors.yaml"
    preset.write_text(yaml.safe_dump({"base": "paper", "model": TINY_MODEL, "data": {"test_crops": 2, "resize": None, "num_workers": 0},
                                      "train": {"precision": "fp32"}}))
    images = root / "images"
    for i in range(3):
        write_image(images / f"img{i}.png", size=(64, 64), seed=10 + i)
    return model, state_dict, path, preset, images, name


def _authors_scores(model, images):
    files = sorted(images.glob("*.png"))
    x = torch.stack([to_tensor(np.asarray(Image.open(f).convert("RGB"))) for f in files])
    score, weights = model(x)
    return score.double().numpy(), weights.double().numpy()


def test_the_imported_checkpoint_scores_as_the_authors_maths(authors, tmp_path, capsys):
    model, _, path, preset, images, yacs = authors
    out = tmp_path / "imported"
    assert drx_main(["import", "authors", str(path), "--out", str(out), "--preset", str(preset)]) == 0
    said = capsys.readouterr().out
    assert f"read {path}: 230 weight tensors, epoch 8, max PLCC 0.9300" in said
    assert (f"skipped: config ({yacs}.CfgNode): a class outside torch's allow-list, kept as inert data and never run; not needed; "
            "only its DATA.DATASET is read, as plain data") in said
    assert "not imported: lr_scheduler, optimizer, scaler (training state" in said
    assert "benchmark koniq (from the checkpoint's config DATA.DATASET)" in said
    assert ("ignored weights (built but never run by the authors' forward): L1.bias, L1.weight, L2.bias, L2.weight, "
            "backbone.head.bias, backbone.head.weight") in said
    state = load_checkpoint(out / BEST_NAME)
    assert state["config"]["model"]["compat"] == "authors" and state["config"]["train"]["target_range"] is None
    assert state["mos_range"] == [0.0, 100.0] and state["imported"]["epoch"] == 8
    # Weights only: scored, not resumed (a clear error, before any work).
    assert drx_main(["train", "--config", str(preset), "--resume", str(out), "--out", str(tmp_path / "resumed")]) == 2
    assert "holds weights only" in capsys.readouterr().err

    want, want_weights = _authors_scores(model, images)
    assert np.ptp(want) > 1e-3  # the images score differently: the comparison below is not of constants
    assert drx_main(["predict", str(out), str(images), "--format", "json"]) == 0
    predicted = json.loads(capsys.readouterr().out)["predictions"]
    prompts = load_config("paper").model.prior.prompts
    np.testing.assert_allclose([p["score"] for p in predicted], want, rtol=0, atol=1e-5)
    np.testing.assert_allclose([[p["expert_weights"][k] for k in prompts] for p in predicted], want_weights, rtol=0, atol=1e-5)

    scorer = drx.load_scorer(out, device="cpu")
    batch = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
                         for f in sorted(images.glob("*.png"))])
    result = scorer(batch)
    np.testing.assert_allclose(result.scores, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(result.expert_weights[prompts].to_numpy(), want_weights, rtol=0, atol=1e-5)


def test_the_architecture_is_inferred_from_the_tensors(authors, tmp_path):
    model, _, path, preset, images, _ = authors
    # From the paper preset, only what the weights cannot say is given: the attention heads.
    with pytest.raises(ConfigError, match=r"not in the weights\. Give it: --set model\.backbone\.kwargs\.num_heads=N"):
        import_authors(path, tmp_path / "a")
    heads = ["model.backbone.kwargs.num_heads=2", "model.prior.arch_overrides.vision_cfg.head_width=16",
             "model.prior.arch_overrides.text_cfg.heads=2", "data.resize=null"]
    result = import_authors(path, tmp_path / "b", overrides=heads)
    said = "\n".join(result.lines)
    for line in ("model.backbone.kwargs.embed_dim 64 (from backbone.*; deit3_small_patch16_384 has 384)",
                 "model.img_size 64 (from backbone.pos_embed; the preset says 384)",
                 "model.prior.arch_overrides.vision_cfg.image_size 32 (from head.*; ViT-B-32 has 224)",
                 "model.prior.arch_overrides.text_cfg.layers 2 (from head.*; ViT-B-32 has 12)"):
        assert f"inferred from the weights: {line}" in said
    assert "benchmark koniq (from the checkpoint's config DATA.DATASET); preset paper-koniq" in said
    assert result.config.data.test_crops == 15  # the paper-koniq preset's
    want, _ = _authors_scores(model, images)
    np.testing.assert_allclose(drx.load_scorer(tmp_path / "b", "cpu")(images).scores, want, rtol=0, atol=1e-5)


def test_the_paper_sized_layout_needs_no_flags():
    """The authors' full-size layout (built on the meta device: shapes only) has the reference's
    870 tensors and 272,139,274 parameters, and maps onto the paper preset unchanged."""
    paper = load_config("paper").model
    with torch.device("meta"):
        state_dict = AuthorsModel(paper).authors_state_dict()
    assert len(state_dict) == 870
    assert sum(v.numel() for k, v in state_dict.items() if not k.startswith("head.visual.")) == 272_139_274  # head.visual = head.clip.visual
    cfg, inferred, _ = authors_model_config(state_dict, paper)
    assert [line.split(" (")[0] for line in inferred] == ["model.variant full, model.compat authors",
                                                          "model.ddwm.groups [dis, sem, bri], model.ddwm.hidden [384, 32, 16]"]
    expected = paper.model_dump()
    expected.update(compat="authors")
    expected["backbone"]["pretrained"] = expected["prior"]["checkpoint"] = None
    assert cfg.model_dump() == expected


def test_a_pickle_that_would_run_code_runs_nothing(authors, tmp_path, capsys):
    _, state_dict, _, preset, _, _ = authors
    marker = tmp_path / "pwned"
    # open(marker, "w") in the file: kept as an inert placeholder, never called; the import works.
    opened = _authors_checkpoint(state_dict, {"DATA": {"DATASET": "koniq"}}, tmp_path / "open.pth", boom=_CreatesAFile(marker))
    assert drx_main(["import", "authors", str(opened), "--out", str(tmp_path / "a"), "--preset", str(preset)]) == 0
    assert "skipped: boom (io.open)" in capsys.readouterr().out
    assert not marker.exists()
    # os.system in the file: a module torch never allows, so the file is refused, unread.
    shell = _authors_checkpoint(state_dict, {}, tmp_path / "shell.pth", boom=_RunsAShellCommand(marker))
    assert drx_main(["import", "authors", str(shell), "--out", str(tmp_path / "b"), "--preset", str(preset)]) == 2
    err = capsys.readouterr().err
    assert "could not be read without running code it holds, so it was refused: Trying to load unsupported GLOBAL" in err
    assert f"{os.system.__module__}.system" in err and "weights_only` set to `False`" not in err
    assert not marker.exists() and not (tmp_path / "b").exists()
    # The payload really runs code when unpickled: the test would catch a reader that unpickles.
    pickle.loads(pickle.dumps(_CreatesAFile(marker)))
    assert marker.exists()


def test_files_that_are_not_the_authors_checkpoint_are_named(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"model": {"blocks.0.weight": torch.zeros(2)}}, other)
    with pytest.raises(CheckpointError, match=r"is not the authors' dascore_vit_models"):
        import_authors(other, tmp_path / "out")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"is not a torch.save zip file"):
        import_authors(text, tmp_path / "out")
    with pytest.raises(CheckpointError, match=r"does not exist"):
        import_authors(tmp_path / "missing.pth", tmp_path / "out")
