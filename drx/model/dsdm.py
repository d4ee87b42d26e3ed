"""DSDM: the distortion-saliency differential module, for all experts at once.

Per expert i the reference computes, over T = 1+N tokens (reference-model.md A.2 step 8)::

    out_i = (softmax(Q1_i K1_iᵀ/√D) − α·softmax(Q2 K2ᵀ/√D)) · V_i
    Q1_i = W_q1 q_i (every row equal), K1_i = W_k1 LN_h([q_i; U]), Q2 = W_q2 X, K2 = W_k2 X,
    V_i  = W_v [q_i ; X_j] (row j),        X = LN_x(F) (the image tokens)
    G_i  = (1 − λ) ⊙ FFN(LN_a(out_i))

followed only by per-token operations; the score reads token 0 alone. Because Σ_j of each softmax
row is 1, row 0 has the closed form::

    out_i[0] = (1 − α)(W_a q_i + b) + A1_i · (X W_bᵀ) − α A2[0] · (X W_bᵀ),   W_v = [W_a | W_b]

so the default path builds no [E,B,T,T] attention maps and no [B,E,T,D] value tensors: the
projected image tokens ``X W_bᵀ`` [B,T,D] are shared by every expert. ``cumulative_norm``
reproduces the reference's quirk (expert i sees LN_x applied i+1 times to F).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def hadamard(text_features: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """Per-expert prior features t_i ⊙ f: text [E,Dp], embedding [B,Dp] -> [B,E,Dp]."""
    return text_features[None].to(embedding.dtype) * embedding[:, None]


class ExpertTokens(nn.Module):
    """Expert tokens from the prior: q_i = Linear_i(LN(t_i ⊙ f)), batched over experts.

    text_features [E,Dp], embedding [B,Dp] -> [B,E,D]. One Linear(Dp, D) per expert, stored as one
    weight [E,D,Dp] so all experts run in one einsum.
    """

    def __init__(self, num_experts: int, prior_dim: int, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(prior_dim)
        self.weight = nn.Parameter(torch.empty(num_experts, dim, prior_dim))
        self.bias = nn.Parameter(torch.empty(num_experts, dim))
        bound = 1.0 / math.sqrt(prior_dim)  # nn.Linear's default initialisation, per expert
        for i in range(num_experts):
            nn.init.kaiming_uniform_(self.weight[i], a=math.sqrt(5))
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, text_features: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        feats = self.norm(hadamard(text_features, embedding))  # [B,E,Dp]
        return torch.einsum("bep,edp->bed", feats, self.weight) + self.bias


class ContextTokens(nn.Module):
    """Controller hidden state -> tokens on the image encoder's patch grid.

    hidden [B,1+Nc,Wc] -> Linear(Wc,D) -> drop the class token -> [B,D,gc,gc] -> bilinear resize to
    the encoder grid -> [B,N,D]. Projecting before resizing equals the reverse order (both linear,
    bilinear weights sum to 1) and is cheaper.
    """

    def __init__(self, prior_width: int, prior_grid: tuple[int, int], dim: int, grid: tuple[int, int]):
        super().__init__()
        self.proj = nn.Linear(prior_width, dim)
        self.prior_grid = tuple(prior_grid)
        self.grid = tuple(grid)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        b = hidden.shape[0]
        x = self.proj(hidden)[:, 1:]
        gh, gw = self.prior_grid
        x = x.reshape(b, gh, gw, -1).permute(0, 3, 1, 2)
        x = F.interpolate(x, size=self.grid, mode="bilinear", align_corners=False)
        return x.flatten(2).transpose(1, 2)


class DSDM(nn.Module):
    """Differential refinement of every expert token against the image and controller tokens."""

    def __init__(self, dim: int, alpha_init: float = 0.5, lambda_init: float = 0.0):
        super().__init__()
        self.dim = dim
        self.norm_image = nn.LayerNorm(dim)  # LN_x (reference: norm_vit)
        self.norm_context = nn.LayerNorm(dim)  # LN_h (reference: norm3_hidden_feature)
        self.q1 = nn.Linear(dim, dim)
        self.k1 = nn.Linear(dim, dim)
        self.q2 = nn.Linear(dim, dim)
        self.k2 = nn.Linear(dim, dim)
        self.v = nn.Linear(2 * dim, dim)  # over [expert token ; image token]
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        self.attn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        # (1 − λ) output gain, per channel as in the reference (init 0 -> gain 1).
        self.lambda_ = nn.Parameter(torch.full((dim,), float(lambda_init)))

    def image_views(self, tokens: torch.Tensor, num_experts: int, cumulative: bool) -> torch.Tensor:
        """LN_x(F) [B,T,D], or with ``cumulative`` the reference's LN_x^(i+1)(F) stacked [B,E,T,D]."""
        if not cumulative:
            return self.norm_image(tokens)
        views, x = [], tokens
        for _ in range(num_experts):  # inherently sequential: each view is the previous one re-normed
            x = self.norm_image(x)
            views.append(x)
        return torch.stack(views, dim=1)

    def output(self, out: torch.Tensor) -> torch.Tensor:
        """LN, FFN, (1 − λ) gain: the per-token tail after the attention."""
        return (1.0 - self.lambda_) * self.ffn(self.attn_norm(out))

    def prior_attention(self, experts: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """softmax(Q1 K1ᵀ/√D) row (all rows are equal): experts [B,E,D], context [B,N,D] -> [B,E,1+N]."""
        scale = self.dim**-0.5
        q = self.q1(experts)
        k_self = self.k1(self.norm_context(experts))
        k_ctx = self.k1(self.norm_context(context))
        logits = torch.cat(
            [(q * k_self).sum(-1, keepdim=True), torch.einsum("bed,bnd->ben", q, k_ctx)], dim=-1
        )
        return torch.softmax(logits * scale, dim=-1)

    def forward(
        self,
        experts: torch.Tensor,
        tokens: torch.Tensor,
        context: torch.Tensor,
        cumulative_norm: bool = False,
        return_maps: bool = False,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """Refined expert features at token 0.

        experts [B,E,D] expert tokens; tokens [B,T,D] image-encoder tokens F (T = 1+N);
        context [B,N,D] controller tokens on the encoder grid. Returns (G[:, :, 0] [B,E,D], maps)
        where maps (only with ``return_maps``) holds the full attention maps: ``prior`` [B,E,T]
        (the single row of softmax(A1)), ``image`` [B,T,T] ([B,E,T,T] with cumulative_norm) and
        ``refined`` [B,E,T,T] = softmax(A1) − α·softmax(A2).
        """
        b, e, d = experts.shape
        scale = d**-0.5
        a1 = self.prior_attention(experts, context)  # [B,E,T]
        x = self.image_views(tokens, e, cumulative_norm)  # [B,T,D] or [B,E,T,D]
        w_a, w_b = self.v.weight[:, :d], self.v.weight[:, d:]
        projected = x @ w_b.t()  # X W_bᵀ
        own = F.linear(experts, w_a, self.v.bias)  # W_a q_i + b, [B,E,D]
        alpha = self.alpha
        if not cumulative_norm:
            q2 = self.q2(x[:, 0])  # [B,D]
            a2 = torch.softmax(torch.einsum("bd,btd->bt", q2, self.k2(x)) * scale, dim=-1)  # [B,T]
            shared = torch.einsum("bt,btd->bd", a2, projected)  # the image term is the same for every expert
            mixed = torch.einsum("bet,btd->bed", a1, projected) - alpha * shared[:, None]
        else:
            q2 = self.q2(x[:, :, 0])  # [B,E,D]
            a2 = torch.softmax(torch.einsum("bed,betd->bet", q2, self.k2(x)) * scale, dim=-1)
            mixed = torch.einsum("bet,betd->bed", a1 - alpha * a2, projected)
        refined = self.output((1.0 - alpha) * own + mixed)
        maps = None
        if return_maps:
            k2 = self.k2(x)
            q2_all = self.q2(x)
            full2 = torch.softmax(q2_all @ k2.transpose(-1, -2) * scale, dim=-1)  # [B,T,T] / [B,E,T,T]
            a2_b = full2[:, None] if not cumulative_norm else full2
            maps = {"prior": a1, "image": full2, "refined": a1[:, :, None, :] - alpha * a2_b}
        return refined, maps
