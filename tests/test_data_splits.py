"""Persisted splits: determinism, disjointness, grouping, nested fractions, pairing, mismatches."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from drx.data import splits as S
from drx.errors import DataError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DRX_CACHE", str(tmp_path / "cache"))


def manifest(n: int = 100, groups: int | None = None, benchmark: str = "csv") -> pd.DataFrame:
    m = pd.DataFrame({"image_id": [f"img{k:03d}" for k in range(n)], "path": [f"/x/{k}.png" for k in range(n)], "mos": np.linspace(0, 1, n)})
    if groups:
        m["group"] = [f"g{k % groups}" for k in range(n)]
    m.attrs["benchmark"] = benchmark
    return m


def test_default_path_and_file_contents(tmp_path):
    m = manifest()
    s = S.persisted_splits(m, seed=3, n_splits=4, train_fraction=0.8)
    fp = S.manifest_fingerprint(m["image_id"])
    assert s.path == tmp_path / "cache" / "splits" / f"csv-{fp[:8]}-s3-n4-t0.8.json"
    assert s.path == S.default_split_path("csv", fp, 3, 4, 0.8)
    data = json.loads(s.path.read_text())
    assert (data["benchmark"], data["seed"], data["n_splits"], data["train_fraction"], data["grouped"]) == ("csv", 3, 4, 0.8, False)
    assert data["fingerprint"] == fp and len(data["splits"]) == 4


def test_deterministic_disjoint_and_covering(tmp_path):
    m = manifest(101)
    a = S.persisted_splits(m, seed=7, path=tmp_path / "a.json")
    b = S.persisted_splits(m.sample(frac=1, random_state=1), seed=7, path=tmp_path / "b.json")  # row order is irrelevant
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    c = S.persisted_splits(m, seed=8, path=tmp_path / "c.json")
    assert a[0].train != c[0].train
    assert len({a[k].test for k in range(10)}) == 10  # the ten splits differ
    for k in range(10):
        tr, te = set(a[k].train), set(a[k].test)
        assert not tr & te and tr | te == set(m["image_id"]) and len(tr) == round(0.8 * 101)
        assert a[k] == b[k]


def test_reused_not_regenerated_and_pairing_across_loads(tmp_path):
    m = manifest()
    first = S.persisted_splits(m, seed=0)
    mtime = first.path.stat().st_mtime_ns
    second = S.persisted_splits(m, seed=0)
    assert second.path == first.path and first.path.stat().st_mtime_ns == mtime
    for k in range(10):
        assert S.split_parts(first, k) == S.split_parts(second, k)


def test_grouped_splits_keep_groups_together(tmp_path):
    m = manifest(120, groups=12)
    s = S.persisted_splits(m, seed=1)
    assert s.grouped
    g = dict(zip(m["image_id"], m["group"]))
    for k in range(10):
        assert not {g[i] for i in s[k].train} & {g[i] for i in s[k].test}
        assert 0.7 <= len(s[k].train) / 120 <= 0.9  # approximate, by groups
        parts = S.split_parts(s, k, val_fraction=0.2)
        assert not {g[i] for i in parts.val_ids} & {g[i] for i in parts.train_ids}


def test_val_carve_out_and_nested_fractions():
    s = S.persisted_splits(manifest(200), seed=2)
    full = S.split_parts(s, 3, val_fraction=0.1, fraction=1.0, seed=5)
    assert len(full.val_ids) == 16 and set(full.val_ids) < set(s[3].train)
    assert set(full.test_ids) == set(s[3].test) and not set(full.test_ids) & (set(full.train_ids) | set(full.val_ids))
    assert set(full.train_ids) | set(full.val_ids) == set(s[3].train)
    prev: set[str] = set()
    for frac in (0.2, 0.4, 0.6, 0.8, 1.0):
        p = S.split_parts(s, 3, val_fraction=0.1, fraction=frac, seed=5)
        assert p.val_ids == full.val_ids and p.test_ids == full.test_ids
        assert prev <= set(p.train_ids) and len(p.train_ids) == round(frac * 144)
        prev = set(p.train_ids)
    other = S.split_parts(s, 4, val_fraction=0.1, seed=5)
    assert other.val_ids != full.val_ids
    assert S.split_parts(s, 3, val_fraction=0.0).val_ids == ()


def test_grouped_fractions_are_nested():
    s = S.persisted_splits(manifest(150, groups=30), seed=0)
    sizes, prev = [], set()
    for frac in (0.2, 0.5, 1.0):
        t = set(S.split_parts(s, 0, fraction=frac).train_ids)
        assert prev <= t
        prev = t
        sizes.append(len(t))
    assert sizes[0] < sizes[1] < sizes[2]


def test_mismatched_file_is_an_error_naming_file_and_ids(tmp_path):
    path = tmp_path / "s.json"
    m = manifest(50)
    S.persisted_splits(m, seed=0, path=path)
    bigger = pd.concat([m, manifest(52).iloc[50:]], ignore_index=True)
    with pytest.raises(DataError, match=r"s.json: 2 manifest image id\(s\) are absent from split 0: 'img050', 'img051'"):
        S.persisted_splits(bigger, seed=0, path=path)
    with pytest.raises(DataError, match=r"s.json: split 0 names 1 image id\(s\) that are not in the manifest: 'img049'"):
        S.persisted_splits(m.iloc[:49], seed=0, path=path)
    with pytest.raises(DataError, match=r"s.json: split file has seed=0 but seed=1 was asked"):
        S.persisted_splits(m, seed=1, path=path)
    with pytest.raises(DataError, match=r"n_splits=10 but n_splits=5"):
        S.persisted_splits(m, seed=0, n_splits=5, path=path)
    with pytest.raises(DataError, match=r"train_fraction=0.8 but train_fraction=0.7"):
        S.persisted_splits(m, seed=0, train_fraction=0.7, path=path)
    with pytest.raises(DataError, match=r"grouped=False but grouped=True"):
        S.persisted_splits(manifest(50, groups=5), seed=0, path=path)
    path.write_text("{broken")
    with pytest.raises(DataError, match="s.json: not a valid split file"):
        S.persisted_splits(m, seed=0, path=path)


def test_bad_manifests():
    m = manifest(5)
    with pytest.raises(DataError, match="duplicate image ids: 'img000'"):
        S.persisted_splits(pd.concat([m, m.iloc[:1]]), seed=0)
    with pytest.raises(DataError, match="cannot split 1 images"):
        S.persisted_splits(manifest(1), seed=0)
    with pytest.raises(DataError, match="cannot split 1 groups"):
        S.persisted_splits(manifest(4, groups=1), seed=0)
    with pytest.raises(DataError, match="split index 10 is out of range"):
        S.split_parts(S.persisted_splits(manifest(20), seed=0), 10)


def test_cross_dataset_parts():
    a, b = manifest(60, groups=6, benchmark="koniq"), manifest(30, benchmark="livec")
    b["image_id"] = "b-" + b["image_id"]
    p = S.cross_dataset_parts(a, b, val_fraction=0.2, seed=1)
    assert set(p.train_ids) | set(p.val_ids) == set(a["image_id"]) and not set(p.train_ids) & set(p.val_ids)
    assert set(p.test_ids) == set(b["image_id"])
    g = dict(zip(a["image_id"], a["group"]))
    assert not {g[i] for i in p.val_ids} & {g[i] for i in p.train_ids}
    s = S.persisted_splits(a, seed=0)
    q = S.cross_dataset_parts(a, b, s, 2, val_fraction=0.2, seed=1)
    assert set(q.train_ids) | set(q.val_ids) == set(s[2].train) and set(q.test_ids) == set(b["image_id"])
    with pytest.raises(DataError, match="without a split index"):
        S.cross_dataset_parts(a, b, s, None)


def test_select_keeps_order_and_names_unknown_ids():
    m = manifest(10)
    out = S.select(m, ["img005", "img001"])
    assert list(out["image_id"]) == ["img005", "img001"] and list(out.index) == [0, 1]
    assert out.attrs["benchmark"] == "csv"
    with pytest.raises(DataError, match="1 image id\\(s\\) are not in the manifest: 'nope'"):
        S.select(m, ["img001", "nope"])
