"""Features: the one container for keypoints and descriptors, from extraction to matching, files and pictures.

A :class:`Features` holds a batch of B images' keypoints as torch tensors, padded to the largest count N
(``keypoint_mask`` marks the real ones), under LightGlue's key names. It is a read-only mapping, so it can be
passed wherever an ``extract()`` dict is expected (``feats["keypoints"]``, ``Matcher()({"image0": feats,
...})``, LightGlue's ``rbd``):

========================= ============== ===============================================================
key                       shape          meaning
========================= ============== ===============================================================
``keypoints``             (B, N, 2)      (x, y) image pixels, centre of the top-left pixel = (0, 0)
``keypoint_scores``       (B, N)         detection score in [0, 1], best first
``descriptors``           (B, N, D)      unit L2 norm
``image_size``            (B, 2)         (W, H) of the image the keypoints are in
``keypoint_mask``         (B, N) bool    True for real keypoints, False for padding
``neighbour_descriptors`` (B, N, 9, D)   optional: unit descriptors of the 3x3 cells around each keypoint
                                         (row-major, own cell at index 4, zeros outside the map)
``neighbour_spacing``     (B,)           optional: distance between those cells in pixels
========================= ============== ===============================================================

Features stay in torch until OpenCV needs numpy (geometry, files): :meth:`Features.to_numpy` gives one
image's arrays under hloc's names (``scores`` for ``keypoint_scores``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from .errors import SilkError


@dataclass(frozen=True, eq=False)
class Features(Mapping):
    """Keypoints and descriptors of a batch of images (see the module doc for keys, shapes, conventions)."""

    keypoints: torch.Tensor
    keypoint_scores: torch.Tensor
    descriptors: torch.Tensor
    image_size: torch.Tensor
    keypoint_mask: torch.Tensor
    neighbour_descriptors: torch.Tensor | None = None
    neighbour_spacing: torch.Tensor | None = None

    # ------------------------------------------------------------------ mapping of the present keys
    def __getitem__(self, key: str) -> torch.Tensor:
        value = getattr(self, key, None) if key in self._names() else None
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return (k for k in self._names() if getattr(self, k) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @staticmethod
    def _names() -> tuple[str, ...]:
        return tuple(f.name for f in fields(Features))

    # ------------------------------------------------------------------ building
    @classmethod
    def from_lists(
        cls,
        keypoints: Sequence[torch.Tensor],
        scores: Sequence[torch.Tensor],
        descriptors: Sequence[torch.Tensor],
        image_size: tuple[int, int],
        neighbours: Sequence[torch.Tensor] | None = None,
        spacing: float | None = None,
    ) -> Features:
        """Per-image tensors (N_i, 2), (N_i,), (N_i, D) [and (N_i, 9, D)] of images of one size (W, H) ->
        a padded batch."""
        b = len(keypoints)
        n = max((len(k) for k in keypoints), default=0)
        dim = descriptors[0].shape[-1]
        ref = descriptors[0]
        kpts = ref.new_zeros(b, n, 2, dtype=keypoints[0].dtype)
        score = ref.new_zeros(b, n, dtype=scores[0].dtype)
        desc = ref.new_zeros(b, n, dim)
        mask = torch.zeros(b, n, dtype=torch.bool, device=ref.device)
        around = ref.new_zeros(b, n, 9, dim) if neighbours is not None else None
        for i in range(b):
            k = len(keypoints[i])
            kpts[i, :k], score[i, :k], desc[i, :k], mask[i, :k] = keypoints[i], scores[i], descriptors[i], True
            if around is not None:
                around[i, :k] = neighbours[i]
        size = torch.tensor([image_size], dtype=kpts.dtype, device=ref.device).expand(b, 2).clone()
        step = None if around is None else kpts.new_full((b,), float(spacing))
        return cls(kpts, score, desc, size, mask, around, step)

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], name: str = "features", image_size: tuple[int, int] | None = None
    ) -> Features:
        """Features from a LightGlue-style mapping of tensors or arrays, batched (B, N, ...) or one image
        (N, ...). Missing ``keypoint_scores`` become ones, a missing mask all True; ``scores`` (hloc's name)
        is read as ``keypoint_scores``; a missing ``image_size`` is ``image_size`` (W, H) if given, else 0.

        Raises:
            SilkError: missing keys, inconsistent shapes, NaN or inf values (``name`` says whose).
        """
        if isinstance(data, Features):
            return data
        if "keypoints" not in data or "descriptors" not in data:
            raise SilkError(f"{name} must have 'keypoints' and 'descriptors'")
        kpts, desc = _tensor(data["keypoints"]), _tensor(data["descriptors"])
        single = kpts.ndim == 2
        if single:
            kpts, desc = kpts[None], desc[None]
        if kpts.ndim != 3 or kpts.shape[-1] != 2:
            raise SilkError(f"{name}: keypoints must be (N, 2) or (B, N, 2), got shape {tuple(kpts.shape)}")
        b, n = kpts.shape[:2]
        if desc.ndim != 3 or desc.shape[:2] != (b, n):
            raise SilkError(f"{name}: {n} keypoints but descriptors of shape {tuple(desc.shape)}")
        kpts = kpts if torch.is_floating_point(kpts) else kpts.float()
        desc = desc if torch.is_floating_point(desc) else desc.float()
        if not (torch.isfinite(kpts).all() and torch.isfinite(desc).all()):
            raise SilkError(f"{name} has NaN or inf keypoints or descriptors")
        scores = data.get("keypoint_scores", data.get("scores"))
        scores = kpts.new_ones(b, n) if scores is None else _tensor(scores).to(kpts.device).reshape(b, n)
        mask = data.get("keypoint_mask")
        mask = torch.ones(b, n, dtype=torch.bool, device=kpts.device) if mask is None else (
            _tensor(mask).to(kpts.device).bool().reshape(b, n))
        size = data.get("image_size", image_size)
        size = kpts.new_zeros(b, 2) if size is None else _tensor(size).to(kpts).reshape(-1, 2).expand(b, 2).clone()
        around = data.get("neighbour_descriptors")
        spacing = None
        if around is not None:
            around = _tensor(around).to(desc)
            around = around[None] if single else around
            if around.shape != (b, n, 9, desc.shape[-1]):
                raise SilkError(f"{name}: neighbour_descriptors must be ({b}, {n}, 9, {desc.shape[-1]}), "
                                f"got {tuple(around.shape)}")
            if data.get("neighbour_spacing") is None:
                raise SilkError(f"{name} has neighbour_descriptors but no neighbour_spacing (cell size in pixels)")
            spacing = _tensor(data["neighbour_spacing"]).to(kpts).reshape(-1).expand(b).clone()
        return cls(kpts, scores.to(kpts), desc, size, mask, around, spacing)

    # ------------------------------------------------------------------ views
    @property
    def batch_size(self) -> int:
        return self.keypoints.shape[0]

    def image(self, i: int) -> Features:
        """Image ``i`` of the batch as a batch of one, padding removed."""
        k = int(self.keypoint_mask[i].sum())
        per_image = ("image_size", "neighbour_spacing")
        return Features(**{f: None if v is None else v[i : i + 1] if f in per_image else v[i : i + 1, :k]
                           for f, v in self._items()})

    def unbatch(self) -> list[Features]:
        """One :class:`Features` per image (batches of one, padding removed)."""
        return [self.image(i) for i in range(self.batch_size)]

    def rescaled(self, scale: tuple[float, float], image_size: tuple[int, int]) -> Features:
        """Keypoints of a resized image in the pixels of the original: ``x_orig = (x + 0.5) / sx - 0.5``.

        Args:
            scale: (sx, sy) = resized size / original size, per axis.
            image_size: (W, H) of the original image.
        """
        s = self.keypoints.new_tensor(scale)
        if bool((s == 1).all()) and tuple(int(v) for v in self.image_size[0]) == tuple(image_size):
            return self
        size = self.image_size.new_tensor(image_size).expand_as(self.image_size).clone()
        spacing = None if self.neighbour_spacing is None else self.neighbour_spacing / float(s.mean())
        return replace(self, keypoints=(self.keypoints + 0.5) / s - 0.5, image_size=size, neighbour_spacing=spacing)

    def to(self, device: torch.device | str) -> Features:
        """The same features on ``device``."""
        return Features(**{f: None if v is None else v.to(device) for f, v in self._items()})

    def without_neighbours(self) -> Features:
        """The same features without the neighbour descriptors."""
        return replace(self, neighbour_descriptors=None, neighbour_spacing=None)

    def to_numpy(self, i: int = 0) -> dict[str, np.ndarray]:
        """Image ``i`` as numpy arrays under hloc's names: ``keypoints`` (N, 2) float32, ``scores`` (N,)
        float32, ``descriptors`` (N, D) float32, ``image_size`` (2,) int64 (W, H); with neighbours also
        ``neighbour_descriptors`` (N, 9, D) and ``neighbour_spacing`` (a float32 scalar)."""
        one = self.image(i)
        out = {
            "keypoints": _numpy(one.keypoints[0], np.float32),
            "scores": _numpy(one.keypoint_scores[0], np.float32),
            "descriptors": _numpy(one.descriptors[0], np.float32),
            "image_size": _numpy(one.image_size[0].round(), np.int64),
        }
        if one.neighbour_descriptors is not None:
            out["neighbour_descriptors"] = _numpy(one.neighbour_descriptors[0], np.float32)
            out["neighbour_spacing"] = np.float32(one.neighbour_spacing[0].item())
        return out

    def _items(self) -> Iterator[tuple[str, torch.Tensor | None]]:
        return ((f, getattr(self, f)) for f in self._names())


def _tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _numpy(x: torch.Tensor, dtype: type) -> np.ndarray:
    return x.detach().cpu().numpy().astype(dtype, copy=False)
