"""drx: ablation and hyperparameter search for the DR.Experts BIQA model.

``drx.load_scorer(checkpoint)`` scores images with a trained (or imported) trial from Python
(:mod:`drx.train.predict`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_scorer"]

if TYPE_CHECKING:
    from drx.train.predict import load_scorer


def __getattr__(name: str) -> Any:
    # Resolved on first use, so `import drx` (and `drx report`, which must not load torch) stays light.
    if name == "load_scorer":
        from drx.train.predict import load_scorer

        return load_scorer
    raise AttributeError(f"module 'drx' has no attribute {name!r}")
