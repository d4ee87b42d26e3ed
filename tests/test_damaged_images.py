"""Images that decode without error but are damaged (issue 15, item 5): `drx data check` names them
and counts them; `drx data prepare` never bakes them into a clean copy."""

from __future__ import annotations

import csv
import io
import re

import numpy as np
import pytest
from PIL import Image

from data_fixtures import make_csv, make_spaq
from drx.cli import main as drx_main
from drx.data.benchmarks import EXCLUDED_FILE, check_benchmark, load_manifest, prepare_benchmark
from drx.data.embedded import ensure_embedded
from drx.data.images import damage_signs, inspect_image
from drx.errors import DataError


def _photo(size=(384, 288), seed=0) -> Image.Image:
    """A textured photo-like image (no flat areas: a hole in its JPEG data cannot pass for one)."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    arr = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)).astype(int)
    return Image.fromarray(np.clip(arr + rng.integers(-6, 6, arr.shape), 0, 255).astype(np.uint8))


def zero_filled_jpeg(path, seed=0, hole=4096):
    """A JPEG with a zero-filled block in the middle of its data, as a repaired split zip leaves."""
    buf = io.BytesIO()
    _photo(seed=seed).save(buf, "JPEG", quality=90)
    data = bytearray(buf.getvalue())
    mid = len(data) // 2
    data[mid:mid + hole] = bytes(hole)
    path.write_bytes(bytes(data))
    return path


def grey_band_jpeg(path, seed=0):
    """A JPEG whose data stops early and is closed by an end-of-image marker: the decoder fills the
    rest with grey, without any error."""
    buf = io.BytesIO()
    _photo(seed=seed).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    path.write_bytes(data[: int(len(data) * 0.6)] + b"\xff\xd9")
    return path


def test_the_damage_signs_and_no_false_alarm_on_genuine_images(tmp_path):
    hole = zero_filled_jpeg(tmp_path / "hole.jpg")
    band = grey_band_jpeg(tmp_path / "band.jpg")
    for p in (hole, band):
        Image.open(p).load()  # both decode without an error: that is the problem
    assert "4096 zero bytes at byte" in inspect_image(hole)[1][0] and "zero-filled hole" in inspect_image(hole)[1][0]
    assert re.match(r"rows \d+-287 \(\d+% of the height\) are the JPEG decoder's uniform grey fill", inspect_image(band)[1][0])
    assert damage_signs(Image.new("RGB", (64, 64), (90, 91, 90))) == ["near-constant image: its values span 90..91 of 0..255"]
    twelve_bit = Image.fromarray((np.random.default_rng(0).integers(0, 4096, (48, 64))).astype(np.uint16))
    twelve_bit.save(tmp_path / "deep.png")
    signs = inspect_image(tmp_path / "deep.png")[1]
    assert any("of its 0..65535 range (6.2%): probably lower-bit data stored in a wider format" in s for s in signs)
    clean = tmp_path / "clean.jpg"
    _photo().save(clean, "JPEG", quality=90)
    assert inspect_image(clean)[1] == []
    # Flat regions of genuine images (heavy JPEG compression, haze, clipped skies) are no sign.
    # All 84 scenes at the strongest JPEG and haze: a grey sky at JPEG quality 3 (opencv-boat) once
    # passed for the decoder's fill.
    for png in sorted((ensure_embedded() / "images").glob("*-jpeg-compressed-4.png")) + sorted((ensure_embedded() / "images").glob("*-hazy-4.png")):
        assert inspect_image(png)[1] == [], png.name


def test_check_names_and_counts_damaged_images_and_prepare_refuses_to_bake_them(tmp_path, capsys):
    b = make_spaq(tmp_path / "spaq", n=6, size=(384, 288))
    names = list(b.images)
    zero_filled_jpeg(b.images[names[1]], seed=1)
    grey_band_jpeg(b.images[names[3]], seed=3)
    rc = drx_main(["data", "check", "spaq", "--root", str(b.root)])
    out = capsys.readouterr().out
    assert rc == 0  # a warning: the benchmark is still usable
    assert "images      6 scored (the full benchmark has 11125); 6 readable, 2 of them probably damaged (see below)" in out
    assert "probably damaged images (they decode, but: `drx data prepare` excludes them only with --skip-bad) (2):" in out
    assert f"  - {names[1]}  {b.images[names[1]]}: 4096 zero bytes" in out
    assert f"  - {names[3]}  {b.images[names[3]]}: rows " in out
    # prepare: without --skip-bad it fails naming both; with it they are excluded like unreadable ones.
    with pytest.raises(DataError, match=r"2 image\(s\) of .* are missing, unreadable or probably damaged: .*"
                                         + names[1].replace(".", r"\.") + r" .*probably damaged although it decodes"):
        prepare_benchmark("spaq", b.root, tmp_path / "c", size=128, progress=False)
    report = prepare_benchmark("spaq", b.root, tmp_path / "c", size=128, skip_bad=True, progress=False)
    assert sorted(i for i, _, _ in report.excluded) == sorted([names[1], names[3]])
    with open(tmp_path / "c" / "spaq" / EXCLUDED_FILE) as fh:
        rows = {r["image_id"]: r["reason"] for r in csv.DictReader(fh)}
    assert set(rows) == {names[1], names[3]} and all("probably damaged" in r for r in rows.values())
    assert len(load_manifest("spaq", tmp_path / "c" / "spaq")) == 4


def test_check_reports_a_near_constant_and_a_12_bit_image_of_a_csv_benchmark(tmp_path):
    b = make_csv(tmp_path / "b", n=4, groups=None)
    Image.new("RGB", (64, 48), (200, 200, 201)).save(b.images["imgs/img0.png"])
    deep = (np.random.default_rng(1).integers(0, 4096, (48, 64))).astype(np.uint16)
    Image.fromarray(deep).save(b.images["imgs/img3.png"])
    report = check_benchmark("csv", b.root, {"mos_range": [0, 10]}, progress=False)
    assert report.usable
    suspect = {i: r for i, _, r in report.suspect}
    assert set(suspect) == {"imgs/img0.png", "imgs/img3.png"}
    assert suspect["imgs/img0.png"].startswith("near-constant image")
    assert "probably lower-bit data stored in a wider format" in suspect["imgs/img3.png"]
    assert "2 of them probably damaged" in report.format()
