"""The tiny encoder's pretraining (``builtin:tiny-deit3``); its photographs are tested in test_photos.py."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from drx.builtin.tiny_encoder import build_tiny_encoder, resolve_backbone_checkpoint
from drx.config import load_config
from drx.errors import ConfigError
from drx.model import build_model


def _smooth_photo(seed: int) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random((256, 320, 3)), sigma=(6, 6, 0))
    field = (field - field.min()) / (field.max() - field.min())
    return (field * 255).astype(np.uint8)


def test_the_built_encoder_loads_strictly_into_the_tiny_preset(tmp_path):
    path = tmp_path / "enc.pt"
    photos = {"a": _smooth_photo(0), "b": _smooth_photo(1)}
    record = build_tiny_encoder(path, log=lambda m: None, steps=4, draws=1, photos=photos)
    assert record["photographs"] == ["a", "b"] and record["samples"] == 2 * 9 and record["steps"] == 4
    assert path.with_suffix(".json").is_file()
    cfg = load_config("tiny", [f"model.backbone.pretrained={path}", "model.prior.checkpoint=null"])
    model = build_model(cfg.model)
    saved = torch.load(path, map_location="cpu", weights_only=True)["model"]
    assert torch.equal(model.encoder.vit.pos_embed, saved["pos_embed"])
    assert torch.equal(model.encoder.vit.blocks[3].ls2.gamma, saved["blocks.3.gamma_2"])


def test_builtin_encoder_names_and_architecture_are_checked():
    cfg = load_config("tiny", ["model.backbone.pretrained=builtin:tiny-deit4"])
    with pytest.raises(ConfigError, match=r"model.backbone.pretrained: unknown built-in 'builtin:tiny-deit4'; available: builtin:tiny-deit3"):
        resolve_backbone_checkpoint(cfg.model.backbone, cfg.model.img_size)
    cfg = load_config("tiny", ["model.backbone.kwargs.depth=2"])
    with pytest.raises(ConfigError, match=r"tiny preset's encoder.*'depth': 4"):
        resolve_backbone_checkpoint(cfg.model.backbone, cfg.model.img_size)
