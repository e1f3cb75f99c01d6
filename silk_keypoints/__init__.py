"""silk-keypoints: SiLK (Simple Learned Keypoints, Gleize, Wang & Feiszli, ICCV 2023), re-implemented.

Quick start::

    from silk_keypoints import SiLK, load_image
    model = SiLK.from_pretrained()            # shipped weights, no download
    feats = model.extract(load_image("a.jpg"), max_keypoints=2048)
    feats["keypoints"]                         # (1, N, 2) x, y; pixel centres at integers

Coordinates everywhere: image pixels (x, y), centre of the top-left pixel = (0, 0).
"""

from .errors import SilkError
from .features import Features
from .image_features import extract_image
from .io import load_image
from .matching import Matcher, match_descriptors
from .model import OUTPUT_NAMES, SiLK, SiLKConfig

__version__ = "0.1.0"

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
