"""Named benchmark protocols: one lookup with overrides for HPatches (:mod:`.hpatches`) and pose (:mod:`.pose`)."""

from __future__ import annotations

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
        return replace(self[name], **{k: v for k, v in overrides.items() if v is not None})
