"""What drove the scores: per-expert DDWM weights over the test images, and attention maps.

Written by :func:`drx.train.run_trial` at the end of a trial, with the selected epoch's weights,
into ``<trial out>/explain/`` so the report reads plain files (the report never imports torch):

* ``expert_weights.csv``: one row per test image: image_id, mos, prediction (MOS scale), then the
  mean DDWM weight of each expert (column = prompt) over the image's fixed crops (``full`` only).
* ``attention.npz``: for a few test images (first fixed crop): ``crops`` [N,H,W,3] uint8, ``prior``
  [N,E,gh,gw] (row 0 of softmax(A1) over the controller tokens), ``image`` [N,gh,gw] (row 0 of
  softmax(A2), the image encoder's class-token attention; per expert [N,E,gh,gw] under
  compat reference), ``refined`` [N,E,gh,gw] (row 0 of softmax(A1) − α·softmax(A2)), ``prompts``,
  ``image_ids``, ``mos``. As in the paper's Fig. 3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

N_ATTENTION_IMAGES = 4


@torch.no_grad()
def write_explanations(model, cfg, test_dataset, mos_range, out_dir: Path, device: torch.device, amp) -> dict[str, Path]:
    from drx.data.loader import average_per_image, make_eval_loader
    from drx.data.transforms import denormalize
    from drx.train.trainer import _mos_scaler

    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    model.eval()
    ids = test_dataset.source.ids
    _, to_mos = _mos_scaler(mos_range, cfg.train.target_range)
    if model.variant == "full":
        scores, weights, index, mos = [], [], [], []
        for images, m, idx in make_eval_loader(test_dataset, cfg.train.eval_batch_size or cfg.train.batch_size):
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                out = model(images.to(device))
            scores.append(out.score.float().cpu())
            weights.append(out.expert_weights.float().cpu())
            index.append(idx)
            mos.append(m)
        idx = torch.cat(index)
        uniq, pred = average_per_image(torch.cat(scores), idx)
        table: dict[str, Any] = {
            "image_id": [ids[int(i)] for i in uniq],
            "mos": average_per_image(torch.cat(mos), idx)[1].numpy(),
            "prediction": to_mos(pred.numpy().astype(np.float64)),
        }
        w = torch.cat(weights)
        for e, prompt in enumerate(model.prompts):
            table[prompt] = average_per_image(w[:, e], idx)[1].numpy()
        path = out_dir / "expert_weights.csv"
        pd.DataFrame(table).to_csv(path, index=False)
        written["expert_weights"] = path
    if model.dsdm is not None and len(test_dataset):
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
