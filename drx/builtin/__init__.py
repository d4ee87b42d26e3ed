"""``builtin:`` weights: small models drx trains once for the CPU preset and keeps in its cache.

``builtin:tiny-daclip`` (the prior, drx/builtin/tiny_prior.py) and ``builtin:tiny-deit3`` (the image
encoder, drx/builtin/tiny_encoder.py). Both are saved in their official key layouts and loaded through
the same strict loaders as the real DA-CLIP and DeiT-III files. Their architecture is the ``tiny``
preset's (drx/presets/tiny.yaml). :func:`resolve` turns a model config's references into files, so
that ``drx.model.build_model`` only ever loads files.
"""

from __future__ import annotations

from drx.builtin.common import (
    BUILTIN_PREFIX, builtin_name, builtin_path, ensure_built, fit_one_cycle, map_on_cores, tiny_model_config,
)
from drx.builtin.tiny_encoder import resolve_backbone_checkpoint
from drx.builtin.tiny_prior import resolve_prior_checkpoint
from drx.config import ModelConfig
from drx.model.drexperts import uses_encoder, uses_prior

__all__ = [
    "BUILTIN_PREFIX", "builtin_name", "builtin_path", "ensure_built", "fit_one_cycle", "map_on_cores", "resolve",
    "tiny_model_config",
]


def resolve(model_cfg: ModelConfig) -> ModelConfig:
    """A copy of `model_cfg` whose weight references name files, for ``build_model``.

    ``model.backbone.pretrained`` and ``model.prior.checkpoint``: ``builtin:tiny-deit3`` /
    ``builtin:tiny-daclip`` become the built-in's cached file (built once on first use, under a file
    lock; minutes on a CPU), a file path is ``~``-expanded, ``None`` stays. Only the parts the
    variant builds are resolved (an ``image_encoder`` model never builds the prior), as
    ``build_model`` only loads those. `model_cfg` itself is not changed, so a saved config keeps its
    ``builtin:`` references.

    Raises ConfigError for an unknown built-in name, or a built-in whose architecture is not the
    model's (the tiny preset's encoder needs its backbone name, kwargs and img_size; the miniature
    prior its arch and arch_overrides, kind daclip or clip).
    """
    out = model_cfg.model_copy(deep=True)
    if uses_encoder(out) and out.backbone.pretrained:
        out.backbone.pretrained = str(resolve_backbone_checkpoint(out.backbone, out.img_size))
    if uses_prior(out) and out.prior.checkpoint:
        out.prior.checkpoint = str(resolve_prior_checkpoint(out.prior))
    return out
