"""Crop datasets, the epoch sampler and DataLoader builders used by the trainer.

Randomness is keyed, not streamed: the crop and flips of training item ``i`` in epoch ``e`` come
from ``numpy.random.default_rng([seed, e, i])``, and the test crops of an image from a hash of
``(seed, image_id)``. Results therefore do not depend on the number of workers, on the process,
or on where a resumed run restarts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from drx.data.images import ResizeConfig, check_fits, load_image, prepared_resize, resize_image
from drx.data.transforms import crop_array, fixed_crop_positions, random_crop_position, rng_seed, to_tensor
from drx.errors import DataError


def _manifest_columns(manifest: pd.DataFrame) -> tuple[list[str], list[str], np.ndarray]:
    missing = [c for c in ("image_id", "path", "mos") if c not in manifest.columns]
    if missing:
        raise DataError(f"manifest lacks column(s) {missing}; found {list(manifest.columns)}")
    if len(manifest) == 0:
        raise DataError("manifest is empty: no images to load")
    ids = [str(x) for x in manifest["image_id"].tolist()]
    paths = [str(x) for x in manifest["path"].tolist()]
    mos = manifest["mos"].to_numpy(dtype=np.float64)
    return ids, paths, mos


class _ImageSource:
    """Decodes (and optionally keeps) the resized uint8 images of a manifest.

    ``images`` (optional, one entry per manifest row): an RGB PIL image already in memory, used in
    place of decoding the row's path (None: decode the path), then resized like a decoded file.
    """

    def __init__(self, manifest: pd.DataFrame, resize: ResizeConfig | dict[str, Any] | None, cache_images: bool,
                 prepared: ResizeConfig | dict[str, Any] | None = None, images: Sequence[Image.Image | None] | None = None):
        self.ids, self.paths, self.mos = _manifest_columns(manifest)
        if images is not None and len(images) != len(self.ids):
            raise DataError(f"{len(images)} in-memory images for a manifest of {len(self.ids)} rows: give one entry (or None) per row")
        self.images = images
        if isinstance(resize, dict):
            resize = ResizeConfig.model_validate(resize)
        if isinstance(prepared, dict):
            prepared = ResizeConfig.model_validate(prepared)
        self.resize = resize
        self.prepared = prepared
        self.cache_images = cache_images
        # Filled lazily in each worker process (a copy per worker; fine for small benchmarks).
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def array(self, index: int) -> np.ndarray:
        """The decoded, resized image `index` as a uint8 HxWx3 array."""
        if self.cache_images:
            arr = self._cache.get(index)
            if arr is not None:
                return arr
        given = self.images[index] if self.images is not None else None
        key = None
        if self.cache_images and given is None:
            st = os.stat(self.paths[index])  # a file rewritten in place is decoded again
            key = (self.paths[index], st.st_mtime_ns, st.st_size, repr(self.resize), repr(self.prepared))
            arr = _PROCESS_CACHE.get(key)
            if arr is not None:
                self._cache[index] = arr
                return arr
        img = given if given is not None else load_image(self.paths[index])
        if self.prepared is not None:  # the prepared copy's resize first (shrink-only, as `prepare` did)
            img = resize_image(img, prepared_resize(img.width, img.height, self.prepared))
        img = resize_image(img, self.resize)
        arr = np.asarray(img, dtype=np.uint8)
        if self.cache_images:
            self._cache[index] = arr
            if key is not None:
                _PROCESS_CACHE.put(key, arr)
        return arr


class _DecodedCache:
    """Decoded images kept for the life of the process, across the datasets and trials it builds
    (``data.cache_images``): trials run one after another in one process (``drx bench learn``, a
    reused Ray worker, the tests) decode each file once. Bounded by ``DRX_IMAGE_CACHE_MB`` (default
    2048 MB; 0 turns it off); when full, new images are simply not kept. Arrays are read-only, so a
    trial cannot change another's pixels."""

    def __init__(self) -> None:
        self._arrays: dict[tuple, np.ndarray] = {}
        self._bytes = 0

    def _limit(self) -> int:
        return int(float(os.environ.get("DRX_IMAGE_CACHE_MB", "2048")) * 2**20)

    def get(self, key: tuple) -> np.ndarray | None:
        return self._arrays.get(key)

    def put(self, key: tuple, arr: np.ndarray) -> None:
        if self._bytes + arr.nbytes <= self._limit():
            arr.flags.writeable = False
            self._arrays[key] = arr
            self._bytes += arr.nbytes


_PROCESS_CACHE = _DecodedCache()


class TrainCrops(Dataset):
    """Random training crops: ``crops_per_image`` items per image.

    Item i -> (image [3,S,S] float32 ImageNet-normalised, target float32 scalar, image_index int64),
    with image_index = i // crops_per_image (the manifest row).
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        crop_size: int,
        crops_per_image: int,
        resize: ResizeConfig | dict[str, Any] | None = None,
        hflip: bool = True,
        vflip: bool = False,
        seed: int = 0,
        target_fn: Callable[[float], float] | None = None,
        cache_images: bool = False,
    ):
        if crop_size < 1 or crops_per_image < 1:
            raise DataError(f"crop_size and crops_per_image must be >= 1, got {crop_size} and {crops_per_image}")
        self.source = _ImageSource(manifest, resize, cache_images)
        self.crop_size = int(crop_size)
        self.crops_per_image = int(crops_per_image)
        self.hflip = hflip
        self.vflip = vflip
        self.seed = int(seed)
        self.target_fn = target_fn
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops and flips items are drawn from."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.source) * self.crops_per_image

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} out of range for {len(self)} training crops")
        index = i // self.crops_per_image
        arr = self.source.array(index)
        h, w = arr.shape[:2]
        check_fits(self.source.ids[index], h, w, self.crop_size, self.source.paths[index])
        rng = np.random.default_rng([rng_seed(self.seed), rng_seed(self.epoch), i])
        top, left = random_crop_position(h, w, self.crop_size, rng)
        # Always draw both flips so the stream of draws does not depend on the flags.
        do_h, do_v = rng.random() < 0.5, rng.random() < 0.5
        crop = crop_array(arr, top, left, self.crop_size)
        if self.hflip and do_h:
            crop = crop[:, ::-1]
        if self.vflip and do_v:
            crop = crop[::-1, :]
        mos = float(self.source.mos[index])
        target = self.target_fn(mos) if self.target_fn is not None else mos
        return (
            to_tensor(crop),
            torch.tensor(target, dtype=torch.float32),
            torch.tensor(index, dtype=torch.int64),
        )


class EvalCrops(Dataset):
    """Fixed evaluation crops: ``crops_per_image`` items per image at positions fixed by
    ``(seed, image_id)``, no flips.

    Item i -> (image [3,S,S] float32, mos float32 scalar (raw), image_index int64).
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        crop_size: int,
        crops_per_image: int,
        resize: ResizeConfig | dict[str, Any] | None = None,
        seed: int = 0,
        cache_images: bool = False,
        prepared: ResizeConfig | dict[str, Any] | None = None,
        images: Sequence[Image.Image | None] | None = None,
    ):
        # `prepared`: the resize a `drx data prepare` copy applied to the training images, repeated
        # (shrink-only) before `resize` for original-size images given to `drx predict`.
        # `images`: in-memory RGB images scored in place of decoding the rows' paths (drx.load_scorer).
        if crop_size < 1 or crops_per_image < 1:
            raise DataError(f"crop_size and crops_per_image must be >= 1, got {crop_size} and {crops_per_image}")
        self.source = _ImageSource(manifest, resize, cache_images, prepared, images)
        self.crop_size = int(crop_size)
        self.crops_per_image = int(crops_per_image)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.source) * self.crops_per_image

    def positions(self, index: int) -> list[tuple[int, int]]:
        """The fixed (top, left) crop positions of image `index`."""
        arr = self.source.array(index)
        h, w = arr.shape[:2]
        check_fits(self.source.ids[index], h, w, self.crop_size, self.source.paths[index])
        return fixed_crop_positions(h, w, self.crop_size, self.crops_per_image, self.seed, self.source.ids[index])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} out of range for {len(self)} evaluation crops")
        index, k = divmod(i, self.crops_per_image)
        arr = self.source.array(index)
        h, w = arr.shape[:2]
        check_fits(self.source.ids[index], h, w, self.crop_size, self.source.paths[index])
        top, left = fixed_crop_positions(h, w, self.crop_size, self.crops_per_image, self.seed, self.source.ids[index])[k]
        return (
            to_tensor(crop_array(arr, top, left, self.crop_size)),
            torch.tensor(float(self.source.mos[index]), dtype=torch.float32),
            torch.tensor(index, dtype=torch.int64),
        )


class EpochSampler(Sampler[int]):
    """Seeded item order for one epoch.

    steps=None: one shuffled pass over range(n) (permutation from ``default_rng([seed, epoch])``).
    steps=k: exactly k * batch_size indices taken from concatenated seeded permutations, so an
    epoch is a fixed number of optimiser steps whatever the dataset size.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, steps: int | None = None):
        if n < 1:
            raise DataError("cannot sample from an empty dataset (0 items)")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if steps is not None and steps < 1:
            raise DataError(f"steps must be >= 1 or None, got {steps}")
        self.n, self.batch_size, self.seed, self.epoch, self.steps = n, batch_size, seed, epoch, steps

    def __iter__(self) -> Iterator[int]:
        base = [rng_seed(self.seed), rng_seed(self.epoch)]
        if self.steps is None:
            yield from np.random.default_rng(base).permutation(self.n).tolist()
            return
        # Permutation k of the epoch comes from default_rng([seed, epoch, k]); generated lazily
        # so a large step budget costs no memory up front.
        left, k = self.steps * self.batch_size, 0
        while left > 0:
            chunk = np.random.default_rng([*base, k]).permutation(self.n)[:left]
            yield from chunk.tolist()
            left -= len(chunk)
            k += 1

    def __len__(self) -> int:
        return self.n if self.steps is None else self.steps * self.batch_size


def _worker_init(_: int) -> None:
    # Each worker already runs in parallel; intra-op threads would oversubscribe the cores.
    torch.set_num_threads(1)


def make_train_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    epoch: int,
    steps: int | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader for one training epoch (build a new one per epoch).

    Sets the dataset's epoch, orders items with :class:`EpochSampler`, and drops the last
    incomplete batch unless the dataset is smaller than one batch.
    """
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    n = len(dataset)  # type: ignore[arg-type]
    sampler = EpochSampler(n, batch_size, seed, epoch, steps)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=n >= batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if num_workers > 0 else None,
    )


def make_eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over every evaluation crop in order (no shuffling, nothing dropped)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if num_workers > 0 else None,
    )


def average_per_image(pred: torch.Tensor | np.ndarray, image_index: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean prediction per image.

    pred [N] (or [N,1]) and image_index [N] -> (indices [K] sorted unique image indices,
    means [K] float32 mean of the predictions of each image's crops).
    """
    p = torch.as_tensor(pred).detach()
    idx = torch.as_tensor(image_index).detach().to(torch.int64)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim != 1 or idx.ndim != 1 or p.shape[0] != idx.shape[0]:
        raise DataError(f"average_per_image expects pred [N] and image_index [N], got {tuple(p.shape)} and {tuple(idx.shape)}")
    p = p.to(torch.float64).cpu()
    idx = idx.cpu()
    uniq, inverse = torch.unique(idx, sorted=True, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, p)
    counts = torch.bincount(inverse, minlength=len(uniq)).to(torch.float64)
    return uniq, (sums / counts).to(torch.float32)
