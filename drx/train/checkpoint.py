"""Trial checkpoints: everything needed to resume a trial exactly, in a file that cannot run code.

A checkpoint holds the trainable weights (never the frozen prior, which is loaded from its own
file), the optimiser, scheduler and grad-scaler states, the epoch, the RNG states, the resolved
config, the per-epoch metrics so far, the best-epoch bookkeeping and the record of what the
trial's inputs went through (``inputs``: the prepared copy's resize, ``data.resize``, the training
images' size; ``drx predict`` reads it).

Format (``drx-trial-v2``): one `safetensors <https://github.com/huggingface/safetensors>`_ file.
Every tensor (weights, optimiser moments, the torch RNG state) is a safetensors tensor; everything
else is one strict-JSON document in the file's header metadata under the key ``drx``, where a
tensor appears as ``{"__tensor__": NAME}``. Reading it parses JSON and copies tensor bytes: no
pickle is ever opened, so a shared checkpoint cannot execute code. Files in any other format
(e.g. pickled ``torch.save`` files of earlier drx versions) are refused with a
:class:`~drx.errors.CheckpointError`, unread.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from drx.errors import CheckpointError
from drx.experiment import TRIAL_BEST, TRIAL_CHECKPOINT
from drx.io import atomic_write

FORMAT = "drx-trial-v2"
CHECKPOINT_NAME = TRIAL_CHECKPOINT
BEST_NAME = TRIAL_BEST
META_KEY = "drx"

# Leading bytes of files that are not safetensors and must never be opened by a pickle reader:
# a zip archive (torch.save's default format) and a pickle stream (protocol 2+ starts with 0x80).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


# ------------------------------------------------------------------------------------ encoding


def _encode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    """`obj` as strict-JSON data; its tensors go to `tensors` under their path ``a/b/c``."""
    if isinstance(obj, torch.Tensor):
        # A private contiguous CPU copy: safetensors refuses tensors that share memory.
        tensors[where] = obj.detach().to("cpu").clone().contiguous()
        return {"__tensor__": where}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, (bool, str)) or obj is None:
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else {"__float__": repr(v)}  # "nan", "inf", "-inf"
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{where}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{where}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{where}/{k}") for k, v in obj.items()}
        # Non-text keys (the optimiser's parameter indices) keep their type.
        return {"__items__": [[_encode(k, tensors, f"{where}/key{i}"), _encode(v, tensors, f"{where}/{k}")] for i, (k, v) in enumerate(obj.items())]}
    raise TypeError(f"checkpoint entry {where or '/'}: cannot store a {type(obj).__name__} (tensors, numbers, text, lists and mappings only)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor], path: Path) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, path) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        name = obj["__tensor__"]
        if name not in tensors:
            raise CheckpointError(f"checkpoint {str(path)!r} is damaged: its metadata names tensor {name!r}, which the file does not hold")
        return tensors[name]
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=np.dtype(obj["dtype"]))
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors, path) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors, path): _decode(v, tensors, path) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors, path) for k, v in obj.items()}


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` (nested mappings/lists/tuples of tensors, numbers, text, numpy arrays) as a
    drx safetensors checkpoint, atomically (never a half-written file). Returns the path.

    TypeError naming the entry when `state` holds anything else (e.g. a function)."""
    tensors: dict[str, torch.Tensor] = {}
    meta = _encode(state, tensors, "")
    header = {META_KEY: json.dumps(meta, allow_nan=False, separators=(",", ":"))}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        for name in (CHECKPOINT_NAME, BEST_NAME):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"{str(path)!r} holds no drx checkpoint (expected {CHECKPOINT_NAME} or {BEST_NAME} from `drx train`)")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist (expected a {CHECKPOINT_NAME} or {BEST_NAME} from `drx train`)")
    return p


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a trial checkpoint (``checkpoint.safetensors`` / ``best.safetensors``, or a folder
    holding one) into the mapping :func:`save_checkpoint` wrote (tensors on the CPU).

    Raises CheckpointError naming the file when it is missing, not a safetensors file (a pickle or
    ``torch.save`` zip is refused without being unpickled), damaged, or not a drx checkpoint.
    """
    p = _resolve(path)
    with p.open("rb") as fh:
        head = fh.read(9)
    # A safetensors file starts with its header's length (8 bytes, little-endian) and the header's "{".
    size = p.stat().st_size
    safetensors_like = len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8
    if not safetensors_like and (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
        raise CheckpointError(
            f"{str(p)!r} is a pickle-based file (torch.save format, e.g. a checkpoint.pt of an earlier drx or of another "
            f"tool); drx does not read pickles because loading one can run arbitrary code. drx checkpoints are "
            f"safetensors files ({CHECKPOINT_NAME}, {BEST_NAME}): retrain with this drx version"
        )
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{str(p)!r} is not a readable safetensors checkpoint ({exc})") from None
    if META_KEY not in meta:
        raise CheckpointError(f"{str(p)!r} is a safetensors file without drx's metadata: not a drx trial checkpoint (format {FORMAT})")
    try:
        state = _decode(json.loads(meta[META_KEY]), tensors, p)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{str(p)!r}: drx metadata is damaged ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise CheckpointError(f"{str(p)!r} is not a drx trial checkpoint of format {FORMAT} (found format {found!r})")
    return state


# ----------------------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """The Python, NumPy, torch (and CUDA) RNG states, in a form :func:`save_checkpoint` stores."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the RNGs to a state from :func:`rng_state` (as read back by :func:`load_checkpoint`)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = ["BEST_NAME", "CHECKPOINT_NAME", "FORMAT", "load_checkpoint", "restore_rng", "rng_state", "save_checkpoint"]
