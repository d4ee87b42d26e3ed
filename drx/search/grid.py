"""Ablation grids: an ablation YAML -> a validated plan of trials (no Ray here).

An ablation YAML names a base config, the benchmarks (or cross-dataset pairs), the split indices,
optional data fractions, and the variants as named sets of dotted overrides, one of them the
baseline row (the row every difference is computed against). Expansion is variants × benchmarks × splits (× fractions); every trial's config is
built and validated before anything runs, and errors name the variant and the key.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from drx.config import NOT_COMPUTED, apply_overrides, build_config, deep_merge, load_raw, resolve_source, without_tracking
from drx.data.benchmarks import BENCHMARKS, REAL_BENCHMARKS
from drx.errors import ConfigError
from drx.schema import StrictModel, validation_message

#: Keys renamed since earlier versions: old key -> new key (an old key is an error naming the new one).
RENAMED_SPEC_KEYS = {"reference": "baseline"}


def refuse_renamed_keys(data: Any, renamed: dict[str, str]) -> Any:
    """A ``mode="before"`` check: a key that was renamed raises a ValueError naming its replacement."""
    if isinstance(data, dict):
        for old, new in renamed.items():
            if old in data:
                raise ValueError(f"the key {old!r} was renamed {new!r}: write `{new}: {data[old]}`")
    return data


class ResourceSpec(StrictModel):
    cpu: float | None = Field(None, gt=0)
    gpu: float | None = Field(None, ge=0)


class BenchmarkSpec(StrictModel):
    """One table column: a benchmark, or a cross-dataset pair (train on ``name``, test on ``test``)."""

    name: str
    root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    test: str | None = None
    test_root: str | None = None
    test_options: dict[str, Any] = Field(default_factory=dict)
    # Train on all images of `name` (paper's Table 2), or on the training part of each split.
    cross_train: str = "all"
    # Base config for this benchmark (default: the spec's base); "{benchmark}" is replaced.
    base: str | None = None

    @field_validator("name", "test")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None and v not in BENCHMARKS:
            close = difflib.get_close_matches(v, BENCHMARKS, n=1)
            raise ValueError(f"unknown benchmark {v!r}" + (f"; did you mean {close[0]!r}?" if close else f"; expected one of {list(BENCHMARKS)}"))
        return v

    @property
    def key(self) -> str:
        return self.name if self.test is None else f"{self.name}->{self.test}"


class AblationSpec(StrictModel):
    name: str
    description: str = ""
    base: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    benchmarks: list[BenchmarkSpec]
    splits: list[int] | str = "all"
    fractions: list[float] | None = None
    # The row every difference (delta) is computed against.
    baseline: str
    variants: dict[str, dict[str, Any]]
    # What each trial reserves (default: the config's `resources`); per variant if a `full`
    # trial needs more than a `prior_only` one.
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    variant_resources: dict[str, ResourceSpec] = Field(default_factory=dict)
    # The key swept by the variants, for sweep plots (e.g. model.dsdm.lambda_init).
    sweep_key: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return refuse_renamed_keys(data, RENAMED_SPEC_KEYS)

    @field_validator("benchmarks", mode="before")
    @classmethod
    def _shorthand(cls, items: Any) -> Any:
        if not isinstance(items, list) or not items:
            raise ValueError("needs a non-empty list of benchmarks (names, or {name, root, ...} mappings)")
        out = []
        for it in items:
            if isinstance(it, str):
                out.append({"name": it})
            elif isinstance(it, dict) and "train" in it:
                it = dict(it)
                it["name"] = it.pop("train")
                out.append(it)
            else:
                out.append(it)
        return out

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(not 0 < f <= 1 for f in v)):
            raise ValueError(f"fractions must be a non-empty list of numbers in (0, 1], got {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "AblationSpec":
        if not self.variants:
            raise ValueError("needs at least one variant")
        if self.baseline not in self.variants:
            raise ValueError(f"baseline {self.baseline!r} is not one of the variants {list(self.variants)}")
        for v in self.variant_resources:
            if v not in self.variants:
                raise ValueError(f"variant_resources names {v!r}, which is not a variant ({list(self.variants)})")
        keys = [b.key for b in self.benchmarks]
        if len(set(keys)) != len(keys):
            raise ValueError(f"benchmarks repeat: {keys}")
        if isinstance(self.splits, str) and self.splits != "all":
            raise ValueError(f"splits must be a list of split indices or 'all', got {self.splits!r}")
        return self


@dataclass
class PlannedTrial:
    """One trial of the grid: its coordinates, name, resolved config and resources."""

    name: str
    variant: str
    benchmark: str  # table column key: "koniq" or "livefb->koniq"
    split: int
    fraction: float
    config: dict[str, Any]
    cpu: float
    gpu: float

    @property
    def key(self) -> str:
        return trial_key(self.variant, self.benchmark, self.split, self.fraction)


def trial_key(variant: str, benchmark: str, split: int, fraction: float) -> str:
    return f"{variant}|{benchmark}|{int(split)}|{float(fraction):g}"


@dataclass
class AblationPlan:
    spec: AblationSpec
    source: Path | None
    trials: list[PlannedTrial]
    split_indices: list[int]
    fractions: list[float]
    # benchmark key -> (train benchmark, manifest settings) for making splits before trials start
    split_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def variants(self) -> list[str]:
        return list(self.spec.variants)

    @property
    def benchmarks(self) -> list[str]:
        return [b.key for b in self.spec.benchmarks]

    def fingerprint(self) -> str:
        """Identifies what the grid computes: a rerun with another spec must not resume this one (the
        ``tracking`` section is left out: turning a tracker on resumes the same experiment)."""
        text = json.dumps([(t.key, without_tracking(t.config)) for t in self.trials], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------- loading


#: The studies drx ships (package data): ablation grids and search spaces, by file stem.
STUDY_DIRS = {"ablation": "ablations", "search space": "search_spaces"}


def packaged_studies(kind: str) -> dict[str, Path]:
    """Name -> file of every packaged study of `kind` (``ablation`` or ``search space``)."""
    folder = resources.files("drx.studies").joinpath(STUDY_DIRS[kind])
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir() if str(f).endswith(".yaml")}


def find_study(name: str | Path, kind: str) -> Path:
    """A study file as given, else the packaged study of that name (``demo``, ``table4_modules``,
    or its packaged path ``ablations/demo.yaml``). Raises ConfigError naming the packaged ones."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    studies = packaged_studies(kind)
    stem = p.stem if p.suffix == ".yaml" else p.name
    if stem in studies and (len(p.parts) == 1 or p.parent.name == STUDY_DIRS[kind]):
        return studies[stem]
    close = difflib.get_close_matches(stem, list(studies), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{kind} file {str(name)!r} does not exist and is not a packaged study{hint} (packaged: {', '.join(sorted(studies))})")


def read_spec_file(path: str | Path, kind: str) -> dict[str, Any]:
    """The YAML mapping of a study file (``yaml.safe_load``); errors name the file."""
    p = find_study(path, kind)
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


def spec_error(exc: ValidationError, root: type[BaseModel], origin: str, what: str) -> ConfigError:
    """A ConfigError listing every validation error of an ablation or search spec."""
    return ConfigError(validation_message(exc, root, what, origin))


def expand_env(text: str | None) -> str | None:
    """``$DRX_DATA`` / ``${DRX_DATA}`` (default ``data``) and other environment variables in paths."""
    if text is None:
        return None
    env = {"DRX_DATA": os.environ.get("DRX_DATA", "data"), **os.environ}
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), m.group(0)), text)


def _base_for(spec: AblationSpec, bench: BenchmarkSpec, source: Path | None) -> dict[str, Any]:
    base = (bench.base or spec.base).replace("{benchmark}", bench.name)
    path = resolve_source(base, relative_to=source.parent if source else None)
    return load_raw(path)


def load_ablation(path_or_dict: str | Path | dict[str, Any], set_overrides: list[str] | None = None) -> AblationPlan:
    """Read and validate an ablation YAML and build every trial's config (errors name variant and key)."""
    source = None
    if isinstance(path_or_dict, dict):
        data = dict(path_or_dict)
        origin = "mapping"
    else:
        source = find_study(path_or_dict, "ablation").resolve()
        data = read_spec_file(source, "ablation")
        origin = str(path_or_dict)
    try:
        spec = AblationSpec.model_validate(data)
    except ValidationError as exc:
        raise spec_error(exc, AblationSpec, origin, "ablation") from None

    trials: list[PlannedTrial] = []
    fractions = spec.fractions or [1.0]
    split_jobs: dict[str, dict[str, Any]] = {}
    split_indices: list[int] | None = None
    for bench in spec.benchmarks:
        try:
            raw_base = _base_for(spec, bench, source)
        except ConfigError as exc:
            raise ConfigError(f"{origin}: benchmark {bench.key}: {exc}") from None
        bench_data: dict[str, Any] = {"benchmark": bench.name}
        root = expand_env(bench.root) if bench.root else (expand_env(f"$DRX_DATA/{bench.name}") if bench.name in REAL_BENCHMARKS else None)
        if root is not None:
            bench_data["root"] = root
        if bench.options:
            bench_data["options"] = bench.options
        if bench.test is not None:
            bench_data["test_benchmark"] = bench.test
            test_root = expand_env(bench.test_root) if bench.test_root else (expand_env(f"$DRX_DATA/{bench.test}") if bench.test in REAL_BENCHMARKS else None)
            if test_root is not None:
                bench_data["test_root"] = test_root
            if bench.test_options:
                bench_data["test_options"] = bench.test_options
            bench_data["cross_train"] = bench.cross_train
        common = deep_merge(raw_base, {"data": bench_data})
        common = apply_overrides(common, dict(spec.overrides))
        if set_overrides:
            common = apply_overrides(common, set_overrides)
        n_splits = int(build_config(common, origin).data.split.n_splits)
        indices = list(range(n_splits)) if spec.splits == "all" else list(spec.splits)
        bad = [i for i in indices if not 0 <= i < n_splits]
        if bad:
            raise ConfigError(f"{origin}: splits {bad} are out of range for n_splits={n_splits} (benchmark {bench.key})")
        if split_indices is None:
            split_indices = indices
        cross_all = bench.test is not None and bench.cross_train == "all"
        for variant, overrides in spec.variants.items():
            if not isinstance(overrides, dict):
                raise ConfigError(f"{origin}: variant {variant!r}: expected a mapping of dotted overrides, got {overrides!r}")
            refuse_study_wide(overrides, f"{origin}: variant {variant!r}", "a variant")
            try:
                vcfg = apply_overrides(common, overrides)
            except ConfigError as exc:
                raise ConfigError(f"{origin}: variant {variant!r}: {exc}") from None
            for split in indices:
                for fraction in fractions:
                    point: dict[str, Any] = {
                        "data.split.index": split,
                        "data.split.fraction": fraction,
                        "name": f"{spec.name}/{_trial_name(variant, bench.key, split, fraction, fractions)}",
                    }
                    if cross_all:
                        # Trained on every image of the source benchmark: the "split" index is a
                        # repeat with its own training seed (paired across variants as usual).
                        point["train.seed"] = int(build_config(vcfg, origin).train.seed) + split
                    cfg = apply_overrides(vcfg, point)
                    try:
                        validated = build_config(cfg, f"{origin}, variant {variant!r}, benchmark {bench.key}")
                    except ConfigError as exc:
                        raise ConfigError(f"variant {variant!r}: {exc}") from None
                    res = spec.variant_resources.get(variant, ResourceSpec())
                    cpu = res.cpu or spec.resources.cpu or validated.resources.cpu
                    gpu = res.gpu if res.gpu is not None else (spec.resources.gpu if spec.resources.gpu is not None else validated.resources.gpu)
                    validated.resources.cpu, validated.resources.gpu = cpu, gpu
                    trials.append(
                        PlannedTrial(
                            name=_trial_name(variant, bench.key, split, fraction, fractions),
                            variant=variant,
                            benchmark=bench.key,
                            split=split,
                            fraction=fraction,
                            config=validated.to_dict(),
                            cpu=float(cpu),
                            gpu=float(gpu),
                        )
                    )
        c = build_config(common, origin)
        split_jobs[bench.key] = {
            "benchmark": bench.name,
            "root": c.data.root,
            "options": c.data.options,
            "seed": c.data.split.seed,
            "n_splits": c.data.split.n_splits,
            "train_fraction": c.data.split.train_fraction,
            # An official split comes with the labels (or its own file): no random split file is made.
            "needs_split": (bench.test is None or bench.cross_train == "split") and c.data.split.protocol == "random",
            "test_benchmark": bench.test,
            "test_root": c.data.test_root,
            "test_options": c.data.test_options,
        }
    return AblationPlan(spec, source, trials, split_indices or [], fractions, split_jobs)


def refuse_study_wide(keys: Any, where: str, what: str) -> None:
    """Refuse keys of the config sections that are the study's, not a trial's (``tracking``: every
    trial of a study logs to the same place), set per variant or searched."""
    for key in keys:
        if str(key).split(".", 1)[0] in NOT_COMPUTED:
            raise ConfigError(f"{where}: {key!r} cannot be set by {what}: every trial of a study logs to the same trackers; "
                              "set it in the base config, under `overrides`, or with --track / --set")


def _trial_name(variant: str, bench: str, split: int, fraction: float, fractions: list[float]) -> str:
    name = f"{variant}-{bench.replace('->', '_to_')}-s{split}"
    if len(fractions) > 1 or fractions[0] != 1.0:
        name += f"-f{int(round(fraction * 100))}"
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", name)


def describe_plan(plan: AblationPlan) -> str:
    """The trials a run would start (``drx ablate --dry-run``)."""
    lines = [
        f"ablation {plan.spec.name}: {len(plan.variants)} variants x {len(plan.benchmarks)} benchmarks x "
        f"{len(plan.split_indices)} splits" + (f" x {len(plan.fractions)} fractions" if len(plan.fractions) > 1 else "")
        + f" = {len(plan.trials)} trials; baseline row: {plan.spec.baseline}",
    ]
    for bench, job in plan.split_jobs.items():
        root = job["root"]
        where = f"root {root}" + ("" if root is None or Path(root).exists() else " (does not exist yet)")
        lines.append(f"  benchmark {bench}: {where}")
    for t in plan.trials:
        lines.append(f"  {t.name:<48} cpu {t.cpu:g} gpu {t.gpu:g}")
    return "\n".join(lines)
