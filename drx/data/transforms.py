"""Image decoding, resizing, crops and normalisation shared by the loaders, `check` and `prepare`.

Nothing here substitutes data: an unreadable file or an image smaller than the crop is a
:class:`DataError` naming the file (the reference code swaps such images for random noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from drx.config import ResizeConfig
from drx.data.embedded import stable_seed
from drx.errors import DataError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# `shorter` uses bicubic (antialiased: PIL widens the filter when reducing); `exact` uses bilinear
# because that is what torchvision's Resize((h, w)) does on PIL images in the reference code.
SHORTER_RESAMPLE = Image.Resampling.BICUBIC
EXACT_RESAMPLE = Image.Resampling.BILINEAR

_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file completely and return it as an RGB PIL image.

    Raises DataError naming the path when the file is missing, not an image, or truncated.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()  # force the full decode now, so truncation is found here and not later
            if im.mode == "RGB":
                return im.copy()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                # 16-bit / float greyscale: scale to 8 bits instead of clipping at 255.
                arr = np.asarray(im, dtype=np.float64)
                hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
                arr = np.clip(np.round(arr / hi * 255.0), 0, 255).astype(np.uint8)
                return Image.fromarray(np.repeat(arr[:, :, None], 3, axis=2), "RGB")
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: expected an image file, found a directory") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from None


def resized_size(width: int, height: int, resize: ResizeConfig | None) -> tuple[int, int]:
    """The (width, height) that :func:`resize_image` produces for an image of this size."""
    if resize is None:
        return width, height
    if resize.mode == "exact":
        h, w = resize.size  # type: ignore[misc]
        return int(w), int(h)
    size = int(resize.size)  # type: ignore[arg-type]
    short, long = (width, height) if width <= height else (height, width)
    new_long = max(1, int(round(long * size / short)))
    return (size, new_long) if width <= height else (new_long, size)


def resize_image(img: Image.Image, resize: ResizeConfig | dict[str, Any] | None) -> Image.Image:
    """Resize a PIL image: `shorter` sets the shorter side to `size` keeping the aspect ratio;
    `exact` sets (height, width) like torchvision ``Resize((h, w))``. None returns it unchanged."""
    if resize is None:
        return img
    if isinstance(resize, dict):
        resize = ResizeConfig.model_validate(resize)
    w, h = resized_size(img.width, img.height, resize)
    if (w, h) == (img.width, img.height):
        return img
    resample = EXACT_RESAMPLE if resize.mode == "exact" else SHORTER_RESAMPLE
    return img.resize((w, h), resample=resample)


def check_fits(image_id: str, height: int, width: int, crop_size: int, path: str | None = None) -> None:
    """DataError when an image (after resize) is smaller than the square crop."""
    if height < crop_size or width < crop_size:
        where = f" ({path})" if path else ""
        raise DataError(
            f"image {image_id!r}{where} is {width}x{height} (WxH) after resizing, smaller than the "
            f"{crop_size}x{crop_size} crop; use a smaller crop size or a resize (data.resize) of at least {crop_size}"
        )


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


def to_tensor(arr: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
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
