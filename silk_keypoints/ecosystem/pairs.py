"""Image-pair lists in hloc's text format: one pair per line, two image names separated by a space.

Names are image paths relative to the image root with '/' separators (as in ``features.h5``); they cannot
contain whitespace. Blank lines and lines starting with ``#`` are skipped when reading.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import SilkError
from ..files import atomic_write, check_overwrite

Pair = tuple[str, str]


def exhaustive_pairs(names: Sequence[str]) -> list[Pair]:
    """Every unordered pair of ``names`` once, ``(names[i], names[j])`` with ``i < j`` (hloc's exhaustive)."""
    names = list(names)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]


def sequential_pairs(names: Sequence[str], window: int) -> list[Pair]:
    """Each image with the ``window`` images that follow it in ``names`` (video frames, ordered captures)."""
    if window < 1:
        raise SilkError(f"the sequential window must be >= 1, got {window}")
    names = list(names)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 : i + 1 + window]]


def unique_pairs(pairs: Iterable[Pair]) -> list[Pair]:
    """Pairs in their first order with duplicates dropped; ``(b, a)`` counts as a duplicate of ``(a, b)``."""
    seen: set[Pair] = set()
    out = []
    for a, b in pairs:
        if (a, b) not in seen and (b, a) not in seen:
            seen.add((a, b))
            out.append((a, b))
    return out


def write_pairs(path: str | os.PathLike, pairs: Iterable[Pair], overwrite: bool = False) -> Path:
    """Write pairs as hloc's ``pairs.txt`` (``name0 name1`` per line), atomically. Returns the path."""
    path = check_overwrite(path, overwrite)
    lines = []
    for a, b in pairs:
        for name in (a, b):
            if not name or any(c.isspace() for c in name):
                raise SilkError(
                    f"image name {name!r} is empty or contains whitespace: hloc's pairs format cannot hold it"
                )
        lines.append(f"{a} {b}\n")
    return atomic_write(path, lambda tmp: Path(tmp).write_text("".join(lines), encoding="utf-8"))


def read_pairs(
    path: str | os.PathLike, known: Iterable[str] | None = None, where: str = "the images"
) -> list[Pair]:
    """Read a pairs file -> list of ``(name0, name1)`` in file order, duplicates (either order) dropped.

    Args:
        path: text file, ``name0 name1`` per line (hloc's format; blank and ``#`` lines skipped).
        known: if given, every name must be one of these (e.g. the images of a ``features.h5``).
        where: what ``known`` is, for the error message (e.g. ``"features.h5"``).

    Raises:
        SilkError: missing file, malformed line, an image paired with itself, or names not in ``known``.
    """
    path = Path(path)
    if not path.is_file():
        raise SilkError(f"pairs file not found: {path}")
    pairs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            raise SilkError(
                f"{path}:{lineno}: expected two image names, found {len(fields)} fields: {line!r}"
            )
        if fields[0] == fields[1]:
            raise SilkError(f"{path}:{lineno}: image {fields[0]!r} is paired with itself")
        pairs.append((fields[0], fields[1]))
    if not pairs:
        raise SilkError(f"pairs file {path} lists no pairs")
    if known is not None:
        known = set(known)
        missing = sorted({n for p in pairs for n in p} - known)
        if missing:
            raise SilkError(
                f"{path} names {len(missing)} image(s) not in {where}: {', '.join(missing[:5])}"
                + (", ..." if len(missing) > 5 else "")
            )
    return unique_pairs(pairs)
