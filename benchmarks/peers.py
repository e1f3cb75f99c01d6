"""Peer methods for side-by-side benchmarks: XFeat, ALIKED-N16 and DISK through kornia, with their own weights.

Benchmark baselines only (never imported by the package). The weight files are those of ``../shared/peers``
(see its README for their origin and licenses); nothing is downloaded. Each peer becomes a
:class:`~silk_keypoints.evaluation.extractors.CallableExtractor` returning keypoints in our convention (pixel
centres at integers, (x, y)), L2-normalised descriptors and scores, at most ``max_keypoints`` of them:

* ``xfeat``: RGB float 0..255 in; kornia resizes to the largest multiples of 32, reporting resized pixel ``i`` at
  ``i * r`` (``r = W / W'``); ``+ 0.5 * (r - 1)`` per axis brings that to pixel centres;
* ``aliked-n16``: RGB [0, 1] in, top-k mode (``detection_threshold=-1``, ``nms_radius=2``);
* ``disk``: RGB [0, 1] in, padded to a multiple of 16, ``window_size=5``, ``score_threshold=0``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from silk_keypoints.errors import SilkError
from silk_keypoints.evaluation.extractors import CallableExtractor

PEERS = ("xfeat", "aliked-n16", "disk")
FILES = {"xfeat": "xfeat.pt", "aliked-n16": "aliked-n16.pth", "disk": "depth-save.pth"}


def _rgb(image: np.ndarray) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1] of a uint8 (H, W) or (H, W, 3) image."""
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0


def _out(xy: torch.Tensor, desc: torch.Tensor, scores: torch.Tensor) -> dict:
    return {"keypoints": xy.double(), "descriptors": F.normalize(desc.float(), dim=-1), "scores": scores.float()}


def _xfeat(folder: Path, k: int) -> Callable[[np.ndarray], dict]:
    from kornia.feature import XFeat

    model = XFeat(top_k=k).eval()
    model.net.load_state_dict(torch.load(folder / FILES["xfeat"], weights_only=True, map_location="cpu"))

    def run(image: np.ndarray) -> dict:
        h, w = image.shape[:2]
        r = torch.tensor([w / max(32, w // 32 * 32), h / max(32, h // 32 * 32)], dtype=torch.float64)
        out = model.detectAndCompute(_rgb(image) * 255.0, top_k=k)[0]
        return _out(out["keypoints"].double() + 0.5 * (r - 1), out["descriptors"], out["scores"])

    return run


def _aliked(folder: Path, k: int) -> Callable[[np.ndarray], dict]:
    from kornia.feature import ALIKED

    model = ALIKED("aliked-n16", max_num_keypoints=k, detection_threshold=-1, nms_radius=2).eval()
    missing, unexpected = model.load_state_dict(torch.load(folder / FILES["aliked-n16"], weights_only=True, map_location="cpu"),
                                                strict=False)
    if unexpected or any("hw_grid" not in m for m in missing):
        raise SilkError(f"{folder / FILES['aliked-n16']} does not fit kornia's ALIKED-N16: {missing + unexpected}")

    def run(image: np.ndarray) -> dict:
        with torch.inference_mode():
            f = model(_rgb(image))[0]
        return _out(f.keypoints, f.descriptors, f.keypoint_scores)

    return run


def _disk(folder: Path, k: int) -> Callable[[np.ndarray], dict]:
    from kornia.feature import DISK

    model = DISK().eval()
    model.load_state_dict(torch.load(folder / FILES["disk"], weights_only=True, map_location="cpu")["extractor"])

    def run(image: np.ndarray) -> dict:
        with torch.inference_mode():
            f = model(_rgb(image), n=k, window_size=5, score_threshold=0.0, pad_if_not_divisible=True)[0]
        return _out(f.keypoints, f.descriptors, f.detection_scores)

    return run


def peer_extractors(names: list[str], folder: str | Path, max_keypoints: int) -> list[CallableExtractor]:
    """Extractors of the named peers (:data:`PEERS`), weights from ``folder``."""
    folder = Path(folder)
    build = {"xfeat": _xfeat, "aliked-n16": _aliked, "disk": _disk}
    out = []
    for name in names:
        if name not in build:
            raise SilkError(f"unknown peer {name!r}; available: {', '.join(PEERS)}")
        if not (folder / FILES[name]).is_file():
            raise SilkError(f"peer weights not found: {folder / FILES[name]}")
        out.append(CallableExtractor(build[name](folder, max_keypoints), name))
    return out
