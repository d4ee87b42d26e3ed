"""The base of every typed YAML schema drx reads, and the one formatter of its validation errors.

``ExperimentConfig`` (drx.config), the ablation and search specs (drx.search) and the resize
setting (drx.data) all derive from :class:`StrictModel`: unknown keys are errors, and
:func:`validation_message` words every error the same way, naming the dotted key, the value, what
was expected and, for a misspelt key or value, the closest valid one.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    """A pydantic model that refuses unknown keys and re-validates on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside a field's annotation (``X``, ``X | None``, ``list[X]``,
    ``dict[str, X]``), or None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = model_in(arg)
        if found is not None:
            return found
    return None


def fields_at(root: type[BaseModel], loc: tuple | list) -> list[str]:
    """The valid keys of the section at `loc` (list indices and mapping keys are stepped over)."""
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None:
            return []
        field = model.model_fields.get(str(part))
        if field is None:
            continue  # a list index or a free mapping key: stay in the same model
        model = model_in(field.annotation)
    return list(model.model_fields) if model is not None else []


def unknown_key_message(key: str, value: Any, valid: list[str], where: str) -> str:
    """``unknown key 'a.b' (value 1) in a; did you mean 'a.c'?`` (or the list of valid keys)."""
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.5)
    msg = f"unknown key {key!r}"
    if value is not None:
        msg += f" (value {value!r})"
    msg += f" in {where}"
    if close:
        prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
        msg += f"; did you mean {prefix + close[0]!r}?"
    else:
        msg += f"; valid keys: {', '.join(valid)}"
    return msg


def validation_message(exc: ValidationError, root: type[BaseModel], what: str, origin: str = "") -> str:
    """One line per error of `exc` (raised validating `root`), under ``invalid <what> (<origin>):``."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) or "<top level>"
        if err["type"] == "extra_forbidden":
            where = ".".join(loc[:-1]) or "<top level>"
            lines.append(unknown_key_message(key, err.get("input"), fields_at(root, loc[:-1]), where))
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error" and isinstance(err.get("input"), str):
            allowed = [a.strip(" '") for a in str(err.get("ctx", {}).get("expected", "")).replace(" or ", ",").split(",")]
            close = difflib.get_close_matches(err["input"], [a for a in allowed if a], n=1, cutoff=0.5)
            if close:
                msg += f"; did you mean {close[0]!r}?"
        lines.append(f"{key} = {err.get('input')!r}: {msg}")
    head = f"invalid {what} ({origin}):" if origin else f"invalid {what}:"
    return head + "\n  " + "\n  ".join(lines)
