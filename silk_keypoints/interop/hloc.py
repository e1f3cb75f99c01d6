"""hloc's file layouts.

``features.h5``: one group per image name (its path relative to the image root, '/' kept as nested
groups, as hloc writes them) with ``keypoints`` (N, 2) float (x, y; pixel centres at integers, as hloc),
``scores`` (N,), ``descriptors`` (D, N) and ``image_size`` (2,) as (W, H).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from ..errors import SilkError
from ..model.checkpoint import atomic_write


def write_features(
    path: str | os.PathLike, features: Iterable[tuple[str, dict[str, np.ndarray]]], overwrite: bool = False
) -> Path:
    """Write ``(name, extract_image() dict)`` pairs to an hloc ``features.h5`` atomically.

    Nothing is left behind if the iterable raises midway (e.g. an unreadable image): the target is
    written only when every item succeeded.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise SilkError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            for name, pred in features:
                if name in f:
                    raise SilkError(f"duplicate image name {name!r} in {path}")
                grp = f.create_group(name)
                grp.create_dataset("keypoints", data=pred["keypoints"].astype(np.float32))
                grp.create_dataset("scores", data=pred["scores"].astype(np.float32))
                grp.create_dataset("descriptors", data=pred["descriptors"].T.astype(np.float32))
                grp.create_dataset("image_size", data=np.asarray(pred["image_size"], dtype=np.int64))

    return atomic_write(path, write)


def read_features(path: str | os.PathLike, name: str) -> dict[str, np.ndarray]:
    """One image's features from an hloc ``features.h5`` (``descriptors`` returned as (N, D))."""
    with h5py.File(path, "r") as f:
        if name not in f:
            raise SilkError(f"image {name!r} not in {path}")
        grp = f[name]
        out = {k: grp[k][()] for k in grp.keys()}
    out["descriptors"] = out["descriptors"].T
    return out
