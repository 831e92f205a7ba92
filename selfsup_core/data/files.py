"""Image folders: listing, decoding to uint8, subsets and splits.

Worker processes only decode and resize; everything random happens later, on
the device, batch-wise. Images are decoded once per run (see
:func:`decode_images`) and sampled from memory after that.

Layouts:

* unlabelled: any folder tree of images (``.jpg .jpeg .png .bmp .webp``, any case);
* labelled: torchvision ``ImageFolder`` layout, one sub-folder per class.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from selfsup_core.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


@dataclass(frozen=True)
class ImageList:
    """Image files found in a folder, with class labels when the layout has them.

    Attributes:
        root: The folder that was scanned.
        files: Image paths, sorted.
        labels: Class index per file, or ``None`` for an unlabelled folder.
        classes: Class names (sub-folder names), index order.
    """

    root: Path
    files: tuple[Path, ...]
    labels: tuple[int, ...] | None
    classes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, indices: Sequence[int]) -> ImageList:
        """The files at ``indices``, in that order."""
        labels = None if self.labels is None else tuple(self.labels[i] for i in indices)
        return ImageList(self.root, tuple(self.files[i] for i in indices), labels, self.classes)


def is_image_file(path: Path) -> bool:
    """True for file names with an image extension (any case)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def scan_folder(root: str | os.PathLike[str], *, labelled: bool = False) -> ImageList:
    """List the images under ``root``.

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
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist (or is not a folder).")
    files = sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        anything = next(root.iterdir(), None)
        what = "has no image files" if anything else "is empty"
        raise DataError(
            f"data folder {root} {what}: expected {', '.join(sorted(IMAGE_EXTENSIONS))} files"
            + (" in one sub-folder per class." if labelled else ".")
        )
    top_level = [p.relative_to(root).parts for p in files]
    in_class_dirs = all(len(parts) >= 2 for parts in top_level)
    if labelled and not in_class_dirs:
        loose = next(root / parts[0] for parts in top_level if len(parts) < 2)
        raise DataError(
            f"data folder {root} needs one sub-folder per class (ImageFolder layout), "
            f"but {loose.name} lies directly in it."
        )
    if not in_class_dirs:
        return ImageList(root, tuple(files), None)
    classes = sorted({parts[0] for parts in top_level})
    index = {name: i for i, name in enumerate(classes)}
    labels = tuple(index[parts[0]] for parts in top_level)
    return ImageList(root, tuple(files), labels, tuple(classes))


def load_image(path: str | os.PathLike[str], size: int) -> Tensor:
    """Decode one image as a ``(3, size, size)`` uint8 tensor.

    EXIF orientation is applied (a rotation task must not learn the camera's
    tag), the image is converted to RGB, resized so its shorter side is
    ``size`` and centre-cropped to a square.
    """
    with Image.open(path) as image:
        # JPEG draft mode decodes at a reduced scale straight away (never below size).
        image.draft("RGB", (size, size))
        image = ImageOps.exif_transpose(image).convert("RGB")
        width, height = image.size
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        image = image.crop((left, top, left + size, top + size))
        data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(size, size, 3).permute(2, 0, 1).contiguous()


class ImageFileDataset(torch.utils.data.Dataset[tuple[Tensor | None, int]]):
    """Decodes files one by one; a file that does not decode gives ``None``."""

    def __init__(self, files: Sequence[Path], size: int) -> None:
        self.files = list(files)
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor | None, int]:
        try:
            return load_image(self.files[index], self.size), index
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            logger.warning("skipping %s: does not decode (%s)", self.files[index], exc)
            return None, index
