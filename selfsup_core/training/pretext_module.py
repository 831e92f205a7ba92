"""The generic LightningModule that pretrains an encoder with any pretext task."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image, ImageDraw, ImageFont
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor

from selfsup_core.ioutil import atomic_write_bytes
from selfsup_core.models.encoders import build_encoder
from selfsup_core.plugin.host import PluginHost
from selfsup_core.plugin.registry import create_task
from selfsup_core.tasks.base import PretextBatch, PretextTask
from selfsup_core.training.image_module import ImageModule
from selfsup_core.training.step import pretext_step

logger = logging.getLogger(__name__)

PREVIEW_IMAGES = 8
PREVIEW_MIN_SIZE = 96
PREVIEW_PADDING = 2
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
        self.log_mean(f"{stage}/loss", result.loss, len(images), on_step=on_step)
        for name, value in result.metrics.items():
            self.log_mean(f"{stage}/{name}", torch.as_tensor(value), len(images), on_step=on_step)
        if stage == "val" and self._preview_pending:
            self._write_preview(result.outputs, result.batch, {"loss": result.loss, **result.metrics})
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

    def _write_preview(self, outputs: Any, batch: PretextBatch, metrics: dict[str, Tensor]) -> None:
        self._preview_pending = False
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:  # one set of previews per run
            return
        columns = self.task.preview(outputs, batch)
        if not columns:
            return
        n = min(PREVIEW_IMAGES, len(next(iter(columns.values()))))
        # One row per image: input | restored | original ...
        tiles = torch.stack([c[:n].detach().float().clamp(0, 1).cpu() for c in columns.values()], 1)
        tiles = tiles.flatten(0, 1)
        if tiles.shape[-1] < PREVIEW_MIN_SIZE:  # small images: enlarge, pixels kept sharp
            scale = -(-PREVIEW_MIN_SIZE // tiles.shape[-1])
            tiles = torch.nn.functional.interpolate(tiles, scale_factor=scale, mode="nearest")
        grid = torchvision.utils.make_grid(tiles, nrow=len(columns), padding=PREVIEW_PADDING)
        scores = ", ".join(f"{name} {float(value):.4g}" for name, value in metrics.items())
        header = [f"{self.hparams['task']}, epoch {self.current_epoch}",
                  f"first val batch ({len(batch.targets) if isinstance(batch.targets, Tensor) else n} images): "
                  f"{scores}"]
        image = titled_grid(grid, list(columns), header, tile_width=tiles.shape[-1])
        if self.hparams["preview_dir"]:
            folder = Path(self.hparams["preview_dir"])
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"epoch_{self.current_epoch:03d}.png"
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            atomic_write_bytes(path, buffer.getvalue())
            logger.info("preview (%s) written to %s", " | ".join(columns), path)
        for run_logger in self.loggers:  # TensorBoard, when installed (the CSV logger takes no images)
            if isinstance(run_logger, TensorBoardLogger):
                run_logger.experiment.add_image("preview", np.asarray(image), self.current_epoch,
                                                dataformats="HWC")


def titled_grid(grid: Tensor, titles: list[str], header: list[str], *, tile_width: int,
                padding: int = PREVIEW_PADDING) -> Image.Image:
    """``grid`` (``make_grid`` output in ``[0, 1]``) under header lines and one title per column.

    Drawn with Pillow's default font, so it needs no font files.
    """
    pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    body = Image.fromarray(pixels)
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        font = ImageFont.load_default()
    line = 16
    width = max(body.width, 280)
    header = [wrapped for text in header for wrapped in _wrap(text, font, width - 2 * padding - 4)]
    lines = [*header, ""]
    canvas = Image.new("RGB", (width, body.height + line * len(lines) + 4), "white")
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(header):
        draw.text((padding + 2, 2 + i * line), text, fill="black", font=font)
    title_top = 2 + len(header) * line
    for column, title in enumerate(titles):
        left = padding + column * (tile_width + padding)
        shown = title
        while font.getlength(shown) > tile_width and len(shown) > 1:
            shown = shown[:-1]
        draw.text((left + (tile_width - font.getlength(shown)) / 2, title_top), shown, fill="black", font=font)
    canvas.paste(body, (0, title_top + line + 2))
    return canvas


def _wrap(text: str, font: Any, width: float) -> list[str]:
    """``text`` broken after commas into lines no wider than ``width`` pixels (where it can be)."""
    lines: list[str] = []
    for piece in text.split(", "):
        if lines and font.getlength(lines[-1] + ", " + piece) <= width:
            lines[-1] += ", " + piece
        else:
            if lines:
                lines[-1] += ","
            lines.append(piece)
    return lines
