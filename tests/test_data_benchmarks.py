"""Benchmark adapters on fixture trees in each official format: happy paths and every bad input."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest

from data_fixtures import make_bid, make_csv, make_koniq, make_livec, make_livefb, make_spaq, write_csv
from drx.data import benchmarks as B
from drx.errors import DataError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DRX_CACHE", str(tmp_path / "cache"))


# --------------------------------------------------------------------------------- registry


def test_registry_and_unknown_name_suggests():
    assert set(B.ADAPTERS) == {"koniq", "livec", "spaq", "livefb", "bid", "csv", "embedded"}
    with pytest.raises(DataError, match=r"unknown benchmark 'konik'.*did you mean 'koniq'"):
        B.get_adapter("konik")
    counts = {n: a.expected_count for n, a in B.ADAPTERS.items()}
    assert counts == {"koniq": 10073, "livec": 1162, "spaq": 11125, "livefb": 39810, "bid": 586, "csv": None, "embedded": 3024}
    assert B.authors_resize("koniq") == (512, 384) and B.authors_resize("bid") == (512, 512)
    assert B.authors_resize("livec") is None


def test_unknown_option_suggests(tmp_path):
    make_koniq(tmp_path)
    with pytest.raises(DataError, match=r"no option 'score_colum'.*did you mean 'score_column'"):
        B.load_manifest("koniq", tmp_path, {"score_colum": "MOS"})


# ------------------------------------------------------------------------------- happy paths


def test_koniq_reads_the_csv_not_the_folder(tmp_path):
    b = make_koniq(tmp_path, n=4, unscored=2)
    m = B.load_manifest("koniq", tmp_path)
    assert list(m["image_id"]) == b.ids  # unscored images in 1024x768/ are not in the manifest
    assert list(m["mos"]) == pytest.approx(b.mos)
    assert all(os.path.isabs(p) and Path(p).parent.name == "1024x768" for p in m["path"])
    assert "std" not in m.columns  # SD is on the 1-5 scale, not MOS_zscore's
    assert m.attrs["mos_range"] == (0.0, 100.0) and m.attrs["benchmark"] == "koniq"
    assert B.get_adapter("koniq").mos_range({"score_column": "MOS"}) == (1.0, 5.0)


def test_koniq_mos_scale_and_resolution_options(tmp_path):
    make_koniq(tmp_path, n=3, resolution="512x384")
    m = B.load_manifest("koniq", tmp_path, {"score_column": "MOS", "resolution": "512x384"})
    assert m["mos"].between(1, 5).all() and "std" in m.columns
    assert m.attrs["mos_range"] == (1.0, 5.0)
    with pytest.raises(DataError, match="resolution='800x600'"):
        B.load_manifest("koniq", tmp_path, {"resolution": "800x600"})
    with pytest.raises(DataError, match="score_column='MOS_zscor'.*did you mean 'MOS_zscore'"):
        B.load_manifest("koniq", tmp_path, {"score_column": "MOS_zscor"})


def test_livec_drops_the_seven_training_images(tmp_path):
    b = make_livec(tmp_path, n=5)
    m = B.load_manifest("livec", tmp_path)
    assert len(m) == 5
    assert m["image_id"].iloc[0] == b.ids[0]  # entry 8 (index 7) is the first one kept
    assert not m["image_id"].str.startswith("t").any()
    assert not np.isin(m["mos"], b.extra["train_mos"]).any()
    assert list(m["mos"]) == pytest.approx(b.mos)
    assert list(m["std"]) == pytest.approx([17.0 + k for k in range(5)])  # std aligned after the offset
    assert {Path(p).suffix for p in m["path"]} == {".bmp", ".JPG"}


def test_livec_warns_when_the_first_entries_are_not_training_images(tmp_path, caplog):
    from scipy.io import savemat

    make_livec(tmp_path, n=3)
    names = np.empty((10, 1), dtype=object)
    for k in range(10):
        names[k, 0] = f"{k}.bmp"  # not t*: the file was probably trimmed already
    savemat(tmp_path / "Data" / "AllImages_release.mat", {"AllImages_release": names})
    with pytest.raises(DataError):  # 7.bmp.. do not exist; the point is the warning first
        with caplog.at_level(logging.WARNING, logger="drx.data"):
            B.load_manifest("livec", tmp_path)
    assert "do not look like training images" in caplog.text and "entry 1 ('0.bmp')" in caplog.text


def test_livec_mismatched_lengths_and_missing_variable(tmp_path):
    from scipy.io import savemat

    make_livec(tmp_path, n=3)
    savemat(tmp_path / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.array([[1.0, 2.0]])})
    with pytest.raises(DataError, match=r"AllMOS_release.mat holds 2 MOS values but .*AllImages_release.mat names 10"):
        B.load_manifest("livec", tmp_path)
    savemat(tmp_path / "Data" / "AllMOS_release.mat", {"AllMOS": np.array([[1.0, 2.0]])})
    with pytest.raises(DataError, match=r"variable 'AllMOS_release' not found.*variables: AllMOS"):
        B.load_manifest("livec", tmp_path)


def test_spaq(tmp_path):
    b = make_spaq(tmp_path, n=4)
    m = B.load_manifest("spaq", tmp_path)
    assert list(m["image_id"]) == b.ids and list(m["mos"]) == pytest.approx(b.mos)
    assert all(Path(p).parent.name == "TestImage" for p in m["path"])


@pytest.mark.parametrize("in_database", [False, True])
def test_livefb_label_location_and_subfolders(tmp_path, in_database):
    b = make_livefb(tmp_path, n=5, in_database=in_database, patches=2)
    m = B.load_manifest("livefb", tmp_path)
    assert list(m["image_id"]) == b.ids
    assert m["path"].str.contains(os.sep + "database" + os.sep + "blur_dataset" + os.sep).any()
    assert m["mos"].min() >= 0


def test_livefb_patch_rows_are_an_error_naming_the_rows(tmp_path):
    make_livefb(tmp_path, n=3, names=["voc_emotic_ava/a.jpg", "patches/a_patch_1.jpg", "voc_emotic_ava/b_patch_2.jpg"])
    with pytest.raises(DataError) as e:
        B.load_manifest("livefb", tmp_path)
    msg = str(e.value)
    assert "labels_image.csv" in msg and "2 row(s) are patches" in msg
    assert "row 3 ('patches/a_patch_1.jpg')" in msg and "row 4 ('voc_emotic_ava/b_patch_2.jpg')" in msg


def test_livefb_pyiqa_meta_file_gets_a_hint(tmp_path):
    write_csv(tmp_path / "labels_image.csv", ["img_name/patch_name", "mos", "split"], [["a.jpg", 50, "train"]])
    with pytest.raises(DataError, match=r"holds pyiqa's meta_info_FLIVEDataset.csv"):
        B.load_manifest("livefb", tmp_path)


def test_bid_xlsx_plan1_grades_std_and_missing_numbers(tmp_path):
    b = make_bid(tmp_path, numbers=[1, 3, 4, 5, 347])
    m = B.load_manifest("bid", tmp_path)
    assert list(m["image_id"]) == ["DatabaseImage0001", "DatabaseImage0003", "DatabaseImage0004", "DatabaseImage0005", "DatabaseImage0347"]
    assert all(p.endswith(".JPG") for p in m["path"])
    assert list(m["mos"]) == pytest.approx(b.mos)
    assert m.attrs["mos_range"] == (0.0, 5.0)
    assert m["std"].iloc[1] == pytest.approx(np.std([b.mos[1] - 0.5, b.mos[1], b.mos[1] + 0.5], ddof=1), abs=0.02)


def test_bid_image_subfolder_lower_case_and_other_sheet(tmp_path):
    make_bid(tmp_path, numbers=[1, 3], subfolder=True, lower_case=True, sheet="Grades")
    m = B.load_manifest("bid", tmp_path)
    assert all(Path(p).parent.name == "ImageDatabase" and p.endswith(".jpg") for p in m["path"])


def test_bid_falls_back_to_columns_1_and_2_with_a_warning(tmp_path, caplog):
    b = make_bid(tmp_path, numbers=[1, 3], headers=("Imagem", "Nota media"))
    with caplog.at_level(logging.WARNING, logger="drx.data"):
        m = B.load_manifest("bid", tmp_path)
    assert list(m["mos"]) == pytest.approx(b.mos)
    assert "reading column 1 ('Imagem') as the image number" in caplog.text


def test_bid_bad_image_numbers(tmp_path):
    make_bid(tmp_path, numbers=[1, "x", 2.5])
    with pytest.raises(DataError) as e:
        B.load_manifest("bid", tmp_path)
    assert "DatabaseGrades.xlsx" in str(e.value) and "row 3 ('x')" in str(e.value)


def test_bid_xls_missing_both_files(tmp_path):
    with pytest.raises(DataError, match=r"DatabaseGrades.xlsx: BID grade sheet \(also looked for DatabaseGrades.xls\) not found"):
        B.load_manifest("bid", tmp_path)


def test_csv_relative_paths_groups_ids_and_range(tmp_path):
    b = make_csv(tmp_path / "mine", n=6, groups=3)
    m = B.load_manifest("csv", tmp_path / "mine")
    assert list(m["image_id"]) == b.ids
    assert all(Path(p) == (tmp_path / "mine" / i).absolute() for p, i in zip(m["path"], m["image_id"]))
    assert set(m["group"]) == {"scene0", "scene1", "scene2"}
    # No mos_range option: the observed min/max.
    assert m.attrs["mos_range"] == (min(b.mos), max(b.mos))
    m2 = B.load_manifest("csv", None, {"file": str(b.label_file), "mos_range": [0, 10], "group_column": "group"})
    assert m2.attrs["mos_range"] == (0.0, 10.0)
    with pytest.raises(DataError, match=r"mos_range=\[5, 1\]"):
        B.load_manifest("csv", tmp_path / "mine", {"mos_range": [5, 1]})
    with pytest.raises(DataError, match="needs data.root"):
        B.load_manifest("csv", None)


def test_csv_custom_columns_and_absolute_paths(tmp_path):
    b = make_csv(tmp_path, n=3, groups=None, absolute=True)
    rows = [[f"id{k}", str(p), 1.0 + k, 0.1] for k, p in enumerate(b.images.values())]
    write_csv(tmp_path / "other.csv", ["key", "file", "score", "sd"], rows)
    opts = {"file": "other.csv", "path_column": "file", "score_column": "score", "id_column": "key", "std_column": "sd"}
    m = B.load_manifest("csv", tmp_path, opts)
    assert list(m["image_id"]) == ["id0", "id1", "id2"] and list(m["std"]) == [0.1] * 3
    with pytest.raises(DataError, match=r"other.csv: missing column 'scores'.*did you mean 'score'"):
        B.load_manifest("csv", tmp_path, {**opts, "score_column": "scores"})


# ---------------------------------------------------------------------------------- bad inputs


def test_missing_root_and_root_is_a_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere: benchmark root for 'koniq' does not exist"):
        B.load_manifest("koniq", tmp_path / "nothere")
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="must be a folder"):
        B.load_manifest("spaq", tmp_path / "f")
    with pytest.raises(DataError, match=r"'livec' needs its folder: set data.root"):
        B.load_manifest("livec", None)


@pytest.mark.parametrize(
    "bench,build,label",
    [
        ("koniq", make_koniq, "koniq10k_scores_and_distributions.csv"),
        ("livec", make_livec, "Data/AllImages_release.mat"),
        ("spaq", make_spaq, "Annotations/MOS and Image attribute scores.xlsx"),
        ("livefb", make_livefb, "labels_image.csv"),
        ("bid", make_bid, "DatabaseGrades.xlsx"),
        ("csv", make_csv, "labels.csv"),
    ],
)
def test_missing_label_file_names_it(tmp_path, bench, build, label):
    build(tmp_path)
    (tmp_path / label).unlink()
    with pytest.raises(DataError) as e:
        B.load_manifest(bench, tmp_path)
    assert str(tmp_path / label) in str(e.value) and "not found" in str(e.value)


def test_renamed_column_is_named_with_a_suggestion(tmp_path):
    make_koniq(tmp_path, columns=["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscor"])
    with pytest.raises(DataError) as e:
        B.load_manifest("koniq", tmp_path)
    msg = str(e.value)
    assert "koniq10k_scores_and_distributions.csv: missing column 'MOS_zscore'" in msg and "did you mean 'MOS_zscor'" in msg
    make_spaq(tmp_path / "s", columns=("Image", "MOS"))
    with pytest.raises(DataError, match=r"MOS and Image attribute scores.xlsx: missing column 'Image name'"):
        B.load_manifest("spaq", tmp_path / "s")


@pytest.mark.parametrize(
    "bench,build,row",
    [
        ("koniq", make_koniq, "row 3"),
        ("spaq", make_spaq, "row 3"),
        ("livefb", make_livefb, "row 3"),
        ("bid", make_bid, "row 3"),
        ("csv", make_csv, "row 3"),
        ("livec", make_livec, "entry 9"),
    ],
)
def test_nan_mos_names_file_and_row(tmp_path, bench, build, row):
    mos = [50.0, float("nan"), 60.0, 70.0] if bench != "bid" else [1.0, float("nan"), 2.0, 3.0]
    b = build(tmp_path, mos=mos) if bench != "csv" else build(tmp_path, n=4, mos=mos)
    with pytest.raises(DataError) as e:
        B.load_manifest(bench, tmp_path)
    msg = str(e.value)
    assert str(b.label_file) in msg and "MOS is missing or not finite in 1 row(s)" in msg
    assert f"{row} ({b.ids[1]!r})" in msg


@pytest.mark.parametrize(
    "bench,build,bad",
    [("koniq", make_koniq, 120.0), ("spaq", make_spaq, -3.0), ("livefb", make_livefb, 101.0), ("bid", make_bid, 7.5), ("livec", make_livec, 150.0)],
)
def test_out_of_range_mos_names_row_and_value(tmp_path, bench, build, bad):
    mos = [1.0, 2.0, bad, 3.0]
    b = build(tmp_path, mos=mos)
    with pytest.raises(DataError) as e:
        B.load_manifest(bench, tmp_path)
    msg = str(e.value)
    assert str(b.label_file) in msg and "outside the nominal range" in msg and f"{b.ids[2]!r}: {bad:g}" in msg


def test_koniq_1_to_5_scale_read_as_zscore_is_flagged_with_a_hint(tmp_path):
    make_koniq(tmp_path, mos=[-1.0, 2.0, 3.0])
    with pytest.raises(DataError, match="score_column=MOS reads the 1-5 scale"):
        B.load_manifest("koniq", tmp_path)


def test_non_numeric_mos_names_row_and_value(tmp_path):
    make_livefb(tmp_path, mos=[1.0, "abc", 3.0, 4.0])
    with pytest.raises(DataError, match=r"labels_image.csv: column 'mos' must hold numbers; 1 row\(s\) do not: row 3 \('abc'\)"):
        B.load_manifest("livefb", tmp_path)


def test_duplicate_ids_name_all_rows(tmp_path):
    b = make_spaq(tmp_path, names=["00001.jpg", "00002.jpg", "00001.jpg"])
    with pytest.raises(DataError) as e:
        B.load_manifest("spaq", tmp_path)
    assert str(b.label_file) in str(e.value) and "'00001.jpg' (row 2, row 4)" in str(e.value)


def test_empty_benchmark(tmp_path):
    make_koniq(tmp_path, names=[], mos=[])
    with pytest.raises(DataError, match=r"koniq10k_scores_and_distributions.csv: no images"):
        B.load_manifest("koniq", tmp_path)
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / "labels.csv").write_text("")
    with pytest.raises(DataError, match="labels.csv: the label file is empty"):
        B.load_manifest("csv", tmp_path / "l")


def test_missing_image_names_row_and_path(tmp_path):
    b = make_koniq(tmp_path, n=3)
    b.images[b.ids[1]].unlink()
    with pytest.raises(DataError) as e:
        B.load_manifest("koniq", tmp_path)
    msg = str(e.value)
    assert "1 image file(s) listed in" in msg and f"row 3 {b.ids[1]!r} -> {b.images[b.ids[1]]}" in msg


def test_long_fault_lists_are_cut_after_ten(tmp_path):
    make_livefb(tmp_path, n=15, mos=[float("nan")] * 15)
    with pytest.raises(DataError, match=r"in 15 row\(s\): .*row 11 .* and 5 more"):
        B.load_manifest("livefb", tmp_path)


def test_corrupt_image_passes_load_but_not_check(tmp_path):
    # load_manifest only stats files; decoding is `check`'s job.
    from data_fixtures import garble

    b = make_spaq(tmp_path, n=3)
    garble(b.images[b.ids[0]])
    assert len(B.load_manifest("spaq", tmp_path)) == 3
    report = B.check_benchmark("spaq", tmp_path, progress=False)
    assert not report.usable and [u[0] for u in report.unreadable] == [b.ids[0]]


def test_exclusion_file_is_applied_and_logged(tmp_path, caplog):
    b = make_koniq(tmp_path, n=4)
    b.images[b.ids[2]].unlink()
    write_csv(tmp_path / B.EXCLUDED_FILE, ["image_id", "path", "reason"], [[b.ids[2], str(b.images[b.ids[2]]), "unreadable"]])
    with caplog.at_level(logging.WARNING, logger="drx.data"):
        m = B.load_manifest("koniq", tmp_path)
    assert b.ids[2] not in set(m["image_id"]) and len(m) == 3
    assert f"{tmp_path / B.EXCLUDED_FILE}: excluding 1 image(s)" in caplog.text
    write_csv(tmp_path / B.EXCLUDED_FILE, ["image_id", "path", "reason"], [["ghost.jpg", "x", "unreadable"]])
    with pytest.raises(DataError, match=r"drx-excluded.csv: lists 1 image id\(s\) that are not in the labels: 'ghost.jpg'"):
        B.load_manifest("koniq", tmp_path)


def test_manifest_columns_and_types(tmp_path):
    make_csv(tmp_path, n=4)
    m = B.load_manifest("csv", tmp_path)
    assert list(m.columns[:3]) == ["image_id", "path", "mos"] and "_row" not in m.columns
    assert m["mos"].dtype == np.float64 and m["image_id"].is_unique
    assert all(isinstance(v, str) for v in m["image_id"]) and not any(math.isnan(v) for v in m["mos"])
