"""Self-supervised training of the keypoint-offset head (:mod:`silk_keypoints.model.offsets`) on a frozen model.

The loss (UnsuperPoint's idea, on SiLK's frozen detector): for every cell ``a`` of view 0 with refined position
``p0(a) = centre(a) + o0(a)``, warp ``q = H p0(a)`` into view 1 and take, among the 3x3 cells of view 1 around
``q``, the one whose refined position ``p1(b)`` is nearest; the error is ``q - p1(b)``, penalised with a
pseudo-Huber function of its length (``delta`` px), weighted by how detectable both cells are (the frozen
keypoint probabilities: by default 1 for the cells in the top ``top_fraction`` of each view's probability, 0
otherwise). The same from view 1 to view 0 with ``H^-1``; the two directions are averaged. Points that land
outside the other view (or within ``stride`` px of its border or of the black area a warp leaves) are
dropped. Gradients reach both ends (``q`` through ``o0``, ``p1`` through ``o1``); the model itself gets none.

A point on the cell grid cannot beat the quantisation error, so the head can only lower the loss by moving
both ends onto the same physical point: a position that moves with the image content (covariant), which is
what a sub-pixel keypoint is. An optional uniformity term (``uniformity`` weight, UnsuperPoint's) pushes the
distribution of the offsets within the cell towards uniform, against clustering at the cell borders.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..geometry import warp_points_torch
from ..model.coords import GridMap, cell_grid
from .homography import warp_images


@dataclass
class OffsetLossConfig:
    """Settings of :func:`offset_loss`."""

    delta: float = 1.0  # pseudo-Huber scale, pixels
    top_fraction: float = 0.25  # weight 1 for the cells in the top fraction of each view's probability
    weighting: str = "top"  # top: the rank mask above | prob: product of the probabilities | top*prob
    uniformity: float = 0.0  # weight of the uniformity term on the offsets (0: off)
    centring: float = 1.0  # weight of the squared mean offset of the weighted cells, in cells (against a drift)


def detection_weight(probability: torch.Tensor, config: OffsetLossConfig) -> torch.Tensor:
    """(B, 1, Hf, Wf) frozen probabilities -> (B, Hf*Wf) per-cell weights."""
    p = probability.flatten(1)
    top = torch.ones_like(p)
    if "top" in config.weighting:
        k = max(1, round(config.top_fraction * p.shape[1]))
        thr = p.topk(k, dim=1).values[:, -1:]
        top = (p >= thr).to(p.dtype)
    return top * p if "prob" in config.weighting else top


def valid_mask(height: int, width: int, homographies: torch.Tensor | None, margin: int) -> torch.Tensor:
    """(B, 1, H, W) bool: pixels of a view that show image content at least ``margin`` px from any border.

    ``homographies`` None: the view is an unwarped image (only the image border counts); else view 1 through
    them (the black area outside view 0 counts as border).
    """
    b = 1 if homographies is None else homographies.shape[0]
    ones = torch.ones(b, 1, height, width)
    if homographies is not None:
        ones = (warp_images(ones, homographies) > 0.999).float()
    k = 2 * margin + 1
    return -F.max_pool2d(-F.pad(ones, (margin,) * 4), k, stride=1) > 0.5  # erosion, outside = 0


def _one_direction(
    pa: torch.Tensor, pb: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor, h: torch.Tensor,
    valid_b: torch.Tensor, grid: GridMap, map_size: tuple[int, int], delta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted pseudo-Huber error of view-a points ``pa`` (B, N, 2) warped by ``h`` onto the nearest refined
    view-b point ``pb`` (B, N, 2) among the 3x3 cells around them. Returns (weighted sum, weight sum, errors)."""
    hf, wf = map_size
    q, ok = warp_points_torch(pa.double(), h.double())
    q = q.to(pa.dtype)
    hi, wi = valid_b.shape[-2:]
    px = q[..., 0].round().long().clamp(0, wi - 1)
    py = q[..., 1].round().long().clamp(0, hi - 1)
    inside = ok & (q[..., 0] > -0.5) & (q[..., 0] < wi - 0.5) & (q[..., 1] > -0.5) & (q[..., 1] < hi - 0.5)
    inside &= torch.gather(valid_b.flatten(1), 1, py * wi + px)
    cell = torch.floor(grid.to_cells(q.detach()) + 0.5).long()  # nearest cell centre
    d = torch.arange(-1, 2, device=pa.device)
    cx = cell[..., 0, None, None] + d[None, None, None, :]  # (B, N, 1, 3)
    cy = cell[..., 1, None, None] + d[None, None, :, None]  # (B, N, 3, 1)
    in_map = ((cx >= 0) & (cx < wf) & (cy >= 0) & (cy < hf)).flatten(2)  # (B, N, 9)
    flat = (cy.clamp(0, hf - 1) * wf + cx.clamp(0, wf - 1)).flatten(2)
    b, n = flat.shape[:2]
    cand = torch.gather(pb, 1, flat.reshape(b, n * 9, 1).expand(-1, -1, 2)).reshape(b, n, 9, 2)
    dist = (cand.detach() - q.detach()[:, :, None]).norm(dim=-1).masked_fill(~in_map, float("inf"))
    best = dist.argmin(dim=2)  # (B, N)
    target = torch.gather(cand, 2, best[..., None, None].expand(-1, -1, 1, 2))[:, :, 0]
    chosen = torch.gather(flat, 2, best[..., None])[..., 0]
    err = (q - target).norm(dim=-1)
    w = wa * torch.gather(wb, 1, chosen) * inside
    loss = delta**2 * (torch.sqrt(1 + (err / delta) ** 2) - 1)
    return (w * loss).sum(), w.sum(), err.detach()[w > 0]


def uniformity_loss(offsets: torch.Tensor, weight: torch.Tensor, stride: float) -> torch.Tensor:
    """UnsuperPoint-style: sorted in-cell positions of the weighted cells vs. a uniform distribution on the cell.

    offsets (B, 2, Hf, Wf) px, weight (B, Hf*Wf); returns the mean squared gap, per axis, in cells."""
    u = (offsets.flatten(2) / stride + 0.5).transpose(1, 2)[weight > 0]  # (M, 2), 0..1 inside the cell
    if len(u) < 2:
        return offsets.sum() * 0
    s = u.sort(dim=0).values
    ref = torch.linspace(0, 1, len(u), device=u.device)[:, None]
    return ((s - ref) ** 2).mean()


def mean_offset(offsets: torch.Tensor, weight: torch.Tensor, stride: float) -> torch.Tensor:
    """Squared length (cells^2) of the weighted mean offset of a batch: a constant shift of every keypoint
    costs the main loss almost nothing (it commutes with near-identity warps) but biases every position."""
    o = offsets.flatten(2) / stride  # (B, 2, N)
    m = (o * weight[:, None]).sum(dim=(0, 2)) / weight.sum().clamp(min=1e-6)
    return (m**2).sum()


def offset_loss(
    off0: torch.Tensor, off1: torch.Tensor, prob0: torch.Tensor, prob1: torch.Tensor, homographies: torch.Tensor,
    grid: GridMap, image_size: tuple[int, int], config: OffsetLossConfig,
) -> dict[str, torch.Tensor]:
    """The offset loss of a batch of pairs.

    Args:
        off0, off1: (B, 2, Hf, Wf) offsets in pixels of view 0 / view 1 (the head's output).
        prob0, prob1: (B, 1, Hf, Wf) frozen keypoint probabilities.
        homographies: (B, 3, 3) view 0 -> view 1 pixels.
        grid: ``model.grid``; image_size: (H, W) of the views.
    Returns:
        ``loss`` (scalar, with gradient), ``err`` (mean error of the weighted points, px), ``err_grid`` (the
        same at zero offsets, px: what the head has to beat), ``weight`` (weighted points per pair).
    """
    b, _, hf, wf = off0.shape
    centres = grid.to_image(cell_grid(hf, wf, off0.device))[None]
    p0 = centres + off0.flatten(2).transpose(1, 2)
    p1 = centres + off1.flatten(2).transpose(1, 2)
    w0, w1 = detection_weight(prob0, config), detection_weight(prob1, config)
    margin = int(grid.stride)
    valid0 = valid_mask(*image_size, None, margin).expand(b, -1, -1, -1).to(off0.device)
    valid1 = valid_mask(*image_size, homographies.cpu(), margin).to(off0.device)
    hinv = torch.linalg.inv(homographies.double())
    s01, n01, e01 = _one_direction(p0, p1, w0, w1, homographies, valid1, grid, (hf, wf), config.delta)
    s10, n10, e10 = _one_direction(p1, p0, w1, w0, hinv, valid0, grid, (hf, wf), config.delta)
    loss = (s01 + s10) / (n01 + n10).clamp(min=1e-6)
    if config.uniformity > 0:
        loss = loss + config.uniformity * 0.5 * (uniformity_loss(off0, w0, grid.stride)
                                                 + uniformity_loss(off1, w1, grid.stride))
    if config.centring > 0:
        loss = loss + config.centring * 0.5 * (mean_offset(off0, w0, grid.stride) + mean_offset(off1, w1, grid.stride))
    with torch.no_grad():
        g01 = _one_direction(centres.expand(b, -1, -1), centres.expand(b, -1, -1), w0, w1, homographies, valid1,
                             grid, (hf, wf), config.delta)[2]
        err = torch.cat([e01, e10])
    return {"loss": loss, "err": err.mean() if len(err) else loss.detach() * 0,
            "err_grid": g01.mean() if len(g01) else loss.detach() * 0, "weight": (n01 + n10).detach() / (2 * b)}


def offset_stats(offsets: torch.Tensor, weight: torch.Tensor, bound: float) -> dict[str, float]:
    """Summary of the weighted cells' offsets (B, 2, Hf, Wf) px: mean/std per axis, share at the bound
    (|o| > 0.95 bound), share within 0.1 px of the centre."""
    o = offsets.detach().flatten(2).transpose(1, 2)[weight > 0]
    if len(o) == 0:
        return {}
    at_bound = (o.abs() > 0.95 * bound).float().mean()
    return {"dx_mean": float(o[:, 0].mean()), "dy_mean": float(o[:, 1].mean()), "dx_std": float(o[:, 0].std()),
            "dy_std": float(o[:, 1].std()), "at_bound": float(at_bound),
            "near_zero": float((o.abs() < 0.1).all(dim=1).float().mean())}
