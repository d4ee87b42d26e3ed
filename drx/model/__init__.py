"""The modular DR.Experts model: ``build_model(model_config)``."""

from drx.model.drexperts import DRExperts, ModelOutput, build_model

__all__ = ["DRExperts", "ModelOutput", "build_model"]
