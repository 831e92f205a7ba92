"""Where a run's images come from: the built-in glyphs or a folder.

One function per job turns the user's choices (``--data``, ``--limit``,
``--val-fraction``...) into decoded train and validation sets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from selfsup_core.data.cache import load_decoded
from selfsup_core.data.decoded import DecodedImages, split_indices, stratified_subset
from selfsup_core.data.files import ImageList, scan_folder
from selfsup_core.data.glyphs import builtin_split
from selfsup_core.errors import DataError

logger = logging.getLogger(__name__)


@dataclass
class Split:
    """Train and validation images of one run, and where they came from."""

    train: DecodedImages
    val: DecodedImages | None
    source: str


def decode(image_list: ImageList, size: int, num_workers: int, cache: bool = True) -> DecodedImages:
    """Decode ``image_list`` at ``size`` (the one place runs turn files into tensors)."""
    return load_decoded(image_list, size, num_workers=num_workers, cache=cache)


def limited(image_list: ImageList, limit: int | None, seed: int) -> ImageList:
    """A seeded subset of ``limit`` files (class-stratified where labels exist), or all of them."""
    if limit is None or limit >= len(image_list):
        return image_list
    if limit < 1:
        raise DataError(f"--limit must be at least 1, got {limit}.")
    return image_list.subset(stratified_subset(len(image_list), image_list.labels, count=limit, seed=seed).tolist())


def load_split(
    data: str | None,
    size: int,
    *,
    val_data: str | None = None,
    val_fraction: float = 0.1,
    limit: int | None = None,
    labelled: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    cache: bool = True,
) -> Split:
    """Decoded train/validation images for a run.

    Args:
        data: A folder, or ``None`` for the built-in glyph data set (its own
            train and val splits).
        size: Square image size.
        val_data: A separate validation folder; otherwise ``val_fraction`` of
            ``data`` is held out (seeded).
        limit: Use a seeded subset of this many training images (stratified
            by class where labels exist).
        labelled: Require class sub-folders (fine-tuning).
    """
    if data is None:
        train = builtin_split("train", size, limit)
        # --limit shrinks both built-in splits, keeping smoke runs quick.
        val = builtin_split("val", size, limit) if val_fraction > 0 or val_data else None
        return Split(train, val, "built-in glyphs")
    images = limited(scan_folder(data, labelled=labelled), limit, seed)
    if val_data is not None:
        val_list = scan_folder(val_data, labelled=labelled)
        if labelled and val_list.classes != images.classes:
            raise DataError(
                f"classes of {val_data} ({len(val_list.classes)}) differ from those of "
                f"{data} ({len(images.classes)}): both need the same class sub-folders."
            )
        return Split(
            decode(images, size, num_workers, cache), decode(val_list, size, num_workers, cache), data
        )
    decoded = decode(images, size, num_workers, cache)
    if val_fraction <= 0:
        return Split(decoded, None, data)
    if len(decoded) < 2:
        raise DataError(f"{data} has {len(decoded)} usable image: too few to hold some out.")
    train_idx, val_idx = split_indices(len(decoded), val_fraction, seed)
    return Split(decoded.subset(train_idx), decoded.subset(val_idx), data)
