"""drx: ablation and hyperparameter search for the DR.Experts BIQA model."""

__version__ = "0.1.0"
