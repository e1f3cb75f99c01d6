"""Descriptor matching with SiLK's rules, in bounded memory.

Three methods (the original's ``matcher`` post-processings, same rules and defaults):

``"mnn"``
    mutual nearest neighbours on the distance ``1 - d0 . d1`` (no threshold).
``"ratio"``
    mutual nearest neighbours on the cosine distance ``1 - cos(d0, d1)``, then keep matches whose
    best / second-best cosine distance ratio is ``< ratio_threshold`` (default 0.6, the original's
    inference script). A zero second-best distance is replaced by float64 eps.
``"double-softmax"``
    ``S = d0 . d1 / temperature``, ``P = softmax_rows(S) * softmax_cols(S)``, mutual nearest neighbours of
    ``P``, keep ``1 - P < threshold`` i.e. ``P > 1 - threshold`` (threshold 0.6, temperature 0.1 as in the
    original's inference script; its CLI example uses 0.9, its IMC setting 0.99). The temperature acts on the
    descriptors *as given*: the original's descriptors have norm 1.41, :meth:`SiLK.extract` returns unit ones
    (:class:`Matcher` converts for you).

The N0 x N1 similarity matrix is never held whole: rows of ``desc0`` are processed in blocks of
``chunk_size`` and the row / column reductions (best, second best, log-sum-exp) are accumulated across blocks,
so memory grows like ``chunk_size * N1``. Results equal those of a single block (the matrix product of a block
may round differently in the last bit, which can only swap a decision between candidates tied to ~1e-7).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import SilkError
from .features import Features
from .geometry import estimate_homography
from .refinement import DEFAULT_SUBDIVISIONS, check_subdivisions, refine_matches

METHODS = ("mnn", "ratio", "double-softmax")
# The unrelated-pairs gate (docs/ecosystem.md, "Unrelated pairs", benchmarks/unrelated_pairs.py): a fitted
# two-view model with fewer than GATE_MIN_INLIERS inliers (COLMAP's own minimum) or under GATE_MIN_INLIER_RATIO
# of the matches is no model (match_pair's default: silk match, silk demo). GATE_MAX_DISTANCE: the optional
# descriptor gate (Matcher(max_distance=...), --max-distance), off by default: it also drops most true matches of
# hard real pairs.
# Pair lists (silk match-pairs, silk colmap) have no fitted model: there the gate is a homography fitted to the
# matches (GATE_THRESHOLD px, USAC_MAGSAC) for the relatedness test only (related_pair).
GATE_MIN_INLIERS = 15
GATE_MIN_INLIER_RATIO = 0.05
GATE_MAX_DISTANCE = 0.2
GATE_THRESHOLD = 3.0
MATCHERS = METHODS + ("glue",)  # Matcher's methods: the descriptor rules and the learned SiLKGlue
_BLOCK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}  # similarity entries per block (16 MB / 256 MB float32)


def match_descriptors(
    desc0: torch.Tensor | np.ndarray,
    desc1: torch.Tensor | np.ndarray,
    method: str = "mnn",
    *,
    ratio_threshold: float = 0.6,
    temperature: float = 0.1,
    threshold: float = 0.6,
    mutual: bool = True,
    max_distance: float | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[np.ndarray, np.ndarray]:
    """Match two descriptor sets.

    Args:
        desc0: (N0, D) descriptors of image 0 (torch on any device, or numpy).
        desc1: (N1, D) descriptors of image 1.
        method: ``"mnn"``, ``"ratio"`` or ``"double-softmax"`` (see the module doc).
        ratio_threshold: ``"ratio"``: keep best / second-best cosine distance ``< ratio_threshold``.
        temperature: ``"double-softmax"``: ``S = d0 . d1 / temperature``.
        threshold: ``"double-softmax"``: keep ``1 - P < threshold``.
        mutual: keep only mutual nearest neighbours (the original always does); ``False`` keeps every row's
            nearest neighbour that passes the method's test.
        max_distance: drop matches whose cosine distance ``1 - cos(d0_i, d1_j)`` exceeds this (any method).
        chunk_size: rows of ``desc0`` per block (default: about 4M similarity entries on CPU, 64M on GPU).

    Returns:
        ``matches`` (K, 2) int64 ``[index in desc0, index in desc1]``, ascending in the first column, and
        ``scores`` (K,) float32, higher is better: ``"mnn"``: the similarity ``d0 . d1``; ``"ratio"``:
        ``1 - ratio``; ``"double-softmax"``: ``P``. numpy arrays if both inputs are numpy, else tensors on the
        inputs' device.

    Raises:
        SilkError: unknown method, bad parameters, non-2D inputs, different descriptor sizes, NaN / inf.
    """
    d0, d1 = _as_tensors(desc0, desc1)
    _check_options(method, ratio_threshold, temperature, threshold, max_distance, chunk_size)
    if len(d0) == 0 or len(d1) == 0:
        matches, scores = d0.new_zeros((0, 2), dtype=torch.long), d0.new_zeros(0, dtype=torch.float32)
    else:
        rows = chunk_size or max(1, _BLOCK_ELEMENTS.get(d0.device.type, 1 << 24) // len(d1))
        with torch.no_grad():
            if method == "mnn":
                matches, scores = _mnn(d0, d1, rows, mutual)
            elif method == "ratio":
                matches, scores = _ratio(d0, d1, rows, mutual, ratio_threshold)
            else:
                matches, scores = _double_softmax(d0, d1, rows, mutual, temperature, threshold)
            if max_distance is not None and len(matches):
                cos = F.cosine_similarity(d0[matches[:, 0]], d1[matches[:, 1]], dim=1)
                keep = 1 - cos <= max_distance
                matches, scores = matches[keep], scores[keep]
        scores = scores.float()
    if isinstance(desc0, np.ndarray) and isinstance(desc1, np.ndarray):
        return matches.numpy(), scores.numpy()
    return matches, scores


def gate_passes(num_inliers: int, num_matches: int, min_inliers: int = GATE_MIN_INLIERS,
                min_inlier_ratio: float = GATE_MIN_INLIER_RATIO) -> bool:
    """The unrelated-pairs gate on a fitted model: at least ``min_inliers`` inliers and ``min_inlier_ratio`` of
    the ``num_matches`` matches."""
    return num_inliers >= min_inliers and num_inliers >= min_inlier_ratio * num_matches


def related_pair(points0: np.ndarray | torch.Tensor, points1: np.ndarray | torch.Tensor,
                 min_inliers: int = GATE_MIN_INLIERS, min_inlier_ratio: float = GATE_MIN_INLIER_RATIO,
                 threshold: float = GATE_THRESHOLD) -> bool:
    """The unrelated-pairs gate of pair lists: whether a homography fitted to the (K, 2) matched points
    (USAC_MAGSAC at ``threshold`` px, seed 0) passes :func:`gate_passes`. A test of relatedness only: pairs
    of one 3-D scene pass on the matches of any dominant plane or distant part (docs/ecosystem.md)."""
    p0, p1 = (np.asarray(p.detach().cpu() if isinstance(p, torch.Tensor) else p, dtype=np.float64)
              for p in (points0, points1))
    if len(p0) < max(min_inliers, 4):
        return False
    return gate_passes(estimate_homography(p0, p1, threshold=threshold, seed=0).num_inliers, len(p0),
                       min_inliers, min_inlier_ratio)


class Matcher(nn.Module):
    """LightGlue-style matcher for :meth:`SiLK.extract` outputs.

    ``Matcher(method="double-softmax", threshold=0.9)({"image0": feats0, "image1": feats1})``; the defaults are
    the command line's: mutual nearest neighbours, refined below the cell size.

    Args:
        method: see :func:`match_descriptors`, or ``"glue"``: the learned :class:`~silk_keypoints.glue.SiLKGlue`,
            which also needs ``keypoints`` and ``image_size`` of both images; ``threshold`` then keeps matches
            with ``P > threshold`` (default: the weights' config).
        glue_weights: ``"glue"``: the extractor name whose shipped SiLKGlue weights to use (default ``"fast"``)
            or a ``.safetensors`` file written by :meth:`SiLKGlue.save`.
        max_distance: drop matches whose cosine distance ``1 - cos`` exceeds this (any method; None: keep
            them). :data:`GATE_MAX_DISTANCE` (0.2) is the descriptor gate against unrelated pairs measured in
            docs/ecosystem.md (for pair lists without a fitted model, e.g. COLMAP imports).
        descriptor_scale: the norm the descriptors are assumed to have for the double-softmax temperature
            (1.41: the original's, so its temperatures and thresholds mean the same here). Descriptors are
            L2-normalised first; ``"mnn"`` and ``"ratio"`` do not depend on it.
        refine: move matched points below the cell size when the features carry ``neighbour_descriptors``
            (:func:`~silk_keypoints.refinement.refine_matches`); ``refine_subdivisions``: offsets it tries per
            cell and axis.
        **conf: other options of :func:`match_descriptors` (``ratio_threshold``, ``temperature``,
            ``threshold``, ``mutual``, ``chunk_size``).
    """

    def __init__(
        self,
        method: str = "mnn",
        descriptor_scale: float = 1.41,
        refine: bool = True,
        refine_subdivisions: int = DEFAULT_SUBDIVISIONS,
        max_distance: float | None = None,
        glue_weights: str | None = None,
        **conf,
    ) -> None:
        super().__init__()
        check_subdivisions(refine_subdivisions, "refine_subdivisions")
        self.refine = bool(refine)
        self.refine_subdivisions = refine_subdivisions
        unknown = sorted(set(conf) - {"ratio_threshold", "temperature", "threshold", "mutual", "chunk_size"})
        if unknown:
            raise SilkError(f"unknown matcher options {unknown}")
        if not descriptor_scale > 0:
            raise SilkError(f"descriptor_scale must be > 0, got {descriptor_scale}")
        self.method = method
        self.descriptor_scale = float(descriptor_scale)
        self.conf = {**conf, "max_distance": max_distance}
        self.glue = None
        if method == "glue":
            ignored = sorted(k for k, v in self.conf.items() if v is not None and k not in ("threshold", "chunk_size"))
            if ignored:
                raise SilkError(f"{', '.join(ignored)}: options of the descriptor rules, not of the 'glue' matcher "
                                "(it keeps matches with P > threshold)")
            self.glue = _load_glue(glue_weights or "fast", conf.get("threshold"))
        elif glue_weights is not None:
            raise SilkError(f"glue_weights is an option of the 'glue' matcher, not of {method!r}")
        rule = "mnn" if method == "glue" else method  # glue checks its own threshold (P > threshold)
        _check_options(rule, conf.get("ratio_threshold", 0.6), conf.get("temperature", 0.1),
                       conf.get("threshold", 0.6) if rule == method else 0.6, max_distance,
                       conf.get("chunk_size"))

    def forward(self, data: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Match ``data["image0"]`` against ``data["image1"]`` (dicts with ``descriptors`` (B, N, D) and
        optionally ``keypoint_mask`` (B, N); a missing batch dimension is added).

        Returns:
            ``matches0`` (B, N0) int64 index into image 1 or -1, ``matching_scores0`` (B, N0) (0 if unmatched),
            ``matches1`` / ``matching_scores1`` (B, N1) the same seen from image 1 (with ``mutual=False`` one of
            the rows matched to a column), ``matches`` list of B (K, 2) int64 index pairs and ``scores`` list
            of B (K,) scores (see :func:`match_descriptors`). When both images have ``keypoints`` (B, N, 2):
            ``points0`` / ``points1`` lists of B (K, 2) matched positions in pixels, refined below the cell
            size if ``refine`` and the features have ``neighbour_descriptors`` (else the keypoints).
        """
        desc0, mask0 = _descriptors_and_mask(data, "image0")
        desc1, mask1 = _descriptors_and_mask(data, "image1")
        if desc0.shape[0] != desc1.shape[0]:
            raise SilkError(f"image0 and image1 have different batch sizes: {desc0.shape[0]} vs {desc1.shape[0]}")
        conf = dict(self.conf)
        if self.method == "double-softmax":
            conf["temperature"] = conf.get("temperature", 0.1) / self.descriptor_scale**2
        b, n0, n1 = desc0.shape[0], desc0.shape[1], desc1.shape[1]
        out: dict = {
            "matches0": torch.full((b, n0), -1, dtype=torch.long, device=desc0.device),
            "matches1": torch.full((b, n1), -1, dtype=torch.long, device=desc0.device),
            "matching_scores0": desc0.new_zeros((b, n0), dtype=torch.float32),
            "matching_scores1": desc0.new_zeros((b, n1), dtype=torch.float32),
            "matches": [],
            "scores": [],
        }
        if self.glue is not None:
            self._glue_matches(data, out)
        for i in range(b if self.glue is None else 0):
            idx0, idx1 = mask0[i].nonzero()[:, 0], mask1[i].nonzero()[:, 0]
            m, s = match_descriptors(F.normalize(desc0[i, idx0], dim=1), F.normalize(desc1[i, idx1], dim=1),
                                     self.method, **conf)
            m = torch.stack([idx0[m[:, 0]], idx1[m[:, 1]]], dim=1)
            out["matches0"][i, m[:, 0]] = m[:, 1]
            out["matches1"][i, m[:, 1]] = m[:, 0]
            out["matching_scores0"][i, m[:, 0]] = s
            out["matching_scores1"][i, m[:, 1]] = s
            out["matches"].append(m)
            out["scores"].append(s)
        if "keypoints" in data["image0"] and "keypoints" in data["image1"]:
            f0 = Features.from_mapping(data["image0"], "image0")
            f1 = Features.from_mapping(data["image1"], "image1")
            pairs = [self.points(f0, f1, m, i) for i, m in enumerate(out["matches"])]
            out["points0"], out["points1"] = [p[0] for p in pairs], [p[1] for p in pairs]
        return out

    def _glue_matches(self, data: Mapping[str, Mapping[str, torch.Tensor]], out: dict) -> None:
        """Fill ``out`` (the dict of :meth:`forward`) with SiLKGlue's matches of ``data``."""
        feats = []
        for key in ("image0", "image1"):
            if "keypoints" not in data[key]:
                raise SilkError(f"the glue matcher needs data[{key!r}]['keypoints'] (and 'image_size')")
            f = Features.from_mapping(data[key], key)
            if not bool((f.image_size > 0).all()):
                raise SilkError(f"the glue matcher needs the image_size (W, H) of {key}")
            feats.append(f)
        f0, f1 = feats
        glue = self.glue.to(f0.descriptors.device)
        with torch.no_grad():
            pred = glue(f0.keypoints.float(), f1.keypoints.float(), F.normalize(f0.descriptors.float(), dim=-1),
                        F.normalize(f1.descriptors.float(), dim=-1), f0.image_size, f1.image_size,
                        f0.keypoint_mask, f1.keypoint_mask)
        for k in ("matches0", "matches1", "matching_scores0", "matching_scores1"):
            out[k] = pred[k]
        for m0, s0 in zip(pred["matches0"], pred["matching_scores0"]):
            rows = (m0 >= 0).nonzero()[:, 0]
            out["matches"].append(torch.stack([rows, m0[rows]], dim=1))
            out["scores"].append(s0[rows])

    def points(
        self, feats0: Features, feats1: Features, matches: torch.Tensor, image: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, 2) positions of ``matches`` (K, 2) between image ``image`` of the two batches, refined if this
        matcher refines and the features allow it (see ``refine``)."""
        if not self.refine:
            feats0, feats1 = feats0.without_neighbours(), feats1.without_neighbours()
        return refine_matches(feats0, feats1, matches, self.refine_subdivisions, image)


# ---------------------------------------------------------------------------------------------- the methods
def _mnn(d0: torch.Tensor, d1: torch.Tensor, rows: int, mutual: bool) -> tuple[torch.Tensor, torch.Tensor]:
    best = _Best(len(d0), len(d1), d0, track_columns=mutual)
    for start, block in _similarity_blocks(d0, d1, rows):
        best.update(start, block)
    keep = best.mutual() if mutual else torch.ones_like(best.row_idx, dtype=torch.bool)
    return best.pairs(keep), best.row_val[keep]


def _ratio(
    d0: torch.Tensor, d1: torch.Tensor, rows: int, mutual: bool, ratio_threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    n0, n1 = F.normalize(d0, dim=1), F.normalize(d1, dim=1)
    best = _Best(len(d0), len(d1), d0, track_columns=mutual)
    second = torch.full((len(d0),), -float("inf"), dtype=d0.dtype, device=d0.device)
    for start, block in _similarity_blocks(n0, n1, rows):
        best.update(start, block)
        if block.shape[1] > 1:
            second[start:start + len(block)] = block.topk(2, dim=1).values[:, 1]
    dist1, dist2 = 1 - best.row_val.double(), 1 - second.double()
    dist2 = torch.where(dist2 == 0, torch.finfo(torch.float64).eps, dist2)
    ratio = dist1 / dist2
    keep = ratio < ratio_threshold
    if mutual:
        keep &= best.mutual()
    return best.pairs(keep), 1 - ratio[keep]


def _double_softmax(
    d0: torch.Tensor, d1: torch.Tensor, rows: int, mutual: bool, temperature: float, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    # pass 1: log-sum-exp of S over each row (complete within a block) and each column (accumulated)
    row_lse = d0.new_empty(len(d0))
    col_lse = d0.new_full((len(d1),), -float("inf"))
    for start, block in _similarity_blocks(d0, d1, rows, scale=1 / temperature):
        row_lse[start:start + len(block)] = torch.logsumexp(block, dim=1)
        col_lse = torch.logaddexp(col_lse, torch.logsumexp(block, dim=0))
    # pass 2: log P = 2 S - row_lse - col_lse; row argmax ignores row_lse, column argmax ignores col_lse
    best = _Best(len(d0), len(d1), d0, track_columns=mutual)
    for start, block in _similarity_blocks(d0, d1, rows, scale=2 / temperature, bias=-col_lse):
        block_rows = row_lse[start:start + len(block), None]
        best.update_rows(start, block)
        if mutual:
            best.update_columns(start, block.sub_(block_rows))
    prob = torch.exp(best.row_val - row_lse)
    keep = 1 - prob < threshold
    if mutual:
        keep &= best.mutual()
    return best.pairs(keep), prob[keep]


# ---------------------------------------------------------------------------------------------- helpers
def _load_glue(weights: str, threshold: float | None) -> nn.Module:
    """SiLKGlue from a shipped extractor name or a ``.safetensors`` file; ``threshold`` overrides its own."""
    from .glue import SiLKGlue

    is_file = weights.endswith(".safetensors") or Path(weights).is_file()
    glue = SiLKGlue.from_file(weights) if is_file else SiLKGlue.from_pretrained(weights)
    if threshold is not None:
        if not 0 <= threshold < 1:
            raise SilkError(f"the glue matcher's threshold must be in [0, 1) (keep P > threshold), got {threshold}")
        glue.conf.match_threshold = float(threshold)
    return glue.eval()


class _Best:
    """Running row maxima (complete per block) and column maxima (accumulated over row blocks).

    Ties go to the lowest index, as ``argmax`` over the whole matrix would.
    """

    def __init__(self, n0: int, n1: int, like: torch.Tensor, track_columns: bool) -> None:
        self.row_val = like.new_empty(n0)
        self.row_idx = like.new_empty(n0, dtype=torch.long)
        self.col_val = like.new_full((n1,), -float("inf")) if track_columns else None
        self.col_idx = like.new_zeros(n1, dtype=torch.long) if track_columns else None

    def update(self, start: int, block: torch.Tensor) -> None:
        self.update_rows(start, block)
        if self.col_val is not None:
            self.update_columns(start, block)

    def update_rows(self, start: int, block: torch.Tensor) -> None:
        val, idx = block.max(dim=1)
        self.row_val[start:start + len(block)] = val
        self.row_idx[start:start + len(block)] = idx

    def update_columns(self, start: int, block: torch.Tensor) -> None:
        val, idx = block.max(dim=0)
        better = val > self.col_val
        self.col_val = torch.where(better, val, self.col_val)
        self.col_idx = torch.where(better, idx + start, self.col_idx)

    def mutual(self) -> torch.Tensor:
        return self.col_idx[self.row_idx] == torch.arange(len(self.row_idx), device=self.row_idx.device)

    def pairs(self, keep: torch.Tensor) -> torch.Tensor:
        return torch.stack([keep.nonzero()[:, 0], self.row_idx[keep]], dim=1)


def _similarity_blocks(
    d0: torch.Tensor, d1: torch.Tensor, rows: int, scale: float = 1.0, bias: torch.Tensor | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, scale * d0[start:start+rows] @ d1.T + bias)`` blocks; ``bias`` (N1,) is per column."""
    d1t = d1.T
    for start in range(0, len(d0), rows):
        a = d0[start:start + rows]
        if bias is None:
            yield start, a @ d1t if scale == 1.0 else torch.mm(a * scale, d1t)
        else:
            yield start, torch.addmm(bias[None], a, d1t, alpha=scale)


def _as_tensors(desc0: torch.Tensor | np.ndarray, desc1: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    out = []
    for name, d in (("desc0", desc0), ("desc1", desc1)):
        if isinstance(d, np.ndarray):
            d = torch.from_numpy(d)
        if not isinstance(d, torch.Tensor):
            raise SilkError(f"{name} must be a torch.Tensor or numpy array, got {type(d).__name__}")
        if d.ndim != 2:
            raise SilkError(f"{name} must be (N, D), got shape {tuple(d.shape)}")
        if not (torch.is_floating_point(d) or d.numel() == 0):
            raise SilkError(f"{name} must be floating point, got {d.dtype}")
        out.append(d)
    d0, d1 = out
    if d0.shape[1] != d1.shape[1] and len(d0) and len(d1):
        raise SilkError(f"descriptor sizes differ: desc0 is {d0.shape[1]}-D, desc1 is {d1.shape[1]}-D")
    if d0.device != d1.device:
        raise SilkError(f"desc0 is on {d0.device} but desc1 on {d1.device}: put both on the same device")
    dtype = torch.float64 if torch.float64 in (d0.dtype, d1.dtype) else torch.float32
    d0, d1 = d0.to(dtype), d1.to(dtype)
    for name, d in (("desc0", d0), ("desc1", d1)):
        if not torch.isfinite(d).all():
            raise SilkError(f"{name} contains NaN or inf values")
    return d0, d1


def _check_options(
    method: str,
    ratio_threshold: float,
    temperature: float,
    threshold: float,
    max_distance: float | None,
    chunk_size: int | None,
) -> None:
    if method not in METHODS:
        raise SilkError(f"unknown matching method {method!r}; choose one of {list(METHODS)}")
    if not ratio_threshold > 0:
        raise SilkError(f"ratio_threshold must be > 0, got {ratio_threshold}")
    if not temperature > 0:
        raise SilkError(f"temperature must be > 0, got {temperature}")
    if not threshold > 0:
        raise SilkError(f"threshold must be > 0 (keep 1 - P < threshold), got {threshold}")
    if max_distance is not None and not max_distance >= 0:
        raise SilkError(f"max_distance must be >= 0, got {max_distance}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise SilkError(f"chunk_size must be a positive int, got {chunk_size!r}")


def _descriptors_and_mask(data: dict, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    feats = data.get(key)
    if not isinstance(feats, Mapping) or "descriptors" not in feats:
        raise SilkError(f"matcher input needs data[{key!r}]['descriptors'] (an extract() dict)")
    desc = torch.as_tensor(feats["descriptors"])
    if desc.ndim == 2:
        desc = desc[None]
    if desc.ndim != 3:
        raise SilkError(f"{key} descriptors must be (B, N, D), got shape {tuple(desc.shape)}")
    mask = feats.get("keypoint_mask")
    if mask is None:
        mask = torch.ones(desc.shape[:2], dtype=torch.bool, device=desc.device)
    else:
        mask = torch.as_tensor(mask, device=desc.device).bool().reshape(desc.shape[:2])
    return desc, mask
