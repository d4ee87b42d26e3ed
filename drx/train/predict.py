"""Quality scores of images from a trained trial, with the experts that drove them: ``drx predict``
and the Python API ``drx.load_scorer``.

Both take one path: :func:`load_trained` reads the checkpoint, :func:`predict_images` repeats the
trial's preprocessing on every image (a file, or a PIL image or tensor already in memory) and
scores its fixed crops through :func:`drx.train.scoring.score_images`. The command and the
:class:`Scorer` differ only in how they present the result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd
import torch
from PIL import Image

from drx.builtin import resolve
from drx.config import ExperimentConfig, build_config
from drx.data.benchmarks.base import listing
from drx.data.images import ResizeConfig, as_rgb, check_fits, load_image, prepared_resize, resize_image
from drx.data.loader import EvalCrops
from drx.errors import CheckpointError, DataError
from drx.model import build_model
from drx.model.weights import load_strict
from drx.train.checkpoint import BEST_NAME, CHECKPOINT_NAME, load_checkpoint
from drx.train.scoring import mos_scaler, score_images
from drx.train.trainer import resolve_device

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}

#: One image for :func:`predict_images`: a file, or an in-memory PIL image with the name it is reported under.
ImageItem = Union[str, Path, tuple[str, Image.Image]]

#: Float tensors given to a :class:`Scorer` hold RGB values in [0, 1]; values this far outside
#: (a resize's overshoot) are clamped, anything further out is an error (e.g. an ImageNet-normalised batch).
TENSOR_RANGE_SLACK = 0.02


@dataclass
class Prediction:
    scores: pd.DataFrame  # image, score, then one column per expert prompt (mean DDWM weight)
    errors: list[tuple[str, str]]  # (path, reason) of images that could not be scored
    prompts: list[str]
    warnings: list[str] = field(default_factory=list)  # e.g. images at another scale than the training images


@dataclass
class Trained:
    """A trained trial read back from its checkpoint, ready to score images."""

    model: Any  # the DRExperts model, in eval mode on the device asked for
    config: ExperimentConfig
    mos_range: tuple[float, float]  # the benchmark's MOS scale the scores are mapped to
    inputs: dict[str, Any]  # what the training images went through (drx.train.trainer.inputs_record)
    checkpoint: Path  # the file read
    notes: list[str] = field(default_factory=list)  # e.g. "no selected epoch: last epoch's weights"


#: drx predict warns when an image's shorter side, after the trial's preprocessing, differs from the
#: training images' median by more than this factor (the crops then cover another share of it).
SCALE_TOLERANCE = 1.5


def load_trained(checkpoint: str | Path, device: torch.device | None = None) -> Trained:
    """Read a trained trial. A trial folder gives its selected epoch's weights (``best``), or, when
    no epoch was selected, its last checkpoint (with a note saying so). A checkpoint that carries
    its prior's weights (``prior``: one written by ``drx import``) uses them instead of the file
    ``model.prior.checkpoint`` names. Raises CheckpointError for anything that is not a drx
    safetensors checkpoint (never unpickled) or whose weights do not fit its config."""
    path = Path(checkpoint)
    notes: list[str] = []
    if path.is_dir() and not (path / BEST_NAME).is_file() and (path / CHECKPOINT_NAME).is_file():
        notes.append(f"{path} has no {BEST_NAME} (no epoch was selected, or train.keep_best false): scoring with the last epoch's weights")
    elif path.is_dir() and (path / BEST_NAME).is_file():
        path = path / BEST_NAME
    state = load_checkpoint(path)
    cfg = build_config(state["config"], f"checkpoint {checkpoint}")
    # The checkpoint holds every trained encoder weight: the pretrained file is not needed (and a
    # built-in one would be built for nothing on a machine that only predicts).
    model_cfg = cfg.model.model_copy(deep=True)
    model_cfg.backbone.pretrained = None
    prior_state = state.get("prior")
    if prior_state is not None:
        model_cfg.prior.checkpoint = None  # the checkpoint carries the prior's weights itself
    model = build_model(resolve(model_cfg))
    try:
        model.load_trainable_state_dict(state["model"])
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r}: {exc}") from None
    if prior_state is not None:
        if model.prior is None:
            raise CheckpointError(f"checkpoint {str(path)!r} carries prior weights, but its model ({cfg.model.variant}) has no prior")
        load_strict(model.prior, prior_state, "prior (in the checkpoint)", path)
        model.prior.refresh_text_features()
    device = device or torch.device("cpu")
    model.to(device).eval()
    return Trained(model, cfg, tuple(state.get("mos_range") or (0.0, 1.0)), dict(state.get("inputs") or {}), path, notes)


def collect_images(inputs: Sequence[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
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


def _preprocess(img, inputs: dict[str, Any], resize: ResizeConfig | None):
    """What the trial's training images went through: the prepared copy's resize (shrink-only, as
    ``drx data prepare`` does), then ``data.resize``."""
    prepared = (inputs.get("prepared") or {}).get("resize")
    if prepared is not None:
        step = ResizeConfig.model_validate(prepared)
        img = resize_image(img, prepared_resize(img.width, img.height, step))
    return resize_image(img, resize)


def _pixels_key(img: Image.Image) -> str:
    """The key of an image's fixed crop positions: a digest of its pixels (after preprocessing), so a
    file, a PIL image and a tensor of the same picture get the same crops whatever they are called."""
    digest = hashlib.sha256(img.tobytes()).hexdigest()[:20]
    return f"{img.width}x{img.height}:{digest}"


def predict_images(trained: Trained, images: Sequence[ImageItem], batch_size: int = 32) -> Prediction:
    """Score each readable image as the trial's images were scored: the preprocessing its training
    images went through (the prepared copy's resize, then ``data.resize``: ``trained.inputs``),
    then ``data.test_crops`` fixed crops of ``model.img_size`` pixels, at positions fixed by the
    image's pixels; scores on the benchmark's MOS scale.

    `images`: files, or ``(name, PIL image)`` pairs already in memory (reported under `name`).
    Unreadable or too small images are listed in ``errors``, never silently dropped; images whose
    shorter side differs from the training images' by more than :data:`SCALE_TOLERANCE` after that
    preprocessing are scored and named in ``warnings`` with the scale ratio."""
    model, cfg, inputs = trained.model, trained.config, trained.inputs
    names: list[str] = []
    keys: list[str] = []
    locations: list[str] = []
    in_memory: list[Image.Image | None] = []
    errors, warnings = [], list(trained.notes)
    train_side = inputs.get("train_short_side_px")
    off_scale = []
    for item in images:
        if isinstance(item, tuple):
            name, given, location = str(item[0]), item[1], str(item[0])
        else:
            name, given, location = str(item), None, str(Path(item).resolve())
        try:
            original = as_rgb(given) if given is not None else load_image(item)  # type: ignore[arg-type]
            img = _preprocess(original, inputs, cfg.data.resize)
            check_fits(name, img.height, img.width, cfg.model.img_size, name)
        except DataError as exc:
            errors.append((name, str(exc)))
            continue
        names.append(name)
        keys.append(_pixels_key(img))
        locations.append(location)
        in_memory.append(original if given is not None else None)
        if train_side:
            ratio = min(img.width, img.height) / float(train_side)
            if ratio > SCALE_TOLERANCE or ratio < 1 / SCALE_TOLERANCE:
                off_scale.append(f"{name} ({min(img.width, img.height)} px, x{ratio:.2g})")
    if off_scale:
        warnings.append(
            f"{len(off_scale)} image(s) are at another scale than the training images (shorter side ~{train_side:.0f} px after "
            f"the trial's preprocessing), so the {cfg.model.img_size}-px crops cover a different share of them: {listing(off_scale)}. "
            "Resize them like the training images (or train with data.resize set) for comparable scores"
        )
    prompts = list(model.prompts)
    if not names:
        return Prediction(pd.DataFrame(columns=["image", "score", *prompts]), errors, prompts, warnings)
    manifest = pd.DataFrame({"image_id": keys, "path": locations, "mos": np.nan})
    prepared = (inputs.get("prepared") or {}).get("resize")
    dataset = EvalCrops(manifest, cfg.model.img_size, cfg.data.test_crops, resize=cfg.data.resize, seed=cfg.data.test_crop_seed,
                        prepared=prepared, images=in_memory)
    scores = score_images(model, dataset, cfg, expert_weights=True, batch_size=batch_size)
    _, to_mos = mos_scaler(trained.mos_range, cfg.train.target_range)
    table: dict[str, Any] = {"image": [names[int(i)] for i in scores.index], "score": to_mos(scores.score)}
    if scores.expert_weights is not None:
        for e, prompt in enumerate(prompts):
            table[prompt] = scores.expert_weights[:, e]
    return Prediction(pd.DataFrame(table), errors, prompts, warnings)


# ------------------------------------------------------------------------------------ the Python API


@dataclass
class ScoreResult:
    """The scores of B images, in the order given (a folder contributes its image files sorted by path).

    ``images`` [B]: each image's name (a file's path as found; ``tensor[i]`` / ``image[i]`` for the
    i-th in-memory image, or a PIL image's own ``filename``). ``scores`` [B] float64: predicted
    quality on the MOS scale of the benchmark the trial was trained on (``mos_range``, e.g. 0-100
    for KonIQ-10k), the mean over the trial's fixed test crops. ``expert_weights``: a DataFrame
    [B, E], one column per expert named by its prompt (``model.prior.prompts`` order), indexed by
    ``images``: the mean DDWM weight of each expert over the crops, i.e. which distortion experts
    drove each score (the ``full`` variant; None for variants without DDWM). ``table``: the table
    ``drx predict`` prints (image, score, one column per prompt). ``errors``: (name, reason) of
    images skipped with ``skip_errors=True``; ``warnings``: e.g. images at another scale than the
    training images.
    """

    images: list[str]
    scores: np.ndarray
    expert_weights: pd.DataFrame | None
    table: pd.DataFrame
    mos_range: tuple[float, float]
    warnings: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)


def _tensor_image(x: torch.Tensor, name: str) -> Image.Image:
    """[3,H,W] RGB, float in [0, 1] or uint8 in 0..255 -> an 8-bit PIL image (what a decoded file is)."""
    if x.ndim != 3 or x.shape[0] != 3:
        raise DataError(f"{name}: expected an RGB image tensor [3,H,W] (or a batch [B,3,H,W]), got shape {tuple(x.shape)}")
    x = x.detach().cpu()
    if x.dtype == torch.uint8:
        arr = x
    elif x.is_floating_point():
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"{name}: the tensor holds NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < -TENSOR_RANGE_SLACK or hi > 1 + TENSOR_RANGE_SLACK:
            raise DataError(
                f"{name}: expected RGB values in [0, 1], not normalised, got values from {lo:.3g} to {hi:.3g}. Pass the images "
                "before any ImageNet/CLIP normalisation (drx applies the trial's own), divided by 255 if they are 0-255 floats"
            )
        # 8 bits, as the trial's images were decoded: a tensor scores exactly as the file it came from.
        arr = (x.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    else:
        raise DataError(f"{name}: expected a float tensor in [0, 1] or a uint8 tensor, got dtype {x.dtype}")
    return Image.fromarray(np.ascontiguousarray(arr.permute(1, 2, 0).numpy()), "RGB")


def _items(images: Any) -> tuple[list[ImageItem], list[tuple[str, str]]]:
    """What a Scorer was given -> (items for predict_images, (name, reason) of inputs that are not there)."""
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    elif isinstance(images, torch.Tensor):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4:
            raise DataError(f"expected an image batch [B,3,H,W] or one image [3,H,W], got a tensor of shape {tuple(images.shape)}")
        return [(f"tensor[{i}]", _tensor_image(x, f"tensor[{i}]")) for i, x in enumerate(images)], []
    elif not isinstance(images, Sequence):
        raise DataError(f"expected image files, folders, PIL images or an image tensor, got {type(images).__name__}")
    items: list[ImageItem] = []
    errors: list[tuple[str, str]] = []
    for i, image in enumerate(images):
        if isinstance(image, (str, Path)):
            files, missing = collect_images([image])
            items.extend(files)
            errors.extend(missing)
        elif isinstance(image, Image.Image):
            items.append((getattr(image, "filename", "") or f"image[{i}]", image))
        elif isinstance(image, torch.Tensor):
            items.append((f"tensor[{i}]", _tensor_image(image, f"tensor[{i}]")))
        else:
            raise DataError(f"image [{i}]: expected a file or folder path, a PIL image or a tensor [3,H,W], got {type(image).__name__}")
    return items, errors


class Scorer:
    """A trained trial ready to score images (see :func:`load_scorer`).

    ``scorer(images)`` -> :class:`ScoreResult`. `images`: a path (file or folder, searched
    recursively), a PIL image, a tensor [B,3,H,W] or [3,H,W], or a list of these. Tensors hold RGB
    values in [0, 1] (float, not normalised; uint8 0..255 also works) and are rounded to 8 bits,
    as decoded image files are, so a tensor scores exactly as the file it was read from. Every
    image goes through the trial's own preprocessing (its recorded resizes, ImageNet
    normalisation, ``data.test_crops`` fixed crops of ``model.img_size`` px), exactly as ``drx
    predict`` does; images of any size at least the crop size are accepted.
    """

    def __init__(self, trained: Trained):
        self.trained = trained

    @property
    def prompts(self) -> list[str]:
        """The experts' prompts, in the order of the ``expert_weights`` columns."""
        return list(self.trained.model.prompts)

    @property
    def mos_range(self) -> tuple[float, float]:
        """The benchmark's MOS scale the scores are on."""
        return self.trained.mos_range

    @property
    def config(self) -> ExperimentConfig:
        return self.trained.config

    @property
    def model(self) -> torch.nn.Module:
        return self.trained.model

    @property
    def device(self) -> torch.device:
        return next(self.trained.model.parameters()).device

    def __call__(self, images: Any, batch_size: int = 32, skip_errors: bool = False) -> ScoreResult:
        """Score `images` in batches of `batch_size` crops. Raises DataError naming every image that
        cannot be scored (missing, unreadable, smaller than the crop, a tensor out of range) unless
        `skip_errors`, which scores the others and lists those in ``errors``."""
        items, errors = _items(images)
        pred = predict_images(self.trained, items, batch_size=batch_size)
        errors = errors + pred.errors
        if errors and not skip_errors:
            raise DataError(f"could not score {len(errors)} image(s): " + "; ".join(f"{n}: {r}" for n, r in errors))
        table = pred.scores.reset_index(drop=True)
        names = [str(n) for n in table["image"]]
        experts = [p for p in pred.prompts if p in table.columns]
        weights = None
        if experts:
            weights = table[experts].astype(np.float64).set_index(pd.Index(names, name="image"))
        return ScoreResult(names, table["score"].to_numpy(dtype=np.float64), weights, table, self.mos_range, pred.warnings, errors)


def load_scorer(checkpoint: str | Path, device: str | torch.device | None = None) -> Scorer:
    """A trained trial as a Python scorer: ``scorer = load_scorer("runs/koniq-s0"); scorer(images)``.

    `checkpoint`: a trial folder (its ``best.safetensors``, else its last checkpoint), a
    ``best.safetensors`` / ``checkpoint.safetensors`` file, or a folder written by ``drx import``.
    `device`: ``"cpu"``, ``"cuda"`` (or a torch.device); None picks CUDA when available. Scoring
    runs under the trial's ``train.precision`` rule, as evaluation did. Raises CheckpointError for
    a file that is not a drx safetensors checkpoint (nothing is unpickled) and ConfigError for
    ``cuda`` without a CUDA device.
    """
    if device is None or isinstance(device, str):
        device = resolve_device(device or "auto")
    return Scorer(load_trained(checkpoint, device))


__all__ = ["Prediction", "ScoreResult", "Scorer", "Trained", "collect_images", "load_scorer", "load_trained", "predict_images"]
