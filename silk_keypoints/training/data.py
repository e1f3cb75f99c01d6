"""Training images: a recursive image folder, random crops, a deterministic train/validation split.

Items are RGB ``uint8`` crops (3, crop, crop); the trainer turns them to float, warps, augments and converts
them to the model's channels (the original converts to grayscale after augmentation).

Randomness: the crop of image ``i`` in epoch ``e`` depends only on ``(seed, e, i)``, so runs are reproducible
with any number of loader workers and a resumed run sees the same crops.
"""

from __future__ import annotations

import math
import os
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler

from ..errors import SilkError
from ..files import MAX_PIXELS
from ..io import list_images, load_image

SMALL_IMAGE_POLICIES = ("pad", "skip", "error")


def split_train_val(paths: Sequence[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """Split files into (train, validation): validation iff ``zlib.crc32(file name) % 10 == 0`` (~10 %).

    The rule looks at each file's own name only, so adding or removing files never moves another file
    across the split. If no file would be left for training, all of them train (and validate).
    """
    paths = [Path(p) for p in paths]
    val = [p for p in paths if zlib.crc32(p.name.encode("utf-8")) % 10 == 0]
    train = [p for p in paths if zlib.crc32(p.name.encode("utf-8")) % 10 != 0]
    return (train or list(val)), val


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) read from the file header, None if the file is not a readable image."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # noqa: BLE001 - any decoder failure means "not an image"
        return None


def scan_images(root: str | os.PathLike, crop: int, small_images: str = "pad") -> list[Path]:
    """Readable images under ``root`` (recursive), one warning per unreadable file.

    ``small_images``: what to do with images smaller than ``crop`` on a side: ``"pad"`` (zero-pad the crop, as
    the original), ``"skip"`` (leave out, one warning in all) or ``"error"`` (raise).

    Raises:
        SilkError: no folder, no readable image, or small images with ``small_images="error"``.
    """
    if small_images not in SMALL_IMAGE_POLICIES:
        raise SilkError(f"small_images must be one of {SMALL_IMAGE_POLICIES}, got {small_images!r}")
    files = list_images(root)
    kept, small = [], []
    for path in files:
        size = image_size(path)
        if size is None:
            warnings.warn(f"skipping unreadable image {path}", stacklevel=2)
            continue
        if size[0] * size[1] > MAX_PIXELS:
            warnings.warn(f"skipping image {path}: {size[0]}x{size[1]} is more than {MAX_PIXELS / 1e6:g} MP",
                          stacklevel=2)
            continue
        if min(size) < crop:
            small.append((path, size))
            if small_images != "pad":
                continue
        kept.append(path)
    if small and small_images == "error":
        listing = ", ".join(f"{p.name} ({w}x{h})" for p, (w, h) in small[:5])
        raise SilkError(
            f"{len(small)} images are smaller than the {crop}x{crop} crop (e.g. {listing}): "
            "use a smaller --crop, or small_images='pad' / 'skip'"
        )
    if small and small_images == "skip":
        warnings.warn(f"skipping {len(small)} images smaller than the {crop}x{crop} crop", stacklevel=2)
    if not kept:
        raise SilkError(
            f"no usable training images in {root}: found {len(files)} files with image suffixes"
            + (f", {len(small)} smaller than the crop" if small else "")
        )
    return kept


def crop_image(image: np.ndarray, crop: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """A random (``rng``) or centred (``rng=None``) ``crop x crop`` window of an (H, W, 3) image.

    Sides smaller than ``crop`` are zero-padded (centred), as the original's ``pad_if_needed``.
    """
    h, w = image.shape[:2]
    if h < crop or w < crop:
        ph, pw = max(0, crop - h), max(0, crop - w)
        image = np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
        h, w = image.shape[:2]
    if rng is None:
        y, x = (h - crop) // 2, (w - crop) // 2
    else:
        y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    return image[y : y + crop, x : x + crop]


class ImageCrops(Dataset):
    """Random RGB crops of image files. ``dataset[(index, epoch)]`` -> uint8 tensor (3, crop, crop).

    A file that fails to decode is reported once (per process) and replaced by the next file.
    """

    def __init__(self, paths: Sequence[Path], crop: int = 164, seed: int = 0) -> None:
        if not paths:
            raise SilkError("no images to train on")
        self.paths = list(paths)
        self.crop = crop
        self.seed = seed
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int | tuple[int, int]) -> torch.Tensor:
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        for k in range(len(self.paths)):
            i = (index + k) % len(self.paths)
            if i in self._bad:
                continue
            try:
                image = load_image(self.paths[i])
            except SilkError as e:
                self._bad.add(i)
                warnings.warn(f"skipping unreadable image: {e}", stacklevel=2)
                continue
            rng = np.random.default_rng([self.seed, epoch, i])
            crop = crop_image(image, self.crop, rng)
            return torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)
        raise SilkError("none of the training images can be decoded")


class EpochSampler(DistributedSampler):
    """:class:`DistributedSampler` yielding ``(index, epoch)`` items, able to start mid-epoch (for resume)."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.start = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())[self.start :]
        return iter([(i, self.epoch) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


def batches_per_epoch(num_images: int, batch_size: int, world_size: int = 1) -> int:
    """Full batches per epoch and process (the last partial batch is dropped)."""
    per_rank = math.ceil(num_images / world_size)
    if per_rank < batch_size:
        raise SilkError(
            f"{num_images} training images are too few for batch size {batch_size} on {world_size} process(es)"
        )
    return per_rank // batch_size
