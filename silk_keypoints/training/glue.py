"""Self-supervised training of :class:`~silk_keypoints.glue.SiLKGlue` on pairs with known correspondences
(docs/glue.md).

A *pair* is, with ``pairs="crops"``, a random crop of a training photo (view 0) and its view through a random
homography of the extractor's training ranges (view 1), each with the photometric augmentation; with
``pairs="hpatches"``, a training photo at ``size`` and one other image of a hard-set sequence made from it
(:func:`~silk_keypoints.evaluation.testdata.hpatches_view`: a viewpoint change of a strength drawn from
``strength`` with its photometric change, or only a strong photometric change), or (a ``scene_share`` of the
related pairs) two views of a random 3-D scene of textured planes (:mod:`.scenes`: parallax, occlusions), or (a
``zoom_share``) a photo and the photo shrunk and turned on another photo (a zoom out far beyond the hard set's
viewpoint changes; half the time the other way round: a zoom in). Each
pair carries the frozen extractor's keypoints (``positions``: on cells or at the image's extrema; with both
named, each pair draws one) and
descriptors of both views (computed once per pair) and where each keypoint lies in the other view (through the
homography, or the rendered depth). The ground truth follows: keypoint ``i`` of view 0 and ``j`` of view 1
match when they are mutual nearest neighbours after warping with a distance below ``match_px`` (3 px); a
keypoint is *unmatched* when its nearest warped keypoint is farther than ``unmatched_px`` (5 px) or the other
view does not see it (outside, or hidden); the rest (ambiguous, or at a depth edge) are left out of the loss.
The loss is the negative log-likelihood of that assignment: ``0.5 * mean(-log P_ij over matches) + 0.5 *
mean(-log p_unmatched over unmatched points of both views)``.

Extraction dominates the cost on a CPU, so pairs go into an in-memory cache (``cache_pairs``) and each step
adds ``new_pairs`` fresh ones and trains on a random batch of the cache.

Run: ``python -m silk_keypoints.training.glue --images DIR --out RUN`` (``--help``); ``RUN`` gets
``log.jsonl`` (one JSON object per logged step), ``last.safetensors`` (model only), with ``--ema`` also
``ema.safetensors`` (the moving average of the weights), and ``state.pt`` (optimizer, step and average, for
``--resume``); ``--init-from FILE`` starts from other SiLKGlue weights (from a matcher of other descriptors:
all but the input projection; with a smaller ``--layers``: its first blocks).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..cli.common import parse_image_size
from ..errors import SilkError
from ..evaluation.testdata import (
    change_illumination,
    cover_crop,
    hpatches_margin,
    hpatches_reference,
    hpatches_view,
    paste_view,
    rotation_about,
    translation,
)
from ..features import Features
from ..geometry import warp_points_torch
from ..glue import GlueConfig, SiLKGlue
from ..io import list_images, load_image, to_batch
from ..model import SiLK
from ..model.config import POSITIONS
from .augment import augment
from .data import ImageCrops, split_train_val
from .homography import HomographyConfig, sample_homographies, warp_images
from .scenes import project, render_pair

IGNORE = -2  # ground-truth label of an ambiguous keypoint (neither matched nor surely unmatched)
UNMATCHED = -1


@dataclass
class Pair:
    """Features of the two views of one pair and where each keypoint lies in the other view.

    ``keypoints`` (N, 2) float32 pixels, ``descriptors`` (N, D) float16 (cache memory); ``warped0`` (N0, 2) the
    view-0 keypoints in view-1 pixels and ``warped1`` (N1, 2) the view-1 keypoints in view-0 pixels (``inf``:
    not seen by the other view, ``NaN``: unknown; see :func:`labels_from_warps`; unused when not ``related``);
    ``size`` (W, H) of both views."""

    keypoints0: torch.Tensor
    descriptors0: torch.Tensor
    keypoints1: torch.Tensor
    descriptors1: torch.Tensor
    warped0: torch.Tensor
    warped1: torch.Tensor
    size: tuple[int, int]
    related: bool = True  # False: view 1 shows another photo (every keypoint unmatched)

    @classmethod
    def from_homography(cls, keypoints0: torch.Tensor, descriptors0: torch.Tensor, keypoints1: torch.Tensor,
                        descriptors1: torch.Tensor, homography: torch.Tensor, size: tuple[int, int],
                        related: bool = True) -> Pair:
        """A pair whose views are ``homography`` (3, 3) view 0 -> view 1 apart."""
        s = torch.tensor([size], dtype=torch.float32)
        w0, w1 = homography_warps(keypoints0[None], keypoints1[None], homography[None], s, s)
        return cls(keypoints0, descriptors0, keypoints1, descriptors1, w0[0], w1[0], size, related)


@dataclass
class GlueTrainConfig:
    """Options of :func:`train` (see ``--help``)."""

    images: str = ""
    out: str = "runs/glue"
    extractor: str = "fast"
    positions: tuple[str, ...] = ("cells",)  # keypoint placements of the frozen extractor; each pair draws one
    glue: GlueConfig = field(default_factory=GlueConfig)
    steps: int = 1000
    batch: int = 4
    keypoints: int = 512
    crop: int = 256
    lr: float = 3e-4
    lr_end: float | None = None  # a cosine decay of the learning rate from lr (step 0) to this (the last step)
    cache_pairs: int = 1024
    new_pairs: int = 1
    augment: str = "silk"
    homography: HomographyConfig = field(default_factory=HomographyConfig)
    pairs: str = "crops"  # "crops" or "hpatches" (module doc)
    size: tuple[int, int] = (480, 360)  # "hpatches": (W, H) of the views
    strength: tuple[float, float] = (0.5, 2.0)  # "hpatches": range of the change (make_hpatches' strength)
    viewpoint_share: float = 0.75  # "hpatches": share of viewpoint pairs (the others: photometric only)
    viewpoint_light: float = 1.0  # "hpatches": photometric change of the viewpoint pairs
    unrelated_share: float = 0.0  # "hpatches": share of pairs whose view 1 shows another photo (no matches)
    scene_share: float = 0.0  # "hpatches": share of the related pairs that are rendered 3-D scenes (parallax)
    scene_planes: int = 4  # "hpatches": photos per scene (wall, floor, panels; at least 3; distinct if there are enough)
    zoom_share: float = 0.0  # "hpatches": share of the related pairs that are zoom pairs (make_zoom_pairs)
    zoom: tuple[float, float] = (0.3, 1.0)  # zoom pairs: range of the scale (drawn log-uniformly)
    zoom_degrees: float = 30.0  # zoom pairs: the turn is drawn uniformly in [-zoom_degrees, zoom_degrees]
    match_px: float = 3.0
    unmatched_px: float = 5.0
    log_every: int = 10
    checkpoint_every: int = 100
    ema: float = 0.0  # > 0: also keep an exponential moving average of the weights (ema.safetensors), this decay
    seed: int = 0


# ---------------------------------------------------------------------------------------------- ground truth
def homography_warps(keypoints0: torch.Tensor, keypoints1: torch.Tensor, homography: torch.Tensor,
                     size0: torch.Tensor, size1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints (B, N0, 2) of view 0 in view-1 pixels and (B, N1, 2) of view 1 in view-0 pixels through the
    homography (B, 3, 3) view 0 -> view 1; ``inf`` rows for points the other view does not see (outside it or
    behind the camera). ``size0``, ``size1``: (B, 2) (W, H)."""
    hom = homography.double()
    w0, front0 = warp_points_torch(keypoints0.double(), hom)
    w1, front1 = warp_points_torch(keypoints1.double(), torch.linalg.inv(hom))
    seen0 = front0 & _inside(w0, size1)
    seen1 = front1 & _inside(w1, size0)
    return (torch.where(seen0[..., None], w0, torch.inf).float(), torch.where(seen1[..., None], w1, torch.inf).float())


def ground_truth(
    keypoints0: torch.Tensor,
    keypoints1: torch.Tensor,
    homography: torch.Tensor,
    size0: torch.Tensor,
    size1: torch.Tensor,
    mask0: torch.Tensor | None = None,
    mask1: torch.Tensor | None = None,
    match_px: float = 3.0,
    unmatched_px: float = 5.0,
    related: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Assignment labels from a known homography (B, 3, 3) view 0 -> view 1: :func:`labels_from_warps` of
    :func:`homography_warps`. Keypoints (B, N, 2) pixels, sizes (B, 2) (W, H), masks (B, N)."""
    warped0, warped1 = homography_warps(keypoints0, keypoints1, homography, size0, size1)
    return labels_from_warps(keypoints0, keypoints1, warped0, warped1, mask0, mask1, match_px, unmatched_px, related)


def labels_from_warps(
    keypoints0: torch.Tensor,
    keypoints1: torch.Tensor,
    warped0: torch.Tensor,
    warped1: torch.Tensor,
    mask0: torch.Tensor | None = None,
    mask1: torch.Tensor | None = None,
    match_px: float = 3.0,
    unmatched_px: float = 5.0,
    related: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Assignment labels from the known correspondences of every keypoint.

    Args:
        keypoints0, keypoints1: (B, N0, 2), (B, N1, 2) pixels of view 0 / view 1.
        warped0: (B, N0, 2) the view-0 keypoints in view-1 pixels; ``warped1`` (B, N1, 2) the view-1 keypoints
            in view-0 pixels. A row is ``inf`` when the other view does not see the point, ``NaN`` when that
            is unknown (such a point is never matched and never labelled unmatched).
        mask0, mask1: (B, N) True for real keypoints.
        related: (B,) bool, False for a pair of two different photos: every real keypoint is unmatched.

    Returns:
        labels0 (B, N0): index of the matching keypoint in view 1 (mutual nearest after the warp, closer than
        ``match_px`` in view-1 pixels), :data:`UNMATCHED` (nearest farther than ``unmatched_px``, or not seen
        by view 1) or :data:`IGNORE`; labels1 (B, N1) the same from view 1. Padded keypoints are :data:`IGNORE`;
        so is a keypoint of view 1 that lands within ``unmatched_px`` of a view-0 keypoint of unknown
        correspondence (its partner may be that one).
    """
    b, n0, n1 = warped0.shape[0], warped0.shape[1], keypoints1.shape[1]
    mask0 = torch.ones(b, n0, dtype=torch.bool) if mask0 is None else mask0.bool()
    mask1 = torch.ones(b, n1, dtype=torch.bool) if mask1 is None else mask1.bool()
    if n0 == 0 or n1 == 0:
        return (torch.where(mask0, UNMATCHED, IGNORE).long(), torch.where(mask1, UNMATCHED, IGNORE).long())
    seen0, seen1 = warped0.isfinite().all(-1), warped1.isfinite().all(-1)
    known0, known1 = ~warped0.isnan().any(-1), ~warped1.isnan().any(-1)
    w0 = torch.where(seen0[..., None], warped0.double(), 1e9)
    dist = torch.cdist(w0, keypoints1.double())  # view-1 pixels
    dist = dist.masked_fill(~(mask0[:, :, None] & mask1[:, None, :]), float("inf"))
    best0, idx0 = dist.min(dim=2)
    best1, idx1 = dist.min(dim=1)
    mutual0 = idx1.gather(1, idx0) == torch.arange(n0)[None]
    mutual1 = idx0.gather(1, idx1) == torch.arange(n1)[None]
    match0 = mutual0 & (best0 < match_px) & seen0
    match1 = mutual1 & (best1 < match_px) & seen1
    match0 &= match1.gather(1, idx0)  # both sides agree
    match1 &= match0.gather(1, idx1)
    labels0 = torch.full((b, n0), IGNORE, dtype=torch.long)
    labels1 = torch.full((b, n1), IGNORE, dtype=torch.long)
    labels0[((best0 > unmatched_px) | ~seen0) & known0] = UNMATCHED
    labels1[((best1 > unmatched_px) | ~seen1) & known1] = UNMATCHED
    unknown0 = mask0 & ~known0
    if unknown0.any():
        w1 = torch.where(seen1[..., None], warped1.double(), 1e9)
        near = ((torch.cdist(w1, keypoints0.double()) < unmatched_px) & unknown0[:, None, :]).any(-1)
        labels1[near & seen1] = IGNORE
    labels0 = torch.where(match0, idx0, labels0)
    labels1 = torch.where(match1, idx1, labels1)
    if related is not None:
        labels0 = labels0.masked_fill(~related.bool()[:, None], UNMATCHED)
        labels1 = labels1.masked_fill(~related.bool()[:, None], UNMATCHED)
    return labels0.masked_fill(~mask0, IGNORE), labels1.masked_fill(~mask1, IGNORE)


def _inside(points: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    s = size.to(points)[:, None]
    return (points >= -0.5).all(-1) & (points <= s - 0.5).all(-1)


def glue_loss(
    log_p: torch.Tensor, unmatched0: torch.Tensor, unmatched1: torch.Tensor, labels0: torch.Tensor,
    labels1: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Negative log-likelihood of the labelled assignment (module doc).

    Args:
        log_p (B, N0, N1), unmatched0 (B, N0), unmatched1 (B, N1): :meth:`SiLKGlue.log_assignment`.
        labels0, labels1: :func:`ground_truth`.

    Returns:
        ``loss`` (scalar), ``positive`` and ``negative`` NLL terms and the counts ``matches``, ``unmatched``.
    """
    pos = labels0 >= 0
    pos_ll = log_p.gather(2, labels0.clamp(min=0)[..., None])[..., 0][pos]
    neg_ll = torch.cat([unmatched0[labels0 == UNMATCHED], unmatched1[labels1 == UNMATCHED]])
    zero = log_p.sum() * 0  # keeps the graph when a term is empty
    positive = -pos_ll.mean() if len(pos_ll) else zero
    negative = -neg_ll.mean() if len(neg_ll) else zero
    return {"loss": 0.5 * positive + 0.5 * negative, "positive": positive, "negative": negative,
            "matches": torch.tensor(float(len(pos_ll))), "unmatched": torch.tensor(float(len(neg_ll)))}


# ---------------------------------------------------------------------------------------------- pairs
@torch.no_grad()
def make_pairs(
    extractor: SiLK,
    crops: torch.Tensor,
    keypoints: int,
    homography: HomographyConfig,
    recipe: str,
    generator: torch.Generator,
    positions: str = "cells",
) -> list[Pair]:
    """uint8 RGB crops (B, 3, S, S) -> B pairs: random homography view, augmentation, frozen features."""
    images = crops.float() / 255.0
    b, _, h, w = images.shape
    hom = sample_homographies(b, h, w, homography, generator)
    view0 = augment(images, recipe, generator)
    view1 = augment(warp_images(images, hom), recipe, generator)
    batch = to_batch(torch.stack([view0, view1], 1).flatten(0, 1), extractor.config.in_channels)
    feats = extractor.extract(batch, max_keypoints=keypoints, positions=positions)
    pairs = []
    for i in range(b):
        f0, f1 = feats.image(2 * i), feats.image(2 * i + 1)
        k0, d0 = _real(f0)
        k1, d1 = _real(f1)
        pairs.append(Pair.from_homography(k0, d0.half(), k1, d1.half(), hom[i].float(), (w, h)))
    return pairs


@torch.no_grad()
def make_view_pairs(
    extractor: SiLK, photos: list[tuple[np.ndarray, np.ndarray | None]], keypoints: int, config: GlueTrainConfig,
    rng: np.random.Generator,
) -> list[Pair]:
    """(RGB uint8 photo, None or another photo) -> one ``pairs="hpatches"`` pair each (module doc), with the
    frozen features; with another photo, view 1 is made from it (an unrelated pair: nothing matches)."""
    margin = hpatches_margin(config.size, config.strength[1])
    canvas_size = (config.size[0] + 2 * margin[0], config.size[1] + 2 * margin[1])
    pairs = []
    for photo, another in photos:
        canvas = cover_crop(photo, canvas_size, rng)
        ref = hpatches_reference(canvas, config.size, margin)
        related = another is None
        other = canvas if related else cover_crop(another, canvas_size, rng)
        other_ref = ref if related else hpatches_reference(other, config.size, margin)
        img, H = hpatches_view(other, other_ref, margin, rng, float(rng.uniform(*config.strength)),
                               bool(rng.random() < config.viewpoint_share), config.viewpoint_light)
        (k0, d0), (k1, d1) = _features(extractor, ref, img, keypoints, _placement(config.positions, rng))
        pairs.append(Pair.from_homography(k0, d0, k1, d1, torch.from_numpy(H / H[2, 2]).float(), config.size,
                                          related))
    return pairs


@torch.no_grad()
def make_scene_pairs(
    extractor: SiLK, textures: list[list[np.ndarray]], keypoints: int, config: GlueTrainConfig,
    rng: np.random.Generator,
) -> list[Pair]:
    """Photos (RGB uint8, at least 3 per pair) -> one pair each: a random 3-D scene textured with them, seen by
    two cameras (:mod:`.scenes`: parallax and occlusions), view 1 under a photometric change of
    ``viewpoint_light``, with the frozen features and their correspondences through the rendered depth."""
    pairs = []
    for photos in textures:
        crops = [cover_crop(t, _texture_size(config.size, rng), rng) for t in photos]
        scene = render_pair(crops, config.size, rng)
        view1 = change_illumination(scene.image1, rng, config.viewpoint_light)
        (k0, d0), (k1, d1) = _features(extractor, scene.image0, view1, keypoints, _placement(config.positions, rng))
        w0 = project(k0, scene.depth0, scene.depth1, scene.K, scene.T_0to1)
        w1 = project(k1, scene.depth1, scene.depth0, scene.K, np.linalg.inv(scene.T_0to1))
        pairs.append(Pair(k0, d0, k1, d1, w0, w1, config.size))
    return pairs


@torch.no_grad()
def make_zoom_pairs(
    extractor: SiLK, photos: list[tuple[np.ndarray, np.ndarray]], keypoints: int, config: GlueTrainConfig,
    rng: np.random.Generator,
) -> list[Pair]:
    """(RGB uint8 photo, another photo) -> one pair each: view 0 the photo at ``size``, view 1 the photo scaled
    by a factor drawn log-uniformly from ``zoom``, turned by up to ``zoom_degrees`` about its centre, shifted
    within the frame and pasted on the other photo (clutter: keypoints with no partner), under a photometric
    change of ``viewpoint_light``; half the time the views swap (a zoom in). Ground truth: that similarity."""
    pairs = []
    for photo, another in photos:
        view0 = cover_crop(photo, config.size, rng)
        clutter = cover_crop(another, config.size, rng)
        scale = float(np.exp(rng.uniform(np.log(config.zoom[0]), np.log(config.zoom[1]))))
        shift = rng.uniform(-0.5, 0.5, 2) * (1 - scale) * np.array(config.size)
        H = translation(*shift) @ rotation_about(config.size, float(rng.uniform(-1, 1) * config.zoom_degrees), scale)
        view1 = change_illumination(paste_view(view0, clutter, H), rng, config.viewpoint_light)
        if rng.random() < 0.5:
            view0, view1, H = view1, view0, np.linalg.inv(H)
        (k0, d0), (k1, d1) = _features(extractor, view0, view1, keypoints, _placement(config.positions, rng))
        pairs.append(Pair.from_homography(k0, d0, k1, d1, torch.from_numpy(H / H[2, 2]).float(), config.size))
    return pairs


def _placement(positions: tuple[str, ...], rng: np.random.Generator) -> str:
    """One of ``positions`` (no draw when there is one, so single-placement runs keep their random stream)."""
    return positions[0] if len(positions) == 1 else positions[int(rng.integers(len(positions)))]


def _texture_size(size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
    """A random texture resolution for a plane: a 4:3 to 1:1 shape, 0.5-1x the view's width."""
    w = int(size[0] * rng.uniform(0.5, 1.0))
    return w, int(w * rng.uniform(0.75, 1.0))


def _features(extractor: SiLK, image0: np.ndarray, image1: np.ndarray, keypoints: int,
              positions: str) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Keypoints (N, 2) and float16 descriptors (N, D) of two RGB uint8 images of one size."""
    views = torch.from_numpy(np.stack([image0, image1])).permute(0, 3, 1, 2).float() / 255.0
    feats = extractor.extract(to_batch(views, extractor.config.in_channels), max_keypoints=keypoints,
                              positions=positions)
    (k0, d0), (k1, d1) = _real(feats.image(0)), _real(feats.image(1))
    return (k0, d0.half()), (k1, d1.half())


def _real(f: Features) -> tuple[torch.Tensor, torch.Tensor]:
    m = f.keypoint_mask[0]
    return f.keypoints[0, m].float(), f.descriptors[0, m]


def collate(pairs: list[Pair]) -> dict[str, torch.Tensor]:
    """Pairs -> padded batch tensors: keypoints/descriptors/masks/warped 0 and 1, sizes (B, 2), related (B,)."""
    out: dict[str, torch.Tensor] = {}
    for side in ("0", "1"):
        kpts = [getattr(p, "keypoints" + side) for p in pairs]
        desc = [getattr(p, "descriptors" + side).float() for p in pairs]
        warped = [getattr(p, "warped" + side) for p in pairs]
        n = max(len(k) for k in kpts)
        k_pad = torch.zeros(len(pairs), n, 2)
        w_pad = torch.full((len(pairs), n, 2), torch.nan)
        d_pad = torch.zeros(len(pairs), n, desc[0].shape[-1])
        mask = torch.zeros(len(pairs), n, dtype=torch.bool)
        for i, (k, d, w) in enumerate(zip(kpts, desc, warped)):
            k_pad[i, :len(k)], d_pad[i, :len(k)], w_pad[i, :len(k)], mask[i, :len(k)] = k, d, w, True
        out["keypoints" + side], out["descriptors" + side], out["mask" + side] = k_pad, d_pad, mask
        out["warped" + side] = w_pad
        out["size" + side] = torch.tensor([p.size for p in pairs], dtype=torch.float32)
    out["related"] = torch.tensor([p.related for p in pairs])
    return out


def pair_loss(model: SiLKGlue, batch: dict[str, torch.Tensor], match_px: float = 3.0,
              unmatched_px: float = 5.0) -> dict[str, torch.Tensor]:
    """:func:`glue_loss` of ``model`` on a :func:`collate` batch."""
    log_p, un0, un1 = model.log_assignment(batch["keypoints0"], batch["keypoints1"], batch["descriptors0"],
                                           batch["descriptors1"], batch["size0"], batch["size1"],
                                           batch["mask0"], batch["mask1"])
    labels0, labels1 = labels_from_warps(batch["keypoints0"], batch["keypoints1"], batch["warped0"],
                                         batch["warped1"], batch["mask0"], batch["mask1"], match_px, unmatched_px,
                                         batch.get("related"))
    return glue_loss(log_p, un0, un1, labels0, labels1)


# ---------------------------------------------------------------------------------------------- the loop
def _init_from(path: str, descriptor_dim: int, layers: int) -> SiLKGlue:
    """SiLKGlue weights to start from (their width and heads). From a matcher of other descriptors (e.g. ``fast``'s
    128-D for ``tiny``'s 64-D) every weight but the input projection (``input.*``, drawn anew) is taken; with
    fewer ``layers`` than it has, its first blocks are kept (a smaller, faster matcher to fine-tune)."""
    source = SiLKGlue.from_file(path)
    if layers > source.conf.layers:
        raise SilkError(f"--init-from {path} has {source.conf.layers} layers; --layers {layers} would need new ones")
    if source.conf.descriptor_dim == descriptor_dim and source.conf.layers == layers:
        return source
    model = SiLKGlue(replace(source.conf, descriptor_dim=descriptor_dim, layers=layers))
    target = model.state_dict()
    kept = {k: v for k, v in source.state_dict().items() if k in target and v.shape == target[k].shape}
    model.load_state_dict({**target, **kept})
    notes = []
    if source.conf.descriptor_dim != descriptor_dim:
        notes.append(f"{source.conf.descriptor_dim}-D descriptors, the extractor's are {descriptor_dim}-D: "
                     "every weight but the input projection taken")
    if source.conf.layers != layers:
        notes.append(f"{source.conf.layers} layers: the first {layers} kept")
    print(f"--init-from {path}: {'; '.join(notes)}", file=sys.stderr)
    return model


def train(config: GlueTrainConfig, resume: bool = False, init_from: str | None = None) -> Path:
    """Train (or continue) a SiLKGlue in ``config.out``; returns the path of the last weights."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    last, state_path, log_path = out / "last.safetensors", out / "state.pt", out / "log.jsonl"
    if isinstance(config.positions, str) or not config.positions or set(config.positions) - set(POSITIONS):
        raise SilkError(f"positions must be a tuple of {POSITIONS}, got {config.positions!r}")
    if not config.lr > 0 or (config.lr_end is not None and not 0 <= config.lr_end <= config.lr):
        raise SilkError(f"need --lr > 0 and 0 <= --lr-end <= --lr, got {config.lr} and {config.lr_end}")
    if not 0 <= config.ema < 1:
        raise SilkError(f"--ema must be a decay in [0, 1) (0: off), got {config.ema}")
    if not 0 < config.match_px <= config.unmatched_px:
        raise SilkError(f"need 0 < --match-px <= --unmatched-px, got {config.match_px} and {config.unmatched_px}")
    torch.manual_seed(config.seed)
    extractor = SiLK.from_pretrained(config.extractor).eval()
    for p in extractor.parameters():
        p.requires_grad_(False)
    glue_conf = GlueConfig(**{**asdict(config.glue), "descriptor_dim": extractor.config.descriptor_dim})
    step = 0
    if resume and last.is_file():
        model = SiLKGlue.from_file(last)
    elif init_from:
        model = _init_from(init_from, glue_conf.descriptor_dim, glue_conf.layers)
    else:
        model = SiLKGlue(glue_conf)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
    average = None
    if config.ema:
        average = SiLKGlue(model.conf)
        resumed = state.get("ema") if resume and state_path.is_file() else None
        average.load_state_dict(resumed if resumed is not None else model.state_dict())
    paths = list_images(config.images) if Path(config.images).is_dir() else []
    train_paths, _ = split_train_val(paths)
    if not train_paths:
        raise SilkError(f"no training images in {config.images!r}")
    if config.pairs not in ("crops", "hpatches"):
        raise SilkError(f"unknown pair source {config.pairs!r}: 'crops' or 'hpatches'")
    if not (0 <= config.scene_share and 0 <= config.zoom_share and config.scene_share + config.zoom_share <= 1
            and 0 <= config.unrelated_share <= 1):
        raise SilkError(f"--scene-share, --zoom-share and --unrelated-share are shares in [0, 1] (scene and zoom "
                        f"together at most 1), got {config.scene_share}, {config.zoom_share} and {config.unrelated_share}")
    if not 0 < config.zoom[0] <= config.zoom[1] <= 1 or not 0 <= config.zoom_degrees <= 180:
        raise SilkError(f"need 0 < --zoom LO <= HI <= 1 and --zoom-degrees in [0, 180], got {list(config.zoom)} and "
                        f"{config.zoom_degrees}")
    if config.scene_planes < 3:
        raise SilkError(f"--scene-planes must be at least 3 (wall, floor, a panel), got {config.scene_planes}")
    crops = ImageCrops(train_paths, crop=config.crop, seed=config.seed)
    generator = torch.Generator().manual_seed(config.seed * 100_003 + step)
    views_rng = np.random.default_rng(config.seed * 100_003 + step)
    rng = random.Random(config.seed * 7 + step)
    cache: list[Pair] = []
    drawn = step * config.new_pairs  # crops drawn so far: a resumed run sees new crops

    scene_p = config.scene_share * (1 - config.unrelated_share)  # of all pairs
    zoom_p = config.zoom_share * (1 - config.unrelated_share)
    views_p = 1 - scene_p - zoom_p
    unrelated_p = config.unrelated_share / views_p if views_p > 0 else 0.0  # of the pairs of hard-set views

    def add_pairs(count: int) -> None:
        nonlocal drawn
        if config.pairs == "hpatches":
            photos, scenes, zooms = [], [], []
            for _ in range(count):
                kind = views_rng.random() if config.scene_share or config.zoom_share else 1.0
                if kind < scene_p:
                    picks = views_rng.choice(len(train_paths), config.scene_planes,
                                             replace=len(train_paths) < config.scene_planes)
                    scenes.append([load_image(train_paths[int(i)]) for i in picks])
                    continue
                first, second = (int(i) for i in views_rng.choice(len(train_paths), 2, replace=False))
                if kind < scene_p + zoom_p:
                    zooms.append((load_image(train_paths[first]), load_image(train_paths[second])))
                    continue
                unrelated = views_rng.random() < unrelated_p
                photos.append((load_image(train_paths[first]), load_image(train_paths[second]) if unrelated else None))
            cache.extend(make_view_pairs(extractor, photos, config.keypoints, config, views_rng))
            cache.extend(make_scene_pairs(extractor, scenes, config.keypoints, config, views_rng))
            cache.extend(make_zoom_pairs(extractor, zooms, config.keypoints, config, views_rng))
        else:
            items = [crops[(drawn + k) % len(crops), (drawn + k) // len(crops)] for k in range(count)]
            cache.extend(make_pairs(extractor, torch.stack(items), config.keypoints, config.homography,
                                    config.augment, generator, config.positions[drawn % len(config.positions)]))
        drawn += count
        del cache[:max(0, len(cache) - config.cache_pairs)]

    add_pairs(max(config.batch, config.new_pairs))
    sums: dict[str, float] = {}
    start = time.perf_counter()
    with log_path.open("a") as log:
        while step < config.steps:
            add_pairs(config.new_pairs)
            batch = collate(rng.sample(cache, min(config.batch, len(cache))))
            terms = pair_loss(model, batch, config.match_px, config.unmatched_px)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if average is not None:
                with torch.no_grad():
                    for a, p in zip(average.parameters(), model.parameters()):
                        a.lerp_(p, 1 - config.ema)
            step += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["n"] = sums.get("n", 0) + 1
            if step % config.log_every == 0 or step == config.steps:
                n = sums.pop("n")
                row = {"step": step, **{k: round(v / n, 4) for k, v in sums.items()},
                       "lr": float(f"{optimizer.param_groups[0]['lr']:.3g}"),
                       "s_per_step": round((time.perf_counter() - start) / n, 3), "cache": len(cache)}
                log.write(json.dumps(row) + "\n")
                log.flush()
                print(json.dumps(row), flush=True)
                sums, start = {}, time.perf_counter()
            if step % config.checkpoint_every == 0 or step == config.steps:
                info = {"step": step, "extractor": config.extractor, "positions": list(config.positions)}
                model.save(last, info=info)
                checkpoint = {"optimizer": optimizer.state_dict(), "step": step}
                if average is not None:
                    average.save(out / "ema.safetensors", info={**info, "ema": config.ema})
                    checkpoint["ema"] = average.state_dict()
                torch.save(checkpoint, state_path)
    return last


def learning_rate(config: GlueTrainConfig, step: int) -> float:
    """The learning rate of step ``step`` (0-based) of ``config.steps``: constant, or the cosine decay to
    ``lr_end``."""
    if config.lr_end is None:
        return config.lr
    t = min(step / max(config.steps - 1, 1), 1.0)
    return config.lr_end + (config.lr - config.lr_end) * 0.5 * (1 + math.cos(math.pi * t))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m silk_keypoints.training.glue", description=__doc__.split("\n")[0])
    d = GlueTrainConfig()
    p.add_argument("--images", required=True, help="training photo folder (its training split is used)")
    p.add_argument("--out", default=d.out, help="run folder: log.jsonl, last.safetensors, state.pt")
    p.add_argument("--extractor", default=d.extractor, help="shipped SiLK model giving the features (frozen)")
    p.add_argument("--positions", choices=POSITIONS, nargs="+", default=list(d.positions),
                   help="where the extractor places keypoints (SiLK.extract(positions=...)); with both, each pair "
                        "draws one")
    for name in ("steps", "batch", "keypoints", "crop", "cache_pairs", "new_pairs", "log_every",
                 "checkpoint_every", "seed"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-end", type=float, default=d.lr_end,
                   help="decay the learning rate to this by the last step (cosine; default: constant)")
    p.add_argument("--ema", type=float, default=d.ema,
                   help="also write ema.safetensors, the moving average of the weights with this decay (0: off)")
    p.add_argument("--pairs", choices=("crops", "hpatches"), default=d.pairs,
                   help="pair source: homography crops, or hard-set-like views of whole photos (module doc)")
    p.add_argument("--size", default="x".join(map(str, d.size)), help="hpatches pairs: WxH of the views")
    p.add_argument("--strength", type=float, nargs=2, default=d.strength, metavar=("LO", "HI"),
                   help="hpatches pairs: range of the change")
    p.add_argument("--viewpoint-share", type=float, default=d.viewpoint_share,
                   help="hpatches pairs: share of viewpoint pairs")
    p.add_argument("--unrelated-share", type=float, default=d.unrelated_share,
                   help="hpatches pairs: share of pairs of two different photos (nothing matches)")
    p.add_argument("--scene-share", type=float, default=d.scene_share,
                   help="hpatches pairs: share of the related pairs that are rendered 3-D scenes (parallax)")
    p.add_argument("--scene-planes", type=int, default=d.scene_planes,
                   help="hpatches pairs: photos per rendered scene (wall, floor, panels; at least 3)")
    p.add_argument("--zoom-share", type=float, default=d.zoom_share,
                   help="hpatches pairs: share of the related pairs that are zoom pairs (a photo shrunk and turned "
                        "on another photo)")
    p.add_argument("--zoom", type=float, nargs=2, default=d.zoom, metavar=("LO", "HI"),
                   help="zoom pairs: range of the scale")
    p.add_argument("--zoom-degrees", type=float, default=d.zoom_degrees, help="zoom pairs: largest turn")
    p.add_argument("--match-px", type=float, default=d.match_px,
                   help="ground truth: mutual nearest keypoints after the warp closer than this match")
    p.add_argument("--unmatched-px", type=float, default=d.unmatched_px,
                   help="ground truth: a keypoint whose nearest warped keypoint is farther is unmatched")
    p.add_argument("--width", type=int, default=d.glue.width)
    p.add_argument("--layers", type=int, default=d.glue.layers)
    p.add_argument("--heads", type=int, default=d.glue.heads)
    p.add_argument("--resume", action="store_true", help="continue the run in --out (weights, optimizer, step)")
    p.add_argument("--init-from", metavar="FILE", help="start from these SiLKGlue weights")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        config = GlueTrainConfig(
            images=a.images, out=a.out, extractor=a.extractor, positions=tuple(dict.fromkeys(a.positions)),
            glue=GlueConfig(width=a.width, layers=a.layers, heads=a.heads),
            steps=a.steps, batch=a.batch, keypoints=a.keypoints, crop=a.crop, lr=a.lr, lr_end=a.lr_end, cache_pairs=a.cache_pairs,
            new_pairs=a.new_pairs, log_every=a.log_every, checkpoint_every=a.checkpoint_every, seed=a.seed,
            pairs=a.pairs, size=parse_image_size(a.size, "480x360"), strength=tuple(a.strength), viewpoint_share=a.viewpoint_share,
            unrelated_share=a.unrelated_share, scene_share=a.scene_share, scene_planes=a.scene_planes, ema=a.ema,
            zoom_share=a.zoom_share, zoom=tuple(a.zoom), zoom_degrees=a.zoom_degrees,
            match_px=a.match_px, unmatched_px=a.unmatched_px)
        path = train(config, resume=a.resume, init_from=a.init_from)
    except SilkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"weights: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
