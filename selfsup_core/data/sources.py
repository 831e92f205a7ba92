"""Where a run's images come from: the built-in glyphs or a folder.

One function per job turns the user's choices (``--data``, ``--limit``,
``--val-fraction``...) into decoded train and validation sets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from selfsup_core.data.cache import load_decoded
from selfsup_core.data.decoded import DecodedImages, split_indices, stratified_subset
from selfsup_core.data.files import ImageList, Skipped, check_strict, describe_skipped, scan_folder
from selfsup_core.data.glyphs import builtin_split
from selfsup_core.errors import DataError
from selfsup_core.ioutil import atomic_write_text
from selfsup_core.wording import counted

logger = logging.getLogger(__name__)

SKIPPED_NAME = "skipped_files.tsv"
"""The full list of files a run left out (path, tab, reason), in its run folder."""


@dataclass
class Split:
    """Train and validation images of one run, and where they came from."""

    train: DecodedImages
    val: DecodedImages | None
    source: str

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        """Every file the run left out (train and validation folders), once each."""
        seen: dict[Path, Skipped] = {}
        for part in (self.train, self.val):
            for item in part.skipped_files if part is not None else ():
                seen.setdefault(item.path, item)
        return tuple(seen.values())


def decode(image_list: ImageList, size: int, num_workers: int, cache: bool = True,
           strict: bool = False) -> DecodedImages:
    """Decode ``image_list`` at ``size`` (the one place runs turn files into tensors)."""
    return load_decoded(image_list, size, num_workers=num_workers, cache=cache, strict=strict)


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
    strict: bool = False,
    report_to: str | Path | None = None,
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
        strict: Fail on the first file (or class folder) that cannot be used,
            with one line naming it, instead of skipping it.
        report_to: The run folder: files left out are listed in full in
            ``skipped_files.tsv`` there (the log names the first few).

    Raises:
        DataError: no usable image, or (``labelled``) train and validation
            classes that differ (the error names them).
    """
    if data is None:
        train = builtin_split("train", size, limit)
        # --limit shrinks both built-in splits, keeping smoke runs quick.
        val = builtin_split("val", size, limit) if val_fraction > 0 or val_data else None
        return Split(train, val, "built-in glyphs")
    images = limited(scan_folder(data, labelled=labelled), limit, seed)
    if strict:
        check_strict(images)
    if val_data is not None:
        val_list = scan_folder(val_data, labelled=labelled)
        if strict:
            check_strict(val_list)
        if labelled:
            check_same_classes(images.classes, val_list.classes, data, val_data)
        split = Split(decode(images, size, num_workers, cache, strict),
                      decode(val_list, size, num_workers, cache, strict), data)
        if labelled:
            assert split.val is not None
            check_same_classes(split.train.classes, split.val.classes, data, val_data, decoded=True)
        return _reported(split, report_to)
    decoded = decode(images, size, num_workers, cache, strict)
    if val_fraction <= 0:
        return _reported(Split(decoded, None, data), report_to)
    if len(decoded) < 2:
        raise DataError(f"{data} has {len(decoded)} usable image: too few to hold some out.")
    train_idx, val_idx = split_indices(len(decoded), val_fraction, seed)
    return _reported(Split(decoded.subset(train_idx), decoded.subset(val_idx), data), report_to)


def check_same_classes(train: tuple[str, ...], val: tuple[str, ...], data: str, val_data: str,
                       decoded: bool = False) -> None:
    """Raise :class:`DataError` naming the classes found in one folder only."""
    if train == val:
        return
    only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    parts = []
    if only_train:
        parts.append(f"only in {data}: {_names(only_train)}")
    if only_val:
        parts.append(f"only in {val_data}: {_names(only_val)}")
    if not parts:
        parts.append("same names in another order")
    why = " (after leaving out classes none of whose images decode)" if decoded else ""
    raise DataError(f"the classes of {data} ({len(train)}) and {val_data} ({len(val)}) differ{why}: "
                    f"{'; '.join(parts)}. Both need the same class sub-folders.")


def _names(names: list[str], limit: int = 10) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _reported(split: Split, report_to: str | Path | None) -> Split:
    if report_to is not None:
        path = write_skipped(split, report_to)
        if path is not None:
            logger.warning("%s left out, listed in %s", counted(len(split.skipped), "file"), path)
    return split


def write_skipped(split: Split, folder: str | Path) -> Path | None:
    """List every file ``split`` left out in ``folder/skipped_files.tsv``; its path, or ``None`` if none."""
    skipped = split.skipped
    if not skipped:
        return None
    path = Path(folder) / SKIPPED_NAME
    lines = ["path\treason", *(f"{s.path}\t{s.reason}" for s in skipped)]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def skip_summary(split: Split, folder: str | Path | None = None) -> str | None:
    """One line for the end of a run: how many files were left out, the first by name; ``None`` if none."""
    skipped = split.skipped
    if not skipped:
        return None
    full = Path(folder) / SKIPPED_NAME if folder is not None else None
    return describe_skipped(skipped, Path(split.source), full_list=full)
