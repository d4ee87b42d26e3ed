"""One typed experiment configuration, YAML presets with inheritance, and dotted overrides.

Every YAML file drx reads is a (partial) :class:`ExperimentConfig`, optionally naming a ``base``
(a packaged preset such as ``paper`` or ``tiny``, or a path relative to the file) that it extends.
Mappings merge key by key; lists and scalars replace. Dotted overrides (``train.lr=1e-4``,
``model.ddwm.groups=[dis,sem]``) apply last. Unknown keys and bad values raise
:class:`ConfigError` naming the key, the value and the closest valid key.
"""

from __future__ import annotations

import copy
import difflib
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from drx.data.benchmarks import BENCHMARKS
from drx.data.images import ResizeConfig
from drx.errors import ConfigError
from drx.io import atomic_write_text
from drx.schema import StrictModel, model_in, unknown_key_message, validation_message

PRESET_DIR = Path(__file__).parent / "presets"

# DA-CLIP's ten degradation names, in the order of its README and of the DR.Experts code.
DACLIP_PROMPTS: tuple[str, ...] = (
    "motion-blurry",
    "hazy",
    "jpeg-compressed",
    "low-light",
    "noisy",
    "raindrop",
    "rainy",
    "shadowed",
    "snowy",
    "uncompleted",
)

VARIANTS = ("image_encoder", "prior_only", "dsdm", "full")
FEATURE_GROUPS = ("dis", "sem", "bri")
# The benchmark registry's names (drx.data.benchmarks); a misspelt one is an error naming the closest.
BenchmarkName = Literal[BENCHMARKS]  # type: ignore[valid-type]


# ----------------------------------------------------------------------------------------- model


class BackboneConfig(StrictModel):
    name: str = "deit3_small_patch16_384"
    # Local file: the official DeiT-III checkpoint, a timm state dict or a .safetensors file.
    pretrained: str | None = None
    # Extra keyword arguments for timm.create_model (the tiny preset sizes its ViT here).
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # Activation checkpointing of the encoder blocks: "selective" keeps the matmul and attention
    # outputs and recomputes the cheap element-wise ops (LayerNorm, GELU, LayerScale) in backward;
    # "full" recomputes whole blocks (timm's checkpoint_seq).
    grad_checkpointing: Literal["none", "selective", "full"] = "none"
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)


class PriorConfig(StrictModel):
    kind: Literal["daclip", "clip", "none"] = "daclip"
    # open_clip architecture name; its JSON config ships inside open_clip_torch (nothing is fetched).
    arch: str = "ViT-B-32"
    # Merged over the architecture's config: {embed_dim, vision_cfg: {...}, text_cfg: {...}}.
    arch_overrides: dict[str, Any] = Field(default_factory=dict)
    # Local file in the official daclip_ViT-B-32.pt layout (or an open_clip CLIP state dict for
    # kind=clip), or "builtin:tiny-daclip" for the miniature prior drx trains itself.
    checkpoint: str | None = None
    # One expert per prompt.
    prompts: list[str] = Field(default_factory=lambda: list(DACLIP_PROMPTS))

    @field_validator("prompts")
    @classmethod
    def _check_prompts(cls, prompts: list[str]) -> list[str]:
        if not prompts:
            raise ValueError("needs at least one prompt (one expert per prompt), got an empty list")
        for p in prompts:
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"every prompt must be a non-empty string, got {p!r}")
        dup = sorted({p for p in prompts if prompts.count(p) > 1})
        if dup:
            raise ValueError(f"duplicate prompts {dup}: two identical experts would be indistinguishable")
        return prompts


class DSDMConfig(StrictModel):
    alpha_init: float = 0.5
    lambda_init: float = 0.0

    @field_validator("alpha_init", "lambda_init")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"must be a finite number, got {v}")
        return v


class DDWMConfig(StrictModel):
    groups: list[Literal["dis", "sem", "bri"]] = Field(default_factory=lambda: list(FEATURE_GROUPS))
    hidden: list[int] = Field(default_factory=lambda: [384, 32, 16])
    # Output layer initialisation. "default": PyTorch's (as the reference code). "uniform": zero
    # weights and bias 1/E, so Σ a_i = 1 at the start: the full model starts as the image-encoder
    # model and the experts learn to modulate it (helps training from scratch).
    gate_init: Literal["default", "uniform"] = "default"

    @field_validator("groups")
    @classmethod
    def _check_groups(cls, groups: list[str]) -> list[str]:
        if not groups:
            raise ValueError(f"needs a non-empty subset of {list(FEATURE_GROUPS)}, got []")
        if len(set(groups)) != len(groups):
            raise ValueError(f"groups must not repeat, got {groups}")
        # Canonical order, so [sem, dis] and [dis, sem] are the same model.
        return [g for g in FEATURE_GROUPS if g in groups]

    @field_validator("hidden")
    @classmethod
    def _check_hidden(cls, hidden: list[int]) -> list[int]:
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden widths must be positive integers, got {hidden}")
        return hidden


class ModelConfig(StrictModel):
    variant: Literal["image_encoder", "prior_only", "dsdm", "full"] = "full"
    # clean: drx's numerics; authors: the authors' code's quirks, to reproduce it exactly (docs/model.md).
    compat: Literal["clean", "authors"] = "clean"
    img_size: int = Field(384, ge=16)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    prior: PriorConfig = Field(default_factory=PriorConfig)
    dsdm: DSDMConfig = Field(default_factory=DSDMConfig)
    ddwm: DDWMConfig = Field(default_factory=DDWMConfig)

    @field_validator("compat", mode="before")
    @classmethod
    def _renamed_compat(cls, value: Any) -> Any:
        if value == "reference":
            raise ValueError("model.compat 'reference' was renamed 'authors': write `compat: authors`")
        return value

    @model_validator(mode="after")
    def _check_variant(self) -> "ModelConfig":
        if self.variant == "prior_only" and self.prior.kind == "none":
            raise ValueError("variant 'prior_only' needs a prior: set model.prior.kind to 'daclip' or 'clip'")
        return self

    @property
    def num_experts(self) -> int:
        return len(self.prior.prompts)


# ------------------------------------------------------------------------------------------ data


class SplitConfig(StrictModel):
    # random: persisted random train/test splits (seed, n_splits, train_fraction), the validation part
    # carved from the training part (val_fraction). official: the benchmark's own train/validation/
    # test parts, from the labels' split column or from `file` (docs/data.md); n_splits defaults to 1.
    protocol: Literal["random", "official"] = "random"
    index: int = Field(0, ge=0)
    n_splits: int = Field(10, ge=1)
    seed: int = 0
    train_fraction: float = Field(0.8, gt=0.0, lt=1.0)
    # Carved out of the training part, for model selection and HPO; never the test part.
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # Data-efficiency subset of the training part (nested across fractions), same test part.
    fraction: float = Field(1.0, gt=0.0, le=1.0)
    # Explicit split file; default: <data.cache or ~/.cache/drx>/splits/<benchmark>-....json. Under
    # protocol official: a file whose splits list train, val and test ids (else the labels' column).
    file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _official_has_one_split(cls, data: Any) -> Any:
        # An official split is one split unless its file holds more: n_splits defaults to 1 there.
        if isinstance(data, dict) and data.get("protocol") == "official" and "n_splits" not in data:
            data = {**data, "n_splits": 1}
        return data

    @model_validator(mode="after")
    def _index_in_range(self) -> "SplitConfig":
        if self.index >= self.n_splits:
            raise ValueError(f"split index {self.index} is out of range for n_splits={self.n_splits} (0..{self.n_splits - 1})")
        return self


class DataConfig(StrictModel):
    benchmark: BenchmarkName = "embedded"
    root: str | None = None
    # Adapter options, e.g. koniq {score_column: MOS}; csv {path_column, score_column, group_column}.
    options: dict[str, Any] = Field(default_factory=dict)
    # Cross-dataset: train on `benchmark`, test on every image of `test_benchmark`.
    test_benchmark: BenchmarkName | None = None
    test_root: str | None = None
    test_options: dict[str, Any] = Field(default_factory=dict)
    # Cross-dataset training part: all images of `benchmark`, or the split's training part.
    cross_train: Literal["all", "split"] = "all"
    split: SplitConfig = Field(default_factory=SplitConfig)
    resize: ResizeConfig | None = None
    train_crops: int = Field(1, ge=1)
    test_crops: int = Field(1, ge=1)
    hflip: bool = True
    vflip: bool = False
    # Seed of the fixed per-image test crops (the same crops at every evaluation).
    test_crop_seed: int = 0
    # Folder of prepared (resized) copies written by `drx data prepare`, and of split files.
    cache: str | None = None
    num_workers: int = Field(0, ge=0)
    # Keep decoded images in memory (per worker): for small benchmarks such as the embedded one.
    cache_images: bool = False


# ----------------------------------------------------------------------------------------- train


class TrainConfig(StrictModel):
    epochs: int = Field(9, ge=1)
    # Budget by steps, not wall time: a fixed number of optimiser steps per epoch (None: one pass).
    steps_per_epoch: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    lr: float = Field(2e-4, gt=0.0)
    # The image encoder's learning rate is lr × this (1: one rate for all, as the reference).
    encoder_lr_scale: float = Field(1.0, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    schedule: Literal["step", "cosine", "constant"] = "step"
    warmup_epochs: float = Field(3.0, ge=0.0)
    warmup_lr: float = Field(2e-7, ge=0.0)
    decay_epochs: float = Field(3.0, gt=0.0)
    decay_rate: float = Field(0.1, gt=0.0, le=1.0)
    min_lr: float = Field(0.0, ge=0.0)
    loss: Literal["smoothl1", "l1", "mse"] = "smoothl1"
    smoothl1_beta: float = Field(1.0, gt=0.0)
    # MOS is rescaled from the benchmark's nominal range to this range for the loss; predictions
    # are mapped back for reporting. None trains on raw MOS as the reference code does.
    target_range: tuple[float, float] | None = (0.0, 1.0)
    grad_clip: float | None = Field(5.0, gt=0.0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Which part selects the best epoch: val, the validation part carved from the training images
    # (by SRCC); test, the test part by PLCC, as the authors' code does (tables say so).
    select_on: Literal["val", "test"] = "val"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)
    # torch.compile of the model for the training step and evaluation (docs/training.md, "Compiled
    # training"): auto compiles on CUDA and stays eager on the CPU, where compiling the tiny preset
    # did not pay for itself; true/false force it. Scores equal eager ones to float rounding.
    compile: Literal["auto", True, False] = "auto"
    # Keep a checkpoint of the weights at the best validation epoch (for `drx predict`).
    keep_best: bool = True

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "protocol" in data:
            old = data["protocol"]
            new = {"clean": "val", "reference": "test"}.get(old, "val or test")
            raise ValueError(f"train.protocol was renamed train.select_on: write `select_on: {new}` (protocol {old!r})")
        return data

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.target_range is not None and not self.target_range[0] < self.target_range[1]:
            raise ValueError(f"target_range must be (low, high) with low < high, got {self.target_range}")
        return self


class ResourcesConfig(StrictModel):
    cpu: float = Field(1.0, gt=0.0)
    gpu: float = Field(0.0, ge=0.0)


# -------------------------------------------------------------------------------------- tracking

#: The experiment trackers drx logs to; each is installed by the drx extra of the same name
#: (``pip install 'drx[mlflow]'``).
TRACKERS = ("mlflow", "tensorboard", "wandb")


class TrackingConfig(StrictModel):
    """Where trials are followed live (docs/training.md, "Experiment trackers"): every trial's
    resolved config, per-epoch metrics and final result. It says where a trial is watched, not what
    it computes: an experiment's fingerprint and the logged parameters leave it out
    (:func:`without_tracking`)."""

    backends: list[Literal["mlflow", "tensorboard", "wandb"]] = Field(default_factory=list)
    # MLflow tracking URI: http://host:5000 (an `mlflow server`), sqlite:///mlflow.db, ... None: MLflow's
    # own default (MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working folder).
    mlflow_uri: str | None = None
    # W&B project. None: WANDB_PROJECT, else "drx". (Entity, mode, folder: W&B's own WANDB_* variables.)
    wandb_project: str | None = None
    # The group every trial of one study joins: MLflow experiment, W&B group, TensorBoard folder.
    # None: the study's name (drx ablate/tune; --name), or the first part of `name` (drx train).
    group: str | None = None
    # TensorBoard event files go to <tensorboard_dir>/<group>/<trial>/. None: <storage>/tensorboard
    # (drx ablate/tune) or tensorboard/ beside the --out folder (drx train).
    tensorboard_dir: str | None = None

    @field_validator("backends", mode="before")
    @classmethod
    def _one_or_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # `--set tracking.backends=mlflow`

    @field_validator("backends")
    @classmethod
    def _unique(cls, backends: list[str]) -> list[str]:
        if len(set(backends)) != len(backends):
            raise ValueError(f"backends must not repeat, got {backends}")
        return backends

    @field_validator("mlflow_uri", "wandb_project", "group", "tensorboard_dir")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a non-empty string or null (the default)")
        return value


class ExperimentConfig(StrictModel):
    name: str = "drx"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved config as plain YAML/JSON-able data."""
        return self.model_dump(mode="json")


#: Sections of a config that say where a trial is followed, not what it computes.
NOT_COMPUTED = ("tracking",)
#: Keys (section, key) that choose how the same maths runs, equal to float rounding
#: (tests/test_compiled_path.py): an experiment made without them, or with another value, resumes.
NOT_COMPUTED_KEYS = (("train", "compile"),)


def without_tracking(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config (``ExperimentConfig.to_dict()``) without the sections and keys that do not
    change what the trial computes (:data:`NOT_COMPUTED`, :data:`NOT_COMPUTED_KEYS`): what an
    experiment's fingerprint hashes and what a tracker logs as parameters, so turning a tracker on
    or compiling the model never makes a trial look different."""
    out = {k: v for k, v in config.items() if k not in NOT_COMPUTED}
    for section, key in NOT_COMPUTED_KEYS:
        if isinstance(out.get(section), dict) and key in out[section]:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


# ------------------------------------------------------------------------------- loading, merging


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    return data


def resolve_source(source: str | Path, relative_to: Path | None = None) -> Path:
    """A preset name (``tiny``, ``paper-koniq``) or a YAML path -> the file to read."""
    s = str(source)
    candidates = []
    if relative_to is not None and not Path(s).is_absolute():
        candidates.append(relative_to / s)
    candidates.append(Path(s))
    for c in candidates:
        if c.is_file():
            return c
    preset = PRESET_DIR / f"{s}.yaml"
    if preset.is_file():
        return preset
    close = difflib.get_close_matches(s, list_presets(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; presets: {', '.join(list_presets())}"
    raise ConfigError(f"config {s!r} is neither a file nor a packaged preset{hint}")


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge recursively; anything else in `update` replaces."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_raw(source: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config with its ``base`` chain resolved into one plain dict."""
    path = resolve_source(source).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"circular `base` chain: {chain}")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = resolve_source(base, relative_to=path.parent)
    return deep_merge(load_raw(base_path, (*_seen, path)), data)


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-4"`` -> ``("train.lr", 1e-4)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value (e.g. train.lr=1e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML: {exc}") from None
    return key, value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data["a"]["b"]["c"] = value`` for key ``a.b.c``, checking each part against the schema."""
    parts = key.split(".")
    _check_dotted_key(parts)
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    out = copy.deepcopy(data)
    if not overrides:
        return out
    items = [parse_override(o) for o in overrides] if isinstance(overrides, list) else list(overrides.items())
    for k, v in items:
        set_dotted(out, k, v)
    return out


#: Dotted keys renamed since earlier versions -> (new key, how old values map).
RENAMED_KEYS = {"train.protocol": ("train.select_on", "clean -> val, reference -> test")}


def _check_dotted_key(parts: list[str]) -> None:
    key = ".".join(parts)
    if key in RENAMED_KEYS:
        new, values = RENAMED_KEYS[key]
        raise ConfigError(f"{key} was renamed {new} ({values})")
    model: type[BaseModel] = ExperimentConfig
    for i, p in enumerate(parts):
        if p not in model.model_fields:
            where = ".".join(parts[:i]) or "<top level>"
            raise ConfigError(unknown_key_message(".".join(parts[: i + 1]), None, list(model.model_fields), where))
        if i == len(parts) - 1:
            return
        ann = model.model_fields[p].annotation
        nxt = model_in(ann)
        if nxt is None:
            if "dict" in str(ann):
                return  # a free-form mapping (data.options, backbone.kwargs): any sub-key goes
            raise ConfigError(f"{'.'.join(parts[: i + 1])} is a value, not a section: cannot set {'.'.join(parts)}")
        model = nxt


def build_config(data: dict[str, Any], origin: str = "") -> ExperimentConfig:
    """Validate a plain dict into an ExperimentConfig, with readable errors."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, ExperimentConfig, "config", origin)) from None


def load_config(
    source: str | Path | dict[str, Any] | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
) -> ExperimentConfig:
    """Preset name, YAML path or dict (+ dotted overrides) -> a validated ExperimentConfig."""
    if source is None:
        raw: dict[str, Any] = {}
        origin = "defaults"
    elif isinstance(source, dict):
        raw = copy.deepcopy(source)
        base = raw.pop("base", None)
        if base is not None:
            raw = deep_merge(load_raw(base), raw)
        origin = "mapping"
    else:
        raw = load_raw(source)
        origin = str(source)
    raw = apply_overrides(raw, overrides)
    return build_config(raw, origin)


def save_config(config: ExperimentConfig, path: str | Path) -> Path:
    """Write the fully resolved config; ``load_config(path)`` gives the same config back."""
    return atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
