"""The LightningModule for fine-tuning an encoder on labelled images."""

from __future__ import annotations

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup_core.models.encoders import build_encoder
from selfsup_core.models.export import load_encoder
from selfsup_core.tasks.metrics import accuracy
from selfsup_core.threads import one_cpu_thread
from selfsup_core.training.image_module import ImageModule


class ClassifierModule(ImageModule):
    """An encoder with a new linear classification head.

    The same recipe whatever the encoder's origin: random resized crops and
    horizontal flips drawn batch-wise on the device, AdamW with a cosine
    schedule. ``encoder_path=None`` starts from random weights (the baseline).

    Args:
        num_classes: Number of classes.
        arch: Encoder architecture.
        encoder_path: An exported ``encoder.safetensors``, or ``None``.
        image_size: Training image size (augmented crops are resized to it).
        freeze_encoder: Train only the head (a linear probe).
    """

    def __init__(
        self,
        num_classes: int,
        arch: str = "resnet18",
        encoder_path: str | None = None,
        image_size: int = 32,
        freeze_encoder: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_fraction: float = 0.05,
        channels_last: bool = False,
    ) -> None:
        super().__init__(channels_last=channels_last)
        self.save_hyperparameters()
        self.encoder = load_encoder(encoder_path, arch=arch) if encoder_path else build_encoder(arch)
        self.head = nn.Linear(self.encoder.feature_dim, num_classes)
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        self.augment = K.AugmentationSequential(
            K.RandomResizedCrop((image_size, image_size), scale=(0.35, 1.0)),
            K.RandomHorizontalFlip(),
        )
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, images: Tensor) -> Tensor:
        """Class logits of images in ``[0, 1]``."""
        return self.head(self.encoder(self.normalizer(images)))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        if self.hparams["freeze_encoder"]:
            self.encoder.eval()  # frozen BatchNorm statistics too
        with one_cpu_thread(self.device):
            images = self.augment(images)
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        self.log("train/acc", accuracy(logits, labels), prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.log("val/loss", F.cross_entropy(logits, labels), prog_bar=True)
        self.log("val/acc", accuracy(logits, labels), prog_bar=True)
