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
from selfsup_core.models.encoders import check_image_size
from selfsup_core.models.export import check_encoder
from selfsup_core.plugin.host import PluginHost
from selfsup_core.quiet import quiet_job
from selfsup_core.training.finetune_module import ClassifierModule, build_augmentations
from selfsup_core.training.runs import (
    apply_like,
    device_text,
    finish_checkpoint,
    record_run,
    resumed_config,
    settings_line,
    write_json,
)
from selfsup_core.training.trainer import compile_model, fit, start_run

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
        history: Validation top-1 after each epoch.
        primary: False in the other processes of a multi-process run (they write nothing).
    """

    run_dir: Path
    val_acc: float
    best_val_acc: float
    train_images: int
    seconds: float
    history: list[float]
    primary: bool = True

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        plain = {**dataclasses.asdict(self), "run_dir": str(self.run_dir)}
        del plain["primary"]
        return plain


class _AccuracyHistory(Callback):
    def __init__(self) -> None:
        self.history: list[float] = []

    # Saved in the checkpoint, so a resumed run reports every epoch, not only those since the resume.
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [float(v) for v in state_dict.get("history", [])]

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and "val/acc" in trainer.callback_metrics:
            self.history.append(float(trainer.callback_metrics["val/acc"]))


@quiet_job
def finetune(
    config: FinetuneConfig | None = None, *, host: PluginHost | None = None, **overrides: Any
) -> FinetuneResult:
    """Fine-tune a classifier on labelled folders (or the built-in glyph classes).

    ``encoder="none"`` is the from-scratch baseline. ``like=RUN`` makes it the
    same network at the same size with the same recipe as ``RUN`` (a finetune
    run folder, a pretrain run folder or an ``encoder.safetensors``: see
    :func:`~selfsup_core.training.runs.mirrored_settings`); without it the
    stated defaults apply. The settings used are logged (INFO) in one line.
    Lightning's banners and known warnings are hidden unless ``verbose=True``.

    Args:
        config: Settings; ``None`` starts from the defaults.
        host: Whose plugins provide the encoder and the augmentations; ``None`` is the process's host.
        **overrides: Any :class:`~selfsup_core.config.FinetuneConfig` field.

    Example:
        >>> scratch = finetune(encoder="none", arch="tiny", max_epochs=1)  # doctest: +SKIP
        >>> 0 <= scratch.val_acc <= 1
        True
    """
    config = (config or FinetuneConfig()).updated(overrides, source="finetune()")
    if config.resume:  # the run's own settings, from its config.yaml
        config = resumed_config(config, "finetune")
    config = apply_like(config)  # --like RUN: its architecture, image size and recipe, where not given
    config = _with_encoder_settings(config)
    config = resolve_defaults(config, "finetune")
    assert config.arch is not None and config.label_fraction is not None  # set just above
    check_image_size(config.arch, config.image_size, host=host)  # before any data is read
    build_augmentations(config.augment, host=host)  # unknown names and bad options, before any data is read
    logger.info(settings_line(config, "finetune"))

    run = start_run(config, "finetune", "finetune", finished="results.json")  # this process's part of the run
    run_dir = run.dir
    split = load_split(
        config.data, config.image_size, val_data=config.val_data, val_fraction=config.val_fraction,
        limit=config.limit, labelled=True, seed=config.seed, num_workers=config.num_workers,
        cache=config.cache, strict=config.strict, report_to=run_dir if run.primary else None,
    )
    if split.val is None or len(split.val) == 0:
        raise DataError("fine-tuning needs validation images: give --val-data or a --val-fraction above 0.")
    train = label_subset(split.train, config.label_fraction, config.seed)
    logger.info("fine-tuning %s on %d labelled images (%d classes), validating on %d",
                "a randomly initialised encoder" if config.encoder == "none" else config.encoder,
                len(train), len(train.classes), len(split.val))
    # Seeded once the data is read: decoding draws random numbers that a cache hit does not, and the
    # weights must not depend on the cache. The same seed gives the same weights in every process.
    pl.seed_everything(config.seed, workers=True, verbose=False)
    module = ClassifierModule(
        num_classes=len(train.classes), arch=config.arch,
        encoder_path=None if config.encoder == "none" else config.encoder,
        image_size=config.image_size, lr=config.lr, weight_decay=config.weight_decay,
        augment=list(config.augment), host=host,
    )
    data = ImageDataModule(train, split.val, batch_size=config.batch_size, seed=config.seed,
                           on_device=config.data_on_device)
    trainer = run.trainer
    if run.primary:
        record_run(run_dir, {"job": "finetune", **config.to_dict(),
                             "device": device_text(config.devices, trainer.world_size), "train_images": len(train)})
    if config.compile:
        compile_model(module)
    history = _AccuracyHistory()
    trainer.callbacks.append(history)
    started = time.perf_counter()
    fit(trainer, module, data, run_dir=run_dir, ckpt_path=run.resume_from)  # stops on divergence and signals
    seconds = time.perf_counter() - started
    if not history.history:
        raise DataError("no validation epoch ran; nothing to report.")
    result = FinetuneResult(run_dir, history.history[-1], max(history.history), len(train), seconds,
                            history.history, primary=run.primary)
    if run.primary:  # accuracies are over every process's share of the validation images
        write_json(run_dir / "results.json", {"job": "finetune", "encoder": config.encoder, "arch": config.arch,
                                              "seed": config.seed, "label_fraction": config.label_fraction,
                                              "val_images": len(split.val), "processes": trainer.world_size,
                                              **result.as_dict()})
        finish_checkpoint(run_dir, config.keep_checkpoint)
    return result


def _with_encoder_settings(config: FinetuneConfig) -> FinetuneConfig:
    """Take architecture and image size from the encoder file unless given."""
    if config.encoder == "none":
        return config.replace(arch=config.arch or "resnet18")
    info = check_encoder(config.encoder, config.arch)  # weights and description, before any data is read
    if config.image_size is not None and info.image_size is not None and config.image_size != info.image_size:
        logger.warning("--image-size %d given: kept, although %s was pretrained at %d px (features learnt at "
                       "one scale can transfer worse to another)", config.image_size, config.encoder,
                       info.image_size)
    return config.replace(arch=info.arch, image_size=config.image_size or info.image_size)
