"""The tiny preset learns on the embedded benchmark (the figures per split: `drx bench learn`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from drx.builtin import resolve
from drx.config import load_config
from drx.model import build_model
from drx.train.scoring import score_images
from drx.train.trainer import build_trial_data, run_trial


@pytest.mark.slow
def test_tiny_preset_learns_from_near_zero():
    cfg = load_config("tiny", ["data.split.index=0"])
    torch.manual_seed(cfg.train.seed)
    data = build_trial_data(cfg)

    def test_srcc(model) -> float:
        scores = score_images(model, data.test, cfg, batch_size=144)
        return stats.spearmanr(scores.score, scores.mos).statistic

    random_weights = test_srcc(build_model(resolve(load_config("tiny", ["data.split.index=0", "model.backbone.pretrained=null"]).model)))
    assert abs(random_weights) < 0.3 or np.isnan(random_weights)
    # The pretrained encoder under untrained heads already ranks (measured -0.46 on split 0 of
    # embedded v2; the sign of a random readout is arbitrary): features that know distortions.
    # Fine-tuning on the split must take it well past that, to a positive figure.
    before = test_srcc(build_model(resolve(cfg.model)))
    result = run_trial(cfg, progress=False)
    assert result.status == "ok"
    # The clean protocol's figure: test SRCC at the epoch selected on validation. Measured 0.659 on
    # split 0 of embedded v2 (docs/performance.md); the margin absorbs thread-count rounding.
    assert result.best["test_srcc"] >= 0.60
    assert result.best["test_srcc"] > before + 0.3
