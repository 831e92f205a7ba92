"""Data larger than RAM: splits, label fractions and epochs index the memory map, never copy it.

The decode cache maps its array privately (``torch.from_file(shared=False)``).
Pages read through such a mapping are page cache, counted as ``RssFile``: the
kernel drops them under memory pressure and reads them again later, so they
never hold a data set in RAM. A copy of the images (``storage[index]`` over
the whole split, say) is anonymous memory, ``RssAnon``, which cannot be
dropped: that is what fails once a data set is larger than RAM, and what these
tests watch.
"""

from __future__ import annotations

import gc
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from selfsup_core.data.cache import _map
from selfsup_core.data.datamodule import BatchedImages, ImageDataModule
from selfsup_core.data.decoded import DecodedImages, label_subset, split_indices

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RssAnon from /proc (Linux only)")

SIZE = 64
COUNT = 87_000  # x 3 x 64 x 64 bytes = 1.07 GB
CLASSES = 10
WRITTEN = range(0, COUNT, 997)  # rows with pixels; the rest of the file is a hole of zeros
GROWTH_BOUND = 64 << 20  # far below the 1 GB a copy of the images would add


def rss_anon() -> int:
    """This process's anonymous resident memory in bytes (``RssAnon`` of /proc/self/status).

    Example:
        >>> rss_anon() > 0  # doctest: +SKIP
        True
    """
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no RssAnon in /proc/self/status")


def pixel(row: int) -> int:
    """The value every pixel of a written ``row`` holds (never 0, so it tells from the hole)."""
    return 1 + row % 250


def mapped_data_set(folder: Path) -> DecodedImages:
    """A 1 GB memory-mapped data set made as the decode cache makes one.

    A sparse file of ``COUNT`` images (zeros) with the rows of ``WRITTEN``
    filled, mapped with the cache's own ``_map``; labels ``row % CLASSES``.
    """
    image_bytes = 3 * SIZE * SIZE
    if shutil.disk_usage(folder).free < 3e9:
        pytest.skip(f"under 3 GB free in {folder} for a 1 GB memory-mapped data set")
    path = folder / "images.u8"
    with open(path, "wb") as handle:
        handle.truncate(COUNT * image_bytes)
        for row in WRITTEN:
            handle.seek(row * image_bytes)
            handle.write(bytes([pixel(row)]) * image_bytes)
    storage = _map(path, COUNT, SIZE)
    return DecodedImages(storage, torch.arange(COUNT) % CLASSES, tuple(f"c{i}" for i in range(CLASSES)))


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DecodedImages]:
    folder = tmp_path_factory.mktemp("large")
    yield mapped_data_set(folder)
    (folder / "images.u8").unlink()  # pytest keeps old temp folders; the map needs no file once done


def test_split_and_label_fraction_of_a_1gb_memory_map_copy_no_images(large: DecodedImages) -> None:
    before = rss_anon()
    train_idx, val_idx = split_indices(len(large), 0.1, seed=0)
    train, val = large.subset(train_idx), large.subset(val_idx)
    labelled = label_subset(train, 0.1, seed=0)
    growth = rss_anon() - before
    print(f"split + 10 % label subset of {large.storage.nbytes / 1e9:.2f} GB: RssAnon +{growth / 1e6:.1f} MB")
    assert growth < GROWTH_BOUND
    assert train.storage is large.storage and labelled.storage is large.storage
    assert len(train) + len(val) == COUNT and len(labelled) == pytest.approx(len(train) / 10, rel=0.01)
    assert torch.equal(labelled.labels, labelled.rows % CLASSES)


def test_an_epoch_over_the_train_view_reads_through_the_map(large: DecodedImages) -> None:
    """Every image of the train view passes through the loader; RssAnon stays flat."""
    train = large.subset(split_indices(len(large), 0.1, seed=0)[0])
    loader = ImageDataModule(train, batch_size=256, seed=0).train_dataloader()
    before, peak, started = rss_anon(), 0, time.perf_counter()
    seen, written = 0, set()
    for step, (images, labels) in enumerate(loader):
        brightest = images.flatten(1).amax(1)  # reads every byte of every image
        seen += len(images)
        for value, label in zip(brightest[brightest > 0].tolist(), labels[brightest > 0].tolist()):
            written.add((value, label))
        if step % 50 == 0:
            peak = max(peak, rss_anon() - before)
    peak = max(peak, rss_anon() - before)
    print(f"epoch over {len(train)} images of the view ({seen} in full batches): "
          f"RssAnon +{peak / 1e6:.1f} MB at most, {time.perf_counter() - started:.1f} s")
    assert peak < GROWTH_BOUND
    assert seen == len(train) // 256 * 256  # full batches only
    expected = {(pixel(row), row % CLASSES) for row in set(WRITTEN) & set(train.rows.tolist())}
    assert written <= expected and len(written) >= len(expected) * 0.9  # the dropped last batch aside


# -- the same pixels as the copying behaviour, on a small data set ----------------------------------


@pytest.fixture
def small() -> DecodedImages:
    storage = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return DecodedImages(storage, torch.arange(50) % 3, ("a", "b", "c"))


def test_take_subset_and_to_give_the_pixels_of_a_copy(small: DecodedImages) -> None:
    rows = torch.tensor([7, 3, 49, 0, 22, 22, 11])
    view = small.subset(rows)
    assert view.rows is not None and torch.equal(view.rows, rows)
    assert view.storage is small.storage  # no image copied
    copied = small.storage[rows]  # what subset used to hold
    index = torch.tensor([4, 0, 6])
    assert torch.equal(view.take(index), copied[index])
    assert torch.equal(view.take([2, 1]), copied[[2, 1]])
    assert torch.equal(view.take(slice(1, 5)), copied[1:5])
    assert torch.equal(view.take(3), copied[3])
    assert torch.equal(view.labels, rows % 3)
    nested = view.subset([6, 1, 2])  # rows compose: positions into storage, not into the view
    assert torch.equal(nested.rows, rows[[6, 1, 2]]) and torch.equal(nested.take(slice(None)), copied[[6, 1, 2]])
    moved = view.to("cpu")
    assert moved.rows is None and torch.equal(moved.storage, copied) and torch.equal(moved.labels, view.labels)
    assert torch.equal(view.images, copied) and len(view) == len(rows) and view.image_size == 4


def test_a_whole_data_set_is_its_storage(small: DecodedImages) -> None:
    assert small.images is small.storage and len(small) == 50
    taken = small.take(slice(0, 2))
    taken.zero_()  # take always gives its own copy of the batch
    assert small.storage[:2].any()


def test_to_fills_in_chunks(small: DecodedImages, monkeypatch: pytest.MonkeyPatch) -> None:
    import selfsup_core.data.decoded as decoded_module

    monkeypatch.setattr(decoded_module, "_TO_CHUNK", 7)
    view = small.subset(torch.arange(49, -1, -2))
    assert torch.equal(view.to("cpu").storage, small.storage[torch.arange(49, -1, -2)])


def test_batches_gather_from_the_view(small: DecodedImages) -> None:
    view = small.subset([9, 8, 7, 6, 5])
    images, labels = BatchedImages(view).__getitems__([4, 0])
    assert torch.equal(images, small.storage[[5, 9]]) and labels.tolist() == [5 % 3, 9 % 3]
    unlabelled = DecodedImages(small.storage, None).subset([1, 2])
    assert BatchedImages(unlabelled).__getitems__([1])[1].tolist() == [-1]
