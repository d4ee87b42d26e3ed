"""The image encoder: any timm Vision Transformer with a class token, fine-tuned."""

from __future__ import annotations

import difflib

import timm
import torch
from torch import nn

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
        if cfg.grad_checkpointing:
            vit.set_grad_checkpointing(True)

    @property
    def num_tokens(self) -> int:
        return 1 + self.grid_size[0] * self.grid_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(x)
        if self.num_prefix_tokens > 1:
            tokens = torch.cat([tokens[:, :1], tokens[:, self.num_prefix_tokens :]], dim=1)
        return tokens
