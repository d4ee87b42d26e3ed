"""``drx predict``: quality scores of images from a trained trial, with the experts that drove them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from drx.config import build_config
from drx.errors import DataError
from drx.train.checkpoint import load_checkpoint

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


@dataclass
class Prediction:
    scores: pd.DataFrame  # image, score, then one column per expert prompt (mean DDWM weight)
    errors: list[tuple[str, str]]  # (path, reason) of images that could not be scored
    prompts: list[str]


def load_trained(checkpoint: str | Path, device: torch.device | None = None):
    """(model in eval mode, its ExperimentConfig, the MOS range it was trained on)."""
    from drx.model import build_model

    state = load_checkpoint(checkpoint)
    cfg = build_config(state["config"], f"checkpoint {checkpoint}")
    # The checkpoint holds every trained encoder weight: the pretrained file is not needed (and a
    # built-in one would be built for nothing on a machine that only predicts).
    model_cfg = cfg.model.model_copy(deep=True)
    model_cfg.backbone.pretrained = None
    model = build_model(model_cfg)
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


def predict_images(model, cfg, mos_range, paths: list[Path], batch_size: int = 32) -> Prediction:
    """Score each readable image over the config's fixed test crops; unreadable ones are listed."""
    from drx.data.loader import EvalCrops, average_per_image, make_eval_loader
    from drx.data.transforms import check_fits, load_image, resize_image
    from drx.train.trainer import _mos_scaler

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
    device = next(model.parameters()).device
    scores, weights, index = [], [], []
    with torch.no_grad():
        for images, _, idx in make_eval_loader(dataset, batch_size):
            out = model(images.to(device))
            scores.append(out.score.float().cpu())
            if out.expert_weights is not None:
                weights.append(out.expert_weights.float().cpu())
            index.append(idx)
    idx = torch.cat(index)
    _, mean_score = average_per_image(torch.cat(scores), idx)
    _, to_mos = _mos_scaler(mos_range, cfg.train.target_range)
    table: dict[str, Any] = {"image": [str(p) for p in good], "score": to_mos(mean_score.numpy().astype(np.float64))}
    if weights:
        w = torch.cat(weights)
        for e, prompt in enumerate(prompts):
            table[prompt] = average_per_image(w[:, e], idx)[1].numpy()
    return Prediction(pd.DataFrame(table), errors, prompts)
