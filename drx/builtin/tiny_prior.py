"""``model.prior.checkpoint`` resolution, and ``builtin:tiny-daclip``: a miniature DA-CLIP drx trains.

With random weights a prior carries no knowledge of distortions, so on CPU (the demo, the tests)
the DSDM/DDWM rows of an ablation would compare noise. The tiny preset therefore uses a small
distortion-aware prior that drx trains itself, in DA-CLIP's role: its image controller learns to
match the text feature of each image's degradation prompt (a contrastive objective over the
prompts, as DA-CLIP's degradation branch), and its last controller tap learns to carry the
degradation type and strength token by token (in DA-CLIP the taps are trained through the content
tower; here an auxiliary head on the pooled tap output plays that part and is discarded).

It trains on procedural "dead leaves" images (random occluding disks with power-law sizes, smooth
shading and fine texture: a standard model of natural-image statistics) distorted by the embedded
benchmark's families, so no photograph of any benchmark split is ever seen. The text tower stays at
its seeded random initialisation: its prompt features are fixed, distinct codes per expert. The
result is saved once in the official DA-CLIP key layout under the drx cache and loaded through the
same strict loader as the real ``daclip_ViT-B-32.pt``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from drx.builtin.common import builtin_name, builtin_path, ensure_built, fit_one_cycle, map_on_cores, tiny_model_config
from drx.config import PriorConfig
from drx.data.embedded import FAMILIES
from drx.errors import ConfigError
from drx.io import atomic_write, atomic_write_text
from drx.model.prior import DistortionPrior, prior_arch_config
from drx.paths import build_progress

TINY_DACLIP = "tiny-daclip"
VERSION = 2

# The miniature prior's architecture (an open_clip ViT at 64 px with 8-px patches: an 8x8 token
# grid, like the tiny image encoder; a 2-layer text tower) is the tiny preset's model.prior.arch and
# arch_overrides: drx/presets/tiny.yaml is its one definition.
BASE_SIZE = 256  # procedural images at the embedded benchmark's scale, so distortions match
CROP = 64
N_BASE = 360
STEPS = 2000
BATCH = 64
SEED = 20261126


def tiny_prompts() -> list[str]:
    """The prompts the miniature prior is trained on: the embedded benchmark's family names."""
    return [f.prompt for f in FAMILIES.values()]


def resolve_prior_checkpoint(cfg: PriorConfig) -> Path:
    """The file to load for ``model.prior.checkpoint`` (building a built-in prior on first use)."""
    ref = cfg.checkpoint
    if ref is None:
        raise ConfigError("model.prior.checkpoint is null: nothing to load")
    if builtin_name(ref, "model.prior.checkpoint", [TINY_DACLIP]) is None:
        return Path(ref).expanduser()
    if cfg.kind not in ("daclip", "clip"):
        raise ConfigError(f"model.prior.checkpoint {ref!r} needs model.prior.kind daclip or clip, got {cfg.kind!r}")
    want = tiny_prior_config()
    if prior_arch_config(cfg) != prior_arch_config(want):
        raise ConfigError(
            f"model.prior.checkpoint {ref!r} is the miniature prior: it needs model.prior.arch {want.arch} with "
            f"arch_overrides {want.arch_overrides} (as in the tiny preset)"
        )
    return ensure_tiny_daclip()


def tiny_prior_config(prompts: list[str] | None = None) -> PriorConfig:
    """The miniature prior: a DA-CLIP of the tiny preset's architecture (model.prior.arch and
    arch_overrides), with `prompts` (default: PriorConfig's)."""
    tiny = tiny_model_config().prior
    extra = {} if prompts is None else {"prompts": prompts}
    return PriorConfig(kind="daclip", arch=tiny.arch, arch_overrides=tiny.arch_overrides, **extra)


def ensure_tiny_daclip(path: Path | None = None, log: Callable[[str], None] = build_progress) -> Path:
    """The miniature prior's file, built once."""
    return ensure_built(path or builtin_path(TINY_DACLIP, VERSION), lambda p: build_tiny_daclip(p, log=log))


# -------------------------------------------------------------------------------- procedural data


def dead_leaves(rng: np.random.Generator, size: int = BASE_SIZE) -> np.ndarray:
    """A dead-leaves image [size, size, 3] float32 in [0,1]: occluding disks, power-law radii.

    Each disk has a base colour, a linear shading gradient and a weak sinusoidal texture, so the
    image has edges, smooth regions and fine detail at every scale, like a natural photograph.
    """
    img = np.zeros((size, size, 3), np.float32)
    covered = np.zeros((size, size), bool)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r_min, r_max = 3.0, size / 3
    # Painted front to back: a pixel keeps the first disk that covers it (occlusion).
    for _ in range(4000):
        if covered.all():
            break
        u = rng.random()
        r = (r_min ** -2 - u * (r_min ** -2 - r_max ** -2)) ** -0.5  # p(r) ~ r^-3
        cy, cx = rng.uniform(-r, size + r, 2)
        y0, y1 = max(0, int(cy - r)), min(size, int(cy + r) + 1)
        x0, x1 = max(0, int(cx - r)), min(size, int(cx + r) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        sy, sx = yy[y0:y1, x0:x1], xx[y0:y1, x0:x1]
        disk = ((sy - cy) ** 2 + (sx - cx) ** 2 <= r * r) & ~covered[y0:y1, x0:x1]
        if not disk.any():
            continue
        # Natural colours are mostly unsaturated: a grey level plus a small chroma offset.
        colour = np.clip(rng.uniform(0.05, 0.95) + rng.normal(0, 0.12, 3), 0.02, 0.98).astype(np.float32)
        g = rng.normal(0, 0.35 / max(r, 4.0), 2)
        shade = 1.0 + g[0] * (sy - cy) + g[1] * (sx - cx)
        freq, phase, amp = rng.uniform(0.2, 1.2), rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.06)
        angle = rng.uniform(0, np.pi)
        texture = amp * np.sin(freq * (np.cos(angle) * sx + np.sin(angle) * sy) + phase)
        value = np.clip(colour[None, None, :] * shade[..., None] + texture[..., None], 0, 1)
        region = img[y0:y1, x0:x1]
        region[disk] = value[disk]
        covered[y0:y1, x0:x1] |= disk
    return img


def fractal_scene(rng: np.random.Generator, size: int = BASE_SIZE) -> np.ndarray:
    """A 1/f^β noise landscape [size, size, 3] in [0,1]: smooth large-scale shading with fine
    texture, the power spectrum of natural scenes (β drawn around 2)."""
    beta = rng.uniform(1.6, 2.6)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    radius[0, 0] = 1.0
    amplitude = radius ** (-beta / 2)
    amplitude[0, 0] = 0.0
    base = rng.uniform(0.2, 0.8)
    chroma = rng.normal(0, 0.15, 3)
    out = np.empty((size, size, 3), np.float32)
    shared = np.fft.irfft2(amplitude * np.exp(2j * np.pi * rng.random(amplitude.shape)), s=(size, size))
    shared = (shared - shared.mean()) / (shared.std() + 1e-8)
    for c in range(3):
        own = np.fft.irfft2(amplitude * np.exp(2j * np.pi * rng.random(amplitude.shape)), s=(size, size))
        own = (own - own.mean()) / (own.std() + 1e-8)
        out[..., c] = base + chroma[c] + rng.uniform(0.12, 0.25) * (0.8 * shared + 0.2 * own)
    return np.clip(out, 0, 1)


def procedural_image(rng: np.random.Generator, size: int = BASE_SIZE) -> np.ndarray:
    """Dead leaves, a fractal landscape, or leaves over a landscape (half and half by a soft mask)."""
    kind = rng.random()
    if kind < 0.45:
        return dead_leaves(rng, size)
    if kind < 0.7:
        return fractal_scene(rng, size)
    leaves, land = dead_leaves(rng, size), fractal_scene(rng, size)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    mask = 1 / (1 + np.exp(-((np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) * rng.uniform(8, 30))))
    return (mask[..., None] * leaves + (1 - mask[..., None]) * land).astype(np.float32)


def _one_sample(args: tuple[int, int]) -> tuple[np.ndarray, int, int]:
    """(seed, index) -> (distorted procedural image uint8 SxSx3, family index, level)."""
    seed, i = args
    families = list(FAMILIES.values())
    rng = np.random.default_rng([seed, i])
    base = procedural_image(rng)
    k = i % len(families)
    level = int(rng.integers(1, families[k].levels + 1))
    return np.round(families[k].apply(base, level, rng) * 255).astype(np.uint8), k, level


def procedural_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n distorted procedural images -> (images [n,S,S,3] uint8, family index [n], level [n]).

    Deterministic per index (seeded by (seed, i)); generated on every core.
    """
    samples = map_on_cores(_one_sample, [(seed, i) for i in range(n)])
    images = np.stack([s[0] for s in samples])
    fam = np.array([s[1] for s in samples], np.int64)
    lvl = np.array([s[2] for s in samples], np.int64)
    return images, fam, lvl


# ------------------------------------------------------------------------------------- training


def _batches(images: np.ndarray, fam: np.ndarray, lvl: np.ndarray, rng: np.random.Generator, batch: int):
    """Endless (x [B,3,CROP,CROP] ImageNet-normalised, family [B], level [B] float) with random flips."""
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    while True:
        idx = rng.integers(0, len(images), batch)
        tops = rng.integers(0, BASE_SIZE - CROP + 1, batch)
        lefts = rng.integers(0, BASE_SIZE - CROP + 1, batch)
        crops = np.stack([images[i, t : t + CROP, l : l + CROP] for i, t, l in zip(idx, tops, lefts)])
        flip = rng.random(batch) < 0.5
        crops[flip] = crops[flip, :, ::-1]
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
        yield (x - mean) / std, torch.from_numpy(fam[idx]), torch.from_numpy(lvl[idx]).float()


def build_tiny_daclip(path: Path, log: Callable[[str], None] = build_progress, steps: int = STEPS, n_base: int = N_BASE) -> dict[str, Any]:
    """Train the miniature DA-CLIP and save it (official key layout) to ``path``; returns its record.

    The architecture is the tiny preset's (model.prior.arch and arch_overrides).
    """
    t0 = time.perf_counter()
    log(f"building the miniature DA-CLIP prior (once; cached at {path}) ...")
    torch.manual_seed(SEED)
    prompts = tiny_prompts()
    prior_cfg = tiny_prior_config(prompts)
    prior = DistortionPrior(prior_cfg)
    images, fam, lvl = procedural_set(n_base, SEED)
    held_images, held_fam, held_lvl = procedural_set(max(45, n_base // 8), SEED + 1)
    t_data = time.perf_counter() - t0

    controller = prior.controller
    controller.train()
    controller.requires_grad_(True)
    width = controller.visual.transformer.width
    aux = nn.Linear(width, len(prompts) + 1)  # tap head: family logits + strength
    strength = nn.Linear(prior.embed_dim, 1)  # reads the strength from the (normalised) embedding
    text = prior.text_features.detach()
    scale = 1 / 0.07  # CLIP's initial temperature
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)

    def losses(x, f, lv):
        view = prior.prepare_input(x, mean, std, "clean")
        emb, hidden = controller(view)
        unit = F.normalize(emb, dim=-1)
        logits = scale * unit @ text.t()
        pooled = aux(hidden[:, 1:].mean(1))
        target = (lv - 2.5) / 1.5
        loss = (
            F.cross_entropy(logits, f)
            + 0.5 * F.mse_loss(strength(unit).squeeze(-1), target)
            + F.cross_entropy(pooled[:, :-1], f)
            + F.mse_loss(pooled[:, -1], target)
        )
        return loss, logits

    batches = _batches(images, fam, lvl, np.random.default_rng(SEED), BATCH)
    params = [*controller.parameters(), *aux.parameters(), *strength.parameters()]
    fit_one_cycle(params, lambda batch: losses(*batch)[0], batches, steps, 2e-3, log, "miniature prior")
    controller.eval()
    prior.requires_grad_(False)
    with torch.no_grad():
        held = _batches(held_images, held_fam, held_lvl, np.random.default_rng(SEED + 2), 256)
        x, f, lv = next(held)
        _, logits = losses(x, f, lv)
        accuracy = float((logits.argmax(1) == f).float().mean())
    record = {
        "version": VERSION,
        "prompts": prompts,
        "arch": prior_cfg.arch_overrides,
        "steps": steps,
        "train_images": int(n_base),
        "held_out_prompt_accuracy": round(accuracy, 4),
        "chance": round(1 / len(prompts), 4),
        "data_s": round(t_data, 1),
        "build_s": round(time.perf_counter() - t0, 1),
    }
    state = prior.build_state_for_export()
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    atomic_write_text(path.with_suffix(".json"), json.dumps(record, indent=2))
    log(f"miniature prior ready: held-out prompt accuracy {accuracy:.2f} (chance {1 / len(prompts):.2f}), {record['build_s']} s")
    return record
