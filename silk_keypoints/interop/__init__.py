"""Deprecated: the file formats moved to :mod:`silk_keypoints.ecosystem`."""
