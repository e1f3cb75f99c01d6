"""Deprecated: the adapters moved to :mod:`silk_keypoints.ecosystem.lightglue` and :mod:`silk_keypoints.ecosystem.kornia`."""

import warnings

from ..ecosystem.kornia import SiLKFeature
from ..ecosystem.lightglue import SiLKExtractor

warnings.warn("silk_keypoints.integrations is deprecated: use silk_keypoints.ecosystem.lightglue / .kornia",
              DeprecationWarning, stacklevel=2)

__all__ = ["SiLKExtractor", "SiLKFeature"]
