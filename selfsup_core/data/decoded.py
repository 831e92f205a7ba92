"""Decoded images in memory, and the seeded subsets and splits taken from them."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from selfsup_core.data.files import ImageFileDataset, ImageList, Skipped, describe_skipped, strict_error
from selfsup_core.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


Index = Tensor | Sequence[int] | slice | int
"""Positions within a data set: a LongTensor, a sequence, a slice or one int."""

_TO_CHUNK = 1024  # images copied per step in DecodedImages.to: never a full extra copy


@dataclass
class DecodedImages:
    """A whole data set of decoded images, or an index view of one.

    A view (``rows`` set) shares ``storage`` with the data set it came from:
    :meth:`subset` never copies images, so splits and label fractions of a
    memory-mapped cache larger than RAM cost only their index. Read images
    with :meth:`take` (one batch at a time) or :meth:`to`.

    Attributes:
        storage: ``(M, 3, S, S)`` uint8, the full backing array (for example
            the decode cache's memory map); shared by every view.
        labels: ``(N,)`` int64 class indices of this data set's images, or ``None``.
        classes: Class names (class folders with at least one decoded image).
        skipped: Files that were not used (already left out of ``storage``):
            those the scan could not use, then those that did not decode.
        skip_reasons: Why, one per entry of ``skipped``.
        rows: ``(N,)`` positions into ``storage`` of this data set's images,
            in order; ``None``: all of ``storage``.

    Example:
        >>> data = DecodedImages(torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 3, 2, 2), None)
        >>> view = data.subset([3, 1])
        >>> len(view), view.take(slice(None))[:, 0, 0, 0].tolist()
        (2, [3, 1])
    """

    storage: Tensor
    labels: Tensor | None
    classes: tuple[str, ...] = ()
    skipped: tuple[Path, ...] = ()
    skip_reasons: tuple[str, ...] = ()
    rows: Tensor | None = None

    def __len__(self) -> int:
        return len(self.storage) if self.rows is None else len(self.rows)

    @property
    def image_size(self) -> int:
        return int(self.storage.shape[-1])

    @property
    def image_bytes(self) -> int:
        """Bytes of one image.

        Example:
            >>> DecodedImages(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), None).image_bytes
            192
        """
        return self.storage[0].numel() * self.storage.element_size() if len(self.storage) else 0

    @property
    def device(self) -> torch.device:
        """Where the images are (``storage``'s device)."""
        return self.storage.device

    @property
    def images(self) -> Tensor:
        """This data set's images as one ``(N, 3, S, S)`` tensor.

        ``storage`` itself (no copy) when this is a whole data set; for a
        view (``rows`` set) a **copy of every selected image** in RAM, which
        a view of data larger than RAM cannot afford: library code reads
        views with :meth:`take` or :meth:`to` instead.

        Example:
            >>> data = DecodedImages(torch.zeros(3, 3, 2, 2, dtype=torch.uint8), None)
            >>> data.images is data.storage, tuple(data.subset([0]).images.shape)
            (True, (1, 3, 2, 2))
        """
        return self.storage if self.rows is None else self.take(slice(None))

    @property
    def skipped_files(self) -> tuple[Skipped, ...]:
        """:attr:`skipped` with their reasons."""
        reasons = self.skip_reasons or ("not used",) * len(self.skipped)
        return tuple(Skipped(path, reason) for path, reason in zip(self.skipped, reasons))

    def take(self, index: Index) -> Tensor:
        """The uint8 images at positions ``index`` of this data set, gathered into a new tensor.

        Copies those images only (a batch), never the rest of ``storage``.

        Example:
            >>> data = DecodedImages(torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1), None)
            >>> data.subset([4, 2, 0]).take(torch.tensor([2, 0]))[:, 0, 0, 0].tolist()
            [0, 4]
        """
        if self.rows is None:
            if isinstance(index, slice):
                return self.storage[index].clone()  # a slice is a view: copy it, like a gather
            return self.storage[self._on(self.storage, index)]
        return self.storage[self._on(self.storage, self.rows[self._on(self.rows, index)])]

    @staticmethod
    def _on(target: Tensor, index: Index) -> Tensor | slice | int:
        """``index`` ready to index ``target``: a LongTensor on its device (slices and ints as they are)."""
        if isinstance(index, (slice, int)):
            return index
        return torch.as_tensor(index, dtype=torch.long).to(target.device)

    def subset(self, indices: Tensor | Sequence[int]) -> DecodedImages:
        """A view of the images at ``indices``, in that order: no image is copied.

        Example:
            >>> data = DecodedImages(torch.zeros(10, 3, 2, 2, dtype=torch.uint8), torch.arange(10))
            >>> view = data.subset([8, 9]).subset([1])
            >>> view.rows.tolist(), view.labels.tolist(), view.storage is data.storage
            ([9], [9], True)
        """
        index = torch.as_tensor(indices, dtype=torch.long)
        rows = index if self.rows is None else self.rows[index]
        labels = None if self.labels is None else self.labels[index.to(self.labels.device)]
        return dataclasses.replace(self, rows=rows.cpu(), labels=labels)

    def to(self, device: torch.device | str) -> DecodedImages:
        """A copy of this data set's images (and labels) on ``device``, as a whole data set.

        Filled :data:`_TO_CHUNK` images at a time, so no full copy is made in
        RAM on the way to an accelerator. Always copies, even to the same device.

        Example:
            >>> data = DecodedImages(torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1), torch.arange(6))
            >>> moved = data.subset([5, 0]).to("cpu")
            >>> moved.rows, moved.storage[:, 0, 0, 0].tolist(), moved.labels.tolist()
            (None, [5, 0], [5, 0])
        """
        device = torch.device(device)
        out = torch.empty((len(self), *self.storage.shape[1:]), dtype=self.storage.dtype, device=device)
        for start in range(0, len(self), _TO_CHUNK):
            out[start:start + _TO_CHUNK] = self.take(slice(start, start + _TO_CHUNK))
        labels = None if self.labels is None else self.labels.to(device)
        return dataclasses.replace(self, storage=out, labels=labels, rows=None)


def iter_decoded(image_list: ImageList, size: int, num_workers: int = 0,
                 strict: bool = False) -> Iterator[tuple[Tensor | None, int, str | None]]:
    """``(image, index, None)`` or ``(None, index, reason)`` per file, in file order.

    With ``strict`` the first file that does not decode raises
    :class:`DataError` (one line naming it) instead.
    """
    loader = torch.utils.data.DataLoader(
        ImageFileDataset(image_list.files, size), batch_size=64, num_workers=num_workers, collate_fn=list
    )
    for chunk in loader:
        for image, index, reason in chunk:
            if reason is not None and strict:
                raise strict_error(Skipped(image_list.files[index], reason), image_list.root)
            yield image, index, reason


def decode_images(image_list: ImageList, size: int, num_workers: int = 0,
                  strict: bool = False) -> DecodedImages:
    """Decode every image of ``image_list`` once, in worker processes.

    Files that do not decode are skipped, named and counted (``strict``: the
    first one raises :class:`DataError`); if none decodes, :class:`DataError`
    is raised.
    """
    return collect_decoded(image_list, size, iter_decoded(image_list, size, num_workers, strict))


def collect_decoded(image_list: ImageList, size: int,
                    decoded: Iterable[tuple[Tensor | None, int, str | None]]) -> DecodedImages:
    """Gather ``(image, index, reason)`` results of any decoder into :class:`DecodedImages`;
    ``None`` images become named skips."""
    images = torch.empty((len(image_list), 3, size, size), dtype=torch.uint8)
    ok: list[int] = []
    failures: dict[int, str] = {}
    for image, index, reason in decoded:
        if image is None:
            failures[index] = reason or "does not decode"
        else:
            images[len(ok)] = image
            ok.append(index)
    if not ok:
        raise no_image_decodes(image_list, failures)
    return assemble(image_list, images[: len(ok)], ok, failures)


def no_image_decodes(image_list: ImageList, failures: Mapping[int, str]) -> DataError:
    """The error when not one file decodes, with the first reasons."""
    skipped = [Skipped(image_list.files[i], reason) for i, reason in sorted(failures.items())]
    return DataError(f"none of the {len(image_list)} images under {image_list.root} decodes: "
                     + describe_skipped(skipped, image_list.root, limit=3))


def assemble(image_list: ImageList, images: Tensor, ok: Sequence[int],
             failures: Mapping[int, str]) -> DecodedImages:
    """The data set of the decoded ``images`` (those of the files at ``ok``, in order).

    Names every file left out (the scan's problems, then ``failures``: index
    -> reason) in one warning, and drops classes none of whose files decoded
    (relabelling the rest), saying which.
    """
    good = set(ok)
    skipped = [*image_list.problems]
    skipped += [Skipped(f, failures.get(i, "does not decode")) for i, f in enumerate(image_list.files)
                if i not in good]
    if skipped:
        logger.warning("%s", describe_skipped(skipped, image_list.root,
                                              total=len(image_list) + len(image_list.problems)))
    labels, classes = None, image_list.classes
    if image_list.labels is not None:
        labels = torch.tensor([image_list.labels[i] for i in ok], dtype=torch.long)
        labels, classes = _drop_empty_classes(labels, classes, image_list)
    return DecodedImages(images, labels, classes, tuple(s.path for s in skipped),
                         tuple(s.reason for s in skipped))


def _drop_empty_classes(labels: Tensor, classes: tuple[str, ...],
                        image_list: ImageList) -> tuple[Tensor, tuple[str, ...]]:
    counts = torch.bincount(labels, minlength=len(classes))
    empty = [name for name, n in zip(classes, counts.tolist()) if n == 0]
    if not empty:
        return labels, classes
    logger.warning("class folder%s %s under %s: no image decodes (all skipped): left out",
                   "s" if len(empty) > 1 else "", ", ".join(empty), image_list.root)
    kept = (counts > 0).nonzero().flatten()
    remap = torch.full((len(classes),), -1, dtype=torch.long)
    remap[kept] = torch.arange(len(kept))
    return remap[labels], tuple(classes[i] for i in kept.tolist())


def stratified_subset(
    n: int, labels: Tensor | Sequence[int] | None, count: int | None = None,
    fraction: float | None = None, seed: int = 0,
) -> Tensor:
    """Seeded indices of a subset, stratified by class when labels exist.

    Give either ``count`` (total size) or ``fraction``. Each class keeps a
    share proportional to its size, and at least one image; a ``count`` is
    met exactly (the rounding goes to the classes with the largest
    remainders) unless it is below the number of classes. Indices come back
    sorted, so the subset keeps the data set's order.

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
    classes = [(labels == cls).nonzero().flatten() for cls in labels.unique().tolist()]
    sizes = [len(members) for members in classes]
    if count is not None:
        takes = _apportion(sizes, count)
    else:
        takes = [max(1, min(size, round(size * float(fraction)))) for size in sizes]  # type: ignore[arg-type]
    chosen = [members[torch.randperm(len(members), generator=generator)[:take]]
              for members, take in zip(classes, takes)]
    return torch.cat(chosen).sort().values


def _apportion(sizes: list[int], count: int) -> list[int]:
    """``count`` split over classes in proportion to ``sizes``, each at least one (largest remainders)."""
    if count <= len(sizes):
        return [1] * len(sizes)
    quotas = [size * count / sum(sizes) for size in sizes]
    takes = [min(size, max(1, math.floor(quota))) for size, quota in zip(sizes, quotas)]
    while sum(takes) > count:  # the one-image floor overshot: take back from the most over-served class
        over = max((i for i, take in enumerate(takes) if take > 1), key=lambda i: takes[i] - quotas[i])
        takes[over] -= 1
    for i in sorted(range(len(sizes)), key=lambda i: quotas[i] - takes[i], reverse=True):
        if sum(takes) >= count:  # flooring left fewer than one image per class to hand out
            break
        if takes[i] < sizes[i]:
            takes[i] += 1
    return takes


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
