"""What drove the scores: per-expert DDWM weights over the test images, and attention maps.

Written by :func:`drx.train.run_trial` at the end of a trial, with the selected epoch's weights,
into ``<trial out>/explain/`` so the report reads plain files (the report never imports torch):

* ``expert_weights.csv``: one row per test image: image_id, mos, prediction (MOS scale), then the
  mean DDWM weight of each expert (column = prompt) over the image's fixed crops (``full`` only).
* ``attention.npz``: for a few test images (first fixed crop): ``crops`` [N,H,W,3] uint8, ``prior``
  [N,E,gh,gw] (row 0 of softmax(A1) over the controller tokens), ``image`` [N,gh,gw] (row 0 of
  softmax(A2), the image encoder's class-token attention; per expert [N,E,gh,gw] under
  compat authors), ``refined`` [N,E,gh,gw] (row 0 of softmax(A1) − α·softmax(A2)), ``prompts``,
  ``image_ids``, ``mos``. As in the paper's Fig. 3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from drx.config import ExperimentConfig
from drx.data.transforms import denormalize
from drx.train.scoring import model_device, mos_scaler, score_images

N_ATTENTION_IMAGES = 4


@torch.no_grad()
def write_explanations(model, cfg: ExperimentConfig, test_dataset, mos_range: tuple[float, float], out_dir: Path) -> dict[str, Path]:
    """Write ``expert_weights.csv`` (``full``) and ``attention.npz`` (variants with a DSDM) into
    `out_dir` for the test images of `test_dataset` (fixed crops); returns {kind: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    model.eval()
    ids = test_dataset.source.ids
    _, to_mos = mos_scaler(mos_range, cfg.train.target_range)
    if model.variant == "full":
        scores = score_images(model, test_dataset, cfg, expert_weights=True)
        table: dict[str, Any] = {
            "image_id": [ids[int(i)] for i in scores.index],
            "mos": scores.mos.astype(np.float32),
            "prediction": to_mos(scores.score),
        }
        for e, prompt in enumerate(model.prompts):
            table[prompt] = scores.expert_weights[:, e]
        path = out_dir / "expert_weights.csv"
        pd.DataFrame(table).to_csv(path, index=False)
        written["expert_weights"] = path
    if model.dsdm is not None and len(test_dataset):
        device = model_device(model)
        n = min(N_ATTENTION_IMAGES, len(test_dataset) // max(1, test_dataset.crops_per_image))
        picks = [i * test_dataset.crops_per_image for i in range(n)]  # first fixed crop of the first images
        batch = torch.stack([test_dataset[i][0] for i in picks]).to(device)
        out = model(batch, return_attention=True)
        gh, gw = model.encoder.grid_size
        maps = out.attention

        def grid(t: torch.Tensor) -> np.ndarray:  # row 0 over the patch tokens -> [..., gh, gw]
            return t[..., 1:].float().reshape(*t.shape[:-1], gh, gw).cpu().numpy()

        image_map = maps["image"][..., 0, :]
        data = {
            "crops": (denormalize(batch.cpu()).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8),
            "prior": grid(maps["prior"]),
            "image": grid(image_map),
            "refined": grid(maps["refined"][..., 0, :]),
            "prompts": np.array(model.prompts),
            "image_ids": np.array([ids[i // test_dataset.crops_per_image] for i in picks]),
            "mos": np.array([float(test_dataset.source.mos[i // test_dataset.crops_per_image]) for i in picks]),
        }
        path = out_dir / "attention.npz"
        np.savez_compressed(path, **data)
        written["attention"] = path
    return written
