"""Deprecated: moved to :mod:`silk_keypoints.model.fused`."""

from .._deprecated import alias_module

alias_module(__name__, "silk_keypoints.model.fused")
