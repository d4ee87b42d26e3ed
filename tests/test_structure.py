"""The package's structure: renamed settings name their replacement, built-in weights are resolved
outside the model, packaged studies ship with a non-editable install, and `drx report` loads no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from drx.builtin import resolve
from drx.config import load_config
from drx.errors import ConfigError
from drx.model import build_model
from drx.search.grid import find_study, load_ablation

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("source", "overrides", "message"),
    [
        ("tiny", ["model.compat=reference"], "model.compat 'reference' was renamed 'authors'"),
        ({"base": "tiny", "train": {"protocol": "clean"}}, None, "train.protocol was renamed train.select_on: write `select_on: val`"),
        ({"base": "tiny", "train": {"protocol": "reference"}}, None, "write `select_on: test`"),
        ("tiny", ["train.protocol=reference"], "train.protocol was renamed train.select_on (clean -> val, reference -> test)"),
    ],
)
def test_an_old_setting_name_is_an_error_naming_its_replacement(source, overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(source, overrides)
    assert message in str(info.value)


def test_an_ablation_spec_with_the_old_reference_key_names_baseline(tmp_path):
    spec = {"name": "x", "base": "tiny", "benchmarks": ["embedded"], "reference": "full", "variants": {"full": {}}}
    with pytest.raises(ConfigError, match="the key 'reference' was renamed 'baseline': write `baseline: full`"):
        load_ablation(spec)


def test_build_model_refuses_a_builtin_name_and_resolve_keeps_the_config_it_was_given():
    cfg = load_config("tiny", ["model.variant=image_encoder"]).model
    with pytest.raises(ConfigError, match=r"drx\.builtin\.resolve"):
        build_model(cfg)
    # The image encoder variant needs no prior: resolving it builds and names only what it loads.
    no_pretrained = load_config("tiny", ["model.variant=image_encoder", "model.backbone.pretrained=null"]).model
    resolved = resolve(no_pretrained)
    assert resolved.prior.checkpoint == no_pretrained.prior.checkpoint == "builtin:tiny-daclip"
    assert resolved is not no_pretrained
    build_model(resolved)


def test_packaged_studies_are_found_by_name_or_by_their_packaged_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkout here: only the package's own files
    demo = find_study("demo", "ablation")
    assert demo.is_file() and demo.parent.name == "ablations"
    assert find_study("ablations/table4_modules.yaml", "ablation").name == "table4_modules.yaml"
    assert find_study("koniq", "search space").parent.name == "search_spaces"
    with pytest.raises(ConfigError, match="did you mean 'table4_modules'"):
        find_study("table4_module", "ablation")


def test_drx_report_loads_neither_torch_nor_ray(tmp_path):
    code = (
        "import sys; from drx.cli import build_parser; build_parser(['report', 'x']); "
        "import drx.report.html, drx.experiment; "
        "print(sorted(m for m in ('torch', 'ray', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_non_editable_install_runs_the_packaged_demo_study_from_an_empty_folder(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
                   check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("drx-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for member in ("drx/studies/ablations/demo.yaml", "drx/studies/search_spaces/koniq.yaml", "drx/presets/tiny.yaml",
                   "drx/report/templates/table.md.j2", "drx/report/templates/report.css", "drx/data/photos.tsv", "drx/data/archives.tsv"):
        assert member in names, member
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import drx, json; print(json.dumps(drx.__file__))"], cwd=empty, env=env,
                           capture_output=True, text=True, check=True)
    assert json.loads(where.stdout).startswith(str(site))  # the installed copy, not the checkout
    helped = subprocess.run([sys.executable, "-m", "drx.cli", "demo", "--help"], cwd=empty, env=env, capture_output=True, text=True)
    assert helped.returncode == 0 and "packaged 'demo' study" in " ".join(helped.stdout.split())  # argparse wraps lines
    dry = subprocess.run([sys.executable, "-m", "drx.cli", "ablate", "demo", "--dry-run"], cwd=empty, env=env, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "ablation demo: 4 variants x 1 benchmarks x 10 splits = 40 trials; baseline row: full" in dry.stdout
