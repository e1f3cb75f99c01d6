"""Keypoints and two-view matches into a COLMAP database (sqlite3), ready for ``colmap mapper``.

Conventions (COLMAP's):

* keypoints are stored as float32 (N, 2) rows (x, y) with the *corner* of the top-left pixel at (0, 0), so
  ``colmap = ours + 0.5`` (ours: pixel centres at integers);
* a pair of images ``image_id1 < image_id2`` has ``pair_id = image_id1 * 2147483647 + image_id2``; its matches
  are uint32 (K, 2) rows ``[keypoint index in image_id1, keypoint index in image_id2]``;
* ``matches`` holds the raw matches, ``two_view_geometries`` the geometrically verified ones, which is what
  the mapper reads.

Verification is COLMAP's own (pycolmap's ``estimate_two_view_geometry``, what ``colmap matches_importer`` and
hloc's ``verify_matches`` run per pair, with the cameras of the database): it labels each pair
``CALIBRATED`` / ``UNCALIBRATED`` / ``PLANAR`` / ``PANORAMIC`` / ``PLANAR_OR_PANORAMIC`` / ``WATERMARK`` and
keeps the inliers of that model. It needs pycolmap (``pip install "silk-keypoints[colmap]"``); without
verification only the raw matches are written, for ``colmap matches_importer`` to verify.

A new database gets the schema of COLMAP's ``scripts/python/database.py`` (tables ``cameras``, ``images``,
``keypoints``, ``descriptors``, ``matches``, ``two_view_geometries``), which every COLMAP release reads
(COLMAP >= 3.12 adds its rig and frame tables when it opens the file). Descriptors are not written: COLMAP
expects 8-bit SIFT descriptors there and the mapper does not need them.
"""

from __future__ import annotations

import copy
import os
import pickle
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..errors import SilkError
from ..files import atomic_write
from ..image_features import extract_image
from ..io import list_images
from ..matching import Matcher, related_pair
from .hloc import feature_names, matcher_input, read_features, read_matches
from .pairs import exhaustive_pairs, read_pairs

MAX_IMAGE_ID = 2**31 - 1
CAMERA_MODELS = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "SIMPLE_RADIAL": 2, "RADIAL": 3, "OPENCV": 4}

SCHEMA = """
CREATE TABLE IF NOT EXISTS cameras (
    camera_id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    model INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    params BLOB,
    prior_focal_length INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    image_id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    name TEXT NOT NULL UNIQUE,
    camera_id INTEGER NOT NULL,
    prior_qw REAL, prior_qx REAL, prior_qy REAL, prior_qz REAL,
    prior_tx REAL, prior_ty REAL, prior_tz REAL,
    CONSTRAINT image_id_check CHECK(image_id >= 0 and image_id < 2147483647),
    FOREIGN KEY(camera_id) REFERENCES cameras(camera_id));
CREATE TABLE IF NOT EXISTS keypoints (
    image_id INTEGER PRIMARY KEY NOT NULL,
    rows INTEGER NOT NULL,
    cols INTEGER NOT NULL,
    data BLOB,
    FOREIGN KEY(image_id) REFERENCES images(image_id) ON DELETE CASCADE);
CREATE TABLE IF NOT EXISTS descriptors (
    image_id INTEGER PRIMARY KEY NOT NULL,
    rows INTEGER NOT NULL,
    cols INTEGER NOT NULL,
    data BLOB,
    FOREIGN KEY(image_id) REFERENCES images(image_id) ON DELETE CASCADE);
CREATE TABLE IF NOT EXISTS matches (
    pair_id INTEGER PRIMARY KEY NOT NULL,
    rows INTEGER NOT NULL,
    cols INTEGER NOT NULL,
    data BLOB);
CREATE TABLE IF NOT EXISTS two_view_geometries (
    pair_id INTEGER PRIMARY KEY NOT NULL,
    rows INTEGER NOT NULL,
    cols INTEGER NOT NULL,
    data BLOB,
    config INTEGER NOT NULL,
    F BLOB, E BLOB, H BLOB, qvec BLOB, tvec BLOB);
CREATE UNIQUE INDEX IF NOT EXISTS index_name ON images(name);
"""


def image_ids_to_pair_id(image_id0: int, image_id1: int) -> int:
    """COLMAP's pair id of two image ids (order-independent)."""
    a, b = sorted((int(image_id0), int(image_id1)))
    return a * MAX_IMAGE_ID + b


def pair_id_to_image_ids(pair_id: int) -> tuple[int, int]:
    """Inverse of :func:`image_ids_to_pair_id`: ``(image_id1, image_id2)`` with ``image_id1 < image_id2``."""
    return int(pair_id) // MAX_IMAGE_ID, int(pair_id) % MAX_IMAGE_ID


def to_colmap_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """Ours (N, 2) (x, y), pixel centres at integers -> COLMAP's (top-left pixel corner at (0, 0)): +0.5."""
    return np.ascontiguousarray(np.asarray(keypoints, dtype=np.float32).reshape(-1, 2) + 0.5)


def default_camera(model: str, width: int, height: int) -> tuple[int, np.ndarray]:
    """COLMAP's initial camera for an image without EXIF: focal 1.2 * max(W, H), principal point at the
    centre, no distortion. Returns (model id, float64 params)."""
    if model not in CAMERA_MODELS:
        raise SilkError(f"unknown camera model {model!r}; choose one of {list(CAMERA_MODELS)}")
    f, cx, cy = 1.2 * max(width, height), width / 2, height / 2
    params = {
        "SIMPLE_PINHOLE": [f, cx, cy],
        "PINHOLE": [f, f, cx, cy],
        "SIMPLE_RADIAL": [f, cx, cy, 0.0],
        "RADIAL": [f, cx, cy, 0.0, 0.0],
        "OPENCV": [f, f, cx, cy, 0.0, 0.0, 0.0, 0.0],
    }[model]
    return CAMERA_MODELS[model], np.array(params, dtype=np.float64)


def colmap_camera(
    model: int, width: int, height: int, params: np.ndarray, prior_focal_length: bool = False
) -> Any:
    """A ``pycolmap.Camera`` from a ``cameras`` row (model id, size, float64 params, prior flag)."""
    pycolmap = _pycolmap()
    camera = pycolmap.Camera(model=pycolmap.CameraModelId(int(model)), width=int(width), height=int(height),
                             params=np.asarray(params, dtype=np.float64))
    camera.has_prior_focal_length = bool(prior_focal_length)
    return camera


def verify_matches(
    camera0: Any,
    camera1: Any,
    keypoints0: np.ndarray,
    keypoints1: np.ndarray,
    matches: np.ndarray,
    options: Any = None,
) -> Any:
    """COLMAP's geometric verification of one pair (``pycolmap.estimate_two_view_geometry``).

    Args:
        camera0, camera1: ``pycolmap.Camera`` of the two images (:func:`colmap_camera`); with a prior focal
            length on both, COLMAP fits an essential matrix (calibrated), else a fundamental matrix, and a
            homography in both cases.
        keypoints0, keypoints1: (N0, 2), (N1, 2) keypoints (x, y), ours (pixel centres at integers).
        matches: (K, 2) int ``[index in keypoints0, index in keypoints1]``.
        options: ``pycolmap.TwoViewGeometryOptions`` (None: COLMAP's defaults: 4 px, at least 15 inliers).

    Returns:
        ``pycolmap.TwoViewGeometry``: ``config`` (``pycolmap.TwoViewGeometryConfiguration``), ``inlier_matches``
        (K', 2) (empty if none), ``F`` / ``E`` / ``H`` (3, 3) in COLMAP's pixels (ours + 0.5).
    """
    pycolmap = _pycolmap()
    p0, p1, matches = _verification_inputs(keypoints0, keypoints1, matches)
    return pycolmap.estimate_two_view_geometry(camera0, p0, camera1, p1, matches,
                                               options or pycolmap.TwoViewGeometryOptions())


def _verification_inputs(
    keypoints0: np.ndarray, keypoints1: np.ndarray, matches: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keypoints (ours) and (K, 2) matches as ``pycolmap.estimate_two_view_geometry`` takes them: float64
    COLMAP pixels and contiguous uint32 index pairs."""
    p0, p1 = (to_colmap_keypoints(k).astype(np.float64) for k in (keypoints0, keypoints1))
    matches = np.ascontiguousarray(np.asarray(matches, dtype=np.int64).reshape(-1, 2), dtype=np.uint32)
    return p0, p1, matches


@dataclass(frozen=True)
class Geometry:
    """A pair's verified geometry as the child of :class:`IsolatedVerifier` returns it (the fields of
    ``pycolmap.TwoViewGeometry`` that the database stores; matrices in COLMAP's pixels)."""

    config: int
    inlier_matches: np.ndarray  # (K', 2) uint32
    F: Any
    E: Any
    H: Any


class IsolatedVerifier:
    """COLMAP's verification (as :func:`verify_matches`) in a child process, so that a crash inside pycolmap
    costs one pair, not the whole import.

    pycolmap 4.2 can die with SIGSEGV on some pairs for some RANSAC seeds (docs/ecosystem.md). A pair whose
    verification ends the child is retried in a new child, ``retries`` times: with the next seeds when
    ``options.ransac.random_seed`` is fixed (>= 0), with new random draws otherwise. Use as a context manager
    (or call :meth:`close`).
    """

    def __init__(self, options: Any = None, retries: int = 2) -> None:
        self.options = options or _pycolmap().TwoViewGeometryOptions()
        self.retries = retries
        self._child: subprocess.Popen | None = None
        self.crashes: list[str] = []  # one line per crash: the pair, seed and signal

    def __enter__(self) -> IsolatedVerifier:  # noqa: PYI034 - Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._child is not None:
            self._child.stdin.close()
            self._child.wait()
            self._child = None

    def __call__(self, camera0: Any, camera1: Any, keypoints0: np.ndarray, keypoints1: np.ndarray,
                 matches: np.ndarray, pair: str = "") -> Geometry | None:
        """The verified geometry of one pair (arguments as :func:`verify_matches`; ``pair`` names it in
        :attr:`crashes`), or None if pycolmap crashed on every try."""
        p0, p1, matches = _verification_inputs(keypoints0, keypoints1, matches)
        options = copy.deepcopy(self.options)
        seed = options.ransac.random_seed
        for attempt in range(self.retries + 1):
            if seed >= 0:
                options.ransac.random_seed = seed + attempt
            child = self._start()
            try:
                pickle.dump((camera0, camera1, p0, p1, matches, options), child.stdin)
                child.stdin.flush()
                return Geometry(*pickle.load(child.stdout))
            except (EOFError, BrokenPipeError, pickle.UnpicklingError):
                code = child.wait()
                self._child = None
                how = signal.Signals(-code).name if code < 0 else f"exit code {code}"
                self.crashes.append(f"{pair or 'a pair'}: pycolmap's verification crashed ({how}, "
                                    f"RANSAC seed {options.ransac.random_seed})")
        return None

    def _start(self) -> subprocess.Popen:
        if self._child is None:
            worker = Path(__file__).with_name("colmap_worker.py")
            self._child = subprocess.Popen([sys.executable, str(worker)], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE)
        return self._child


def _pycolmap() -> Any:
    try:
        import pycolmap
    except ImportError:
        raise SilkError(
            'COLMAP\'s geometric verification needs pycolmap: pip install "silk-keypoints[colmap]" '
            "(or write unverified matches: --no-verify, then colmap matches_importer)"
        ) from None
    return pycolmap


def image_names(root: str | os.PathLike) -> list[str]:
    """Names of the images under ``root``: their '/'-separated paths relative to it, sorted (COLMAP's
    ``--image_path`` names and hloc's). Raises :class:`SilkError` when there is none."""
    root = Path(root)
    names = [p.relative_to(root).as_posix() for p in list_images(root)]
    if not names:
        raise SilkError(f"no images in {root}")
    return names


def build_colmap_database(
    database: str | os.PathLike,
    images: str | os.PathLike | None = None,
    features: str | os.PathLike | None = None,
    pairs: str | os.PathLike | None = None,
    matches: str | os.PathLike | None = None,
    model: Any = None,
    extract_options: Mapping[str, Any] | None = None,
    matcher: Matcher | None = None,
    overwrite: bool = False,
    progress: bool = False,
    gate: bool = True,
    adjust: bool = False,
    **database_options: Any,
) -> dict[str, int]:
    """Everything ``silk colmap`` does: features, pairs and matches of a set of images into a COLMAP database.

    Args:
        database: the ``.db`` file (see :func:`write_database`).
        images: image folder; images are named by their path relative to it (:func:`image_names`).
        features: an hloc ``features.h5`` to use instead of extracting with ``model``; without ``images`` its
            image names are the images.
        pairs: an hloc ``pairs.txt`` of pairs to match (default: every pair).
        matches: an hloc ``matches.h5`` to use instead of matching (needs ``features``: its keypoint indices).
        model: the SiLK model extracting features when ``features`` is not given.
        extract_options: options of :func:`silk_keypoints.image_features.extract_image` (``resize``,
            ``max_keypoints``, ...).
        matcher: how to match descriptors (default: plain mutual nearest neighbours).
        overwrite, progress: see :func:`write_database` (``progress`` also shows the extraction).
        gate: the unrelated-pairs gate on the pairs matched here (not on ``matches``): a pair whose matched
            points no homography explains (:func:`~silk_keypoints.matching.related_pair`) gets no matches.
        adjust: move the keypoints below the cell size so that every track of verified matches agrees
            (:func:`~silk_keypoints.refinement.adjust_keypoints`) before they are written: the matches are
            verified once, the keypoints adjusted with the inliers, and the adjusted keypoints verified again
            into ``database``. Needs verification and, with ``features``, a file with neighbour descriptors
            (``silk extract --neighbours``). The neighbour descriptors of every image are held in memory
            (float16: ~4.7 MB per image at 2048 keypoints of ``fast``); for large sets, ``silk
            adjust-keypoints`` reads them pair by pair from the file.
        database_options: ``camera_model``, ``single_camera``, ``verify``, ``verify_options`` of
            :func:`write_database`.

    Returns:
        the counts of :func:`write_database` and ``rejected_pairs`` (by ``gate``). Names, pairs and the
        database are checked before any feature is extracted.
    """
    if not images and not features:
        raise SilkError("give the images (--images DIR), their features (--features H5) or both")
    if matches and not features:
        raise SilkError("--matches needs the --features its keypoint indices refer to")
    if adjust and not database_options.get("verify", True):
        raise SilkError("--adjust-keypoints needs verified matches: leave out --no-verify")
    names = image_names(images) if images else feature_names(features)
    check_database(database, dict.fromkeys(names), overwrite=overwrite)
    if database_options.get("verify", True):
        _pycolmap()
    pair_list = read_pairs(pairs, known=names, where=images or features) if pairs else exhaustive_pairs(names)
    if features:
        missing = sorted(set(names) - set(feature_names(features)))
        if missing:
            raise SilkError(f"{len(missing)} image(s) are not in {features}, e.g. {missing[0]}")
        feats = {n: read_features(features, n) for n in names}
        bare = [n for n in names if "neighbour_descriptors" not in feats[n]]
        if adjust and bare:
            raise SilkError(f"--adjust-keypoints needs neighbour descriptors: {features} has none for "
                            f"{len(bare)} image(s), e.g. {bare[0]} (extract with silk extract --neighbours)")
    else:
        if model is None:
            raise SilkError("a model is needed to extract the features of the images (or give --features H5)")
        feats = {
            n: _float16_neighbours(extract_image(model, Path(images) / n, neighbours=adjust, **(extract_options or {})))
            for n in tqdm(names, desc="extract", unit="img", disable=not progress or len(names) < 2)
        }
    rejected = [0]

    def match(a: str, b: str) -> np.ndarray:
        pred = matcher({"image0": matcher_input(feats[a]), "image1": matcher_input(feats[b])})
        if gate and not related_pair(pred["points0"][0], pred["points1"][0]):
            rejected[0] += 1
            return np.zeros((0, 2), dtype=np.int64)
        return pred["matches"][0].numpy()

    if matches:
        matched: Iterator = ((a, b, read_matches(matches, a, b)[0]) for a, b in pair_list)
    else:
        matcher = matcher or Matcher("mnn")
        matched = ((a, b, match(a, b)) for a, b in pair_list)
    if adjust:
        matched = list(matched)
        feats = adjusted_for_import(feats, matched, database, progress, **database_options)
    counts = write_database(database, feats, matched, overwrite=overwrite, progress=progress and len(pair_list) > 1,
                            **database_options)
    return {**counts, "rejected_pairs": rejected[0]}


def _float16_neighbours(feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feats`` with its neighbour descriptors (if any) as float16, as ``silk extract --neighbours`` stores
    them: half the memory while every image of the import is held."""
    if "neighbour_descriptors" in feats:
        feats = {**feats, "neighbour_descriptors": feats["neighbour_descriptors"].astype(np.float16)}
    return feats


def adjusted_for_import(
    feats: Mapping[str, Mapping[str, np.ndarray]],
    matched: list[tuple[str, str, np.ndarray]],
    database: str | os.PathLike | None = None,
    progress: bool = False,
    **database_options: Any,
) -> dict[str, dict[str, np.ndarray]]:
    """``feats`` (name -> :func:`extract_image` dict with neighbour descriptors) with their keypoints adjusted
    (:func:`~silk_keypoints.refinement.adjust_keypoints`) on the inliers of COLMAP's verification of
    ``matched``, run in a temporary copy of ``database`` (a new one if None or missing; ``database_options``
    of :func:`write_database`): what ``silk colmap --adjust-keypoints`` writes."""
    from ..features import Features
    from ..refinement import adjust_keypoints

    with tempfile.TemporaryDirectory() as tmp:
        first = Path(tmp) / "first.db"
        if database is not None and Path(database).exists():
            shutil.copyfile(database, first)
        write_database(first, feats, matched, overwrite=True, progress=progress, **database_options)
        inliers = read_inlier_matches(first)
    names = list(feats)
    index = {n: i for i, n in enumerate(names)}
    edges = [(index[a], index[b], torch.from_numpy(m.astype(np.int64))) for (a, b), m in inliers.items()
             if a in index and b in index]
    moved = adjust_keypoints([Features.from_mapping(feats[n], n) for n in names], edges)
    return {n: {**feats[n], "keypoints": moved[i].numpy().astype(np.float32)} for i, n in enumerate(names)}


def read_inlier_matches(path: str | os.PathLike) -> dict[tuple[str, str], np.ndarray]:
    """The verified inlier matches of a COLMAP database: ``(name0, name1) -> (K, 2) uint32`` for every pair
    with inliers, ``name0`` the image with the smaller id (COLMAP's order)."""
    with closing(sqlite3.connect(path)) as conn:
        names = dict(conn.execute("SELECT image_id, name FROM images"))
        out = {}
        for pair_id, rows, data in conn.execute("SELECT pair_id, rows, data FROM two_view_geometries"):
            if rows and data:
                a, b = pair_id_to_image_ids(pair_id)
                out[(names[a], names[b])] = np.frombuffer(data, dtype=np.uint32).reshape(rows, 2).copy()
    return out


def write_database(
    path: str | os.PathLike,
    features: Mapping[str, Mapping[str, np.ndarray]],
    matches: Iterable[tuple[str, str, np.ndarray]],
    camera_model: str = "SIMPLE_RADIAL",
    single_camera: bool = False,
    verify: bool = True,
    overwrite: bool = False,
    progress: bool = False,
    verify_options: Any = None,
) -> dict[str, int]:
    """Import keypoints and matches into a COLMAP database, creating it if needed.

    Args:
        path: the ``.db`` file. An existing database is added to: images already in it keep their ids and
            cameras, which must have the images' sizes; new images get a new camera each (or one shared one
            with ``single_camera``).
        features: image name -> dict with ``keypoints`` (N, 2) (x, y), pixel centres at integers (ours; +0.5
            is added here), and ``image_size`` (2,) as (W, H) of the original image.
        matches: ``(name0, name1, matches)`` items, ``matches`` (K, 2) int
            ``[index in name0, index in name1]``.
        camera_model: COLMAP camera model of new cameras (:data:`CAMERA_MODELS`), initialised as COLMAP does.
        single_camera: all new images share one camera (they must have the same size).
        verify: run COLMAP's verification (:func:`verify_matches`, with the images' cameras in the database)
            and write each pair's label and inliers to ``two_view_geometries``; ``False`` writes the raw
            ``matches`` only, for ``colmap matches_importer`` to verify.
        overwrite: replace keypoints of images that already have some, and every match involving them.
        progress: show a progress bar.
        verify_options: ``pycolmap.TwoViewGeometryOptions`` (None: COLMAP's defaults).

    Returns:
        counts: ``images``, ``pairs`` (pairs given), ``verified_pairs`` (with inliers; 0 without ``verify``) and
        ``unverified_pairs``: pairs on which pycolmap's verification crashed on every try
        (:class:`IsolatedVerifier`); their raw ``matches`` are written, for ``colmap matches_importer``, and a
        warning names each of them.

    Raises:
        SilkError: an existing file that is not a COLMAP database, cameras of a different size, keypoints
            already present (without ``overwrite``), matches naming unknown images or keypoints. The existing
            file is left untouched on every error: the database is modified in a copy that replaces it at the
            end.
    """
    path = Path(path)
    if camera_model not in CAMERA_MODELS:
        raise SilkError(f"unknown camera model {camera_model!r}; choose one of {list(CAMERA_MODELS)}")
    if verify:
        _pycolmap()  # before any work
    sizes = {
        name: tuple(int(v) for v in np.asarray(f["image_size"]).reshape(2)) for name, f in features.items()
    }
    existing = check_database(path, sizes, overwrite)
    new = [n for n in sizes if n not in existing]
    if single_camera and len({sizes[n] for n in new}) > 1:
        raise SilkError(
            "single_camera (--single-camera) needs images of one size; these have "
            + ", ".join(sorted({f"{w}x{h}" for w, h in (sizes[n] for n in new)}))
        )
    counts = {"images": len(sizes), "pairs": 0, "verified_pairs": 0, "unverified_pairs": 0}

    def write(tmp: Path) -> None:
        conn = sqlite3.connect(tmp)
        try:
            if path.exists():
                with closing(sqlite3.connect(path)) as src:
                    src.backup(conn)
            conn.executescript(SCHEMA)
            ids = dict(existing)
            _delete_features(conn, list(existing.values()))
            shared = None
            for name in new:
                if shared is None or not single_camera:
                    model, params = default_camera(camera_model, *sizes[name])
                    cur = conn.execute(
                        "INSERT INTO cameras (model, width, height, params, prior_focal_length) "
                        "VALUES (?, ?, ?, ?, 0)",
                        (model, *sizes[name], params.tobytes()),
                    )
                    shared = cur.lastrowid
                cur = conn.execute("INSERT INTO images (name, camera_id) VALUES (?, ?)", (name, shared))
                ids[name] = cur.lastrowid
            for name, feats in features.items():
                kpts = to_colmap_keypoints(feats["keypoints"])
                conn.execute(
                    "INSERT INTO keypoints VALUES (?, ?, 2, ?)", (ids[name], len(kpts), kpts.tobytes())
                )
            cameras = _cameras(conn, features) if verify else None
            done: set[int] = set()
            for name0, name1, m in tqdm(matches, desc="colmap", unit="pair", disable=not progress):
                verified = _insert_pair(conn, features, ids, name0, name1, m, cameras, verifier, done)
                counts["pairs"] += 1
                counts["verified_pairs"] += verified is True
                counts["unverified_pairs"] += verified is None
            conn.commit()
        finally:
            conn.close()

    verifier = IsolatedVerifier(verify_options) if verify else None
    try:
        atomic_write(path, write)
    except sqlite3.Error as e:
        raise SilkError(f"cannot write COLMAP database {path}: {e}") from None
    finally:
        if verifier is not None:
            verifier.close()
            for line in verifier.crashes:
                warnings.warn(line, stacklevel=2)
    return counts


def _insert_pair(
    conn: sqlite3.Connection,
    features: Mapping[str, Mapping[str, np.ndarray]],
    ids: dict[str, int],
    name0: str,
    name1: str,
    matches: np.ndarray,
    cameras: Mapping[str, Any] | None,
    verifier: IsolatedVerifier | None,
    done: set[int],
) -> bool | None:
    """Insert one pair's matches and, with ``cameras``, COLMAP's verified geometry; True if it has inliers,
    None if the verification crashed on every try."""
    for name in (name0, name1):
        if name not in ids:
            raise SilkError(f"matches name image {name!r}, which has no features")
    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    if ids[name0] > ids[name1]:
        name0, name1, matches = name1, name0, matches[:, ::-1]
    k0, k1 = (np.asarray(features[n]["keypoints"]) for n in (name0, name1))
    for col, name, kpts in ((0, name0, k0), (1, name1, k1)):
        if len(matches) and (matches[:, col].min() < 0 or matches[:, col].max() >= len(kpts)):
            raise SilkError(
                f"matches of ({name0}, {name1}) refer to keypoints that {name} does not have "
                f"({len(kpts)} keypoints): features and matches do not belong together"
            )
    pair_id = image_ids_to_pair_id(ids[name0], ids[name1])
    if pair_id in done:
        raise SilkError(f"pair ({name0}, {name1}) is given twice")
    done.add(pair_id)
    if len(matches) == 0:
        return False
    data = np.ascontiguousarray(matches, dtype=np.uint32)
    conn.execute("INSERT INTO matches VALUES (?, ?, 2, ?)", (pair_id, len(data), data.tobytes()))
    if cameras is None:
        return False
    geometry = verifier(cameras[name0], cameras[name1], k0, k1, matches, pair=f"({name0}, {name1})")
    if geometry is None:
        return None
    inliers = np.ascontiguousarray(geometry.inlier_matches, dtype=np.uint32).reshape(-1, 2)
    if len(inliers) == 0:
        return False
    conn.execute(
        "INSERT INTO two_view_geometries (pair_id, rows, cols, data, config, F, E, H) "
        "VALUES (?, ?, 2, ?, ?, ?, ?, ?)",
        (pair_id, len(inliers), inliers.tobytes(), int(geometry.config),
         *(None if m is None else np.asarray(m, dtype=np.float64).tobytes()
           for m in (geometry.F, geometry.E, geometry.H))),
    )
    return True


def _cameras(conn: sqlite3.Connection, names: Iterable[str]) -> dict[str, Any]:
    """``pycolmap.Camera`` of each image of ``names`` from the database's ``cameras`` rows."""
    wanted = set(names)
    rows = conn.execute(
        "SELECT images.name, cameras.model, cameras.width, cameras.height, cameras.params, "
        "cameras.prior_focal_length FROM images JOIN cameras ON images.camera_id = cameras.camera_id"
    )
    return {
        name: colmap_camera(model, w, h, np.frombuffer(params, dtype=np.float64), bool(prior))
        for name, model, w, h, params, prior in rows
        if name in wanted
    }


def check_database(
    path: str | os.PathLike, sizes: Mapping[str, tuple[int, int] | None], overwrite: bool = False
) -> dict[str, int]:
    """Check that images can be imported into ``path`` (see :func:`write_database`); reads, never writes.

    Args:
        path: a COLMAP database; a missing file is fine (it will be created).
        sizes: image name -> (W, H), or None to skip the camera check of that image.
        overwrite: whether existing keypoints of these images may be replaced.

    Returns:
        ``{name: image_id}`` of the images already in the database.
    """
    path = Path(path)
    if not path.exists():
        return {}
    if not path.is_file():
        raise SilkError(f"{path} exists and is not a file")
    try:
        conn = sqlite3.connect(path)
    except sqlite3.Error as e:
        raise SilkError(f"cannot open {path} as a COLMAP database: {e}") from None
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        need = {"cameras", "images", "keypoints", "matches", "two_view_geometries"}
        if not need <= tables:
            raise SilkError(f"{path} is not a COLMAP database (no tables {sorted(need - tables)})")
        rows = conn.execute(
            "SELECT images.name, images.image_id, cameras.camera_id, cameras.width, cameras.height "
            "FROM images JOIN cameras ON images.camera_id = cameras.camera_id"
        ).fetchall()
        found = {name: (image_id, cam, (w, h)) for name, image_id, cam, w, h in rows if name in sizes}
        bad = [
            f"{n} is {sizes[n][0]}x{sizes[n][1]} but its camera {cam} in the database is {w}x{h}"
            for n, (_, cam, (w, h)) in sorted(found.items())
            if sizes[n] is not None and (w, h) != sizes[n]
        ]
        if bad:
            raise SilkError(
                f"{path} has different cameras: {'; '.join(bad[:3])}"
                + ("; ..." if len(bad) > 3 else "")
                + ". The database is unchanged: use a new --database or fix its cameras"
            )
        ids = {n: v[0] for n, v in found.items()}
        have = {r[0] for r in conn.execute("SELECT image_id FROM keypoints")} & set(ids.values())
        if have and not overwrite:
            names = sorted(n for n, i in ids.items() if i in have)
            raise SilkError(
                f"{path} already has keypoints for {len(names)} of these images (e.g. {names[0]}); "
                "pass overwrite=True (CLI: --overwrite) to replace them and their matches"
            )
        if (
            "frames" in tables
            and len(ids) < len(sizes)
            and conn.execute("SELECT COUNT(*) FROM frames").fetchone()[0]
        ):
            raise SilkError(
                f"{path} has COLMAP rigs and frames but not for {len(sizes) - len(ids)} of these images: "
                "add them with COLMAP first (colmap feature_extractor / pycolmap.import_images)"
            )
    except sqlite3.DatabaseError as e:
        raise SilkError(f"cannot read {path} as a COLMAP database: {e}") from None
    finally:
        conn.close()
    if Path(f"{path}-wal").exists():  # the last connection to close removes it: another one is open
        raise SilkError(f"{path} is open in another program (COLMAP?): close it first")
    return ids


def _delete_features(conn: sqlite3.Connection, image_ids: list[int]) -> None:
    """Remove keypoints and descriptors of ``image_ids`` and every match / geometry of a pair with them."""
    if not image_ids:
        return
    ids = set(image_ids)
    conn.executemany("DELETE FROM keypoints WHERE image_id = ?", [(i,) for i in ids])
    conn.executemany("DELETE FROM descriptors WHERE image_id = ?", [(i,) for i in ids])
    for table in ("matches", "two_view_geometries"):
        stale = [
            (p,)
            for (p,) in conn.execute(f"SELECT pair_id FROM {table}")
            if ids & set(pair_id_to_image_ids(p))
        ]
        conn.executemany(f"DELETE FROM {table} WHERE pair_id = ?", stale)
