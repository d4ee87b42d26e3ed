"""``model.backbone.pretrained`` resolution, and ``builtin:tiny-deit3``: the tiny encoder's pretraining.

The real DR.Experts fine-tunes a DeiT-III that has seen ImageNet; the tiny preset's encoder would
otherwise start from random weights and meet only the 13-14 scenes of one embedded training split,
which it memorises (docs/performance.md). So drx pretrains it once on other real photographs
(drx/data/photos.py: the 30 photographs of photos.tsv whose use is ``pretrain``, never a benchmark
scene, disjoint by content: tests/test_photos.py), each distorted by the benchmark's public distortion families at every level:
the encoder plus a linear head regress the mean SSIM of each 64-px crop against the same crop of the
undistorted photograph (full-reference pseudo-labels, as synthetic pretraining in BIQA does). The
head is discarded; the encoder is saved in the official DeiT-III key layout and loaded through the
same strict loader as ``deit_3_small_384_1k.pth``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import stats
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from drx.builtin.common import builtin_name, builtin_path, ensure_built, fit_one_cycle, map_on_cores, tiny_model_config
from drx.config import BackboneConfig
from drx.data.embedded import FAMILIES, LEVELS, fit_to_scale, ssim_with_map
from drx.data.photos import ensure_photos, load_photo, photos_for
from drx.errors import ConfigError
from drx.io import atomic_write, atomic_write_text
from drx.model.backbone import ImageEncoder
from drx.model.weights import deit3_official_state_dict
from drx.paths import build_progress

TINY_DEIT3 = "tiny-deit3"
VERSION = 3  # 3: pretrained on the 30 photographs kept out of embedded benchmark v2

# The architecture (DeiT-III blocks at width 128, depth 4, 8-px patches on 64-px crops) is the
# tiny preset's model.backbone and model.img_size: drx/presets/tiny.yaml is its one definition.
DRAWS = LEVELS  # distorted copies per (photograph, family): one per level
STEPS = 1200
BATCH = 64
LR = 1e-3
SEED = 20261127


def resolve_backbone_checkpoint(cfg: BackboneConfig, img_size: int) -> Path | None:
    """The file to load for ``model.backbone.pretrained`` (building a built-in one on first use)."""
    ref = cfg.pretrained
    if not ref:
        return None
    if builtin_name(ref, "model.backbone.pretrained", [TINY_DEIT3]) is None:
        return Path(ref).expanduser()
    tiny = tiny_model_config()
    name, kwargs, size = tiny.backbone.name, dict(tiny.backbone.kwargs), tiny.img_size
    if cfg.name != name or dict(cfg.kwargs) != kwargs or img_size != size:
        raise ConfigError(
            f"model.backbone.pretrained {ref!r} is the tiny preset's encoder: it needs model.backbone.name "
            f"{name}, model.backbone.kwargs {kwargs} and model.img_size {size} "
            f"(got {cfg.name}, {dict(cfg.kwargs)}, {img_size})"
        )
    return ensure_tiny_encoder()


def ensure_tiny_encoder(path: Path | None = None, log: Callable[[str], None] = build_progress) -> Path:
    """The pretrained tiny encoder's file, built once."""
    return ensure_built(path or builtin_path(TINY_DEIT3, VERSION), lambda p: build_tiny_encoder(p, log=log))


# ----------------------------------------------------------------------------------------- data


def _one_sample(args: tuple[np.ndarray, str, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(pristine uint8 HxWx3, family, level, seed) -> (distorted uint8 HxWx3, SSIM map float16 HxW)."""
    reference, family, level, seed = args
    rng = np.random.default_rng(seed)
    distorted = np.round(FAMILIES[family].apply(reference.astype(np.float32) / 255.0, level, rng) * 255.0).astype(np.uint8)
    # float16 halves the memory of ~4,000 maps; a crop's label is the mean of 4,096 of them.
    return distorted, ssim_with_map(distorted, reference)[1].astype(np.float16)


def pretraining_photos(log: Callable[[str], None] = build_progress) -> dict[str, np.ndarray]:
    """The photographs whose use is ``pretrain`` (drx/data/photos.tsv), at the embedded benchmark's
    scale: name -> uint8 HxWx3 (shorter side 256 px)."""
    chosen = photos_for("pretrain")
    ensure_photos(chosen, log=log)
    return {p.name: fit_to_scale(Image.fromarray(load_photo(p), "RGB")) for p in chosen}


def pretraining_set(photos: dict[str, np.ndarray], draws: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every photograph x family x `draws` -> [(distorted, SSIM map)], each seeded by its position
    (deterministic), generated on every core. Levels cycle 1..L over the draws, starting one level
    further for each photograph and family, so any `draws` (even 1) spreads over all levels."""
    jobs = []
    for p, image in enumerate(photos.values()):
        for f, (family, spec) in enumerate(FAMILIES.items()):
            for d in range(draws):
                jobs.append((image, family, (d + p + f) % spec.levels + 1, seed + 1_000_003 * p + 1_009 * f + d))
    return map_on_cores(_one_sample, jobs)


def crop_batches(samples: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator, batch: int, crop: int):
    """Endless (x [B,3,crop,crop] ImageNet-normalised, y [B] mean SSIM of each crop) with random flips."""
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    while True:
        crops, labels = [], []
        for i in rng.integers(0, len(samples), batch):
            image, ssim_map = samples[i]
            top = int(rng.integers(0, image.shape[0] - crop + 1))
            left = int(rng.integers(0, image.shape[1] - crop + 1))
            c = image[top : top + crop, left : left + crop]
            crops.append(c[:, ::-1] if rng.random() < 0.5 else c)
            labels.append(float(ssim_map[top : top + crop, left : left + crop].mean(dtype=np.float32)))
        x = torch.from_numpy(np.ascontiguousarray(np.stack(crops))).permute(0, 3, 1, 2).float() / 255.0
        yield (x - mean) / std, torch.tensor(labels, dtype=torch.float32)


# ------------------------------------------------------------------------------------- training


def build_tiny_encoder(
    path: Path, log: Callable[[str], None] = build_progress, steps: int = STEPS, draws: int = DRAWS,
    photos: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Pretrain the tiny encoder and save it (official DeiT-III layout) to `path`; returns its record.

    `photos` (name -> uint8 HxWx3) defaults to :func:`pretraining_photos` (fetched on first use).
    The architecture is the tiny preset's (model.backbone name and kwargs, model.img_size).
    """
    tiny = tiny_model_config()
    img_size = tiny.img_size
    t0 = time.perf_counter()
    log(f"pretraining the tiny image encoder (once; cached at {path}) ...")
    photos = photos if photos is not None else pretraining_photos(log)
    samples = pretraining_set(photos, draws, SEED)
    # Fresh distortion draws of the same photographs, one per (photograph, family): how well the
    # regression fits.
    held_out = pretraining_set(photos, 1, SEED + 7)
    t_data = time.perf_counter() - t0

    torch.manual_seed(SEED)
    encoder = ImageEncoder(BackboneConfig(name=tiny.backbone.name, kwargs=tiny.backbone.kwargs), img_size)
    head = nn.Linear(encoder.embed_dim, 1)
    encoder.train()

    def loss_of(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return F.smooth_l1_loss(head(encoder(x)[:, 0]).squeeze(1), y)

    batches = crop_batches(samples, np.random.default_rng(SEED), BATCH, img_size)
    fit_one_cycle([*encoder.parameters(), *head.parameters()], loss_of, batches, steps, LR, log, "tiny encoder")
    encoder.eval()
    with torch.no_grad():
        x, y = next(crop_batches(held_out, np.random.default_rng(SEED + 8), 512, img_size))
        pred = head(encoder(x)[:, 0]).squeeze(1)
    srcc = float(stats.spearmanr(pred.numpy(), y.numpy())[0])
    record = {
        "version": VERSION,
        "photographs": list(photos),
        "samples": len(samples),
        "steps": steps,
        "batch": BATCH,
        "held_out_crop_srcc": round(srcc, 4),
        "data_s": round(t_data, 1),
        "build_s": round(time.perf_counter() - t0, 1),
    }
    state = deit3_official_state_dict(encoder.vit)
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    atomic_write_text(path.with_suffix(".json"), json.dumps(record, indent=2))
    log(f"tiny encoder ready: SRCC {srcc:.2f} on held-out distorted crops, {record['build_s']} s")
    return record
