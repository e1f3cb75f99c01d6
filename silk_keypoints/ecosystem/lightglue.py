"""A LightGlue-style extractor: ``SiLKExtractor().extract(image)`` is a drop-in for ``lightglue.SuperPoint``.

Same interface as LightGlue's extractors: ``default_conf`` (detection options, LightGlue's names and units:
``nms_radius`` in pixels), ``preprocess_conf`` (resize on the fly, by default so that the *long* side is
1024 px, as LightGlue does: up or down; grayscale), ``forward({"image": ...})`` on a prepared batch and
``extract(image, **preprocess)`` on one image, which returns keypoints in the pixels of the image it was given:
``x_orig = (x + 0.5) / scale - 0.5`` with ``scale = resized / original`` per axis. Pixel centres are at
integers (LightGlue's convention). Outputs are ordinary tensors (``torch.no_grad``, not inference mode), so
LightGlue's matcher can run on them outside ``no_grad``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import kornia
import torch
from torch import nn

from ..errors import SilkError
from ..features import Features
from ..io import to_batch
from ..model import SiLK
from ..model.zoo import DEFAULT_MAX_KEYPOINTS


class SiLKExtractor(nn.Module):
    """SiLK keypoints and descriptors with LightGlue's extractor interface.

    Args:
        model: a :class:`SiLK` model; None loads ``conf["weights"]``.
        **conf: keys of :attr:`default_conf`: ``weights`` (shipped weights name, a weight file path, or None
            for the default shipped model), ``max_num_keypoints`` (None: the model's default),
            ``detection_threshold`` (keypoint probability), ``nms_radius`` (pixels, as LightGlue's; rounded
            to output cells), ``remove_borders``, ``positions`` (``"cells"`` or ``"extrema"``, see
            :meth:`SiLK.extract`) (None: the model's defaults). Options of other LightGlue
            extractors that SiLK has no use for (:attr:`ignored_conf`) are accepted and ignored; any other
            key is refused.

    ``extract(image, **preprocess)`` takes a torch (3, H, W) / (1, H, W) / (1, C, H, W) float image in [0, 1]
    (LightGlue's ``load_image``); ``preprocess`` overrides :attr:`preprocess_conf` (``resize``: target length
    of the ``side``, None: as it is; ``grayscale``: convert colour to gray first, for an RGB model too;
    gray models always get gray). It returns ``keypoints`` (1, N, 2) (x, y) in its pixels,
    ``keypoint_scores`` (1, N), ``descriptors`` (1, N, D) unit norm, ``image_size`` (1, 2) float (W, H) and
    ``keypoint_mask`` (1, N).
    """

    default_conf: ClassVar[dict[str, Any]] = {
        "weights": None,
        "max_num_keypoints": DEFAULT_MAX_KEYPOINTS,
        "detection_threshold": None,
        "nms_radius": None,
        "remove_borders": None,
        "positions": None,
    }
    preprocess_conf: ClassVar[dict[str, Any]] = {
        "resize": 1024,  # target length of the `side`, None for no resizing
        "side": "long",
        "interpolation": "bilinear",
        "align_corners": None,
        "antialias": True,
        "grayscale": False,
    }
    ignored_conf: ClassVar[tuple[str, ...]] = (
        "descriptor_dim", "desc_dim", "force_num_keypoints", "pad_if_not_divisible", "nms_window_size",
    )
    required_data_keys: ClassVar[list[str]] = ["image"]

    def __init__(self, model: SiLK | None = None, **conf: Any) -> None:
        super().__init__()
        unknown = sorted(set(conf) - set(self.default_conf) - set(self.ignored_conf))
        if unknown:
            raise SilkError(f"unknown SiLKExtractor options {unknown}; known: {sorted(self.default_conf)}")
        self.conf = SimpleNamespace(**{**self.default_conf, **conf})
        if model is None:
            weights = self.conf.weights
            is_file = weights is not None and Path(weights).is_file()
            model = SiLK.from_checkpoint(weights) if is_file else SiLK.from_pretrained(weights)
        self.model = model
        self.eval()

    def forward(self, data: dict[str, torch.Tensor]) -> Features:
        """Features of ``data["image"]`` (B, C, H, W) in [0, 1], in its pixels (see :meth:`SiLK.extract`)."""
        if "image" not in data:
            raise SilkError("SiLKExtractor needs data['image'], a (B, C, H, W) float tensor in [0, 1]")
        radius = self.conf.nms_radius
        return self.model.extract(
            data["image"],
            max_keypoints=self.conf.max_num_keypoints,
            detection_threshold=self.conf.detection_threshold,
            nms_radius=None if radius is None else round(radius / self.model.grid.stride),
            remove_borders=self.conf.remove_borders,
            positions=self.conf.positions,
        )

    @torch.no_grad()
    def extract(self, img: torch.Tensor, **conf: Any) -> Features:
        """Resize ``img`` by ``{**preprocess_conf, **conf}``, extract, map keypoints back to its pixels."""
        unknown = sorted(set(conf) - set(self.preprocess_conf))
        if unknown:
            raise SilkError(f"unknown preprocessing options {unknown}; known: {sorted(self.preprocess_conf)}")
        pre = {**self.preprocess_conf, **conf}
        x = to_batch(to_batch(img, 1) if pre["grayscale"] else img, self.model.config.in_channels)
        if x.shape[0] != 1:
            raise SilkError(
                f"extract() takes one image, got a batch of {x.shape[0]}: call forward() for batches"
            )
        h, w = x.shape[-2:]
        if pre["resize"] is not None:
            x = kornia.geometry.transform.resize(
                x,
                pre["resize"],
                interpolation=pre["interpolation"],
                align_corners=pre["align_corners"],
                side=pre["side"],
                antialias=pre["antialias"],
            )
        return self.forward({"image": x}).rescaled((x.shape[-1] / w, x.shape[-2] / h), (w, h))
