"""Sub-pixel keypoint positions: extrema of a difference-of-Gaussians scale space of the image.

A strided SiLK model scores cells (2 px for ``fast``, 4 px for ``tiny``). Its probability ranks how matchable a
place is but does not locate a point inside a cell (docs/subpixel.md measures what was tried). The positions
come from the image instead: the extrema of a difference-of-Gaussians (DoG) stack of the gray image at fine
scales, each refined below the pixel and the scale step by a quadratic fit of its 3x3x3 neighbourhood (Lowe's
localisation). The pipeline keeps the extrema where the SiLK probability is highest and samples the descriptors
there; nothing here is learned, so every network path (exact, fused, ONNX) gets the same positions.

Scales: octave -1 on the image upsampled 2x (detection sigmas 1.0, 1.26, 1.59 px of the image) and octave 0
on the image itself (2.0, 2.5, 3.2 px). Coordinates: image pixels (x, y), centre of the top-left pixel = (0, 0).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .coords import GridMap

#: Detection scales per octave (Lowe's s = 3); an octave has s + 3 Gaussians and s + 2 DoG layers.
SCALES_PER_OCTAVE = 3
#: Blur of the first Gaussian of an octave, in that octave's pixels.
BASE_SIGMA = 1.6
#: Blur assumed in the input image, in its pixels.
INPUT_SIGMA = 0.5


@dataclass(frozen=True)
class ExtremaConfig:
    """Which DoG extrema are kept.

    contrast: least |DoG| at the refined extremum times ``SCALES_PER_OCTAVE``, for images in [0, 1];
    edge_ratio: largest ratio of the two principal curvatures (Lowe's r); more edge-like extrema are dropped;
    octaves: octaves to search, -1 = the image upsampled 2x, 0 = the image;
    border: extrema closer than this many octave pixels to the octave's border are not searched.
    """

    contrast: float = 0.02
    edge_ratio: float = 10.0
    octaves: tuple[int, ...] = (-1, 0)
    border: int = 2


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a float32 (H, W) image, kernel radius ceil(3 sigma), mirrored borders (``dcb|abcd|cba``)."""
    size = 2 * max(1, math.ceil(3 * sigma)) + 1
    return cv2.GaussianBlur(image, (size, size), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


def dog_octave(base: np.ndarray, base_sigma: float) -> np.ndarray:
    """DoG layers (S + 2, H, W) float32 of one octave of ``base`` (H, W), which is blurred ``base_sigma`` (its px)."""
    sigmas = [BASE_SIGMA * 2 ** (i / SCALES_PER_OCTAVE) for i in range(SCALES_PER_OCTAVE + 3)]
    dog = np.empty((len(sigmas) - 1, *base.shape), np.float32)
    prev = gaussian_blur(base, math.sqrt(max(sigmas[0] ** 2 - base_sigma**2, 0.01)))
    for layer, (a, b) in enumerate(itertools.pairwise(sigmas)):
        cur = gaussian_blur(prev, math.sqrt(b**2 - a**2))
        cv2.subtract(cur, prev, dst=dog[layer])
        prev = cur
    return dog


def _candidates(dog: np.ndarray, threshold: float, border: int) -> np.ndarray:
    """(K, 3) int64 ``(layer, row, col)``: samples of layers 1..S-2 of a DoG stack (S, H, W) not below (not
    above) any of their 26 neighbours and above ``threshold`` (below ``-threshold``), at least ``border`` samples
    inside; ordered by layer, then row, then column."""
    kernel = np.ones((3, 3), np.uint8)
    h, w = dog.shape[1:]
    border = max(border, 1)
    flat = dog.reshape(len(dog), -1)
    found = []
    for layer in range(1, len(dog) - 1):
        d = dog[layer]
        # extrema of their own layer first (cheap, whole image), then the 3x3 samples of the two neighbouring
        # layers at those only (the border is at least 1: each sample's 3x3 neighbourhood is inside the layer)
        peak = cv2.compare(d, cv2.dilate(d, kernel), cv2.CMP_GE)
        pit = cv2.compare(d, cv2.erode(d, kernel), cv2.CMP_LE)
        mask = cv2.bitwise_or(cv2.bitwise_and(peak, cv2.compare(d, threshold, cv2.CMP_GT)),
                              cv2.bitwise_and(pit, cv2.compare(d, -threshold, cv2.CMP_LT)))
        mask[:border], mask[h - border:], mask[:, :border], mask[:, w - border:] = 0, 0, 0, 0
        points = cv2.findNonZero(mask)
        if points is None:
            continue
        c, r = points.reshape(-1, 2).astype(np.int64).T
        index = r * w + c
        v = flat[layer, index]
        ring = np.stack([flat[other, index + dr * w + dc] for other in (layer - 1, layer + 1)
                         for dr in (-1, 0, 1) for dc in (-1, 0, 1)])
        keep = ((v > 0) & (v >= ring.max(axis=0))) | ((v < 0) & (v <= ring.min(axis=0)))
        found.append(np.stack([np.full(int(keep.sum()), layer), r[keep], c[keep]], 1))
    return np.concatenate(found) if found else np.zeros((0, 3), np.int64)


def _fit(dog: np.ndarray, s: np.ndarray, r: np.ndarray, c: np.ndarray):
    """Value (K,), gradient (K, 3) and Hessian (K, 3, 3) in (x, y, scale) of a DoG stack (S, H, W) at integer
    samples."""
    flat, (h, w) = dog.reshape(-1), dog.shape[1:]
    index = (s * h + r) * w + c

    def at(ds: int, dr: int, dc: int) -> np.ndarray:
        return flat[index + ((ds * h + dr) * w + dc)]

    v = at(0, 0, 0)
    grad = np.stack([at(0, 0, 1) - at(0, 0, -1), at(0, 1, 0) - at(0, -1, 0), at(1, 0, 0) - at(-1, 0, 0)], 1) / 2
    hxx = at(0, 0, 1) + at(0, 0, -1) - 2 * v
    hyy = at(0, 1, 0) + at(0, -1, 0) - 2 * v
    hss = at(1, 0, 0) + at(-1, 0, 0) - 2 * v
    hxy = (at(0, 1, 1) - at(0, 1, -1) - at(0, -1, 1) + at(0, -1, -1)) / 4
    hxs = (at(1, 0, 1) - at(1, 0, -1) - at(-1, 0, 1) + at(-1, 0, -1)) / 4
    hys = (at(1, 1, 0) - at(1, -1, 0) - at(-1, 1, 0) + at(-1, -1, 0)) / 4
    hess = np.stack([np.stack([hxx, hxy, hxs], 1), np.stack([hxy, hyy, hys], 1), np.stack([hxs, hys, hss], 1)], 1)
    return v, grad, hess


def octave_extrema(dog: np.ndarray, config: ExtremaConfig, iterations: int = 3) -> np.ndarray:
    """Refined extrema (K, 3) float64 ``(col, row, layer)`` of one octave's DoG stack (S, H, W), octave units.

    An extremum is a sample above (or below) its 26 neighbours in the layers 1..S-2; while the quadratic fit puts
    it more than half a sample away it moves to the neighbouring sample (at most ``iterations`` times). It is
    dropped if it does not settle, has low contrast or lies on an edge.
    """
    n, (h, w), b = len(dog), dog.shape[1:], config.border
    s, r, c = _candidates(dog, 0.5 * config.contrast / SCALES_PER_OCTAVE, b).T
    k = len(s)
    value, offset, hess = np.zeros(k), np.zeros((k, 3)), np.zeros((k, 3, 3))
    settled = np.zeros(k, bool)
    active = np.arange(k)  # the samples not settled yet: only these are fitted again
    for _ in range(iterations):
        v, grad, hs = _fit(dog, s[active], r[active], c[active])
        solvable = np.abs(np.linalg.det(hs)) > 1e-12
        move = -np.linalg.solve(np.where(solvable[:, None, None], hs, np.eye(3)), grad[..., None])[..., 0]
        move[~solvable] = 9.0
        done = np.abs(move).max(axis=1) <= 0.5
        value[active], offset[active], hess[active], settled[active] = v + 0.5 * (grad * move).sum(1), move, hs, done
        active, move = active[~done], move[~done]
        if not len(active):
            break
        step = np.clip(np.round(move), -1, 1).astype(np.int64)
        c[active] = np.clip(c[active] + step[:, 0], b, w - 1 - b)
        r[active] = np.clip(r[active] + step[:, 1], b, h - 1 - b)
        s[active] = np.clip(s[active] + step[:, 2], 1, n - 2)
    hxx, hyy, hxy = hess[:, 0, 0], hess[:, 1, 1], hess[:, 0, 1]
    trace, det = hxx + hyy, hxx * hyy - hxy**2
    ratio = config.edge_ratio
    keep = settled & (np.abs(value) * SCALES_PER_OCTAVE >= config.contrast)
    keep &= (det > 0) & (trace**2 * ratio < (ratio + 1) ** 2 * det)
    points = np.stack([c, r, s], axis=1) + offset
    return _distinct(points[keep])


def _distinct(points: np.ndarray) -> np.ndarray:
    """Drop repeats (two samples that settled on the same point, to 1/64 of a sample), keeping the first."""
    _, first = np.unique(np.round(points * 64), axis=0, return_index=True)
    return points[np.sort(first)]


#: Rows of the image searched per band: a band and its margins are filtered alone, which bounds the memory
#: (the 2x octave has four times the image's pixels) and gives the same extrema as the whole image.
BAND_ROWS = 512
#: Rows of context above and below a band: more than the summed radii of an octave's blur kernels (37 px at the
#: image's scale for both octaves) plus the moves of the localisation.
BAND_MARGIN = 48


def _octave_points(image: np.ndarray, octave: int, config: ExtremaConfig) -> np.ndarray:
    """Refined extrema (K, 3) ``(x, y, sigma)`` of one octave of a float32 (H, W) image, image px."""
    if octave == -1:  # 2x px u -> image px u / 2 - 1/4 (half-pixel-centred bilinear upsampling)
        h, w = image.shape
        base = cv2.resize(image, (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR)
        scale, shift, blur = 0.5, -0.25, 2 * INPUT_SIGMA
    elif octave == 0:
        base, scale, shift, blur = image, 1.0, 0.0, INPUT_SIGMA
    else:
        raise ValueError(f"octave must be -1 or 0, got {octave}")
    if min(base.shape) < 2 * config.border + 3:
        return np.zeros((0, 3))
    points = octave_extrema(dog_octave(base, blur), config)
    sigma = BASE_SIGMA * 2 ** (points[:, 2] / SCALES_PER_OCTAVE) * scale
    return np.stack([points[:, 0] * scale + shift, points[:, 1] * scale + shift, sigma], 1)


def dog_extrema(gray: np.ndarray, config: ExtremaConfig = ExtremaConfig()) -> np.ndarray:
    """Refined DoG extrema of one gray image (H, W) float in [0, 1]: (K, 3) float32 ``(x, y, sigma)``, image px,
    ordered by band (top to bottom), then octave.

    Raises ``ValueError`` for an octave other than -1 or 0 in ``config.octaves``.
    """
    image = np.ascontiguousarray(gray, dtype=np.float32)
    h = image.shape[0]
    out = [np.zeros((0, 3))]
    for top in range(0, h, BAND_ROWS):
        bottom = min(top + BAND_ROWS, h)
        lo, hi = max(top - BAND_MARGIN, 0), min(bottom + BAND_MARGIN, h)
        for octave in config.octaves:
            points = _octave_points(image[lo:hi], octave, config)
            points[:, 1] += lo
            # each extremum belongs to the band holding its sample row (the octave's grid rounds it there)
            inside = (points[:, 1] >= top - 0.5) & (points[:, 1] < bottom - 0.5) if lo or hi < h else slice(None)
            out.append(points[inside])
    return np.concatenate(out).astype(np.float32)


#: Weights of R, G, B in the gray image of a colour input (ITU-R BT.601, as OpenCV's RGB2GRAY).
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def sample_map(values: torch.Tensor, grid: GridMap, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear samples (N,) of one image's cell map ``values`` (Hf, Wf) at image pixels ``xy`` (N, 2), clamped
    to the outer cells."""
    h, w = values.shape
    cells = grid.to_cells(xy.to(values.dtype))
    norm = torch.stack([cells[:, 0] / max(w - 1, 1), cells[:, 1] / max(h - 1, 1)], dim=1) * 2 - 1
    return F.grid_sample(values[None, None], norm[None, None], mode="bilinear", padding_mode="border",
                         align_corners=True)[0, 0, 0]


def gray_image(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1], C = 1 or 3 -> (H, W) float32 numpy gray image."""
    if image.shape[0] == 3:
        image = sum(w * c for w, c in zip(GRAY_WEIGHTS, image.float()))[None]
    return image[0].float().cpu().numpy()


def suppress(xy: torch.Tensor, scores: torch.Tensor, radius: float, block: int = 1024) -> torch.Tensor:
    """(N,) bool: points with no better-scored point within ``radius`` px (Chebyshev); ties keep both."""
    keep = torch.ones(len(xy), dtype=torch.bool, device=xy.device)
    if radius <= 0:
        return keep
    for start in range(0, len(xy), block):
        near = (xy[start:start + block, None] - xy[None]).abs().amax(dim=-1) <= radius
        keep[start:start + block] = ~(near & (scores[None] > scores[start:start + block, None])).any(dim=1)
    return keep


def select_extrema(
    probability: torch.Tensor,
    images: torch.Tensor,
    grid: GridMap,
    max_keypoints: int | None = 10000,
    threshold: float = 0.0,
    nms_radius: int = 0,
    remove_borders: int = 0,
    config: ExtremaConfig = ExtremaConfig(),
) -> list[torch.Tensor]:
    """Keypoints at the DoG extrema of each image, ranked by the SiLK probability at them.

    Args:
        probability: (B, 1, Hf, Wf) keypoint probability on the model's grid.
        images: (B, C, H, W) the network's input in [0, 1] (C = 1 or 3; the extrema are found in its gray image).
        grid: maps cells to image pixels.
        max_keypoints: keep at most this many best extrema per image (None: all above the threshold).
        threshold: keep extrema whose probability (bilinear at the extremum) is ``> threshold``.
        nms_radius: drop extrema with a better one within this many cells (Chebyshev; 0: off).
        remove_borders: drop extrema closer than this many pixels to the image border.

    Returns:
        list of B tensors (N_i, 3) ``(x, y, score)``, image pixels, best score first (ties: top to bottom).
    """
    h, w = images.shape[-2:]
    out = []
    for prob, image in zip(probability[:, 0], images):
        xy = torch.from_numpy(dog_extrema(gray_image(image), config)[:, :2]).to(prob.device)
        score = sample_map(prob, grid, xy).to(prob.dtype)
        b = remove_borders
        keep = (score > threshold) & (xy[:, 0] >= b) & (xy[:, 0] <= w - 1 - b) & (xy[:, 1] >= b) & (xy[:, 1] <= h - 1 - b)
        xy, score = xy[keep], score[keep]
        keep = suppress(xy, score, nms_radius * grid.stride)
        xy, score = xy[keep], score[keep]
        order = torch.sort(score, descending=True, stable=True).indices[:max_keypoints]
        out.append(torch.cat([xy[order].to(prob.dtype), score[order, None]], dim=1))
    return out
