"""pyiqa's meta-info layout, official splits with their own validation parts, and hints computed
from what the user gave (issue 15, items 3 and 4)."""

from __future__ import annotations

import json

import pytest

from data_fixtures import make_koniq, make_livefb, write_csv, write_image
from drx.cli import main as drx_main
from drx.config import load_config
from drx.data import splits as S
from drx.data.benchmarks import check_benchmark, load_manifest
from drx.errors import DataError
from drx.experiment import Experiment
from drx.report.protocol import protocol_note
from drx.train.trainer import build_trial_data

SETS_HEADER = ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "set"]


def koniq_with_sets(root, n=24, sets=None):
    """KonIQ's release plus the authors' koniq10k_distributions_sets.csv (whose MOS is the z-score MOS)."""
    b = make_koniq(root, n=n, size=(80, 64))
    sets = sets or (["training"] * (n - 10) + ["validation"] * 5 + ["test"] * 5)
    rows = [[name, 0.1, 0.2, 0.4, 0.2, 0.1, 100, m, 0.5, s] for name, m, s in zip(b.ids, b.mos, sets)]
    write_csv(root / "koniq10k_distributions_sets.csv", SETS_HEADER, rows)
    return b, sets


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DRX_CACHE", str(tmp_path / "cache"))


# ------------------------------------------------------------------------- pyiqa's meta layout


def pyiqa_layout(tmp_path, n=12):
    """pyiqa keeps meta_info_<Dataset>.csv (img_name,mos,std,split) apart from the images."""
    images = tmp_path / "datasets" / "koniq10k" / "1024x768"
    names = [f"{1000 + k}.jpg" for k in range(n)]
    for k, name in enumerate(names):
        write_image(images / name, (80, 64), seed=k)
    parts = ["training"] * (n - 4) + ["validation"] * 2 + ["test"] * 2
    meta = tmp_path / "datasets" / "meta_info" / "meta_info_KonIQ10kDataset.csv"
    write_csv(meta, ["img_name", "mos", "std", "split"], [[nm, 20 + 5 * k, 0.5, p] for k, (nm, p) in enumerate(zip(names, parts))])
    return images, meta, names, parts


def test_check_csv_honours_root_as_the_image_folder_of_a_pyiqa_meta_file(tmp_path, capsys):
    images, meta, names, parts = pyiqa_layout(tmp_path)
    args = ["data", "check", "csv", "--root", str(images), "--option", f"file={meta}", "--option", "path_column=img_name",
            "--option", "mos_range=[0,100]"]
    assert drx_main(args) == 0  # before: every image missing, resolved next to the meta file
    out = capsys.readouterr().out
    assert "images      12 scored; 12 readable" in out
    assert f"official    split 8 train / 2 validation / 2 test (column 'split' of {meta})" in out
    m = load_manifest("csv", images, {"file": str(meta), "path_column": "img_name", "mos_range": [0, 100]})
    assert list(m["path"]) == [str(images / n) for n in names]
    assert list(m["official_split"]) == [{"training": "train", "validation": "val", "test": "test"}[p] for p in parts]
    # The image-folder option, without --root; relative to the meta file's folder it is missing and says why.
    m2 = load_manifest("csv", None, {"file": str(meta), "path_column": "img_name", "image_root": str(images)})
    assert list(m2["path"]) == list(m["path"])
    with pytest.raises(DataError, match=r"12 image file\(s\) .* are missing: .*relative paths of column 'img_name' were resolved "
                                         r"against .*meta_info \(the label file's folder\); set option image_root="):
        load_manifest("csv", None, {"file": str(meta), "path_column": "img_name"})


def test_a_named_split_column_must_name_parts_and_a_found_one_that_does_not_is_reported(tmp_path):
    images, meta, names, _ = pyiqa_layout(tmp_path)
    rows = [[n, 10 + k, k % 3] for k, n in enumerate(names)]  # pyiqa's old numeric split column
    write_csv(meta, ["img_name", "mos", "split"], rows)
    opts = {"file": str(meta), "path_column": "img_name"}
    report = check_benchmark("csv", images, opts, progress=False)
    assert report.usable and not report.official_split
    assert any("column 'split' is not read as an official split" in w and "option split_column" in w for w in report.warnings)
    with pytest.raises(DataError, match=r"column 'split' \(option split_column\): 12 row\(s\) name no official part: row 2 \('0'\)"):
        load_manifest("csv", images, {**opts, "split_column": "split"})


# ------------------------------------------------------------------------------ official splits


def test_koniq_official_split_keeps_its_own_validation_part(tmp_path):
    b, sets = koniq_with_sets(tmp_path / "koniq")
    by = {p: sorted(n for n, s in zip(b.ids, sets) if s == p) for p in ("training", "validation", "test")}
    cfg = load_config("tiny", ["data.benchmark=koniq", f"data.root={b.root}", "data.split.protocol=official"])
    assert cfg.data.split.n_splits == 1  # one official split
    data = build_trial_data(cfg)
    assert list(data.val.source.ids) == by["validation"]  # exactly the official validation images, none redrawn
    assert sorted(data.train.source.ids) == by["training"] and sorted(data.test.source.ids) == by["test"]
    assert data.counts == {"train": 14, "val": 5, "test": 5}
    assert "official split of koniq (column 'set' of" in data.notes[0]
    # The random protocol says the labels carry an official split that it does not use.
    rnd = build_trial_data(load_config("tiny", ["data.benchmark=koniq", f"data.root={b.root}", "data.split.val_fraction=0.3"]))
    assert any("carry an official split (14 train, 5 val, 5 test) that data.split.protocol random does not use" in n for n in rnd.notes)
    # A data-efficiency fraction takes a subset of the official training part; validation and test stay.
    half = build_trial_data(load_config("tiny", ["data.benchmark=koniq", f"data.root={b.root}", "data.split.protocol=official",
                                                 "data.split.fraction=0.5"]))
    assert half.counts == {"train": 7, "val": 5, "test": 5} and set(half.train.source.ids) < set(by["training"])


def test_koniq_sets_file_as_the_label_file_and_in_check(tmp_path, capsys):
    b, _ = koniq_with_sets(tmp_path / "koniq")
    (b.root / "koniq10k_scores_and_distributions.csv").unlink()
    m = load_manifest("koniq", b.root)
    assert list(m["mos"]) == pytest.approx(b.mos)  # its MOS column is the 0-100 z-score MOS
    assert drx_main(["data", "check", "koniq", "--root", str(b.root)]) == 0
    assert "official    split 14 train / 5 validation / 5 test (column 'set' of" in capsys.readouterr().out


def test_an_official_split_file_gives_train_val_and_test(tmp_path):
    b, sets = koniq_with_sets(tmp_path / "koniq")
    (b.root / "koniq10k_distributions_sets.csv").unlink()
    ids = sorted(b.ids)
    split = {"index": 0, "train": ids[:12], "val": ids[12:18], "test": ids[18:]}
    path = tmp_path / "official.json"
    path.write_text(json.dumps({"format": "drx-splits-v1", "protocol": "official", "benchmark": "koniq", "splits": [split]}))
    cfg = load_config("tiny", ["data.benchmark=koniq", f"data.root={b.root}", "data.split.protocol=official", f"data.split.file={path}"])
    data = build_trial_data(cfg)
    assert list(data.val.source.ids) == ids[12:18] and data.counts == {"train": 12, "val": 6, "test": 6}
    # The same file under the random protocol: its validation parts would be ignored, so it is an error.
    with pytest.raises(DataError, match="official split file .* set data.split.protocol official"):
        build_trial_data(load_config("tiny", ["data.benchmark=koniq", f"data.root={b.root}", f"data.split.file={path}"]))
    with pytest.raises(DataError, match=r"holds 1 split\(s\) but data.split.n_splits=3; set data.split.n_splits=1"):
        build_trial_data(load_config("tiny", ["data.benchmark=koniq", f"data.root={b.root}", "data.split.protocol=official",
                                              f"data.split.file={path}", "data.split.n_splits=3"]))
    split["val"] = ids[11:18]
    path.write_text(json.dumps({"format": "drx-splits-v1", "splits": [split]}))
    with pytest.raises(DataError, match=f"split 0 puts image id '{ids[11]}' in both train and val"):
        S.official_splits(load_manifest("koniq", b.root), path)


def test_no_official_split_is_a_clear_error(tmp_path):
    b = make_koniq(tmp_path / "koniq", n=12, size=(80, 64))
    with pytest.raises(DataError, match="carries no official split.*koniq10k_distributions_sets.csv with its `set` column"):
        build_trial_data(load_config("tiny", ["data.benchmark=koniq", f"data.root={b.root}", "data.split.protocol=official"]))


def test_the_report_says_which_split_protocol_its_numbers_used(tmp_path):
    def note(split):
        cfg = load_config("tiny", [f"data.split.{k}={v}" for k, v in split.items()]).to_dict()
        exp = Experiment(tmp_path, {"kind": "ablate"}, [{"config": cfg}], None)
        return protocol_note(exp, "best")

    assert "split protocol official: the benchmark's own train/validation/test parts (the labels' split column)" in note({"protocol": "official"})
    assert "split protocol random: persisted splits 0.8/0.2 (seed 0), validation 0.1 of the training part" in note({})


def test_ablate_makes_no_random_split_file_for_an_official_split(tmp_path):
    from drx.search.grid import load_ablation

    b, _ = koniq_with_sets(tmp_path / "koniq")
    spec = tmp_path / "a.yaml"
    spec.write_text(f"name: a\nbase: tiny\nbenchmarks: [koniq]\nsplits: [0]\nbaseline: full\n"
                    f"overrides: {{data.root: {b.root}, data.split.protocol: official}}\nvariants: {{full: {{}}}}\n")
    plan = load_ablation(spec)
    assert plan.split_jobs["koniq"]["needs_split"] is False


# ---------------------------------------------------------------------------------------- hints


def test_koniq_score_column_mos_on_the_sets_file_names_the_z_score_cause(tmp_path):
    b, _ = koniq_with_sets(tmp_path / "koniq")
    (b.root / "koniq10k_scores_and_distributions.csv").unlink()
    with pytest.raises(DataError) as err:
        load_manifest("koniq", b.root, {"score_column": "MOS"})
    msg = str(err.value)
    assert "MOS outside the nominal range [1, 5]" in msg
    assert "koniq10k_distributions_sets.csv layout, whose MOS column is the 0-100 z-score MOS" in msg
    assert "drop the option (the default score_column=MOS_zscore reads this column on 0-100)" in msg
    assert "reads the 1-5 scale" not in msg  # the old hint told the user to do what they did
    # The scores file's MOS column holding 0-100 values: the hint names the scale it is on.
    make_koniq(tmp_path / "k2", n=6, columns=["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS_zscore", "SD", "MOS"])
    with pytest.raises(DataError, match=r"column MOS of koniq10k_scores_and_distributions.csv reaches \d+\.?\d*, so it is not "
                                         r"KonIQ's 1-5 MOS: use option score_column=MOS_zscore"):
        load_manifest("koniq", tmp_path / "k2", {"score_column": "MOS"})


def test_livefb_patch_labels_in_place_of_labels_image_name_the_right_file(tmp_path):
    b = make_livefb(tmp_path / "fb", n=4)
    write_csv(b.label_file, ["name_patch", "mos_patch", "width", "height"], [[f"patches/{k}_patch_1.jpg", 50, 32, 32] for k in range(4)])
    with pytest.raises(DataError) as err:
        load_manifest("livefb", b.root)
    msg = str(err.value)
    assert "holds patch labels (PaQ-2-PiQ's labels_patch.csv: one row per patch)" in msg
    assert f"whose labels are labels_image.csv (columns name, mos) in {b.root} or {b.root / 'database'}" in msg
    assert "did you mean" not in msg and "name_patch'?" not in msg
    write_csv(b.label_file, ["name_image", "mos_image", "name_patch", "mos_patch_1"], [["a.jpg", 50, "a_patch_1.jpg", 40]])
    with pytest.raises(DataError, match="holds PaQ-2-PiQ's labels640.csv .* the labels of all 39,810 images are labels_image.csv"):
        load_manifest("livefb", b.root)
