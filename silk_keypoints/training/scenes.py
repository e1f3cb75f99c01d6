"""Random 3-D scenes for training pairs with parallax: textured planes seen by two cameras, and the exact
correspondences of any pixel through the rendered depth (occlusions included).

A homography is one plane seen from two cameras; real views hold many surfaces at different depths, so a
point's displacement depends on its depth and parts of one view are hidden in the other. A scene here is a back
wall, an optional floor and panels of random size, depth and orientation, each textured with a photo,
ray-cast (:func:`~silk_keypoints.evaluation.testdata.render`) from two cameras a random baseline apart that look
at the same part of the scene. :func:`project` carries pixels of one view into the other with the depth of
their view, and says which of them the other view sees.

Conventions: pixel centres at integers; OpenCV cameras (x right, y down, z forward, world y down);
``T_0to1`` maps camera-0 points to camera-1 points; depth is the z of the camera frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..evaluation.testdata import Plane, intrinsics, look_at, relative_pose, render


@dataclass
class ScenePair:
    """Two rendered views: RGB uint8 (H, W, 3) images, float32 (H, W) depths (0: nothing hit), the shared
    intrinsics K (3, 3) and ``T_0to1`` (4, 4)."""

    image0: np.ndarray
    image1: np.ndarray
    depth0: np.ndarray
    depth1: np.ndarray
    K: np.ndarray
    T_0to1: np.ndarray


def _rotation(yaw: float, pitch: float) -> np.ndarray:
    a, b = np.radians(yaw), np.radians(pitch)
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return ry @ rx


def random_planes(rng: np.random.Generator, textures: list[np.ndarray]) -> list[Plane]:
    """A back wall at 4-8 m, a floor (half of the scenes), and one panel for each further texture (the first is
    the wall's, the second the floor's): 0.8-4 m away, 0.25-0.7 x its distance wide, turned by up to 50 deg and
    tilted by up to 30 deg. Needs at least 3 textures."""
    wall_z = rng.uniform(4.0, 8.0)
    span = 1.2 * wall_z  # covers the view of every camera of random_cameras
    planes = [Plane(np.array([-span, -span, wall_z]), np.array([2 * span, 0, 0]), np.array([0, 2 * span, 0]),
                    textures[0])]
    if rng.random() < 0.5:
        floor_y = rng.uniform(0.8, 1.6)
        planes.append(Plane(np.array([-span, floor_y, wall_z]), np.array([2 * span, 0, 0]),
                            np.array([0, 0, 0.5 - wall_z]), textures[1]))
    for texture in textures[2:]:
        z = rng.uniform(0.8, 4.0)
        centre = np.array([rng.uniform(-0.45, 0.45) * z, rng.uniform(-0.3, 0.3) * z, z])
        width = rng.uniform(0.25, 0.7) * z  # a fifth to half of the view's width
        height = width * texture.shape[0] / texture.shape[1]
        R = _rotation(rng.uniform(-50, 50), rng.uniform(-30, 30))
        u, v = R @ [width, 0, 0], R @ [0, height, 0]
        planes.append(Plane(centre - u / 2 - v / 2, u, v, texture))
    return planes


def random_cameras(rng: np.random.Generator, baseline: tuple[float, float] = (0.1, 0.6),
                   roll: float = 15.0) -> tuple[np.ndarray, np.ndarray]:
    """Camera-to-world (4, 4) of two cameras near the origin, a ``baseline`` (m) apart in a random mostly
    sideways direction, both looking at points near (0, 0, 3) (each its own), rolled by up to ``roll`` deg."""
    direction = np.array([rng.choice([-1.0, 1.0]), rng.uniform(-0.4, 0.4), rng.uniform(-0.5, 0.5)])
    step = direction / np.linalg.norm(direction) * rng.uniform(*baseline)
    centre0 = np.array([rng.uniform(-0.2, 0.2), rng.uniform(-0.1, 0.1), 0.0])
    cams = []
    for centre in (centre0, centre0 + step):
        target = np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.2), 3.0])
        cams.append(look_at(centre, target, rng.uniform(-roll, roll)))
    return cams[0], cams[1]


def render_pair(textures: list[np.ndarray], size: tuple[int, int], rng: np.random.Generator,
                supersample: int = 2) -> ScenePair:
    """One random scene of ``textures`` (RGB uint8, at least 3) seen by two random cameras at ``size`` (W, H)."""
    planes = random_planes(rng, textures)
    K = intrinsics(size, focal_factor=rng.uniform(0.7, 1.1))
    cam0, cam1 = random_cameras(rng)
    image0, depth0 = render(planes, K, cam0, size, supersample)
    image1, depth1 = render(planes, K, cam1, size, supersample)
    return ScenePair(image0, image1, depth0, depth1, K, relative_pose(cam0, cam1))


def _inverse_depth(points: torch.Tensor, depth: torch.Tensor, spread: float) -> torch.Tensor:
    """Inverse depth at pixels (N, 2), bilinear over the 4 pixels around each (affine in the image on a plane);
    NaN where one of them has no depth or they differ by more than ``spread`` (relative): an edge."""
    h, w = depth.shape
    x0 = torch.floor(points[:, 0]).long().clamp(0, w - 2)
    y0 = torch.floor(points[:, 1]).long().clamp(0, h - 2)
    fx = (points[:, 0] - x0).clamp(0, 1)
    fy = (points[:, 1] - y0).clamp(0, 1)
    corners = torch.stack([depth[y0, x0], depth[y0, x0 + 1], depth[y0 + 1, x0], depth[y0 + 1, x0 + 1]], -1)
    inv = torch.where(corners > 0, 1.0 / corners.clamp(min=1e-6), torch.nan)
    weights = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], -1)
    value = (inv * weights).sum(-1)
    edge = (inv.amax(-1) - inv.amin(-1)) > spread * inv.amin(-1)
    return torch.where(edge, torch.nan, value)


def project(points: torch.Tensor, depth_from: np.ndarray, depth_to: np.ndarray, K: np.ndarray,
            T: np.ndarray, spread: float = 0.02, occlusion: float = 0.02) -> torch.Tensor:
    """Pixels (N, 2) of one view -> their pixels (N, 2) in the other view (``T``: this camera's points to the
    other's). A row is ``inf`` when the other view does not see the point (outside it, behind the camera or
    hidden by a nearer surface: the other view's depth there is more than ``occlusion`` (relative) nearer), and
    ``NaN`` when it is unknown (no depth, or a depth edge within a pixel of it in either view)."""
    pts = points.double()
    d_from, d_to = torch.from_numpy(depth_from).double(), torch.from_numpy(depth_to).double()
    Kt, Tt = torch.from_numpy(K).double(), torch.from_numpy(T).double()
    h, w = depth_to.shape
    out = torch.full_like(pts, torch.nan)
    inside_from = (pts[:, 0] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= h - 1)
    z = 1.0 / _inverse_depth(pts, d_from, spread)
    rays = torch.cat([pts, torch.ones_like(pts[:, :1])], 1) @ torch.linalg.inv(Kt).T
    X = (rays * z[:, None]) @ Tt[:3, :3].T + Tt[:3, 3]
    front = X[:, 2] > 1e-3
    q = (X @ Kt.T)[:, :2] / X[:, 2:].clamp(min=1e-3)
    known = inside_from & torch.isfinite(z)
    inside = front & (q[:, 0] >= -0.5) & (q[:, 0] <= w - 0.5) & (q[:, 1] >= -0.5) & (q[:, 1] <= h - 0.5)
    seen_z = 1.0 / _inverse_depth(q.clamp(min=torch.zeros(2, dtype=q.dtype), max=q.new_tensor([w - 1, h - 1])),
                                  d_to, spread)
    hidden = seen_z < X[:, 2] * (1 - occlusion)
    visible = known & inside & torch.isfinite(seen_z) & ~hidden
    out[visible] = q[visible]
    out[known & (~inside | hidden)] = torch.inf
    return out.float()
