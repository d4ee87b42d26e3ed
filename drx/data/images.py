"""Image decoding and resizing, and the resize setting: torch-free (used by `check`, `prepare`,
the loaders and ``drx predict``; imported by drx.config for :class:`ResizeConfig`).

Nothing here substitutes data: an unreadable file or an image smaller than the crop is a
:class:`DataError` naming the file (the reference code swaps such images for random noise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import model_validator

from drx.errors import DataError
from drx.schema import StrictModel

# `shorter` uses bicubic (antialiased: PIL widens the filter when reducing); `exact` uses bilinear
# because that is what torchvision's Resize((h, w)) does on PIL images in the reference code.
SHORTER_RESAMPLE = Image.Resampling.BICUBIC
EXACT_RESAMPLE = Image.Resampling.BILINEAR


class ResizeConfig(StrictModel):
    """``data.resize``: how images are resized before cropping.

    ``shorter``: the shorter side becomes `size` px (one int), aspect kept. ``exact``: (height,
    width) in px, as the reference code does (an int `size` means a square).
    """

    mode: Literal["shorter", "exact"] = "shorter"
    size: int | tuple[int, int] = 384

    @model_validator(mode="after")
    def _check(self) -> "ResizeConfig":
        if self.mode == "shorter" and not isinstance(self.size, int):
            raise ValueError(f"resize mode 'shorter' takes one integer size, got {self.size}")
        if self.mode == "exact" and isinstance(self.size, int):
            self.size = (self.size, self.size)
        return self


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file completely and return it as an RGB PIL image.

    16-bit and float greyscale images are scaled to 8 bits (not clipped) and stacked to RGB.
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
    """The (width, height) in px that :func:`resize_image` produces for an image of this size."""
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
    `exact` sets (height, width) like torchvision ``Resize((h, w))``. None returns it unchanged.

    A dict is validated as a :class:`ResizeConfig` (pydantic ValidationError when invalid).
    """
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
    """DataError when an image of `height` x `width` px (after resize) is smaller than the
    square `crop_size` crop; `path` is named in the message when given."""
    if height < crop_size or width < crop_size:
        where = f" ({path})" if path else ""
        raise DataError(
            f"image {image_id!r}{where} is {width}x{height} (WxH) after resizing, smaller than the "
            f"{crop_size}x{crop_size} crop; use a smaller crop size or a resize (data.resize) of at least {crop_size}"
        )
