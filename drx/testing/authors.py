"""The authors' model, attribute for attribute, to check ``drx import authors`` against (tests only).

:class:`AuthorsModel` has the parameter names of the authors' ``dascore_vit_models`` (their
models/deit.py and models/din.py, HEAD 08e8839; reference-model.md A) at any size, and a forward
written from their code step by step: the Python loop over experts with the cumulative
``norm_vit``, the full [B,T,T] attention maps, the DDWM on every token, the pooling
``Σ_i a_i · F`` and the score of token 0. Its :meth:`~AuthorsModel.authors_state_dict` is the
layout their ``model.state_dict()`` has (backbone in the official DeiT-III layout, DA-CLIP in the
official ``daclip_ViT-B-32.pt`` layout under ``head.``). The encoder and DA-CLIP towers are drx's
(timm's ViT and open_clip's towers, checked against the official layouts in their own tests);
every other parameter lives here under the authors' name, so a wrong mapping in the importer
changes the scores.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from drx.config import ModelConfig
from drx.model import build_model
from drx.model.weights import deit3_official_state_dict


class DiffAttention(nn.Module):
    """Their ``diff_attention`` (models/deit.py): one module shared by every expert."""

    def __init__(self, dim: int, alpha: float = 0.5):
        super().__init__()
        self.W_q1 = nn.Linear(dim, dim)
        self.W_q2 = nn.Linear(dim, dim)
        self.W_k1 = nn.Linear(dim, dim)
        self.W_k2 = nn.Linear(dim, dim)
        self.W_v = nn.Linear(dim * 2, dim)
        self.alpha = nn.Parameter(torch.tensor(alpha))
        self.dim = dim

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, x1_hidden: torch.Tensor) -> torch.Tensor:
        """x1 [B,D] expert token, x2 [B,T,D] image tokens, x1_hidden [B,T,D] -> [B,T,D]."""
        x1 = x1.unsqueeze(1).expand(-1, x2.shape[1], -1)
        x = torch.cat([x1, x2], dim=-1)
        q1, k1 = self.W_q1(x1), self.W_k1(x1_hidden)
        q2, k2 = self.W_q2(x2), self.W_k2(x2)
        v = self.W_v(x)
        s = 1 / math.sqrt(self.dim)
        a1 = F.softmax((q1 @ k1.transpose(-1, -2)) * s, dim=-1)
        a2 = F.softmax((q2 @ k2.transpose(-1, -2)) * s, dim=-1)
        return (a1 - self.alpha * a2) @ v


class ActivationUnit(nn.Module):
    """Their DIN ``ActivationUnit`` (models/din.py, final version): Linear-PReLU layers over [diff, img, diff - img]."""

    def __init__(self, dim: int, fc_dims: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        width = dim * 3
        for h in fc_dims:
            layers += [nn.Linear(width, h), nn.PReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.fc = nn.Sequential(*layers)


class AttentionPoolingLayer(nn.Module):
    def __init__(self, dim: int, fc_dims: list[int]):
        super().__init__()
        self.active_unit = ActivationUnit(dim, fc_dims)


class DeepInterestNet(nn.Module):
    def __init__(self, dim: int, fc_dims: list[int]):
        super().__init__()
        self.AttentionActivate = AttentionPoolingLayer(dim, fc_dims)


class AuthorsModel(nn.Module):
    """The authors' model at the sizes of a drx `cfg` (encoder, prior, prompts, ``ddwm.hidden``).

    forward: x [B,3,H,W] ImageNet-normalised -> (score [B], expert weights a_i at token 0 [B,E]).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        parts = build_model(cfg.model_copy(update={"variant": "full", "compat": "authors"}))
        assert parts.encoder is not None and parts.prior is not None
        self.vit = parts.encoder.vit  # exported as backbone.* (official DeiT-III layout)
        self.daclip = parts.prior  # exported as head.* (official DA-CLIP layout)
        self.register_buffer("imagenet_mean", parts.imagenet_mean.clone(), persistent=False)
        self.register_buffer("imagenet_std", parts.imagenet_std.clone(), persistent=False)
        dim, prior_dim, width = parts.encoder.embed_dim, parts.prior.embed_dim, parts.prior.width
        self.grid = tuple(parts.encoder.grid_size)
        self.prior_grid = tuple(parts.prior.grid_size)
        self.num_experts = len(cfg.prior.prompts)
        self.embed_dim = dim
        # The attributes of dascore_vit_models, in its order.
        self.decoder = DeepInterestNet(dim, list(cfg.ddwm.hidden))
        self.L1 = nn.Linear(prior_dim, dim)  # built, never used in forward
        self.L2 = nn.Linear(self.grid[0] * self.grid[1], 1)  # built, never used in forward
        self.diff_attention = DiffAttention(dim)
        self.lamda_init = nn.Parameter(torch.zeros(1, dim))
        self.attn_norm = nn.LayerNorm(dim)
        self.group_attn_ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.norm1 = nn.LayerNorm(prior_dim)
        self.L_hidden = nn.Linear(width, dim)
        self.score = nn.Linear(dim, 1)
        self.norm_vit = nn.LayerNorm(dim)
        self.norm3_hidden_feature = nn.LayerNorm(dim)
        self.linears = nn.ModuleList([nn.Linear(prior_dim, dim) for _ in range(self.num_experts)])
        self.backbone_head = nn.Linear(dim, 1)  # their vit_models(num_classes=1).head: built, never used

    def authors_state_dict(self) -> dict[str, torch.Tensor]:
        """The keys and shapes of the authors' ``model.state_dict()``."""
        sd = {}
        backbone = deit3_official_state_dict(self.vit, num_classes=1)["model"]
        backbone["head.weight"] = self.backbone_head.weight.detach().clone()
        backbone["head.bias"] = self.backbone_head.bias.detach().clone()
        sd.update({f"backbone.{k}": v for k, v in backbone.items()})
        sd.update({f"head.{k}": v for k, v in self.daclip.build_state_for_export().items()})
        for k, v in self.state_dict().items():
            if not k.startswith(("vit.", "daclip.", "backbone_head.")):
                sd[k] = v.detach().clone()
        return sd

    def mulithead(self, da_metrics: torch.Tensor, img_feature: torch.Tensor, hidden_feature: torch.Tensor) -> torch.Tensor:
        group_attn = []
        for i in range(da_metrics.shape[1]):
            img_feature = self.norm_vit(img_feature)  # re-normed for every expert, as theirs
            hidden_i = self.norm3_hidden_feature(hidden_feature[:, i])
            group_attn.append(self.diff_attention(da_metrics[:, i], img_feature, hidden_i))
        out = self.group_attn_ffn(self.attn_norm(torch.stack(group_attn)))
        return out * (1 - self.lamda_init)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        img_feature = self.vit.forward_features(x)  # [B,T,D], post-norm, cls first
        size = self.daclip.image_size
        da_img = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        da_img = (da_img - self.daclip.clip_mean) / self.daclip.clip_std  # on top of ImageNet's, as theirs
        text_features = self.daclip.encode_text()  # L2-normalised, recomputed every forward
        da_img_feature, hiddens = self.daclip.controller.forward_all_taps(da_img)
        da_img_feature = da_img_feature / da_img_feature.norm(dim=-1, keepdim=True)
        da_metrics = self.norm1(text_features[None] * da_img_feature[:, None])
        da_metrics = torch.stack([self.linears[i](da_metrics[:, i]) for i in range(self.num_experts)], dim=1)
        hidden = self.L_hidden(hiddens[-1])[:, 1:]  # open_clip 3 is batch-first: their permute(1, 0, 2) is not needed
        hidden = hidden.reshape(b, *self.prior_grid, self.embed_dim).permute(0, 3, 1, 2)
        hidden = F.interpolate(hidden, size=self.grid, mode="bilinear", align_corners=False)
        hidden = hidden.permute(0, 2, 3, 1).reshape(b, -1, self.embed_dim)
        hidden = hidden.unsqueeze(1).expand(-1, self.num_experts, -1, -1)
        hidden = torch.cat((da_metrics.unsqueeze(2), hidden), dim=2)
        out = self.mulithead(da_metrics, img_feature, hidden).permute(1, 0, 2, 3)  # [B,E,T,D]
        img = img_feature.unsqueeze(1).expand(-1, self.num_experts, -1, -1)
        attns = self.decoder.AttentionActivate.active_unit.fc(torch.cat([out, img, out - img], dim=-1))  # [B,E,T,1]
        pooled = img.mul(attns).sum(dim=1)
        return self.score(pooled[:, 0]).squeeze(-1), attns[:, :, 0, 0]
