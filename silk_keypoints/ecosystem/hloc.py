"""hloc's file layouts.

``features.h5``: one group per image name (its path relative to the image root, '/' kept as nested
groups, as hloc writes them) with ``keypoints`` (N, 2) float (x, y; pixel centres at integers, as hloc),
``scores`` (N,), ``descriptors`` (D, N) and ``image_size`` (2,) as (W, H). The file's attributes record
where the features come from (:func:`write_features`): ``silk_keypoints_version`` and, when known, ``model``,
``weights_sha256`` and ``detection_options`` (JSON).

``matches.h5``: one group per pair, named by :func:`names_to_pair` (``name0/name1`` with '/' inside names
replaced by '-', so two nested groups), with ``matches0`` (N0,) int, the index of the matched keypoint of
image 1 or -1, and ``matching_scores0`` (N0,) float, 0 where unmatched. hloc's readers also find a pair
stored in the other order. Scores follow hloc's matchers where hloc has the same rule: mutual nearest
neighbours store ``(sim + 1) / 2`` of the cosine similarity ``sim`` (in [0, 1], as hloc's
``nearest_neighbor`` matcher, so its ``min_match_score`` means the same); the ratio test stores
``1 - ratio`` and the double softmax its probability.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm import tqdm

from ..devices import resolve_device
from ..errors import SilkError
from ..files import atomic_write, check_overwrite
from ..matching import Matcher
from .pairs import Pair, unique_pairs


def write_features(
    path: str | os.PathLike,
    features: Iterable[tuple[str, dict[str, np.ndarray]]],
    overwrite: bool = False,
    model_name: str | None = None,
    weights: str | os.PathLike | None = None,
    options: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``(name, extract_image() dict)`` pairs to an hloc ``features.h5`` atomically.

    Provenance goes into the file's attributes: ``silk_keypoints_version`` always; ``model`` (``model_name``),
    ``weights_sha256`` (of the file ``weights``) and ``detection_options`` (``options`` as JSON, None values
    left out) when given. Nothing is left behind if the iterable raises midway (e.g. an unreadable image):
    the target is written only when every item succeeded.
    """
    from .. import __version__

    path = check_overwrite(path, overwrite)
    attrs = {"silk_keypoints_version": __version__}
    if model_name is not None:
        attrs["model"] = model_name
    if weights is not None:
        attrs["weights_sha256"] = _sha256(weights)
    if options is not None:
        attrs["detection_options"] = json.dumps({k: v for k, v in options.items() if v is not None}, sort_keys=True)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(attrs)
            for name, pred in features:
                if name in f:
                    raise SilkError(f"duplicate image name {name!r} in {path}")
                grp = f.create_group(name)
                grp.create_dataset("keypoints", data=pred["keypoints"].astype(np.float32))
                grp.create_dataset("scores", data=pred["scores"].astype(np.float32))
                grp.create_dataset("descriptors", data=pred["descriptors"].T.astype(np.float32))
                grp.create_dataset("image_size", data=np.asarray(pred["image_size"], dtype=np.int64))

    return atomic_write(path, write)


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_features(path: str | os.PathLike, name: str) -> dict[str, np.ndarray]:
    """One image's features from an hloc ``features.h5`` (``descriptors`` returned as (N, D))."""
    with _open(path) as f:
        if name not in f:
            raise SilkError(f"image {name!r} not in {path}")
        grp = f[name]
        out = {k: grp[k][()] for k in grp}
    out["descriptors"] = out["descriptors"].T
    return out


def matcher_input(feats: Mapping[str, np.ndarray], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A :class:`~silk_keypoints.matching.Matcher` input of one image's :func:`read_features` dict: float
    ``descriptors`` (N, D), and ``keypoints`` (N, 2) and ``image_size`` (2,) where the file has them."""
    out = {k: torch.from_numpy(np.asarray(feats[k])).float().to(device)
           for k in ("descriptors", "keypoints", "image_size") if k in feats}
    return out


def feature_names(path: str | os.PathLike) -> list[str]:
    """Sorted names of the images in a ``features.h5`` (groups, nested or not, with ``keypoints``)."""
    names = []
    with _open(path) as f:
        f.visititems(
            lambda key, obj: names.append(key) if isinstance(obj, h5py.Group) and "keypoints" in obj else None
        )
    return sorted(names)


def names_to_pair(name0: str, name1: str) -> str:
    """hloc's key of a pair in ``matches.h5``: ``name0 + '/' + name1``, '/' in the names replaced by '-'."""
    return "/".join((name0.replace("/", "-"), name1.replace("/", "-")))


def write_matches(
    path: str | os.PathLike,
    matches: Iterable[tuple[str, str, np.ndarray, np.ndarray]],
    overwrite: bool = False,
) -> Path:
    """Write hloc's ``matches.h5`` atomically from ``(name0, name1, matches0, matching_scores0)`` items.

    ``matches0`` (N0,) int: for each keypoint of image 0 the index of its match in image 1, or -1;
    ``matching_scores0`` (N0,) float, 0 where unmatched. Nothing is written unless every item succeeds.
    """
    path = check_overwrite(path, overwrite)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            for name0, name1, m0, s0 in matches:
                key = names_to_pair(name0, name1)
                if key in f:
                    raise SilkError(f"duplicate pair ({name0}, {name1}) for {path}")
                grp = f.create_group(key)
                grp.create_dataset("matches0", data=np.asarray(m0, dtype=np.int32))
                grp.create_dataset("matching_scores0", data=np.asarray(s0, dtype=np.float32))

    return atomic_write(path, write)


def read_matches(path: str | os.PathLike, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """Matches of a pair from hloc's ``matches.h5``, as hloc's ``get_matches`` returns them.

    Returns:
        ``matches`` (K, 2) int ``[keypoint index in name0, keypoint index in name1]`` (also when the file
        stores the pair as ``(name1, name0)``) and ``scores`` (K,).
    """
    with _open(path) as f:
        key, reverse = names_to_pair(name0, name1), False
        if key not in f:
            key, reverse = names_to_pair(name1, name0), True
            if key not in f:
                raise SilkError(
                    f"pair ({name0}, {name1}) not in {path}: was it matched with another pairs file?"
                )
        m0 = f[key]["matches0"][()]
        s0 = f[key]["matching_scores0"][()]
    idx = np.where(m0 != -1)[0]
    matches = np.stack([idx, m0[idx]], -1)
    if reverse:
        matches = matches[:, ::-1].copy()
    return matches, s0[idx]


def match_pairs(
    features: str | os.PathLike,
    pairs: Sequence[Pair],
    out: str | os.PathLike,
    method: str = "mnn",
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = False,
    **options: Any,
) -> Path:
    """Match the descriptors of image ``pairs`` of a ``features.h5`` and write hloc's ``matches.h5``.

    Args:
        features: hloc ``features.h5`` (e.g. from ``silk extract``).
        pairs: ``(name0, name1)`` image names of ``features``; duplicates (either order) are matched once.
        out: the ``matches.h5`` to write (atomically; refused if it exists unless ``overwrite``).
        method, options: matching rule and its options, see :class:`silk_keypoints.matching.Matcher`.
            ``matching_scores0`` is hloc's ``(sim + 1) / 2`` for ``"mnn"``, the matcher's score otherwise
            (module doc).
        device: torch device for the matching (:func:`silk_keypoints.devices.resolve_device`).
        progress: show a progress bar.

    Raises:
        SilkError: ``out`` exists, pairs naming images missing from ``features``, bad matcher options, a device
        this machine does not have.
    """
    device = resolve_device(device)
    out = check_overwrite(out, overwrite)
    known = set(feature_names(features))
    missing = sorted({n for p in pairs for n in p} - known)
    if missing:
        raise SilkError(
            f"{len(missing)} image(s) of the pairs are not in {features}: {', '.join(missing[:5])}"
            + (", ..." if len(missing) > 5 else "")
        )
    matcher = Matcher(method, **options)
    cache: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()

    def feats(name: str) -> dict[str, torch.Tensor]:
        if name not in cache:
            cache[name] = matcher_input(read_features(features, name), device)
            if len(cache) > 64:
                cache.popitem(last=False)
        return cache[name]

    def results():
        for name0, name1 in tqdm(unique_pairs(pairs), desc="match", unit="pair", disable=not progress):
            pred = matcher({"image0": feats(name0), "image1": feats(name1)})
            m0, s0 = pred["matches0"][0].cpu().numpy(), pred["matching_scores0"][0].cpu().numpy()
            if method == "mnn":  # hloc's nearest_neighbor score
                s0 = np.where(m0 >= 0, (s0 + 1) / 2, 0).astype(np.float32)
            yield name0, name1, m0, s0

    return write_matches(out, results(), overwrite=overwrite)


def _open(path: str | os.PathLike) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise SilkError(f"file not found: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise SilkError(f"cannot read {path}: not an HDF5 file or corrupt ({e})") from None
