"""Drop-in modules for other libraries' conventions.

* :class:`~silk_keypoints.integrations.lightglue.SiLKExtractor`: a ``lightglue.SuperPoint``-style extractor
  (``extractor.extract(image)``, resize on the fly, keypoints in the original image's pixels).
* :class:`~silk_keypoints.integrations.kornia.SiLKFeature`: a kornia ``LocalFeature``-style module returning
  ``(lafs, responses, descriptors)`` for kornia's matchers.
"""

from .kornia import SiLKFeature
from .lightglue import SiLKExtractor

__all__ = ["SiLKExtractor", "SiLKFeature"]
