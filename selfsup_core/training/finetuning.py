"""``finetune()``: train a classifier on an exported encoder, or from scratch."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from selfsup_core.config import FinetuneConfig, resolve_defaults
from selfsup_core.data.datamodule import ImageDataModule
from selfsup_core.data.decoded import label_subset
from selfsup_core.data.sources import load_split
from selfsup_core.errors import DataError
from selfsup_core.models.encoders import build_encoder
from selfsup_core.models.export import read_matching_info
from selfsup_core.plugin.host import PluginHost
from selfsup_core.training.finetune_module import ClassifierModule
from selfsup_core.training.runs import prepare_run_dir, record_run, write_json
from selfsup_core.training.trainer import build_trainer, compile_model, resume_path

logger = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    """What a fine-tuning run measured.

    Attributes:
        run_dir: The run folder.
        val_acc: Validation top-1 of the final epoch.
        best_val_acc: The best validation top-1 over epochs (flattering: label it so).
        train_images: Labelled images used (after ``label_fraction``).
        seconds: Wall time of the training.
    """

    run_dir: Path
    val_acc: float
    best_val_acc: float
    train_images: int
    seconds: float
    history: list[float]

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        return {**dataclasses.asdict(self), "run_dir": str(self.run_dir)}


class _AccuracyHistory(Callback):
    def __init__(self) -> None:
        self.history: list[float] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and "val/acc" in trainer.callback_metrics:
            self.history.append(float(trainer.callback_metrics["val/acc"]))


def finetune(
    config: FinetuneConfig | None = None, *, host: PluginHost | None = None, **overrides: Any
) -> FinetuneResult:
    """Fine-tune a classifier on labelled folders (or the built-in glyph classes).

    ``encoder="none"`` is the from-scratch baseline: same architecture, same
    image size, same recipe.

    Args:
        config: Settings; ``None`` starts from the defaults.
        host: Whose plugins provide the encoder; ``None`` is the process's host.
        **overrides: Any :class:`~selfsup_core.config.FinetuneConfig` field.

    Example:
        >>> scratch = finetune(encoder="none", arch="tiny", max_epochs=1)  # doctest: +SKIP
        >>> 0 <= scratch.val_acc <= 1
        True
    """
    config = (config or FinetuneConfig()).updated(overrides, source="finetune()")
    config = _with_encoder_settings(config)
    config = resolve_defaults(config, "finetune")
    assert config.arch is not None  # set by _with_encoder_settings
    build_encoder(config.arch, host=host)

    run_dir = prepare_run_dir(config.out, "finetune", resume=config.resume, overwrite=config.overwrite)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    split = load_split(
        config.data, config.image_size, val_data=config.val_data, val_fraction=config.val_fraction,
        limit=config.limit, labelled=True, seed=config.seed, num_workers=config.num_workers,
        cache=config.cache,
    )
    if split.val is None or len(split.val) == 0:
        raise DataError("fine-tuning needs validation images: give --val-data or a --val-fraction above 0.")
    train = label_subset(split.train, config.label_fraction, config.seed)
    logger.info("fine-tuning %s encoder on %d labelled images (%d classes), validating on %d",
                config.encoder, len(train), len(train.classes), len(split.val))
    module = ClassifierModule(
        num_classes=len(train.classes), arch=config.arch,
        encoder_path=None if config.encoder == "none" else config.encoder,
        image_size=config.image_size, lr=config.lr, weight_decay=config.weight_decay,
    )
    data = ImageDataModule(train, split.val, batch_size=config.batch_size, seed=config.seed,
                           on_device=config.data_on_device)
    record_run(run_dir, {"job": "finetune", **config.to_dict(), "train_images": len(train)})
    if config.compile:
        compile_model(module)
    trainer = build_trainer(run_dir, max_epochs=config.max_epochs, devices=config.devices,
                            precision=config.precision, progress=config.progress)
    history = _AccuracyHistory()
    trainer.callbacks.append(history)
    started = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=resume_path(run_dir, config.resume), weights_only=True)
    seconds = time.perf_counter() - started
    if not history.history:
        raise DataError("no validation epoch ran; nothing to report.")
    result = FinetuneResult(run_dir, history.history[-1], max(history.history), len(train), seconds,
                            history.history)
    write_json(run_dir / "results.json", {"job": "finetune", "encoder": config.encoder,
                                          "arch": config.arch, **result.as_dict()})
    return result


def _with_encoder_settings(config: FinetuneConfig) -> FinetuneConfig:
    """Take architecture and image size from the encoder file unless given."""
    if config.encoder == "none":
        return config.replace(arch=config.arch or "resnet18")
    info = read_matching_info(config.encoder, config.arch)
    return config.replace(arch=info.arch, image_size=config.image_size or info.image_size)
