"""Optimiser parameter groups, the learning-rate schedule, the loss, one training step, and the
device's choice of fast paths (fused AdamW, ``train.compile``).

Shared by the trainer and ``drx bench model`` so the benchmark measures the real training step.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from drx.config import TrainConfig
from drx.errors import ConfigError

# Embedding-like parameters that clean AdamW practice (timm's no_weight_decay) leaves undecayed.
_EMBEDDING_NAMES = ("pos_embed", "cls_token", "reg_token", "dist_token", "positional_embedding", "class_embedding", "expert_queries")


def param_groups(model: nn.Module, weight_decay: float, compat: str = "clean", lr: float | None = None, encoder_lr_scale: float = 1.0) -> list[dict]:
    """AdamW groups: decayed weights, and undecayed norms/biases/embeddings/scalars.

    With ``encoder_lr_scale != 1`` the image encoder's parameters (``encoder.*``) get their own
    groups at ``lr × encoder_lr_scale``: a pretrained encoder fine-tuned gently while the new
    heads learn at the full rate.

    ``clean``: no decay for 0-/1-D tensors (norms, biases, PReLU, α, λ) and position/class
    embeddings. ``authors``: the authors' code's rule (no decay only for 1-D tensors and
    ``.bias``), which decays ``pos_embed``, ``cls_token``, the scalar α and λ.
    """
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if compat == "authors":
            # λ is [D] here but [1, D] in the reference, where the 1-D rule does not exempt it.
            skip = (p.ndim == 1 or name.endswith(".bias")) and not name.endswith("lambda_")
        else:
            skip = p.ndim <= 1 or name.endswith(".bias") or any(e in name.split(".")[-1] for e in _EMBEDDING_NAMES)
        scaled = encoder_lr_scale != 1.0 and name.startswith("encoder.")
        buckets.setdefault((skip, scaled), []).append(p)
    groups = []
    for skip, scaled in ((False, False), (True, False), (False, True), (True, True)):
        if (skip, scaled) in buckets:
            group = {"params": buckets[skip, scaled], "weight_decay": 0.0 if skip else weight_decay}
            if scaled:
                if lr is None:
                    raise ValueError("param_groups: encoder_lr_scale needs the base lr")
                group["lr"] = lr * encoder_lr_scale
            groups.append(group)
    return groups


def fused_adamw(device: torch.device) -> bool:
    """Whether AdamW runs as one fused kernel on this device: on CUDA, yes. On the CPU torch has
    a fused AdamW too, equal to the loop within float rounding, but it was no faster for the tiny
    preset (docs/training.md), so the CPU keeps the implementation its results were made with."""
    return device.type == "cuda"


def build_optimizer(model: nn.Module, cfg: TrainConfig, compat: str = "clean", fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`. ``fused`` None: as :func:`fused_adamw` decides for the
    device of the model's parameters; False: torch's default (foreach on CUDA, a loop on the CPU)."""
    if fused is None:
        fused = fused_adamw(next(model.parameters()).device)
    # fused=False is not passed on: torch would read it as "no foreach either".
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay, compat, cfg.lr, cfg.encoder_lr_scale), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **kwargs
    )


def compile_problem(device: torch.device) -> str | None:
    """Why torch.compile's default code generator (inductor) cannot run on this device, or None."""
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "inductor generates CUDA kernels with the triton package, which is not installed"
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX"), "g++", "clang++", "c++") if c):
        return "inductor compiles CPU kernels with a C++ compiler (g++, clang++ or $CXX), and none was found"
    return None


def use_compile(cfg: TrainConfig, device: torch.device) -> bool:
    """``train.compile`` for a device: ``auto`` compiles on CUDA only (on the CPU the tiny preset's
    compiled step was 4% slower than eager after minutes of compiling: docs/training.md). A device
    where compiling is asked for but cannot work is a ConfigError, never a quiet eager run."""
    wanted = device.type == "cuda" if cfg.compile == "auto" else cfg.compile
    if wanted:
        problem = compile_problem(device)
        if problem is not None:
            raise ConfigError(f"train.compile = {str(cfg.compile).lower()} compiles the model on {device.type}, but {problem}; set train.compile=false")
    return wanted


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile(model)``: a wrapper that shares ``model``'s parameters and buffers.

    Call it for forward passes only; state dicts, checkpoints and explanations stay on ``model``
    itself, so no key gains the wrapper's ``_orig_mod.`` prefix. Compilation happens at the first
    call of each kind (training, evaluation), then the compiled code is reused.
    """
    # A worker that runs trial after trial (Ray's reuse_actors) would otherwise keep every earlier
    # trial's compiled code until dynamo's recompile limit quietly runs later trials eagerly.
    torch.compiler.reset()
    try:
        return torch.compile(model)
    except RuntimeError as exc:  # raised when torch.compile does not support this Python
        raise ConfigError(f"train.compile: torch.compile is not available here ({exc}); set train.compile=false") from None


@dataclass
class LRSchedule:
    """Per-iteration learning-rate factor (× base lr): linear warm-up, then step/cosine/constant.

    ``step`` reproduces the reference: lr·rate^(t // decay_steps) with t counted from 0 including
    the warm-up, so the base lr is never held when warm-up and decay periods are equal.
    """

    base_lr: float
    total_steps: int
    warmup_steps: int
    warmup_lr: float
    schedule: str
    decay_steps: int
    decay_rate: float
    min_lr: float

    def __call__(self, t: int) -> float:
        if t < self.warmup_steps:
            lr = self.warmup_lr + t * (self.base_lr - self.warmup_lr) / self.warmup_steps
        elif self.schedule == "step":
            lr = self.base_lr * self.decay_rate ** (t // self.decay_steps)
        elif self.schedule == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (t - self.warmup_steps) / span)
            lr = self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * progress))
        else:
            lr = self.base_lr
        return lr / self.base_lr


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    schedule = LRSchedule(
        base_lr=cfg.lr,
        total_steps=cfg.epochs * steps_per_epoch,
        warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)),
        warmup_lr=cfg.warmup_lr,
        schedule=cfg.schedule,
        decay_steps=max(1, int(round(cfg.decay_epochs * steps_per_epoch))),
        decay_rate=cfg.decay_rate,
        min_lr=cfg.min_lr,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def build_loss(cfg: TrainConfig) -> nn.Module:
    if cfg.loss == "smoothl1":
        return nn.SmoothL1Loss(beta=cfg.smoothl1_beta)
    if cfg.loss == "l1":
        return nn.L1Loss()
    return nn.MSELoss()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting (None: plain fp32). ``auto``: bf16 on CUDA."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision in ("bf16", "auto"):
        return torch.bfloat16
    return torch.float16


def train_step(
    model: nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    amp_dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler | None,
    grad_clip: float | None,
) -> torch.Tensor:
    """One optimiser step; returns the loss (detached). ``forward(images) -> scores [B]``.

    A non-finite loss is returned without a backward pass or step: the caller ends the trial.
    """
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        scores = forward(images)
    loss = loss_fn(scores.float(), targets.float())
    if not torch.isfinite(loss):
        return loss.detach()
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss.detach()
