"""Deprecated: moved to :mod:`silk_keypoints.image_features`."""

from ._deprecated import alias_module

alias_module(__name__, "silk_keypoints.image_features")
