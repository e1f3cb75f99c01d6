"""HPatches image-sequence benchmark: reader, protocols, per-pair metrics and summaries.

Data: the ``hpatches-sequences-release`` folder, one sub-folder per sequence, ``i_*`` (illumination
changes) and ``v_*`` (viewpoint changes), each with ``1.ppm`` ... ``6.ppm`` and ``H_1_2`` ... ``H_1_6`` (3x3
text homographies mapping pixels of ``1.ppm`` to those of ``k.ppm``). Pairs are (1, k) for k = 2..6.

Protocols (:data:`PROTOCOLS`):

``silk`` -- the SiLK paper's: all sequences; each image resized (INTER_AREA) so its shorter side is 480,
each side then rounded *up* to a multiple of 8, the ground-truth H rescaled to match; top-k 10000
(the original's selection keeps k + 1 = 10001 points, so the protocol asks for 10001); plain mutual nearest
neighbours; ``cv2.findHomography`` with plain RANSAC, 3 px; thresholds
1/2/3 px. It reproduces the original's half-pixel convention: keypoints are shifted to ``+0.5`` centres
before the ground-truth H is applied and the resize is a pure scaling (see below).

``d2net`` -- D2-Net / glue-factory's: the 108 sequences left after removing the 8 with very large images
(:data:`LARGE_SEQUENCES`); images at their original size; top 4096 keypoints; MMA at 1..10 px and
homography AUC at 1/3/5 px; our convention (pixel centres at integers, the GT H applied as given).

Coordinate convention: extractors return pixel centres at integers (ours). The original SiLK evaluation
used ``+0.5`` centres and applied HPatches' H to them unchanged; a protocol's ``pixel_offset`` (0.5 for
``silk``, 0 for ``d2net``) is added to every keypoint before any metric, so the numbers are comparable with
the corresponding papers. The two conventions differ by at most about ``0.5 * |scale - 1|`` px for a
homography that scales by ``scale``, which matters at the 1 px threshold only.

Metrics (per pair, then averaged per illumination / viewpoint / all):

* repeatability at 1/2/3 px (:func:`.metrics.repeatability`),
* matching accuracy at 1..10 px, averaged over pairs = MMA (:func:`.metrics.matching_accuracy`),
* homography estimation: mean corner error of the RANSAC estimate; accuracy (error <= t) and AUC at
  1/2/3/5/10 px; a failed estimation counts as an infinite error,
* number of keypoints (mean over images) and of matches (mean over pairs), seconds per image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..errors import SilkError
from ..features import Features
from ..geometry import corner_error, estimate_homography
from ..io import IMAGE_SUFFIXES, load_image, read_text_matrix
from ..matching import Matcher, match_descriptors
from .extractors import Extractor
from .metrics import accuracy, error_auc, matching_accuracy, repeatability
from .protocols import Protocols

LARGE_SEQUENCES = (
    "i_contruction",
    "i_crownnight",
    "i_dc",
    "i_pencils",
    "i_whitebuilding",
    "v_artisans",
    "v_astronautis",
    "v_talent",
)
REP_THRESHOLDS = (1, 2, 3)
MMA_THRESHOLDS = tuple(range(1, 11))
H_THRESHOLDS = (1, 2, 3, 5, 10)
GROUPS = ("illumination", "viewpoint", "all")


@dataclass(frozen=True)
class HPatchesProtocol:
    """How images are prepared and which numbers the summary table shows (all are computed and saved).

    Attributes:
        name: protocol name.
        short_side: resize each image so its shorter side is this many pixels (None or 0: original size).
        multiple: then round each side up to a multiple of this.
        max_keypoints: keypoints per image asked from the extractors.
        pixel_offset: added to keypoints before any metric (0.5: the original SiLK's ``+0.5`` centres).
        exclude: sequence names left out.
        ransac_threshold: reprojection threshold of the plain RANSAC homography
            (:func:`silk_keypoints.geometry.estimate_homography` with ``method="ransac"``), pixels.
        table: metric columns of the printed table, e.g. ``"mma@3"``, ``"h_acc@1"``, ``"h_auc@5"``, ``"rep@1"``.
        refine: refine matched points below the cell size where the features allow it
            (:mod:`silk_keypoints.refinement`); off for ``silk``, whose original matched on the cell grid.
    """

    name: str
    short_side: int | None
    multiple: int
    max_keypoints: int
    pixel_offset: float
    exclude: tuple[str, ...] = ()
    ransac_threshold: float = 3.0
    table: tuple[str, ...] = ()
    refine: bool = True


PROTOCOLS = Protocols(
    "HPatches",
    HPatchesProtocol(
        "silk", short_side=480, multiple=8, max_keypoints=10001, pixel_offset=0.5, refine=False,
        table=("rep@1", "rep@3", "mma@1", "mma@2", "mma@3", "h_acc@1", "h_acc@2", "h_acc@3", "h_auc@3"),
    ),
    HPatchesProtocol(
        "d2net", short_side=None, multiple=1, max_keypoints=4096, pixel_offset=0.0, exclude=LARGE_SEQUENCES,
        table=("rep@3", "mma@1", "mma@3", "mma@5", "mma@10", "h_auc@1", "h_auc@3", "h_auc@5"),
    ),
)
get_protocol = PROTOCOLS.get_protocol


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class HPatchesSequence:
    """One sequence: ``images[0]`` is ``1.ppm``; ``homographies[k - 2]`` maps ``1.ppm`` to ``k.ppm``."""

    name: str
    images: list[Path]
    homographies: list[np.ndarray]

    @property
    def kind(self) -> str:
        return "illumination" if self.name.startswith("i_") else "viewpoint"


def read_homography(path: str | os.PathLike) -> np.ndarray:
    """Read an HPatches ``H_1_k`` file (3 rows of 3 numbers) -> (3, 3) float64, normalised to H[2, 2] = 1."""
    H = read_text_matrix(path, "homography", ((3, 3),))
    if not np.isfinite(H).all() or abs(np.linalg.det(H)) < 1e-12 or H[2, 2] == 0:
        raise SilkError(f"malformed homography file {path}: not a finite invertible homography")
    return H / H[2, 2]


def read_hpatches(root: str | os.PathLike, exclude: Sequence[str] = ()) -> list[HPatchesSequence]:
    """All ``i_*`` / ``v_*`` sequences under ``root`` (sorted), except those named in ``exclude``.

    Images may be ``.ppm`` (the release) or any readable suffix. Raises :class:`SilkError` listing every
    missing image / homography file and every malformed homography, or when there is no sequence at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise SilkError(f"HPatches folder not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name[:2] in ("i_", "v_"))
    if not folders:
        raise SilkError(f"no i_*/v_* sequence folders in {root}: expected the hpatches-sequences-release layout")
    sequences, problems = [], []
    for folder in folders:
        if folder.name in exclude:
            continue
        images = [_find_image(folder, k) for k in range(1, 7)]
        missing = [f"{k}.ppm" for k, p in enumerate(images, 1) if p is None]
        missing += [f"H_1_{k}" for k in range(2, 7) if not (folder / f"H_1_{k}").is_file()]
        if missing:
            problems.append(f"{folder.name}: missing {', '.join(missing)}")
            continue
        try:
            homographies = [read_homography(folder / f"H_1_{k}") for k in range(2, 7)]
        except SilkError as e:
            problems.append(str(e))
            continue
        sequences.append(HPatchesSequence(folder.name, images, homographies))  # type: ignore[arg-type]
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise SilkError(f"HPatches data in {root} is incomplete or malformed:\n  {shown}")
    if not sequences:
        raise SilkError(f"every sequence in {root} is excluded by the protocol: nothing to evaluate")
    return sequences


def _find_image(folder: Path, k: int) -> Path | None:
    for suffix in (".ppm",) + IMAGE_SUFFIXES:
        if (folder / f"{k}{suffix}").is_file():
            return folder / f"{k}{suffix}"
    return None


# ---------------------------------------------------------------------------------------------- preparation
def protocol_size(width: int, height: int, short_side: int | None, multiple: int = 1) -> tuple[int, int]:
    """(W', H') of an image after the protocol's resize: shorter side -> ``short_side`` (truncated), each
    side rounded up to a multiple of ``multiple``. ``short_side`` None or 0 keeps the size."""
    if short_side:
        r = short_side / min(width, height)
        width, height = int(width * r), int(height * r)
    return -(-width // multiple) * multiple, -(-height // multiple) * multiple


def scale_matrix(sx: float, sy: float, pixel_offset: float = 0.0) -> np.ndarray:
    """3x3 map from original to resized pixel coordinates, for a resize by (sx, sy) = new / old size, in the
    frame whose pixel centres sit at ``integer + pixel_offset`` (0.5: a pure scaling)."""
    c = 0.5 - pixel_offset
    return np.array([[sx, 0, c * sx - c], [0, sy, c * sy - c], [0, 0, 1]], dtype=np.float64)


def resized_homography(H: np.ndarray, scale0: tuple[float, float], scale1: tuple[float, float],
                       pixel_offset: float = 0.0) -> np.ndarray:
    """``H`` (original image 0 -> original image 1) between the two images resized by ``scale0`` / ``scale1``
    ((sx, sy) = new / old size, :func:`load_for_protocol`)."""
    return scale_matrix(*scale1, pixel_offset) @ H @ np.linalg.inv(scale_matrix(*scale0, pixel_offset))


def load_for_protocol(path: Path, protocol: HPatchesProtocol) -> tuple[np.ndarray, tuple[float, float]]:
    """RGB uint8 image resized by the protocol, and its (sx, sy) = new / old size."""
    img = load_image(path)
    h, w = img.shape[:2]
    nw, nh = protocol_size(w, h, protocol.short_side, protocol.multiple)
    if (nw, nh) != (w, h):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    return img, (nw / w, nh / h)


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate_pair(
    feats0: Features,
    feats1: Features,
    H: np.ndarray,
    size0: tuple[int, int],
    size1: tuple[int, int],
    pixel_offset: float = 0.0,
    ransac_threshold: float = 3.0,
    seed: int = 0,
    device: str = "cpu",
    refine: bool = True,
    matcher: Matcher | None = None,
    magsac: bool = False,
) -> dict:
    """Metrics of one pair.

    Args:
        feats0, feats1: extractor outputs (:class:`~silk_keypoints.features.Features` of one image each, or
            mappings of ``keypoints`` (N, 2), pixel centres at integers, and ``descriptors`` (N, D)).
        H: (3, 3) ground truth mapping image 0 to image 1, in the frame of ``pixel_offset``.
        size0, size1: (W, H) of the images.
        pixel_offset, ransac_threshold: see :class:`HPatchesProtocol`.
        seed: seed of the RANSAC (OpenCV's RNG).
        device: torch device for matching and the repeatability's nearest neighbours.
        refine: refine matched points below the cell size when the features have ``neighbour_descriptors``
            (:mod:`silk_keypoints.refinement`); repeatability always uses the keypoints as detected.
        matcher: match with this :class:`~silk_keypoints.matching.Matcher` (e.g. ``Matcher("glue")``; its own
            ``refine`` applies) instead of mutual nearest neighbours on ``device``.
        magsac: also fit the homography as ``silk match`` verifies it (USAC_MAGSAC, confidence 0.999, up to
            10,000 iterations, at ``ransac_threshold``): ``corner_error_magsac``.

    Returns:
        dict: ``keypoints0``, ``keypoints1``, ``matches`` (counts), ``repeatability`` and ``mma``
        ({threshold: value}), ``corner_error`` (px, ``inf`` if estimation failed) of the original's plain RANSAC
        (confidence 0.995, up to 2,000 iterations), and with ``magsac`` ``corner_error_magsac``.
    """
    f0, f1 = Features.from_mapping(feats0, "feats0"), Features.from_mapping(feats1, "feats1")
    k0, k1 = (f.keypoints[0].double().cpu().numpy() + pixel_offset for f in (f0, f1))
    if matcher is None:
        matches = match_descriptors(f0.descriptors[0].to(device), f1.descriptors[0].to(device), "mnn")[0].cpu()
        points = Matcher("mnn", refine=refine).points(f0, f1, matches)
    else:
        out = matcher({"image0": f0, "image1": f1})
        matches, points = out["matches"][0].cpu(), (out["points0"][0].cpu(), out["points1"][0].cpu())
    p0, p1 = (p.double().numpy() + pixel_offset for p in points)
    matches = matches.numpy()
    # the original's estimator: plain RANSAC with OpenCV's defaults (confidence 0.995, 2000 iterations)
    H_est = estimate_homography(p0, p1, ransac_threshold, 0.995, 2000, method="ransac", seed=seed).model
    out = {
        "keypoints0": len(k0),
        "keypoints1": len(k1),
        "matches": len(matches),
        "repeatability": repeatability(k0, k1, H, size0, size1, REP_THRESHOLDS, pixel_offset, device),
        "mma": matching_accuracy(p0, p1, H, MMA_THRESHOLDS),
        "corner_error": _finite(corner_error(H_est, H, size0)),
    }
    if magsac:
        H_magsac = estimate_homography(p0, p1, ransac_threshold, seed=seed).model
        out["corner_error_magsac"] = _finite(corner_error(H_magsac, H, size0))
    return out


def _finite(err: float) -> float:
    """A corner error with NaN (a degenerate fit) as ``inf``."""
    return err if np.isfinite(err) else float("inf")


def summarize(pairs: list[dict]) -> dict:
    """Average per-pair results (dicts of :func:`evaluate_pair` plus ``kind``) per group.

    Returns {group: {pairs, keypoints, matches, failures, repeatability, mma, h_acc, h_auc}} for the groups of
    :data:`GROUPS` that have pairs, plus ``h_acc_magsac`` / ``h_auc_magsac`` when every pair has a
    ``corner_error_magsac``; threshold dicts are keyed by the threshold as a string (``"3"``).
    """
    out = {}
    for group in GROUPS:
        sel = [p for p in pairs if group == "all" or p["kind"] == group]
        if not sel:
            continue
        errors = [p["corner_error"] for p in sel]
        out[group] = {
            "pairs": len(sel),
            "keypoints": float(np.mean([(p["keypoints0"] + p["keypoints1"]) / 2 for p in sel])),
            "matches": float(np.mean([p["matches"] for p in sel])),
            "failures": int(sum(not np.isfinite(e) for e in errors)),
            "repeatability": _mean_dicts([p["repeatability"] for p in sel]),
            "mma": _mean_dicts([p["mma"] for p in sel]),
            "h_acc": _str_keys(accuracy(errors, H_THRESHOLDS)),
            "h_auc": _str_keys(error_auc(errors, H_THRESHOLDS)),
        }
        if all("corner_error_magsac" in p for p in sel):
            magsac = [p["corner_error_magsac"] for p in sel]
            out[group]["h_acc_magsac"] = _str_keys(accuracy(magsac, H_THRESHOLDS))
            out[group]["h_auc_magsac"] = _str_keys(error_auc(magsac, H_THRESHOLDS))
    return out


def evaluate_hpatches(
    data: str | os.PathLike | list[HPatchesSequence],
    extractors: Sequence[Extractor],
    protocol: HPatchesProtocol | str = "silk",
    dense: bool = False,
    seed: int = 0,
    progress: bool = True,
    device: str = "cpu",
) -> dict:
    """Run every extractor on every pair (1, k) of HPatches.

    Args:
        data: the ``hpatches-sequences-release`` folder (or one in the same layout; the protocol's exclusions
            apply), or sequences already read by :func:`read_hpatches`.
        extractors: see :mod:`.extractors` (their keypoint limits are theirs: the CLI sets the protocol's).
        protocol: a :class:`HPatchesProtocol` or the name of one.
        dense: match the dense descriptors of every output cell instead of the sparse keypoints (SiLK only).
        seed: RANSAC seed of pair i is ``seed + i``: results do not depend on the extractor order.
        progress: show a progress bar.
        device: torch device for matching and nearest-neighbour searches (use the GPU for ``dense``).

    Returns:
        ``{"protocol": {...}, "dense": bool, "methods": {name: {"summary": summarize(...),
        "seconds_per_image": float, "pairs": [per-pair dicts with sequence, index, kind]}}}``.
    """
    if isinstance(protocol, str):
        protocol = get_protocol(protocol)
    if not extractors:
        raise SilkError("no extractor to evaluate")
    sequences = data if isinstance(data, list) else read_hpatches(data, protocol.exclude)
    results: dict[str, list[dict]] = {e.name: [] for e in extractors}
    o = protocol.pixel_offset
    bar = tqdm(sequences, desc=f"hpatches/{protocol.name}", unit="seq", disable=not progress)
    pair_index = 0
    for seq in bar:
        ref, s0 = load_for_protocol(seq.images[0], protocol)
        others = [load_for_protocol(p, protocol) for p in seq.images[1:]]
        for e in extractors:
            extract = e.dense if dense else e
            feats0 = extract(ref)
            for k, ((img, s1), H) in enumerate(zip(others, seq.homographies), start=2):
                r = evaluate_pair(feats0, extract(img), resized_homography(H, s0, s1, o), _size(ref), _size(img), o,
                                  protocol.ransac_threshold, seed + pair_index + k - 2, device,
                                  protocol.refine)
                results[e.name].append({"sequence": seq.name, "index": k, "kind": seq.kind, **r})
        pair_index += len(seq.homographies)
    return {
        "protocol": asdict(protocol),
        "dense": dense,
        "methods": {
            e.name: {"summary": summarize(results[e.name]), "seconds_per_image": e.seconds_per_image,
                     "pairs": [_jsonable_pair(p) for p in results[e.name]]}
            for e in extractors
        },
    }


def _size(img: np.ndarray) -> tuple[int, int]:
    return img.shape[1], img.shape[0]


def _str_keys(d: dict) -> dict[str, float]:
    return {f"{k:g}": v for k, v in d.items()}


def _mean_dicts(ds: list[dict]) -> dict[str, float]:
    return {f"{k:g}": float(np.mean([d[k] for d in ds])) for k in ds[0]}


def _jsonable_pair(p: dict) -> dict:
    return {**p, "repeatability": _str_keys(p["repeatability"]), "mma": _str_keys(p["mma"])}
