"""Pretrained weights in their official key layouts: saved, loaded back, outputs compared."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

from drx.config import load_config
from drx.errors import CheckpointError
from drx.model import build_model
from drx.model.weights import daclip_official_state_dict, deit3_official_state_dict
from drx.testing.perturb import perturb_parameters_
from tests.conftest import TINY_MODEL


def tiny(**overrides):
    return load_config({"model": TINY_MODEL}, {f"model.{k}": v for k, v in overrides.items()}).model


X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_deit3_official_layout_round_trip(tmp_path):
    src = perturb_parameters_(build_model(tiny(variant="image_encoder")), seed=1)
    official = deit3_official_state_dict(src.encoder.vit)
    assert "blocks.0.gamma_1" in official["model"] and "blocks.1.gamma_2" in official["model"]
    assert "head.weight" in official["model"]
    path = tmp_path / "deit_3_small_384_21k.pth"
    torch.save(official, path)
    dst = build_model(tiny(variant="image_encoder", backbone={**TINY_MODEL["backbone"], "pretrained": str(path)}))
    torch.testing.assert_close(dst.encoder(X), src.encoder(X), rtol=0, atol=0)


def test_timm_and_safetensors_layouts(tmp_path):
    src = perturb_parameters_(build_model(tiny(variant="image_encoder")), seed=2)
    sd = src.encoder.vit.state_dict()
    torch.save(sd, tmp_path / "timm.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    for name in ("timm.pth", "model.safetensors"):
        dst = build_model(tiny(variant="image_encoder", backbone={**TINY_MODEL["backbone"], "pretrained": str(tmp_path / name)}))
        torch.testing.assert_close(dst.encoder(X), src.encoder(X), rtol=0, atol=0)


def test_pos_embed_is_resampled_for_another_input_size(tmp_path):
    src = build_model(tiny(variant="image_encoder"))
    torch.save(deit3_official_state_dict(src.encoder.vit), tmp_path / "w.pth")
    bigger = tiny(variant="image_encoder", img_size=96, backbone={**TINY_MODEL["backbone"], "pretrained": str(tmp_path / "w.pth")})
    model = build_model(bigger)
    assert model.encoder.vit.pos_embed.shape[1] == 144
    assert model(torch.randn(1, 3, 96, 96)).score.shape == (1,)


def test_backbone_loading_is_strict_and_names_keys(tmp_path):
    src = build_model(tiny(variant="image_encoder"))
    sd = deit3_official_state_dict(src.encoder.vit)["model"]
    missing = {k: v for k, v in sd.items() if k != "blocks.0.norm1.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    extra = {**sd, "blocks.0.surprise": torch.zeros(3)}
    torch.save(extra, tmp_path / "extra.pth")
    cfg = lambda p: tiny(variant="image_encoder", backbone={**TINY_MODEL["backbone"], "pretrained": str(p)})  # noqa: E731
    with pytest.raises(CheckpointError, match="missing keys \\(1\\): blocks.0.norm1.weight"):
        build_model(cfg(tmp_path / "missing.pth"))
    with pytest.raises(CheckpointError, match="unexpected keys \\(1\\): blocks.0.surprise"):
        build_model(cfg(tmp_path / "extra.pth"))
    with pytest.raises(CheckpointError, match="nowhere.pth.*does not exist.*dl.fbaipublicfiles.com/deit/deit_3_small_384_21k.pth"):
        build_model(cfg(tmp_path / "nowhere.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth.*could not be read"):
        build_model(cfg(tmp_path / "junk.pth"))


def _daclip_file(model, tmp_path, seed=5, wrap=False):
    """The prior of `model` saved in the official DA-CLIP layout (with a random content tower)."""
    prior = model.prior
    content = perturb_parameters_(copy.deepcopy(prior.controller.visual), seed=seed)
    sd = daclip_official_state_dict(prior.text, content, prior.controller.visual, prior.controller.taps)
    if wrap:
        sd = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
    path = tmp_path / "daclip_ViT-B-32.pt"
    torch.save(sd, path)
    return path, content


def test_daclip_official_layout_round_trip(tmp_path):
    src = perturb_parameters_(build_model(tiny(variant="full")), seed=3)
    path, _ = _daclip_file(src, tmp_path)
    sd = torch.load(path)
    for key in (
        "clip.token_embedding.weight",
        "clip.transformer.resblocks.0.attn.in_proj_weight",
        "clip.visual.conv1.weight",
        "visual.conv1.weight",
        "visual_control.transformer.transformer.resblocks.1.mlp.c_fc.weight",
        "visual_control.transformer.zero_modules.1.weight",
        "visual_control.transformer.zero_modules.1.bias",
        "visual_control.proj",
        "logit_scale",
    ):
        assert key in sd, key
    dst = build_model(tiny(variant="full", prior={**TINY_MODEL["prior"], "checkpoint": str(path)}))
    dst.load_trainable_state_dict(src.trainable_state_dict())
    torch.testing.assert_close(dst.prior.text_features, src.prior.text_features, rtol=0, atol=0)
    out_src, out_dst = src(X), dst(X)
    torch.testing.assert_close(out_dst.score, out_src.score, rtol=0, atol=0)
    torch.testing.assert_close(out_dst.expert_weights, out_src.expert_weights, rtol=0, atol=0)


def test_daclip_container_and_ddp_prefix_are_unwrapped(tmp_path):
    src = perturb_parameters_(build_model(tiny(variant="full")), seed=4)
    path, _ = _daclip_file(src, tmp_path, wrap=True)
    dst = build_model(tiny(variant="full", prior={**TINY_MODEL["prior"], "checkpoint": str(path)}))
    torch.testing.assert_close(dst.prior.text_features, src.prior.text_features)


def test_clip_kind_reads_the_content_tower_from_daclip_and_open_clip_files(tmp_path):
    src = perturb_parameters_(build_model(tiny(variant="full")), seed=6)
    path, content = _daclip_file(src, tmp_path)
    clip_cfg = tiny(variant="full", prior={**TINY_MODEL["prior"], "kind": "clip", "checkpoint": str(path)})
    dst = build_model(clip_cfg)
    for k, v in content.state_dict().items():
        torch.testing.assert_close(dst.prior.visual.state_dict()[k], v, rtol=0, atol=0)
    # An open_clip CLIP state dict (no 'clip.' prefix) works for kind=clip, not for kind=daclip.
    plain = {k[len("clip."):]: v for k, v in torch.load(path).items() if k.startswith("clip.")}
    torch.save(plain, tmp_path / "open_clip.pt")
    build_model(tiny(variant="full", prior={**TINY_MODEL["prior"], "kind": "clip", "checkpoint": str(tmp_path / "open_clip.pt")}))
    with pytest.raises(CheckpointError, match="needs a DA-CLIP checkpoint"):
        build_model(tiny(variant="full", prior={**TINY_MODEL["prior"], "checkpoint": str(tmp_path / "open_clip.pt")}))


def test_daclip_loading_is_strict(tmp_path):
    src = build_model(tiny(variant="full"))
    path, _ = _daclip_file(src, tmp_path)
    sd = torch.load(path)
    del sd["visual_control.transformer.zero_modules.1.bias"]
    sd["visual_control.extra_head.weight"] = torch.zeros(2)
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError) as err:
        build_model(tiny(variant="full", prior={**TINY_MODEL["prior"], "checkpoint": str(tmp_path / "broken.pt")}))
    assert "controller.taps.1.bias" in str(err.value) and "controller.visual.extra_head.weight" in str(err.value)
    with pytest.raises(CheckpointError, match="daclip_ViT-B-32.pt"):
        build_model(tiny(variant="full", prior={**TINY_MODEL["prior"], "checkpoint": str(tmp_path / "absent.pt")}))


@pytest.mark.slow
def test_daclip_vit_b32_layout_has_the_official_631_tensors(tmp_path):
    """At the real ViT-B/32 architecture the exported file has DA-CLIP's 631 tensors."""
    cfg = load_config("paper").model
    model = build_model(cfg)
    prior = model.prior
    sd = daclip_official_state_dict(prior.text, prior.controller.visual, prior.controller.visual, prior.controller.taps)
    groups = {p: sum(k.startswith(p) for k in sd) for p in ("clip.", "visual.", "visual_control.")}
    assert len(sd) == 631 and groups == {"clip.": 302, "visual.": 152, "visual_control.": 176}
