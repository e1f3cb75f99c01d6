"""silk-keypoints: SiLK (Simple Learned Keypoints, Gleize, Wang & Feiszli, ICCV 2023), re-implemented.

Quick start::

    from silk_keypoints import SiLK, load_image
    model = SiLK.from_pretrained()            # shipped weights, no download
    feats = model.extract(load_image("a.jpg"), max_keypoints=2048)
    feats["keypoints"]                         # (1, N, 2) x, y; pixel centres at integers

Coordinates everywhere: image pixels (x, y), centre of the top-left pixel = (0, 0).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import SilkError

if TYPE_CHECKING:
    from .features import Features
    from .image_features import extract_image
    from .io import load_image
    from .matching import Matcher, match_descriptors
    from .model import OUTPUT_NAMES, SiLK, SiLKConfig

__version__ = "0.1.0"

# public name -> submodule; imported on first use, so that `import silk_keypoints` (and `silk --help`) does
# not load torch
_LAZY = {
    "Features": "features", "extract_image": "image_features", "load_image": "io", "Matcher": "matching",
    "match_descriptors": "matching", "OUTPUT_NAMES": "model", "SiLK": "model", "SiLKConfig": "model",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value

__all__ = [
    "OUTPUT_NAMES",
    "Features",
    "Matcher",
    "SiLK",
    "SiLKConfig",
    "SilkError",
    "__version__",
    "extract_image",
    "load_image",
    "match_descriptors",
]
