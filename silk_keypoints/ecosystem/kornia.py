"""A kornia ``LocalFeature``-style module: ``SiLKFeature()(img, mask) -> (lafs, responses, descriptors)``.

Follows kornia's conventions (``kornia.feature.LocalFeature``): LAFs (B, N, 2, 3) made by
:func:`kornia.feature.laf_from_center_scale_ori` with centres (x, y) in pixels, pixel centres at integers;
responses (B, N); descriptors (B, N, D). Slots an image does not fill (batches whose images yield different
counts, or keypoints removed by ``mask``) hold an all-zero LAF, response and descriptor, which
:class:`kornia.feature.LocalFeatureMatcher` drops (:func:`kornia.feature.laf_is_filled`).

SiLK keypoints have no scale or orientation: every LAF is an upright square of half-size ``laf_scale`` px,
which matters only to matchers or descriptors that read the LAF shape.
"""

from __future__ import annotations

from typing import Any

import torch
from kornia.feature import laf_from_center_scale_ori
from torch import nn

from ..errors import SilkError
from ..model import SiLK
from ..model.zoo import DEFAULT_MAX_KEYPOINTS


class SiLKFeature(nn.Module):
    """SiLK detector + descriptor as a kornia local feature.

    Args:
        model: a :class:`SiLK` model; None: the default shipped weights.
        max_keypoints: keep at most this many keypoints per image (None: the model's default).
        laf_scale: half-size in pixels of the (upright, square) LAFs.
        **detection: ``detection_threshold``, ``nms_radius``, ``remove_borders``, ``positions`` (see
            :meth:`SiLK.extract`).
    """

    def __init__(
        self,
        model: SiLK | None = None,
        max_keypoints: int | None = DEFAULT_MAX_KEYPOINTS,
        laf_scale: float = 8.0,
        **detection: Any,
    ) -> None:
        super().__init__()
        if not laf_scale > 0:
            raise SilkError(f"laf_scale must be > 0, got {laf_scale}")
        self.model = model or SiLK.from_pretrained()
        self.max_keypoints = max_keypoints
        self.laf_scale = float(laf_scale)
        unknown = sorted(set(detection) - {"detection_threshold", "nms_radius", "remove_borders", "positions"})
        if unknown:
            raise SilkError(f"unknown SiLKFeature options {unknown}")
        self.detection = detection
        self.eval()

    def forward(
        self, img: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Detect and describe.

        Args:
            img: (B, C, H, W) float in [0, 1] (C = 1 or 3).
            mask: optional (B, 1, H, W) or (B, H, W); keypoints on pixels where it is 0 are dropped.

        Returns:
            ``lafs`` (B, N, 2, 3), ``responses`` (B, N) (keypoint probabilities), ``descriptors``
            (B, N, D) unit norm; best response first, unfilled slots all zero.
        """
        feats = self.model.extract(img, max_keypoints=self.max_keypoints, **self.detection)
        kpts, scores, desc = feats["keypoints"], feats["keypoint_scores"], feats["descriptors"]
        valid = feats["keypoint_mask"]
        if mask is not None:
            valid = valid & _mask_at(mask, kpts, img.shape)
        # filled slots first, in their order (best score first), then the empty ones
        order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)[:, : int(valid.sum(1).max())]
        valid = valid.gather(1, order)
        kpts = kpts.gather(1, order[..., None].expand(-1, -1, 2))
        desc = desc.gather(1, order[..., None].expand(-1, -1, desc.shape[-1]))
        scores = scores.gather(1, order)
        b, n = valid.shape
        scale = kpts.new_full((b, n, 1, 1), self.laf_scale)
        lafs = laf_from_center_scale_ori(kpts, scale, kpts.new_zeros(b, n, 1))
        zero = torch.zeros((), dtype=kpts.dtype, device=kpts.device)
        lafs = torch.where(valid[..., None, None], lafs, zero)
        scores = torch.where(valid, scores, zero)
        desc = torch.where(valid[..., None], desc, zero)
        return lafs, scores, desc


def _mask_at(mask: torch.Tensor, xy: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """(B, N) bool: ``mask`` is nonzero at the pixel nearest to each keypoint."""
    b, _, h, w = shape
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if tuple(mask.shape) != (b, h, w):
        raise SilkError(f"mask must be (B, 1, H, W) or (B, H, W) = {(b, h, w)}, got {tuple(mask.shape)}")
    mask = mask.to(xy.device)
    x = xy[..., 0].round().long().clamp(0, w - 1)
    y = xy[..., 1].round().long().clamp(0, h - 1)
    return mask[torch.arange(b, device=xy.device)[:, None], y, x] != 0
