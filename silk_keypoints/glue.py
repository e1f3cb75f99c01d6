"""SiLKGlue: a learned matcher for SiLK keypoints (attention over both keypoint sets, dual-softmax assignment).

Written here from the published method of attention-based matchers (docs/glue.md):

1. each descriptor (D) is projected to the model width ``d``;
2. ``layers`` times: a **self-attention** block per image, whose queries and keys carry a rotary encoding of the
   keypoint positions (so attention depends on relative positions), then a **cross-attention** block between
   the two images (one similarity matrix for both directions); each block adds ``MLP([x, message])`` to ``x``;
3. the **assignment**: ``S = f0 f1^T`` of projected features, a log dual softmax
   ``log P_ij = log softmax_j S_ij + log softmax_i S_ij + log sigmoid(z0_i) + log sigmoid(z1_j)`` with a
   *matchability* logit ``z`` per point; ``log sigmoid(-z)`` is the point's log-probability to be unmatched.
   Matches are mutual row / column maxima of ``P`` with ``P > match_threshold``.

Positions are normalised by the image size: ``(p - (W, H) / 2) / (max(W, H) / 2)`` (pixel (x, y), centre of the
top-left pixel at (0, 0)), so the model sees the same geometry at any resolution. Padded keypoints
(``mask`` False) are never attended to and never matched; a batch may hold images with different counts.

Weights are ``.safetensors`` files with the :class:`GlueConfig` as JSON in the metadata, read without pickle
(:func:`~silk_keypoints.model.checkpoint.read_safetensors`); shipped weights live in ``glue_weights/`` and are
named after the extractor they were trained for (``fast``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import SilkError

WEIGHTS_DIR = Path(__file__).parent / "glue_weights"
_FORMAT = "silk-keypoints-glue"
_NEG = -1e9  # additive mask value: exp() of it is exactly 0 next to any real score


@dataclass
class GlueConfig:
    """Architecture and inference defaults of :class:`SiLKGlue`."""

    descriptor_dim: int = 128  # D of the extractor's descriptors
    width: int = 64  # d, the feature width inside the matcher
    layers: int = 4  # self + cross attention pairs
    heads: int = 4  # attention heads (width must divide)
    match_threshold: float = 0.1  # keep mutual maxima with P > threshold

    def __post_init__(self) -> None:
        for name in ("descriptor_dim", "width", "layers", "heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SilkError(f"glue config: {name} must be a positive int, got {value!r}")
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise SilkError(f"glue config: width {self.width} must be {self.heads} heads x an even head size")
        if not 0 <= self.match_threshold < 1:
            raise SilkError(f"glue config: match_threshold must be in [0, 1), got {self.match_threshold}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GlueConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SilkError(f"unknown glue config keys {unknown}; known: {sorted(known)}")
        return cls(**values)


def normalise_keypoints(keypoints: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
    """(B, N, 2) pixels -> (B, N, 2) ``(p - size / 2) / (max(W, H) / 2)`` for ``image_size`` (B, 2) (W, H)."""
    size = image_size.to(keypoints)
    return (keypoints - size[:, None] / 2) / (size.max(dim=1).values[:, None, None] / 2)


class _Rotary(nn.Module):
    """Rotary encoding of 2-D positions: per head channel pair a learned frequency vector ``w``; the pair is
    rotated by the angle ``w . p``, so ``q . k`` depends on ``p_q - p_k`` only."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.freqs = nn.Linear(2, head_dim // 2, bias=False)
        nn.init.normal_(self.freqs.weight, std=2.0)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, 2) -> cos, sin (B, 1, N, head_dim), each value repeated for the two channels of its pair."""
        angles = self.freqs(positions).repeat_interleave(2, dim=-1)[:, None]
        return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs (2i, 2i+1) of x (B, h, N, c) by the angles of ``cos``/``sin``."""
    pairs = x.unflatten(-1, (-1, 2))
    turned = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * cos + turned * sin


class _Update(nn.Module):
    """``x + MLP([x, message])``: the residual update of every attention block."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.out = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(2 * width, 2 * width), nn.LayerNorm(2 * width), nn.GELU(),
                                 nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
        """x (B, N, d), message (B, h, N, c) -> (B, N, d)."""
        message = self.out(message.transpose(1, 2).flatten(2))
        return x + self.mlp(torch.cat([x, message], dim=-1))


class _SelfBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.update = _Update(width)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor],
                bias: torch.Tensor | None) -> torch.Tensor:
        """x (B, N, d), rotary cos/sin (B, 1, N, c), bias (B, 1, 1, N) additive key mask or None -> (B, N, d)."""
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        q, k = _rotate(q, *rotary), _rotate(k, *rotary)
        return self.update(x, F.scaled_dot_product_attention(q, k, v, attn_mask=bias))


class _CrossBlock(nn.Module):
    """Both directions from one similarity matrix ``s = qk0 qk1^T / sqrt(c)``: ``a0 = softmax_j(s)``,
    ``a1 = softmax_i(s)``; computed as two fused attention calls (``s^T`` for the second), so the (N0, N1)
    matrix is never held in memory."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qk = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.update = _Update(width)

    def forward(
        self, x0: torch.Tensor, x1: torch.Tensor, bias0: torch.Tensor | None, bias1: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x0 (B, N0, d), x1 (B, N1, d), bias0 (B, 1, 1, N0) and bias1 (B, 1, 1, N1) additive key masks (or None)."""
        qk0, qk1 = (self.qk(x).unflatten(-1, (self.heads, -1)).transpose(1, 2) for x in (x0, x1))
        v0, v1 = (self.v(x).unflatten(-1, (self.heads, -1)).transpose(1, 2) for x in (x0, x1))
        m0 = F.scaled_dot_product_attention(qk0, qk1, v1, attn_mask=bias1)
        m1 = F.scaled_dot_product_attention(qk1, qk0, v0, attn_mask=bias0)
        return self.update(x0, m0), self.update(x1, m1)


class _Assignment(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, width)
        self.matchability = nn.Linear(width, 1)

    def forward(
        self, x0: torch.Tensor, x1: torch.Tensor, mask0: torch.Tensor, mask1: torch.Tensor, padded: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> log P (B, N0, N1), log-probability to be unmatched (B, N0) and (B, N1); padded entries -1e9
        (``padded``: some mask entry is False, or the graph is being exported).

        ``log softmax_j S_ij + log sigmoid(z0_i) = S_ij + a_i`` with ``a_i = log sigmoid(z0_i) - logsumexp_j S_ij``
        (and ``b_j`` the same over columns), so ``log P = 2 S + a + b`` takes three passes over the matrix."""
        scale = x0.shape[-1] ** -0.25
        f0, f1 = self.proj(x0) * scale, self.proj(x1) * scale
        sim = f0 @ f1.transpose(-1, -2)
        if padded:
            pair = mask0[:, :, None] & mask1[:, None, :]
            sim = sim.masked_fill(~pair, _NEG)
        z0, z1 = self.matchability(x0)[..., 0], self.matchability(x1)[..., 0]
        a = F.logsigmoid(z0) - torch.logsumexp(sim, dim=2)
        b = F.logsigmoid(z1) - torch.logsumexp(sim, dim=1)
        log_p = (2 * sim).add_(a[:, :, None]).add_(b[:, None, :])
        if padded:
            log_p = log_p.masked_fill(~pair, _NEG)
        un0 = torch.where(mask0, F.logsigmoid(-z0), torch.full_like(z0, _NEG))
        un1 = torch.where(mask1, F.logsigmoid(-z1), torch.full_like(z1, _NEG))
        return log_p, un0, un1


class SiLKGlue(nn.Module):
    """The learned matcher (module doc). ``SiLKGlue(width=64, layers=3)`` or ``SiLKGlue(GlueConfig(...))``;
    keyword arguments override the config's fields."""

    def __init__(self, conf: GlueConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        conf = conf or GlueConfig()
        unknown = sorted(set(kwargs) - {f.name for f in fields(GlueConfig)})
        if unknown:
            raise SilkError(f"unknown SiLKGlue options {unknown}")
        self.conf = replace(conf, **kwargs)
        self.source: Path | None = None  # the weight file (from_file), recorded in matches.h5
        d, h = self.conf.width, self.conf.heads
        self.input = nn.Linear(self.conf.descriptor_dim, d)
        self.rotary = _Rotary(d // h)
        self.self_blocks = nn.ModuleList(_SelfBlock(d, h) for _ in range(self.conf.layers))
        self.cross_blocks = nn.ModuleList(_CrossBlock(d, h) for _ in range(self.conf.layers))
        self.assignment = _Assignment(d)

    # ------------------------------------------------------------------ the network
    def log_assignment(
        self,
        keypoints0: torch.Tensor,
        keypoints1: torch.Tensor,
        descriptors0: torch.Tensor,
        descriptors1: torch.Tensor,
        size0: torch.Tensor,
        size1: torch.Tensor,
        mask0: torch.Tensor | None = None,
        mask1: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """keypoints (B, N, 2) pixels, descriptors (B, N, D), sizes (B, 2) (W, H), masks (B, N) bool (True:
        real) -> log P (B, N0, N1), unmatched log-probabilities (B, N0), (B, N1) (module doc)."""
        if descriptors0.shape[-1] != self.conf.descriptor_dim or descriptors1.shape[-1] != self.conf.descriptor_dim:
            raise SilkError(f"SiLKGlue was trained for {self.conf.descriptor_dim}-D descriptors, got "
                            f"{descriptors0.shape[-1]}-D and {descriptors1.shape[-1]}-D")
        masks = []
        for kpts, mask in ((keypoints0, mask0), (keypoints1, mask1)):
            masks.append(torch.ones(kpts.shape[:2], dtype=torch.bool, device=kpts.device) if mask is None
                         else mask.bool())
        mask0, mask1 = masks
        # unpadded inputs attend without a mask (a faster kernel); an exported graph (ONNX) always masks
        padded = torch.compiler.is_exporting() or not (bool(mask0.all()) and bool(mask1.all()))
        bias0, bias1 = (((~m).to(descriptors0.dtype) * _NEG)[:, None, None, :] if padded else None
                        for m in (mask0, mask1))
        rot0 = self.rotary(normalise_keypoints(keypoints0, size0))
        rot1 = self.rotary(normalise_keypoints(keypoints1, size1))
        x0, x1 = self.input(descriptors0), self.input(descriptors1)
        for self_block, cross_block in zip(self.self_blocks, self.cross_blocks):
            x0 = self_block(x0, rot0, bias0)
            x1 = self_block(x1, rot1, bias1)
            x0, x1 = cross_block(x0, x1, bias0, bias1)
        return self.assignment(x0, x1, mask0, mask1, padded)

    def forward(
        self,
        keypoints0: torch.Tensor,
        keypoints1: torch.Tensor,
        descriptors0: torch.Tensor,
        descriptors1: torch.Tensor,
        size0: torch.Tensor,
        size1: torch.Tensor,
        mask0: torch.Tensor | None = None,
        mask1: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Match (arguments of :meth:`log_assignment`).

        Returns:
            ``matches0`` (B, N0) int64 index into image 1 or -1, ``matching_scores0`` (B, N0) ``P`` of the match
            (0 if unmatched), ``matches1`` / ``matching_scores1`` (B, N1) the same from image 1, and
            ``log_assignment`` (B, N0, N1).
        """
        log_p, _, _ = self.log_assignment(keypoints0, keypoints1, descriptors0, descriptors1, size0, size1,
                                          mask0, mask1)
        m0, m1, s0, s1 = mutual_matches(log_p, self.conf.match_threshold)
        return {"matches0": m0, "matches1": m1, "matching_scores0": s0, "matching_scores1": s1,
                "log_assignment": log_p}

    # ------------------------------------------------------------------ weights
    @classmethod
    def from_pretrained(cls, name: str = "fast") -> SiLKGlue:
        """The shipped matcher for the extractor ``name`` (``glue_weights/<name>.safetensors``).

        Raises:
            SilkError: no weights shipped for ``name``.
        """
        path = WEIGHTS_DIR / f"{name}.safetensors"
        if not path.is_file():
            have = ", ".join(available_glue()) or "none yet"
            raise SilkError(f"no SiLKGlue weights shipped for the {name!r} extractor (shipped: {have}); train "
                            "them (docs/glue.md) and pass the file (--glue-weights FILE)")
        return cls.from_file(path)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> SiLKGlue:
        """A matcher from a weight file written by :meth:`save`."""
        from .model.checkpoint import check_state_dict, read_safetensors

        state, meta = read_safetensors(path, _FORMAT)
        model = cls(GlueConfig.from_dict(json.loads(meta["config"])))
        check_state_dict(model, state, str(path))
        model.load_state_dict(state)
        model.source = Path(path)
        return model.eval()

    def save(self, path: str | os.PathLike, info: dict | None = None) -> Path:
        """Write the weights and config as ``.safetensors`` (atomically); ``info``: JSON-able provenance."""
        from .model.checkpoint import write_safetensors

        meta = {"config": self.conf.to_json(), "info": json.dumps(info or {})}
        return write_safetensors(self.state_dict(), path, _FORMAT, meta)


def available_glue() -> list[str]:
    """Extractor names with shipped SiLKGlue weights."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def mutual_matches(
    log_p: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mutual row / column maxima of ``P = exp(log_p)`` (B, N0, N1) with ``P > threshold`` ->
    matches0 (B, N0), matches1 (B, N1) (index or -1) and their scores (0 where unmatched)."""
    best0, idx0 = log_p.max(dim=2)
    best1, idx1 = log_p.max(dim=1)
    ar0 = torch.arange(log_p.shape[1], device=log_p.device)[None]
    ar1 = torch.arange(log_p.shape[2], device=log_p.device)[None]
    mutual0 = idx1.gather(1, idx0) == ar0
    mutual1 = idx0.gather(1, idx1) == ar1
    log_t = math.log(threshold) if threshold > 0 else -math.inf
    ok0 = mutual0 & (best0 > log_t) & (best0 > _NEG / 2)
    ok1 = mutual1 & (best1 > log_t) & (best1 > _NEG / 2)
    m0 = torch.where(ok0, idx0, torch.full_like(idx0, -1))
    m1 = torch.where(ok1, idx1, torch.full_like(idx1, -1))
    s0 = torch.where(ok0, best0.exp(), torch.zeros_like(best0))
    s1 = torch.where(ok1, best1.exp(), torch.zeros_like(best1))
    return m0, m1, s0, s1
