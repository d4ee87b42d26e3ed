"""DDWM: the dynamic distortion weighting module (the reference's DeepInterestNet activation unit).

For each expert i it scores a feature vector built from the chosen groups (paper Table 5):
``dis`` = the refined expert feature G_i, ``sem`` = the image encoder feature F, ``bri`` = G_i − F,
with an MLP (PReLU between layers, widths ``hidden``) to one weight a_i. The reference then pools
``Σ_i a_i · F`` and scores token 0, so only token 0 of each group is needed.
"""

from __future__ import annotations

import torch
from torch import nn

from drx.config import FEATURE_GROUPS


class DDWM(nn.Module):
    """refined [B,E,D] (token 0 of G), cls [B,D] -> expert weights [B,E]."""

    def __init__(self, dim: int, groups: list[str], hidden: list[int], num_experts: int = 1, gate_init: str = "default"):
        super().__init__()
        unknown = [g for g in groups if g not in FEATURE_GROUPS]
        if not groups or unknown:
            raise ValueError(f"DDWM groups must be a non-empty subset of {list(FEATURE_GROUPS)}, got {groups}")
        self.groups = [g for g in FEATURE_GROUPS if g in groups]
        layers: list[nn.Module] = []
        width = dim * len(self.groups)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.PReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        if gate_init == "uniform":
            nn.init.zeros_(layers[-1].weight)
            nn.init.constant_(layers[-1].bias, 1.0 / num_experts)

    def features(self, refined: torch.Tensor | None, image: torch.Tensor) -> torch.Tensor:
        """Concatenated groups, in the order dis, sem, bri: [..., k·D].

        refined [..., D] (None when no group needs it); image [..., D], already broadcast to
        the experts' shape (the same feature for every expert).
        """
        parts = {"dis": lambda: refined, "sem": lambda: image, "bri": lambda: refined - image}
        return torch.cat([parts[g]() for g in self.groups], dim=-1)

    @property
    def needs_refined(self) -> bool:
        return "dis" in self.groups or "bri" in self.groups

    def forward(self, refined: torch.Tensor | None, cls: torch.Tensor, num_experts: int) -> torch.Tensor:
        """refined [B,E,D] or None, cls [B,D] -> weights [B,E]."""
        image = cls[:, None].expand(cls.shape[0], num_experts, cls.shape[-1])
        return self.mlp(self.features(refined, image)).squeeze(-1)
