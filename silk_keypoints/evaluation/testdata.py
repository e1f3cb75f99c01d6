"""Small data sets in the real benchmarks' layouts, generated from any image folder (or procedural textures).

* :func:`make_hpatches`: ``hpatches-sequences-release``-like sequences. ``v_*``: random homographies of a
  larger canvas (no black borders) with mild photometric changes; ``i_*``: identity geometry, strong
  illumination changes (gain, gamma, colour tint, shading ramp, noise). ``1.ppm``...``6.ppm``, ``H_1_2``...``H_1_6``.
  ``strength=(lo, hi)`` ramps the change from image 2 to image 6, as real HPatches sequences get harder.
* :func:`make_rotations`: in-plane rotations of a reference image (any angles), in the same layout.
* :func:`make_pose_dataset`: a synthetic 3-D scene (textured planes at different depths) rendered from a few
  known cameras, with the pair lists of :mod:`.pose` (JSON, CSV, a LoFTR/MegaDepth-style ``scene_info.npz``)
  and an IMC2022-style ``test.csv`` + ``test_images``.
* :func:`make_rgbd_dataset`: the same kind of scene along a short camera path, in the ScanNet export layout
  (``color/``, ``depth/`` uint16 mm, ``pose/`` camera-to-world, ``intrinsic/``) with a LoFTR ScanNet-1500-style
  ``test.npz`` + ``intrinsics.npz``.

Conventions: pixel centres at integers (the homographies map pixel centres as :func:`cv2.warpPerspective`
does); cameras are OpenCV's (x right, y down, z forward); ``T_0to1`` maps camera-0 points to camera 1.
All randomness comes from ``seed``.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import SilkError
from ..io import list_images, load_image
from .hpatches import HPatchesSequence

Size = tuple[int, int]  # (W, H)


# ---------------------------------------------------------------------------------------------- images
def random_texture(size: Size, rng: np.random.Generator) -> np.ndarray:
    """A procedural RGB uint8 (H, W, 3) image full of corners and blobs: shapes, lines and blurred noise."""
    w, h = size
    noise = rng.random((max(2, h // 8), max(2, w // 8), 3))
    img = cv2.resize((noise * 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(max(12, w * h // 600)):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 4)
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(3, max(4, min(w, h) // 10)))
        if kind == 0:
            cv2.circle(img, (x, y), r, color, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(img, (x, y), (x + r, y + int(rng.integers(3, r + 4))), color, -1)
        elif kind == 2:
            pts = (rng.random((int(rng.integers(3, 6)), 2)) * 2 * r - r + (x, y)).astype(np.int32)
            cv2.fillPoly(img, [pts], color, cv2.LINE_AA)
        else:
            cv2.line(img, (x, y), (x + int(rng.integers(-r, r)), y + int(rng.integers(-r, r))), color, 2, cv2.LINE_AA)
    return cv2.GaussianBlur(img, (3, 3), 0.7)


def source_images(images: str | os.PathLike | None, count: int, size: Size, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` RGB uint8 images of exactly ``size`` (W, H): random crops of the folder's images (cycled,
    resized to cover ``size``), or procedural textures when ``images`` is None."""
    if images is None:
        return [random_texture(size, rng) for _ in range(count)]
    paths = list_images(images)
    if not paths:
        raise SilkError(f"no images (by suffix) found in {images}")
    order = rng.permutation(len(paths))
    return [cover_crop(load_image(paths[order[i % len(paths)]]), size, rng) for i in range(count)]


def cover_crop(img: np.ndarray, size: Size, rng: np.random.Generator) -> np.ndarray:
    """A random crop of exactly ``size`` (W, H) of ``img`` resized (aspect kept) to cover ``size``."""
    w, h = size
    s = max(w / img.shape[1], h / img.shape[0])
    if s != 1.0:
        new = (max(w, round(img.shape[1] * s)), max(h, round(img.shape[0] * s)))
        img = cv2.resize(img, new, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    y = int(rng.integers(0, img.shape[0] - h + 1))
    x = int(rng.integers(0, img.shape[1] - w + 1))
    return np.ascontiguousarray(img[y : y + h, x : x + w])


def _write_image(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params):
        raise SilkError(f"cannot write {path}")


# ---------------------------------------------------------------------------------------------- HPatches
def translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], dtype=np.float64)


def random_homography(size: Size, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """A random viewpoint-like homography about the centre of an image of ``size`` (W, H): rotation up to
    15 deg, scale 0.8-1.25, shear, perspective and a shift of up to 8 % of the size, times ``strength``."""
    w, h = size
    a = np.radians(rng.uniform(-15, 15)) * strength
    s = np.exp(rng.uniform(np.log(0.8), np.log(1.25)) * strength)
    shear = rng.uniform(-0.1, 0.1) * strength
    A = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.array([[s, shear], [0, s]])
    M = np.eye(3)
    M[:2, :2] = A
    M[:2, 2] = rng.uniform(-0.08, 0.08, 2) * (w, h) * strength
    M[2, :2] = rng.uniform(-0.4, 0.4, 2) / (w, h) * strength
    c = translation((w - 1) / 2, (h - 1) / 2)
    return c @ M @ np.linalg.inv(c)


def change_illumination(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Photometric change: gamma, gain, colour tint, a linear shading ramp and noise (RGB uint8 in and out)."""
    h, w = img.shape[:2]
    f = img.astype(np.float32) / 255.0
    f = f ** np.exp(rng.uniform(-0.5, 0.5) * strength)
    f = f * np.exp(rng.uniform(-0.5, 0.4) * strength) * np.exp(rng.uniform(-0.15, 0.15, 3) * strength)
    gx, gy = rng.uniform(-0.25, 0.25, 2) * strength
    ramp = gx * np.linspace(-1, 1, w)[None, :] + gy * np.linspace(-1, 1, h)[:, None]
    f = f + ramp[..., None] + rng.normal(0, 0.01 * strength, f.shape)
    return (np.clip(f, 0, 1) * 255 + 0.5).astype(np.uint8)


def make_hpatches(
    out: str | os.PathLike,
    images: str | os.PathLike | None = None,
    sequences: int = 4,
    size: Size = (320, 240),
    seed: int = 0,
    strength: tuple[float, float] = (1.0, 1.0),
    viewpoint_light: float = 0.3,
) -> Path:
    """Write ``sequences`` HPatches-like sequences under ``out`` (half ``i_synthNN``, half ``v_synthNN``).

    Each sequence: ``1.ppm``...``6.ppm`` of ``size`` (W, H) and ``H_1_k`` (3 rows of 3 numbers) mapping
    pixels of ``1.ppm`` to pixels of ``k.ppm``. ``strength``: of the change in image 2 and in image 6 (linear
    in between), a factor on the ranges of :func:`random_homography` and :func:`change_illumination`.
    ``viewpoint_light``: the strength of the photometric change of the viewpoint images (0.3: mild; 1: as
    strong as the default illumination sequences). Returns ``out``.
    """
    if sequences < 1:
        raise SilkError(f"sequences must be >= 1, got {sequences}")
    if len(strength) != 2 or not (0 < min(strength) and max(strength) <= 4):
        raise SilkError(f"strength must be two factors in (0, 4], got {strength}")
    if not 0 <= viewpoint_light <= 4:
        raise SilkError(f"viewpoint_light must be in [0, 4], got {viewpoint_light}")
    rng = np.random.default_rng(seed)
    out = Path(out)
    margin = hpatches_margin(size, max(strength))
    canvases = source_images(images, sequences, (size[0] + 2 * margin[0], size[1] + 2 * margin[1]), rng)
    for i, canvas in enumerate(canvases):
        viewpoint = i % 2 == 1
        seq = out / f"{'v' if viewpoint else 'i'}_synth{i:02d}"
        seq.mkdir(parents=True, exist_ok=True)
        ref = hpatches_reference(canvas, size, margin)
        _write_image(seq / "1.ppm", ref)
        for k in range(2, 7):
            s = float(np.interp(k, (2, 6), strength))
            img, H = hpatches_view(canvas, ref, margin, rng, s, viewpoint, viewpoint_light)
            _write_image(seq / f"{k}.ppm", img)
            np.savetxt(seq / f"H_1_{k}", H / H[2, 2], fmt="%.12g")
    return out


def hpatches_margin(size: Size, strength: float) -> Size:
    """Margin (x, y) of the canvas around an image of ``size`` (W, H) for homographies up to ``strength``
    (a larger canvas for stronger ones: no black borders)."""
    grow = max(1.0, strength)
    return int(size[0] * grow) // 4, int(size[1] * grow) // 4


def hpatches_reference(canvas: np.ndarray, size: Size, margin: Size) -> np.ndarray:
    """The reference image (``1.ppm``) of ``size`` (W, H): the canvas without its margin."""
    return cv2.warpPerspective(canvas, translation(-margin[0], -margin[1]), size, flags=cv2.INTER_LINEAR)


def hpatches_view(
    canvas: np.ndarray, ref: np.ndarray, margin: Size, rng: np.random.Generator, strength: float,
    viewpoint: bool, viewpoint_light: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """One other image of a :func:`make_hpatches` sequence and the homography from ``ref`` to it: a viewpoint
    change of ``strength`` seen from the canvas with a photometric change of ``viewpoint_light``, or (not
    ``viewpoint``) the reference under a photometric change of ``strength`` (identity homography)."""
    if not viewpoint:
        return change_illumination(ref, rng, strength), np.eye(3)
    size = (ref.shape[1], ref.shape[0])
    H = _homography_inside(size, margin, rng, strength)
    img = cv2.warpPerspective(canvas, H @ translation(-margin[0], -margin[1]), size, flags=cv2.INTER_LINEAR)
    return change_illumination(img, rng, viewpoint_light), H


def rotation_about(size: Size, degrees: float, scale: float = 1.0) -> np.ndarray:
    """3x3 homography rotating an image of ``size`` (W, H) by ``degrees`` about its centre (counter-clockwise
    as seen on screen, y down; pixel centres at integers) and scaling it by ``scale`` about the same centre."""
    w, h = size
    a = np.radians(degrees)
    cos, sin = scale * np.cos(a), scale * np.sin(a)
    R = np.array([[cos, sin, 0], [-sin, cos, 0], [0, 0, 1]])
    c = translation((w - 1) / 2, (h - 1) / 2)
    return c @ R @ np.linalg.inv(c)


def paste_view(photo: np.ndarray, clutter: np.ndarray, H: np.ndarray) -> np.ndarray:
    """``photo`` warped by the 3x3 homography ``H`` onto ``clutter`` (both (h, w, 3) uint8 of one size): where
    the warped photo does not reach, the clutter shows."""
    h, w = photo.shape[:2]
    return cv2.warpPerspective(photo, H, (w, h), dst=clutter.copy(), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_TRANSPARENT)


def make_rotations(
    out: str | os.PathLike,
    images: str | os.PathLike | None = None,
    count: int = 4,
    size: Size = (320, 240),
    angles: Sequence[float] = (0, 15, 30, 45, 60, 90, 135, 180),
    seed: int = 0,
    light: float = 0.3,
) -> list[HPatchesSequence]:
    """In-plane rotation sequences: for each of ``count`` images, ``rot{i:02d}/1.png`` (the reference, a crop
    of ``size`` (W, H)) and ``k.png`` for k = 2.. : the same scene rotated by ``angles[k - 2]`` degrees about the
    image centre, from a canvas large enough for no black corner, with a mild photometric change of strength
    ``light`` (so that the 0-degree pair is not a copy); ``H_1_k`` maps reference pixels to those of ``k.png``.
    Returns the sequences (named ``v_rot{i:02d}``, ready for :func:`.hpatches.evaluate_hpatches`)."""
    if count < 1 or not angles:
        raise SilkError(f"make_rotations needs count >= 1 and at least one angle, got {count} and {list(angles)}")
    rng = np.random.default_rng(seed)
    out = Path(out)
    w, h = size
    side = int(np.ceil(np.hypot(w, h))) + 2
    canvas_size = (side, side)
    crop = translation(-(side - w) / 2, -(side - h) / 2)  # canvas pixels -> reference pixels
    sequences = []
    for i, canvas in enumerate(source_images(images, count, canvas_size, rng)):
        folder = out / f"rot{i:02d}"
        ref = cv2.warpPerspective(canvas, crop, size, flags=cv2.INTER_LINEAR)
        paths, homographies = [folder / "1.png"], []
        _write_image(paths[0], ref)
        for k, angle in enumerate(angles, start=2):
            H = rotation_about(size, float(angle))
            img = change_illumination(cv2.warpPerspective(canvas, H @ crop, size, flags=cv2.INTER_LINEAR), rng, light)
            paths.append(folder / f"{k}.png")
            _write_image(paths[-1], img)
            np.savetxt(folder / f"H_1_{k}", H, fmt="%.12g")
            homographies.append(H)
        sequences.append(HPatchesSequence(f"v_rot{i:02d}", paths, homographies))
    return sequences


def _homography_inside(size: Size, margin: Size, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """A random homography of at most ``strength`` whose inverse maps the image corners inside the canvas
    (image + margin); weaker draws are tried when a strong one leaves the canvas."""
    w, h = size
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], dtype=np.float64)
    for s in np.linspace(1.0, 0.2, 30) * strength:
        H = random_homography(size, rng, s)
        p = corners @ np.linalg.inv(H).T
        p = p[:, :2] / p[:, 2:]
        if (p[:, 0] > -margin[0]).all() and (p[:, 0] < w - 1 + margin[0]).all() and \
                (p[:, 1] > -margin[1]).all() and (p[:, 1] < h - 1 + margin[1]).all():
            return H
    return np.eye(3)


# ---------------------------------------------------------------------------------------------- 3-D scenes
@dataclass
class Plane:
    """A textured rectangle ``origin + a * u + b * v`` for a, b in [0, 1] (metres, world frame);
    texture pixel (x, y) = (a * W_t - 0.5, b * H_t - 0.5)."""

    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    texture: np.ndarray


def intrinsics(size: Size, focal_factor: float = 0.9) -> np.ndarray:
    """Pinhole K (3, 3) for ``size`` (W, H): f = focal_factor * W, principal point at the image centre."""
    w, h = size
    f = focal_factor * w
    return np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]], dtype=np.float64)


def look_at(centre: np.ndarray, target: np.ndarray, roll_deg: float = 0.0) -> np.ndarray:
    """Camera-to-world 4x4 of an OpenCV camera at ``centre`` looking at ``target`` (world y points down)."""
    z = target - centre
    z = z / np.linalg.norm(z)
    x = np.cross(z, [0.0, -1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    r = np.radians(roll_deg)
    roll = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], axis=1) @ roll
    T[:3, 3] = centre
    return T


def random_scene(rng: np.random.Generator, textures: list[np.ndarray]) -> list[Plane]:
    """Four textured planes (a back wall at ~4 m, a floor, two tilted panels at 2-3 m) from 4 textures."""

    def rot_y(deg: float) -> np.ndarray:
        a = np.radians(deg)
        return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])

    def panel(centre: np.ndarray, width: float, height: float, yaw: float, texture: np.ndarray) -> Plane:
        R = rot_y(yaw)
        u, v = R @ [width, 0, 0], R @ [0, height, 0]
        return Plane(centre - u / 2 - v / 2, u, v, texture)

    wall_z = rng.uniform(3.8, 4.4)
    return [
        Plane(np.array([-3.5, -3.5, wall_z]), np.array([7.0, 0, 0]), np.array([0, 4.6, 0]), textures[0]),
        Plane(np.array([-3.5, 1.1, wall_z]), np.array([7.0, 0, 0]), np.array([0, 0, 0.6 - wall_z]), textures[1]),
        panel(np.array([rng.uniform(-0.9, -0.5), rng.uniform(-0.4, 0.0), rng.uniform(2.0, 2.4)]), 1.3, 1.0,
              rng.uniform(20, 40), textures[2]),
        panel(np.array([rng.uniform(0.5, 0.9), rng.uniform(0.0, 0.4), rng.uniform(2.6, 3.0)]), 1.1, 1.1,
              rng.uniform(-40, -20), textures[3]),
    ]


def render(planes: list[Plane], K: np.ndarray, cam_to_world: np.ndarray, size: Size,
           supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast the planes: RGB uint8 (H, W, 3) and depth float32 (H, W) in metres along the optical axis
    (0 where no plane is hit). Colour is supersampled ``supersample`` x per axis and area-averaged."""
    color = _cast(planes, _scale_intrinsics(K, supersample), cam_to_world,
                  (size[0] * supersample, size[1] * supersample))[0]
    if supersample > 1:
        color = cv2.resize(color, size, interpolation=cv2.INTER_AREA)
    depth = _cast(planes, K, cam_to_world, size, with_color=False)[1]
    return color, depth


def _scale_intrinsics(K: np.ndarray, s: float) -> np.ndarray:
    """K of the image resized by ``s`` (pixel centres at integers: x' = (x + 0.5) s - 0.5)."""
    S = np.array([[s, 0, 0.5 * s - 0.5], [0, s, 0.5 * s - 0.5], [0, 0, 1]])
    return S @ K


def _cast(planes: list[Plane], K: np.ndarray, cam_to_world: np.ndarray, size: Size,
          with_color: bool = True) -> tuple[np.ndarray, np.ndarray]:
    w, h = size
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    rays = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(K).T  # camera frame, z = 1
    d = rays @ cam_to_world[:3, :3].T
    c = cam_to_world[:3, 3]
    depth = np.full((h, w), np.inf)
    color = np.zeros((h, w, 3), np.uint8)
    for p in planes:
        n = np.cross(p.u, p.v)
        denom = d @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((p.origin - c) @ n) / denom
        X = c + t[..., None] * d - p.origin
        a = X @ p.u / (p.u @ p.u)
        b = X @ p.v / (p.v @ p.v)
        hit = (t > 0.05) & (a >= 0) & (a <= 1) & (b >= 0) & (b <= 1) & (t < depth)
        depth[hit] = t[hit]
        if with_color:
            th, tw = p.texture.shape[:2]
            mx = np.where(hit, a * tw - 0.5, -10).astype(np.float32)
            my = np.where(hit, b * th - 0.5, -10).astype(np.float32)
            sample = cv2.remap(p.texture, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            color[hit] = sample[hit]
    depth[~np.isfinite(depth)] = 0
    return color, depth.astype(np.float32)


def relative_pose(cam_to_world0: np.ndarray, cam_to_world1: np.ndarray) -> np.ndarray:
    """T_0to1 (4, 4): camera-0 coordinates -> camera-1 coordinates."""
    return np.linalg.inv(cam_to_world1) @ cam_to_world0


def _textures(images: str | os.PathLike | None, rng: np.random.Generator) -> list[np.ndarray]:
    sizes = [(480, 360), (480, 240), (240, 180), (240, 240)]
    return [source_images(images, 1, s, rng)[0] for s in sizes]


def _random_cameras(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    cams = []
    for i in range(count):
        centre = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.25, 0.15), rng.uniform(-0.4, 0.2)])
        target = np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.2), 3.0])
        cams.append(look_at(centre, target, rng.uniform(-5, 5)))
    return cams


def make_pose_dataset(
    out: str | os.PathLike,
    images: str | os.PathLike | None = None,
    views: int = 4,
    size: Size = (320, 240),
    seed: int = 0,
) -> Path:
    """Render one scene from ``views`` cameras and write every pair (i < j) as:

    * ``images/view{i}.jpg``;
    * ``pairs.json`` and ``pairs.csv`` (the plain formats of :func:`.pose.read_pose_pairs`);
    * ``scene_info.npz``: LoFTR/MegaDepth-style (``image_paths`` relative to ``out``, ``intrinsics``,
      ``poses`` world-to-camera, ``pair_infos`` ``((i, j), overlap, 0)``), object arrays like the original;
    * ``imc2022/test.csv`` + ``imc2022/test_images/synth/view{i}.png`` (IMC2022 test layout) and
      ``imc2022/ground_truth.csv`` (``sample_id``, ``fundamental_matrix``: the true F, space-separated).
    """
    if views < 2:
        raise SilkError(f"views must be >= 2, got {views}")
    rng = np.random.default_rng(seed)
    out = Path(out)
    planes = random_scene(rng, _textures(images, rng))
    K = intrinsics(size)
    cams = _random_cameras(rng, views)
    names = []
    for i, cam in enumerate(cams):
        color, _ = render(planes, K, cam, size)
        names.append(f"images/view{i}.jpg")
        _write_image(out / names[-1], color)
        _write_image(out / "imc2022" / "test_images" / "synth" / f"view{i}.png", color)
    pairs = [(i, j) for i in range(views) for j in range(i + 1, views)]
    rows = [
        {"image0": names[i], "image1": names[j], "K0": K.tolist(), "K1": K.tolist(),
         "T_0to1": relative_pose(cams[i], cams[j]).tolist()}
        for i, j in pairs
    ]
    (out / "pairs.json").write_text(json.dumps({"pairs": rows}, indent=1))
    with open(out / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image0", "image1", "K0", "K1", "T_0to1"])
        for r in rows:
            writer.writerow([r["image0"], r["image1"]] + [_flat(r[k]) for k in ("K0", "K1", "T_0to1")])
    obj = np.empty(views, dtype=object)
    obj[:] = [np.linalg.inv(c) for c in cams]
    kk = np.empty(views, dtype=object)
    kk[:] = [K.copy() for _ in cams]
    infos = np.empty(len(pairs), dtype=object)
    infos[:] = [((i, j), 0.5, np.zeros(2)) for i, j in pairs]
    np.savez(out / "scene_info.npz", image_paths=np.array(names, dtype=object), intrinsics=kk, poses=obj,
             pair_infos=infos)
    with open(out / "imc2022" / "test.csv", "w", newline="") as f, \
            open(out / "imc2022" / "ground_truth.csv", "w", newline="") as g:
        test, truth = csv.writer(f), csv.writer(g)
        test.writerow(["sample_id", "batch_id", "image_1_id", "image_2_id"])
        truth.writerow(["sample_id", "fundamental_matrix"])
        for i, j in pairs:
            sid = f"synth;view{i}-view{j}"
            test.writerow([sid, "synth", f"view{i}", f"view{j}"])
            truth.writerow([sid, _flat(fundamental_from_pose(K, K, relative_pose(cams[i], cams[j])))])
    return out


def fundamental_from_pose(K0: np.ndarray, K1: np.ndarray, T_0to1: np.ndarray) -> np.ndarray:
    """F (3, 3) with ``x1^T F x0 = 0`` for pixels x0, x1 (homogeneous) of the same point; scaled to norm 1."""
    t = T_0to1[:3, 3]
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    F = np.linalg.inv(K1).T @ tx @ T_0to1[:3, :3] @ np.linalg.inv(K0)
    return F / np.linalg.norm(F)


def make_rgbd_dataset(
    out: str | os.PathLike,
    images: str | os.PathLike | None = None,
    frames: int = 4,
    frame_gap: int = 20,
    size: Size = (320, 240),
    seed: int = 0,
) -> Path:
    """Render a short camera path through one scene in ScanNet's export layout under ``out/scene0000_00``:
    ``color/{n}.jpg``, ``depth/{n}.png`` (uint16 millimetres, 0 = no depth), ``pose/{n}.txt`` (camera-to-world
    4x4), ``intrinsic/intrinsic_color.txt`` and ``intrinsic_depth.txt`` (4x4), for n = 0, gap, 2 gap, ...
    Also ``out/test.npz`` (``name`` rows ``[scene, sub-scene, frame0, frame1]`` for consecutive frames, as
    LoFTR's ScanNet-1500 index) and ``out/intrinsics.npz`` (``scene0000_00`` -> K 3x3)."""
    if frames < 2:
        raise SilkError(f"frames must be >= 2, got {frames}")
    rng = np.random.default_rng(seed)
    out = Path(out)
    scene = out / "scene0000_00"
    planes = random_scene(rng, _textures(images, rng))
    K = intrinsics(size)
    start = np.array([rng.uniform(-0.4, -0.2), rng.uniform(-0.2, 0.0), rng.uniform(-0.3, 0.0)])
    step = np.array([rng.uniform(0.12, 0.25), rng.uniform(-0.05, 0.05), rng.uniform(0.0, 0.1)])
    target = np.array([rng.uniform(-0.4, -0.1), 0.0, 3.0])
    target_step = np.array([rng.uniform(0.2, 0.4), rng.uniform(-0.1, 0.1), 0.0])
    (scene / "pose").mkdir(parents=True, exist_ok=True)
    (scene / "depth").mkdir(parents=True, exist_ok=True)
    (scene / "intrinsic").mkdir(parents=True, exist_ok=True)
    K4 = np.eye(4)
    K4[:3, :3] = K
    for name in ("intrinsic_color.txt", "intrinsic_depth.txt"):
        np.savetxt(scene / "intrinsic" / name, K4, fmt="%.6f")
    ids = [n * frame_gap for n in range(frames)]
    for n, frame in enumerate(ids):
        cam = look_at(start + n * step, target + n * target_step, rng.uniform(-3, 3))
        color, depth = render(planes, K, cam, size)
        _write_image(scene / "color" / f"{frame}.jpg", color)
        cv2.imwrite(str(scene / "depth" / f"{frame}.png"), np.round(depth * 1000).astype(np.uint16))
        np.savetxt(scene / "pose" / f"{frame}.txt", cam, fmt="%.9f")
    names = np.array([[0, 0, a, b] for a, b in itertools.pairwise(ids)], dtype=np.int64)
    np.savez(out / "test.npz", name=names)
    np.savez(out / "intrinsics.npz", scene0000_00=K)
    return out


def _flat(m: list | np.ndarray) -> str:
    return " ".join(f"{x:.12g}" for x in np.asarray(m, dtype=np.float64).ravel())
