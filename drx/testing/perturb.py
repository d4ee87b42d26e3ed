"""Randomise every parameter of a model, for equivalence checks that cannot pass by accident.

With default initialisation DA-CLIP's zero-initialised taps make the controller path constant and
identity LayerNorm affines hide the reference's cumulative normalisation, so broken code would
still match. Every parameter (taps, LayerNorm weights and biases, α, λ included) gets noise.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def perturb_parameters_(model: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """In place: p += scale·std(p)·N(0,1) + 0.1·scale·N(0,1) for every parameter; returns model."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        spread = float(p.detach().double().std()) if p.numel() > 1 else 0.0
        spread = spread if spread > 0 else 1.0
        delta = scale * spread * noise + 0.1 * scale * torch.randn(p.shape, generator=gen, dtype=torch.float64)
        p.add_(delta.to(device=p.device, dtype=p.dtype))  # drawn on the CPU: the same numbers on any device
    for m in model.modules():  # derived buffers (prompt text features) follow the new weights
        if hasattr(m, "refresh_text_features"):
            m.refresh_text_features()
    return model
