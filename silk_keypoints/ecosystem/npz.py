"""One ``.npz`` file per image, for tools that read neither hloc nor COLMAP files.

Arrays in each file (those of :func:`silk_keypoints.extract_image`): ``keypoints`` (N, 2) float32 (x, y),
pixel centres at integers (add 0.5 for COLMAP's convention), ``scores`` (N,) float32, ``descriptors`` (N, D)
float32 unit norm, ``image_size`` (2,) int64 as (W, H). Image ``dir/a.jpg`` goes to ``OUT/dir/a.jpg.npz``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import SilkError
from ..files import atomic_write, check_overwrite, make_dir

NPZ_KEYS = ("keypoints", "scores", "descriptors", "image_size")


def npz_path(out_dir: str | os.PathLike, name: str) -> Path:
    """Where :func:`export_npz` writes image ``name``: ``out_dir / (name + ".npz")``."""
    return Path(out_dir) / f"{name}.npz"


def write_npz(path: str | os.PathLike, features: dict[str, np.ndarray], overwrite: bool = False) -> Path:
    """Write one image's features (an :func:`~silk_keypoints.extract_image` dict) to ``path`` atomically."""
    path = check_overwrite(path, overwrite)
    missing = [k for k in NPZ_KEYS if k not in features]
    if missing:
        raise SilkError(f"features for {path.name} lack {missing}")
    arrays = {
        "keypoints": np.asarray(features["keypoints"], dtype=np.float32),
        "scores": np.asarray(features["scores"], dtype=np.float32),
        "descriptors": np.asarray(features["descriptors"], dtype=np.float32),
        "image_size": np.asarray(features["image_size"], dtype=np.int64),
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a file written by :func:`write_npz` -> dict of its four arrays."""
    path = Path(path)
    if not path.is_file():
        raise SilkError(f"file not found: {path}")
    try:
        with np.load(path) as f:
            out = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise SilkError(f"cannot read {path}: not an .npz file or corrupt ({e})") from None
    missing = [k for k in NPZ_KEYS if k not in out]
    if missing:
        raise SilkError(f"{path} lacks {missing}: not a silk-keypoints features file")
    return out


def export_npz(
    names: Sequence[str],
    features: Callable[[str], dict[str, np.ndarray]],
    out_dir: str | os.PathLike,
    overwrite: bool = False,
    progress: bool = False,
) -> list[Path]:
    """Write ``features(name)`` to ``out_dir/<name>.npz`` for each of ``names`` (sub-folders created).

    Existing files are checked before anything is computed or written; each file is written atomically, so an
    error midway (e.g. an unreadable image) leaves complete files of the images before it and nothing else.
    ``progress`` shows a progress bar. Returns the paths written.
    """
    paths = [npz_path(out_dir, name) for name in names]
    if len(set(paths)) != len(paths):
        raise SilkError("duplicate image names: two images would be written to the same .npz file")
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise SilkError(f"{existing[0]} exists{more}: pass --overwrite (Python: overwrite=True) to replace it")
    for path, name in tqdm(list(zip(paths, names)), desc="export", unit="img", disable=not progress):
        make_dir(path.parent)
        write_npz(path, features(name), overwrite=True)
    return paths
