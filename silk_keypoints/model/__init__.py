"""The SiLK model: backbone, heads, sparse selection, checkpoints and the shipped variants."""

from .config import SiLKConfig
from .silk import OUTPUT_NAMES, SiLK

__all__ = ["OUTPUT_NAMES", "SiLK", "SiLKConfig"]
