"""Writing output files: atomic writes and the checks made before slow work starts.

Every file the package writes (weights, pictures, JSON, hloc / COLMAP / npz files, ONNX models) goes through
:func:`atomic_write`: a crash or a full disk leaves the old file (if any) untouched and no partial file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import SilkError


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it over ``path``. Returns ``path``."""
    path = Path(path)
    if not path.parent.exists():
        raise SilkError(f"output folder does not exist: {path.parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_input_file(path: str | os.PathLike, what: str) -> Path:
    """Raise :class:`SilkError` (naming ``what``, e.g. "image") unless ``path`` is an existing, non-empty file."""
    path = Path(path)
    if not path.is_file():
        raise SilkError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise SilkError(f"{what} is empty (0 bytes): {path}")
    return path


def check_output_path(path: str | os.PathLike, formats: Sequence[str] | None = None, what: str = "file") -> Path:
    """Raise :class:`SilkError` unless ``path`` can be written: an existing, writable folder, not a folder
    itself, and a suffix among ``formats`` (None: any). Call it before slow work so a typo fails fast."""
    path = Path(path)
    if formats is not None and path.suffix.lower() not in formats:
        raise SilkError(f"{path}: unsupported {what} format {path.suffix!r}; use one of {list(formats)}")
    folder = path.parent
    if not folder.exists():
        raise SilkError(f"output folder does not exist: {folder}")
    if not folder.is_dir():
        raise SilkError(f"output folder {folder} is not a folder")
    if not os.access(folder, os.W_OK):
        raise SilkError(f"output folder is not writable: {folder}")
    if path.is_dir():
        raise SilkError(f"output path is a folder, expected a file: {path}")
    return path


def check_overwrite(path: str | os.PathLike, overwrite: bool) -> Path:
    """Raise :class:`SilkError` if ``path`` exists and ``overwrite`` is False: the one overwrite rule of every
    writer and command (CLI: ``--overwrite``). Returns ``path``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise SilkError(f"{path} exists: pass --overwrite (Python: overwrite=True) to replace it")
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + rename: no half-written file on failure)."""
    path = Path(path)
    try:
        return atomic_write(path, lambda tmp: tmp.write_bytes(data))
    except OSError as e:
        raise SilkError(f"cannot write {path}: {e.strerror or e}") from None
