"""The modular DR.Experts model: one nn.Module whose parts the ablations switch.

Variants (the rows of the paper's Table 4); F = image-encoder tokens, F_cls = F[:, 0]:

``image_encoder``
    ŷ = w·F_cls + b. No prior is built.
``prior_only``
    The frozen prior alone, CLIP-IQA style: for every expert the Hadamard product t_i ⊙ f of the
    prompt's text feature and the image's degradation embedding, layer-normalised, concatenated
    over experts, into a trained linear head: ŷ = w·vec(LN(t ⊙ f)) + b. No image encoder.
``dsdm``
    DSDM without DDWM: ŷ = w·(F_cls + mean_i G_i[0]) + b. In the reference maths the refined
    features reach the score only through the DDWM weights, so "DSDM with uniform weights" would
    collapse to ``image_encoder``; adding their expert mean at token 0 to the class token is the
    smallest definition in which DSDM itself reaches the head.
``full``
    DSDM and DDWM as in the reference: a = DDWM(groups of G[0], F_cls) [B,E] and
    ŷ = w·((Σ_i a_i)·F_cls) + b (the closed form of the reference's pooling + score on token 0).

``model.ddwm.groups`` selects DDWM's input groups (Table 5). With only ``sem`` the refined
features are unused, so DSDM (and the prior) are not built. ``model.prior.kind: none`` replaces the
prior's expert tokens by learned ones and its controller tokens by the encoder's own patch tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from drx.config import ModelConfig
from drx.errors import ConfigError
from drx.model.backbone import ImageEncoder
from drx.model.ddwm import DDWM
from drx.model.dsdm import DSDM, ContextTokens, ExpertTokens, hadamard
from drx.model.prior import DistortionPrior
from drx.model.weights import BUILTIN_PREFIX, load_backbone_weights, load_prior_weights


def uses_refined(cfg: ModelConfig) -> bool:
    """Whether the variant computes DSDM's refined expert features (``dsdm``, or ``full`` with
    the ``dis`` or ``bri`` group)."""
    return cfg.variant == "dsdm" or (cfg.variant == "full" and ("dis" in cfg.ddwm.groups or "bri" in cfg.ddwm.groups))


def uses_encoder(cfg: ModelConfig) -> bool:
    """Whether the model has an image encoder (so ``model.backbone.pretrained`` is loaded)."""
    return cfg.variant != "prior_only"


def uses_prior(cfg: ModelConfig) -> bool:
    """Whether the model builds the frozen prior (so ``model.prior.checkpoint`` is loaded)."""
    return (cfg.variant == "prior_only" or uses_refined(cfg)) and cfg.prior.kind != "none"


@dataclass
class ModelOutput:
    """score [B]; expert_weights [B,E] (DDWM weights, ``full`` only, else None);
    refined [B,E,D] (token 0 of the refined expert features, when computed); attention maps on request."""

    score: torch.Tensor
    expert_weights: torch.Tensor | None = None
    refined: torch.Tensor | None = None
    attention: dict[str, torch.Tensor] | None = field(default=None)


class DRExperts(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.variant = cfg.variant
        self.compat = cfg.compat
        self.prompts = list(cfg.prior.prompts)
        self.num_experts = len(self.prompts)
        self.register_buffer("imagenet_mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("imagenet_std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1), persistent=False)

        self.ddwm: DDWM | None = None
        self.dsdm: DSDM | None = None
        self.encoder: ImageEncoder | None = None
        self.prior: DistortionPrior | None = None
        self.experts: ExpertTokens | None = None
        self.context: ContextTokens | None = None
        self.expert_queries: nn.Parameter | None = None

        needs_refined = uses_refined(cfg)
        if uses_encoder(cfg):
            self.encoder = ImageEncoder(cfg.backbone, cfg.img_size)
            self.input_size = self.encoder.img_size
            dim = self.encoder.embed_dim
        else:
            self.input_size = (cfg.img_size, cfg.img_size)
        if uses_prior(cfg):
            self.prior = DistortionPrior(cfg.prior)

        if cfg.variant == "prior_only":
            assert self.prior is not None
            self.prior_norm = nn.LayerNorm(self.prior.embed_dim)
            self.head = nn.Linear(self.num_experts * self.prior.embed_dim, 1)
            return

        if needs_refined:
            assert self.encoder is not None
            if self.prior is not None:
                self.experts = ExpertTokens(self.num_experts, self.prior.embed_dim, dim)
                self.context = ContextTokens(self.prior.width, self.prior.grid_size, dim, self.encoder.grid_size)
            else:
                self.expert_queries = nn.Parameter(torch.randn(self.num_experts, dim) * 0.02)
            self.dsdm = DSDM(dim, cfg.dsdm.alpha_init, cfg.dsdm.lambda_init)
        if cfg.variant == "full":
            self.ddwm = DDWM(dim, cfg.ddwm.groups, cfg.ddwm.hidden, self.num_experts, cfg.ddwm.gate_init)
        self.head = nn.Linear(dim, 1)

    # ------------------------------------------------------------------------------ helpers

    def check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected an image batch [B,3,H,W], got {shape}")
        if x.shape[1] != 3:
            raise ValueError(f"expected 3 (RGB) channels in [B,3,H,W], got {x.shape[1]} channels (shape {tuple(x.shape)})")
        if tuple(x.shape[-2:]) != tuple(self.input_size):
            name = self.encoder.name if self.encoder is not None else "the prior-only model"
            raise ValueError(
                f"{name} expects {self.input_size[0]}x{self.input_size[1]} inputs (model.img_size), "
                f"got {x.shape[-2]}x{x.shape[-1]}"
            )

    def prior_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen prior, without gradients: (embedding [B,Dp], hidden [B,1+Nc,Wc])."""
        assert self.prior is not None
        with torch.no_grad():
            view = self.prior.prepare_input(x, self.imagenet_mean, self.imagenet_std, self.compat)
            return self.prior.encode_image(view)

    def expert_and_context(
        self, x: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert tokens [B,E,D] and context tokens [B,N,D] for the DSDM."""
        if self.prior is None:
            assert self.expert_queries is not None
            b = tokens.shape[0]
            return self.expert_queries[None].expand(b, -1, -1), tokens[:, 1:]
        emb, hidden = self.prior_features(x)
        assert self.experts is not None and self.context is not None
        return self.experts(self.prior.text_features, emb), self.context(hidden)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every saved tensor except the frozen prior (loaded from its own file)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("prior.")}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = self.trainable_state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"trainable weights do not fit this model: missing {missing[:8]}, unexpected {unexpected[:8]}")
        self.load_state_dict({**self.state_dict(), **state}, strict=True)

    # ------------------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor, return_attention: bool = False) -> ModelOutput:
        """x [B,3,H,W] ImageNet-normalised -> ModelOutput(score [B], expert_weights [B,E] | None, ...)."""
        self.check_input(x)
        if self.variant == "prior_only":
            emb, _ = self.prior_features(x)
            assert self.prior is not None
            feats = self.prior_norm(hadamard(self.prior.text_features, emb))  # [B,E,Dp]
            return ModelOutput(score=self.head(feats.flatten(1)).squeeze(-1))

        assert self.encoder is not None
        tokens = self.encoder(x)  # [B,T,D]
        cls = tokens[:, 0]
        refined, maps = None, None
        if self.dsdm is not None:
            experts, context = self.expert_and_context(x, tokens)
            refined, maps = self.dsdm(
                experts, tokens, context, cumulative_norm=self.compat == "authors", return_maps=return_attention
            )
        if self.variant == "image_encoder":
            return ModelOutput(score=self.head(cls).squeeze(-1))
        if self.variant == "dsdm":
            assert refined is not None
            return ModelOutput(score=self.head(cls + refined.mean(1)).squeeze(-1), refined=refined, attention=maps)
        assert self.ddwm is not None
        weights = self.ddwm(refined, cls, self.num_experts)  # [B,E]
        score = self.head(weights.sum(1, keepdim=True) * cls).squeeze(-1)
        return ModelOutput(score=score, expert_weights=weights, refined=refined, attention=maps)


def build_model(cfg: ModelConfig) -> DRExperts:
    """The factory: a DR.Experts variant from its config, with pretrained weights when configured.

    Pretrained weights are read from the local files ``model.backbone.pretrained`` and
    ``model.prior.checkpoint`` name (``None``: random initialisation); only the parts the variant
    builds are loaded. Raises ConfigError for a ``builtin:`` reference (turn it into its file with
    ``drx.builtin.resolve(cfg)`` first) and CheckpointError for a file that is missing, unreadable
    or does not fit.
    """
    if not isinstance(cfg, ModelConfig):
        raise ConfigError(f"build_model expects a ModelConfig, got {type(cfg).__name__}")
    model = DRExperts(cfg)
    if model.encoder is not None and cfg.backbone.pretrained:
        load_backbone_weights(model.encoder.vit, _weights_file(cfg.backbone.pretrained, "model.backbone.pretrained"))
    if model.prior is not None and cfg.prior.checkpoint:
        load_prior_weights(model.prior, _weights_file(cfg.prior.checkpoint, "model.prior.checkpoint"), cfg.prior.kind)
        model.prior.refresh_text_features()
    return model


def _weights_file(ref: str, key: str) -> Path:
    """The file `ref` names (``~`` expanded); a ``builtin:`` reference is a ConfigError (drx.model
    only loads: building the built-ins belongs to drx.builtin, a layer above)."""
    if ref.startswith(BUILTIN_PREFIX):
        raise ConfigError(
            f"{key} {ref!r} is a built-in, not a file: resolve it first with drx.builtin.resolve(model_config), "
            "which builds it once and names its cached file"
        )
    return Path(ref).expanduser()
