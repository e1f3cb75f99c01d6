"""Match two images end to end: extract, match, fit a two-view model, draw, summarise, export.

This is what ``silk match`` and ``silk demo`` run::

    from silk_keypoints import SiLK
    from silk_keypoints.pair import match_pair, save_pictures
    result = match_pair(SiLK.from_pretrained(), "a.jpg", "b.jpg", method="mnn")
    print(result.summary())
    save_pictures(result, "matches.png", "keypoints.png")

Keypoints are image pixels (x, y) of the original files, centre of the top-left pixel at (0, 0).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SilkError
from .features import Features
from .files import check_output_path, make_dir, write_bytes
from .geometry import Estimate, estimate_fundamental, estimate_homography, unrotate_points
from .image_features import image_features
from .io import load_image
from .matching import GATE_MIN_INLIER_RATIO, GATE_MIN_INLIERS, Matcher, gate_passes, related_pair
from .model import SiLK
from .viz import draw_keypoints, draw_matches, save_image, side_by_side

DATA_DIR = Path(__file__).parent / "data"
DEMO_PAIR = (DATA_DIR / "box.jpg", DATA_DIR / "box_in_scene.jpg")
DEMO_PICTURES = ("matches.png", "keypoints.png")  # what run_demo writes into its folder
GEOMETRIES = ("homography", "fundamental", "none")
_RANSAC_DEFAULTS = {"homography": 3.0, "fundamental": 1.0}
ROTATIONS = (1, 4)  # match_pair(rotations=): image 1 as it is, or turned by 0, 90, 180 and 270 degrees
WEAK_INLIERS, WEAK_RATIO = 15, 0.1  # fewer inliers and a lower inlier ratio than these: a meaningless model


@dataclass
class PairResult:
    """Everything :func:`match_pair` found for two images.

    ``features`` are :class:`~silk_keypoints.features.Features` (a batch of one each, in the original
    images' pixels); ``matches`` (K, 2) index pairs, ``scores`` (K,) match scores (see
    :func:`~silk_keypoints.matching.match_descriptors`); ``points`` the matched positions (K, 2) in each
    image, refined below the cell size (:mod:`silk_keypoints.refinement`) unless the matcher was told not
    to; ``geometry`` the model fitted to ``points`` (None if not asked).
    """

    names: tuple[str, str]
    images: tuple[np.ndarray, np.ndarray]
    features: tuple[Features, Features]
    matches: np.ndarray
    scores: np.ndarray
    points: tuple[np.ndarray, np.ndarray]
    geometry: Estimate | None
    matcher: dict[str, Any] = field(default_factory=dict)
    rotation: int = 0

    @property
    def inliers(self) -> np.ndarray | None:
        return None if self.geometry is None else self.geometry.inliers

    @property
    def warning(self) -> str | None:
        """Why the fitted model is likely meaningless, or None: the fit failed, or fewer than 15 inliers that
        are also under 10 % of the matches (unrelated images, or a turn the upright model cannot match)."""
        g = self.geometry
        if g is None:
            return None
        hint = "the images may be unrelated" + ("" if self.rotation else ", or turned (try rotations=4, "
                                                "CLI --rotations 4)")
        if not g.success:
            return f"no {g.kind}: {g.message}; {hint}"
        n, k = g.num_inliers, len(self.matches)
        if n < WEAK_INLIERS and n < WEAK_RATIO * k:
            return (f"only {n} of {k} matches ({100 * n / k:.0f}%) fit the {g.kind}, which is likely meaningless: "
                    f"{hint}")
        return None

    def summary(self) -> str:
        """A few lines for people: keypoints per image, matches, inliers and the fitted matrix."""
        lines = [
            f"image0: {self.names[0]}  {_size(self.features[0])}  {_count(self.features[0])} keypoints",
            f"image1: {self.names[1]}  {_size(self.features[1])}  {_count(self.features[1])} keypoints",
            f"matches: {len(self.matches)} ({_describe(self.matcher)})",
        ]
        if self.rotation:
            lines.append(f"image1 matched turned by {self.rotation} degrees (counter-clockwise; points are in its "
                         "own pixels)")
        if self.geometry is not None:
            lines.append(str(self.geometry))
            if self.geometry.success:
                name = {"homography": "H", "fundamental": "F"}[self.geometry.kind]
                rows = np.array2string(self.geometry.model, precision=4, suppress_small=True, max_line_width=120)
                lines.append(f"{name} = " + rows.replace("\n", "\n    "))
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Keypoints, matches and geometry as plain JSON types (no descriptors)."""
        images = {}
        for i in range(2):
            f = self.features[i].to_numpy()
            images[f"image{i}"] = {
                "name": self.names[i],
                "image_size": [int(v) for v in f["image_size"]],
                "keypoints": np.round(f["keypoints"].astype(np.float64), 3).tolist(),
                "scores": np.round(f["scores"].astype(np.float64), 6).tolist(),
            }
        geo = None
        if self.geometry is not None:
            g = self.geometry
            geo = {
                "kind": g.kind,
                "model": None if g.model is None else g.model.tolist(),
                "inliers": g.inliers.astype(bool).tolist(),
                "num_inliers": g.num_inliers,
                "message": g.message,
            }
        return {
            "coordinates": "image pixels (x, y) of the original files, top-left pixel centre at (0, 0)",
            **images,
            "matcher": self.matcher,
            "matches": self.matches.tolist(),
            "match_scores": np.round(self.scores.astype(np.float64), 6).tolist(),
            "match_points0": np.round(self.points[0].astype(np.float64), 3).tolist(),
            "match_points1": np.round(self.points[1].astype(np.float64), 3).tolist(),
            "geometry": geo,
            "image1_rotation_degrees": self.rotation,
            "warning": self.warning,
        }


def match_pair(
    model: SiLK,
    image0: str | os.PathLike | np.ndarray,
    image1: str | os.PathLike | np.ndarray,
    method: str = "mnn",
    matcher_options: dict[str, Any] | None = None,
    geometry: str = "homography",
    ransac_threshold: float | None = None,
    resize: int | None = None,
    progress: Callable[[str], None] | None = None,
    rotations: int = 1,
    min_inliers: int = GATE_MIN_INLIERS,
    min_inlier_ratio: float = GATE_MIN_INLIER_RATIO,
    **detection: Any,
) -> PairResult:
    """Extract keypoints of two images, match them and fit a homography or fundamental matrix.

    Args:
        model: a SiLK model (its device is used).
        image0, image1: file paths or uint8 arrays (H, W) / (H, W, 3) RGB.
        method, matcher_options: :class:`~silk_keypoints.matching.Matcher` method and options (its default
            ``max_distance`` is the unrelated-pairs gate; ``{"max_distance": None}`` turns it off).
        geometry: ``"homography"``, ``"fundamental"`` or ``"none"``.
        ransac_threshold: pixels (default 3 for a homography, 1 for a fundamental matrix).
        resize: downscale each image so its long side is at most this (keypoints stay in original pixels).
        progress: called with a short message before each slow step.
        rotations: 4 also matches image 1 turned by 90, 180 and 270 degrees and keeps the turn with the most
            inliers (for upright models and pairs turned in-plane; needs a ``geometry``; image 1 is extracted
            4 times). Points and keypoints are always in the original image's pixels.
        min_inliers, min_inlier_ratio: a fitted model with fewer inliers, or a smaller share of the matches,
            is rejected: ``geometry`` failed, no inliers (the unrelated-pairs gate, docs/ecosystem.md; 15, COLMAP's
            minimum, and 5 %; 0 turns each off).
        **detection: ``max_keypoints``, ``detection_threshold``, ``nms_radius``, ``remove_borders``,
            ``positions``.
    """
    if geometry not in GEOMETRIES:
        raise SilkError(f"unknown geometry {geometry!r}; choose one of {list(GEOMETRIES)}")
    if rotations not in ROTATIONS:
        raise SilkError(f"rotations must be one of {list(ROTATIONS)}, got {rotations!r}")
    if rotations > 1 and geometry == "none":
        raise SilkError("rotations=4 (--rotations 4) keeps the turn with the most inliers: it needs a geometry")
    if not (isinstance(min_inliers, int) and min_inliers >= 0):
        raise SilkError(f"min_inliers must be an integer >= 0, got {min_inliers!r}")
    if not 0 <= min_inlier_ratio <= 1:
        raise SilkError(f"min_inlier_ratio must be in [0, 1], got {min_inlier_ratio!r}")
    matcher = Matcher(method, **(matcher_options or {}))
    described = {"method": method, **(matcher_options or {})}
    if geometry != "none":
        described.update(min_inliers=min_inliers, min_inlier_ratio=min_inlier_ratio)
    say = progress or (lambda msg: None)
    names, images = [], []
    for image in (image0, image1):
        names.append(Path(image).name if not isinstance(image, np.ndarray) else f"array {image.shape}")
        images.append(load_image(image, max_pixels=model.config.max_pixels)
                      if not isinstance(image, np.ndarray) else image)
    say(f"extracting keypoints: {names[0]}")
    features0 = image_features(model, images[0], resize=resize, neighbours=matcher.refine, **detection)
    best = None
    for turns in range(rotations):
        turned = f" turned by {90 * turns} degrees" if turns else ""
        say(f"extracting keypoints: {names[1]}{turned}")
        rgb1 = np.ascontiguousarray(np.rot90(images[1], turns))
        features1 = image_features(model, rgb1, resize=resize, neighbours=matcher.refine, **detection)
        say("matching" + (f" ({90 * turns} degrees)" if rotations > 1 else ""))
        out = matcher({"image0": features0, "image1": features1})
        matches, scores = out["matches"][0], out["scores"][0]
        points1 = out["points1"][0]
        if turns:  # back to the pixels of the file (refinement ran in the turned image, on its own grid)
            size = (images[1].shape[1], images[1].shape[0])
            points1 = unrotate_points(points1, turns, size)
            features1 = replace(features1.without_neighbours(),
                                keypoints=unrotate_points(features1.keypoints, turns, size),
                                image_size=features1.image_size.new_tensor(size).expand_as(features1.image_size))
        # the one step from torch to numpy: OpenCV's geometry, the pictures and JSON take arrays
        points = (out["points0"][0].cpu().numpy(), points1.cpu().numpy())
        estimate = None
        if geometry != "none":
            say(f"fitting a {geometry} (USAC_MAGSAC)")
            fit = estimate_homography if geometry == "homography" else estimate_fundamental
            threshold = _RANSAC_DEFAULTS[geometry] if ransac_threshold is None else ransac_threshold
            estimate = _gate(fit(*points, threshold=threshold), points, min_inliers, min_inlier_ratio)
        result = PairResult(tuple(names), tuple(images), (features0, features1), matches.cpu().numpy(),
                            scores.cpu().numpy(), points, estimate, described, 90 * turns)
        if best is None or result.geometry.num_inliers > best.geometry.num_inliers:
            best = result
    return best


def _gate(estimate: Estimate, points: tuple[np.ndarray, np.ndarray], min_inliers: int, min_ratio: float) -> Estimate:
    """The unrelated-pairs gate: a model with fewer than ``min_inliers`` inliers or under ``min_ratio`` of the
    matches becomes a failed estimate; so does a fundamental matrix of matches that no homography explains as
    well (:func:`~silk_keypoints.matching.related_pair`): chance matches of unrelated images fit an epipolar
    geometry at ~10 % of the matches, a homography at under 4 %."""
    n, k = estimate.num_inliers, len(estimate.inliers)
    if not estimate.success or (min_inliers == 0 and min_ratio == 0):
        return estimate
    if not gate_passes(n, k, min_inliers, min_ratio):
        reason = f"only {n} of {k} matches fit it"
    elif estimate.kind == "fundamental" and not related_pair(*points, min_inliers, min_ratio):
        reason = f"{n} of {k} matches fit it, but no homography explains {min_inliers} of them"
    else:
        return estimate
    return Estimate(estimate.kind, None, np.zeros_like(estimate.inliers),
                    f"{reason}, below the unrelated-pairs gate of {min_inliers} and {min_ratio:.0%}; --no-gate "
                    "accepts it")


def save_pictures(
    result: PairResult, matches_path: str | os.PathLike | None = None, keypoints_path: str | os.PathLike | None = None
) -> list[Path]:
    """Write ``matches.png`` (side by side, inliers green, outliers red, caption) and/or ``keypoints.png``
    (both images with their keypoints). Returns the written paths."""
    written = []
    if matches_path is not None:
        written.append(save_image(matches_picture(result), matches_path))
    if keypoints_path is not None:
        written.append(save_image(keypoints_picture(result), keypoints_path))
    return written


def keypoints_picture(result: PairResult, index: int | None = None) -> np.ndarray:
    """Keypoints drawn on image ``index`` (0 or 1), or on both side by side (None)."""
    pics = [draw_keypoints(result.images[i], result.features[i].keypoints[0], result.features[i].keypoint_scores[0])
            for i in ((0, 1) if index is None else (index,))]
    return side_by_side(*pics)


def keypoint_picture_names(names: tuple[str, str]) -> list[str]:
    """File names of the two keypoint pictures of a pair: ``<stem>_keypoints.png`` (``_0`` / ``_1`` added when
    both images have the same stem)."""
    stems = [Path(n).stem for n in names]
    if stems[0] == stems[1]:
        stems = [f"{stems[0]}_0", f"{stems[1]}_1"]
    return [f"{s}_keypoints.png" for s in stems]


def matches_picture(result: PairResult) -> np.ndarray:
    """The matches drawing of a :class:`PairResult` with its caption."""
    f0, f1 = result.features
    counts = f"keypoints: {_count(f0)} / {_count(f1)}"
    caption = [f"{counts}   matches: {len(result.matches)} ({_describe(result.matcher)})"]
    g = result.geometry
    if g is not None:
        caption.append(f"inliers: {g.num_inliers} of {len(result.matches)} ({g.kind}, USAC_MAGSAC): green, "
                       "outliers red" if g.success else f"{g.kind} failed: {g.message}")
    # the matched (refined) positions, the points the geometry and its inlier colours were computed on
    pairs = np.stack([np.arange(len(result.matches))] * 2, axis=1)
    return draw_matches(result.images[0], result.images[1], *result.points, pairs, result.inliers, caption)


def save_json(result: PairResult, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write :meth:`PairResult.to_json` (plus ``extra`` entries) to ``path`` atomically."""
    check_output_path(path, formats=None)
    data = {**(extra or {}), **result.to_json()}
    return write_bytes(path, json.dumps(data, indent=1).encode())


def run_demo(
    model: SiLK,
    out_dir: str | os.PathLike,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> tuple[PairResult, list[Path]]:
    """Match the shipped OpenCV sample pair (``data/box.jpg``, ``data/box_in_scene.jpg``), fit a homography
    and write ``matches.png`` and ``keypoints.png`` into ``out_dir`` (created if needed).

    ``options`` go to :func:`match_pair`. Returns the result and the written paths.
    """
    out = make_dir(out_dir)
    result = match_pair(model, *DEMO_PAIR, progress=progress, **options)
    if progress:
        progress("drawing pictures")
    return result, save_pictures(result, *(out / name for name in DEMO_PICTURES))


def _size(features: Features) -> str:
    w, h = (int(v) for v in features.image_size[0])
    return f"{w}x{h}"


def _count(features: Features) -> int:
    return int(features.keypoint_mask[0].sum())


def _describe(matcher: dict[str, Any]) -> str:
    opts = ", ".join(f"{k}={v}" for k, v in matcher.items() if k != "method")
    return matcher.get("method", "?") + (f", {opts}" if opts else "")
