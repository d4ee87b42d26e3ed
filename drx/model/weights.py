"""Pretrained-weight files, offline: reading them and mapping official key layouts to drx's modules.

All state-dict key mapping lives here:

* DeiT-III (``deit_3_small_384_21k.pth``: ``{"model": {...}}`` with ``blocks.N.gamma_1``) and timm /
  safetensors files -> the timm ``VisionTransformer`` inside :class:`drx.model.backbone.ImageEncoder`
  (timm's own ``checkpoint_filter_fn`` renames the layer scales and resamples ``pos_embed``).
* DA-CLIP (``daclip_ViT-B-32.pt``: ``clip.*``, ``visual.*``, ``visual_control.*``, ``logit_scale``)
  and plain open_clip CLIP state dicts -> :class:`drx.model.prior.DistortionPrior`.
* the authors' own trained model (``dascore_vit_models``: ``backbone.*``, ``head.*``, ``linears.N.*``,
  ``diff_attention.*``, ``decoder.*``, ``score.*``, ...) -> the whole :class:`DRExperts`
  (:func:`map_authors_keys`; reading their pickled checkpoint is ``drx.train.authors``).

Loading is strict: missing or unexpected keys and shape mismatches raise :class:`CheckpointError`
listing them. Keys that the official files hold but DR.Experts never runs are dropped by name
(listed in ``IGNORED_*`` below), never by a catch-all. Nothing is downloaded, and nothing is built:
a ``builtin:`` reference must be turned into its file by ``drx.builtin.resolve`` first.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from drx.errors import CheckpointError

log = logging.getLogger(__name__)

DEIT3_SOURCE = (
    "the official DeiT-III weights (facebookresearch/deit, README_revenge.md: "
    "https://dl.fbaipublicfiles.com/deit/deit_3_small_384_21k.pth), or a timm/safetensors file"
)
# A weights reference that names a model drx builds itself (drx.builtin) instead of a file.
BUILTIN_PREFIX = "builtin:"

DACLIP_SOURCE = (
    "the official DA-CLIP weights daclip_ViT-B-32.pt (github.com/Algolzw/daclip-uir, README "
    "'Pretrained Models'); use 'builtin:tiny-daclip' for drx's miniature prior"
)

# ----------------------------------------------------------------------------------------- files


def read_state_dict(path: str | Path, what: str, source: str) -> dict[str, torch.Tensor]:
    """Read a ``.pth``/``.pt``/``.bin``/``.safetensors`` file into a flat tensor dict.

    Unwraps ``{"model": ...}``/``{"state_dict": ...}`` containers and a leading ``module.``
    (DDP) prefix.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"{what} file {str(p)!r} does not exist; expected {source}")
    try:
        if p.suffix == ".safetensors":
            sd: Any = load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: say which file and why
        raise CheckpointError(f"{what} file {str(p)!r} could not be read: {exc}") from None
    for container in ("model", "state_dict", "module"):
        if isinstance(sd, Mapping) and container in sd and isinstance(sd[container], Mapping):
            sd = sd[container]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{what} file {str(p)!r} does not hold a state dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def _fmt_keys(keys: list[str], limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str, path: str | Path) -> None:
    """``module.load_state_dict(state, strict=True)`` with errors that list every key at fault."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_fmt_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_fmt_keys(unexpected)}")
    if shape:
        problems.append(f"shape mismatches ({len(shape)}): {'; '.join(shape[:8])}")
    if problems:
        raise CheckpointError(f"{what} file {str(path)!r} does not fit the model:\n  " + "\n  ".join(problems))
    module.load_state_dict(state, strict=True)


# -------------------------------------------------------------------------------------- backbone

# The DeiT-III classifier (ImageNet head) is not part of drx's image encoder (num_classes=0).
IGNORED_BACKBONE_KEYS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias", "dist_token")


def map_backbone_keys(sd: dict[str, torch.Tensor], vit: nn.Module) -> dict[str, torch.Tensor]:
    """Official DeiT-III / timm keys -> the keys of the timm ``VisionTransformer`` `vit`.

    The ignored head keys are dropped; timm's ``checkpoint_filter_fn`` renames DeiT-III's
    ``blocks.N.gamma_1/2`` to ``blocks.N.ls1/ls2.gamma`` and resamples ``pos_embed`` (bicubic,
    antialiased, class token kept) when the file's grid is not `vit`'s. The patch kernel is kept
    as the file has it: a file of another patch size stays a shape mismatch for :func:`load_strict`
    (timm would resample the kernel silently).
    """
    sd = {k: v for k, v in sd.items() if k not in IGNORED_BACKBONE_KEYS}
    kernel = sd.get("patch_embed.proj.weight")
    out = checkpoint_filter_fn(sd, vit, adapt_layer_scale=True)
    if kernel is not None:
        out["patch_embed.proj.weight"] = kernel
    before, after = sd.get("pos_embed"), out.get("pos_embed")
    if before is not None and after is not None and before.shape != after.shape:
        log.info("resampled pos_embed %s -> %s", tuple(before.shape), tuple(after.shape))
    return out


def load_backbone_weights(vit: nn.Module, path: str | Path) -> None:
    """Load the DeiT-III/timm file at `path` into a timm ViT, strictly (CheckpointError listing
    missing/unexpected keys and shape mismatches); ``pos_embed`` is resampled when the grid differs."""
    what = "backbone (model.backbone.pretrained)"
    load_strict(vit, map_backbone_keys(read_state_dict(path, what, DEIT3_SOURCE), vit), what, path)


# ----------------------------------------------------------------------------------------- prior

# Keys of the official DA-CLIP file that DR.Experts never runs: the CLIP content tower (and its
# alias `visual.*`) and the contrastive temperatures.
_DACLIP_IGNORED_PREFIXES = ("clip.visual.", "visual.")
_DACLIP_IGNORED_KEYS = ("logit_scale", "clip.logit_scale", "clip.logit_bias", "logit_bias")


def is_daclip_layout(sd: Mapping[str, Any]) -> bool:
    return any(k.startswith("visual_control.") for k in sd)


def map_prior_keys(sd: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """Official DA-CLIP or open_clip CLIP keys -> :class:`DistortionPrior` keys.

    ``daclip``: ``clip.<text>`` -> ``text.<text>``; ``visual_control.transformer.transformer.*``
    -> ``controller.visual.transformer.*``; ``visual_control.transformer.zero_modules.N`` ->
    ``controller.taps.N``; other ``visual_control.*`` -> ``controller.visual.*``.
    ``clip``: ``clip.visual.*`` (DA-CLIP file) or ``visual.*`` (open_clip file) -> ``visual.*``.
    """
    daclip = is_daclip_layout(sd) or any(k.startswith("clip.") for k in sd)
    out: dict[str, torch.Tensor] = {}
    if kind == "daclip" and not is_daclip_layout(sd):
        raise CheckpointError(
            "prior kind 'daclip' needs a DA-CLIP checkpoint (keys 'visual_control.*'); this file has none "
            "(a plain CLIP file works with model.prior.kind=clip)"
        )
    for k, v in sd.items():
        if k in _DACLIP_IGNORED_KEYS:
            continue
        if daclip:
            if k.startswith("visual_control."):
                if kind != "daclip":
                    continue  # the controller is not part of a plain-CLIP prior
                rest = k[len("visual_control.") :]
                if rest.startswith("transformer.zero_modules."):
                    out["controller.taps." + rest[len("transformer.zero_modules.") :]] = v
                elif rest.startswith("transformer.transformer."):
                    out["controller.visual.transformer." + rest[len("transformer.transformer.") :]] = v
                else:
                    out["controller.visual." + rest] = v
            elif k.startswith("clip.visual."):
                if kind == "clip":
                    out["visual." + k[len("clip.visual.") :]] = v
            elif k.startswith("visual."):
                continue  # alias of clip.visual.* in DaCLIP's state dict
            elif k.startswith("clip."):
                out["text." + k[len("clip.") :]] = v
            else:
                out[k] = v  # unknown: reported as unexpected by load_strict
        else:  # open_clip CLIP layout
            if k.startswith("visual."):
                out[k] = v
            else:
                out["text." + k] = v
    return out


def load_prior_weights(prior: nn.Module, path: str | Path, kind: str) -> None:
    sd = read_state_dict(path, "prior (model.prior.checkpoint)", DACLIP_SOURCE)
    load_strict(prior, map_prior_keys(sd, kind), "prior (model.prior.checkpoint)", path)


def daclip_official_state_dict(
    text: nn.Module, visual: nn.Module, controller_visual: nn.Module, taps: nn.ModuleList, logit_scale: float = 4.6052
) -> dict[str, torch.Tensor]:
    """Assemble a state dict in the official ``daclip_ViT-B-32.pt`` key layout.

    ``text``: an open_clip TextTransformer; ``visual``: the CLIP content tower; ``controller_visual``
    and ``taps``: the controller copy and its zero-initialised ``Linear(width, width)`` taps.
    Used to save drx's miniature prior in the official layout, and by tests.
    """
    sd: dict[str, torch.Tensor] = {}
    for k, v in text.state_dict().items():
        sd[f"clip.{k}"] = v.clone()
    for k, v in visual.state_dict().items():
        sd[f"clip.visual.{k}"] = v.clone()
        sd[f"visual.{k}"] = v.clone()
    scale = torch.tensor(float(logit_scale))
    sd["clip.logit_scale"] = scale.clone()
    for k, v in controller_visual.state_dict().items():
        if k.startswith("transformer."):
            sd[f"visual_control.transformer.transformer.{k[len('transformer.'):]}"] = v.clone()
        else:
            sd[f"visual_control.{k}"] = v.clone()
    for k, v in taps.state_dict().items():
        sd[f"visual_control.transformer.zero_modules.{k}"] = v.clone()
    sd["logit_scale"] = scale.clone()
    return sd


def deit3_official_state_dict(vit: nn.Module, num_classes: int = 1000) -> dict[str, Any]:
    """A timm DeiT-III ViT's weights in the official ``deit_3_*.pth`` layout (``{"model": ...}``)."""
    sd = {}
    for k, v in vit.state_dict().items():
        m = re.match(r"^blocks\.(\d+)\.ls([12])\.gamma$", k)
        sd[f"blocks.{m.group(1)}.gamma_{m.group(2)}" if m else k] = v.clone()
    dim = vit.embed_dim
    sd["head.weight"] = torch.zeros(num_classes, dim)
    sd["head.bias"] = torch.zeros(num_classes)
    return {"model": sd}


# ------------------------------------------------------------------------- the authors' checkpoints

#: The authors' ``dascore_vit_models`` (their models/deit.py and models/din.py) -> :class:`DRExperts`,
#: prefix by prefix (docs/model.md has this table). Everything is a rename except: ``backbone.*``
#: (official DeiT-III layout, through :func:`map_backbone_keys`), ``head.*`` (their DA-CLIP, in the
#: official ``daclip_ViT-B-32.pt`` layout, through :func:`map_prior_keys`), ``linears.N.*`` (one
#: Linear per expert, stacked into ``experts.weight [E,D,Dp]`` / ``experts.bias [E,D]``) and
#: ``lamda_init`` ([1,D] -> [D]).
AUTHORS_PREFIXES: tuple[tuple[str, str], ...] = (
    ("norm1.", "experts.norm."),
    ("L_hidden.", "context.proj."),
    ("norm_vit.", "dsdm.norm_image."),
    ("norm3_hidden_feature.", "dsdm.norm_context."),
    ("diff_attention.W_q1.", "dsdm.q1."),
    ("diff_attention.W_k1.", "dsdm.k1."),
    ("diff_attention.W_q2.", "dsdm.q2."),
    ("diff_attention.W_k2.", "dsdm.k2."),
    ("diff_attention.W_v.", "dsdm.v."),
    ("diff_attention.alpha", "dsdm.alpha"),
    ("attn_norm.", "dsdm.attn_norm."),
    ("group_attn_ffn.", "dsdm.ffn."),
    ("decoder.AttentionActivate.active_unit.fc.", "ddwm.mlp."),
    ("score.", "head."),
)
#: Modules the authors' model builds but its forward never runs (reference-model.md A.1): dropped by name.
AUTHORS_UNUSED_PREFIXES = ("L1.", "L2.", "backbone.head.")


def is_authors_layout(sd: Mapping[str, Any]) -> bool:
    """Whether a state dict has the authors' ``dascore_vit_models`` keys."""
    return any(k.startswith("diff_attention.") for k in sd) and any(k.startswith("decoder.AttentionActivate.") for k in sd)


def map_authors_keys(sd: Mapping[str, torch.Tensor], vit: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The authors' full model state dict -> (:class:`DRExperts` state dict, prior included as
    ``prior.*``; the authors' keys dropped as unused, sorted).

    `vit` is the drx model's timm ViT (``model.encoder.vit``), whose keys the backbone is mapped to.
    Keys of no known prefix are kept as they are, so :func:`load_strict` reports them as unexpected.
    """
    out: dict[str, torch.Tensor] = {}
    unused = sorted(k for k in sd if k.startswith(AUTHORS_UNUSED_PREFIXES))
    backbone = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.") and k not in unused}
    if backbone:
        out.update({f"encoder.vit.{k}": v for k, v in map_backbone_keys(backbone, vit).items()})
    daclip = {k[len("head.") :]: v for k, v in sd.items() if k.startswith("head.")}
    if daclip:
        out.update({f"prior.{k}": v for k, v in map_prior_keys(daclip, "daclip").items()})
    experts: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k in unused or k.startswith(("backbone.", "head.")):
            continue
        m = re.match(r"^linears\.(\d+)\.(weight|bias)$", k)
        if m:
            experts.setdefault(int(m.group(1)), {})[m.group(2)] = v
            continue
        if k == "lamda_init":
            out["dsdm.lambda_"] = v.reshape(-1)
            continue
        for old, new in AUTHORS_PREFIXES:
            if k.startswith(old):
                out[new + k[len(old) :]] = v
                break
        else:
            out[k] = v  # unknown: reported as unexpected by load_strict
    if experts:
        numbers = sorted(experts)
        if numbers != list(range(len(numbers))) or any(set(experts[i]) != {"weight", "bias"} for i in numbers):
            raise CheckpointError(
                f"the authors' per-expert layers are incomplete: found linears.N weight/bias for N in {numbers}, "
                f"expected linears.0 .. linears.{len(numbers) - 1}, each with a weight and a bias"
            )
        out["experts.weight"] = torch.stack([experts[i]["weight"] for i in numbers])
        out["experts.bias"] = torch.stack([experts[i]["bias"] for i in numbers])
    return out, unused
