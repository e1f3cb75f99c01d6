"""Writing output files: atomic writes and the checks made before slow work starts.

Every file the package writes (weights, pictures, JSON, hloc / COLMAP / npz files, ONNX models) goes through
:func:`atomic_write`: a crash or a full disk leaves the old file (if any) untouched and no partial file, and a
failed write (read-only or full disk) is one :class:`SilkError` line naming the file. Folders are made by
:func:`make_dir`.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import SilkError

# the default largest input image, checked on the file's header before decoding and again on the network's
# input: 16 MP (a 4608 x 3456 photo; 12.2 MP phone photos fit); docs/reliability.md gives the measured memory
MAX_PIXELS = 16_000_000


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it over ``path``. Returns ``path``."""
    path = Path(path)
    if not path.parent.exists():
        raise SilkError(f"output folder does not exist: {path.parent}")
    if path.is_dir():
        raise SilkError(f"output path is a folder, expected a file: {path}")
    kept = "; the existing file is kept" if path.exists() else ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise SilkError(f"cannot write {path}: {describe_os_error(e)}") from None
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise SilkError(f"cannot write {path}: {describe_os_error(e)}{kept}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def describe_os_error(e: OSError) -> str:
    """A short reason for a failed write: ``no space left on device (disk full)``, ``read-only file system``."""
    hints = {errno.ENOSPC: "no space left on device (disk full)", errno.EROFS: "read-only file system",
             errno.EACCES: "permission denied", errno.EDQUOT: "disk quota exceeded"}
    return hints.get(e.errno) or (e.strerror or str(e) or type(e).__name__).lower()


def make_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create folder ``path`` (and its parents) or raise :class:`SilkError` saying why it cannot be used: a
    file in the way, a read-only or full disk, no permission."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SilkError(f"{what} {path} is a file, expected a folder")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise SilkError(f"cannot create {what} {path}: {blocking} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SilkError(f"cannot create {what} {path}: {describe_os_error(e)}") from None
    if not os.access(path, os.W_OK):
        raise SilkError(f"{what} is not writable: {path}")
    return path


def check_input_file(path: str | os.PathLike, what: str) -> Path:
    """Raise :class:`SilkError` (naming ``what``, e.g. "image") unless ``path`` is an existing, non-empty file."""
    path = Path(path)
    if path.is_dir():
        raise SilkError(f"{what} {path} is a folder, expected a file")
    if not path.is_file():
        raise SilkError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise SilkError(f"{what} is empty (0 bytes): {path}")
    return path


def check_output_path(path: str | os.PathLike, formats: Sequence[str] | None = None, what: str = "file") -> Path:
    """Raise :class:`SilkError` unless ``path`` can be written: an existing, writable folder, not a folder
    itself, and a suffix among ``formats`` (None: any). Call it before slow work so a typo fails fast."""
    if str(path).endswith(("/", os.sep)):
        raise SilkError(f"output path {path} ends with '/' (a folder): give a file name")
    path = Path(path)
    if formats is not None and path.suffix.lower() not in formats:
        raise SilkError(f"{path}: unsupported {what} format {path.suffix!r}; use one of {list(formats)}")
    folder = path.parent
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise SilkError(f"cannot write {path}: {blocking} is a file, not a folder")
    if not folder.exists():
        raise SilkError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise SilkError(f"output folder is not writable: {folder}")
    if path.is_dir():
        raise SilkError(f"output path is a folder, expected a file: {path}")
    return path


def check_overwrite(path: str | os.PathLike, overwrite: bool) -> Path:
    """Raise :class:`SilkError` if ``path`` exists and ``overwrite`` is False: the one overwrite rule of every
    writer and command (CLI: ``--overwrite``), after the checks of :func:`check_output_path`. Returns ``path``."""
    path = check_output_path(path)
    if path.exists() and not overwrite:
        raise SilkError(f"{path} exists: pass --overwrite (Python: overwrite=True) to replace it")
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + rename: no half-written file on failure)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


class OutputLock:
    """An exclusive lock on an output file: ``<path>.lock`` holding ``pid host``, made with ``O_EXCL``.

    A second writer of the same output (another process, another machine on a shared file system) is refused
    with :class:`SilkError` instead of silently replacing the first's work. A lock left by a killed process
    on this host (its pid no longer runs) is taken over; one from another host is reported with its owner, to
    be deleted by hand if no process there runs. Use as a context manager; the lock file is removed on exit.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(f"{os.fspath(path)}.lock")
        self._held = False

    def acquire(self) -> OutputLock:
        me = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(2):  # second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and not _alive(*owner):
                    self.path.unlink(missing_ok=True)
                    continue
                who = f"process {owner[0]} on {owner[1]}" if owner else "another process"
                raise SilkError(
                    f"{self.path.with_suffix('')} is being written by {who} (lock {self.path}); wait for it, or "
                    "delete the lock file if no such process runs"
                ) from None
            except OSError as e:
                raise SilkError(f"cannot write {self.path.with_suffix('')}: cannot create its lock file {self.path}: {describe_os_error(e)}") from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self._held = True
            return self
        raise SilkError(f"cannot take the lock {self.path}: another process keeps creating it")

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def _owner(self) -> tuple[int, str] | None:
        try:
            pid, host = self.path.read_text().split()
            return int(pid), host
        except (OSError, ValueError):  # vanished, or being written this instant
            return None

    def __enter__(self) -> OutputLock:  # noqa: PYI034 - Self needs Python 3.11
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _alive(pid: int, host: str) -> bool:
    """Whether process ``pid`` of ``host`` may still run (always True for another host: we cannot tell)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True
