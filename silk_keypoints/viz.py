"""Pictures of keypoints and matches (OpenCV drawing), written atomically.

Images are numpy uint8 (H, W) gray or (H, W, 3) RGB; keypoints are (N, 2) image pixels (x, y), centre of the
top-left pixel at (0, 0). Drawings are returned as RGB uint8 arrays; :func:`save_image` writes them.
Small pictures are enlarged and huge ones shrunk so that points, lines and captions stay readable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .errors import SilkError
from .files import check_output_path, write_bytes

IMAGE_FORMATS = (".png", ".jpg", ".jpeg")
INLIER_COLOR = (40, 220, 40)
OUTLIER_COLOR = (235, 40, 40)
MATCH_COLOR = (255, 200, 0)  # when no inlier mask is given
_MIN_WIDTH, _MAX_WIDTH = 900, 2400  # display width range of a picture
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_SHIFT = 4  # sub-pixel drawing: coordinates in 1/16 px


def draw_keypoints(image: np.ndarray, keypoints, scores=None, caption: str | None = None) -> np.ndarray:
    """Keypoints on a gray copy of ``image``; larger and warmer (turbo colour map) for higher scores.

    Args:
        image: (H, W) or (H, W, 3) uint8.
        keypoints: (N, 2) (x, y) pixels.
        scores: (N,) (any range; mapped min -> max); None draws all points alike.
        caption: text under the picture (default: the keypoint count and score range).

    Returns:
        (H', W', 3) uint8 RGB picture (scaled to a readable width, caption band below).
    """
    kpts = _points(keypoints)
    base, s = _display(_gray_rgb(image))
    if scores is None:
        rank = np.ones(len(kpts))
    else:
        scores = np.asarray(scores, np.float64).reshape(-1)
        lo, hi = (scores.min(), scores.max()) if len(scores) else (0.0, 1.0)
        rank = (scores - lo) / (hi - lo) if hi > lo else np.ones(len(kpts))
    colors = _turbo(rank)
    radius = 1.5 + 3.0 * rank  # display pixels
    for k in np.argsort(rank, kind="stable"):  # best on top
        cv2.circle(base, _fixed(kpts[k], s), int(radius[k] * (1 << _SHIFT)), colors[k], -1, cv2.LINE_AA, _SHIFT)
    if caption is None:
        caption = f"{len(kpts)} keypoints"
        if scores is not None and len(kpts):
            caption += f" (score {lo:.3g}..{hi:.3g}: small/blue -> large/red)"
    return _with_caption(base, [caption])


def draw_matches(
    image0: np.ndarray,
    image1: np.ndarray,
    keypoints0,
    keypoints1,
    matches,
    inliers=None,
    caption: Sequence[str] = (),
    max_lines: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """Both images side by side with a line per match (green inliers, red outliers, or all yellow).

    Args:
        image0, image1: (H, W) or (H, W, 3) uint8.
        keypoints0, keypoints1: (N0, 2), (N1, 2) (x, y) pixels.
        matches: (K, 2) index pairs into keypoints0 / keypoints1.
        inliers: (K,) bool or None.
        caption: lines of text under the picture; a line saying how many lines are drawn is added when
            more than ``max_lines`` matches are subsampled (a fixed random subset, ``seed``).

    Returns:
        (H', W', 3) uint8 RGB picture.
    """
    kpts0, kpts1 = _points(keypoints0), _points(keypoints1)
    matches = np.asarray(matches, np.int64).reshape(-1, 2)
    if len(matches) and (matches.min() < 0 or matches[:, 0].max() >= len(kpts0) or matches[:, 1].max() >= len(kpts1)):
        raise SilkError("match indices out of range of the keypoints")
    inl = None if inliers is None else np.asarray(inliers, bool).reshape(-1)
    if inl is not None and len(inl) != len(matches):
        raise SilkError(f"inlier mask has {len(inl)} entries for {len(matches)} matches")
    (h0, w0), (h1, w1) = image0.shape[:2], image1.shape[:2]
    gap = 8
    canvas = np.full((max(h0, h1), w0 + gap + w1, 3), 255, np.uint8)
    canvas[:h0, :w0] = _gray_rgb(image0)
    canvas[:h1, w0 + gap:] = _gray_rgb(image1)
    canvas, s = _display(canvas)
    caption = list(caption)
    shown = np.arange(len(matches))
    if len(matches) > max_lines:
        shown = np.sort(np.random.default_rng(seed).choice(len(matches), max_lines, replace=False))
        caption.append(f"lines: a random {max_lines} of {len(matches)} matches shown")
    if inl is not None:  # outliers first, inliers on top
        shown = shown[np.argsort(inl[shown], kind="stable")]
    offset = np.array([w0 + gap, 0.0])
    colors = [MATCH_COLOR if inl is None else (INLIER_COLOR if inl[k] else OUTLIER_COLOR) for k in shown]
    ends = [(_fixed(kpts0[matches[k, 0]], s), _fixed(kpts1[matches[k, 1]] + offset, s)) for k in shown]
    lines = canvas.copy()
    for (a, b), color in zip(ends, colors):
        cv2.line(lines, a, b, color, 1, cv2.LINE_AA, _SHIFT)
    canvas = cv2.addWeighted(lines, 0.7, canvas, 0.3, 0)  # translucent lines: dense sets stay readable
    for (a, b), color in zip(ends, colors):
        for p in (a, b):
            cv2.circle(canvas, p, 2 << _SHIFT, color, -1, cv2.LINE_AA, _SHIFT)
    return _with_caption(canvas, caption)


def side_by_side(*pictures: np.ndarray, gap: int = 8) -> np.ndarray:
    """RGB pictures next to each other, top-aligned on a white background."""
    h = max(p.shape[0] for p in pictures)
    w = sum(p.shape[1] for p in pictures) + gap * (len(pictures) - 1)
    out = np.full((h, w, 3), 255, np.uint8)
    x = 0
    for p in pictures:
        out[: p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1] + gap
    return out


def save_image(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an RGB (or gray) uint8 picture as PNG / JPEG, atomically. Returns the path.

    Raises:
        SilkError: unsupported suffix, missing or read-only folder.
    """
    path = check_output_path(path, IMAGE_FORMATS, "picture")
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buf = cv2.imencode(path.suffix.lower(), bgr)
    if not ok:
        raise SilkError(f"cannot encode picture for {path}")
    return write_bytes(path, buf.tobytes())


# ---------------------------------------------------------------------------------------------- helpers
def _points(x) -> np.ndarray:
    p = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, np.float64)
    p = p.reshape(-1, 2) if p.size == 0 else p
    if p.ndim != 2 or p.shape[1] != 2:
        raise SilkError(f"keypoints must be (N, 2) (x, y), got shape {p.shape}")
    return p


def _gray_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 gray or RGB -> gray replicated to 3 channels (coloured marks stand out on it)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise SilkError(f"pictures need uint8 images, got {image.dtype}")
    gray = cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    return np.repeat(gray[:, :, None], 3, axis=2)


def _display(canvas: np.ndarray) -> tuple[np.ndarray, float]:
    """Scale a picture into the readable width range; returns (scaled copy, scale factor)."""
    width = canvas.shape[1]
    s = min(max(1.0, _MIN_WIDTH / width), _MAX_WIDTH / width)
    if s == 1.0:
        return canvas.copy(), 1.0
    size = (round(canvas.shape[1] * s), round(canvas.shape[0] * s))
    return cv2.resize(canvas, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR), s


def _fixed(xy: np.ndarray, s: float) -> tuple[int, int]:
    """Image pixel (x, y) -> fixed-point display coordinates for OpenCV drawing with ``shift=_SHIFT``."""
    d = ((np.asarray(xy) + 0.5) * s - 0.5) * (1 << _SHIFT)
    return round(float(d[0])), round(float(d[1]))


def _turbo(values: np.ndarray) -> list[tuple[int, int, int]]:
    """Values in [0, 1] -> RGB colours of OpenCV's turbo colour map."""
    v = np.clip(np.round(np.asarray(values) * 255), 0, 255).astype(np.uint8).reshape(-1, 1)
    rgb = cv2.applyColorMap(v, cv2.COLORMAP_TURBO)[:, 0, ::-1] if len(v) else np.zeros((0, 3), np.uint8)
    return [tuple(int(c) for c in row) for row in rgb]


def _with_caption(picture: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """Append a dark band with the text ``lines`` (wrapped to the picture width) below the picture."""
    w = picture.shape[1]
    scale = float(np.clip(w / 1600, 0.5, 0.9))
    thick = 1 if scale < 0.7 else 2
    wrapped = [part for line in lines for part in _wrap(line, w - 20, scale, thick)]
    if not wrapped:
        return picture
    line_h = int(32 * scale) + 6
    band = np.full((line_h * len(wrapped) + 12, w, 3), 30, np.uint8)
    for i, text in enumerate(wrapped):
        cv2.putText(band, text, (10, 6 + line_h * (i + 1) - 8), _FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return np.concatenate([picture, band], axis=0)


def _wrap(text: str, width: int, scale: float, thick: int) -> list[str]:
    out, line = [], ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if line and cv2.getTextSize(candidate, _FONT, scale, thick)[0][0] > width:
            out.append(line)
            candidate = word
        line = candidate
    return out + ([line] if line else [])
