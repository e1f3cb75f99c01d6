"""The model family and the registry of weights shipped inside the package.

* ``vgg4``: the original SiLK VGG-4 (unpadded, no downsampling, 0.94 M parameters, ~274 GMAC at 480x640).
* ``fast``: local contrast normalisation of the input (63-px window), padded VGG (Conv -> BN -> ReLU), one
  2x2 max-pool after the first stage (output stride 2), narrow heads: ~22 GMAC at 480x640 (SuperPoint-class
  cost), 0.27 M parameters. The normalisation makes the keypoint ranking follow local structure rather than
  the lighting.
* ``tiny``: 8/24/64 channels, 2x2 max-pools after the first two stages (output stride 4), 1x1 heads,
  64-D descriptors: ~1.9 GMAC at 480x640 (XFeat class), 72 k parameters: the budget goes to a coarser,
  deeper map rather than a stride-2 map with 32 channels; sub-cell match refinement recovers most of the
  1-px accuracy.

What each variant measures, how it was trained and what was tried and not shipped: the model cards
(``weights/<name>.md``) and the run logs in ``runs/``.

Padded variants drop, by default, the keypoints of their two outermost cell rings (``remove_borders`` 4 px for
``fast``, 8 px for ``tiny``): the zero padding makes fake corners there (a black frame gives ``tiny`` keypoints
along its edge). ``vgg4`` is unpadded: its outputs never see padding.

Strided variants keep the named-output contract: maps are on a coarser grid, and positions are still
image pixels (the :class:`~silk_keypoints.model.coords.GridMap` of the model does the conversion).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SilkError
from .config import SiLKConfig

VARIANTS: dict[str, SiLKConfig] = {
    "vgg4": SiLKConfig(),
    "fast": SiLKConfig(
        contrast_window=63,
        channels=(32, 48, 64, 64),
        padding=1,
        pool_after=(0,),
        block_order="conv-bn-relu",
        head_channels=64,
        head_kernel=3,
        remove_borders=4,
    ),
    "tiny": SiLKConfig(
        channels=(8, 24, 64),
        padding=1,
        pool_after=(0, 1),
        block_order="conv-bn-relu",
        head_channels=64,
        head_kernel=1,
        descriptor_dim=64,
        remove_borders=8,
    ),
}

DEFAULT_PRETRAINED = "fast"
# keypoints per image of the shipped models (SiLK.from_pretrained), the adapters and every command: the budget
# of every table in the README and model cards; a checkpoint loaded by path keeps its own config's
# (the original's 10000 for its .ckpt files)
DEFAULT_MAX_KEYPOINTS = 2048
WEIGHTS_DIR = Path(__file__).parent / "weights"


def variant_config(name: str) -> SiLKConfig:
    """Architecture of a named variant (a fresh copy)."""
    if name not in VARIANTS:
        raise SilkError(f"unknown model variant {name!r}; available: {sorted(VARIANTS)}")
    return VARIANTS[name].replace()


def available_pretrained() -> list[str]:
    """Names of the weight files shipped in ``model/weights`` (``<name>.safetensors``)."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def pretrained_path(name: str | None = None) -> Path:
    """Path of shipped weights ``name`` (None: the default model)."""
    shipped = available_pretrained()
    if name is None:
        name = DEFAULT_PRETRAINED if DEFAULT_PRETRAINED in shipped else (shipped[0] if shipped else DEFAULT_PRETRAINED)
    path = WEIGHTS_DIR / f"{name}.safetensors"
    if not path.is_file():
        have = ", ".join(shipped) if shipped else "none yet"
        raise SilkError(f"no shipped weights named {name!r}; shipped weights: {have}")
    return path
