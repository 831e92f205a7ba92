"""Small file helpers: atomic writes, so an interrupted run never leaves half a file,
and one-line errors for a full or read-only disk."""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from selfsup_core.errors import OutputError

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
_UNWRITABLE = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied"}


def disk_error(exc: BaseException, path: str | os.PathLike[str] | None = None) -> OutputError | None:
    """The one-line error for a full or unwritable disk, or ``None`` for any other error.

    The ``OSError`` may sit behind ``exc``: ``torch.save`` meets a full disk as
    a failed write inside its zip writer and raises a ``RuntimeError``
    ("unexpected pos ...") while handling it, so the chain is searched.

    Args:
        exc: The error raised while writing.
        path: The file or folder being written (default: the one the ``OSError`` names).

    Example:
        >>> disk_error(OSError(errno.ENOSPC, "No space left on device", "run/last.ckpt"))
        OutputError('no space left on device while writing run/last.ckpt: free some space or choose another --out.')
    """
    cause = _os_error_behind(exc)
    if cause is None:
        return None
    where = path if path is not None else cause.filename
    if cause.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return OutputError(f"no space left on device while writing {where}: free some space or choose "
                           f"another --out.")
    if cause.errno == errno.EFBIG:
        return OutputError(f"cannot write {where}: file too large (a file-size limit, `ulimit -f`, or the "
                           f"file system's); choose another --out.")
    if cause.errno in _UNWRITABLE:
        return OutputError(f"cannot write {where}: {_UNWRITABLE[cause.errno]}; choose another --out.")
    return None


def _os_error_behind(exc: BaseException) -> OSError | None:
    """``exc`` if it is an ``OSError``, else the first one it was raised from or while handling."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@contextmanager
def reporting_disk_errors(path: str | os.PathLike[str] | None = None) -> Iterator[None]:
    """Turn a full or unwritable disk met inside the block into one :class:`OutputError` naming ``path``."""
    try:
        yield
    except OutputError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised unless a disk error lies behind it
        error = disk_error(exc, path)
        if error is None:
            raise
        raise error from exc


def default_file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the process's umask (usually ``0o644``).

    ``tempfile.mkstemp`` creates ``0o600`` files; atomic writes set this mode
    instead, so run folders can be shared as any other file the user writes.
    """
    try:  # Linux: read it without changing it (os.umask can only be read by setting it)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through a temporary file and an atomic rename: readers see the old
    file or the whole new one, never half of it.

    Args:
        path: The file to (re)place.
        write: Writes the content to the binary file handle it is given.

    Raises:
        OutputError: No space left on the device, or a read-only folder (the
            temporary file is removed; an earlier ``path`` is left intact).
    """
    path = Path(path)
    with reporting_disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        try:
            os.fchmod(fd, default_file_mode())  # mkstemp's 0o600 would keep the file from the team
            # Through a Python file, so a full disk raises an OSError (ENOSPC) that disk_error finds
            # behind torch.save's RuntimeError; a path would give only a C++ stream error.
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """:func:`atomic_write` of ``data``."""
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def check_writable(folder: str | os.PathLike[str]) -> None:
    """Create ``folder`` and prove it writable with a probe file, before any long work.

    Raises:
        OutputError: It cannot be created or written (read-only, no permission, full).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".selfsup-probe.", suffix=TEMP_SUFFIX)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            Path(probe).unlink(missing_ok=True)
    except OSError as exc:
        error = disk_error(exc, folder)
        raise (error or OutputError(f"cannot write to {folder}: {exc.strerror or exc}; "
                                    f"choose another --out.")) from exc


def remove_stale_temporaries(*folders: str | os.PathLike[str]) -> int:
    """Delete the ``.NAME.XXXX.tmp`` files that killed atomic writes left in ``folders``.

    Returns:
        How many were removed.
    """
    removed = 0
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for leftover in folder.glob(f".*{TEMP_SUFFIX}"):
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
                removed += 1
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted write in %s", removed,
                    ", ".join(map(str, folders)))
    return removed
