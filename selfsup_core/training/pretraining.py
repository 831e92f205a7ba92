"""``pretrain()``: train an encoder on a pretext task and export it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from selfsup_core.config import PretrainConfig, resolve_defaults
from selfsup_core.data.datamodule import ImageDataModule
from selfsup_core.data.sources import load_split
from selfsup_core.errors import TaskOptionError
from selfsup_core.models.encoders import check_image_size
from selfsup_core.models.export import WEIGHTS_NAME, EncoderInfo, save_encoder
from selfsup_core.plugin.host import PluginHost
from selfsup_core.plugin.registry import create_task
from selfsup_core.quiet import quiet_job
from selfsup_core.tasks.base import PretextTask
from selfsup_core.training.pretext_module import PretextModule
from selfsup_core.training.runs import (
    device_text,
    final_metrics,
    finish_checkpoint,
    record_run,
    resumed_config,
    settings_line,
    write_json,
)
from selfsup_core.training.trainer import compile_model, fit, start_run

logger = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    """What a pretraining run produced.

    Attributes:
        run_dir: The run folder (logs, checkpoints, config, previews).
        encoder_path: The exported ``encoder.safetensors``.
        metrics: Final-epoch metrics, e.g. ``{"val/loss": ..., "val/acc": ...}``.
        seconds: Wall time of the training itself.
        primary: False in the other processes of a multi-process run: they
            write nothing (the first process exports the encoder).
    """

    run_dir: Path
    encoder_path: Path
    metrics: dict[str, float]
    seconds: float
    primary: bool = True


@quiet_job
def pretrain(
    config: PretrainConfig | None = None, *, host: PluginHost | None = None, **overrides: Any
) -> PretrainResult:
    """Pretrain an encoder on a pretext task, then export it.

    Args:
        config: Settings; ``None`` starts from the defaults.
        host: Whose plugins provide the task and encoder; ``None`` is the
            process's host (:func:`~selfsup_core.plugin.host.get_plugin_host`).
        **overrides: Any :class:`~selfsup_core.config.PretrainConfig` field.

    Quiet by default: Lightning's banners, tips and known warnings are hidden
    unless ``verbose=True`` (:mod:`selfsup_core.quiet`); ``progress=False``
    also hides the progress bar.

    ``resume=True`` continues the run in ``out`` from ``checkpoints/last.ckpt``
    (saved every epoch) with the run's own ``config.yaml``
    (:func:`~selfsup_core.training.runs.resumed_config`).

    Raises:
        DivergenceError: a non-finite loss or weights; the last good checkpoint
            is kept and nothing is exported.
        RunInterrupted: SIGINT or SIGTERM, after saving ``checkpoints/last.ckpt``.

    Example:
        >>> result = pretrain(task="rotation", arch="tiny", max_epochs=1)  # doctest: +SKIP
        >>> result.encoder_path.name
        'encoder.safetensors'
    """
    config = (config or PretrainConfig()).updated(overrides, source="pretrain()")
    if config.resume:  # the run's own settings, from its config.yaml
        config = resumed_config(config, "pretrain")
    config = resolve_defaults(config, "pretrain")
    # Fail on a bad task, task option or architecture before touching data.
    task = create_task(config.task, host=host, **config.task_options)
    encoder = check_image_size(config.arch, config.image_size, host=host)  # ResNets need 32 px, tiny 8
    check_head(task, encoder, config.arch)
    info = EncoderInfo.from_mapping({"arch": config.arch, "task": config.task, "image_size": config.image_size},
                                    source="pretrain")  # an image size no encoder file accepts fails now

    logger.info(settings_line(config, "pretrain"))
    run = start_run(config, "pretrain", config.task, finished=WEIGHTS_NAME)  # this process's part of the run
    run_dir = run.dir
    split = load_split(
        config.data, config.image_size, val_fraction=config.val_fraction, limit=config.limit,
        seed=config.seed, num_workers=config.num_workers, cache=config.cache,
        strict=config.strict, report_to=run_dir if run.primary else None,
    )
    logger.info("pretraining %s on %s: %d train / %d val images, into %s",
                config.task, split.source, len(split.train), len(split.val or ()), run_dir)
    # Seeded once the data is read: decoding draws random numbers that a cache hit does not, and the
    # weights must not depend on the cache. The same seed gives the same weights in every process.
    pl.seed_everything(config.seed, workers=True, verbose=False)
    module = PretextModule(
        task=config.task, task_options=dict(config.task_options), arch=config.arch,
        preview_dir=str(run_dir / "previews"), lr=config.lr, weight_decay=config.weight_decay,
        channels_last=torch.cuda.is_available(), host=host,
    )
    data = ImageDataModule(split.train, split.val, batch_size=config.batch_size, seed=config.seed,
                           on_device=config.data_on_device)
    trainer = run.trainer
    if run.primary:
        record_run(run_dir, {"job": "pretrain", **config.to_dict(),
                             "device": device_text(config.devices, trainer.world_size),
                             "resolved_task_options": module.task.options.to_dict(),  # defaults included
                             "train_images": len(split.train), "skipped_images": len(split.train.skipped)})
    if config.compile:
        compile_model(module)
    started = time.perf_counter()
    fit(trainer, module, data, run_dir=run_dir, ckpt_path=run.resume_from)  # stops on divergence and signals
    seconds = time.perf_counter() - started
    metrics = final_metrics(trainer.callback_metrics)  # one value per metric: the last epoch's, over all processes
    encoder_path = run_dir / WEIGHTS_NAME
    if run.primary:  # the other processes trained the same weights: one writes them
        encoder_path = save_encoder(module.encoder, run_dir, info)
        write_json(run_dir / "results.json", {"job": "pretrain", "task": config.task, "arch": config.arch,
                                              "seconds": seconds, "metrics": metrics,
                                              "processes": trainer.world_size})
        logger.info("encoder written to %s", encoder_path)
        finish_checkpoint(run_dir, config.keep_checkpoint)  # deleted, or kept with a note saying it may be
    return PretrainResult(run_dir, encoder_path, metrics, seconds, primary=run.primary)


def check_head(task: PretextTask, encoder: torch.nn.Module, arch: str) -> None:
    """Build ``task``'s head on ``encoder``: options that only the encoder can judge
    (a U-Net's ``drop_skips`` against its stages) fail as one line, before any data is read.

    Raises:
        TaskOptionError: the head refuses the options on this encoder.
    """
    try:
        task.build_head(encoder)
    except ValueError as exc:
        raise TaskOptionError(f"task {task.name!r} on {arch}: {exc}") from None
