"""The LightningModule for fine-tuning an encoder on labelled images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup_core.augment.base import Pipeline
from selfsup_core.models.encoders import build_encoder
from selfsup_core.models.export import load_encoder
from selfsup_core.plugin.host import PluginHost
from selfsup_core.plugin.registry import create_augmentation
from selfsup_core.tasks.metrics import accuracy
from selfsup_core.threads import one_cpu_thread
from selfsup_core.training.image_module import ImageModule

FINETUNE_AUGMENT_OPTIONS: dict[str, dict[str, Any]] = {"crop_flip": {"scale": (0.35, 1.0)}}
"""Fine-tuning's own options for augmentations it names (a gentler crop than pretraining's);
every other augmentation takes its defaults."""


def build_augmentations(names: Sequence[str], host: PluginHost | None = None) -> Pipeline:
    """The fine-tuning :class:`~selfsup_core.augment.base.Pipeline` of ``names``, from the plugins.

    Raises:
        UnknownTaskError: A name no installed plugin provides (the message lists the installed ones).
    """
    return Pipeline([create_augmentation(name, host=host, **FINETUNE_AUGMENT_OPTIONS.get(name, {}))
                     for name in names])


class ClassifierModule(ImageModule):
    """An encoder with a new linear classification head.

    The same recipe whatever the encoder's origin: the ``augment``
    augmentations (default: random resized crops and horizontal flips, see
    :data:`FINETUNE_AUGMENT_OPTIONS`) drawn batch-wise on the device, AdamW
    with a cosine schedule. ``encoder_path=None`` starts from random weights
    (the baseline).

    Args:
        num_classes: Number of classes.
        arch: Encoder architecture.
        encoder_path: An exported ``encoder.safetensors``, or ``None``.
        image_size: Training image size (the batches'; augmentations keep it).
        freeze_encoder: Train only the head (a linear probe).
        augment: Names of installed augmentations applied to each training
            batch, in order (saved as a hyperparameter: a list of strings).
        host: Whose plugins provide the augmentations; ``None`` is the
            process's host. Not saved.
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
        augment: Sequence[str] = ("crop_flip",),
        host: PluginHost | None = None,
    ) -> None:
        super().__init__(channels_last=channels_last)
        self.save_hyperparameters(ignore=["host"])  # a live object: not a hyperparameter
        self.hparams["augment"] = [str(name) for name in augment]  # plain, for weights_only checkpoints
        self.encoder = load_encoder(encoder_path, arch=arch) if encoder_path else build_encoder(arch)
        self.head = nn.Linear(self.encoder.feature_dim, num_classes)
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        self.augmentations = build_augmentations(self.hparams["augment"], host=host)
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
            images, _ = self.augmentations(images)
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.log_mean("train/loss", loss, len(labels), on_step=True)
        self.log_mean("train/acc", accuracy(logits, labels), len(labels))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.log_mean("val/loss", F.cross_entropy(logits, labels), len(labels))
        self.log_mean("val/acc", accuracy(logits, labels), len(labels))
