"""Shared test set-up: a private drx cache, small model configs, and thread limits."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# A small DR.Experts of the paper's architecture family (DeiT-III blocks, an open_clip ViT prior):
# 64-px inputs, 8-px patches -> 1 + 64 tokens; prior at 32 px -> 1 + 16 controller tokens.
TINY_MODEL = {
    "img_size": 64,
    "backbone": {"name": "deit3_small_patch16_384", "kwargs": {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 8}},
    "prior": {
        "arch": "ViT-B-32",
        "arch_overrides": {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 48, "layers": 2, "head_width": 16},
            "text_cfg": {"width": 32, "heads": 2, "layers": 2},
        },
    },
}


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep every test's cache (embedded benchmark, tiny prior, splits) out of the home folder."""
    if not os.environ.get("DRX_TEST_KEEP_CACHE"):
        os.environ["DRX_CACHE"] = str(tmp_path_factory.mktemp("drx-cache"))
    yield
