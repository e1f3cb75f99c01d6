"""The SiLK loss, computed block by block so that the N x N similarity matrix never exists in memory.

For one image pair with descriptors ``D0`` (N0, D), ``D1`` (N1, D) (norm 1.41, the named output
``dense_descriptors``), keypoint logits ``l0`` (N0,), ``l1`` (N1,) and ground-truth correspondences
``c0`` (N0,), ``c1`` (N1,) (cell index in the other view, -1: none; mutual):

* similarity ``S = (D0 / sqrt(T)) (D1 / sqrt(T))^T`` with temperature ``T = 0.1``;
* descriptor loss (InfoNCE, both directions *summed*):
  ``CE(S, c0) + CE(S^T, c1)``, ``CE(S, c) = mean_{i: c[i] >= 0} (logsumexp_j S[i, j] - S[i, c[i]])``,
  the logsumexp running over *all* cells of the other view;
* keypoint loss: a cell's label is 1 iff its mutual nearest neighbour under ``S`` is its ground-truth
  correspondence; binary cross-entropy with the logits over the cells that have a correspondence, summed
  over both views and divided by the number of such cells (both views counted together);
* ``loss = desc_loss + kp_loss``; batches average the per-pair values.

Metrics (view 0, as the original logs them): ``precision = #{c0 >= 0 and m0 >= 0} / #{m0 >= 0}``,
``recall = #{c0 >= 0 and m0 >= 0} / #{c0 >= 0}``, ``f1`` (m0: mutual nearest neighbours).

Memory: :func:`similarity_stats` walks over blocks of rows of ``S``, keeping per-row logsumexp/argmax and a
running (online) logsumexp/argmax per column; its backward pass recomputes each block. Peak memory is a few
``block_size x N1`` buffers instead of ``N0 x N1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossConfig:
    """Settings of :func:`silk_loss` (the defaults are the original's)."""

    temperature: float = 0.1
    block_size: int | None = 1024  # rows of S per block; None: the whole matrix at once (small maps only)
    cells: int | None = None  # random subset of cells per view (see sample_cells); None: every cell


def mutual_only(c0: torch.Tensor, c1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep round-trip consistent pairs only.

    Args:
        c0: (..., N0) long, index of the matched cell in view 1 for each cell of view 0, -1: none.
        c1: (..., N1) long, the other direction.
    Returns:
        ``(c0, c1)`` with ``c0[i]`` set to -1 unless ``c1[c0[i]] == i`` (and then likewise for ``c1``).
    """
    i0 = torch.arange(c0.shape[-1], device=c0.device).expand_as(c0)
    back = c1.gather(-1, c0.clamp(min=0))
    c0 = torch.where((c0 >= 0) & (back == i0), c0, -1)
    i1 = torch.arange(c1.shape[-1], device=c1.device).expand_as(c1)
    back = c0.gather(-1, c1.clamp(min=0))
    c1 = torch.where((c1 >= 0) & (back == i1), c1, -1)
    return c0, c1


# |S| <= bound: with bound <= 40, exp(S - bound) stays a normal float32 (>= e^-80), so one exponential per
# element serves rows and columns alike; otherwise rows and columns get their own running maxima.
_SINGLE_SHIFT_BOUND = 40.0


class _BlockwiseSimilarity(torch.autograd.Function):
    """(d0 (N0, D), d1 (N1, D), block) -> lse0 (N0,), lse1 (N1,), argmax0 (N0,), argmax1 (N1,) of S = d0 d1^T.

    Gradients flow through the logsumexps; the backward pass recomputes S block by block.
    """

    @staticmethod
    def forward(ctx, d0: torch.Tensor, d1: torch.Tensor, block: int):  # type: ignore[override]
        n0, n1 = d0.shape[0], d1.shape[0]
        bound = float(d0.norm(dim=1).max() * d1.norm(dim=1).max()) if n0 and n1 else 0.0
        shift = bound if bound <= _SINGLE_SHIFT_BOUND else None
        lse0 = d0.new_empty(n0)
        arg0 = torch.empty(n0, dtype=torch.long, device=d0.device)
        col_max = d0.new_full((n1,), -math.inf)
        col_sum = d0.new_zeros(n1)
        arg1 = torch.zeros(n1, dtype=torch.long, device=d0.device)
        for s in range(0, n0, block):
            sim = d0[s : s + block] @ d1.T
            row_max, arg0[s : s + block] = sim.max(dim=1)
            blk_max, blk_arg = sim.max(dim=0)
            arg1 = torch.where(blk_max > col_max, blk_arg + s, arg1)
            if shift is not None:
                col_max = torch.maximum(col_max, blk_max)
                sim.sub_(shift).exp_()
                lse0[s : s + block] = sim.sum(1).log_().add_(shift)
                col_sum += sim.sum(0)
                continue
            lse0[s : s + block] = row_max + (sim - row_max[:, None]).exp_().sum(1).log_()
            new_max = torch.maximum(col_max, blk_max)
            col_sum = col_sum * (col_max - new_max).exp_() + sim.sub_(new_max).exp_().sum(0)
            col_max = new_max
        lse1 = col_sum.log() + (shift if shift is not None else col_max)
        ctx.save_for_backward(d0, d1, lse0, lse1)
        ctx.block, ctx.shift = block, shift
        ctx.mark_non_differentiable(arg0, arg1)
        return lse0, lse1, arg0, arg1

    @staticmethod
    def backward(ctx, g0: torch.Tensor, g1: torch.Tensor, _a0: None, _a1: None):  # type: ignore[override]
        d0, d1, lse0, lse1 = ctx.saved_tensors
        block, shift = ctx.block, ctx.shift
        grad0 = torch.empty_like(d0) if ctx.needs_input_grad[0] else None
        grad1 = torch.zeros_like(d1) if ctx.needs_input_grad[1] else None
        if shift is not None:  # softmax = exp(S - shift) * exp(shift - lse)
            col_factor = (shift - lse1).exp_().mul_(g1)
        for s in range(0, d0.shape[0], block):
            d0b = d0[s : s + block]
            sim = d0b @ d1.T
            # dL/dS = g0_i softmax_j(S)_ij + g1_j softmax_i(S)_ij
            if shift is not None:
                row_factor = (shift - lse0[s : s + block]).exp_().mul_(g0[s : s + block])
                w = sim.sub_(shift).exp_().mul_(row_factor[:, None] + col_factor)
            else:
                col = (sim - lse1).exp_().mul_(g1)
                w = sim.sub_(lse0[s : s + block, None]).exp_().mul_(g0[s : s + block, None]).add_(col)
            if grad0 is not None:
                grad0[s : s + block] = w @ d1
            if grad1 is not None:
                grad1.addmm_(w.T, d0b)
        return grad0, grad1, None


def similarity_stats(d0: torch.Tensor, d1: torch.Tensor, block_size: int | None = 1024) -> dict[str, torch.Tensor]:
    """Row/column logsumexp and argmax of ``S = d0 d1^T`` for one pair.

    Args:
        d0: (N0, D), d1: (N1, D) descriptors (already divided by sqrt(T)).
        block_size: rows of S per block; ``None`` computes the full matrix (reference / small maps).
    Returns:
        ``lse0`` (N0,) logsumexp over each row, ``lse1`` (N1,) over each column (differentiable),
        ``argmax0`` (N0,) best cell of view 1 per row, ``argmax1`` (N1,) best cell of view 0 per column.
    """
    if block_size is None:
        sim = d0 @ d1.T
        return {
            "lse0": sim.logsumexp(1),
            "lse1": sim.logsumexp(0),
            "argmax0": sim.detach().argmax(1),
            "argmax1": sim.detach().argmax(0),
        }
    lse0, lse1, arg0, arg1 = _BlockwiseSimilarity.apply(d0, d1, int(block_size))
    return {"lse0": lse0, "lse1": lse1, "argmax0": arg0, "argmax1": arg1}


def pair_loss(
    desc0: torch.Tensor,
    desc1: torch.Tensor,
    logits0: torch.Tensor,
    logits1: torch.Tensor,
    corr0: torch.Tensor,
    corr1: torch.Tensor,
    temperature: float = 0.1,
    block_size: int | None = 1024,
) -> dict[str, torch.Tensor]:
    """SiLK loss terms and metrics of one pair: desc (N, D), logits (N,), corr (N,) long (-1: none).

    Returns scalars ``loss``, ``desc_loss``, ``kp_loss``, ``precision``, ``recall``, ``f1`` and the per-cell
    ``lse0``, ``lse1``, ``argmax0``, ``argmax1``, ``mutual0``, ``mutual1``. A view without any correspondence
    contributes 0 (the original would give NaN).
    """
    scale = temperature**-0.5
    d0, d1 = desc0.float() * scale, desc1.float() * scale
    stats = similarity_stats(d0, d1, block_size)
    v0, v1 = corr0 >= 0, corr1 >= 0
    n0, n1 = v0.sum(), v1.sum()
    pos0 = (d0[v0] * d1[corr0[v0]]).sum(-1)
    pos1 = (d1[v1] * d0[corr1[v1]]).sum(-1)
    desc_loss = (stats["lse0"][v0] - pos0).sum() / n0.clamp(min=1) + (stats["lse1"][v1] - pos1).sum() / n1.clamp(
        min=1
    )

    m0, m1 = mutual_only(stats["argmax0"], stats["argmax1"])
    bce0 = F.binary_cross_entropy_with_logits(logits0.float()[v0], (corr0 == m0)[v0].float(), reduction="sum")
    bce1 = F.binary_cross_entropy_with_logits(logits1.float()[v1], (corr1 == m1)[v1].float(), reduction="sum")
    kp_loss = (bce0 + bce1) / (n0 + n1).clamp(min=1)

    hits = (v0 & (m0 >= 0)).sum().float()
    precision = hits / (m0 >= 0).sum().clamp(min=1)
    recall = hits / n0.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return {
        "loss": desc_loss + kp_loss,
        "desc_loss": desc_loss,
        "kp_loss": kp_loss,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        **stats,
        "mutual0": m0,
        "mutual1": m1,
    }


SCALARS = ("loss", "desc_loss", "kp_loss", "precision", "recall", "f1")


def silk_loss(
    desc0: torch.Tensor,
    desc1: torch.Tensor,
    logits0: torch.Tensor,
    logits1: torch.Tensor,
    corr0: torch.Tensor,
    corr1: torch.Tensor,
    config: LossConfig | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """SiLK loss of a batch of pairs, averaged over pairs.

    Args:
        desc0, desc1: (B, N, D) descriptors of view 0 / view 1 (``dense_descriptors``, row-major cells).
        logits0, logits1: (B, N) keypoint logits (or (B, 1, Hf, Wf), flattened here).
        corr0, corr1: (B, N) long mutual correspondences from :func:`~.homography.dense_correspondences`.
        config: temperature, block size, optional random subset of cells (``cells``).
        generator: random source for the cell subset.
    Returns:
        scalars ``loss`` (differentiable), ``desc_loss``, ``kp_loss``, ``precision``, ``recall``, ``f1``.
    """
    config = config or LossConfig()
    logits0, logits1 = logits0.flatten(1), logits1.flatten(1)
    terms = []
    for b in range(desc0.shape[0]):
        args = [desc0[b], desc1[b], logits0[b], logits1[b], corr0[b], corr1[b]]
        if config.cells is not None:
            idx0, idx1, sub0, sub1 = sample_cells(corr0[b], corr1[b], config.cells, generator)
            args = [desc0[b][idx0], desc1[b][idx1], logits0[b][idx0], logits1[b][idx1], sub0, sub1]
        terms.append(pair_loss(*args, temperature=config.temperature, block_size=config.block_size))
    return {k: torch.stack([t[k] for t in terms]).mean() for k in SCALARS}


def sample_cells(
    corr0: torch.Tensor, corr1: torch.Tensor, num: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random subset of ``num`` cells per view that keeps the positives of the sampled view-0 cells.

    View 0: ``num`` cells uniformly at random. View 1: the correspondents of the sampled view-0 cells, filled up
    with random other cells to ``num``. The loss then runs on the subsets: negatives (the logsumexp) are the
    sampled cells of the other view only, and view-1 cells whose correspondent was not sampled count as having
    none. Same cost as a map of ``num`` cells.

    Args:
        corr0: (N0,), corr1: (N1,) long mutual correspondences (-1: none).
    Returns:
        ``idx0`` (n0,), ``idx1`` (n1,) sorted cell indices, and the correspondences between the subsets
        ``sub0`` (n0,), ``sub1`` (n1,) as positions in the other subset (-1: none); n = min(num, N).
    """
    n0, n1 = corr0.shape[0], corr1.shape[0]
    dev = corr0.device
    idx0 = torch.randperm(n0, generator=generator)[:num].to(dev).sort().values
    targets = corr0[idx0]
    chosen = torch.zeros(n1, dtype=torch.bool, device=dev)
    chosen[targets[targets >= 0]] = True
    others = (~chosen).nonzero().squeeze(1)
    fill = max(0, min(num, n1) - int(chosen.sum()))
    chosen[others[torch.randperm(others.shape[0], generator=generator)[:fill].to(dev)]] = True
    idx1 = chosen.nonzero().squeeze(1)
    where0 = torch.full((n0,), -1, dtype=torch.long, device=dev)
    where0[idx0] = torch.arange(idx0.shape[0], device=dev)
    where1 = torch.full((n1,), -1, dtype=torch.long, device=dev)
    where1[idx1] = torch.arange(idx1.shape[0], device=dev)
    sub0 = torch.where(targets >= 0, where1[targets.clamp(min=0)], -1)
    back = corr1[idx1]
    sub1 = torch.where(back >= 0, where0[back.clamp(min=0)], -1)
    return idx0, idx1, sub0, sub1
