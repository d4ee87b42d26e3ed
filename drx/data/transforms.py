"""Crop positions, tensors and normalisation: the torch side of the image pipeline.

Decoding and resizing are torch-free and live in :mod:`drx.data.images`. Crops never fall outside
an image: an image smaller than the crop is a :class:`DataError` naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from drx.data.embedded import stable_seed
from drx.data.images import check_fits
from drx.errors import DataError

_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN, dtype=torch.float32).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_DEFAULT_STD, dtype=torch.float32).view(3, 1, 1)


def rng_seed(value: int) -> int:
    """Map any Python int (negative ones included) to a valid non-negative numpy seed."""
    return int(value) % (1 << 64)


def fixed_crop_positions(
    height: int, width: int, crop_size: int, count: int, seed: int, image_id: str
) -> list[tuple[int, int]]:
    """`count` (top, left) crop positions fixed by ``sha256(f"{seed}:{image_id}")``.

    The same image id and seed give the same positions in every evaluation and process.
    """
    check_fits(image_id, height, width, crop_size)
    rng = np.random.default_rng(stable_seed(seed, image_id))
    tops = rng.integers(0, height - crop_size + 1, size=count)
    lefts = rng.integers(0, width - crop_size + 1, size=count)
    return [(int(t), int(left)) for t, left in zip(tops, lefts)]


def random_crop_position(height: int, width: int, crop_size: int, rng: np.random.Generator) -> tuple[int, int]:
    """One uniformly random (top, left) position of a square crop."""
    top = int(rng.integers(0, height - crop_size + 1))
    left = int(rng.integers(0, width - crop_size + 1))
    return top, left


def crop_array(arr: np.ndarray, top: int, left: int, crop_size: int) -> np.ndarray:
    """Square crop of an HxWxC array (a view)."""
    return arr[top : top + crop_size, left : left + crop_size]


def to_tensor(arr: np.ndarray, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """uint8 HxWx3 array -> float32 [3,H,W] tensor, scaled to [0,1] then normalised by mean/std."""
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(f"expected a uint8 HxWx3 image array, got dtype {arr.dtype} and shape {arr.shape}")
    # One fused affine map in numpy: (x/255 - mean)/std. Elementwise torch ops on the permuted
    # (channels-last) view were several times slower and contend for threads in workers.
    s = np.asarray(std, dtype=np.float32)
    scale = (1.0 / (255.0 * s)).astype(np.float32)
    offset = (-np.asarray(mean, dtype=np.float32) / s).astype(np.float32)
    x = arr.astype(np.float32) * scale + offset
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def denormalize(t: torch.Tensor) -> torch.Tensor:
    """Inverse of the ImageNet normalisation: [..,3,H,W] -> values in [0,1] (approximately)."""
    return t * _STD.to(t.device) + _MEAN.to(t.device)
