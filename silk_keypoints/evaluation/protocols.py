"""Named benchmark protocols: one lookup with overrides for HPatches (:mod:`.hpatches`) and pose (:mod:`.pose`)."""

from __future__ import annotations

import math
import numbers
from dataclasses import replace
from typing import Any, Generic, TypeVar

from ..errors import SilkError

P = TypeVar("P")


class Protocols(dict[str, P], Generic[P]):
    """The protocols of one benchmark: a dict ``name -> frozen dataclass with a name field``."""

    def __init__(self, benchmark: str, *protocols: P) -> None:
        super().__init__((p.name, p) for p in protocols)  # type: ignore[attr-defined]
        self.benchmark = benchmark

    def get_protocol(self, name: str, **overrides: Any) -> P:
        """The protocol ``name`` with some fields replaced (None values are ignored)."""
        if name not in self:
            raise SilkError(f"unknown {self.benchmark} protocol {name!r}; available: {', '.join(self)}")
        for key, value in overrides.items():
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                flag = f"--{key.replace('_', '-')}"
                if not math.isfinite(value) or value < 0 or ("threshold" in key and value == 0):
                    bound = "> 0" if "threshold" in key else ">= 0"
                    raise SilkError(f"{flag} (the {self.benchmark} protocol's {key}) must be {bound}, got {value}")
        return replace(self[name], **{k: v for k, v in overrides.items() if v is not None})
