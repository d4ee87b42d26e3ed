"""``drx predict``: quality scores of images from a trained trial, with the experts that drove them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from drx.builtin import resolve
from drx.config import ExperimentConfig, build_config
from drx.data.images import check_fits, load_image, resize_image
from drx.data.loader import EvalCrops
from drx.errors import DataError
from drx.model import build_model
from drx.train.checkpoint import load_checkpoint
from drx.train.scoring import mos_scaler, score_images

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


@dataclass
class Prediction:
    scores: pd.DataFrame  # image, score, then one column per expert prompt (mean DDWM weight)
    errors: list[tuple[str, str]]  # (path, reason) of images that could not be scored
    prompts: list[str]


def load_trained(checkpoint: str | Path, device: torch.device | None = None):
    """(model in eval mode, its ExperimentConfig, the MOS range it was trained on)."""
    state = load_checkpoint(checkpoint)
    cfg = build_config(state["config"], f"checkpoint {checkpoint}")
    # The checkpoint holds every trained encoder weight: the pretrained file is not needed (and a
    # built-in one would be built for nothing on a machine that only predicts).
    model_cfg = cfg.model.model_copy(deep=True)
    model_cfg.backbone.pretrained = None
    model = build_model(resolve(model_cfg))
    model.load_trainable_state_dict(state["model"])
    device = device or torch.device("cpu")
    model.to(device).eval()
    return model, cfg, tuple(state.get("mos_range") or (0.0, 1.0))


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


def predict_images(model, cfg: ExperimentConfig, mos_range: tuple[float, float], paths: list[Path], batch_size: int = 32) -> Prediction:
    """Score each readable image over the config's fixed test crops (``data.resize``, then
    ``data.test_crops`` crops of ``model.img_size`` pixels); scores on the benchmark's MOS scale.
    Unreadable or too small images are listed in ``errors``, never silently dropped."""
    good, errors = [], []
    for p in paths:
        try:
            img = resize_image(load_image(p), cfg.data.resize)
            check_fits(str(p), img.height, img.width, cfg.model.img_size, str(p))
            good.append(p)
        except DataError as exc:
            errors.append((str(p), str(exc)))
    prompts = list(model.prompts)
    if not good:
        return Prediction(pd.DataFrame(columns=["image", "score", *prompts]), errors, prompts)
    manifest = pd.DataFrame({"image_id": [str(p) for p in good], "path": [str(p.resolve()) for p in good], "mos": np.nan})
    dataset = EvalCrops(manifest, cfg.model.img_size, cfg.data.test_crops, resize=cfg.data.resize, seed=cfg.data.test_crop_seed)
    scores = score_images(model, dataset, cfg, expert_weights=True, batch_size=batch_size)
    _, to_mos = mos_scaler(mos_range, cfg.train.target_range)
    table: dict[str, Any] = {"image": [str(good[int(i)]) for i in scores.index], "score": to_mos(scores.score)}
    if scores.expert_weights is not None:
        for e, prompt in enumerate(prompts):
            table[prompt] = scores.expert_weights[:, e]
    return Prediction(pd.DataFrame(table), errors, prompts)
