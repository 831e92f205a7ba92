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
        meta.json    # key inputs, skipped files, timings
        COMPLETE     # written last: counts, array size, checksums

It is built in a temporary sibling folder and published with one atomic
rename, so readers see a whole entry or none. An entry whose marker is
missing, whose metadata does not match its checksum or whose array has the
wrong size is logged, deleted and rebuilt, never used.

Example:
    >>> from selfsup_core.data import scan_folder
    >>> data = load_decoded(scan_folder("photos"), size=64)  # doctest: +SKIP
    >>> data.images.shape  # doctest: +SKIP
    torch.Size([1200, 3, 64, 64])
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from selfsup_core.data.decoded import DecodedImages, decode_images
from selfsup_core.data.files import ImageFileDataset, ImageList
from selfsup_core.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bump when the layout of an entry or the decoding changes: old entries are then ignored."""

CACHE_DIR_ENV = "SELFSUP_CACHE_DIR"

#: Decoder name -> resize method; both go into the key.
DECODERS: dict[str, str] = {
    # selfsup_core.data.load_image: PIL draft, EXIF transpose, RGB, bilinear, centre crop.
    "pil": "pil-draft-exif-rgb-bilinear-shorter-side-centre-crop",
    # _decode_nvjpeg: nvJPEG on the GPU, EXIF, RGB, antialiased bilinear, centre crop.
    "nvjpeg": "torchvision-exif-rgb-bilinear-antialias-shorter-side-centre-crop",
}

_ARRAY, _META, _MARKER = "images.u8", "meta.json", "COMPLETE"
_SAMPLES = 16  # images hashed into the marker: catches garbage without reading it all
_LEFTOVER_AGE_S = 24 * 3600  # a temporary folder this old belongs to a run that died


def default_cache_dir() -> Path:
    """Where entries live: ``$SELFSUP_CACHE_DIR``, else the user's cache folder.

    The user's cache folder is ``$XDG_CACHE_HOME/selfsup``, or
    ``~/.cache/selfsup`` when that variable is unset.
    """
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "selfsup"


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
) -> DecodedImages:
    """Every image of ``image_list`` as uint8 ``(3, size, size)``, decoded once.

    With ``cache`` the images come from the decode cache (built on the first
    call, memory-mapped after that); without it they are decoded into RAM.
    Either way the result holds the same images, labels and order as
    :func:`selfsup_core.data.decode_images` for the same decoder. Files that
    do not decode are left out, listed in ``skipped`` and reported (also on
    cache hits). A cache folder that cannot be written is logged and the
    images decoded into RAM instead.

    Args:
        image_list: The files (from :func:`selfsup_core.data.scan_folder`).
        size: Side of the square images.
        num_workers: Decoding processes for the first pass.
        cache: Use (and fill) the decode cache.
        cache_dir: Where entries live; default :func:`default_cache_dir`.
            Must not be inside the data folder.
        decoder: ``"pil"`` (CPU) or ``"nvjpeg"`` (``torchvision.io.decode_jpeg``
            on the current CUDA device; needs a GPU).

    Raises:
        DataError: No image decodes, or a file cannot be read.
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
    if not cache:
        if decoder == "pil":
            return decode_images(image_list, size, num_workers)
        images = torch.empty((len(image_list), 3, size, size), dtype=torch.uint8)
        ok = _decode_into(images, image_list, size, decoder, num_workers)
        return _assemble(image_list, images[: len(ok)], ok)

    root = _checked_cache_dir(cache_dir, image_list.root)
    key = cache_key(image_list, size, decoder)
    entry = root / "decoded" / f"{_safe_name(image_list.root)}-{size}px-{decoder}-{key[:24]}"
    loaded = _open_entry(entry, key, image_list, size)
    if loaded is not None:
        logger.info("decode cache hit: %s (%d images)", entry, len(loaded))
        return loaded
    try:
        return _build_entry(entry, key, image_list, size, decoder, num_workers)
    except OSError as exc:  # a read-only or full cache folder must not stop the run
        logger.warning("cannot write the decode cache under %s (%s): decoding into memory instead; "
                       "set %s to a writable folder", root, exc, CACHE_DIR_ENV)
        return load_decoded(image_list, size, num_workers, cache=False, decoder=decoder)


# -- reading -----------------------------------------------------------------------


class CorruptCacheError(Exception):
    """An entry that exists but must not be used (internal: triggers a rebuild)."""


def _open_entry(entry: Path, key: str, image_list: ImageList, size: int) -> DecodedImages | None:
    """The entry's images, ``None`` when absent; a corrupt entry is logged and removed."""
    if not entry.exists():
        return None
    try:
        return _read_entry(entry, key, image_list, size)
    except CorruptCacheError as exc:
        logger.warning("decode cache %s is corrupt (%s): rebuilding it", entry, exc)
        _discard(entry)
        return None


def _read_entry(entry: Path, key: str, image_list: ImageList, size: int) -> DecodedImages:
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
        count, skipped = int(meta["count"]), [int(i) for i in meta["skipped"]]
        matches = (meta["key"] == key and meta["format"] == FORMAT_VERSION
                   and meta["total"] == len(image_list) == count + len(skipped))
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptCacheError(f"unreadable metadata: {exc!r}") from exc
    if not matches:
        raise CorruptCacheError("metadata describes other files")
    array = entry / _ARRAY
    expected = count * 3 * size * size
    actual = array.stat().st_size if array.exists() else -1
    if actual != expected:
        raise CorruptCacheError(f"{_ARRAY} holds {actual} bytes, expected {expected}")
    images = _map(array, count, size, writable=False)
    if marker.get("sample_sha256") != _sample_digest(images):
        raise CorruptCacheError(f"{_ARRAY} does not match its checksum")
    left_out = set(skipped)
    ok = [i for i in range(len(image_list)) if i not in left_out]
    return _assemble(image_list, images, ok)


def _map(path: Path, count: int, size: int, writable: bool) -> Tensor:
    """Memory-map ``path`` as ``(count, 3, size, size)`` uint8.

    Read-only maps are private (copy-on-write), so an in-place edit by a
    caller never reaches the file that other runs read.
    """
    nbytes = count * 3 * size * size
    if nbytes == 0:
        return torch.empty((0, 3, size, size), dtype=torch.uint8)
    flat = torch.from_file(str(path), shared=writable, size=nbytes, dtype=torch.uint8)
    return flat.view(count, 3, size, size)


def _assemble(image_list: ImageList, images: Tensor, ok: list[int]) -> DecodedImages:
    """Labels and skipped files for the decoded ``images`` (the files at ``ok``)."""
    good = set(ok)
    skipped = tuple(f for i, f in enumerate(image_list.files) if i not in good)
    if skipped:
        logger.warning("%d of %d images did not decode and were skipped", len(skipped), len(image_list))
    labels = None
    if image_list.labels is not None:
        labels = torch.tensor([image_list.labels[i] for i in ok], dtype=torch.long)
    return DecodedImages(images, labels, image_list.classes, skipped)


# -- building ----------------------------------------------------------------------


def _build_entry(
    entry: Path, key: str, image_list: ImageList, size: int, decoder: str, num_workers: int
) -> DecodedImages:
    entry.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(entry.parent)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".tmp-{entry.name}-"))
    try:
        start = time.perf_counter()
        n = len(image_list)
        array = tmp / _ARRAY
        with open(array, "wb") as handle:
            handle.truncate(n * 3 * size * size)  # sparse until written
        out = _map(array, n, size, writable=True)
        ok = _decode_into(out, image_list, size, decoder, num_workers)
        digest = _sample_digest(out[: len(ok)])
        del out  # unmap before shrinking the file to the images that decoded
        with open(array, "r+b") as handle:
            handle.truncate(len(ok) * 3 * size * size)
            os.fsync(handle.fileno())
        if not ok:
            raise DataError(f"none of the {n} images under {image_list.root} decodes.")
        good = set(ok)
        skipped = [i for i in range(n) if i not in good]
        meta = {
            "format": FORMAT_VERSION, "key": key, "root": str(image_list.root.resolve()),
            "image_size": size, "decoder": decoder, "resize": DECODERS[decoder],
            "total": n, "count": len(ok), "skipped": skipped,
            "skipped_files": [_relative_name(image_list.files[i], image_list.root) for i in skipped],
            "build_seconds": round(time.perf_counter() - start, 3), "created": time.time(),
        }
        meta_bytes = json.dumps(meta, indent=1).encode()
        _write_synced(tmp / _META, meta_bytes)
        marker = {"count": len(ok), "total": n, "array_bytes": len(ok) * 3 * size * size,
                  "meta_sha256": _sha256(meta_bytes), "sample_sha256": digest}
        _write_synced(tmp / _MARKER, json.dumps(marker).encode())  # last: marks it whole
        for _ in range(3):
            if _publish(tmp, entry):
                logger.info("decode cache built: %s (%d images, %.1f s)",
                            entry, len(ok), meta["build_seconds"])
            # Whoever won the rename, the entry is checked like any other.
            result = _open_entry(entry, key, image_list, size)
            if result is not None:
                return result
        raise DataError(f"decode cache {entry} keeps being replaced by other runs; run again.")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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


def _discard(entry: Path) -> None:
    """Remove ``entry``: renamed aside first, so no reader ever sees half of it."""
    trash = entry.with_name(f".trash-{entry.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(entry, trash)
    except FileNotFoundError:
        return  # someone else removed it
    shutil.rmtree(trash, ignore_errors=True)


def _remove_leftovers(folder: Path, older_than_s: float = _LEFTOVER_AGE_S) -> None:
    """Delete half-built or discarded entries of runs that were killed long ago."""
    cutoff = time.time() - older_than_s
    for path in folder.glob(".*-*"):
        if path.name.startswith((".tmp-", ".trash-")):
            try:
                if path.stat().st_mtime < cutoff:
                    shutil.rmtree(path, ignore_errors=True)
            except FileNotFoundError:
                pass


def _decode_into(out: Tensor, image_list: ImageList, size: int, decoder: str,
                 num_workers: int) -> list[int]:
    """Decode into ``out`` front to back, skipping failures; the indices that decoded."""
    ok: list[int] = []
    decoded = (_decode_pil(image_list, size, num_workers) if decoder == "pil"
               else _decode_nvjpeg(image_list, size))
    for image, index in decoded:
        if image is not None:
            out[len(ok)] = image
            ok.append(index)
    return ok


def _decode_pil(image_list: ImageList, size: int, num_workers: int) -> Iterator[tuple[Tensor | None, int]]:
    # Same dataset as data.decode_images, so both give identical bytes.
    loader = torch.utils.data.DataLoader(
        ImageFileDataset(image_list.files, size), batch_size=64,
        num_workers=num_workers, collate_fn=list,
    )
    for chunk in loader:
        yield from chunk


def _decode_nvjpeg(image_list: ImageList, size: int, batch: int = 64) -> Iterator[tuple[Tensor | None, int]]:
    """Decode JPEGs on the GPU in batches; other formats (and failures) one by one."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file

    device = torch.device("cuda")
    files = image_list.files
    for start in range(0, len(files), batch):
        indices = range(start, min(start + batch, len(files)))
        datas = [read_file(str(files[i])) for i in indices]
        jpeg = [i for i in indices if files[i].suffix.lower() in (".jpg", ".jpeg")]
        decoded: dict[int, Tensor | None] = {}
        if jpeg:
            try:
                images = decode_jpeg([datas[i - start] for i in jpeg], mode=ImageReadMode.RGB,
                                     device=device, apply_exif_orientation=True)
                decoded.update(zip(jpeg, images))
            except RuntimeError:
                pass  # one bad file fails the batch: retry each below
        for i in indices:
            if i not in decoded:
                decoded[i] = _decode_one(datas[i - start], files[i], device, decode_image, ImageReadMode)
            image = decoded[i]
            yield (None if image is None else _resize_crop(image, size).cpu()), i


def _decode_one(data: Tensor, path: Path, device: torch.device, decode_image: Any,
                mode: Any) -> Tensor | None:
    try:
        return decode_image(data, mode=mode.RGB, apply_exif_orientation=True).to(device)
    except RuntimeError as exc:
        logger.warning("skipping %s: does not decode (%s)", path, exc)
        return None


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
            f"set {CACHE_DIR_ENV} (or --cache-dir) to a folder outside it."
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


def _sample_digest(images: Tensor) -> str:
    """SHA-256 of up to :data:`_SAMPLES` evenly spaced images (first and last included)."""
    digest = hashlib.sha256()
    if len(images):
        picks = torch.linspace(0, len(images) - 1, min(len(images), _SAMPLES)).round().long()
        sample = images[picks].contiguous()
        digest.update(ctypes.string_at(sample.data_ptr(), sample.numel()))
    return digest.hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
