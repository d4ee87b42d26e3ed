"""A naive forward that follows the authors' maths step by step, the yardstick.

Same parameters as a :class:`DRExperts`, computed the straightforward way the authors' code does:
a Python loop over experts, the full [B,T,T] attention maps of every expert, the refined features
of all T tokens, the DDWM on all tokens, every controller tap, and the prompt text features
re-encoded at every forward. Tests check that the default path gives the same outputs, and
``drx bench model --impl both`` measures what the default path saves. For tests and benchmarks only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from drx.model.drexperts import DRExperts, ModelOutput
from drx.model.dsdm import DSDM, hadamard


def diff_attention_full(dsdm: DSDM, query: torch.Tensor, image: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """One expert, all tokens: query [B,D], image [B,T,D] (normed), hidden [B,T,D] (normed) -> [B,T,D]."""
    b, t, d = image.shape
    q_rows = query[:, None].expand(b, t, d)
    q1 = dsdm.q1(q_rows)
    k1 = dsdm.k1(hidden)
    q2 = dsdm.q2(image)
    k2 = dsdm.k2(image)
    v = dsdm.v(torch.cat([q_rows, image], dim=-1))
    a1 = torch.softmax(q1 @ k1.transpose(1, 2) / d**0.5, dim=-1)
    a2 = torch.softmax(q2 @ k2.transpose(1, 2) / d**0.5, dim=-1)
    return (a1 - dsdm.alpha * a2) @ v


def naive_forward(model: DRExperts, x: torch.Tensor) -> ModelOutput:
    """A naive forward that follows the authors' maths step by step, the yardstick.

    `model`'s own parameters, x [B,3,H,W] ImageNet-normalised -> ModelOutput (score [B];
    expert_weights [B,E] for ``full``; refined [B,E,D] token 0). Raises ValueError for a
    wrongly shaped x, as the model does.
    """
    model.check_input(x)
    prior = model.prior
    emb = hidden = text = None
    if prior is not None:
        with torch.no_grad():
            view = prior.prepare_input(x, model.imagenet_mean, model.imagenet_std, model.compat)
            text = prior.encode_text()  # recomputed every forward, as the reference does
            if prior.kind == "daclip":
                emb, hiddens = prior.controller.forward_all_taps(view)
                hidden = hiddens[-1]
                emb = F.normalize(emb, dim=-1)
            else:
                emb, hidden = prior.encode_image(view)

    if model.variant == "prior_only":
        feats = model.prior_norm(hadamard(text, emb))
        return ModelOutput(score=model.head(feats.flatten(1)).squeeze(-1))

    tokens = model.encoder(x)
    b, t, d = tokens.shape
    e = model.num_experts
    dsdm = model.dsdm
    refined_all = None
    if dsdm is not None:
        if prior is not None:
            da = model.experts.norm(hadamard(text, emb))
            experts = torch.stack(
                [F.linear(da[:, i], model.experts.weight[i], model.experts.bias[i]) for i in range(e)], dim=1
            )
            context = model.context(hidden)
        else:
            experts = model.expert_queries[None].expand(b, -1, -1)
            context = tokens[:, 1:]
        stacked = torch.cat([experts[:, :, None], context[:, None].expand(b, e, t - 1, d)], dim=2)  # [B,E,T,D]
        image = tokens
        outs = []
        for i in range(e):
            if model.compat == "authors" or i == 0:
                image = dsdm.norm_image(image)  # authors: re-normed once more for every expert
            outs.append(diff_attention_full(dsdm, experts[:, i], image, dsdm.norm_context(stacked[:, i])))
        refined_all = dsdm.output(torch.stack(outs, dim=1))  # [B,E,T,D]

    cls = tokens[:, 0]
    if model.variant == "image_encoder":
        return ModelOutput(score=model.head(cls).squeeze(-1))
    if model.variant == "dsdm":
        return ModelOutput(score=model.head(cls + refined_all[:, :, 0].mean(1)).squeeze(-1), refined=refined_all[:, :, 0])
    image_all = tokens[:, None].expand(b, e, t, d)
    weights = model.ddwm.mlp(model.ddwm.features(refined_all, image_all))  # [B,E,T,1]
    pooled = (image_all * weights).sum(dim=1)  # [B,T,D]: the weights gate the encoder features
    score = model.head(pooled[:, 0]).squeeze(-1)
    return ModelOutput(
        score=score,
        expert_weights=weights[:, :, 0, 0],
        refined=None if refined_all is None else refined_all[:, :, 0],
    )
