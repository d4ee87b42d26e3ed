"""``drx predict``: quality scores of images from a trained trial, with the experts that drove them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from drx.builtin import resolve
from drx.config import ExperimentConfig, build_config
from drx.data.benchmarks.base import listing
from drx.data.images import ResizeConfig, check_fits, load_image, prepared_resize, resize_image
from drx.data.loader import EvalCrops
from drx.errors import DataError
from drx.model import build_model
from drx.train.checkpoint import BEST_NAME, CHECKPOINT_NAME, load_checkpoint
from drx.train.scoring import mos_scaler, score_images

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


@dataclass
class Prediction:
    scores: pd.DataFrame  # image, score, then one column per expert prompt (mean DDWM weight)
    errors: list[tuple[str, str]]  # (path, reason) of images that could not be scored
    prompts: list[str]
    warnings: list[str] = field(default_factory=list)  # e.g. images at another scale than the training images


@dataclass
class Trained:
    """A trained trial read back from its checkpoint, ready to score images."""

    model: Any  # the DRExperts model, in eval mode on the device asked for
    config: ExperimentConfig
    mos_range: tuple[float, float]  # the benchmark's MOS scale the scores are mapped to
    inputs: dict[str, Any]  # what the training images went through (drx.train.trainer.inputs_record)
    checkpoint: Path  # the file read
    notes: list[str] = field(default_factory=list)  # e.g. "no selected epoch: last epoch's weights"


#: drx predict warns when an image's shorter side, after the trial's preprocessing, differs from the
#: training images' median by more than this factor (the crops then cover another share of it).
SCALE_TOLERANCE = 1.5


def load_trained(checkpoint: str | Path, device: torch.device | None = None) -> Trained:
    """Read a trained trial. A trial folder gives its selected epoch's weights (``best``), or, when
    no epoch was selected, its last checkpoint (with a note saying so). Raises CheckpointError
    for anything that is not a drx safetensors checkpoint (never unpickled)."""
    path = Path(checkpoint)
    notes: list[str] = []
    if path.is_dir() and not (path / BEST_NAME).is_file() and (path / CHECKPOINT_NAME).is_file():
        notes.append(f"{path} has no {BEST_NAME} (no epoch was selected, or train.keep_best false): scoring with the last epoch's weights")
    elif path.is_dir() and (path / BEST_NAME).is_file():
        path = path / BEST_NAME
    state = load_checkpoint(path)
    cfg = build_config(state["config"], f"checkpoint {checkpoint}")
    # The checkpoint holds every trained encoder weight: the pretrained file is not needed (and a
    # built-in one would be built for nothing on a machine that only predicts).
    model_cfg = cfg.model.model_copy(deep=True)
    model_cfg.backbone.pretrained = None
    model = build_model(resolve(model_cfg))
    model.load_trainable_state_dict(state["model"])
    device = device or torch.device("cpu")
    model.to(device).eval()
    return Trained(model, cfg, tuple(state.get("mos_range") or (0.0, 1.0)), dict(state.get("inputs") or {}), path, notes)


def collect_images(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given and image files found (recursively, sorted) in folders; missing paths are errors."""
    files, errors = [], []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append((str(p), "folder holds no image files (" + ", ".join(sorted(IMAGE_SUFFIXES)) + ")"))
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            errors.append((str(p), "no such file or folder"))
    return files, errors


def _preprocess(img, inputs: dict[str, Any], resize: ResizeConfig | None):
    """What the trial's training images went through: the prepared copy's resize (shrink-only, as
    ``drx data prepare`` does), then ``data.resize``."""
    prepared = (inputs.get("prepared") or {}).get("resize")
    if prepared is not None:
        step = ResizeConfig.model_validate(prepared)
        img = resize_image(img, prepared_resize(img.width, img.height, step))
    return resize_image(img, resize)


def predict_images(trained: Trained, paths: list[Path], batch_size: int = 32) -> Prediction:
    """Score each readable image as the trial's images were scored: the preprocessing its training
    images went through (the prepared copy's resize, then ``data.resize``: ``trained.inputs``),
    then ``data.test_crops`` fixed crops of ``model.img_size`` pixels; scores on the benchmark's
    MOS scale. Unreadable or too small images are listed in ``errors``, never silently dropped;
    images whose shorter side differs from the training images' by more than
    :data:`SCALE_TOLERANCE` after that preprocessing are scored and named in ``warnings`` with the
    scale ratio."""
    model, cfg, inputs = trained.model, trained.config, trained.inputs
    good, errors, warnings = [], [], list(trained.notes)
    train_side = inputs.get("train_short_side_px")
    off_scale = []
    for p in paths:
        try:
            img = _preprocess(load_image(p), inputs, cfg.data.resize)
            check_fits(str(p), img.height, img.width, cfg.model.img_size, str(p))
            good.append(p)
            if train_side:
                ratio = min(img.width, img.height) / float(train_side)
                if ratio > SCALE_TOLERANCE or ratio < 1 / SCALE_TOLERANCE:
                    off_scale.append(f"{p} ({min(img.width, img.height)} px, x{ratio:.2g})")
        except DataError as exc:
            errors.append((str(p), str(exc)))
    if off_scale:
        warnings.append(
            f"{len(off_scale)} image(s) are at another scale than the training images (shorter side ~{train_side:.0f} px after "
            f"the trial's preprocessing), so the {cfg.model.img_size}-px crops cover a different share of them: {listing(off_scale)}. "
            "Resize them like the training images (or train with data.resize set) for comparable scores"
        )
    prompts = list(model.prompts)
    if not good:
        return Prediction(pd.DataFrame(columns=["image", "score", *prompts]), errors, prompts, warnings)
    manifest = pd.DataFrame({"image_id": [str(p) for p in good], "path": [str(p.resolve()) for p in good], "mos": np.nan})
    prepared = (inputs.get("prepared") or {}).get("resize")
    dataset = EvalCrops(manifest, cfg.model.img_size, cfg.data.test_crops, resize=cfg.data.resize, seed=cfg.data.test_crop_seed, prepared=prepared)
    scores = score_images(model, dataset, cfg, expert_weights=True, batch_size=batch_size)
    _, to_mos = mos_scaler(trained.mos_range, cfg.train.target_range)
    table: dict[str, Any] = {"image": [str(good[int(i)]) for i in scores.index], "score": to_mos(scores.score)}
    if scores.expert_weights is not None:
        for e, prompt in enumerate(prompts):
            table[prompt] = scores.expert_weights[:, e]
    return Prediction(pd.DataFrame(table), errors, prompts, warnings)
