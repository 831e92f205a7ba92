"""Feeding decoded images to Lightning: uint8 batches, sampled from memory.

Images are decoded once (see :mod:`selfsup_core.data`); each epoch only
indexes the decoded tensor, batch-wise, in a seeded order. Conversion to
float, normalisation and every random augmentation happen after the batch
reaches the device (``on_after_batch_transfer`` in the modules).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from selfsup_core.data.decoded import DecodedImages
from selfsup_core.data.files import Skipped, describe_skipped
from selfsup_core.data.sources import SKIPPED_NAME
from selfsup_core.threads import ThreadGovernor, fixed_threads, one_cpu_thread

logger = logging.getLogger(__name__)

NO_LABEL = -1


class BatchedImages(torch.utils.data.Dataset[tuple[Tensor, Tensor]]):
    """Index a decoded data set (or a view of one) a whole batch at a time (``__getitems__``).

    Images are read with :meth:`DecodedImages.take`: one gather per batch from
    the backing storage, so a view of a memory-mapped cache is never copied whole.

    Example:
        >>> data = DecodedImages(torch.zeros(8, 3, 4, 4, dtype=torch.uint8), None).subset([1, 5, 7])
        >>> images, labels = BatchedImages(data).__getitems__([2, 0])
        >>> tuple(images.shape), labels.tolist()
        ((2, 3, 4, 4), [-1, -1])
    """

    def __init__(self, data: DecodedImages) -> None:
        self.data = data
        missing = torch.full((len(data),), NO_LABEL, device=data.device)
        self.labels = data.labels if data.labels is not None else missing

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.data.take(index), self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        # One gather per batch instead of one tensor per image plus a collate.
        index = torch.as_tensor(indices, dtype=torch.long)
        with one_cpu_thread(self.data.device):
            return self.data.take(index), self.labels[index.to(self.labels.device)]


def _keep_on_device(data: DecodedImages, device: torch.device, wanted: bool | None) -> bool:
    """Whether to copy ``data`` to ``device``: as ``wanted``, else when its images fit a quarter of the free memory."""
    if wanted is not None:
        return wanted
    free, _ = torch.cuda.mem_get_info(device)
    return len(data) * data.image_bytes < free // 4  # what a copy would hold: a view's images only


def _keep_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return batch


class ImageDataModule(pl.LightningDataModule):
    """Train (and optional validation) batches of uint8 images with labels.

    Args:
        train: Decoded training images.
        val: Decoded validation images, or ``None``.
        batch_size: Images per batch.
        seed: Seeds the shuffling, so a run sees the same order every time.
        num_workers: Loader processes; 0 is right for in-memory data.
        on_device: Keep the decoded uint8 images in accelerator memory and
            sample batches there, with no loader workers and no copies
            (ignored on a CPU). ``None``: when they fit in a quarter of the
            free memory.
    """

    def __init__(
        self,
        train: DecodedImages,
        val: DecodedImages | None = None,
        batch_size: int = 128,
        seed: int = 0,
        num_workers: int = 0,
        on_device: bool | None = None,
    ) -> None:
        super().__init__()
        self.on_device = on_device
        self._resident: dict[int, DecodedImages] = {}
        self.train_data, self.val_data = train, val
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self._governor: ThreadGovernor | None = None
        self._threads_before: int | None = None

    def setup(self, stage: str) -> None:
        """Training on a CPU: intra-op threads as ``$SELFSUP_CPU_THREADS`` fixes them, or as measured
        to be fastest with whatever else runs on the machine (see :class:`~selfsup_core.threads.ThreadGovernor`)."""
        if stage != "fit" or self.trainer is None or self.trainer.strategy.root_device.type != "cpu":
            return
        self._threads_before = torch.get_num_threads()
        fixed = fixed_threads()
        if fixed is not None:
            torch.set_num_threads(fixed)
        elif self._governor is None:
            self._governor = ThreadGovernor()

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        governor, trainer = self._governor, self.trainer
        if governor is not None and trainer is not None:
            if trainer.training and not trainer.sanity_checking:
                governor.step((trainer.current_epoch, trainer.global_step))
            else:
                governor.pause()
        return batch

    def _placed(self, data: DecodedImages) -> DecodedImages:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if device.type != "cuda" or not _keep_on_device(data, device, self.on_device):
            return data
        if id(data) not in self._resident:
            self._resident[id(data)] = data.to(device)  # chunk by chunk: no full copy in RAM first
        return self._resident[id(data)]

    def _loader(self, data: DecodedImages, shuffle: bool) -> torch.utils.data.DataLoader:
        data = self._placed(data)
        on_device = data.device.type != "cpu"
        dataset = BatchedImages(data)
        sampler = self._sampler(len(dataset), shuffle)
        share = len(sampler) if sampler is not None else len(dataset)
        generator = torch.Generator().manual_seed(self.seed) if shuffle and sampler is None else None
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=min(self.batch_size, share),
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            generator=generator,
            # Keep full batches in training (BatchNorm dislikes a batch of 1).
            drop_last=shuffle and share > self.batch_size,
            num_workers=0 if on_device else self.num_workers,
            collate_fn=_keep_batch,
            persistent_workers=self.num_workers > 0 and not on_device,
        )

    def _sampler(self, n: int, shuffle: bool) -> torch.utils.data.Sampler[int] | None:
        """This process's share of ``n`` images when several train together; ``None`` alone.

        Training: a fresh seeded shuffle every epoch (Lightning calls
        ``set_epoch``), cut into equal, disjoint shards, one per process (up
        to ``processes - 1`` images sit out each epoch, so every process runs
        the same number of steps). Validation: every image exactly once, the
        shards differing in size by at most one.
        """
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return None
        if shuffle:
            return torch.utils.data.DistributedSampler(
                range(n), num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=True, seed=self.seed,
                drop_last=True)
        return ShardSampler(n, trainer.world_size, trainer.global_rank)

    def teardown(self, stage: str) -> None:
        """At the end of training, name the files left out once more (the log's first lines are long gone)."""
        if stage != "fit":
            return
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._governor, self._threads_before = None, None
        seen: dict[Path, Skipped] = {}
        for data in (self.train_data, self.val_data):
            for item in data.skipped_files if data is not None else ():
                seen.setdefault(item.path, item)
        if not seen:
            return
        items = list(seen.values())
        root = Path(*_common_parts([s.path for s in items]))
        full = Path(self.trainer.default_root_dir) / SKIPPED_NAME if self.trainer is not None else None
        logger.warning("%s", describe_skipped(items, root, full_list=full if full and full.exists() else None))

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(self.train_data, shuffle=True)

    def val_dataloader(self) -> torch.utils.data.DataLoader | list:
        if self.val_data is None or len(self.val_data) == 0:
            return []
        return self._loader(self.val_data, shuffle=False)


class ShardSampler(torch.utils.data.Sampler[int]):
    """Positions ``rank, rank + processes, ...`` of ``n``: together the processes see each exactly once.

    Example:
        >>> list(ShardSampler(5, processes=2, rank=1))
        [1, 3]
    """

    def __init__(self, n: int, processes: int, rank: int) -> None:
        self.n, self.processes, self.rank = n, processes, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.processes))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.processes))


def _common_parts(paths: list[Path]) -> tuple[str, ...]:
    """The longest folder prefix of ``paths`` (where their names are shown from)."""
    parts = [p.parent.parts for p in paths]
    common: list[str] = []
    for level in zip(*parts):
        if any(part != level[0] for part in level):
            break
        common.append(level[0])
    return tuple(common) or ("/",)
