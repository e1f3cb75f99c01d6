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
import sys
import time
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
from ..files import OutputLock, atomic_write, check_output_path, check_overwrite, describe_os_error
from ..matching import GATE_MIN_INLIER_RATIO, GATE_MIN_INLIERS, GATE_THRESHOLD, Matcher, related_pair
from .pairs import Pair


def write_features(
    path: str | os.PathLike,
    features: Iterable[tuple[str, dict[str, np.ndarray]]],
    overwrite: bool = False,
    model_name: str | None = None,
    weights: str | os.PathLike | None = None,
    options: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``(name, extract_image() dict)`` pairs to an hloc ``features.h5`` atomically.

    Provenance goes into the file's attributes (:func:`feature_provenance`). Nothing is left behind if the
    iterable raises midway (e.g. an unreadable image): the target is written only when every item succeeded.
    For a file written image by image and resumed after a crash, see :class:`H5Store`.
    """
    path = check_overwrite(path, overwrite)
    attrs = feature_provenance(model_name, weights, options)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(attrs)
            for name, pred in features:
                if name in f:
                    raise SilkError(f"duplicate image name {name!r} in {path}")
                _write_feature_group(f, name, pred)

    return atomic_write(path, write)


def feature_provenance(
    model_name: str | None = None, weights: str | os.PathLike | None = None, options: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The attributes of a ``features.h5``: ``silk_keypoints_version`` always; ``model`` (``model_name``),
    ``weights_sha256`` (of the file ``weights``) and ``detection_options`` (``options`` as JSON, None values
    left out) when given."""
    from .. import __version__

    attrs = {"silk_keypoints_version": __version__}
    if model_name is not None:
        attrs["model"] = model_name
    if weights is not None:
        attrs["weights_sha256"] = _sha256(weights)
    if options is not None:
        attrs["detection_options"] = json.dumps({k: v for k, v in options.items() if v is not None}, sort_keys=True)
    return attrs


def _write_feature_group(f: h5py.File, name: str, pred: Mapping[str, np.ndarray]) -> None:
    grp = f.create_group(name)
    grp.create_dataset("keypoints", data=pred["keypoints"].astype(np.float32))
    grp.create_dataset("scores", data=pred["scores"].astype(np.float32))
    grp.create_dataset("descriptors", data=pred["descriptors"].T.astype(np.float32))
    if pred.get("neighbour_descriptors") is not None:  # silk extract --neighbours (for silk adjust-keypoints)
        grp.create_dataset("neighbour_descriptors", data=np.asarray(pred["neighbour_descriptors"], dtype=np.float16))
        grp.create_dataset("neighbour_spacing", data=np.float32(np.asarray(pred["neighbour_spacing"]).reshape(-1)[0]))
    grp.create_dataset("image_size", data=np.asarray(pred["image_size"], dtype=np.int64))  # last: marks it complete


def _write_match_group(f: h5py.File, key: str, m0: np.ndarray, s0: np.ndarray) -> None:
    grp = f.create_group(key)
    grp.create_dataset("matches0", data=np.asarray(m0, dtype=np.int32))
    grp.create_dataset("matching_scores0", data=np.asarray(s0, dtype=np.float32))


FEATURE_KEYS = ("keypoints", "scores", "descriptors", "image_size")
MATCH_KEYS = ("matches0", "matching_scores0")


class H5Store:
    """An hloc ``features.h5`` or ``matches.h5`` written item by item, resumable after a crash.

    Opening takes the output's lock (:class:`~silk_keypoints.files.OutputLock`), then creates the file with
    ``attrs`` or, if it exists, resumes it: it must carry the same attributes (``silk_keypoints_version``
    aside), else :class:`SilkError` says what differs. Groups a killed run left incomplete (without every one
    of ``keys``) are removed, so :meth:`done` holds exactly the finished items. Each :meth:`write` is flushed to
    disk (at most every ``flush_seconds``), so a kill loses at most the items since. No temp file is used.

    Args:
        path: the ``.h5`` file.
        attrs: its provenance (:func:`feature_provenance`, or the matcher's for ``matches.h5``).
        keys: the datasets of a complete item (:data:`FEATURE_KEYS` or :data:`MATCH_KEYS`).
        overwrite: delete an existing file first and start over.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        attrs: Mapping[str, str],
        keys: Sequence[str] = FEATURE_KEYS,
        overwrite: bool = False,
        flush_seconds: float = 0.0,
    ) -> None:
        self.path = check_output_path(path)
        self.attrs, self.keys, self.flush_seconds = dict(attrs), tuple(keys), flush_seconds
        self._lock = OutputLock(self.path).acquire()
        try:
            if overwrite:
                self.path.unlink(missing_ok=True)
            self.file = self._open()
        except BaseException:
            self._lock.release()
            raise
        self.done = self._complete_items()
        self._last_flush = time.monotonic()

    def _open(self) -> h5py.File:
        if not self.path.exists():
            try:
                f = h5py.File(self.path, "w")
                f.attrs.update(self.attrs)
                f.flush()
            except OSError as e:
                self.path.unlink(missing_ok=True)
                raise SilkError(f"cannot write {self.path}: {describe_os_error(e)}") from None
            return f
        if not os.access(self.path, os.W_OK):
            raise SilkError(f"cannot write {self.path}: permission denied or read-only file system")
        try:
            f = h5py.File(self.path, "a")
        except OSError as e:
            raise SilkError(f"cannot resume {self.path}: not an HDF5 file or corrupt ({e}); --overwrite starts over") from None
        theirs = {k: str(v) for k, v in f.attrs.items() if k != "silk_keypoints_version"}
        ours = {k: v for k, v in self.attrs.items() if k != "silk_keypoints_version"}
        if theirs != ours:
            f.close()
            diff = "; ".join(_differences(theirs, ours))
            raise SilkError(f"{self.path} was made with other settings ({diff}): use another output, or "
                            "--overwrite to start over")
        return f

    def _complete_items(self) -> set[str]:
        done, partial = set(), []

        def visit(key: str, obj: Any) -> None:
            if not isinstance(obj, h5py.Group) or not any(isinstance(v, h5py.Dataset) for v in obj.values()):
                return
            if all(k in obj for k in self.keys):
                done.add(key)
            else:
                partial.append(key)

        self.file.visititems(visit)
        for key in partial:  # a killed run's unfinished item: redone
            del self.file[key]
        return done

    def add_features(self, name: str, pred: Mapping[str, np.ndarray]) -> None:
        """Add one image's :func:`~silk_keypoints.image_features.extract_image` dict (flushed)."""
        self._write(name, _write_feature_group, pred)

    def add_matches(self, name0: str, name1: str, m0: np.ndarray, s0: np.ndarray) -> None:
        """Add one pair's ``matches0`` and ``matching_scores0`` (flushed at most every ``flush_seconds``)."""
        self._write(names_to_pair(name0, name1), _write_match_group, m0, s0)

    def _write(self, key: str, write: Any, *args: Any) -> None:
        if key in self.done:
            raise SilkError(f"duplicate item {key!r} in {self.path}")
        try:
            write(self.file, key, *args)
            self.done.add(key)
            if time.monotonic() - self._last_flush >= self.flush_seconds:
                self.file.flush()
                self._last_flush = time.monotonic()
        except OSError as e:  # full disk, lost mount: the items written so far stay (a rerun resumes)
            raise SilkError(f"cannot write {self.path}: {describe_os_error(e)} (the {len(self.done)} items "
                            "written so far are kept; rerun to resume)") from None

    def copy_from(self, part: str | os.PathLike) -> int:
        """Copy the items of another store's file (a part written by one rank) that this one lacks -> count.

        Raises :class:`SilkError` if the part was made with other settings."""
        copied = 0
        with _open(part) as src:
            theirs = {k: str(v) for k, v in src.attrs.items() if k != "silk_keypoints_version"}
            ours = {k: v for k, v in self.attrs.items() if k != "silk_keypoints_version"}
            if theirs != ours:
                raise SilkError(f"{part} was made with other settings than {self.path}: cannot merge them")
            items: list[str] = []
            src.visititems(lambda key, obj: items.append(key)
                           if isinstance(obj, h5py.Group) and all(k in obj for k in self.keys) else None)
            for key in items:
                if key not in self.done:
                    self._write(key, _copy_group, src[key])
                    copied += 1
        self.file.flush()
        return copied

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            self._lock.release()

    def __enter__(self) -> H5Store:  # noqa: PYI034 - Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _datasets(f: h5py.File) -> list[str]:
    found: list[str] = []
    f.visititems(lambda key, obj: found.append(key) if isinstance(obj, h5py.Dataset) else None)
    return found


def _copy_group(f: h5py.File, key: str, src: h5py.Group) -> None:
    f.copy(src, key)


def _differences(theirs: Mapping[str, str], ours: Mapping[str, str]) -> list[str]:
    """``key: file 'a', this run 'b'`` for each differing attribute; inside JSON attributes, per option."""
    out = []
    for key in sorted(set(theirs) | set(ours)):
        a, b = theirs.get(key), ours.get(key)
        if a == b:
            continue
        try:
            da, db = json.loads(a), json.loads(b)
        except (TypeError, ValueError):
            da = db = None
        if isinstance(da, dict) and isinstance(db, dict):
            out += [f"{key} {k}: file {da.get(k)!r}, this run {db.get(k)!r}"
                    for k in sorted(set(da) | set(db)) if da.get(k) != db.get(k)]
        else:
            short = (lambda v: "none" if v is None else repr(v[:16] + "..." if len(v) > 19 else v))
            out.append(f"{key}: file {short(a)}, this run {short(b)}")
    return out


def merge_h5(
    parts: Sequence[str | os.PathLike], out: str | os.PathLike, kind: str = "features", overwrite: bool = False
) -> int:
    """Merge the part files of a sharded run (``kind`` "features" or "matches") into ``out`` -> items copied.

    Items ``out`` already has are kept (a merge can be rerun); the parts must share their provenance
    attributes, and ``out``'s when it exists. The parts are left in place.

    Raises:
        SilkError: no parts, a missing or unreadable part, a part of another kind or other settings.
    """
    if kind not in ("features", "matches"):
        raise SilkError(f"kind must be 'features' or 'matches', got {kind!r}")
    if not parts:
        raise SilkError("no part files to merge")
    keys = FEATURE_KEYS if kind == "features" else MATCH_KEYS
    for part in parts:
        with _open(part) as f:
            found = _datasets(f)
            if found and not any(k.rsplit("/", 1)[-1] == keys[0] for k in found):
                raise SilkError(f"{part} is not a {kind}.h5 file (no {keys[0]} datasets)")
            if part == parts[0]:
                attrs = {k: str(v) for k, v in f.attrs.items()}
    with H5Store(out, attrs, keys, overwrite=overwrite) as store:
        return sum(store.copy_from(p) for p in parts)


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
        if not isinstance(grp, h5py.Group):
            raise SilkError(f"{path}: {name!r} is not a group of keypoints and descriptors")
        out = {k: grp[k][()] for k in grp if isinstance(grp[k], h5py.Dataset)}
    where = f"{path}, image {name!r}"
    missing = [k for k in ("keypoints", "descriptors") if k not in out]
    if missing:
        raise SilkError(f"{where}: no {' and no '.join(missing)} (not a features.h5 of local features?)")
    kp, desc = np.asarray(out["keypoints"]), np.asarray(out["descriptors"])
    if kp.ndim != 2 or kp.shape[1] != 2 or desc.ndim != 2 or desc.shape[1] != kp.shape[0]:
        raise SilkError(f"{where}: keypoints must be (N, 2) and descriptors (D, N), got {kp.shape} and {desc.shape}")
    if not (np.issubdtype(desc.dtype, np.number) and np.isfinite(desc).all()):
        raise SilkError(f"{where}: descriptors must be finite numbers")
    out["descriptors"] = desc.T
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
                _write_match_group(f, key, m0, s0)

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
    gate: bool = True,
    **options: Any,
) -> Path:
    """Match the descriptors of image ``pairs`` of a ``features.h5`` and write hloc's ``matches.h5``.

    Args:
        features: hloc ``features.h5`` (e.g. from ``silk extract``).
        pairs: ``(name0, name1)`` image names of ``features``; duplicates (either order) are matched once.
        out: the ``matches.h5`` to write pair by pair (:class:`H5Store`); an existing one made with the same
            matcher settings is resumed (pairs in it, either order, are skipped), unless ``overwrite``.
        method, options: matching rule and its options, see :class:`silk_keypoints.matching.Matcher`.
            ``matching_scores0`` is hloc's ``(sim + 1) / 2`` for ``"mnn"``, the matcher's score otherwise
            (module doc).
        device: torch device for the matching (:func:`silk_keypoints.devices.resolve_device`).
        progress: show a progress bar.
        gate: the unrelated-pairs gate (``silk match-pairs``' default): a pair whose matched points no
            homography explains (:func:`~silk_keypoints.matching.related_pair`) is stored with no matches.

    Raises:
        SilkError: ``out`` made with other matcher settings or being written by another process, pairs naming
        images missing from ``features``, bad matcher options, a device this machine does not have.
    """
    from ..bulk import match_to_h5  # silk match-pairs' engine (it builds on this module)

    match_to_h5(features, pairs, out, Matcher(method, **options), resolve_device(device), overwrite, progress, gate,
                strict=True)
    return Path(out)


def matcher_provenance(matcher: Matcher, gate: bool = False) -> dict[str, str]:
    """The attributes of a ``matches.h5``: ``silk_keypoints_version`` and ``matcher`` (its rule and options,
    JSON; for ``"glue"`` also the ``glue_weights_sha256`` of its weight file; ``gate``: the unrelated-pairs gate
    of :func:`match_into`), which a resumed file must share."""
    from .. import __version__

    conf = {k: v for k, v in matcher.conf.items() if v is not None and k != "chunk_size"}  # chunks: same result
    conf.update(method=matcher.method, descriptor_scale=matcher.descriptor_scale)
    if gate:
        conf["gate"] = {"min_inliers": GATE_MIN_INLIERS, "min_inlier_ratio": GATE_MIN_INLIER_RATIO,
                        "homography_threshold": GATE_THRESHOLD}
    if matcher.glue is not None:
        if matcher.glue.source is None:
            raise SilkError("a matches.h5 records the SiLKGlue weight file: save the matcher (SiLKGlue.save) and "
                            "load it with glue_weights=FILE")
        conf["glue_weights_sha256"] = _sha256(matcher.glue.source)
    return {"silk_keypoints_version": __version__, "matcher": json.dumps(conf, sort_keys=True, default=str)}


def pair_done(done: set[str], pair: Pair) -> bool:
    """Whether ``pair`` (either order) is among the ``done`` keys of a :class:`H5Store` of matches."""
    return names_to_pair(*pair) in done or names_to_pair(pair[1], pair[0]) in done


def check_pair_names(features: str | os.PathLike, pairs: Sequence[Pair]) -> None:
    """Raise :class:`SilkError` if a pair names an image that ``features`` lacks."""
    missing = sorted({n for p in pairs for n in p} - set(feature_names(features)))
    if missing:
        raise SilkError(
            f"{len(missing)} image(s) of the pairs are not in {features}: {', '.join(missing[:5])}"
            + (", ..." if len(missing) > 5 else "")
        )


def match_into(
    store: H5Store,
    features: str | os.PathLike,
    pairs: Sequence[Pair],
    matcher: Matcher,
    device: torch.device | str = "cpu",
    advance: Any = None,
    gate: bool = False,
    strict: bool = True,
) -> tuple[int, list[tuple[str, str]]]:
    """Match ``pairs`` of ``features`` and add each to ``store`` (``advance(1)`` after each).

    Returns:
        the number of pairs that ``gate`` (the unrelated-pairs gate, :func:`~silk_keypoints.matching.related_pair`
        on the matched points) rejected: they are stored with no matches; and the ``("name0 name1", reason)`` of
        the pairs that failed (a :class:`SilkError`, e.g. a broken image group), not stored, unless ``strict``
        (raise at the first)."""
    cache: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()

    def feats(name: str) -> dict[str, torch.Tensor]:
        if name not in cache:
            cache[name] = matcher_input(read_features(features, name), device)
            if len(cache) > 64:
                cache.popitem(last=False)
        return cache[name]

    rejected, failed = 0, []
    for name0, name1 in pairs:
        try:
            pred = matcher({"image0": feats(name0), "image1": feats(name1)})
        except SilkError as e:
            if strict:
                raise
            tqdm.write(f"skipped {name0} {name1}: {e}", file=sys.stderr)
            failed.append((f"{name0} {name1}", str(e)))
            if advance is not None:
                advance(1)
            continue
        m0, s0 = pred["matches0"][0].cpu().numpy(), pred["matching_scores0"][0].cpu().numpy()
        if matcher.method == "mnn":  # hloc's nearest_neighbor score
            s0 = np.where(m0 >= 0, (s0 + 1) / 2, 0).astype(np.float32)
        if gate and not related_pair(pred["points0"][0], pred["points1"][0]):
            m0, s0 = np.full_like(m0, -1), np.zeros_like(s0)
            rejected += 1
        store.add_matches(name0, name1, m0, s0)
        if advance is not None:
            advance(1)
    return rejected, failed


def h5_items_equal(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two hloc files hold the same items with identical arrays and the same attributes
    (``silk_keypoints_version`` aside): e.g. a resumed or sharded run against an uninterrupted one."""

    def content(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        with _open(path) as f:
            items = {k: f[k][()] for k in _datasets(f)}
            attrs = {k: str(v) for k, v in f.attrs.items() if k != "silk_keypoints_version"}
        return items, attrs

    (ia, aa), (ib, ab) = content(a), content(b)
    return aa == ab and ia.keys() == ib.keys() and all(np.array_equal(ia[k], ib[k]) for k in ia)


def _open(path: str | os.PathLike) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise SilkError(f"file not found: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise SilkError(f"cannot read {path}: not an HDF5 file or corrupt ({e})") from None


def adjust_features(
    features: str | os.PathLike,
    matches: str | os.PathLike,
    pairs: Sequence[Pair],
    out: str | os.PathLike,
    overwrite: bool = False,
    min_inliers: int = 15,
    progress: bool = False,
) -> dict[str, int]:
    """A ``features.h5`` whose keypoints are adjusted below the cell size over the tracks of the verified
    matches of ``pairs`` (:func:`~silk_keypoints.refinement.adjust_keypoints`): what ``silk adjust-keypoints``
    writes, for hloc's triangulation and COLMAP imports from files.

    Each pair's matches (``matches.h5``) are verified by a fundamental matrix (USAC-MAGSAC, 3 px, RANSAC seed
    0: the same files give the same output); pairs with fewer than ``min_inliers`` inliers are left out. Only
    the keypoints of all images and one pair's matched rows are in memory at a time. ``features`` must hold
    neighbour descriptors (``silk extract --neighbours``). The output has every image of ``features`` with the same scores,
    descriptors and sizes, the adjusted keypoints, no neighbour descriptors (they describe the cells around
    the old positions) and the attributes of ``features`` plus ``keypoint_adjustment`` (JSON: the matches
    file's SHA-256, pairs used, ``min_inliers``).

    Returns:
        ``images``, ``pairs`` (given), ``verified_pairs`` (used), ``moved`` (keypoints that moved).
    """
    from ..geometry import estimate_fundamental
    from ..refinement import TrackOffsets

    out = check_overwrite(out, overwrite)
    if Path(out).resolve() == Path(features).resolve():
        raise SilkError(f"--out {out} is the input features file: write the adjusted features to a new file")
    names = feature_names(features)
    keypoints, spacing = {}, {}
    for name in names:  # one image at a time: only the keypoints stay in memory
        f = read_features(features, name)
        around = f.get("neighbour_descriptors")
        if around is None or "neighbour_spacing" not in f:
            raise SilkError(f"{features}, image {name!r}: no neighbour descriptors: extract with "
                            "silk extract --neighbours (Python: options neighbours=True)")
        if around.shape != (len(f["keypoints"]), 9, f["descriptors"].shape[1]):
            raise SilkError(f"{features}, image {name!r}: neighbour_descriptors must be (N, 9, D), got {around.shape}")
        keypoints[name], spacing[name] = f["keypoints"], float(np.asarray(f["neighbour_spacing"]).reshape(-1)[0])
    unknown = sorted({n for pair in pairs for n in pair} - set(names))
    if unknown:
        raise SilkError(f"{len(unknown)} image(s) of the pairs are not in {features}, e.g. {unknown[0]!r}")
    index = {n: i for i, n in enumerate(names)}
    tracks = TrackOffsets([len(keypoints[n]) for n in names])
    used = 0
    with _open(features) as f:
        for a, b in tqdm(pairs, desc="adjust", unit="pair", disable=not progress):
            m, _ = read_matches(matches, a, b)
            if len(m) < min_inliers:
                continue
            fit = estimate_fundamental(keypoints[a][m[:, 0]], keypoints[b][m[:, 1]], 3.0, seed=0)
            inliers = np.asarray(fit.inliers, dtype=bool)
            if not fit.success or inliers.sum() < min_inliers:
                continue
            m = tracks.check(index[a], index[b], m[inliers])
            used += 1
            for (x, ix), (y, iy) in (((a, m[:, 0]), (b, m[:, 1])), ((b, m[:, 1]), (a, m[:, 0]))):
                tracks.add(index[x], ix, torch.from_numpy(_rows(f[x]["neighbour_descriptors"], ix.numpy())),
                           torch.from_numpy(_rows(f[y]["descriptors"], iy.numpy(), axis=1).T))
    with _open(features) as f:
        attrs = dict(f.attrs)
    attrs["keypoint_adjustment"] = json.dumps({"matches_sha256": _sha256(matches), "pairs": used,
                                               "min_inliers": min_inliers}, sort_keys=True)
    moved = 0

    def write(tmp: Path) -> None:
        nonlocal moved
        with h5py.File(tmp, "w") as g:
            g.attrs.update(attrs)
            for name in names:
                pred = {k: v for k, v in read_features(features, name).items() if not k.startswith("neighbour")}
                kpts = (keypoints[name] + spacing[name] * tracks.offsets(index[name]).numpy()).astype(np.float32)
                moved += int((kpts != keypoints[name].astype(np.float32)).any(axis=1).sum())
                _write_feature_group(g, name, {**pred, "keypoints": kpts})

    atomic_write(out, write)
    return {"images": len(names), "pairs": len(pairs), "verified_pairs": used, "moved": moved}


def _rows(dataset: h5py.Dataset, index: np.ndarray, axis: int = 0) -> np.ndarray:
    """``dataset`` at ``index`` (any order, repeats allowed) along ``axis``, as float32, reading only those
    rows (h5py needs increasing indices)."""
    unique, inverse = np.unique(index, return_inverse=True)
    rows = dataset[unique] if axis == 0 else dataset[:, unique]
    return np.take(np.asarray(rows, dtype=np.float32), inverse, axis=axis)
