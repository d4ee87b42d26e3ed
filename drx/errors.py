"""Error types shared across drx. Each message names the file, key, row or value at fault."""


class DrxError(Exception):
    """Base class of drx's own errors (the CLI prints them without a traceback)."""


class ConfigError(DrxError, ValueError):
    """A configuration problem: names the key (dotted), the value, and what was expected."""


class DataError(DrxError, ValueError):
    """A benchmark/data problem: names the file or row and what was expected."""


class CheckpointError(DrxError, ValueError):
    """A weight or checkpoint file that cannot be used: names the path and the keys at fault."""


class TrackingError(DrxError):
    """An experiment tracker (MLflow, TensorBoard, W&B) that is not installed or cannot be reached:
    names the backend, where it was asked to log, and the fix (the drx extra to install)."""
