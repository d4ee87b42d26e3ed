"""The embedded benchmark: build determinism, labels (monotone, untied, spread), the adapter,
`drx data check embedded`, and the public distortion API."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from drx.cli import main
from drx.data import embedded as E
from drx.data.benchmarks import load_manifest
from drx.data.splits import persisted_splits
from drx.errors import DataError
from drx.paths import cache_dir


N_IMAGES = 84 * 9 * 4


@pytest.fixture(scope="session")
def built():
    """The session cache's full build (3,024 images), shared with every test that trains on it."""
    root = E.build_embedded()
    return cache_dir(), root


@pytest.fixture
def labels(built):
    return pd.read_csv(built[1] / "labels.csv")


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_layout_and_readme(built, labels):
    _, root = built
    assert root.name == "embedded-v2"
    assert list(labels.columns) == ["image_id", "path", "mos", "group", "family", "level"]
    assert len(labels) == E.expected_count() == N_IMAGES
    assert set(labels["group"]) == set(E.SCENES) and list(dict.fromkeys(labels["family"])) == list(E.FAMILIES)
    assert labels["image_id"].iloc[0] == f"{E.SCENES[0]}-motion-blurry-1"
    assert all((root / p).is_file() for p in labels["path"])
    readme = (root / "README.txt").read_text()
    assert "NOT HUMAN OPINION SCORES" in readme and "100 x SSIM" in readme


def test_rebuild_gives_identical_bytes(built, tmp_path):
    _, root = built
    again = E.build_embedded(tmp_path / "again", workers=1, scenes=("skimage-chelsea", "opencv-hen"))
    files = sorted((again / "images").iterdir())
    assert len(files) == 2 * 9 * 4
    for f in files:
        assert _sha(f) == _sha(root / "images" / f.name), f.name
    mine = pd.read_csv(again / "labels.csv").set_index("image_id")["mos"]
    full = pd.read_csv(root / "labels.csv").set_index("image_id")["mos"]
    assert (mine == full.loc[mine.index]).all()
    # A second call finds the complete build and does nothing.
    stamp = (again / "labels.csv").stat().st_mtime_ns
    E.build_embedded(tmp_path / "again", workers=1, scenes=("skimage-chelsea", "opencv-hen"))
    assert (again / "labels.csv").stat().st_mtime_ns == stamp


def test_labels_are_monotone_untied_and_spread(labels):
    assert labels["mos"].is_unique  # no ties
    assert labels["mos"].gt(0).all() and labels["mos"].lt(100).all()
    for (scene, family), g in labels.groupby(["group", "family"]):
        mos = g.sort_values("level")["mos"].to_numpy()
        assert (np.diff(mos) < 0).all(), f"{scene}/{family}: {mos}"
    med = labels.groupby(["family", "level"])["mos"].median().unstack()
    assert (med[1] - med[4] > 20).all(), med  # levels spread over a useful range per family
    assert labels["mos"].quantile(0.1) < 50 and labels["mos"].quantile(0.9) > 90


def test_adapter_builds_on_first_use_and_groups_split(built, monkeypatch):
    cache, root = built
    monkeypatch.setenv("DRX_CACHE", str(cache))
    m = load_manifest("embedded", None)
    assert len(m) == N_IMAGES and m.attrs["root"] == str(root) and m.attrs["mos_range"] == (0.0, 100.0)
    assert {"group", "family", "level"} <= set(m.columns)
    s = persisted_splits(m, seed=0, n_splits=10, cache=cache / "test-splits")
    g = dict(zip(m["image_id"], m["group"]))
    for split in s.splits:
        test_scenes = {g[i] for i in split.test}
        assert not {g[i] for i in split.train} & test_scenes and 15 <= len(test_scenes) <= 19  # 80/20 by scene
    assert json.loads(s.path.read_text())["embedded_version"] == 2


def test_a_split_file_of_the_v1_benchmark_is_refused_with_the_reason(built, tmp_path, monkeypatch):
    cache, _ = built
    monkeypatch.setenv("DRX_CACHE", str(cache))
    m = load_manifest("embedded", None)
    v1 = {"format": "drx-splits-v1", "benchmark": "embedded", "seed": 0, "n_splits": 3, "train_fraction": 0.8, "grouped": True,
          "fingerprint": "0" * 64, "n_images": 648, "splits": [{"index": 0, "train": ["astronaut-noisy-1"], "test": ["camera-noisy-1"]}]}
    old = tmp_path / "embedded-v1-splits.json"
    old.write_text(json.dumps(v1))
    with pytest.raises(DataError, match=r"embedded-v1-splits\.json: a split file of the embedded benchmark v1, but this drx builds v2 "
                                        r"\(other scenes and image ids.*not comparable.*delete the file, or give data\.split\.file"):
        persisted_splits(m, seed=0, n_splits=3, path=old)


def test_data_check_embedded_passes(built, monkeypatch, capsys):
    cache, _ = built
    monkeypatch.setenv("DRX_CACHE", str(cache))
    rc = main(["data", "check", "embedded", "--workers", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"{N_IMAGES} scored (the full benchmark has {N_IMAGES}); {N_IMAGES} readable" in out and "result      usable" in out
    assert "warnings" not in out and "unexpected" not in out and "probably damaged" not in out


def test_families_api():
    assert list(E.FAMILIES) == ["motion-blurry", "hazy", "jpeg-compressed", "low-light", "noisy", "rainy", "shadowed", "snowy", "blurry"]
    rng = np.random.default_rng(0)
    for shape in ((64, 64, 3), (70, 101, 3)):
        img = rng.random(shape, dtype=np.float32)
        for name, fam in E.FAMILIES.items():
            assert fam.prompt == name and fam.levels == 4
            out = fam.apply(img, 4, np.random.default_rng(1))
            assert out.shape == shape and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
            assert not np.array_equal(out, img)
            again = fam.apply(img, 4, np.random.default_rng(1))
            assert np.array_equal(out, again)  # all randomness comes from the rng


def test_families_reject_bad_input():
    fam = E.FAMILIES["noisy"]
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="both sides must be >= 64"):
        fam.apply(np.zeros((63, 80, 3), np.float32), 1, rng)
    with pytest.raises(DataError, match="expected a float image"):
        fam.apply(np.zeros((64, 64, 3), np.uint8), 1, rng)
    with pytest.raises(DataError, match="in \\[0, 1\\]"):
        fam.apply(np.full((64, 64, 3), 2.0, np.float32), 1, rng)
    with pytest.raises(DataError, match="level must be an integer in 1..4"):
        fam.apply(np.zeros((64, 64, 3), np.float32), 5, rng)
    with pytest.raises(DataError, match="HxWx3"):
        fam.apply(np.zeros((64, 64), np.float32), 1, rng)


def test_pristine_scenes(built):
    assert len(E.SCENES) == 84 and "skimage-motorcycle" in E.SCENES
    for gone in ("page", "text", "retina", "hubble_deep_field", "cell", "immunohistochemistry", "moon", "opencv-newspaper"):
        assert gone not in E.SCENES and f"skimage-{gone}" not in E.SCENES  # no page scans, micrographs or astronomy
    for scene in ("skimage-rocket", "opencv-hen", "piexif-large"):
        img = E.pristine(scene)
        assert img.dtype == np.uint8 and img.shape[2] == 3
        assert min(img.shape[:2]) == 256 and max(img.shape[:2]) <= 384
    with pytest.raises(DataError, match="unknown embedded scene 'horse'"):
        E.pristine("horse")


def test_build_self_check_rejects_ties_and_non_monotone_labels():
    row = {"group": "s", "family": "noisy", "path": "x"}
    ok = [{**row, "image_id": f"s-noisy-{k}", "level": k, "mos": 90.0 - 10 * k} for k in (1, 2, 3, 4)]
    E._self_check(ok)
    tied = [dict(r) for r in ok]
    tied[3]["group"], tied[3]["mos"] = "t", 80.0
    with pytest.raises(DataError, match="tied labels s-noisy-1 = s-noisy-4"):
        E._self_check(tied)
    flipped = [dict(r) for r in ok]
    flipped[2]["mos"] = 85.0
    with pytest.raises(DataError, match="s-noisy-3 scores 85.000, not below s-noisy-2"):
        E._self_check(flipped)


def test_build_embedded_command_reuses_a_complete_build(built, capsys):
    _, root = built
    stamp = (root / "labels.csv").stat().st_mtime_ns
    assert main(["data", "build-embedded", "--out", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"{N_IMAGES} images in {root}" in out and "not human opinion scores" in out
    assert (root / "labels.csv").stat().st_mtime_ns == stamp
