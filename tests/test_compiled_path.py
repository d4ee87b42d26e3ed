"""The fast paths of the training step (issue 17): ``train.compile`` and fused AdamW.

The compiled model scores as the eager one to float rounding (the tolerance the default path has
against the reference maths in test_model.py); a compiled training step gives the same loss and
the same updated weights; a compiled trial writes checkpoints with the eager trial's keys; fused
AdamW equals the CPU's default AdamW; the device, not a fallback, decides each path. Compiling is
slow on the CPU, so every model is compiled once (module-scoped fixtures) at a small batch.
"""

from __future__ import annotations

import copy

import pytest
import torch

from drx.config import load_config, without_tracking
from drx.errors import ConfigError
from drx.model import build_model
from drx.testing.perturb import perturb_parameters_
from drx.train import optim
from drx.train.checkpoint import BEST_NAME, CHECKPOINT_NAME, load_checkpoint
from drx.train.optim import build_loss, build_optimizer, compile_model, fused_adamw, train_step, use_compile
from drx.train.trainer import run_trial

# test_model.py's tolerance for the default path against the reference maths.
TOL = {"rtol": 1e-5, "atol": 1e-5}
# Random weights (no built-in files to build) on the tiny preset's architecture with one block per
# tower: every kind of layer is there, and inductor compiles a quarter of the graph (compiling the
# whole tiny model from a cold cache took minutes on 2 cores).
RANDOM_WEIGHTS = ["model.prior.checkpoint=null", "model.backbone.pretrained=null", "model.backbone.kwargs.depth=1",
                  "model.prior.arch_overrides.vision_cfg.layers=1", "model.prior.arch_overrides.text_cfg.layers=1"]
# The fewest steps of the tiny preset that still run every part of a trial (train, evaluate, save).
# Training batches of 8 and evaluation batches of 1 are the shapes the fixtures below compile, so
# the trial finds their code in inductor's on-disk cache instead of compiling it again (and one
# evaluation shape means no recompile for a last, shorter batch).
QUICK = ["train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=8", "train.eval_batch_size=1", "data.test_crops=1", "train.warmup_epochs=0"]


def tiny_model(variant: str, seed: int = 7) -> torch.nn.Module:
    cfg = load_config("tiny", [*RANDOM_WEIGHTS, f"model.variant={variant}"])
    torch.manual_seed(0)
    # Perturbed, so zero-initialised taps and identity LayerNorms cannot hide a difference.
    return perturb_parameters_(build_model(cfg.model), seed=seed)


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------- scores


@pytest.fixture(scope="module", params=["full", "image_encoder", "prior_only"])
def scored(request):
    """(eager output of a batch of 3, compiled outputs of its images one by one), in evaluation mode.

    One image at a time is the evaluation shape of the trial below (one compiled graph for both)
    and checks, on the way, that no image's score depends on the others in its batch.
    """
    model = tiny_model(request.param).eval()
    x = images(3)
    with torch.no_grad():
        eager = model(x)
        runner = compile_model(model)
        compiled = [runner(x[i : i + 1]) for i in range(len(x))]
    return request.param, eager, compiled


def test_the_compiled_model_scores_as_the_eager_one(scored):
    variant, eager, compiled = scored
    torch.testing.assert_close(torch.cat([c.score for c in compiled]), eager.score, **TOL)
    if variant == "full":
        torch.testing.assert_close(torch.cat([c.expert_weights for c in compiled]), eager.expert_weights, **TOL)
    else:
        assert all(c.expert_weights is None for c in compiled)


# ---------------------------------------------------------------------------- one training step


@pytest.fixture(scope="module")
def stepped():
    """The tiny preset's full model after one training step, eager and compiled, from the same weights."""
    cfg = load_config("tiny", [*RANDOM_WEIGHTS, "train.compile=true"])
    eager = tiny_model("full").train()
    compiled = copy.deepcopy(eager)
    x, y = images(8, seed=2), torch.rand(8, generator=torch.Generator().manual_seed(3))
    out = {}
    for name, model, runner in (("eager", eager, eager), ("compiled", compiled, compile_model(compiled))):
        optimizer = build_optimizer(model, cfg.train, cfg.model.compat)
        loss = train_step(model, lambda im: runner(im).score, x, y, optimizer, build_loss(cfg.train), None, None, cfg.train.grad_clip)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        out[name] = (loss, grads, model)
    return out


def test_a_compiled_training_step_gives_the_eager_loss_gradients_and_weights(stepped):
    (loss_e, grads_e, eager), (loss_c, grads_c, compiled) = stepped["eager"], stepped["compiled"]
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    assert grads_c.keys() == grads_e.keys() and len(grads_e) == sum(p.requires_grad for p in eager.parameters())
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], **TOL, msg=lambda m: f"gradient of {name}: {m}")
    weights_e, weights_c = eager.state_dict(), compiled.state_dict()
    assert weights_c.keys() == weights_e.keys()
    # AdamW's first step moves each weight by lr·g/(|g| + eps): a gradient within a few eps of zero
    # passes its rounding on amplified (up to lr/(4·eps) per unit), so the weights are compared to
    # a twentieth of the step size lr, the gradients above to the model's own tolerance.
    lr = load_config("tiny").train.lr
    for name in weights_e:
        torch.testing.assert_close(weights_c[name], weights_e[name], rtol=1e-5, atol=lr / 20, msg=lambda m: f"{name} after the step: {m}")


def test_compiling_leaves_the_model_its_own_state_dict_keys(stepped):
    compiled = stepped["compiled"][2]
    assert not any("_orig_mod" in k for k in compiled.state_dict())
    assert compiled.trainable_state_dict().keys() == stepped["eager"][2].trainable_state_dict().keys()


# ---------------------------------------------------------------------------------- fused AdamW


def test_fused_adamw_equals_the_default_adamw_on_the_cpu():
    """Three steps from the same gradients (the optimiser alone: a second forward would start from
    weights that already differ by rounding, which later gradients amplify)."""
    cfg = load_config("tiny", RANDOM_WEIGHTS)
    base = tiny_model("full").train()
    x, y = images(8, seed=4), torch.rand(8, generator=torch.Generator().manual_seed(5))
    build_loss(cfg.train)(base(x).score, y).backward()
    runs = {}
    for fused in (False, True):
        model = copy.deepcopy(base)  # with its gradients
        optimizer = build_optimizer(model, cfg.train, cfg.model.compat, fused=fused)
        assert all(bool(g.get("fused")) is fused for g in optimizer.param_groups)
        for _ in range(3):
            optimizer.step()
        runs[fused] = model.state_dict()
    for name, value in runs[False].items():
        torch.testing.assert_close(runs[True][name], value, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_the_device_decides_fused_adamw_and_compile():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert fused_adamw(cuda) and not fused_adamw(cpu)
    cfg = load_config("tiny", RANDOM_WEIGHTS)
    assert not any(g.get("fused") for g in build_optimizer(tiny_model("image_encoder"), cfg.train).param_groups)
    assert cfg.train.compile == "auto"
    assert use_compile(cfg.train, cpu) is False
    assert use_compile(load_config("tiny", ["train.compile=true"]).train, cpu) is True
    assert use_compile(load_config("tiny", ["train.compile=false"]).train, cuda) is False


def test_compiling_where_it_cannot_work_is_a_config_error(monkeypatch):
    monkeypatch.setattr(optim.shutil, "which", lambda name: None)  # a machine without a C++ compiler
    with pytest.raises(ConfigError, match=r"train.compile = true .*C\+\+ compiler.*set train.compile=false"):
        use_compile(load_config("tiny", ["train.compile=true"]).train, torch.device("cpu"))
    assert use_compile(load_config("tiny").train, torch.device("cpu")) is False  # auto never compiles there


def test_a_bad_compile_value_names_the_key_and_the_allowed_values():
    with pytest.raises(ConfigError, match=r"train.compile = 'maybe': Input should be 'auto', True or False"):
        load_config("tiny", ["train.compile=maybe"])
    assert load_config({"train": {"compile": True}}).train.compile is True


# ------------------------------------------------------------------------------------- a trial


def test_a_compiled_trial_writes_the_eager_trials_checkpoint_keys(tmp_path):
    results = {}
    for mode in ("false", "true"):
        out = tmp_path / mode
        result = run_trial(load_config("tiny", [*RANDOM_WEIGHTS, *QUICK, f"train.compile={mode}"]), out_dir=out, progress=False)
        assert result.status == "ok", result.reason
        results[mode] = (load_checkpoint(out / CHECKPOINT_NAME), load_checkpoint(out / BEST_NAME), result)
    (ckpt_e, best_e, res_e), (ckpt_c, best_c, res_c) = results["false"], results["true"]
    assert ckpt_c["model"].keys() == ckpt_e["model"].keys() and best_c["model"].keys() == best_e["model"].keys()
    assert not any("_orig_mod" in k for k in ckpt_c["model"])
    assert ckpt_c["optimizer"]["param_groups"] == ckpt_e["optimizer"]["param_groups"]
    assert ckpt_c["config"]["train"]["compile"] is True and ckpt_e["config"]["train"]["compile"] is False
    # Two steps from the same weights and crops: the same training loss to rounding.
    assert res_c.history[0]["train_loss"] == pytest.approx(res_e.history[0]["train_loss"], rel=1e-5)


def test_compiling_does_not_change_an_experiments_fingerprint():
    """A grid made before ``train.compile`` existed, or with another value of it, resumes."""
    configs = {mode: load_config("tiny", [f"train.compile={mode}"]).to_dict() for mode in ("auto", "true", "false")}
    before_the_key = copy.deepcopy(configs["auto"])
    del before_the_key["train"]["compile"]
    kept = {mode: without_tracking(c) for mode, c in configs.items()}
    assert kept["auto"] == kept["true"] == kept["false"] == without_tracking(before_the_key)
    assert kept["auto"]["train"]["lr"] == configs["auto"]["train"]["lr"]  # only that key leaves
