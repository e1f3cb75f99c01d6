"""Model configuration: a plain dataclass you can print, save as JSON and pass around."""

from __future__ import annotations

import dataclasses
import json
import numbers
import types
import typing
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import SilkError
from ..files import MAX_PIXELS

BLOCK_ORDERS = ("conv-relu-bn", "conv-bn-relu")
#: Where keypoints are placed: on the best cells of the probability map ("cells"), or at the sub-pixel
#: difference-of-Gaussians extrema of the image where the probability is highest ("extrema",
#: :mod:`silk_keypoints.model.extrema`).
POSITIONS = ("cells", "extrema")


@dataclass
class SiLKConfig:
    """Architecture and detection defaults of a SiLK model.

    The defaults are the original VGG-4 ("pvgg-4"): four stages of two unpadded 3x3 Conv -> ReLU -> BN blocks
    (64, 64, 128, 128 channels), no pooling, heads Conv3x3 -> ReLU -> BN -> Conv1x1 -> BN, 128-D descriptors
    scaled to norm 1.41. Output maps are 18 px smaller than the input (a 9-px border).
    """

    in_channels: int = 1  # 1: grayscale input, 3: RGB input
    contrast_window: int = 0  # 0: the image as is; k (odd): local contrast normalisation over k x k first
    channels: tuple[int, ...] = (64, 64, 128, 128)  # one entry per stage
    blocks_per_stage: int = 2
    padding: int = 0  # padding of every 3x3 convolution (0 = the original "valid" convolutions)
    pool_after: tuple[int, ...] = ()  # stages followed by a 2x2 max-pool (each halves the output resolution)
    block_order: str = "conv-relu-bn"  # the original puts BN after the ReLU
    batch_norm: bool = True
    head_channels: int = 128
    head_kernel: int = 3  # kernel of the first conv of each head (3 in the original, 1 for cheap heads)
    descriptor_dim: int = 128
    descriptor_scale: float = 1.41  # norm of the descriptors in the named outputs (the original's factor)
    # keypoint-offset head (padded, pooled variants): 0 = none, keypoints on the cell centres
    offset_hidden: int = 0  # width of its hidden layer
    offset_bound: float = 0.75  # largest offset per axis, in cells
    offset_pixels: bool = True  # the head also sees the pixels of the 3x3-cell window
    # sparse detection defaults (overridable per call)
    detection_threshold: float = 0.0  # keep cells with probability > threshold
    max_keypoints: int | None = 10000  # None: every cell above the threshold
    nms_radius: int = 0  # 0: no non-maximum suppression; r: keep local maxima of a (2r+1)^2 window
    remove_borders: int = 0  # drop keypoints closer than this many pixels to the image border
    positions: str = "cells"  # "cells": keypoints on the cells (moved by an offset head); "extrema": see below
    max_pixels: int = MAX_PIXELS  # refuse larger images (decoded or run) with a clear message

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.pool_after = tuple(int(s) for s in self.pool_after)
        problems = []
        if self.contrast_window != 0 and (self.contrast_window < 3 or self.contrast_window % 2 == 0):
            problems.append(f"contrast_window must be 0 (off) or an odd size >= 3, got {self.contrast_window}")
        if self.in_channels not in (1, 3):
            problems.append(f"in_channels must be 1 or 3, got {self.in_channels}")
        if not self.channels or min(self.channels) < 1:
            problems.append(f"channels must be a non-empty list of positive ints, got {self.channels}")
        if self.blocks_per_stage < 1:
            problems.append(f"blocks_per_stage must be >= 1, got {self.blocks_per_stage}")
        if self.padding not in (0, 1):
            problems.append(f"padding must be 0 or 1, got {self.padding}")
        if any(not 0 <= s < len(self.channels) for s in self.pool_after):
            problems.append(f"pool_after names stages outside 0..{len(self.channels) - 1}: {self.pool_after}")
        if self.block_order not in BLOCK_ORDERS:
            problems.append(f"block_order must be one of {BLOCK_ORDERS}, got {self.block_order!r}")
        if self.head_kernel not in (1, 3):
            problems.append(f"head_kernel must be 1 or 3, got {self.head_kernel}")
        if self.descriptor_dim < 1 or self.head_channels < 1:
            problems.append("descriptor_dim and head_channels must be positive")
        if not self.descriptor_scale > 0:
            problems.append(f"descriptor_scale must be > 0, got {self.descriptor_scale}")
        if self.offset_hidden < 0 or not self.offset_bound > 0:
            problems.append("offset_hidden must be >= 0 and offset_bound > 0")
        if self.offset_hidden and (self.padding != 1 or not self.pool_after):
            problems.append("an offset head (offset_hidden > 0) needs a padded variant with pooling (a strided grid)")
        if self.max_keypoints is not None and self.max_keypoints < 1:
            problems.append(f"max_keypoints must be >= 1 or None, got {self.max_keypoints}")
        if self.nms_radius < 0 or self.remove_borders < 0:
            problems.append("nms_radius and remove_borders must be >= 0")
        if self.positions not in POSITIONS:
            problems.append(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.max_pixels < 1:
            problems.append(f"max_pixels must be >= 1, got {self.max_pixels}")
        if problems:
            raise SilkError("invalid SiLK config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["pool_after"] = list(self.pool_after)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SiLKConfig:
        return dataclass_from_dict(cls, d, "SiLK config")

    def replace(self, **changes: Any) -> SiLKConfig:
        return SiLKConfig.from_dict({**self.to_dict(), **changes})


def dataclass_from_dict(cls: type, d: Any, what: str, prefix: str = "") -> Any:
    """``cls(**d)`` for a dataclass ``cls`` with every value checked against its field's type first.

    Nested dataclass fields are built from dicts the same way. Raises a :class:`SilkError` naming the key
    (``loss.cells``) for a value that is not a dict where one is needed, an unknown key or a value of the
    wrong type (``"abc"`` for an int, ``64.5`` for an int, a string for a list of numbers).
    """
    if not isinstance(d, dict):
        where = f"'{prefix.rstrip('.')}'" if prefix else "the top level"
        raise SilkError(f"invalid {what}: {where} must be a table of settings, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise SilkError(f"invalid {what}: unknown keys {[prefix + k for k in unknown]} (known: {sorted(known)})")
    values = {}
    for key, value in d.items():
        kind = hints[key]
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            values[key] = dataclass_from_dict(kind, value, what, f"{prefix}{key}.")
        elif _fits(value, kind):
            values[key] = tuple(value) if isinstance(value, list) and _is_tuple(kind) else value
        else:
            raise SilkError(f"invalid {what}: '{prefix}{key}' must be {_describe(kind)}, got {value!r}")
    try:
        return cls(**values)
    except SilkError as e:
        raise SilkError(f"{e} (in {prefix.rstrip('.')})" if prefix else str(e)) from None


def _is_tuple(kind: Any) -> bool:
    return typing.get_origin(kind) is tuple or any(typing.get_origin(a) is tuple for a in typing.get_args(kind))


def _fits(value: Any, kind: Any) -> bool:
    """Whether a JSON / TOML ``value`` is of type ``kind`` (int, float, bool, str, dict, tuples, unions, dataclasses)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if kind is type(None):
        return value is None
    if kind is Any:
        return True
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if kind is dict or origin is dict:
        return isinstance(value, dict)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    if dataclasses.is_dataclass(kind):
        return isinstance(value, kind)
    return isinstance(value, kind) if isinstance(kind, type) else True


_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"),
          str: ("a string", "strings"), dict: ("a table", "tables")}


def _describe(kind: Any, plural: bool = False) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a, plural) for a in args)
    if kind is type(None):
        return "null"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0], True)}"
        return f"a list of {len(args)} {' and '.join(sorted({_describe(a, True) for a in args}))}"
    if dataclasses.is_dataclass(kind):
        return "a table of settings"
    names = _NAMES.get(kind)
    return names[plural] if names else getattr(kind, "__name__", str(kind))


DETECTION_KEYS = ("detection_threshold", "max_keypoints", "nms_radius", "remove_borders", "positions")
