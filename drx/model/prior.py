"""The frozen distortion prior: DA-CLIP (CLIP text tower + image controller) or plain CLIP.

Built on open_clip_torch's towers from the architecture's packaged JSON config (no download).
DA-CLIP's controller is a copy of CLIP's visual tower whose blocks each feed a zero-initialised
``Linear(width, width)`` tap; DR.Experts uses the controller's pooled "degradation" embedding
``[B, Dp]`` and the last tap's output ``[B, 1+Nc, Wc]`` (the controller hidden state). The taps do
not feed back into the controller, so only the last one is computed on the default path.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import _build_text_tower, _build_vision_tower
from torch import nn

from drx.config import PriorConfig, deep_merge
from drx.errors import ConfigError
from drx.model.weights import daclip_official_state_dict


def prior_arch_config(cfg: PriorConfig) -> dict[str, Any]:
    """The open_clip architecture config with ``arch_overrides`` merged in."""
    base = open_clip.get_model_config(cfg.arch)
    if base is None:
        close = difflib.get_close_matches(cfg.arch, open_clip.list_models(), n=3)
        raise ConfigError(
            f"model.prior.arch: unknown open_clip architecture {cfg.arch!r}"
            + (f"; did you mean {', '.join(close)}?" if close else "")
        )
    arch = deep_merge(base, cfg.arch_overrides)
    vision = arch.get("vision_cfg", {})
    if vision.get("timm_model_name") or vision.get("layers") is None or isinstance(vision.get("layers"), (list, tuple)):
        raise ConfigError(
            f"model.prior.arch {cfg.arch!r}: the prior needs an open_clip ViT visual tower (got {vision})"
        )
    return arch


class ControlledVisual(nn.Module):
    """DA-CLIP's image controller: a CLIP visual tower plus one tap per block."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual
        width = visual.transformer.width
        self.taps = nn.ModuleList(nn.Linear(width, width) for _ in range(visual.transformer.layers))
        for tap in self.taps:  # zero-initialised as in DA-CLIP
            nn.init.zeros_(tap.weight)
            nn.init.zeros_(tap.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B,3,S,S] (CLIP-normalised) -> (embedding [B,Dp], last tap output [B,1+Nc,Wc])."""
        tokens = self.visual.transformer(self.visual._embeds(x))
        return _pooled(self.visual, tokens), self.taps[-1](tokens)

    def forward_all_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """As the reference computes it: every tap after every block (12 hidden states)."""
        h = self.visual._embeds(x)
        tr = self.visual.transformer
        if not tr.batch_first:
            h = h.transpose(0, 1)
        hiddens = []
        for block, tap in zip(tr.resblocks, self.taps):
            h = block(h)
            hiddens.append(tap(h if tr.batch_first else h.transpose(0, 1)))
        if not tr.batch_first:
            h = h.transpose(0, 1)
        return _pooled(self.visual, h), hiddens


def _pooled(visual: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    pooled, _ = visual._pool(tokens)
    return pooled @ visual.proj if visual.proj is not None else pooled


class DistortionPrior(nn.Module):
    """Frozen prior: per-expert text features and the image's degradation embedding.

    ``kind='daclip'``: text tower + controller. ``kind='clip'``: text tower + plain CLIP visual
    tower (content embedding; hidden = last block's tokens). Text features of the prompts are
    computed once and kept as a buffer ``text_features [E, Dp]`` (L2-normalised); call
    :meth:`refresh_text_features` after changing weights.
    """

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        if cfg.kind == "none":
            raise ConfigError("DistortionPrior built with model.prior.kind='none'")
        self.kind = cfg.kind
        self.prompts = list(cfg.prompts)
        arch = prior_arch_config(cfg)
        embed_dim = arch["embed_dim"]
        quick_gelu = arch.get("quick_gelu", False)
        self.text = _build_text_tower(embed_dim, arch["text_cfg"], quick_gelu)
        visual = _build_vision_tower(embed_dim, arch["vision_cfg"], quick_gelu)
        if cfg.kind == "daclip":
            self.controller = ControlledVisual(visual)
        else:
            self.visual = visual
        self.image_size = int(visual.image_size[0])
        self.grid_size = tuple(visual.grid_size)
        self.width = visual.transformer.width
        self.embed_dim = embed_dim
        context = arch["text_cfg"].get("context_length", 77)
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context)
        self.register_buffer("tokens", tokenizer(self.prompts), persistent=False)
        self.register_buffer("text_features", torch.zeros(len(self.prompts), embed_dim), persistent=False)
        self.register_buffer("clip_mean", torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("clip_std", torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()
        self.refresh_text_features()

    def train(self, mode: bool = True) -> "DistortionPrior":
        # Frozen: always in eval mode, whatever the parent module does.
        return super().train(False)

    @torch.no_grad()
    def encode_text(self) -> torch.Tensor:
        """Prompt features [E, Dp], L2-normalised (recomputed; the forward uses the cached buffer)."""
        return F.normalize(self.text(self.tokens), dim=-1)

    @torch.no_grad()
    def refresh_text_features(self) -> None:
        self.text_features.copy_(self.encode_text())

    def prepare_input(self, x: torch.Tensor, imagenet_mean: torch.Tensor, imagenet_std: torch.Tensor, compat: str) -> torch.Tensor:
        """The prior's own view of an ImageNet-normalised batch x [B,3,H,W] -> [B,3,S,S].

        ``clean``: undo ImageNet normalisation, antialiased bicubic resize (as CLIP's own
        preprocessing), CLIP normalisation. ``authors``: bilinear resize without antialias of
        the ImageNet-normalised tensor, then CLIP normalisation on top (the reference's double
        normalisation).
        """
        size = (self.image_size, self.image_size)
        if compat == "authors":
            view = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        else:
            raw = x * imagenet_std + imagenet_mean
            view = F.interpolate(raw, size=size, mode="bicubic", align_corners=False, antialias=True)
        return (view - self.clip_mean) / self.clip_std

    def encode_image(self, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """view [B,3,S,S] -> (embedding [B,Dp] L2-normalised, hidden [B,1+Nc,Wc])."""
        if self.kind == "daclip":
            emb, hidden = self.controller(view)
        else:
            tokens = self.visual.transformer(self.visual._embeds(view))
            emb, hidden = _pooled(self.visual, tokens), tokens
        return F.normalize(emb, dim=-1), hidden

    def build_state_for_export(self) -> dict[str, torch.Tensor]:
        """This prior in the official DA-CLIP key layout (needs kind='daclip')."""
        if self.kind != "daclip":
            raise ConfigError("only a 'daclip' prior can be exported in the DA-CLIP layout")
        content = copy.deepcopy(self.controller.visual)  # no content tower is kept: export a copy
        return daclip_official_state_dict(self.text, content, self.controller.visual, self.controller.taps)
