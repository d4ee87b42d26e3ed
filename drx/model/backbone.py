"""The image encoder: any timm Vision Transformer with a class token, fine-tuned."""

from __future__ import annotations

import difflib
from functools import partial

import timm
import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from drx.config import BackboneConfig
from drx.errors import ConfigError


class ImageEncoder(nn.Module):
    """timm ViT returning all tokens after the final norm: x [B,3,H,W] -> [B,1+N,D], cls first.

    Extra prefix tokens (distillation or register tokens) are dropped, so token 0 is the class
    token and tokens 1..N are the patch grid ``grid_size`` in row-major order.
    """

    def __init__(self, cfg: BackboneConfig, img_size: int):
        super().__init__()
        if not timm.is_model(cfg.name):
            close = difflib.get_close_matches(cfg.name, timm.list_models(), n=4, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"model.backbone.name: unknown timm model {cfg.name!r}{hint}")
        kwargs = dict(cfg.kwargs)
        kwargs.setdefault("img_size", img_size)
        try:
            self.vit = timm.create_model(
                cfg.name, pretrained=False, num_classes=0, drop_path_rate=cfg.drop_path, **kwargs
            )
        except TypeError as exc:
            if "img_size" in str(exc) and "img_size" not in cfg.kwargs:
                raise ConfigError(
                    f"model.backbone.name: {cfg.name!r} is not a Vision Transformer with a class token "
                    "(it takes no img_size); pick e.g. deit3_small_patch16_384"
                ) from None
            raise ConfigError(f"model.backbone: timm model {cfg.name!r} rejected its arguments {kwargs}: {exc}") from None
        vit = self.vit
        if getattr(vit, "cls_token", None) is None or not hasattr(vit, "patch_embed") or not hasattr(vit, "forward_features"):
            raise ConfigError(
                f"model.backbone.name: {cfg.name!r} is not a Vision Transformer with a class token "
                "(DR.Experts gates the class token); pick e.g. deit3_small_patch16_384"
            )
        self.name = cfg.name
        self.num_prefix_tokens = int(getattr(vit, "num_prefix_tokens", 1))
        self.grid_size = tuple(vit.patch_embed.grid_size)
        self.img_size = tuple(vit.patch_embed.img_size)
        self.embed_dim = int(vit.embed_dim)
        self.checkpointing = cfg.grad_checkpointing
        if cfg.grad_checkpointing == "full":
            vit.set_grad_checkpointing(True)

    @property
    def num_tokens(self) -> int:
        return 1 + self.grid_size[0] * self.grid_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointing == "selective" and torch.is_grad_enabled():
            tokens = self._forward_selective(x)
        else:
            tokens = self.vit.forward_features(x)
        if self.num_prefix_tokens > 1:
            tokens = torch.cat([tokens[:, :1], tokens[:, self.num_prefix_tokens :]], dim=1)
        return tokens

    def _forward_selective(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        for block in vit.blocks:
            x = checkpoint(block, x, use_reentrant=False, context_fn=_SELECTIVE_CONTEXT)
        return vit.norm(x)


# Outputs worth keeping: matrix products and attention (expensive to recompute). Everything else
# in a ViT block (LayerNorm, GELU, LayerScale, residual adds, reshapes) is recomputed in backward.
_SAVED_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.baddbmm.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
}


def _selective_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


_SELECTIVE_CONTEXT = partial(create_selective_checkpoint_contexts, _selective_policy)
