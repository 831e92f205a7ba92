"""What the pretraining and the fine-tuning modules share.

Batches arrive as uint8; :meth:`ImageModule.on_after_batch_transfer` turns
them into float images in ``[0, 1]`` on the device. Normalisation happens
right before the network, so tasks work in ``[0, 1]`` image space.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from selfsup_core.models.normalization import Normalizer, to_unit_range
from selfsup_core.threads import one_cpu_thread


class ImageModule(pl.LightningModule):
    """Base LightningModule: uint8 -> float on device, normalisation, AdamW + cosine.

    Subclasses save these hyperparameters (``self.save_hyperparameters()``):
    ``lr`` (peak learning rate), ``weight_decay`` (AdamW), ``warmup_fraction``
    (share of the steps spent warming up) and ``channels_last`` (memory
    format, faster convolutions on GPUs).
    """

    def __init__(self, channels_last: bool = False) -> None:
        super().__init__()
        self.normalizer = Normalizer(channels_last=channels_last)
        self._means = torch.nn.ModuleDict()  # one MeanMetric per logged name (log_mean)

    def on_fit_start(self) -> None:
        # Every process was seeded alike, so the weights start equal; the augmentations they draw must not.
        if self.trainer.world_size > 1:
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def log_mean(self, name: str, value: Tensor, batch_size: int, *, on_step: bool = False) -> None:
        """Log ``value``, a mean over ``batch_size`` images, and its epoch mean over every image.

        In one process this is ``self.log``'s own batch-weighted epoch mean.
        Across processes Lightning would average the processes' means, which
        is off where their shares differ in size (validation's may), so the
        sums behind the mean are kept in a ``torchmetrics`` ``MeanMetric`` and
        added up over all processes at the epoch's end. A non-finite value
        stays non-finite (the divergence check reads it).
        """
        key = name.replace("/", "__")
        if key not in self._means:
            self._means[key] = MeanMetric(nan_strategy="disable").to(self.device)
        metric = self._means[key]
        # One entry per image rather than a weight: torchmetrics (1.9) drops the weights when NaNs are kept.
        metric(value.detach().float().expand(batch_size))
        self.log(name, metric, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=batch_size,
                 metric_attribute=f"_means.{key}")  # created lazily: Lightning's own lookup runs only once

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[Tensor, Tensor]:
        images, labels = batch
        with one_cpu_thread(images.device):
            return to_unit_range(images), labels

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(
            (p for p in self.parameters() if p.requires_grad),
            lr=self.hparams["lr"],
            weight_decay=self.hparams["weight_decay"],
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, int(total * self.hparams["warmup_fraction"]))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
