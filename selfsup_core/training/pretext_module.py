"""The generic LightningModule that pretrains an encoder with any pretext task."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor

from selfsup_core.models.encoders import build_encoder
from selfsup_core.plugin.host import PluginHost
from selfsup_core.plugin.registry import create_task
from selfsup_core.tasks.base import PretextBatch, PretextTask
from selfsup_core.training.image_module import ImageModule
from selfsup_core.training.step import pretext_step

logger = logging.getLogger(__name__)

PREVIEW_IMAGES = 8
PREVIEW_MIN_SIZE = 96
VAL_SEED = 12345


class PretextModule(ImageModule):
    """Encoder + the task's head, trained on the task's loss.

    Only plain values are hyperparameters (the task is rebuilt from its name
    and options), so checkpoints resume with ``weights_only=True``.

    Args:
        task: Registered task name.
        task_options: Keyword options for the task.
        arch: Encoder architecture name.
        preview_dir: Where reconstruction tasks write their image grids
            each epoch (``None``: nowhere).
        **optim: Passed to :class:`~selfsup_core.lightning_base.ImageModule`.
        host: Whose plugins provide the task and encoder; ``None`` is the
            process's host. Not saved: a resumed run uses the process's host.

    Example:
        >>> module = PretextModule("rotation", arch="tiny")
        >>> module.task.name
        'rotation'
    """

    def __init__(
        self,
        task: str,
        task_options: dict[str, Any] | None = None,
        arch: str = "resnet18",
        preview_dir: str | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_fraction: float = 0.05,
        channels_last: bool = False,
        host: PluginHost | None = None,
    ) -> None:
        super().__init__(channels_last=channels_last)
        self.save_hyperparameters(ignore=["host"])  # a live object: not a hyperparameter
        self.task: PretextTask = create_task(task, host=host, **(task_options or {}))
        self.encoder = build_encoder(arch, host=host)
        self.head = self.task.build_head(self.encoder)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _step(self, images: Tensor, stage: str) -> Tensor:
        result = pretext_step(self.task, self.encoder, self.head, images, self.normalizer)
        on_step = stage == "train"
        self.log(f"{stage}/loss", result.loss, prog_bar=True, on_step=on_step, on_epoch=True)
        for name, value in result.metrics.items():
            self.log(f"{stage}/{name}", value, prog_bar=True, on_step=on_step, on_epoch=True)
        if stage == "val" and self._preview_pending:
            self._write_preview(result.outputs, result.batch)
        return result.loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch[0], "train")

    def on_validation_epoch_start(self) -> None:
        self._preview_pending = True

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        # The same random draws every epoch, so validation figures compare.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(VAL_SEED + batch_idx)
            self._step(batch[0], "val")

    def _write_preview(self, outputs: Any, batch: PretextBatch) -> None:
        self._preview_pending = False
        columns = self.task.preview(outputs, batch)
        if not columns or self.trainer.sanity_checking:
            return
        n = min(PREVIEW_IMAGES, len(next(iter(columns.values()))))
        # One row per image: input | restored | original ...
        tiles = torch.stack([c[:n].detach().float().clamp(0, 1).cpu() for c in columns.values()], 1)
        tiles = tiles.flatten(0, 1)
        if tiles.shape[-1] < PREVIEW_MIN_SIZE:  # small images: enlarge, pixels kept sharp
            scale = -(-PREVIEW_MIN_SIZE // tiles.shape[-1])
            tiles = torch.nn.functional.interpolate(tiles, scale_factor=scale, mode="nearest")
        grid = torchvision.utils.make_grid(tiles, nrow=len(columns), padding=2)
        if self.hparams["preview_dir"]:
            folder = Path(self.hparams["preview_dir"])
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"epoch_{self.current_epoch:03d}.png"
            torchvision.utils.save_image(grid, path)
            logger.info("preview (%s) written to %s", " | ".join(columns), path)
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image("preview", grid, self.current_epoch)
