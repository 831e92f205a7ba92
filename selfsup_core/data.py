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

from selfsup_core.errors import ConfigError, DataError

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


@dataclass
class DecodedImages:
    """A whole data set decoded to memory.

    Attributes:
        images: ``(N, 3, S, S)`` uint8.
        labels: ``(N,)`` int64 class indices, or ``None``.
        classes: Class names.
        skipped: Files that did not decode (already left out of ``images``).
    """

    images: Tensor
    labels: Tensor | None
    classes: tuple[str, ...] = ()
    skipped: tuple[Path, ...] = ()

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, indices: Tensor | Sequence[int]) -> DecodedImages:
        """The images at ``indices``, in that order."""
        index = torch.as_tensor(indices, dtype=torch.long)
        labels = None if self.labels is None else self.labels[index]
        return DecodedImages(self.images[index], labels, self.classes, self.skipped)


def decode_images(image_list: ImageList, size: int, num_workers: int = 0) -> DecodedImages:
    """Decode every image of ``image_list`` once, in worker processes.

    Files that do not decode are skipped, counted and logged; if none
    decodes, :class:`DataError` is raised.
    """
    dataset = ImageFileDataset(image_list.files, size)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=64, num_workers=num_workers, collate_fn=list
    )
    images = torch.empty((len(dataset), 3, size, size), dtype=torch.uint8)
    ok = torch.zeros(len(dataset), dtype=torch.bool)
    for chunk in loader:
        for image, index in chunk:
            if image is not None:
                images[index] = image
                ok[index] = True
    skipped = tuple(f for f, good in zip(image_list.files, ok.tolist()) if not good)
    if skipped:
        logger.warning("%d of %d images did not decode and were skipped", len(skipped), len(dataset))
    if not ok.any():
        raise DataError(f"none of the {len(dataset)} images under {image_list.root} decodes.")
    labels = None
    if image_list.labels is not None:
        labels = torch.tensor(image_list.labels, dtype=torch.long)[ok]
    return DecodedImages(images[ok], labels, image_list.classes, skipped)


def stratified_subset(
    n: int, labels: Tensor | Sequence[int] | None, count: int | None = None,
    fraction: float | None = None, seed: int = 0,
) -> Tensor:
    """Seeded indices of a subset, stratified by class when labels exist.

    Give either ``count`` (total size) or ``fraction``. Each class keeps a
    share proportional to its size, and at least one image. Indices come
    back sorted, so the subset keeps the data set's order.

    Example:
        >>> stratified_subset(6, [0, 0, 0, 1, 1, 1], fraction=0.34, seed=0).tolist()  # doctest: +SKIP
        [1, 4]
    """
    if (count is None) == (fraction is None):
        raise ValueError("give exactly one of count and fraction")
    generator = torch.Generator().manual_seed(seed)
    if labels is None:
        take = count if count is not None else round(n * float(fraction))  # type: ignore[arg-type]
        take = max(1, min(n, take))
        return torch.randperm(n, generator=generator)[:take].sort().values
    labels = torch.as_tensor(labels)
    share = (count / n) if count is not None else float(fraction)  # type: ignore[operator]
    chosen = []
    for cls in labels.unique().tolist():
        members = (labels == cls).nonzero().flatten()
        take = max(1, min(len(members), round(len(members) * share)))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:take]])
    return torch.cat(chosen).sort().values


def check_label_fraction(fraction: float) -> None:
    """Raise :class:`ConfigError` unless ``0 < fraction <= 1``."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"--label-fraction must be in (0, 1], got {fraction}.")


def label_subset(train: DecodedImages, fraction: float, seed: int) -> DecodedImages:
    """The seeded, class-balanced share of labelled ``train`` that fine-tuning and
    evaluation train on (the whole set when ``fraction`` is 1)."""
    check_label_fraction(fraction)
    if fraction == 1:
        return train
    if train.labels is None:
        raise DataError("a label fraction needs labelled images (one sub-folder per class).")
    return train.subset(stratified_subset(len(train), train.labels, fraction=fraction, seed=seed))


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded train/validation split of ``range(n)``; both parts sorted."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"val fraction must be in [0, 1), got {val_fraction}.")
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(n * val_fraction)
    if val_fraction > 0:
        n_val = max(1, min(n - 1, n_val))
    return permutation[n_val:].sort().values, permutation[:n_val].sort().values
