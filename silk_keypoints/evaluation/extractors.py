"""One interface for every method the benchmarks compare: an image goes in, keypoints come out.

An extractor is called as ``extractor(image)`` with a numpy uint8 image, (H, W) gray or (H, W, 3) RGB,
and returns :class:`~silk_keypoints.features.Features` of that one image (a batch of one):

* ``keypoints`` (1, N, 2) (x, y) in the pixels of that image, **pixel centres at integers** (the top-left
  pixel's centre is (0, 0), as in OpenCV);
* ``keypoint_scores`` (1, N), higher is better (ones when the method has none);
* ``descriptors`` (1, N, D), compared by dot product (mutual nearest neighbours on ``1 - d0 . d1``), so they
  should be L2-normalised.

Built in: SiLK models (:class:`ModelExtractor`, by shipped name or checkpoint), OpenCV SIFT and ORB
(:class:`OpenCVExtractor`). Any other method: wrap a function with :class:`CallableExtractor`::

    def my_method(image):                       # numpy uint8 (H, W) or (H, W, 3)
        ...
        return {"keypoints": xy, "descriptors": desc, "scores": s}   # scores optional; numpy or torch

    extractor = CallableExtractor(my_method, name="mine")

Every call is timed (wall clock, including the transfer to and from the device); ``seconds_per_image``
gives the mean.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..devices import resolve_device
from ..errors import SilkError
from ..features import Features
from ..io import to_batch
from ..matching import Matcher
from ..model import SiLK

BASELINES = ("sift", "orb")


class Extractor:
    """Base class: subclasses implement :meth:`_extract` (and :meth:`_dense` if they have dense outputs)."""

    has_dense = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.seconds: list[float] = []

    def __call__(self, image: np.ndarray) -> Features:
        """Sparse features of ``image`` (see the module doc), timed."""
        return self._timed(self._extract, image)

    def dense(self, image: np.ndarray) -> Features:
        """Features of every output cell (same keys as a sparse call), timed. Only for dense-capable methods."""
        if not self.has_dense:
            raise SilkError(f"{self.name} has no dense descriptors: dense evaluation needs a SiLK model")
        return self._timed(self._dense, image)

    @property
    def seconds_per_image(self) -> float:
        return float(np.mean(self.seconds)) if self.seconds else 0.0

    def _timed(self, fn: Callable[[np.ndarray], Any], image: np.ndarray) -> Features:
        image = check_image(image)
        start = time.perf_counter()
        out = fn(image)
        self.seconds.append(time.perf_counter() - start)
        return check_features(out, self.name, (image.shape[1], image.shape[0]))

    def _extract(self, image: np.ndarray) -> Any:
        raise NotImplementedError

    def _dense(self, image: np.ndarray) -> Any:
        raise NotImplementedError


class ModelExtractor(Extractor):
    """A SiLK model. ``options``: detection overrides (``max_keypoints``, ``detection_threshold``,
    ``nms_radius``, ``remove_borders``, ``positions``); None keeps the model's defaults. Features include the neighbour
    descriptors for sub-cell match refinement (``neighbours=False`` to leave them out)."""

    has_dense = True

    def __init__(self, model: SiLK, name: str = "silk", **options: Any) -> None:
        super().__init__(name)
        self.model = model.eval()
        self.options = {"neighbours": True} | {k: v for k, v in options.items() if v is not None}

    def _extract(self, image: np.ndarray) -> Features:
        return self.model.extract(image, **self.options)  # runs without gradients

    def _dense(self, image: np.ndarray) -> Features:
        device = self.model.descriptor_scale.device
        x = to_batch(image, self.model.config.in_channels).to(device)
        with torch.no_grad():
            positions, desc = self.model(x, ("dense_positions", "dense_descriptors"))
        h, w = image.shape[:2]
        return Features.from_mapping({"keypoints": positions[:, :, :2], "keypoint_scores": positions[:, :, 2],
                                      "descriptors": F.normalize(desc, dim=2), "image_size": [[w, h]]})


class OpenCVExtractor(Extractor):
    """OpenCV SIFT (descriptors L2-normalised) or ORB (256 bits mapped to +-1 / 16, so the dot product is
    ``1 - 2 * hamming / 256`` and nearest neighbours are Hamming nearest neighbours), the ``max_keypoints``
    strongest keypoints. Images are converted to gray with OpenCV's weights."""

    def __init__(self, method: str, max_keypoints: int = 2048) -> None:
        if method not in BASELINES:
            raise SilkError(f"unknown baseline {method!r}; available: {', '.join(BASELINES)}")
        super().__init__(method)
        self.method = method
        n = int(max_keypoints)
        self.detector = cv2.SIFT_create(nfeatures=n) if method == "sift" else cv2.ORB_create(nfeatures=n)

    def _extract(self, image: np.ndarray) -> dict[str, np.ndarray]:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        kpts, desc = self.detector.detectAndCompute(gray, None)
        xy = np.array([k.pt for k in kpts], dtype=np.float64).reshape(-1, 2)
        scores = np.array([k.response for k in kpts], dtype=np.float64)
        if self.method == "sift":
            desc = np.zeros((0, 128), np.float32) if desc is None else desc.astype(np.float32)
            desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        else:
            bits = np.unpackbits(np.zeros((0, 32), np.uint8) if desc is None else desc, axis=1)
            desc = (bits.astype(np.float32) * 2 - 1) / 16.0
        return {"keypoints": xy, "scores": scores, "descriptors": desc}


class CallableExtractor(Extractor):
    """Wrap ``fn(image) -> {"keypoints", "descriptors", ["scores"]}`` (numpy or torch, a leading batch
    dimension of 1 is dropped) as an extractor. See the module doc for the conventions it must follow."""

    def __init__(self, fn: Callable[[np.ndarray], dict], name: str) -> None:
        if not callable(fn):
            raise SilkError(f"extractor {name!r} is not callable")
        super().__init__(name)
        self.fn = fn

    def _extract(self, image: np.ndarray) -> dict:
        return self.fn(image)


def check_image(image: np.ndarray) -> np.ndarray:
    """Raise :class:`SilkError` unless ``image`` is uint8 (H, W) or (H, W, 3)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise SilkError(f"extractors take numpy uint8 images, got {getattr(image, 'dtype', type(image).__name__)}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise SilkError(f"extractors take (H, W) or (H, W, 3) images, got shape {image.shape}")
    return image


def check_features(out: Any, name: str, image_size: tuple[int, int] | None = None) -> Features:
    """An extractor's output (a mapping of numpy arrays or tensors, one image, with or without a batch
    dimension of 1) as :class:`Features` (``image_size`` (W, H) where it has none); :class:`SilkError` naming
    the extractor if it is malformed."""
    if not isinstance(out, Mapping) or "keypoints" not in out or "descriptors" not in out:
        raise SilkError(f"extractor {name!r} must return a dict with 'keypoints' and 'descriptors'")
    feats = Features.from_mapping(out, f"extractor {name!r}", image_size)
    if feats.batch_size != 1:
        raise SilkError(f"extractor {name!r} must return the features of one image, got a batch of {feats.batch_size}")
    return feats


def match_features(
    feats0: Features, feats1: Features, matcher: Matcher
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matches of two extractor outputs: (K, 2) int64 ``[index in feats0, index in feats1]`` and the matched
    positions (K, 2) float64 in each image, refined below the cell size when the matcher refines and the
    features have ``neighbour_descriptors`` (see :mod:`silk_keypoints.refinement`). The one place where
    evaluation leaves torch for numpy.

    ``matcher`` is a :class:`~silk_keypoints.matching.Matcher`: its temperatures / thresholds mean what they
    mean for the original SiLK (descriptors are treated as if scaled to norm 1.41)."""
    out = matcher({"image0": Features.from_mapping(feats0), "image1": Features.from_mapping(feats1)})
    m, p0, p1 = out["matches"][0], out["points0"][0], out["points1"][0]
    return m.cpu().numpy(), p0.double().cpu().numpy(), p1.double().cpu().numpy()


def build_extractors(
    models: Sequence[str] = (),
    checkpoints: Sequence[str] = (),
    baselines: Sequence[str] = (),
    max_keypoints: int | None = None,
    device: str | torch.device = "cpu",
) -> list[Extractor]:
    """Extractors for shipped model names, checkpoint files and OpenCV baselines (``"sift"``, ``"orb"``).

    Names are the model name, the checkpoint's file stem and the baseline name, made unique with ``#2``...
    ``max_keypoints`` None: SiLK models keep their default, baselines use 2048. Nothing asked: the default
    shipped model.
    """
    device = resolve_device(device)
    out: list[Extractor] = []
    if not (models or checkpoints or baselines):
        models = [None]  # type: ignore[list-item]
    for name in models:
        model = SiLK.from_pretrained(name).to(device)
        out.append(ModelExtractor(model, name or "silk", max_keypoints=max_keypoints))
    for path in checkpoints:
        model = SiLK.from_checkpoint(path).to(device)
        out.append(ModelExtractor(model, _stem(path), max_keypoints=max_keypoints))
    for b in baselines:
        out.append(OpenCVExtractor(b.strip().lower(), max_keypoints or 2048))
    seen: dict[str, int] = {}
    for e in out:
        seen[e.name] = seen.get(e.name, 0) + 1
        if seen[e.name] > 1:
            e.name = f"{e.name}#{seen[e.name]}"
    return out


def _stem(path: str) -> str:
    name = str(path).replace("\\", "/").rsplit("/", 1)[-1]
    return name.split(".", 1)[0] or name


def __getattr__(name: str) -> Any:
    if name == "SiLKExtractor":  # the old name, confusable with ecosystem.lightglue.SiLKExtractor
        warnings.warn("evaluation.extractors.SiLKExtractor is deprecated: use ModelExtractor", DeprecationWarning,
                      stacklevel=2)
        return ModelExtractor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
