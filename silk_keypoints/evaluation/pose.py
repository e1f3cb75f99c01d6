"""Relative pose benchmark (ScanNet-1500 / MegaDepth-1500 style) and an IMC2022 submission writer.

A pair is two images with intrinsics ``K0``, ``K1`` (3x3, pixels of the *original* images) and the
ground-truth relative pose ``T_0to1`` (4x4, camera-0 coordinates -> camera-1 coordinates, ``X1 = R X0 + t``).
Per pair: features on the images resized by the protocol, keypoints mapped back to the original pixels,
matching, essential matrix by OpenCV USAC_MAGSAC (:func:`silk_keypoints.geometry.estimate_essential`),
pose by the cheirality check; errors: rotation angle and translation *direction* angle (sign-agnostic), in
degrees; the pose error is their maximum (``inf`` when estimation fails). Summary: exact AUC of the pose
error at 5/10/20 deg (SuperGlue / LoFTR), plus matches, inliers and failures.

Pair files read by :func:`read_pose_pairs` (paths are relative to ``root``, by default the pair file's folder):

``.json``
    ``{"root": "optional/folder", "pairs": [{"image0": "a.jpg", "image1": "b.jpg", "K0": 3x3,
    "K1": 3x3, "T_0to1": 4x4 or 3x4}, ...]}`` (nested lists or flat row-major lists; a bare list of pairs
    works too).
``.csv``
    header ``image0,image1,K0,K1,T_0to1``; matrices as space-separated numbers, row-major (9 / 9 / 12 or 16).
``.npz``, LoFTR MegaDepth scene info
    ``image_paths`` (N,), ``intrinsics`` (N, 3, 3), ``poses`` (N, 4, 4) world-to-camera, ``pair_infos``
    (entries ``((i, j), overlap, central_matches)``); ``T_0to1 = poses[j] @ inv(poses[i])``.
``.npz``, LoFTR ScanNet-1500 index (``test.npz``)
    ``name`` (M, 4) ints ``[scene, sub-scene, frame0, frame1]`` -> ``root/scene%04d_%02d/color/<frame>.jpg``,
    camera-to-world poses ``root/<scene>/pose/<frame>.txt``, intrinsics from ``intrinsics.npz`` (scene name ->
    3x3) beside the index or given explicitly; ``T_0to1 = inv(pose1) @ pose0``.

Object arrays in ``.npz`` files (LoFTR's scene infos are pickled) are read with a restricted unpickler that
only rebuilds numpy arrays and plain Python values: a crafted file cannot run code.

Protocols (:data:`PROTOCOLS`): ``scannet`` resizes the long side to 640 (the 640x480 of ScanNet-1500),
``megadepth`` to 1600 (LightGlue / glue-factory's MegaDepth-1500); both RANSAC threshold 0.5 px (divided by
the mean focal length), top 2048 keypoints, plain mutual nearest neighbours unless another matcher is given.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from ..errors import SilkError
from ..features import Features
from ..files import atomic_write
from ..geometry import estimate_essential, estimate_fundamental, pose_errors
from ..io import load_image, read_text_matrix, resize_long_side
from ..matching import Matcher
from ..model.checkpoint import RestrictedUnpickler
from .extractors import Extractor, match_features
from .metrics import accuracy, error_auc
from .protocols import Protocols

POSE_THRESHOLDS = (5, 10, 20)


@dataclass(frozen=True)
class PoseProtocol:
    """Attributes: ``resize``: long side of the images the extractor sees (None: original size);
    ``ransac_threshold``: pixels; ``max_keypoints``: asked from the extractors (the CLI applies it)."""

    name: str
    resize: int | None
    ransac_threshold: float = 0.5
    max_keypoints: int = 2048


PROTOCOLS = Protocols("pose", PoseProtocol("scannet", resize=640), PoseProtocol("megadepth", resize=1600))
get_protocol = PROTOCOLS.get_protocol


@dataclass
class PosePair:
    """Two images with intrinsics (3, 3) and the relative pose ``T_0to1`` (4, 4)."""

    name: str
    image0: Path
    image1: Path
    K0: np.ndarray
    K1: np.ndarray
    T_0to1: np.ndarray


# ---------------------------------------------------------------------------------------------- reading
def read_pose_pairs(
    path: str | os.PathLike, root: str | os.PathLike | None = None, intrinsics: str | os.PathLike | None = None
) -> list[PosePair]:
    """Read a pair file (format by suffix and content, see the module doc). ``intrinsics``: the ScanNet
    ``intrinsics.npz`` (default: beside the index). Raises :class:`SilkError` for unreadable or malformed
    files, missing images and empty lists."""
    path = Path(path)
    if not path.is_file():
        raise SilkError(f"pair file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        pairs = _read_json(path, root)
    elif suffix in (".csv", ".txt"):
        pairs = _read_csv(path, Path(root) if root else path.parent)
    elif suffix == ".npz":
        data = safe_load_npz(path)
        base = Path(root) if root else path.parent
        if "name" in data:
            pairs = _read_scannet_index(data, base, Path(intrinsics) if intrinsics else path.parent / "intrinsics.npz")
        elif "pair_infos" in data:
            pairs = _read_scene_info(data, base, path.stem)
        else:
            raise SilkError(f"{path}: unknown .npz pair file (keys {sorted(data)}): expected LoFTR's ScanNet "
                            "'name' index or a MegaDepth scene info with 'pair_infos'")
    else:
        raise SilkError(f"{path}: unknown pair file type {suffix!r}: use .json, .csv or .npz")
    if not pairs:
        raise SilkError(f"{path}: no pairs")
    missing = sorted({str(p) for pair in pairs for p in (pair.image0, pair.image1) if not p.is_file()})
    if missing:
        more = f" ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise SilkError(f"{path}: {len(missing)} images not found: {', '.join(missing[:10])}{more}")
    return pairs


def _matrix(value: Any, shapes: Sequence[tuple[int, int]], what: str) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise SilkError(f"{what}: not a matrix of numbers") from None
    for shape in shapes:
        if a.size == shape[0] * shape[1]:
            a = a.reshape(shape)
            break
    else:
        raise SilkError(f"{what}: expected {' or '.join(f'{r}x{c}' for r, c in shapes)} numbers, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise SilkError(f"{what}: contains NaN or inf")
    if a.shape == (3, 4):
        a = np.vstack([a, [0, 0, 0, 1]])
    return a


def _pair(name: str, base: Path, row: dict, what: str) -> PosePair:
    try:
        return PosePair(
            name=name,
            image0=base / str(row["image0"]),
            image1=base / str(row["image1"]),
            K0=_matrix(row["K0"], [(3, 3)], f"{what} K0"),
            K1=_matrix(row["K1"], [(3, 3)], f"{what} K1"),
            T_0to1=_matrix(row["T_0to1"], [(4, 4), (3, 4)], f"{what} T_0to1"),
        )
    except KeyError as e:
        raise SilkError(f"{what}: missing field {e}; needed: image0, image1, K0, K1, T_0to1") from None


def _read_json(path: Path, root: str | os.PathLike | None) -> list[PosePair]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SilkError(f"{path}: not valid JSON: {e}") from None
    rows = data.get("pairs") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise SilkError(f"{path}: expected {{'pairs': [{{image0, image1, K0, K1, T_0to1}}, ...]}}")
    base = Path(root) if root else path.parent / (data.get("root", "") if isinstance(data, dict) else "")
    return [_pair(_pair_name(r), base, r, f"{path} pair {i}") for i, r in enumerate(rows)]


def _read_csv(path: Path, base: Path) -> list[PosePair]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"image0", "image1", "K0", "K1", "T_0to1"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise SilkError(f"{path}: the header must name the columns {sorted(need)}, got {reader.fieldnames}")
        pairs = []
        for i, row in enumerate(reader, start=2):
            try:
                values = {k: ([float(x) for x in row[k].split()] if k[0] in "KT" else row[k]) for k in need}
            except (ValueError, AttributeError):
                raise SilkError(f"{path} line {i}: matrices must be space-separated numbers") from None
            pairs.append(_pair(_pair_name(values), base, values, f"{path} line {i}"))
    return pairs


def _pair_name(row: dict) -> str:
    return f"{row.get('image0')} {row.get('image1')}"


def _read_scene_info(data: dict[str, np.ndarray], base: Path, scene: str) -> list[PosePair]:
    for key in ("image_paths", "intrinsics", "poses"):
        if key not in data:
            raise SilkError(f"MegaDepth scene info {scene}: missing '{key}'")
    paths, Ks, poses = data["image_paths"], data["intrinsics"], data["poses"]
    pairs = []
    for n, info in enumerate(data["pair_infos"]):
        try:
            i, j = (int(v) for v in info[0])
            what = f"scene info {scene} pair {n}"
            T = _matrix(poses[j], [(4, 4)], what) @ np.linalg.inv(_matrix(poses[i], [(4, 4)], what))
            row = {"image0": paths[i], "image1": paths[j], "K0": Ks[i], "K1": Ks[j], "T_0to1": T}
        except (TypeError, ValueError, IndexError):
            raise SilkError(f"scene info {scene}: malformed pair_infos entry {n}: expected ((i, j), overlap, ...)") from None
        pairs.append(_pair(f"{scene}:{Path(str(paths[i])).name} {Path(str(paths[j])).name}", base, row, what))
    return pairs


def _read_scannet_index(data: dict[str, np.ndarray], base: Path, intrinsics: Path) -> list[PosePair]:
    names = data["name"]
    if names.ndim != 2 or names.shape[1] != 4:
        raise SilkError(f"ScanNet index: 'name' must be (M, 4) [scene, sub-scene, frame0, frame1], got {names.shape}")
    if not intrinsics.is_file():
        raise SilkError(f"ScanNet intrinsics file not found: {intrinsics} (give it with --intrinsics)")
    Ks = safe_load_npz(intrinsics)
    pairs = []
    for scene_id, sub, f0, f1 in names.astype(np.int64).tolist():
        scene = f"scene{scene_id:04d}_{sub:02d}"
        if scene not in Ks:
            raise SilkError(f"{intrinsics}: no intrinsics for {scene}")
        K = _matrix(np.asarray(Ks[scene])[:3, :3], [(3, 3)], f"{intrinsics} {scene}")
        pose0 = read_pose_file(base / scene / "pose" / f"{f0}.txt")
        pose1 = read_pose_file(base / scene / "pose" / f"{f1}.txt")
        row = {"image0": f"{scene}/color/{f0}.jpg", "image1": f"{scene}/color/{f1}.jpg", "K0": K, "K1": K,
               "T_0to1": np.linalg.inv(pose1) @ pose0}
        pairs.append(_pair(f"{scene} {f0} {f1}", base, row, f"ScanNet pair {scene} {f0} {f1}"))
    return pairs


def read_pose_file(path: Path) -> np.ndarray:
    """A 4x4 text matrix (ScanNet ``pose/<frame>.txt``, camera-to-world). Non-finite entries are kept (ScanNet
    marks frames without tracking with ``-inf``); callers decide."""
    return read_text_matrix(path, "pose", ((4, 4),))


def safe_load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file. Object arrays are unpickled by
    :class:`~silk_keypoints.model.checkpoint.RestrictedUnpickler` (strict: any other global is refused), so
    LoFTR's pickled scene infos load without trusting the file."""
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for member in z.namelist():
                if not member.endswith(".npy"):
                    continue
                with z.open(member) as f:
                    raw = io.BytesIO(f.read())
                version = np.lib.format.read_magic(raw)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                _, _, dtype = read_header(raw)
                if dtype.hasobject:
                    out[member[:-4]] = RestrictedUnpickler(raw, strict=True).load()
                else:
                    raw.seek(0)
                    out[member[:-4]] = np.lib.format.read_array(raw, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, pickle.UnpicklingError, EOFError) as e:
        raise SilkError(f"cannot read {path}: {e}") from None
    return out


# ---------------------------------------------------------------------------------------------- evaluation
class FeatureCache:
    """Features of recently seen images (pairs often share images), computed by ``fn(path)``."""

    def __init__(self, fn: Callable[[Path], Features], size: int = 16) -> None:
        self.fn, self.size, self.items = fn, size, OrderedDict()

    def __call__(self, path: Path) -> Features:
        if path in self.items:
            self.items.move_to_end(path)
        else:
            self.items[path] = self.fn(path)
            if len(self.items) > self.size:
                self.items.popitem(last=False)
        return self.items[path]


def extract_original(extractor: Extractor, path: Path, long_side: int | None) -> Features:
    """Features of the image file with its long side resized to ``long_side`` (up or down; None: as it is),
    keypoints in the original image's pixels."""
    image = load_image(path)
    h, w = image.shape[:2]
    small, scale = resize_long_side(image, long_side, upscale=True)
    return extractor(small).rescaled(scale, (w, h))


def evaluate_pose_pair(
    feats0: Features, feats1: Features, pair: PosePair, matcher: Matcher, ransac_threshold: float = 0.5
) -> dict:
    """Match, estimate the essential matrix, compare the pose. Returns ``matches``, ``inliers``,
    ``rotation_error``, ``translation_error``, ``pose_error`` (degrees, inf on failure) and ``message``."""
    m, pts0, pts1 = match_features(feats0, feats1, matcher)
    est = estimate_essential(pts0, pts1, pair.K0, pair.K1,
                             threshold=ransac_threshold)
    if est.success:
        err_r, err_t = pose_errors(est.R, est.t, pair.T_0to1[:3, :3], pair.T_0to1[:3, 3])
    else:
        err_r = err_t = float("inf")
    return {"matches": len(m), "inliers": est.num_inliers, "rotation_error": err_r, "translation_error": err_t,
            "pose_error": max(err_r, err_t), "message": est.message}


def summarize_pose(pairs: list[dict]) -> dict:
    """AUC / accuracy of the pose error at 5/10/20 deg (keys ``"5"``...), mean matches and inliers,
    median rotation and translation errors, failures."""
    errors = [p["pose_error"] for p in pairs]
    return {
        "pairs": len(pairs),
        "auc": {f"{t}": v for t, v in error_auc(errors, POSE_THRESHOLDS).items()},
        "accuracy": {f"{t}": v for t, v in accuracy(errors, POSE_THRESHOLDS).items()},
        "median_rotation_error": float(np.median([p["rotation_error"] for p in pairs])) if pairs else None,
        "median_translation_error": float(np.median([p["translation_error"] for p in pairs])) if pairs else None,
        "matches": float(np.mean([p["matches"] for p in pairs])) if pairs else 0.0,
        "inliers": float(np.mean([p["inliers"] for p in pairs])) if pairs else 0.0,
        "failures": int(sum(not np.isfinite(e) for e in errors)),
    }


def evaluate_pose(
    pairs: Sequence[PosePair],
    extractors: Sequence[Extractor],
    protocol: PoseProtocol | str = "scannet",
    matcher: Matcher | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Relative pose of every pair with every extractor.

    ``matcher`` default: plain mutual nearest neighbours. ``seed`` seeds OpenCV's RNG once (USAC itself is
    deterministic). Returns ``{"protocol": {...}, "methods": {name: {"summary": summarize_pose(...),
    "seconds_per_image": float, "pairs": [per-pair dicts with name]}}}``.
    """
    if isinstance(protocol, str):
        protocol = get_protocol(protocol)
    if not pairs:
        raise SilkError("no pairs to evaluate")
    if not extractors:
        raise SilkError("no extractor to evaluate")
    matcher = matcher or Matcher("mnn")
    cv2.setRNGSeed(int(seed))
    methods = {}
    for e in extractors:
        cache = FeatureCache(lambda p, e=e: extract_original(e, p, protocol.resize))
        rows = []
        for pair in tqdm(pairs, desc=f"pose/{protocol.name} {e.name}", unit="pair", disable=not progress):
            r = evaluate_pose_pair(cache(pair.image0), cache(pair.image1), pair, matcher, protocol.ransac_threshold)
            rows.append({"name": pair.name, **r})
        methods[e.name] = {"summary": summarize_pose(rows), "seconds_per_image": e.seconds_per_image, "pairs": rows}
    return {"protocol": asdict(protocol), "matcher": matcher.method, "methods": methods}


# ---------------------------------------------------------------------------------------------- IMC2022
@dataclass
class IMCPair:
    sample_id: str
    image0: Path
    image1: Path


def read_imc2022_test(path: str | os.PathLike, images: str | os.PathLike | None = None) -> list[IMCPair]:
    """IMC2022 ``test.csv`` (``sample_id,batch_id,image_1_id,image_2_id``); images are
    ``<images>/<batch_id>/<image_id>.png`` with ``images`` defaulting to ``test_images`` beside the CSV."""
    path = Path(path)
    if not path.is_file():
        raise SilkError(f"IMC2022 test file not found: {path}")
    root = Path(images) if images else path.parent / "test_images"
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"sample_id", "batch_id", "image_1_id", "image_2_id"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise SilkError(f"{path}: the header must name the columns {sorted(need)}, got {reader.fieldnames}")
        pairs = [IMCPair(r["sample_id"], root / r["batch_id"] / f"{r['image_1_id']}.png",
                         root / r["batch_id"] / f"{r['image_2_id']}.png") for r in reader]
    if not pairs:
        raise SilkError(f"{path}: no pairs")
    missing = sorted({str(p) for pair in pairs for p in (pair.image0, pair.image1) if not p.is_file()})
    if missing:
        raise SilkError(f"{path}: {len(missing)} images not found, e.g. {missing[0]}")
    return pairs


def write_imc2022_submission(path: str | os.PathLike, rows: Sequence[tuple[str, np.ndarray | None]]) -> Path:
    """Write ``sample_id,fundamental_matrix`` rows (F row-major, 9 space-separated numbers; a failed pair
    (None) gets the zero matrix) as the IMC2022 submission CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sample_id", "fundamental_matrix"])
            for sample_id, F in rows:
                F = np.zeros((3, 3)) if F is None else np.asarray(F, dtype=np.float64)
                w.writerow([sample_id, " ".join(f"{x:.9e}" for x in F.ravel())])

    return atomic_write(path, write)


def imc2022_submission(
    pairs: Sequence[IMCPair],
    extractor: Extractor,
    out: str | os.PathLike,
    matcher: Matcher | None = None,
    long_side: int | None = None,
    ransac_threshold: float = 0.5,
    progress: bool = True,
) -> dict:
    """Fundamental matrix of every pair (USAC_MAGSAC on matched keypoints, original pixels) written to the
    submission CSV ``out``. Returns ``{"pairs": n, "failures": n, "path": str}``."""
    matcher = matcher or Matcher("mnn")
    cache = FeatureCache(lambda p: extract_original(extractor, p, long_side))
    rows, failures = [], 0
    for pair in tqdm(pairs, desc=f"imc2022 {extractor.name}", unit="pair", disable=not progress):
        f0, f1 = cache(pair.image0), cache(pair.image1)
        _, pts0, pts1 = match_features(f0, f1, matcher)
        est = estimate_fundamental(pts0, pts1, threshold=ransac_threshold)
        failures += not est.success
        rows.append((pair.sample_id, est.model))
    path = write_imc2022_submission(out, rows)
    return {"pairs": len(rows), "failures": failures, "path": str(path)}
