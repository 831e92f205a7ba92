"""Feeding decoded images to Lightning: uint8 batches, sampled from memory.

Images are decoded once (see :mod:`selfsup_core.data`); each epoch only
indexes the decoded tensor, batch-wise, in a seeded order. Conversion to
float, normalisation and every random augmentation happen after the batch
reaches the device (``on_after_batch_transfer`` in the modules).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor

from selfsup_core.data import DecodedImages

NO_LABEL = -1


class BatchedImages(torch.utils.data.Dataset[tuple[Tensor, Tensor]]):
    """Index a decoded data set a whole batch at a time (``__getitems__``)."""

    def __init__(self, data: DecodedImages) -> None:
        self.images = data.images
        n = len(data.images)
        self.labels = data.labels if data.labels is not None else torch.full((n,), NO_LABEL)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        # One gather per batch instead of one tensor per image plus a collate.
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index]


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
    """

    def __init__(
        self,
        train: DecodedImages,
        val: DecodedImages | None = None,
        batch_size: int = 128,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.train_data, self.val_data = train, val
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers

    def _loader(self, data: DecodedImages, shuffle: bool) -> torch.utils.data.DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return torch.utils.data.DataLoader(
            BatchedImages(data),
            batch_size=min(self.batch_size, len(data)),
            shuffle=shuffle,
            generator=generator,
            # Keep full batches in training (BatchNorm dislikes a batch of 1).
            drop_last=shuffle and len(data) > self.batch_size,
            num_workers=self.num_workers,
            collate_fn=_keep_batch,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(self.train_data, shuffle=True)

    def val_dataloader(self) -> torch.utils.data.DataLoader | list:
        if self.val_data is None or len(self.val_data) == 0:
            return []
        return self._loader(self.val_data, shuffle=False)
