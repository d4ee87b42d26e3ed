"""Search spaces: a search-space YAML -> validated parameters and Optuna distributions (no Ray here).

Parameters are dotted config keys. ``uniform``/``loguniform`` (floats), ``int`` (optionally
``log``/``step``) and ``choice`` (any YAML values; lists such as ``model.ddwm.hidden`` or
``model.prior.prompts`` are encoded as JSON strings for Optuna, which only stores scalars).
The objective is a validation metric, never a test metric.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from pydantic import Field, ValidationError, model_validator

from drx.config import apply_overrides, build_config, deep_merge, load_raw, resolve_source
from drx.errors import ConfigError
from drx.schema import StrictModel
from drx.search.grid import (
    REAL_BENCHMARKS, BenchmarkSpec, ResourceSpec, expand_env, find_study, read_spec_file, refuse_study_wide, spec_error,
)

OBJECTIVES = ("val_srcc", "val_plcc")


class ParamSpec(StrictModel):
    type: Literal["uniform", "loguniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> "ParamSpec":
        if self.type == "choice":
            if not self.values:
                raise ValueError("a 'choice' parameter needs a non-empty 'values' list")
            if self.low is not None or self.high is not None:
                raise ValueError("a 'choice' parameter takes 'values', not low/high")
        else:
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError(f"a {self.type!r} parameter needs low < high, got low={self.low}, high={self.high}")
            if self.type == "loguniform" and self.low <= 0:
                raise ValueError(f"loguniform needs low > 0, got {self.low}")
            if self.values is not None:
                raise ValueError(f"a {self.type!r} parameter takes low/high, not 'values'")
        return self


class BudgetSpec(StrictModel):
    num_samples: int = Field(20, ge=1)
    max_concurrent: int | None = Field(None, ge=1)


class SchedulerSpec(StrictModel):
    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)
    max_epochs: int | None = Field(None, ge=1)  # default: the base config's train.epochs
    reduction_factor: float = Field(3.0, gt=1.0)


class ConfirmSpec(StrictModel):
    top_k: int = Field(3, ge=0)
    splits: list[int] | Literal["all"] = "all"


class SearchSpec(StrictModel):
    name: str
    description: str = ""
    base: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    benchmark: BenchmarkSpec
    # The split whose validation part the search optimises (its test part is never looked at).
    split: int = Field(0, ge=0)
    objective: Literal["val_srcc", "val_plcc"] = "val_srcc"
    space: dict[str, ParamSpec]
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    seed: int = 0
    # Optuna storage: None -> SQLite in the experiment folder; any SQLAlchemy URL; or
    # "journal:/shared/path/study.log" (an Optuna journal file, for NFS on clusters).
    storage: str | None = None
    # Enqueue the base config's values of the searched keys as the first trial.
    enqueue_base: bool = True
    confirm: ConfirmSpec = Field(default_factory=ConfirmSpec)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("benchmark"), str):
            data = {**data, "benchmark": {"name": data["benchmark"]}}
        if isinstance(data, dict) and "objective" in data and str(data["objective"]).startswith("test"):
            raise ValueError(f"objective {data['objective']!r} is a test metric: the search optimises a validation metric ({', '.join(OBJECTIVES)})")
        return data

    @model_validator(mode="after")
    def _check(self) -> "SearchSpec":
        if not self.space:
            raise ValueError("space needs at least one parameter")
        return self


@dataclass
class SearchPlan:
    spec: SearchSpec
    source: Path | None
    base_config: dict[str, Any]  # resolved config of the search split, before sampled values
    distributions: dict[str, optuna.distributions.BaseDistribution]
    defaults: dict[str, Any]  # base values of the searched keys, encoded for Optuna
    max_epochs: int
    confirm_splits: list[int]


def encode_value(spec: ParamSpec, value: Any) -> Any:
    """Config value -> Optuna's stored value (choices become their JSON text)."""
    if spec.type == "choice":
        return json.dumps(value)
    return value


def decode_value(spec: ParamSpec, value: Any) -> Any:
    if spec.type == "choice":
        return json.loads(value)
    if spec.type == "int":
        return int(value)
    return float(value)


def distribution(spec: ParamSpec) -> optuna.distributions.BaseDistribution:
    if spec.type == "choice":
        return optuna.distributions.CategoricalDistribution([json.dumps(v) for v in spec.values or []])
    if spec.type == "int":
        step = int(spec.step) if spec.step else 1
        return optuna.distributions.IntDistribution(int(spec.low), int(spec.high), log=spec.log, step=step if not spec.log else 1)
    return optuna.distributions.FloatDistribution(float(spec.low), float(spec.high), log=spec.type == "loguniform" or spec.log, step=spec.step)


def _get_dotted(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        node = node[part]
    return node


def load_search(path_or_dict: str | Path | dict[str, Any], set_overrides: list[str] | None = None) -> SearchPlan:
    """Read and validate a search-space YAML; unknown keys fail here, before Ray starts."""
    source = None
    if isinstance(path_or_dict, dict):
        data, origin = dict(path_or_dict), "mapping"
    else:
        source = find_study(path_or_dict, "search space").resolve()
        data, origin = read_spec_file(source, "search space"), str(path_or_dict)
    try:
        spec = SearchSpec.model_validate(data)
    except ValidationError as exc:
        raise spec_error(exc, SearchSpec, origin, "search space") from None

    refuse_study_wide(spec.space, f"{origin}: space", "the search space")
    bench = spec.benchmark
    base = load_raw(resolve_source((bench.base or spec.base).replace("{benchmark}", bench.name), source.parent if source else None))
    root = expand_env(bench.root) if bench.root else (expand_env(f"$DRX_DATA/{bench.name}") if bench.name in REAL_BENCHMARKS else None)
    bench_data: dict[str, Any] = {"benchmark": bench.name, **({"root": root} if root else {}), **({"options": bench.options} if bench.options else {})}
    raw = apply_overrides(deep_merge(base, {"data": bench_data}), dict(spec.overrides))
    if set_overrides:
        raw = apply_overrides(raw, set_overrides)
    raw = apply_overrides(raw, {"data.split.index": spec.split, "name": f"{spec.name}/search"})
    cfg = build_config(raw, origin)
    distributions, defaults = {}, {}
    resolved = cfg.to_dict()
    for key, p in spec.space.items():
        try:
            current = _get_dotted(resolved, key)
        except (KeyError, TypeError):
            try:
                apply_overrides(raw, {key: None})
            except ConfigError as exc:
                raise ConfigError(f"{origin}: space key {key!r}: {exc}") from None
            current = None
        # Every candidate value must give a valid config: check the ends of each range.
        probes = p.values if p.type == "choice" else [p.low if p.type != "int" else int(p.low), p.high if p.type != "int" else int(p.high)]
        for value in probes:
            try:
                build_config(apply_overrides(raw, {key: value}), f"{origin}, space {key}={value!r}")
            except ConfigError as exc:
                raise ConfigError(f"space key {key!r} value {value!r}: {exc}") from None
        distributions[key] = distribution(p)
        if spec.enqueue_base:
            if p.type == "choice" and current not in p.values:
                raise ConfigError(
                    f"{origin}: space key {key!r}: the base value {current!r} is not among the choices {p.values}; "
                    "add it (the base config is enqueued as the first trial) or set enqueue_base: false"
                )
            if p.type != "choice" and not (p.low <= current <= p.high):
                raise ConfigError(
                    f"{origin}: space key {key!r}: the base value {current!r} lies outside [{p.low}, {p.high}]; "
                    "widen the range or set enqueue_base: false"
                )
            # The matching entry of the space itself (3 and 3.0 are the same choice).
            chosen = next(v for v in p.values if v == current) if p.type == "choice" else current
            defaults[key] = encode_value(p, chosen)
    max_epochs = spec.scheduler.max_epochs or cfg.train.epochs
    if spec.scheduler.max_epochs is not None:
        raw = apply_overrides(raw, {"train.epochs": spec.scheduler.max_epochs})
        cfg = build_config(raw, origin)
    confirm = list(range(cfg.data.split.n_splits)) if spec.confirm.splits == "all" else list(spec.confirm.splits)
    bad = [i for i in confirm if not 0 <= i < cfg.data.split.n_splits]
    if bad:
        raise ConfigError(f"{origin}: confirm.splits {bad} out of range for n_splits={cfg.data.split.n_splits}")
    if cfg.train.select_on != "val" or cfg.data.split.val_fraction <= 0:
        raise ConfigError(f"{origin}: a search optimises the validation part: needs train.select_on val and data.split.val_fraction > 0")
    return SearchPlan(spec, source, cfg.to_dict(), distributions, defaults, int(max_epochs), confirm)


def config_for(plan: SearchPlan, params: dict[str, Any], split: int | None = None, name: str | None = None) -> dict[str, Any]:
    """The resolved config of one sampled point (decoded from Optuna's values)."""
    overrides = {k: decode_value(plan.spec.space[k], v) for k, v in params.items() if k in plan.spec.space}
    if split is not None:
        overrides["data.split.index"] = split
    if name is not None:
        overrides["name"] = name
    return build_config(apply_overrides(plan.base_config, overrides), plan.spec.name).to_dict()
