"""Image decoding and resizing, the resize setting, and the signs of damage that decodes without
error: torch-free (used by `check`, `prepare`, the loaders and ``drx predict``; imported by
drx.config for :class:`ResizeConfig`).

Nothing here substitutes data: an unreadable file or an image smaller than the crop is a
:class:`DataError` naming the file (the reference code swaps such images for random noise).
"""

from __future__ import annotations

import re
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


def _to_rgb(im: Image.Image) -> tuple[Image.Image, tuple[float, float, float] | None]:
    """(RGB copy of a decoded image, (min, max, nominal max) of the raw values of a high-bit-depth image or None)."""
    if im.mode == "RGB":
        return im.copy(), None
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float greyscale: scale to 8 bits instead of clipping at 255.
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        raw = (float(arr.min()), float(arr.max()), hi) if arr.size else None
        arr = np.clip(np.round(arr / hi * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(arr[:, :, None], 3, axis=2), "RGB"), raw
    return im.convert("RGB"), None


def _decode(path: Path) -> tuple[Image.Image, tuple[float, float, float] | None]:
    """(RGB image, (min, max, nominal max) of the raw values of a high-bit-depth image or None)."""
    try:
        with Image.open(path) as im:
            im.load()  # force the full decode now, so truncation is found here and not later
            return _to_rgb(im)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: expected an image file, found a directory") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from None


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file completely and return it as an RGB PIL image.

    16-bit and float greyscale images are scaled to 8 bits (not clipped) and stacked to RGB.
    Raises DataError naming the path when the file is missing, not an image, or truncated.
    """
    return _decode(Path(path))[0]


def as_rgb(image: Image.Image) -> Image.Image:
    """An in-memory PIL image as :func:`load_image` returns a decoded file: an RGB copy, 16-bit and
    float greyscale scaled to 8 bits (not clipped)."""
    return _to_rgb(image)[0]


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) in px from the file's header, without decoding the pixels. DataError naming
    the path when it is missing or not an image."""
    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


# ------------------------------------------------------------------------- damage that decodes

#: Thresholds of :func:`damage_signs` (documented in docs/data.md, "Damaged images").
#: A full-width run of rows at the JPEG decoder's fill (every pixel mid-grey 128±1, what libjpeg
#: writes for blocks it could not decode) at least this many rows long ...
GREY_FILL_ROWS = 8
#: ... a run of at least this many zero bytes in a JPEG's compressed data that the image's flat
#: areas cannot explain (a zero-filled hole, as a repaired split archive leaves) ...
ZERO_RUN_BYTES = 1024
#: ... an image whose values (0.5th to 99.5th percentile) span at most this many 8-bit levels ...
NEAR_CONSTANT_LEVELS = 8
#: ... and a 16-bit or float image using at most this share of its nominal range.
DEPTH_FRACTION = 1 / 16
# A genuine run of zero bits encodes flat 8x8 blocks (a DC difference of 0 and an end-of-block, each
# its optimised Huffman table's all-zero code, a few bits per block): with 3 blocks per 64 px
# (4:4:4) and up to 6 zero bits per block that is >= ~3.6 flat px per zero bit. Requiring only 2
# flat px per zero bit never flags a genuine image; a hole in textured content has none.
_FLAT_PX_PER_ZERO_BIT = 2


def _jpeg_zero_run(data: bytes) -> tuple[int, int]:
    """(length, offset) of the longest run of zero bytes after a JPEG's first start-of-scan marker."""
    sos = data.find(b"\xff\xda")
    if sos < 0:
        return 0, 0
    best = (0, 0)
    for m in re.finditer(rb"\x00{%d,}" % ZERO_RUN_BYTES, data[sos:]):
        if len(m.group()) > best[0]:
            best = (len(m.group()), sos + m.start())
    return best


def damage_signs(img: Image.Image, raw: tuple[float, float, float] | None = None, data: bytes | None = None) -> list[str]:
    """Signs that an image is damaged although it decodes without error, one sentence each (empty:
    none found). `raw` is (min, max, nominal max) of a 16-bit/float image's values; `data` the
    file's bytes when it is a JPEG. Looked for:

    * a band of full-width rows at the JPEG decoder's grey fill (every pixel 128±1, at least
      :data:`GREY_FILL_ROWS` rows) that runs to the last row: compressed data that stops early;
    * a run of at least :data:`ZERO_RUN_BYTES` zero bytes in a JPEG's compressed data that the
      image's flat areas cannot explain: a zero-filled hole (decoded as grey or as garbage);
    * a near-constant image: its values (0.5th-99.5th percentile) span at most
      :data:`NEAR_CONSTANT_LEVELS` levels;
    * a 16-bit or float image whose values use at most :data:`DEPTH_FRACTION` of the nominal range
      (e.g. 12-bit or 8-bit data in a 16-bit file, which decodes almost black).

    Flat regions in general are not flagged: heavy JPEG compression, haze and clipped skies make
    large uniform areas in genuine benchmark images (docs/data.md).
    """
    arr = np.asarray(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)
    h, w = arr.shape[:2]
    if h == 0 or w == 0:
        return ["the image has no pixels"]
    signs: list[str] = []
    grey_rows = (arr.min(axis=(1, 2)) >= 127) & (arr.max(axis=(1, 2)) <= 129)
    # The decoder fills from where the data stops to the last row; a grey band inside the picture is
    # what heavy compression makes of a grey sky (embedded v2: opencv-boat at JPEG quality 3).
    not_grey = np.flatnonzero(~grey_rows)
    run = h - (int(not_grey[-1]) + 1 if not_grey.size else 0)  # grey rows at the bottom
    start = h - run
    if run >= min(GREY_FILL_ROWS, h):
        signs.append(f"rows {start}-{start + run - 1} ({100 * run / h:.0f}% of the height) are the JPEG decoder's uniform grey fill: "
                     "part of the compressed data is zeroed or missing")
    if data is not None:
        zeros, offset = _jpeg_zero_run(data)
        if zeros:
            t = 8
            tiles = arr[: h // t * t, : w // t * t].reshape(h // t, t, w // t, t, 3)
            flat_px = int(((tiles.max(axis=(1, 3)).astype(np.int16) - tiles.min(axis=(1, 3))) <= 2).all(axis=-1).sum()) * t * t
            if flat_px < _FLAT_PX_PER_ZERO_BIT * 8 * zeros:
                signs.append(f"{zeros} zero bytes at byte {offset} of its compressed data, more than its flat areas explain: "
                             "a zero-filled hole (as a repaired or partly copied file leaves)")
    step = max(1, int(np.sqrt(h * w / 1e6)))  # about a million pixels are plenty for a percentile
    lo, hi = np.percentile(arr[::step, ::step], [0.5, 99.5])
    if hi - lo <= NEAR_CONSTANT_LEVELS:
        signs.append(f"near-constant image: its values span {lo:.0f}..{hi:.0f} of 0..255")
    if raw is not None:
        rlo, rhi, nominal = raw
        used = (rhi - rlo) / nominal if nominal else 1.0
        if used <= DEPTH_FRACTION:
            signs.append(f"its values span {rlo:g}..{rhi:g} of its 0..{nominal:g} range ({100 * used:.1f}%): "
                         "probably lower-bit data stored in a wider format (it decodes almost uniformly dark)")
    return signs


def inspect_image(path: str | Path) -> tuple[Image.Image, list[str]]:
    """Decode an image like :func:`load_image` (same errors) and return it with its
    :func:`damage_signs` (the compressed-data check for JPEG files)."""
    path = Path(path)
    img, raw = _decode(path)
    data = None
    with path.open("rb") as fh:
        if fh.read(2) == b"\xff\xd8":  # JPEG start-of-image
            data = b"\xff\xd8" + fh.read()
    return img, damage_signs(img, raw, data)


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


def prepared_resize(width: int, height: int, resize: ResizeConfig | None) -> ResizeConfig | None:
    """The resize ``drx data prepare`` applies to an image of this size: `resize`, except that a
    ``shorter`` resize never enlarges (None when the image is already small enough)."""
    if resize is None:
        return None
    if resize.mode == "shorter" and min(width, height) <= int(resize.size):  # type: ignore[arg-type]
        return None
    return resize


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
