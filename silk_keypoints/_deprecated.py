"""Old module paths kept importable for one release: each warns once and points to the new place."""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType


def alias_module(old: str, new: str) -> ModuleType:
    """Make ``import old`` give module ``new`` with a :class:`DeprecationWarning` naming the new path."""
    warnings.warn(f"{old} is deprecated: use {new}", DeprecationWarning, stacklevel=3)
    module = importlib.import_module(new)
    sys.modules[old] = module
    return module
