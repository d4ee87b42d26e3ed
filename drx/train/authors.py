"""``drx import authors``: the DR.Experts authors' own checkpoints as drx trials.

The authors' training script (their utils.py ``save_checkpoint``) writes ``ckpt_epoch_<n>.pth``
with ``torch.save``: a zip whose ``data.pkl`` pickles ``{"model": state dict of their
dascore_vit_models (DA-CLIP included), "optimizer", "lr_scheduler", "max_plcc", "scaler",
"epoch", "config": a yacs CfgNode}``. :func:`read_authors_checkpoint` reads it without running any
code the pickle names: torch's weights-only unpickler (``torch.load(weights_only=True)``, which
never calls anything outside its allow-list of tensor rebuild functions and containers) with every
other class the file names (found first by torch's static scan,
``torch.serialization.get_unsafe_globals_in_checkpoint``) allow-listed as an inert placeholder
(:func:`_placeholder`) that stores what the pickle gives it and calls nothing. The modules torch
blocks outright (``os``, ``sys``, ...) stay refused. Each skipped entry is reported.

:func:`import_authors` maps the weights to a :class:`~drx.model.DRExperts` with ``model.compat:
authors`` (their numerics), its architecture inferred from the tensors' shapes where they say it
(and from the preset or ``--set`` where they cannot: attention heads, prompts), and writes a drx
trial checkpoint (safetensors + JSON) that ``drx predict`` and ``drx.load_scorer`` read. The key
mapping is :func:`drx.model.weights.map_authors_keys` (docs/model.md has the table).
"""

from __future__ import annotations

import hashlib
import math
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from drx.config import ExperimentConfig, ModelConfig, deep_merge, list_presets, load_config, save_config
from drx.data.benchmarks import BENCHMARKS, authors_resize, get_adapter
from drx.errors import CheckpointError, ConfigError, DataError
from drx.model import build_model
from drx.model.backbone import ImageEncoder
from drx.model.prior import prior_arch_config
from drx.model.weights import is_authors_layout, load_strict, map_authors_keys
from drx.train.checkpoint import BEST_NAME, FORMAT, save_checkpoint

#: The entries of the authors' checkpoint and what drx does with each.
AUTHORS_ENTRIES = {
    "model": "imported",
    "epoch": "recorded",
    "max_plcc": "recorded",
    "config": "read as plain data for DATA.DATASET (the benchmark) when --benchmark is not given",
    "optimizer": "not imported (training state: an imported trial is scored, not resumed)",
    "lr_scheduler": "not imported (training state)",
    "scaler": "not imported (training state)",
}
#: Attention heads of the authors' two backbone sizes (their models/deit.py: model_size small / base).
AUTHORS_HEADS = {384: 6, 768: 12}
_SKIPPED = "drx_skipped"  # attribute of a placeholder instance: the class the pickle named


# ------------------------------------------------------------------------------------- reading


def _placeholder(name: str) -> type:
    """An inert stand-in allow-listed under the global `name`: creating or "calling" it returns an
    empty OrderedDict tagged with `name` (the one container torch's weights-only unpickler lets a
    pickle fill, item by item and attribute by attribute), so the data the pickle stores for it is
    kept as plain data and nothing the name refers to is ever imported or run."""

    def new(cls, *args, **kwargs):
        inert: OrderedDict = OrderedDict()
        inert.__dict__[_SKIPPED] = name
        return inert

    return type(f"Skipped[{name}]", (), {"__new__": new, "__module__": __name__})


def skipped_class(obj: Any) -> str | None:
    """The class name a placeholder stands for, or None for a real object."""
    return getattr(obj, "__dict__", {}).get(_SKIPPED) if isinstance(obj, OrderedDict) else None


def _placeholders_in(obj: Any, where: str, found: list[tuple[str, str]], depth: int = 0) -> None:
    name = skipped_class(obj)
    if name is not None:
        found.append((where, name))
        return
    if depth > 6 or isinstance(obj, torch.Tensor):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            _placeholders_in(v, f"{where}.{k}" if where else str(k), found, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _placeholders_in(v, f"{where}[{i}]", found, depth + 1)


def read_torch_file(path: str | Path) -> tuple[Any, list[tuple[str, str]]]:
    """A ``torch.save`` zip read without running code: (the object, [(where, class name)] of every
    object whose class is outside torch's weights-only allow-list, kept as an inert placeholder).

    Raises CheckpointError naming the file when it is missing, not a ``torch.save`` zip, or names
    a module torch refuses outright (``os``, ``sys``, ...: a pickle built to run code)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist (expected the authors' ckpt_epoch_<n>.pth)")
    if not zipfile.is_zipfile(p):
        raise CheckpointError(f"{str(p)!r} is not a torch.save zip file (the authors' ckpt_epoch_<n>.pth is one)")
    try:
        # A static scan of the pickle's opcodes: it names the globals without importing or calling them.
        unknown = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(p))
    except Exception as exc:  # a damaged zip or an opcode the scanner does not know: nothing was run
        raise CheckpointError(f"{str(p)!r} could not be scanned as a torch.save checkpoint: {exc}") from None
    try:
        with torch.serialization.safe_globals([(_placeholder(name), name) for name in unknown]):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's refusal (e.g. a blocked module such as os.system) or a damaged file
        raise CheckpointError(f"{str(p)!r} could not be read without running code it holds, so it was refused: {_reason(exc)}") from None
    found: list[tuple[str, str]] = []
    _placeholders_in(obj, "", found)
    return obj, found


def _reason(exc: Exception) -> str:
    """torch's refusal without its generic advice (to retry with weights_only=False, which would run the code)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith(("Weights only load failed", "Check the documentation"))]
    return " ".join(kept) or str(exc)


@dataclass
class AuthorsCheckpoint:
    """What drx takes from the authors' ``ckpt_epoch_<n>.pth``."""

    path: Path
    model: dict[str, torch.Tensor]  # their state dict (a DDP ``module.`` prefix removed)
    epoch: int | None
    max_plcc: float | None
    dataset: str | None  # their config's DATA.DATASET, read as plain data
    skipped: list[str] = field(default_factory=list)  # "config (yacs.config.CfgNode)": classes not loaded
    not_imported: list[str] = field(default_factory=list)  # entries present but not needed
    sha256: str = ""


def _number(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def read_authors_checkpoint(path: str | Path) -> AuthorsCheckpoint:
    """Read the authors' checkpoint (see the module docstring). Raises CheckpointError naming the
    file when it cannot be read safely or holds no state dict of the authors' model."""
    p = Path(path).expanduser()
    obj, placeholders = read_torch_file(p)
    if not isinstance(obj, Mapping) or "model" not in obj:
        found = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{str(p)!r} is not the authors' training checkpoint: expected a mapping with a 'model' entry "
                              f"(their utils.py save_checkpoint), found {found}")
    sd = obj["model"]
    if not isinstance(sd, Mapping) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{str(p)!r}: entry 'model' is not a state dict of tensors")
    sd = {str(k): v for k, v in sd.items()}
    if all(k.startswith("module.") for k in sd):  # saved from the DDP wrapper
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    if not is_authors_layout(sd):
        raise CheckpointError(
            f"{str(p)!r}: entry 'model' is not the authors' dascore_vit_models (no diff_attention.* and "
            f"decoder.AttentionActivate.* keys; found e.g. {sorted(sd)[:6]})"
        )
    skipped = sorted({f"{where.split('.')[0].split('[')[0]} ({name})" for where, name in placeholders})
    config = obj.get("config")
    dataset = None
    data = config.get("DATA") if isinstance(config, Mapping) else None
    if isinstance(data, Mapping) and isinstance(data.get("DATASET"), str):
        dataset = data["DATASET"]
    not_imported = sorted(k for k in obj if k in AUTHORS_ENTRIES and AUTHORS_ENTRIES[k].startswith("not imported"))
    epoch = obj.get("epoch")
    digest = hashlib.sha256()
    with p.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return AuthorsCheckpoint(
        p, sd, int(epoch) if isinstance(epoch, int) and not isinstance(epoch, bool) else None, _number(obj.get("max_plcc")),
        dataset, skipped, not_imported, digest.hexdigest(),
    )


# ------------------------------------------------------------------------------- architecture


def _count(sd: Mapping[str, Any], pattern: str) -> int:
    """Number of consecutive indices N in keys matching `pattern` (a regex with one (\\d+) group)."""
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def _tensor(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"the authors' checkpoint lacks {key!r}, which its model always has: not the authors' layout")
    return sd[key]


def _grid_side(n: int, key: str) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise CheckpointError(f"{key} holds {n} positions, not a square grid")
    return side


def authors_model_config(sd: Mapping[str, torch.Tensor], base: ModelConfig) -> tuple[ModelConfig, list[str], list[str]]:
    """The drx model of an authors' state dict: (config, what the tensors said, what came from `base`).

    `base` (the preset with the user's overrides) supplies what tensors do not hold: the attention
    heads (kept when the width matches `base`, else given by ``--set``), the prompts (the authors'
    code hard-codes DA-CLIP's ten; the checkpoint does not store them) and ``model.prior.arch``.
    Raises ConfigError when the heads or the prompts cannot be known.
    """
    data = base.model_dump(mode="json")
    inferred: list[str] = ["model.variant full, model.compat authors (the authors' model and numerics)"]
    given: list[str] = []

    # -- image encoder (backbone.*: their vit_models, DeiT-III layout)
    dim = int(_tensor(sd, "backbone.cls_token").shape[-1])
    found = {
        "embed_dim": dim,
        "depth": _count(sd, r"^backbone\.blocks\.(\d+)\."),
        "patch_size": int(_tensor(sd, "backbone.patch_embed.proj.weight").shape[-1]),
        "mlp_ratio": int(_tensor(sd, "backbone.blocks.0.mlp.fc1.weight").shape[0]) / dim,
    }
    img_size = _grid_side(int(_tensor(sd, "backbone.pos_embed").shape[1]), "backbone.pos_embed") * found["patch_size"]
    with torch.device("meta"):  # the base architecture's sizes, without allocating its weights
        enc = ImageEncoder(base.backbone, base.img_size)
    block = enc.vit.blocks[0]
    base_sizes = {"embed_dim": enc.embed_dim, "depth": len(enc.vit.blocks), "patch_size": int(enc.vit.patch_embed.patch_size[0]),
                  "mlp_ratio": block.mlp.fc1.out_features / enc.embed_dim}
    kwargs = data["backbone"]["kwargs"]
    for key, value in found.items():
        if value != base_sizes[key]:
            kwargs[key] = value
            inferred.append(f"model.backbone.kwargs.{key} {value} (from backbone.*; {base.backbone.name} has {base_sizes[key]})")
    if found["embed_dim"] != base_sizes["embed_dim"] and "num_heads" not in base.backbone.kwargs:
        if dim not in AUTHORS_HEADS:
            raise ConfigError(
                f"the checkpoint's image encoder is {dim} wide, {base.backbone.name} is {base_sizes['embed_dim']}: its number of attention "
                f"heads is not in the weights. Give it: --set model.backbone.kwargs.num_heads=N"
            )
        kwargs["num_heads"] = AUTHORS_HEADS[dim]
        inferred.append(f"model.backbone.kwargs.num_heads {AUTHORS_HEADS[dim]} (the authors' backbone of width {dim})")
    heads = kwargs.get("num_heads", block.attn.num_heads)
    given.append(f"model.backbone.name {base.backbone.name}, {heads} attention heads (not in the weights)")
    if img_size != base.img_size:
        inferred.append(f"model.img_size {img_size} (from backbone.pos_embed; the preset says {base.img_size})")
    data["img_size"] = img_size
    data["backbone"]["pretrained"] = None  # every encoder weight comes from the checkpoint

    # -- prior (head.*: their DA-CLIP, official layout)
    arch = prior_arch_config(base.prior)
    vision, text = arch["vision_cfg"], arch["text_cfg"]
    width = int(_tensor(sd, "head.visual_control.conv1.weight").shape[0])
    patch = int(_tensor(sd, "head.visual_control.conv1.weight").shape[-1])
    t_width = int(_tensor(sd, "head.clip.token_embedding.weight").shape[1])
    prior_found = {
        ("embed_dim",): int(_tensor(sd, "head.visual_control.proj").shape[1]),
        ("vision_cfg", "width"): width,
        ("vision_cfg", "patch_size"): patch,
        ("vision_cfg", "image_size"): _grid_side(int(_tensor(sd, "head.visual_control.positional_embedding").shape[0]) - 1,
                                                 "head.visual_control.positional_embedding") * patch,
        ("vision_cfg", "layers"): _count(sd, r"^head\.visual_control\.transformer\.transformer\.resblocks\.(\d+)\."),
        ("vision_cfg", "mlp_ratio"): int(_tensor(sd, "head.visual_control.transformer.transformer.resblocks.0.mlp.c_fc.weight").shape[0]) / width,
        ("text_cfg", "width"): t_width,
        ("text_cfg", "layers"): _count(sd, r"^head\.clip\.transformer\.resblocks\.(\d+)\."),
        ("text_cfg", "context_length"): int(_tensor(sd, "head.clip.positional_embedding").shape[0]),
        ("text_cfg", "vocab_size"): int(_tensor(sd, "head.clip.token_embedding.weight").shape[0]),
    }
    defaults = {("vision_cfg", "mlp_ratio"): 4.0, ("vision_cfg", "head_width"): 64, ("text_cfg", "heads"): 8}
    overrides: dict[str, Any] = {}
    for path, value in prior_found.items():
        current = (arch if len(path) == 1 else arch[path[0]]).get(path[-1], defaults.get(path))
        if value != current:
            node = overrides
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
            inferred.append(f"model.prior.arch_overrides.{'.'.join(path)} {value} (from head.*; {base.prior.arch} has {current})")
    user = base.prior.arch_overrides
    if width != vision.get("width") and "head_width" not in user.get("vision_cfg", {}):
        raise ConfigError(f"the checkpoint's DA-CLIP image tower is {width} wide, {base.prior.arch} is {vision.get('width')}: its "
                          "attention head width is not in the weights. Give it: --set model.prior.arch_overrides.vision_cfg.head_width=N")
    if t_width != text.get("width") and "heads" not in user.get("text_cfg", {}):
        raise ConfigError(f"the checkpoint's DA-CLIP text tower is {t_width} wide, {base.prior.arch} is {text.get('width')}: its "
                          "number of attention heads is not in the weights. Give it: --set model.prior.arch_overrides.text_cfg.heads=N")
    data["prior"]["arch_overrides"] = deep_merge(user, overrides)
    data["prior"]["kind"] = "daclip"
    data["prior"]["checkpoint"] = None  # the prior's weights travel in the imported checkpoint
    merged = deep_merge(arch, overrides)
    given.append(f"model.prior.arch {base.prior.arch}: image tower heads {merged['vision_cfg'].get('head_width', 64)} wide, text tower "
                 f"{merged['text_cfg'].get('heads', 8)} heads (not in the weights)")

    # -- experts, DSDM, DDWM
    experts = _count(sd, r"^linears\.(\d+)\.")
    prompts = list(base.prior.prompts)
    if experts != len(prompts):
        raise ConfigError(
            f"the checkpoint has {experts} experts (linears.0 .. linears.{experts - 1}) but the preset names {len(prompts)} prompts "
            f"({prompts}); the prompts are not in the weights (the authors' code hard-codes them): give them in the authors' order, "
            f"--set 'model.prior.prompts=[...]'"
        )
    given.append(f"model.prior.prompts: {len(prompts)} prompts, in this order (not in the weights): {', '.join(prompts)}")
    fc = "decoder.AttentionActivate.active_unit.fc"
    if any(k.startswith(fc) and k.endswith(".alpha") for k in sd):
        raise CheckpointError("the checkpoint's DDWM uses Dice activations (an early version of the authors' din.py); drx "
                              "implements their final version, with PReLU")
    layers = _count(sd, rf"^{re.escape(fc)}\.(\d+)\.")
    linear = [int(_tensor(sd, f"{fc}.{i}.weight").shape[0]) for i in range(0, layers, 2)]
    width_in = int(_tensor(sd, f"{fc}.0.weight").shape[1])
    if width_in != 3 * dim:
        raise CheckpointError(f"{fc}.0.weight takes {width_in} inputs; the authors' final DDWM takes 3 x {dim} "
                              "(the groups [diff, img, diff - img]); an earlier version with a product term is not supported")
    data["variant"] = "full"
    data["compat"] = "authors"
    data["ddwm"]["groups"] = ["dis", "sem", "bri"]
    data["ddwm"]["hidden"] = linear[:-1]
    inferred.append(f"model.ddwm.groups [dis, sem, bri], model.ddwm.hidden {linear[:-1]} (from decoder.*), {experts} experts (linears.*)")
    try:
        cfg = ModelConfig.model_validate(data)
    except ValueError as exc:
        raise ConfigError(f"the model inferred from the checkpoint is not valid: {exc}") from None
    return cfg, inferred, given


# ------------------------------------------------------------------------------------ importing


@dataclass
class ImportResult:
    checkpoint: Path  # the drx checkpoint written (best.safetensors)
    config: ExperimentConfig
    lines: list[str]  # what was read, skipped, inferred and given: printed by the command


def import_authors(
    checkpoint: str | Path,
    out_dir: str | Path,
    preset: str | None = None,
    benchmark: str | None = None,
    overrides: Sequence[str] = (),
    use_authors_resize: bool = False,
) -> ImportResult:
    """Turn the authors' ``ckpt_epoch_<n>.pth`` into a drx trial folder `out_dir` (``best.safetensors``,
    ``config.yaml``) scored by ``drx predict`` and ``drx.load_scorer`` with the authors' numerics.

    `benchmark` (default: the checkpoint's DATA.DATASET, else the preset's) sets ``data.benchmark``
    (labels and MOS range; the scores are the model's raw output, which is MOS since the authors
    train on raw MOS: ``train.target_range: null``). `preset` (default ``paper-<benchmark>`` when
    it exists, else ``paper``) and `overrides` supply what the weights do not say; the scoring
    crops come from it (``data.test_crops``, ``data.resize``; `use_authors_resize` sets the
    authors' fixed (height, width) resize of that benchmark instead). Raises CheckpointError
    (unreadable file, weights that do not fit) and ConfigError (what must be given).
    """
    ckpt = read_authors_checkpoint(checkpoint)
    lines = [f"read {ckpt.path}: {len(ckpt.model)} weight tensors"
             + (f", epoch {ckpt.epoch}" if ckpt.epoch is not None else "")
             + (f", max PLCC {ckpt.max_plcc:.4f} (the authors select on the test part)" if ckpt.max_plcc is not None else "")]
    for entry in ckpt.skipped:
        use = "; only its DATA.DATASET is read, as plain data" if entry.startswith("config (") and ckpt.dataset else ""
        lines.append(f"skipped: {entry}: a class outside torch's allow-list, kept as inert data and never run; not needed{use}")
    if ckpt.not_imported:
        lines.append(f"not imported: {', '.join(ckpt.not_imported)} (training state: an imported trial is scored, not resumed)")
    source = "--benchmark"
    if benchmark is None and ckpt.dataset in BENCHMARKS:
        benchmark, source = ckpt.dataset, "the checkpoint's config DATA.DATASET"
    elif benchmark is None and ckpt.dataset is not None:
        lines.append(f"the checkpoint's DATA.DATASET {ckpt.dataset!r} is not a drx benchmark ({', '.join(BENCHMARKS)}): give --benchmark")
    if preset is None:
        preset = f"paper-{benchmark}" if benchmark and f"paper-{benchmark}" in list_presets() else "paper"
    sets = [*([f"data.benchmark={benchmark}"] if benchmark else []), *overrides]
    base = load_config(preset, sets)
    if benchmark is None:
        benchmark, source = base.data.benchmark, f"the preset {preset} (not given with --benchmark, not in the checkpoint)"
    model_cfg, inferred, given = authors_model_config(ckpt.model, base.model)
    data = base.to_dict()
    data["model"] = model_cfg.model_dump(mode="json")
    data["name"] = f"authors-{ckpt.path.stem}"
    data["train"]["target_range"] = None  # the authors train on raw MOS: the model's output is the score
    data["train"]["select_on"] = "test"  # how the authors chose their epoch (recorded, not used)
    if use_authors_resize:
        size = authors_resize(benchmark)
        if size is None:
            raise ConfigError(f"--authors-resize: the authors do not resize {benchmark} images to a fixed size")
        data["data"]["resize"] = {"mode": "exact", "size": list(size)}
    cfg = load_config(data)
    lines.append(f"benchmark {benchmark} (from {source}); preset {preset}")
    lines += [f"inferred from the weights: {line}" for line in inferred]
    lines += [f"from the preset/--set: {line}" for line in given]
    resize = cfg.data.resize.model_dump(mode="json") if cfg.data.resize else None
    lines.append(f"scoring: {cfg.data.test_crops} fixed crops of {cfg.model.img_size} px per image, resize {resize} "
                 "(data.test_crops, data.resize; the authors' test crops are random)")

    model = build_model(cfg.model)
    assert model.encoder is not None and model.prior is not None
    mapped, unused = map_authors_keys(ckpt.model, model.encoder.vit)
    load_strict(model, mapped, "the authors' checkpoint", ckpt.path)
    model.prior.refresh_text_features()
    if unused:
        lines.append(f"ignored weights (built but never run by the authors' forward): {', '.join(unused)}")
    try:
        mos_range = list(get_adapter(benchmark).mos_range(cfg.data.options))
    except (DataError, NotImplementedError, TypeError, ValueError):
        mos_range = None  # e.g. a csv benchmark, whose range comes from its labels: the scores are raw MOS anyway
    state = {
        "format": FORMAT,
        "epoch": ckpt.epoch or 0,
        "model": model.trainable_state_dict(),
        "prior": model.prior.state_dict(),
        "config": cfg.to_dict(),
        "mos_range": mos_range,
        "inputs": {"prepared": None, "resize": resize, "train_short_side_px": None, "train_images_sampled": 0},
        "imported": {"from": "authors", "file": str(ckpt.path), "sha256": ckpt.sha256, "epoch": ckpt.epoch,
                     "max_plcc": ckpt.max_plcc, "skipped": ckpt.skipped, "ignored_weights": unused, "notes": lines},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(state, out / BEST_NAME)
    save_config(cfg, out / "config.yaml")
    lines.append(f"wrote {path} and {out / 'config.yaml'}; score images with: drx predict {out} IMAGES")
    return ImportResult(path, cfg, lines)


__all__ = ["AUTHORS_ENTRIES", "AuthorsCheckpoint", "ImportResult", "authors_model_config", "import_authors",
           "read_authors_checkpoint", "read_torch_file", "skipped_class"]
