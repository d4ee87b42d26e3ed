"""The modular DR.Experts model: variants, groups, experts, compat modes, gradients, bad input."""

from __future__ import annotations

import itertools

import pytest
import torch

from drx.config import DACLIP_PROMPTS, FEATURE_GROUPS, load_config
from drx.errors import ConfigError
from drx.model import build_model
from drx.testing.naive_forward import diff_attention_full, naive_forward
from drx.testing.perturb import perturb_parameters_
from tests.conftest import TINY_MODEL

VARIANTS = ["image_encoder", "prior_only", "dsdm", "full"]


def tiny(**overrides):
    flat = {f"model.{k}": v for k, v in overrides.items()}
    return load_config({"model": TINY_MODEL}, flat).model


def batch(n=3, size=64, seed=0, dtype=torch.float32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("variant,compat", list(itertools.product(VARIANTS, ["clean", "authors"])))
def test_every_variant_and_compat_runs_forward_and_backward(variant, compat):
    torch.manual_seed(0)
    model = build_model(tiny(variant=variant, compat=compat))
    out = model(batch())
    assert out.score.shape == (3,)
    if variant == "full":
        assert out.expert_weights.shape == (3, len(DACLIP_PROMPTS))
    else:
        assert out.expert_weights is None
    out.score.sum().backward()
    assert torch.isfinite(out.score).all()


def _subsets():
    for r in range(1, 4):
        yield from itertools.combinations(FEATURE_GROUPS, r)


@pytest.mark.parametrize("groups", list(_subsets()), ids=lambda g: "+".join(g))
def test_every_group_subset_runs(groups):
    model = build_model(tiny(variant="full", ddwm={"groups": list(groups), "hidden": [16, 8]}))
    out = model(batch())
    out.score.sum().backward()
    assert out.expert_weights.shape == (3, 10)
    # Only-sem weights see the same feature for every expert: no DSDM or prior is built.
    if groups == ("sem",):
        assert model.dsdm is None and model.prior is None
        assert torch.allclose(out.expert_weights, out.expert_weights[:, :1].expand_as(out.expert_weights))
    else:
        assert model.dsdm is not None


@pytest.mark.parametrize("n", range(1, 11))
def test_one_to_ten_experts(n):
    prompts = list(DACLIP_PROMPTS[:n])
    model = build_model(tiny(variant="full", prior={**TINY_MODEL["prior"], "prompts": prompts}))
    out = model(batch(2))
    assert out.expert_weights.shape == (2, n)
    assert model.prior.text_features.shape == (n, 32)


def test_custom_prompts_are_new_experts():
    prompts = ["overexposed", "underwater", "a photo with lens flare"]
    model = build_model(tiny(variant="full", prior={**TINY_MODEL["prior"], "prompts": prompts}))
    perturb_parameters_(model, seed=3)
    feats = model.prior.text_features
    assert feats.shape == (3, 32)
    assert not torch.allclose(feats[0], feats[1]) and not torch.allclose(feats[1], feats[2])
    assert model(batch(2)).expert_weights.shape == (2, 3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_intended_parameters_receive_gradients(variant):
    model = build_model(tiny(variant=variant))
    perturb_parameters_(model, seed=1)
    model(batch()).score.sum().backward()
    for name, p in model.named_parameters():
        if name.startswith("prior."):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad, name
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient in {variant}"
    if variant == "image_encoder":
        assert model.prior is None and model.dsdm is None
    if variant == "prior_only":
        assert model.encoder is None
        trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {"prior_norm", "head"}


def test_prior_is_frozen_and_in_eval_mode_even_when_model_trains():
    model = build_model(tiny(variant="full"))
    model.train()
    assert model.prior.training is False
    assert all(not p.requires_grad for p in model.prior.parameters())


def test_text_features_are_cached_not_recomputed_per_forward(monkeypatch):
    model = build_model(tiny(variant="full"))

    def boom(*a, **k):
        raise AssertionError("text tower ran during forward")

    monkeypatch.setattr(model.prior.text, "forward", boom)
    model(batch(2))  # must not touch the text tower
    with pytest.raises(AssertionError):
        naive_forward(model, batch(2))  # the naive forward recomputes them every forward


KINDS = {"prior_only": ["daclip", "clip"], "dsdm": ["daclip", "clip", "none"], "full": ["daclip", "clip", "none"]}


@pytest.mark.parametrize(
    "variant,compat,kind",
    [(v, c, k) for v in KINDS for c in ["clean", "authors"] for k in KINDS[v]],
)
def test_default_path_equals_naive_forward_on_perturbed_weights(variant, compat, kind):
    torch.manual_seed(0)
    cfg = tiny(variant=variant, compat=compat, prior={**TINY_MODEL["prior"], "kind": kind})
    model = perturb_parameters_(build_model(cfg), seed=7)
    x = batch(4, seed=1)
    fast, ref = model(x), naive_forward(model, x)
    torch.testing.assert_close(fast.score, ref.score, rtol=1e-5, atol=1e-5)
    if variant == "full":
        torch.testing.assert_close(fast.expert_weights, ref.expert_weights, rtol=1e-5, atol=1e-5)
    # In float64 the two are the same maths to rounding.
    model = model.double()
    if model.prior is not None:
        model.prior.refresh_text_features()  # the cached buffer was computed in float32
    xd = x.double()
    torch.testing.assert_close(model(xd).score, naive_forward(model, xd).score, rtol=1e-10, atol=1e-10)


def test_perturbation_matters_for_compat_and_controller():
    """The checks above would be vacuous if compat or the controller taps did not change outputs."""
    torch.manual_seed(0)
    clean = perturb_parameters_(build_model(tiny(variant="full", compat="clean")), seed=7)
    authors = build_model(tiny(variant="full", compat="authors"))
    authors.load_state_dict(clean.state_dict())
    authors.prior.refresh_text_features()
    x = batch(4, seed=1)
    assert (clean(x).score - authors(x).score).abs().max() > 1e-3
    # Zeroing the last controller tap changes the score: the controller path is live.
    before = clean(x).score
    with torch.no_grad():
        clean.prior.controller.taps[-1].weight.zero_()
        clean.prior.controller.taps[-1].bias.zero_()
    assert (clean(x).score - before).abs().max() > 1e-4


def test_authors_compat_input_is_double_normalised_and_clean_is_not():
    model = build_model(tiny(variant="full"))
    x = batch(2)
    prior = model.prior
    got = prior.prepare_input(x, model.imagenet_mean, model.imagenet_std, "authors")
    resized = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, (resized - prior.clip_mean) / prior.clip_std)
    clean = prior.prepare_input(x, model.imagenet_mean, model.imagenet_std, "clean")
    raw = x * model.imagenet_std + model.imagenet_mean
    want = torch.nn.functional.interpolate(raw, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(clean, (want - prior.clip_mean) / prior.clip_std)


@pytest.mark.parametrize("compat", ["clean", "authors"])
def test_full_attention_maps_on_request_agree_with_token0_path(compat):
    model = perturb_parameters_(build_model(tiny(variant="full", compat=compat)), seed=2).double()
    x = batch(2, dtype=torch.float64)
    out = model(x, return_attention=True)
    maps = out.attention
    b, e, t = 2, 10, 65
    assert maps["prior"].shape == (b, e, t)
    assert maps["refined"].shape == (b, e, t, t)
    assert maps["image"].shape == ((b, t, t) if compat == "clean" else (b, e, t, t))
    torch.testing.assert_close(maps["prior"].sum(-1), torch.ones(b, e, dtype=torch.float64))
    # Row 0 of the refined map, applied to the values, gives the token-0 refined features.
    tokens = model.encoder(x)
    experts, context = model.expert_and_context(x, tokens)
    image = model.dsdm.image_views(tokens, e, compat == "authors")
    for i in (0, e - 1):
        img_i = image if compat == "clean" else image[:, i]
        v = model.dsdm.v(torch.cat([experts[:, i, None].expand(b, t, -1), img_i], -1))
        out_i = maps["refined"][:, i, 0:1] @ v
        stacked = torch.cat([experts[:, i, None], context], 1)
        full = diff_attention_full(model.dsdm, experts[:, i], img_i, model.dsdm.norm_context(stacked))
        torch.testing.assert_close(out_i[:, 0], full[:, 0])
        torch.testing.assert_close(model.dsdm.output(out_i[:, 0]), out.refined[:, i])
    # Without the request, no maps are built.
    assert model(x).attention is None


def test_trainable_state_dict_excludes_the_prior():
    model = build_model(tiny(variant="full"))
    sd = model.trainable_state_dict()
    assert sd and not any(k.startswith("prior.") for k in sd)
    other = build_model(tiny(variant="full"))
    other.load_trainable_state_dict(sd)
    with pytest.raises(ValueError, match="missing"):
        other.load_trainable_state_dict({k: v for k, v in sd.items() if not k.startswith("head.")})


# ------------------------------------------------------------------------------------ bad input


def test_wrong_channel_count_and_size_are_clear_errors():
    model = build_model(tiny(variant="full"))
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        model(torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match="expects 64x64 inputs"):
        model(torch.randn(2, 3, 96, 96))
    with pytest.raises(ValueError, match="\\[B,3,H,W\\]"):
        model(torch.randn(3, 64, 64))


def test_bad_model_configs_name_the_key():
    with pytest.raises(ConfigError, match="model.prior.prompts.*at least one prompt"):
        tiny(prior={**TINY_MODEL["prior"], "prompts": []})
    with pytest.raises(ConfigError, match="model.ddwm.groups.*non-empty"):
        tiny(ddwm={"groups": []})
    with pytest.raises(ConfigError, match="model.variant.*did you mean 'full'"):
        tiny(variant="fulll")
    with pytest.raises(ConfigError, match="duplicate prompts"):
        tiny(prior={**TINY_MODEL["prior"], "prompts": ["hazy", "hazy"]})
    with pytest.raises(ConfigError, match="prior_only.*needs a prior"):
        tiny(variant="prior_only", prior={**TINY_MODEL["prior"], "kind": "none"})


def test_unknown_timm_name_suggests_close_names():
    cfg = tiny(backbone={"name": "deit3_smal_patch16_384"})
    with pytest.raises(ConfigError, match="unknown timm model.*deit3_small_patch16_384"):
        build_model(cfg)


def test_non_vit_backbone_is_rejected():
    cfg = tiny(backbone={"name": "resnet18", "kwargs": {}})
    with pytest.raises(ConfigError, match="not a Vision Transformer with a class token"):
        build_model(cfg)


@pytest.mark.slow
def test_paper_shapes_build_and_run():
    """DeiT-III-S at 384 with the DA-CLIP ViT-B/32 prior and 10 experts (random weights)."""
    model = build_model(load_config("paper").model)
    assert model.encoder.num_tokens == 577 and model.prior.grid_size == (7, 7)
    assert model.prior.width == 768 and model.prior.embed_dim == 512
    out = model(torch.randn(1, 3, 384, 384))
    assert out.expert_weights.shape == (1, 10)
