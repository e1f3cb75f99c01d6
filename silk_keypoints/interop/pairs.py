"""Deprecated: moved to :mod:`silk_keypoints.ecosystem.pairs`."""

from .._deprecated import alias_module

alias_module(__name__, "silk_keypoints.ecosystem.pairs")
