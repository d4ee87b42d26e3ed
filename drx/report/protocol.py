"""The protocol note of a report: how the numbers of an experiment's tables were obtained.

Shared by the tables (:mod:`drx.report.commands`, the note under each table) and the HTML
summary (:mod:`drx.report.html`, "epoch selection").
"""

from __future__ import annotations

from typing import Any

from drx.experiment import Experiment

__all__ = ["protocol_note"]


def protocol_note(exp: Experiment, selection: str) -> str:
    """One line saying which epoch's test metrics a table shows and under which settings.

    ``selection`` is the report's ``--selection``: ``"best"`` (each trial's selected epoch) or
    ``"last"``. The selection rule is ``meta["select_on"]`` (``val``/``test``), else the first
    planned trial's ``train.select_on`` (default ``val``); ``model.compat`` is ``meta["compat"]``,
    else the trial's config (default ``clean``); the split settings come from the first planned
    trial's config (an ablation) or ``meta["base_config"]`` (a search). Example:
    ``"test metrics at the best-validation epoch (selected on the validation part, carved from
    the training images); model.compat clean; persisted splits 0.8/0.2 (seed 0), validation 0.1
    of the training part"``.
    """
    meta = exp.meta
    cfg: dict[str, Any] = {}
    if exp.plan:
        cfg = exp.plan[0]["config"]
    elif meta.get("base_config"):
        cfg = meta["base_config"]
    split = cfg.get("data", {}).get("split", {})
    select_on = meta.get("select_on", cfg.get("train", {}).get("select_on", "val"))
    if selection == "last":
        chosen = "test metrics at the last epoch"
    elif select_on == "test":
        chosen = "test metrics at the epoch of best TEST PLCC (selected on the TEST part: the authors' habit)"
    else:
        chosen = "test metrics at the best-validation epoch (selected on the validation part, carved from the training images)"
    parts = [
        chosen,
        f"model.compat {meta.get('compat', cfg.get('model', {}).get('compat', 'clean'))}",
    ]
    if split and split.get("protocol") == "official":
        source = f"split file {split['file']}" if split.get("file") else "the labels' split column"
        parts.append(f"split protocol official: the benchmark's own train/validation/test parts ({source})")
    elif split:
        train = split.get("train_fraction", 0.8)
        parts.append(
            f"split protocol random: persisted splits {train:g}/{1 - train:g} (seed {split.get('seed', 0)}), "
            f"validation {split.get('val_fraction', 0.1):g} of the training part"
        )
    return "; ".join(parts)
