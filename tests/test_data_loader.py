"""Decoding, resizing, crops, the epoch sampler and the loaders."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from data_fixtures import garble, make_csv, truncate, write_image
from drx.data import images
from drx.data import transforms as T
from drx.data.benchmarks import load_manifest
from drx.data.images import ResizeConfig
from drx.data.loader import EpochSampler, EvalCrops, TrainCrops, average_per_image, make_eval_loader, make_train_loader
from drx.errors import DataError


@pytest.fixture
def manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("DRX_CACHE", str(tmp_path / "cache"))
    make_csv(tmp_path, n=6, size=(64, 48))
    return load_manifest("csv", tmp_path)


# ----------------------------------------------------------------------------------- transforms


def test_load_image_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'no.jpg'}: image file not found"):
        images.load_image(tmp_path / "no.jpg")
    p = garble(write_image(tmp_path / "g.png"))
    with pytest.raises(DataError, match=f"{p}: not a readable image"):
        images.load_image(p)
    p = truncate(write_image(tmp_path / "t.jpg", (128, 96)), 0.4)
    with pytest.raises(DataError, match=f"{p}: unreadable image"):
        images.load_image(p)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((10, 12), 7, np.uint8), "L").save(grey)
    img = images.load_image(grey)
    assert img.mode == "RGB" and img.size == (12, 10)


def test_resize_modes():
    img = Image.new("RGB", (200, 100))
    assert images.resize_image(img, ResizeConfig(mode="shorter", size=50)).size == (100, 50)
    assert images.resize_image(Image.new("RGB", (100, 300)), ResizeConfig(mode="shorter", size=50)).size == (50, 150)
    assert images.resize_image(img, ResizeConfig(mode="exact", size=(512, 384))).size == (384, 512)  # (h, w)
    assert images.resize_image(img, None) is img
    assert images.resize_image(img, {"mode": "shorter", "size": 100}) is img


def test_fixed_crop_positions_use_a_stable_hash():
    pos = T.fixed_crop_positions(48, 64, 32, 3, seed=4, image_id="a.png")
    assert pos == T.fixed_crop_positions(48, 64, 32, 3, seed=4, image_id="a.png")
    seed = int.from_bytes(hashlib.sha256(b"4:a.png").digest()[:8], "little")
    rng = np.random.default_rng(seed)
    tops, lefts = rng.integers(0, 17, size=3), rng.integers(0, 33, size=3)
    assert pos == list(zip(tops.tolist(), lefts.tolist()))  # independent of PYTHONHASHSEED
    assert pos != T.fixed_crop_positions(48, 64, 32, 3, seed=4, image_id="b.png")
    assert pos != T.fixed_crop_positions(48, 64, 32, 3, seed=5, image_id="a.png")


def test_image_smaller_than_crop_names_image_and_sizes(manifest):
    ds = EvalCrops(manifest, crop_size=56, crops_per_image=1)
    with pytest.raises(DataError, match=r"image 'imgs/img0.png' \(.*img0.png\) is 64x48 \(WxH\) after resizing, smaller than the 56x56 crop"):
        ds[0]
    ok = EvalCrops(manifest, crop_size=56, crops_per_image=1, resize=ResizeConfig(mode="shorter", size=60))
    assert ok[0][0].shape == (3, 56, 56)


def test_to_tensor_is_imagenet_normalisation():
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    want = (a.astype(np.float64) / 255 - np.array(IMAGENET_DEFAULT_MEAN)) / np.array(IMAGENET_DEFAULT_STD)
    got = T.to_tensor(a)
    assert got.shape == (3, 5, 7) and got.dtype == torch.float32 and got.is_contiguous()
    assert np.allclose(got.numpy(), want.transpose(2, 0, 1), atol=1e-6)
    with pytest.raises(DataError, match="uint8 HxWx3"):
        T.to_tensor(a.astype(np.float32))


# ------------------------------------------------------------------------------------- datasets


def test_train_crops_items(manifest):
    ds = TrainCrops(manifest, crop_size=32, crops_per_image=3, seed=1, target_fn=lambda m: m / 10)
    assert len(ds) == 18
    x, y, idx = ds[7]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.float32 and y.item() == pytest.approx(manifest["mos"][2] / 10)
    assert idx.dtype == torch.int64 and idx.item() == 2
    # ImageNet normalisation: undoing it gives values in [0, 1].
    back = T.denormalize(x)
    assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5
    # Keyed randomness: item 7 of epoch 0 is always the same; epochs differ.
    again = TrainCrops(manifest, crop_size=32, crops_per_image=3, seed=1)
    assert torch.equal(again[7][0], x)
    again.set_epoch(1)
    assert not torch.equal(again[7][0], x)
    other_seed = TrainCrops(manifest, crop_size=32, crops_per_image=3, seed=2)
    assert not torch.equal(other_seed[7][0], x)
    with pytest.raises(IndexError):
        ds[18]


def test_flips_follow_the_flags(manifest):
    a = TrainCrops(manifest, 32, 1, hflip=False, vflip=False)
    b = TrainCrops(manifest, 32, 1, hflip=True, vflip=True)
    flipped = 0
    for i in range(len(a)):
        xa, xb = a[i][0], b[i][0]
        same_crop = any(torch.equal(xb, f(xa)) for f in (lambda t: t, lambda t: t.flip(2), lambda t: t.flip(1), lambda t: t.flip(1).flip(2)))
        assert same_crop  # the same position, only flips differ
        flipped += not torch.equal(xa, xb)
    assert flipped > 0


def test_eval_crops_are_fixed_and_differ_between_images(manifest):
    a = EvalCrops(manifest, crop_size=32, crops_per_image=4, seed=0)
    b = EvalCrops(manifest, crop_size=32, crops_per_image=4, seed=0)
    assert len(a) == 24
    for i in range(len(a)):
        assert torch.equal(a[i][0], b[i][0])
    assert a.positions(0) != a.positions(1)
    assert a[5][2].item() == 1 and a[5][1].item() == pytest.approx(manifest["mos"][1])
    c = EvalCrops(manifest, crop_size=32, crops_per_image=4, seed=1)
    assert c.positions(0) != a.positions(0)


def test_loaders_do_not_depend_on_worker_count(manifest):
    ds = TrainCrops(manifest, 32, 2, seed=3)
    one = [b for b in make_train_loader(ds, 4, seed=9, epoch=2, num_workers=0)]
    two = [b for b in make_train_loader(ds, 4, seed=9, epoch=2, num_workers=2)]
    assert len(one) == 3  # 12 items, batch 4
    for (x1, y1, i1), (x2, y2, i2) in zip(one, two):
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(i1, i2)
    ev = EvalCrops(manifest, 32, 2)
    e0 = torch.cat([b[0] for b in make_eval_loader(ev, 5, num_workers=0)])
    e2 = torch.cat([b[0] for b in make_eval_loader(ev, 5, num_workers=2)])
    assert torch.equal(e0, e2) and e0.shape[0] == 12


def test_cache_images_keeps_decoded_arrays(manifest, tmp_path):
    ds = TrainCrops(manifest, 32, 1, cache_images=True)
    first = ds[0][0]
    (tmp_path / "imgs" / "img0.png").unlink()
    assert torch.equal(ds[0][0], first)  # served from memory
    with pytest.raises(DataError, match="img0.png: image file not found"):
        TrainCrops(manifest, 32, 1)[0]


# -------------------------------------------------------------------------------------- sampler


def test_epoch_sampler_pass_and_step_budget():
    one = list(EpochSampler(10, 4, seed=0, epoch=0))
    assert sorted(one) == list(range(10)) and one == list(EpochSampler(10, 4, seed=0, epoch=0))
    assert one != list(EpochSampler(10, 4, seed=0, epoch=1))
    steps = list(EpochSampler(10, 4, seed=0, epoch=0, steps=7))
    assert len(steps) == 28 and sorted(steps[:10]) == list(range(10)) and sorted(steps[10:20]) == list(range(10))
    assert len(EpochSampler(10, 4, 0, 0, steps=7)) == 28
    with pytest.raises(DataError):
        EpochSampler(0, 4, 0, 0)


def test_train_loader_drop_last_and_small_datasets(manifest):
    ds = TrainCrops(manifest, 32, 1)  # 6 items
    assert [len(b[0]) for b in make_train_loader(ds, 4, 0, 0)] == [4]
    assert [len(b[0]) for b in make_train_loader(ds, 8, 0, 0)] == [6]  # smaller than a batch: kept
    assert [len(b[0]) for b in make_train_loader(ds, 4, 0, 0, steps=3)] == [4, 4, 4]
    assert ds.epoch == 0
    make_train_loader(ds, 4, 0, epoch=5)
    assert ds.epoch == 5


def test_average_per_image():
    idx, mean = average_per_image(torch.tensor([1.0, 3.0, 10.0, 2.0, 4.0]), torch.tensor([2, 2, 0, 5, 5]))
    assert idx.tolist() == [0, 2, 5] and mean.tolist() == [10.0, 2.0, 3.0]
    idx, mean = average_per_image(np.array([[1.0], [2.0]]), np.array([0, 0]))
    assert mean.tolist() == [1.5]
    with pytest.raises(DataError):
        average_per_image(torch.zeros(3), torch.zeros(2))


def test_manifest_without_columns_is_refused():
    with pytest.raises(DataError, match="lacks column"):
        TrainCrops(pd.DataFrame({"image_id": ["a"]}), 8, 1)
