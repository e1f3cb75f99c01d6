"""The SiLK model: backbone, heads, sparse selection, checkpoints and the shipped variants."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import SiLKConfig

if TYPE_CHECKING:
    from .silk import OUTPUT_NAMES, SiLK


def __getattr__(name: str) -> Any:
    """``SiLK`` and ``OUTPUT_NAMES`` on first use (they import torch; the config and zoo do not)."""
    if name not in ("SiLK", "OUTPUT_NAMES"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import silk

    return getattr(silk, name)

__all__ = ["OUTPUT_NAMES", "SiLK", "SiLKConfig"]
