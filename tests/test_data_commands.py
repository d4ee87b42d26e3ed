"""`drx data check` and `drx data prepare` on fixture trees of all five official layouts."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from PIL import Image

from data_fixtures import garble, make_bid, make_csv, make_koniq, make_livec, make_livefb, make_spaq, truncate, write_image
from drx.cli import main
from drx.data import benchmarks as B
from drx.errors import DataError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DRX_CACHE", str(tmp_path / "cache"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# Each layout with its image folder (where an unscored file is planted) and its builder.
LAYOUTS = {
    "koniq": (make_koniq, "1024x768"),
    "livec": (make_livec, "Images"),
    "spaq": (make_spaq, "TestImage"),
    "livefb": (make_livefb, "database/voc_emotic_ava"),
    "bid": (make_bid, "."),
}


# ----------------------------------------------------------------------------------------- check


@pytest.mark.parametrize("bench", list(LAYOUTS))
def test_check_clean_tree_is_usable(tmp_path, capsys, bench):
    build, _ = LAYOUTS[bench]
    b = build(tmp_path)
    rc, out, _ = run(capsys, "data", "check", bench, "--root", str(tmp_path), "--workers", "2")
    assert rc == 0, out
    assert f"images      {len(b.ids)} scored (the full benchmark has {B.get_adapter(bench).expected_count}); {len(b.ids)} readable" in out
    assert "result      usable" in out and "MOS         min" in out
    assert "fine for a subset" in out  # count mismatch is a warning, not an error
    assert "unexpected" not in out  # livec's trainingImages/ and livefb's patches/ are not flagged


@pytest.mark.parametrize("bench", list(LAYOUTS))
def test_check_reports_every_planted_fault_by_name(tmp_path, capsys, bench):
    build, folder = LAYOUTS[bench]
    b = build(tmp_path, **({"numbers": [1, 3, 4, 5, 6]} if bench == "bid" else {"n": 5}))
    missing, truncated, garbled = b.ids[0], b.ids[1], b.ids[2]
    b.images[missing].unlink()
    truncate(b.images[truncated], 0.3)
    garble(b.images[garbled])
    stray = write_image(tmp_path / folder / "DatabaseImage0002.JPG" if bench == "bid" else tmp_path / folder / "stray.jpg", seed=9)
    json_path = tmp_path / "report.json"
    rc, out, _ = run(capsys, "data", "check", bench, "--root", str(tmp_path), "--json", str(json_path))
    assert rc == 1
    assert "missing images (1):" in out and f"- {missing}  {b.images[missing]}" in out
    assert "unreadable images (2):" in out
    assert f"- {truncated}  {b.images[truncated]}: unreadable image" in out
    assert f"- {garbled}  {b.images[garbled]}: not a readable image" in out
    assert "unexpected (unscored) image files (1):" in out and f"- {stray.absolute()}" in out
    assert "NOT usable (1 missing, 2 unreadable)" in out
    report = json.loads(json_path.read_text())
    assert report["usable"] is False and len(report["unreadable"]) == 2


def test_check_label_errors_exit_1(tmp_path, capsys):
    make_koniq(tmp_path, mos=[10.0, float("nan"), 200.0])
    rc, out, _ = run(capsys, "data", "check", "koniq", "--root", str(tmp_path))
    assert rc == 1
    assert "label errors (2):" in out and "MOS is missing or not finite in 1 row(s): row 3" in out
    assert "outside the nominal range [0, 100]" in out and "row 4" in out


def test_check_missing_label_file_and_unknown_benchmark(tmp_path, capsys):
    rc, out, _ = run(capsys, "data", "check", "spaq", "--root", str(tmp_path))
    assert rc == 1 and "MOS and Image attribute scores.xlsx: SPAQ label workbook not found" in out
    rc, _, err = run(capsys, "data", "check", "konik", "--root", str(tmp_path))
    assert rc == 1 or rc == 2
    rc, out, _ = run(capsys, "data", "check", "koniq", "--root", str(tmp_path / "none"))
    assert rc == 1 and "does not exist" in out


def test_check_csv_with_options(tmp_path, capsys):
    b = make_csv(tmp_path, n=4, file="scores.csv")
    rc, out, _ = run(capsys, "data", "check", "csv", "--root", str(tmp_path), "--option", "file=scores.csv", "--option", "mos_range=[0, 10]")
    assert rc == 0, out
    assert "nominal range 0..10" in out and "not scanned" in out
    rc, _, err = run(capsys, "data", "check", "csv", "--root", str(tmp_path), "--option", "file")
    assert rc == 2 and "expected KEY=VALUE" in err
    assert len(b.ids) == 4


# --------------------------------------------------------------------------------------- prepare


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("bench", list(LAYOUTS))
def test_prepare_keeps_the_layout_and_loads_with_the_same_adapter(tmp_path, capsys, bench):
    build, _ = LAYOUTS[bench]
    src = tmp_path / "src"
    b = build(src, size=(80, 60))
    cache = tmp_path / "cache-out"
    rc, out, _ = run(capsys, "data", "prepare", bench, "--root", str(src), "--cache", str(cache), "--size", "40")
    assert rc == 0, out
    dst = cache / bench
    assert f"images      {len(b.ids)}: {len(b.ids)} resized" in out and f"data.root: {dst}" in out
    for lf in B.get_adapter(bench).label_files(src, B.get_adapter(bench).resolve_options({})):
        assert (dst / lf.relative_to(src)).read_bytes() == lf.read_bytes()  # labels verbatim
    m_src = B.load_manifest(bench, src)
    m_dst = B.load_manifest(bench, dst)
    assert list(m_dst["image_id"]) == list(m_src["image_id"]) and list(m_dst["mos"]) == list(m_src["mos"])
    for p_src, p_dst in zip(m_src["path"], m_dst["path"]):
        assert os.path.relpath(p_dst, dst) == os.path.relpath(p_src, src)
        with Image.open(p_dst) as im:
            assert min(im.size) == 40 and im.format == Image.open(p_src).format
    settings = json.loads((dst / B.PREPARED_FILE).read_text())
    assert settings["complete"] is True and settings["resize"] == {"mode": "shorter", "size": 40}
    rc, out, _ = run(capsys, "data", "check", bench, "--root", str(dst))
    assert rc == 0 and "result      usable" in out


def test_prepare_compat_authors_sizes(tmp_path, capsys):
    make_koniq(tmp_path / "k", n=2, size=(96, 72))
    make_livec(tmp_path / "l", n=2)
    rc, out, err = run(capsys, "data", "prepare", "koniq", "--root", str(tmp_path / "k"), "--cache", str(tmp_path / "c"), "--compat", "authors")
    assert rc == 0 and "the authors' resize 512x384 HxW" in err
    for p in (tmp_path / "c" / "koniq" / "1024x768").iterdir():
        assert Image.open(p).size == (384, 512)  # W x H: the reference's portrait squash
    rc, out, err = run(capsys, "data", "prepare", "livec", "--root", str(tmp_path / "l"), "--cache", str(tmp_path / "c"), "--compat", "authors")
    assert rc == 0 and "copied unchanged" in err + out and "2 copied unchanged" in out
    assert (tmp_path / "c" / "livec" / "Images" / "11.bmp").read_bytes() == (tmp_path / "l" / "Images" / "11.bmp").read_bytes()


def test_prepare_jpeg_settings_and_no_upscaling(tmp_path):
    make_spaq(tmp_path / "s", n=2, size=(120, 90))
    write_image(tmp_path / "s" / "TestImage" / "00002.jpg", (30, 20), seed=3)  # smaller than --size
    r = B.prepare_benchmark("spaq", tmp_path / "s", tmp_path / "c", size=60, progress=False)
    assert (r.written, r.copied, r.skipped) == (1, 1, 0)
    with Image.open(tmp_path / "c" / "spaq" / "TestImage" / "00001.jpg") as im:
        assert im.size == (80, 60)
        assert im.layer[0][1:3] == im.layer[1][1:3] == (1, 1)  # 4:4:4: no chroma subsampling
    assert Image.open(tmp_path / "c" / "spaq" / "TestImage" / "00002.jpg").size == (30, 20)


@pytest.mark.parametrize("bench", list(LAYOUTS))
def test_prepare_names_every_bad_file_in_each_layout(tmp_path, capsys, bench):
    build, _ = LAYOUTS[bench]
    b = build(tmp_path / "src", **({"numbers": [1, 3, 4, 5, 6]} if bench == "bid" else {"n": 5}))
    b.images[b.ids[0]].unlink()
    truncate(b.images[b.ids[1]], 0.3)
    garble(b.images[b.ids[2]])
    rc, _, err = run(capsys, "data", "prepare", bench, "--root", str(tmp_path / "src"), "--cache", str(tmp_path / "c"), "--size", "24")
    assert rc == 2 and "3 image(s)" in err
    assert f"{b.ids[0]} ({b.images[b.ids[0]]}: image file not found)" in err
    assert f"{b.ids[1]} ({b.images[b.ids[1]]}: unreadable image" in err
    assert f"{b.ids[2]} ({b.images[b.ids[2]]}: not a readable image" in err
    rc, out, _ = run(capsys, "data", "prepare", bench, "--root", str(tmp_path / "src"), "--cache", str(tmp_path / "c"), "--size", "24", "--skip-bad")
    assert rc == 0 and "excluded (3" in out
    assert len(B.load_manifest(bench, tmp_path / "c" / bench)) == len(b.ids) - 3


def test_prepare_bad_images_fail_naming_every_one_then_skip_bad(tmp_path, capsys, caplog):
    b = make_koniq(tmp_path / "src", n=5)
    truncate(b.images[b.ids[1]], 0.3)
    garble(b.images[b.ids[3]])
    args = ["data", "prepare", "koniq", "--root", str(tmp_path / "src"), "--cache", str(tmp_path / "c"), "--size", "24"]
    rc, out, err = run(capsys, *args)
    assert rc == 2
    assert "2 image(s)" in err and b.ids[1] in err and b.ids[3] in err and "--skip-bad" in err
    dst = tmp_path / "c" / "koniq"
    assert json.loads((dst / B.PREPARED_FILE).read_text())["complete"] is False
    with pytest.raises(DataError, match="incomplete"):
        B.load_manifest("koniq", dst)
    rc, out, _ = run(capsys, *args, "--skip-bad")
    assert rc == 0 and "excluded (2" in out and "3 already done" in out
    excluded = (dst / B.EXCLUDED_FILE).read_text().splitlines()
    assert excluded[0] == "image_id,path,reason" and len(excluded) == 3
    assert excluded[1].startswith(b.ids[1] + ",") and excluded[2].startswith(b.ids[3] + ",")
    with caplog.at_level(logging.WARNING, logger="drx.data"):
        m = B.load_manifest("koniq", dst)
    assert len(m) == 3 and f"{dst / B.EXCLUDED_FILE}: excluding 2 image(s)" in caplog.text
    rc, out, _ = run(capsys, "data", "check", "koniq", "--root", str(dst))
    assert rc == 0 and "excluded    2" in out


def test_prepare_is_idempotent_and_refuses_other_settings(tmp_path, capsys):
    make_bid(tmp_path / "src", numbers=[1, 3, 4])
    args = ["data", "prepare", "bid", "--root", str(tmp_path / "src"), "--cache", str(tmp_path / "c"), "--size", "32"]
    assert run(capsys, *args)[0] == 0
    dst = tmp_path / "c" / "bid"
    before = {p: p.stat().st_mtime_ns for p in dst.glob("*.JPG")}
    rc, out, _ = run(capsys, *args)
    assert rc == 0 and "0 resized, 0 copied unchanged, 3 already done" in out
    assert {p: p.stat().st_mtime_ns for p in dst.glob("*.JPG")} == before
    rc, _, err = run(capsys, *args[:-1], "40")
    assert rc == 2 and "prepared with other settings" in err and '"size": 32' in err and '"size": 40' in err
    (tmp_path / "c2" / "bid").mkdir(parents=True)
    (tmp_path / "c2" / "bid" / "x.txt").write_text("mine")
    rc, _, err = run(capsys, *args[:6], str(tmp_path / "c2"), "--size", "32")
    assert rc == 2 and "not a drx prepared copy" in err


def test_prepare_interrupted_run_leaves_no_half_written_file(tmp_path, monkeypatch):
    b = make_livefb(tmp_path / "src", n=6, size=(80, 60))
    calls = {"n": 0}
    real_save = Image.Image.save

    def flaky_save(self, fp, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            Path(fp).write_bytes(b"\xff\xd8partial")  # half a file under the temp name...
            raise KeyboardInterrupt  # ...then the run dies
        return real_save(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", flaky_save)
    with pytest.raises(KeyboardInterrupt):
        B.prepare_benchmark("livefb", tmp_path / "src", tmp_path / "c", size=40, workers=1, progress=False)
    monkeypatch.setattr(Image.Image, "save", real_save)
    dst = tmp_path / "c" / "livefb"
    done = [p for p in (dst / "database").rglob("*.jpg")]
    assert 0 < len(done) < 6
    for p in done:  # every file under its final name is complete
        Image.open(p).load()
    # A stale temp file from a hard kill must not count as finished. (The pool's worker may finish
    # a job or two after the interrupted one before the cancel lands, so pick an unfinished image.)
    victim = next(dst / "database" / i for i in b.ids if not (dst / "database" / i).exists())
    stale = victim.parent / f".{victim.name}.abc123{B.TMP_SUFFIX}"
    stale.write_bytes(b"partial")
    r = B.prepare_benchmark("livefb", tmp_path / "src", tmp_path / "c", size=40, progress=False)
    assert r.skipped == len(done) and r.written == 6 - len(done)
    assert not list(dst.rglob(f"*{B.TMP_SUFFIX}"))
    Image.open(victim).load()
    assert len(B.load_manifest("livefb", dst)) == 6


def test_prepare_csv_with_paths_outside_the_root_is_refused(tmp_path):
    make_csv(tmp_path / "a", n=3, absolute=True)
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match="outside the benchmark root"):
        B.prepare_benchmark("csv", tmp_path / "b", tmp_path / "c", options={"file": str(tmp_path / "a" / "labels.csv")}, progress=False)
