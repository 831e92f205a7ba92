"""Batches sampled from decoded images: seeded order, labels kept with images."""

from __future__ import annotations

import torch

from selfsup_core.data.datamodule import NO_LABEL, ImageDataModule
from selfsup_core.data.decoded import DecodedImages


def _data(n: int = 40) -> DecodedImages:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    return DecodedImages(images, torch.arange(n) % 4)


def _epoch(module: ImageDataModule) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(module.train_dataloader())


def test_order_is_seeded_and_labels_follow_images() -> None:
    first = _epoch(ImageDataModule(_data(), batch_size=16, seed=3))
    again = _epoch(ImageDataModule(_data(), batch_size=16, seed=3))
    other = _epoch(ImageDataModule(_data(), batch_size=16, seed=4))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))
    assert [len(images) for images, _ in first] == [16, 16]  # full batches only
    for images, labels in first:
        assert images.dtype == torch.uint8
        assert torch.equal(images[:, 0, 0, 0].long() % 4, labels)


def test_validation_keeps_order_and_every_image() -> None:
    module = ImageDataModule(_data(), _data(10), batch_size=4)
    seen = torch.cat([images[:, 0, 0, 0] for images, _ in module.val_dataloader()])
    assert seen.tolist() == list(range(10))


def test_unlabelled_data_gets_placeholder_labels_and_stays_on_cpu() -> None:
    data = DecodedImages(_data().images, None)
    module = ImageDataModule(data, batch_size=8, on_device=True)  # no trainer, no GPU: ignored
    images, labels = next(iter(module.train_dataloader()))
    assert images.device.type == "cpu" and (labels == NO_LABEL).all()
