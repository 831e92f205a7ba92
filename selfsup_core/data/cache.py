"""The decode cache: decode a folder once, memory-map it on every later run.

The first run decodes every image at the training size into one uint8 file
of shape ``(N, 3, S, S)``; later epochs and later runs map that file instead
of decoding again (``torch.from_file``: the operating system pages it in, so
data sets larger than RAM work). Decoding is deterministic, so the cached
images are exactly the ones :func:`selfsup_core.data.decode_images` gives.

An entry is keyed by everything that changes its bytes: the folder, every
file's relative path, size and modification time, the image size, the decoder,
the resize method and :data:`FORMAT_VERSION`. A changed folder gets a new key
and so a new entry. Each entry is a folder::

    <cache dir>/decoded/<folder name>-<size>px-<decoder>-<key>/
        images.u8    # N x 3 x S x S uint8, C order, images that decoded only
        meta.json    # key inputs, skipped files and why, timings
        COMPLETE     # written last: counts, array size, checksums; its mtime is "last used"

It is built in a temporary sibling folder and published with one atomic
rename, so readers see a whole entry or none. Builders of one entry take
turns on an exclusive lock (``<entry>.build-lock`` beside it, removed when
done): ranks that torchrun starts together on one machine all miss at once,
one decodes and the others wait, then map its entry. The array is written with
``os.write`` into space reserved up front (``posix_fallocate``), so a full
disk is an ordinary ``OSError``: the half-built entry is removed at once and
the images are decoded into memory instead. Every chunk of the array (about
4 MiB) has a CRC-32 in the marker, checked each time the entry is opened: an
entry whose marker is missing, whose metadata does not match its checksum,
whose array has the wrong size or any corrupt chunk is logged, deleted and
rebuilt, never used.

``$SELFSUP_CACHE_MAX_GB`` caps the cache (default 50 GB): before an entry
is built, the least recently used others are evicted to make room.
``selfsup cache list|verify|clear`` manages the entries by hand.

Example:
    >>> from selfsup_core.data import scan_folder
    >>> data = load_decoded(scan_folder("photos"), size=64)  # doctest: +SKIP
    >>> data.images.shape  # doctest: +SKIP
    torch.Size([1200, 3, 64, 64])
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from selfsup_core.data.decoded import (
    DecodedImages,
    assemble,
    collect_decoded,
    decode_images,
    iter_decoded,
    no_image_decodes,
)
from selfsup_core.data.files import ImageList, Skipped, check_strict, strict_error
from selfsup_core.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""Bump when the layout of an entry or the decoding changes: old entries are then ignored.
2: per-chunk CRC-32 of the whole array; resize of the centre square only; 16-bit grey scaled."""

CACHE_DIR_ENV = "SELFSUP_CACHE_DIR"
MAX_GB_ENV = "SELFSUP_CACHE_MAX_GB"
DEFAULT_MAX_GB = 50.0

#: Decoder name -> resize method; both go into the key.
DECODERS: dict[str, str] = {
    # selfsup_core.data.load_image: PIL draft, EXIF transpose, RGB, bilinear, centre crop.
    "pil": "pil-draft-exif-rgb-bilinear-shorter-side-centre-crop",
    # _decode_nvjpeg: nvJPEG on the GPU, EXIF, RGB, antialiased bilinear, centre crop.
    "nvjpeg": "torchvision-exif-rgb-bilinear-antialias-shorter-side-centre-crop",
}

_ARRAY, _META, _MARKER, _LOCK = "images.u8", "meta.json", "COMPLETE", ".lock"
_BUILD_LOCK = ".build-lock"  # suffix of the lock file beside an entry that builders take turns on
_CHUNK_BYTES = 4 << 20  # one CRC-32 per chunk of about this many bytes (whole images)
_LEFTOVER_AGE_S = 3600  # a temporary folder without an owner lock (an older version's), this old, is dead
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)


def default_cache_dir() -> Path:
    """Where entries live: ``$SELFSUP_CACHE_DIR``, else the user's cache folder.

    The user's cache folder is ``$XDG_CACHE_HOME/selfsup``, or
    ``~/.cache/selfsup`` when that variable is unset.
    """
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "selfsup"


def max_cache_bytes() -> float:
    """The size cap: ``$SELFSUP_CACHE_MAX_GB`` (``inf`` or ``none``: no cap), else 50 GB."""
    value = os.environ.get(MAX_GB_ENV, "").strip().lower()
    if not value:
        return DEFAULT_MAX_GB * 1e9
    if value in ("none", "inf", "unlimited"):
        return float("inf")
    try:
        gb = float(value)
    except ValueError:
        gb = -1.0
    if not gb >= 0:
        raise ConfigError(f"{MAX_GB_ENV} must be a number of gigabytes (or inf), got {value!r}.")
    return gb * 1e9


def cache_key(image_list: ImageList, size: int, decoder: str = "pil") -> str:
    """A hex digest of everything that determines the decoded bytes.

    Stats every file (path, size, modification time in ns), so touching,
    adding, removing or renaming a file changes the key.
    """
    resize = _resize_method(decoder)
    root = image_list.root.resolve()
    digest = hashlib.sha256()
    header = {"format": FORMAT_VERSION, "root": str(root), "size": size,
              "decoder": decoder, "resize": resize, "count": len(image_list)}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for path in image_list.files:
        try:
            stat = path.stat()
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
        name = _relative_name(path, image_list.root)
        digest.update(f"\n{name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def load_decoded(
    image_list: ImageList,
    size: int,
    num_workers: int = 0,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    decoder: str = "pil",
    strict: bool = False,
) -> DecodedImages:
    """Every image of ``image_list`` as uint8 ``(3, size, size)``, decoded once.

    With ``cache`` the images come from the decode cache (built on the first
    call, memory-mapped after that); without it they are decoded into RAM.
    Either way the result holds the same images, labels and order as
    :func:`selfsup_core.data.decode_images` for the same decoder. Files that
    cannot be used are left out, listed in ``skipped`` with their reasons and
    reported (also on cache hits). A cache folder that cannot be written (read
    only, full) is logged and the images decoded into RAM instead.

    Args:
        image_list: The files (from :func:`selfsup_core.data.scan_folder`).
        size: Side of the square images.
        num_workers: Decoding processes for the first pass.
        cache: Use (and fill) the decode cache.
        cache_dir: Where entries live; default :func:`default_cache_dir`.
            Must not be inside the data folder.
        decoder: ``"pil"`` (CPU) or ``"nvjpeg"`` (``torchvision.io.decode_jpeg``
            on the current CUDA device; needs a GPU).
        strict: Raise :class:`DataError` naming the first file that cannot be
            used, instead of skipping it.

    Raises:
        DataError: No image decodes, a file cannot be read, or (``strict``)
            any file cannot be used.
        ConfigError: An unknown decoder, ``"nvjpeg"`` without a GPU, or a
            cache folder inside the data folder.

    Example:
        >>> data = load_decoded(scan_folder("imagenette/train"), 64, num_workers=2)  # doctest: +SKIP
        >>> data.images.dtype, len(data.skipped)  # doctest: +SKIP
        (torch.uint8, 0)
    """
    _resize_method(decoder)
    if decoder == "nvjpeg" and not torch.cuda.is_available():
        raise ConfigError("decoder 'nvjpeg' needs a CUDA GPU; use decoder 'pil' on this machine.")
    if len(image_list) == 0:
        raise DataError(f"no images to decode under {image_list.root}.")
    if strict:
        check_strict(image_list)
    if not cache:
        if decoder == "pil":
            return decode_images(image_list, size, num_workers, strict=strict)
        return collect_decoded(image_list, size, _decoded(image_list, size, decoder, num_workers, strict))

    root = _checked_cache_dir(cache_dir, image_list.root)
    key = cache_key(image_list, size, decoder)
    entry = root / "decoded" / f"{_safe_name(image_list.root)}-{size}px-{decoder}-{key[:24]}"
    loaded = _open_entry(entry, key, image_list, size, strict)
    if loaded is not None:
        logger.info("decode cache hit: %s (%d images)", entry, len(loaded))
        return loaded
    try:
        return _build_once(entry, key, image_list, size, decoder, num_workers, strict)
    except OSError as exc:  # a read-only or full cache folder must not stop the run
        reason = exc.strerror or str(exc)
        hint = (f"free some space, lower {MAX_GB_ENV}, or set {CACHE_DIR_ENV} to another folder"
                if exc.errno in _DISK_FULL else f"set {CACHE_DIR_ENV} to a writable folder")
        logger.warning("cannot write the decode cache under %s (%s): decoding into memory instead; %s",
                       root, reason, hint)
        return load_decoded(image_list, size, num_workers, cache=False, decoder=decoder, strict=strict)


# -- reading -----------------------------------------------------------------------


class CorruptCacheError(Exception):
    """An entry that exists but must not be used (internal: triggers a rebuild)."""


def _open_entry(entry: Path, key: str, image_list: ImageList, size: int,
                strict: bool = False) -> DecodedImages | None:
    """The entry's images, ``None`` when absent; a corrupt entry is logged and removed."""
    if not entry.exists():
        return None
    try:
        return _read_entry(entry, key, image_list, size, strict)
    except CorruptCacheError as exc:
        logger.warning("decode cache %s is corrupt (%s): rebuilding it", entry, exc)
        _discard(entry)
        return None


def _check_entry(entry: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """An entry's marker and metadata once every checksum matches (the whole array is read).

    Raises:
        CorruptCacheError: anything missing, unreadable or not matching its checksum.
    """
    try:
        marker = json.loads((entry / _MARKER).read_text())
        meta_bytes = (entry / _META).read_bytes()
    except FileNotFoundError as exc:
        raise CorruptCacheError(f"{Path(exc.filename).name} is missing") from exc
    except (OSError, ValueError) as exc:
        raise CorruptCacheError(f"unreadable completion marker: {exc}") from exc
    if not isinstance(marker, dict) or marker.get("meta_sha256") != _sha256(meta_bytes):
        raise CorruptCacheError("metadata does not match its checksum")
    try:
        meta = json.loads(meta_bytes)
        count, size = int(meta["count"]), int(meta["image_size"])
        chunk, crcs = int(marker["chunk_images"]), [int(c) for c in marker["chunk_crc32"]]
        if meta["format"] != FORMAT_VERSION or len(meta["skipped"]) != len(meta["skipped_reasons"]):
            raise ValueError("another format")
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptCacheError(f"unreadable metadata: {exc!r}") from exc
    array = entry / _ARRAY
    image_bytes = 3 * size * size
    actual = array.stat().st_size if array.exists() else -1
    if actual != count * image_bytes:
        raise CorruptCacheError(f"{_ARRAY} holds {actual} bytes, expected {count * image_bytes}")
    if chunk < 1 or len(crcs) != -(-count // chunk):
        raise CorruptCacheError("the checksum list does not fit the array")
    bad = _first_bad_chunk(array, chunk * image_bytes, crcs)
    if bad is not None:
        first, last = bad * chunk, min(count, (bad + 1) * chunk) - 1
        raise CorruptCacheError(f"{_ARRAY}: images {first}-{last} do not match their checksum")
    return marker, meta


def _read_entry(entry: Path, key: str, image_list: ImageList, size: int,
                strict: bool = False) -> DecodedImages:
    marker, meta = _check_entry(entry)
    try:
        skipped = [int(i) for i in meta["skipped"]]
        matches = (meta["key"] == key and meta["total"] == len(image_list) == int(meta["count"]) + len(skipped)
                   and meta["image_size"] == size)
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptCacheError(f"unreadable metadata: {exc!r}") from exc
    if not matches:
        raise CorruptCacheError("metadata describes other files")
    failures = dict(zip(skipped, (str(r) for r in meta["skipped_reasons"])))
    if strict and failures:
        first = min(failures)
        raise strict_error(Skipped(image_list.files[first], failures[first]), image_list.root, len(failures))
    _touch(entry / _MARKER)
    try:
        images = _map(entry / _ARRAY, int(meta["count"]), size)
    except (OSError, RuntimeError) as exc:  # removed since it was checked (evicted by another run)
        raise CorruptCacheError(f"{_ARRAY} cannot be mapped: {exc}") from exc
    left_out = set(skipped)
    ok = [i for i in range(len(image_list)) if i not in left_out]
    return assemble(image_list, images, ok, failures)


def _first_bad_chunk(array: Path, chunk_bytes: int, crcs: list[int]) -> int | None:
    """The index of the first chunk whose CRC-32 differs, or ``None``."""
    buffer = bytearray(chunk_bytes)
    view = memoryview(buffer)
    with open(array, "rb", buffering=0) as handle:
        for index, expected in enumerate(crcs):
            got = _read_full(handle, view)
            if zlib.crc32(view[:got]) != expected:
                return index
    return None


def _read_full(handle: IO[bytes], view: memoryview) -> int:
    done = 0
    while done < len(view):
        n = handle.readinto(view[done:])  # type: ignore[attr-defined]
        if not n:
            break
        done += n
    return done


def _map(path: Path, count: int, size: int) -> Tensor:
    """Memory-map ``path`` as ``(count, 3, size, size)`` uint8, read-only for the file.

    The map is private (copy-on-write), so an in-place edit by a caller
    never reaches the file that other runs read.
    """
    nbytes = count * 3 * size * size
    if nbytes == 0:
        return torch.empty((0, 3, size, size), dtype=torch.uint8)
    flat = torch.from_file(str(path), shared=False, size=nbytes, dtype=torch.uint8)
    return flat.view(count, 3, size, size)


def _touch(path: Path) -> None:
    """Record a use (the marker's mtime orders eviction); a read-only cache keeps its times."""
    try:
        os.utime(path)
    except OSError:
        pass


# -- building ----------------------------------------------------------------------


def _build_once(
    entry: Path, key: str, image_list: ImageList, size: int, decoder: str, num_workers: int,
    strict: bool = False,
) -> DecodedImages:
    """Build ``entry`` holding its build lock, unless another process built it while this one waited.

    Without a lock (a read-only cache folder) it builds anyway; the atomic
    publish keeps concurrent builds safe, only slower.
    """
    with _build_lock(entry) as locked:
        if locked:  # whoever held the lock before us may have built it
            loaded = _open_entry(entry, key, image_list, size, strict)
            if loaded is not None:
                logger.info("decode cache hit: %s (%d images, built by another process)", entry, len(loaded))
                return loaded
        return _build_entry(entry, key, image_list, size, decoder, num_workers, strict)


_held = threading.local()  # the entries whose build lock this thread holds


@contextmanager
def _build_lock(entry: Path) -> Iterator[bool]:
    """Hold ``entry``'s build lock for the block; yields False when none can be had.

    Re-entrant within a thread (a second ``flock`` of its own would wait
    forever). Waiting is logged at INFO.

    Example:
        >>> with _build_lock(Path("/tmp/cache/decoded/photos-64px-pil-0123")) as locked:  # doctest: +SKIP
        ...     locked
        True
    """
    held: set[Path] = _held.__dict__.setdefault("entries", set())
    if entry in held:
        yield True
        return
    path = entry.with_name(entry.name + _BUILD_LOCK)
    handle = _acquire(path, entry)
    if handle is None:
        yield False
        return
    held.add(entry)
    try:
        yield True
    finally:
        held.discard(entry)
        _release(path, handle)


def _acquire(path: Path, entry: Path) -> IO[bytes] | None:
    """An open ``path`` holding its exclusive ``flock``; ``None`` when it cannot be created or locked.

    The holder removes the file when done, so a waiter that wakes up holding
    a removed file opens the new one and waits again.
    """
    waited = False
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "ab")  # noqa: SIM115 - held until _release
        except OSError as exc:
            logger.debug("cannot create the build lock %s (%s): building without it", path, exc.strerror or exc)
            return None
        try:
            waited = _lock(handle, entry, waited)
        except OSError as exc:  # a file system without locks
            handle.close()
            logger.debug("cannot lock %s (%s): building without it", path, exc.strerror or exc)
            return None
        if _same_file(handle, path):
            return handle
        handle.close()


def _lock(handle: IO[bytes], entry: Path, waited: bool) -> bool:
    """Take an exclusive ``flock`` on ``handle``, saying (once) when another process holds it; whether it waited."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return waited
    except BlockingIOError:
        if not waited:
            logger.info("waiting for another process building the decode cache entry %s", entry)
        fcntl.flock(handle, fcntl.LOCK_EX)
        return True


def _same_file(handle: IO[bytes], path: Path) -> bool:
    """Whether ``path`` still names the file ``handle`` has open (its holder removes it when done)."""
    try:
        now = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(handle.fileno())
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def _release(path: Path, handle: IO[bytes]) -> None:
    """Remove the lock file, then unlock: waiters on it retry on a fresh one, so none is left behind."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # left behind: harmless, the next builder locks it again
    handle.close()


def _build_entry(
    entry: Path, key: str, image_list: ImageList, size: int, decoder: str, num_workers: int,
    strict: bool = False,
) -> DecodedImages:
    entry.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(entry.parent)
    n, image_bytes = len(image_list), 3 * size * size
    evict(entry.parent.parent, max_cache_bytes(), incoming=n * image_bytes, keep={entry})
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".tmp-{entry.name}-"))
    lock = _own(tmp)
    try:
        start = time.perf_counter()
        decoded = _decoded(image_list, size, decoder, num_workers, strict)
        ok, failures, chunk, crcs = _write_array(tmp / _ARRAY, decoded, n, image_bytes)
        if not ok:
            raise no_image_decodes(image_list, failures)
        skipped = sorted(failures)
        meta = {
            "format": FORMAT_VERSION, "key": key, "root": str(image_list.root.resolve()),
            "image_size": size, "decoder": decoder, "resize": DECODERS[decoder],
            "total": n, "count": len(ok), "skipped": skipped,
            "skipped_files": [_relative_name(image_list.files[i], image_list.root) for i in skipped],
            "skipped_reasons": [failures[i] for i in skipped],
            "build_seconds": round(time.perf_counter() - start, 3), "created": time.time(),
        }
        meta_bytes = json.dumps(meta, indent=1).encode()
        _write_synced(tmp / _META, meta_bytes)
        marker = {"count": len(ok), "total": n, "array_bytes": len(ok) * image_bytes,
                  "meta_sha256": _sha256(meta_bytes), "chunk_images": chunk, "chunk_crc32": crcs}
        _write_synced(tmp / _MARKER, json.dumps(marker).encode())  # last: marks it whole
        (tmp / _LOCK).unlink()
        for _ in range(3):
            if _publish(tmp, entry):
                logger.info("decode cache built: %s (%d images, %.1f s)",
                            entry, len(ok), meta["build_seconds"])
            # Whoever won the rename, the entry is checked like any other.
            result = _open_entry(entry, key, image_list, size, strict)
            if result is not None:
                return result
        raise DataError(f"decode cache {entry} keeps being replaced by other runs; run again.")
    finally:
        lock.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_array(path: Path, decoded: Iterator[tuple[Tensor | None, int, str | None]], n: int,
                 image_bytes: int) -> tuple[list[int], dict[int, str], int, list[int]]:
    """Write the decoded images front to back into ``path``, a CRC-32 per chunk.

    Space for all ``n`` images is reserved first, so a disk that cannot hold
    them fails at once; ``os.write`` turns any later shortage into an
    ``OSError`` (never a ``SIGBUS``, as filling a memory map would).

    Returns:
        The indices that decoded, the reasons of those that did not, the
        images per chunk and each chunk's CRC-32.
    """
    chunk = max(1, _CHUNK_BYTES // image_bytes)
    buffer = bytearray(chunk * image_bytes)
    ok: list[int] = []
    failures: dict[int, str] = {}
    crcs: list[int] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _reserve(fd, n * image_bytes)
        filled = 0
        for image, index, reason in decoded:
            if image is None:
                failures[index] = reason or "does not decode"
                continue
            start = filled * image_bytes
            buffer[start: start + image_bytes] = memoryview(image.contiguous().numpy()).cast("B")
            ok.append(index)
            filled += 1
            if filled == chunk:
                crcs.append(_write_chunk(fd, memoryview(buffer)))
                filled = 0
        if filled:
            crcs.append(_write_chunk(fd, memoryview(buffer)[: filled * image_bytes]))
        os.ftruncate(fd, len(ok) * image_bytes)  # give back what skipped images had reserved
        os.fsync(fd)
    finally:
        os.close(fd)
    return ok, failures, chunk, crcs


def _reserve(fd: int, nbytes: int) -> None:
    """Allocate ``nbytes`` for the file now (``ENOSPC`` here, not halfway)."""
    if nbytes == 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise
        # Not supported by this file system: os.write still reports a full disk.


def _write_chunk(fd: int, data: memoryview) -> int:
    done = 0
    while done < len(data):
        done += os.write(fd, data[done:])
    return zlib.crc32(data)


def _own(tmp: Path) -> IO[bytes]:
    """Hold an exclusive lock on ``tmp/.lock`` while building: it marks the folder as alive.

    The kernel releases the lock when this process dies, however it dies, so
    the next run removes the half-built folder at once instead of a day later.
    """
    handle = open(tmp / _LOCK, "wb")  # noqa: SIM115 - held until the build ends
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _publish(tmp: Path, entry: Path) -> bool:
    """Rename ``tmp`` to ``entry`` atomically; False when another run published first.

    That other entry holds the same bytes (same key), so it is kept; a broken
    one is discarded by the caller's check and this copy published instead.
    """
    if not tmp.exists():
        return False
    try:
        os.rename(tmp, entry)
        return True
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    logger.info("decode cache %s was built concurrently; using that copy", entry)
    return False


def _discard(entry: Path) -> bool:
    """Remove ``entry``: renamed aside first, so no reader ever sees half of it.

    False (logged) when it cannot be removed, e.g. from a read-only cache folder.
    """
    trash = entry.with_name(f".trash-{entry.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(entry, trash)
    except FileNotFoundError:
        return True  # someone else removed it
    except OSError as exc:
        logger.warning("cannot remove decode cache entry %s (%s)", entry, exc.strerror or exc)
        return False
    shutil.rmtree(trash, ignore_errors=True)
    return True


def _remove_leftovers(folder: Path, older_than_s: float = _LEFTOVER_AGE_S) -> int:
    """Delete half-built folders of dead runs and discarded entries; how many went.

    A building run holds a lock in its temporary folder: a folder whose lock
    can be taken belongs to a run that died, and goes at once. A folder
    without a lock (a run of an older version, or one just being created) goes
    when it is older than ``older_than_s``.
    """
    removed = 0
    for path in folder.glob(".*-*"):
        if path.name.startswith(".trash-"):
            shutil.rmtree(path, ignore_errors=True)  # renamed aside to be deleted: nobody reads it
            removed += 1
        elif path.name.startswith(".tmp-") and _abandoned(path, older_than_s):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def _abandoned(tmp: Path, older_than_s: float) -> bool:
    try:
        handle = open(tmp / _LOCK, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        try:
            return tmp.stat().st_mtime < time.time() - older_than_s
        except FileNotFoundError:
            return False
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # its run is alive
        return True


def _decoded(image_list: ImageList, size: int, decoder: str, num_workers: int,
             strict: bool) -> Iterator[tuple[Tensor | None, int, str | None]]:
    """``(image, index, reason)`` per file in order, with the chosen decoder."""
    if decoder == "pil":
        # Same dataset as data.decode_images, so both give identical bytes.
        yield from iter_decoded(image_list, size, num_workers, strict)
        return
    for image, index, reason in _decode_nvjpeg(image_list, size):
        if reason is not None and strict:
            raise strict_error(Skipped(image_list.files[index], reason), image_list.root)
        yield image, index, reason


def _decode_nvjpeg(image_list: ImageList, size: int,
                   batch: int = 64) -> Iterator[tuple[Tensor | None, int, str | None]]:
    """Decode JPEGs on the GPU in batches; other formats (and failures) one by one."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    device = torch.device("cuda")
    files = image_list.files
    for start in range(0, len(files), batch):
        indices = range(start, min(start + batch, len(files)))
        datas: list[Tensor | str] = [_read_bytes(files[i]) for i in indices]
        jpeg = [i for i in indices if files[i].suffix.lower() in (".jpg", ".jpeg")
                and isinstance(datas[i - start], Tensor)]
        decoded: dict[int, Tensor | str] = {}
        if jpeg:
            try:
                images = decode_jpeg([datas[i - start] for i in jpeg], mode=ImageReadMode.RGB,
                                     device=device, apply_exif_orientation=True)
                decoded.update(zip(jpeg, images))
            except RuntimeError:
                pass  # one bad file fails the batch: retry each below
        for i in indices:
            if i not in decoded:
                decoded[i] = _decode_one(datas[i - start], device, decode_image, ImageReadMode)
            image = decoded[i]
            if isinstance(image, str):
                yield None, i, image
            else:
                yield _resize_crop(image, size).cpu(), i, None


def _read_bytes(path: Path) -> Tensor | str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    if not data:
        return "empty file (0 bytes)"
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _decode_one(data: Tensor | str, device: torch.device, decode_image: Any, mode: Any) -> Tensor | str:
    if isinstance(data, str):
        return data
    try:
        return decode_image(data, mode=mode.RGB, apply_exif_orientation=True).to(device)
    except RuntimeError as exc:
        return f"does not decode ({str(exc).splitlines()[0] if str(exc) else 'RuntimeError'})"


def _resize_crop(image: Tensor, size: int) -> Tensor:
    """Shorter side to ``size`` (antialiased bilinear), then the centre square."""
    import torch.nn.functional as F

    height, width = image.shape[-2:]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    resized = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear",
                            antialias=True, align_corners=False)[0]
    top, left = (new_h - size) // 2, (new_w - size) // 2
    crop = resized[:, top: top + size, left: left + size]
    return crop.round().clamp(0, 255).to(torch.uint8)


# -- managing entries (selfsup cache) ----------------------------------------------------


@dataclass(frozen=True)
class CacheEntry:
    """One entry of the decode cache, as ``selfsup cache list`` shows it.

    Attributes:
        path: The entry's folder.
        folder: The data folder it was decoded from (``""`` when unreadable).
        image_size: Side of its images.
        images: Images it holds.
        skipped: Files of the folder that are not in it.
        bytes: Disk space of the entry.
        created: When it was built (seconds since the epoch).
        last_used: When a run last opened it.
        complete: Whether its marker and metadata are there and readable.
    """

    path: Path
    folder: str
    image_size: int
    images: int
    skipped: int
    bytes: int
    created: float
    last_used: float
    complete: bool


def list_entries(cache_dir: str | os.PathLike[str] | None = None) -> list[CacheEntry]:
    """Every entry under ``cache_dir`` (default :func:`default_cache_dir`), least recently used first.

    Reads only the metadata: see :func:`verify_entry` for the checksums.
    """
    decoded = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser() / "decoded"
    if not decoded.is_dir():
        return []
    found = [_describe(path) for path in decoded.iterdir() if not path.name.startswith(".") and path.is_dir()]
    return sorted(found, key=lambda e: (e.last_used, e.path.name))


def _describe(path: Path) -> CacheEntry:
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    marker = path / _MARKER
    try:
        meta = json.loads((path / _META).read_text())
        last_used = marker.stat().st_mtime
        return CacheEntry(path, str(meta.get("root", "")), int(meta.get("image_size", 0)),
                          int(meta.get("count", 0)), len(meta.get("skipped", [])), size,
                          float(meta.get("created", last_used)), last_used, True)
    except (OSError, ValueError, TypeError, AttributeError):
        mtime = path.stat().st_mtime
        return CacheEntry(path, "", 0, 0, 0, size, mtime, mtime, False)


def verify_entry(entry: CacheEntry | str | os.PathLike[str]) -> str | None:
    """Check every checksum of an entry (reads all of it): ``None`` when whole, else what is wrong."""
    path = entry.path if isinstance(entry, CacheEntry) else Path(entry)
    try:
        _check_entry(path)
    except CorruptCacheError as exc:
        return str(exc)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return None


def remove_entry(entry: CacheEntry | str | os.PathLike[str]) -> bool:
    """Delete one entry (renamed aside first: runs that have it open keep their mapping)."""
    return _discard(entry.path if isinstance(entry, CacheEntry) else Path(entry))


def clear_entries(cache_dir: str | os.PathLike[str] | None = None, *, older_than_days: float | None = None,
                  max_bytes: float | None = None) -> list[CacheEntry]:
    """Remove entries; those removed, oldest use first.

    With neither limit, every entry goes. ``older_than_days``: those not used
    for that long. ``max_bytes``: the least recently used, until the rest fit.
    Half-built folders of dead runs go too.
    """
    root = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser()
    if (root / "decoded").is_dir():
        _remove_leftovers(root / "decoded")
    entries = list_entries(root)
    if older_than_days is None and max_bytes is None:
        doomed = entries
    else:
        doomed = []
        if older_than_days is not None:
            cutoff = time.time() - older_than_days * 86400
            doomed = [e for e in entries if e.last_used < cutoff]
        if max_bytes is not None:
            doomed += _over_cap([e for e in entries if e not in doomed], max_bytes)
    return [e for e in doomed if remove_entry(e)]


def evict(cache_dir: Path, max_bytes: float, incoming: int = 0, keep: set[Path] | frozenset[Path] = frozenset()
          ) -> list[CacheEntry]:
    """Remove least recently used entries until the rest plus ``incoming`` bytes fit ``max_bytes``.

    Entries in ``keep`` stay even when they alone exceed the cap. Runs that
    have an evicted entry open keep reading it (the files stay until unmapped).
    """
    if max_bytes == float("inf"):
        return []
    candidates = [e for e in list_entries(cache_dir) if e.path not in keep]
    kept_bytes = sum(e.bytes for e in list_entries(cache_dir) if e.path in keep)
    removed = [e for e in _over_cap(candidates, max_bytes - incoming - kept_bytes) if remove_entry(e)]
    for e in removed:
        logger.info("decode cache over %s = %.1f GB: evicted %s (%.1f MB, last used %s)", MAX_GB_ENV,
                    max_bytes / 1e9, e.path.name, e.bytes / 1e6, time.strftime("%Y-%m-%d", time.localtime(e.last_used)))
    return removed


def _over_cap(entries: list[CacheEntry], max_bytes: float) -> list[CacheEntry]:
    """The least recently used of ``entries`` to drop so the rest hold at most ``max_bytes``."""
    total = sum(e.bytes for e in entries)
    doomed = []
    for e in sorted(entries, key=lambda e: e.last_used):
        if total <= max_bytes:
            break
        doomed.append(e)
        total -= e.bytes
    return doomed


def run_command(config: Any) -> int:
    """``selfsup cache list|verify|clear`` (``config``: a :class:`~selfsup_core.config.CacheConfig`)."""
    root = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    entries = list_entries(root)
    if config.action == "list":
        _print_entries(entries, root)
        return 0
    if config.action == "verify":
        bad = 0
        for entry in entries:
            problem = verify_entry(entry)
            print(f"{'ok     ' if problem is None else 'CORRUPT'}  {entry.path.name}"
                  + ("" if problem is None else f": {problem}"))
            if problem is not None:
                bad += 1
                remove_entry(entry)
        print(f"{len(entries)} entries verified in {root}: "
              + (f"{bad} corrupt, removed (the next run that needs one rebuilds it)" if bad else "all whole"))
        return 1 if bad else 0
    max_bytes = None if config.max_gb is None else config.max_gb * 1e9
    removed = clear_entries(root, older_than_days=config.older_than, max_bytes=max_bytes)
    for entry in removed:
        print(f"removed  {entry.path.name}  {_size(entry.bytes)}  {entry.folder}")
    left = list_entries(root)
    print(f"{len(removed)} entries removed ({_size(sum(e.bytes for e in removed))}); "
          f"{len(left)} left ({_size(sum(e.bytes for e in left))}) in {root}")
    return 0


def _print_entries(entries: list[CacheEntry], root: Path) -> None:
    rows = [("entry", "images", "size", "last used", "folder")]
    now = time.time()
    for e in entries:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        days = (now - e.last_used) / 86400
        rows.append((e.path.name, str(e.images) + ("" if e.complete else " (incomplete)"), _size(e.bytes),
                     f"{used} ({days:.0f} d ago)" if days >= 1 else used, e.folder or "?"))
    if entries:
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
    cap = max_cache_bytes()
    cap_text = "no cap" if cap == float("inf") else f"cap {_size(int(cap))}"
    print(f"{len(entries)} entries, {_size(sum(e.bytes for e in entries))} in {root} "
          f"({cap_text}, ${MAX_GB_ENV}; least recently used entries are evicted first)")


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


# -- small helpers ------------------------------------------------------------------


def _resize_method(decoder: str) -> str:
    try:
        return DECODERS[decoder]
    except KeyError:
        raise ConfigError(f"unknown decoder {decoder!r}; choose from {', '.join(DECODERS)}.") from None


def _checked_cache_dir(cache_dir: str | os.PathLike[str] | None, data_root: Path) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    resolved, data = root.resolve(), data_root.resolve()
    if resolved == data or data in resolved.parents:
        raise ConfigError(
            f"the decode cache folder {root} is inside the data folder {data_root}; "
            f"set {CACHE_DIR_ENV} to a folder outside it (or run with --no-cache)."
        )
    return resolved


def _relative_name(path: Path, root: Path) -> str:
    try:  # scan_folder lists files under root: no need to resolve each one
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path.resolve())


def _safe_name(root: Path) -> str:
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in root.resolve().name)
    return name[:40] or "data"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
