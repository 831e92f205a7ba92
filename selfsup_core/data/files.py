"""Image folders: listing, decoding to uint8, subsets and splits.

Worker processes only decode and resize; everything random happens later, on
the device, batch-wise. Images are decoded once per run (see
:func:`decode_images`) and sampled from memory after that.

Layouts:

* unlabelled: any folder tree of images (``.jpg .jpeg .png .bmp .webp .gif
  .tif .tiff``, any case);
* labelled: torchvision ``ImageFolder`` layout, one sub-folder per class.

Nothing is lost silently: every file that cannot be used (a broken link, a
folder loop, an unsupported or undecodable image, one over the pixel budget)
becomes a :class:`Skipped` record with its path and the reason, and the run
reports them (``strict`` runs fail on the first one instead). Folders are
followed through symbolic links, each real folder once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps, JpegImagePlugin
from torch import Tensor

from selfsup_core.errors import DataError
from selfsup_core.wording import counted

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
"""Decoded (any case). GIF and TIFF: the first frame or page only."""

UNSUPPORTED_IMAGE_EXTENSIONS = frozenset({
    ".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".svg", ".ico", ".psd", ".tga", ".exr", ".hdr",
    ".ppm", ".pgm", ".pbm", ".pnm", ".dng", ".raw", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2",
})
"""Image files that are not read: each is a named skip ("unsupported format"), not silently ignored."""

MAX_PIXELS_ENV = "SELFSUP_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 50_000_000
"""Pixels an image may have once decoded (JPEGs after draft-mode reduction): about
150 MB as RGB. A larger image is a named skip, refused before its pixels are decoded."""

_ORIENTATION = 0x0112  # the EXIF tag

MAX_NAMED = 10
"""Skipped files named in a summary line; the rest are counted (the full list goes to a file)."""


@dataclass(frozen=True)
class Skipped:
    """A file (or folder) that was not used, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class ImageList:
    """Image files found in a folder, with class labels when the layout has them.

    Attributes:
        root: The folder that was scanned.
        files: Image paths, sorted.
        labels: Class index per file, or ``None`` for an unlabelled folder.
        classes: Class names (sub-folder names), index order.
        problems: What the scan could not use: broken links, folder loops,
            unreadable folders, unsupported image formats.
        ignored: Up to :data:`MAX_NAMED` files that are not images (``.txt``...).
        ignored_count: How many such files there are.
        empty_classes: Class folders without a single image file.
    """

    root: Path
    files: tuple[Path, ...]
    labels: tuple[int, ...] | None
    classes: tuple[str, ...] = ()
    problems: tuple[Skipped, ...] = ()
    ignored: tuple[Path, ...] = ()
    ignored_count: int = 0
    empty_classes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, indices: Sequence[int]) -> ImageList:
        """The files at ``indices``, in that order (the scan's problems stay attached)."""
        labels = None if self.labels is None else tuple(self.labels[i] for i in indices)
        return dataclasses.replace(self, files=tuple(self.files[i] for i in indices), labels=labels)


def is_image_file(path: Path) -> bool:
    """True for file names with an image extension (any case)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def scan_folder(root: str | os.PathLike[str], *, labelled: bool = False) -> ImageList:
    """List the images under ``root``, following linked folders (each real folder once).

    Args:
        root: The folder.
        labelled: Require the ``ImageFolder`` layout (class sub-folders).
            Without it, labels are still read when every image sits in a
            first-level sub-folder (they then serve stratified subsets).

    Raises:
        DataError: the folder is missing, empty, has no images, or (when
            ``labelled``) has images outside class sub-folders.
    """
    root = Path(root).expanduser()
    if root.is_file():
        raise DataError(f"{root} is a file, not a folder: give the folder that holds the images.")
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist.")
    walk = _Walk(root)
    files = sorted(walk.files)
    problems = tuple(sorted(walk.problems, key=lambda s: s.path))
    if not files:
        what = "has no image files" if walk.anything else "is empty"
        hint = f"; {describe_skipped(problems, root)}" if problems else ""
        raise DataError(
            f"data folder {root} {what}: expected {', '.join(sorted(IMAGE_EXTENSIONS))} files"
            + (" in one sub-folder per class" if labelled else "") + hint + "."
        )
    top_level = [p.relative_to(root).parts for p in files]
    in_class_dirs = all(len(parts) >= 2 for parts in top_level)
    if labelled and not in_class_dirs:
        loose = next(root / parts[0] for parts in top_level if len(parts) < 2)
        raise DataError(
            f"data folder {root} needs one sub-folder per class (ImageFolder layout), "
            f"but {loose.name} lies directly in it."
        )
    ignored = tuple(sorted(walk.ignored)[:MAX_NAMED])
    common = {"problems": problems, "ignored": ignored, "ignored_count": len(walk.ignored)}
    if walk.ignored:
        logger.info("%s under %s ignored: not images, e.g. %s", counted(len(walk.ignored), "file"),
                    root, ", ".join(_relative(p, root) for p in ignored[:3]))
    if not in_class_dirs:
        return ImageList(root, tuple(files), None, **common)
    classes = sorted({parts[0] for parts in top_level})
    empty = tuple(sorted(set(walk.top_folders) - set(classes)))
    if empty:
        logger.warning("class folder%s %s under %s hold%s no image file: left out",
                       "s" if len(empty) > 1 else "", ", ".join(empty), root, "" if len(empty) > 1 else "s")
    index = {name: i for i, name in enumerate(classes)}
    labels = tuple(index[parts[0]] for parts in top_level)
    return ImageList(root, tuple(files), labels, tuple(classes), empty_classes=empty, **common)


class _Walk:
    """One scan of a folder tree, following symbolic links to folders without looping."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: list[Path] = []
        self.problems: list[Skipped] = []
        self.ignored: list[Path] = []
        self.top_folders: list[str] = []  # first-level folders (candidate classes)
        self.anything = False
        real = root.stat()
        self._seen: dict[tuple[int, int], Path] = {(real.st_dev, real.st_ino): root}
        self._visit(root, ((real.st_dev, real.st_ino),))

    def _visit(self, folder: Path, ancestors: tuple[tuple[int, int], ...]) -> None:
        stack = [(folder, ancestors)]
        while stack:
            folder, ancestors = stack.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as exc:
                self.problems.append(Skipped(folder, f"cannot list folder ({exc.strerror or exc})"))
                continue
            for entry in entries:
                self.anything = True
                path = Path(entry.path)
                try:
                    info = path.stat()  # follows links
                except FileNotFoundError:
                    if entry.is_symlink():
                        self.problems.append(Skipped(path, f"broken link to {os.readlink(path)}"))
                    continue  # removed while scanning
                except OSError as exc:
                    self.problems.append(Skipped(path, f"cannot read ({exc.strerror or exc})"))
                    continue
                if entry.is_dir():  # follows links
                    key = (info.st_dev, info.st_ino)
                    if key in ancestors:
                        self.problems.append(Skipped(path, f"folder loop: links back to {self._seen[key]}"))
                        continue
                    if key in self._seen:
                        self.problems.append(Skipped(path, f"same folder as {self._seen[key]}, listed once"))
                        continue
                    self._seen[key] = path
                    if folder == self.root:
                        self.top_folders.append(entry.name)
                    stack.append((path, (*ancestors, key)))
                elif entry.is_file():
                    suffix = path.suffix.lower()
                    if suffix in IMAGE_EXTENSIONS:
                        self.files.append(path)
                    elif suffix in UNSUPPORTED_IMAGE_EXTENSIONS:
                        self.problems.append(Skipped(path, f"unsupported format ({suffix})"))
                    else:
                        self.ignored.append(path)
                else:
                    self.problems.append(Skipped(path, "not a regular file"))


def check_strict(image_list: ImageList) -> None:
    """``strict``: raise :class:`DataError` on the scan's first problem or empty class folder."""
    if image_list.problems:
        first = image_list.problems[0]
        raise strict_error(first, image_list.root, len(image_list.problems))
    if image_list.empty_classes:
        raise DataError(f"--strict: class folder {image_list.root / image_list.empty_classes[0]} holds no "
                        f"image file ({len(image_list.empty_classes)} such folder(s)).")


def strict_error(first: Skipped, root: Path, count: int | None = None) -> DataError:
    """The one-line error of a ``strict`` run, naming the first file it cannot use."""
    more = f" ({count} such files)" if count and count > 1 else ""
    return DataError(f"--strict: cannot use {first.path}: {first.reason}{more}; "
                     f"without --strict such files are skipped and listed.")


def describe_skipped(skipped: Iterable[Skipped], root: Path, total: int | None = None,
                     limit: int = MAX_NAMED, full_list: Path | None = None) -> str:
    """One line: how many files were skipped, the first ``limit`` by name and reason."""
    items = list(skipped)
    shown = "; ".join(f"{_relative(s.path, root)} ({s.reason})" for s in items[:limit])
    rest = f"; and {len(items) - limit} more" if len(items) > limit else ""
    where = f" (full list: {full_list})" if full_list is not None else ""
    files = f"{len(items)} of {counted(total, 'file')}" if total is not None else counted(len(items), "file")
    return f"{files} under {root} skipped: {shown}{rest}{where}"


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


# -- decoding one file ------------------------------------------------------------------


class SkipImage(Exception):
    """A file that must be skipped, with the reason (raised by :func:`load_image`)."""


def max_pixels() -> int:
    """The pixel budget: ``$SELFSUP_MAX_IMAGE_PIXELS``, else :data:`DEFAULT_MAX_PIXELS`."""
    value = os.environ.get(MAX_PIXELS_ENV)
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        return max(1, int(float(value)))
    except ValueError:
        raise DataError(f"{MAX_PIXELS_ENV} must be a number of pixels, got {value!r}.") from None


def _open(path: str | os.PathLike[str]) -> Image.Image:
    """Open (header only). A JPEG above Pillow's bomb limit is opened anyway: draft mode shrinks it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own budget applies
            return Image.open(path)
    except Image.DecompressionBombError as exc:
        with open(path, "rb") as handle:
            if handle.read(3) != b"\xff\xd8\xff":
                claimed = re.search(r"\((\d+) pixels\)", str(exc))
                pixels = f"{int(claimed.group(1)):,} pixels" if claimed else "too many pixels"
                raise SkipImage(f"too large: claims {pixels}, over the {max_pixels():,}-pixel budget "
                                "(a possible decompression bomb; not decoded)") from None
        return JpegImagePlugin.JpegImageFile(os.fspath(path))


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with 16-bit and float grey scaled to 8 bits rather than clipped."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        image = image.convert("I") if image.mode != "I" else image
        if image.getextrema()[1] > 255:  # type: ignore[index, operator]
            image = image.point(lambda v: v / 256)  # 16-bit range
        image = image.convert("L")
    elif image.mode == "F":
        if image.getextrema()[1] <= 1.0:  # type: ignore[index, operator]
            image = image.point(lambda v: v * 255)
        image = image.convert("L")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(path: str | os.PathLike[str], size: int) -> Tensor:
    """Decode one image as a ``(3, size, size)`` uint8 tensor.

    EXIF orientation is applied (a rotation task must not learn the camera's
    tag), the image is converted to RGB (the first frame of a GIF or TIFF;
    alpha dropped; 16-bit grey scaled to 8 bits), resized so its shorter side
    is ``size`` and centre-cropped to a square.

    Memory stays bounded: JPEGs are decoded at a reduced scale (draft mode,
    never below ``size``), and an image with more than :func:`max_pixels`
    pixels left to decode is refused before decoding.

    Raises:
        SkipImage: the image is over the pixel budget.
        OSError, ValueError...: the file does not decode.
    """
    with _open(path) as image:
        # JPEG draft mode decodes at a reduced scale straight away (never below size).
        image.draft("RGB", (size, size))
        width, height = image.size
        budget = max_pixels()
        if width * height > budget:
            raise SkipImage(f"too large: {width} x {height} pixels, over the {budget:,}-pixel budget "
                            f"(${MAX_PIXELS_ENV})")
        if image.getexif().get(_ORIENTATION, 1) != 1:  # exif_transpose copies even when nothing turns
            image = ImageOps.exif_transpose(image)
        image = _to_rgb(image)
        width, height = image.size
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        left, top = (new_w - size) // 2, (new_h - size) // 2
        # Resize only the centre square (the same pixels as resizing all, then cropping):
        # an extreme aspect ratio (2000 x 2) never becomes a huge intermediate image.
        box = (left * width / new_w, top * height / new_h,
               (left + size) * width / new_w, (top + size) * height / new_h)
        image = image.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=None)
        data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(size, size, 3).permute(2, 0, 1).contiguous()


def decode_failure(path: Path, exc: BaseException) -> str:
    """The reason recorded for a file that raised ``exc`` while decoding."""
    if isinstance(exc, SkipImage):
        return str(exc)
    if isinstance(exc, PermissionError):
        return f"cannot read ({exc.strerror or exc})"
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
    except OSError:
        pass
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = text.replace(f"'{path}'", "").replace(str(path), "").strip(" :") or type(exc).__name__
    if "truncated" in text.lower():
        return f"truncated ({text})"
    return f"does not decode ({text})"


class ImageFileDataset(torch.utils.data.Dataset[tuple[Tensor | None, int, str | None]]):
    """Decodes files one by one: ``(image, index, None)``, or ``(None, index, reason)``.

    No exception escapes for one bad file (a decompression bomb, an unreadable
    or truncated file...): it becomes a reason, which the caller reports.
    """

    def __init__(self, files: Sequence[Path], size: int) -> None:
        self.files = list(files)
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor | None, int, str | None]:
        path = self.files[index]
        try:
            return load_image(path, self.size), index, None
        except Exception as exc:  # noqa: BLE001 - every per-file failure is a named skip
            return None, index, decode_failure(path, exc)
