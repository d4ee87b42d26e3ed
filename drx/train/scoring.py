"""Per-image scoring over fixed crops: the one loop behind evaluation, explanations and ``drx predict``.

A dataset of fixed crops (:class:`drx.data.loader.EvalCrops`) is run through the model in batches;
each image's score (and, for the ``full`` variant, each expert's DDWM weight) is the mean over its
crops. One rule for device and precision everywhere: the model's own device, autocast as the trial's
``train.precision`` sets it for that device (:func:`drx.train.optim.autocast_dtype`), and the
trial's ``data.num_workers`` loader processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from drx.config import ExperimentConfig
from drx.data.loader import average_per_image, make_eval_loader
from drx.train.optim import autocast_dtype


@dataclass
class ImageScores:
    """Per image of a dataset, in the order of its image indices.

    ``index`` [K] the dataset's image indices; ``score`` [K] the model's raw score (the training
    target scale, see :func:`mos_scaler`); ``mos`` [K] the labels; ``expert_weights`` [K,E] the mean
    DDWM weight of each expert (``full`` variant, when asked for), else None.
    """

    index: np.ndarray
    score: np.ndarray
    mos: np.ndarray
    expert_weights: np.ndarray | None = None


def mos_scaler(mos_range: tuple[float, float], target_range: tuple[float, float] | None
               ) -> tuple[Callable[[float], float], Callable[[np.ndarray], np.ndarray]]:
    """(MOS -> training target, training target -> MOS): the affine map of ``train.target_range``.

    `mos_range` is the benchmark's nominal MOS range (e.g. (1, 5) for KonIQ's 1-5 scale); with
    ``target_range`` None the model trains on raw MOS and both maps are the identity.
    """
    if target_range is None:
        return (lambda m: float(m)), (lambda t: t)
    a, b = mos_range
    lo, hi = target_range
    scale = (hi - lo) / (b - a)
    return (lambda m: lo + (float(m) - a) * scale), (lambda t: a + (t - lo) / scale)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device the model's parameters live on."""
    return next(model.parameters()).device


@torch.no_grad()
def score_images(model, dataset, cfg: ExperimentConfig, expert_weights: bool = False, batch_size: int | None = None) -> ImageScores:
    """Score every image of `dataset` (fixed crops [B,3,S,S], S = ``model.img_size`` pixels).

    Batches of ``batch_size`` crops (default ``train.eval_batch_size`` or ``train.batch_size``) go to
    the model's device under the trial's autocast rule; per-image means are returned as float64.
    """
    device = model_device(model)
    amp = autocast_dtype(cfg.train.precision, device)
    size = batch_size or cfg.train.eval_batch_size or cfg.train.batch_size
    model.eval()
    preds, weights, idxs, moss = [], [], [], []
    loader = make_eval_loader(dataset, size, num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
    for images, mos, index in loader:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = model(images.to(device, non_blocking=True))
        preds.append(out.score.float().cpu())
        if expert_weights and out.expert_weights is not None:
            weights.append(out.expert_weights.float().cpu())
        idxs.append(index)
        moss.append(mos)
    index = torch.cat(idxs)
    uniq, score = average_per_image(torch.cat(preds), index)
    _, mos = average_per_image(torch.cat(moss), index)
    per_expert = None
    if weights:
        w = torch.cat(weights)
        per_expert = np.stack([average_per_image(w[:, e], index)[1].numpy() for e in range(w.shape[1])], axis=1)
    return ImageScores(uniq.numpy(), score.numpy().astype(np.float64), mos.numpy().astype(np.float64), per_expert)
