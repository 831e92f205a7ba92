"""Decoded images in memory, and the seeded subsets and splits taken from them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from selfsup_core.data.files import ImageFileDataset, ImageList
from selfsup_core.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


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
