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
from selfsup_core.models.encoders import build_encoder
from selfsup_core.models.export import EncoderInfo, save_encoder
from selfsup_core.plugin.host import PluginHost
from selfsup_core.plugin.registry import build_task_registry, check_options
from selfsup_core.training.pretext_module import PretextModule
from selfsup_core.training.runs import prepare_run_dir, record_run, write_json
from selfsup_core.training.trainer import build_trainer, compile_model, resume_path

logger = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    """What a pretraining run produced.

    Attributes:
        run_dir: The run folder (logs, checkpoints, config, previews).
        encoder_path: The exported ``encoder.safetensors``.
        metrics: Final-epoch metrics, e.g. ``{"val/loss": ..., "val/acc": ...}``.
        seconds: Wall time of the training itself.
    """

    run_dir: Path
    encoder_path: Path
    metrics: dict[str, float]
    seconds: float


def pretrain(
    config: PretrainConfig | None = None, *, host: PluginHost | None = None, **overrides: Any
) -> PretrainResult:
    """Pretrain an encoder on a pretext task, then export it.

    Args:
        config: Settings; ``None`` starts from the defaults.
        host: Whose plugins provide the task and encoder; ``None`` is the
            process's host (:func:`~selfsup_core.plugin.host.get_plugin_host`).
        **overrides: Any :class:`~selfsup_core.config.PretrainConfig` field.

    Example:
        >>> result = pretrain(task="rotation", arch="tiny", max_epochs=1)  # doctest: +SKIP
        >>> result.encoder_path.name
        'encoder.safetensors'
    """
    config = (config or PretrainConfig()).updated(overrides, source="pretrain()")
    config = resolve_defaults(config, "pretrain")
    # Fail on a bad task, task option or architecture before touching data.
    spec = build_task_registry(host).get(config.task).spec
    check_options(spec.factory, config.task_options, what=f"task {config.task!r}")
    build_encoder(config.arch, host=host)

    run_dir = prepare_run_dir(config.out, config.task, resume=config.resume, overwrite=config.overwrite)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    split = load_split(
        config.data, config.image_size, val_fraction=config.val_fraction, limit=config.limit,
        seed=config.seed, num_workers=config.num_workers, cache=config.cache,
    )
    logger.info("pretraining %s on %s: %d train / %d val images",
                config.task, split.source, len(split.train), len(split.val or ()))
    module = PretextModule(
        task=config.task, task_options=dict(config.task_options), arch=config.arch,
        preview_dir=str(run_dir / "previews"), lr=config.lr, weight_decay=config.weight_decay,
        channels_last=torch.cuda.is_available(), host=host,
    )
    data = ImageDataModule(split.train, split.val, batch_size=config.batch_size, seed=config.seed,
                           on_device=config.data_on_device)
    record_run(run_dir, {"job": "pretrain", **config.to_dict(),
                         "resolved_task_options": module.task.options.to_dict(),  # defaults included
                         "train_images": len(split.train), "skipped_images": len(split.train.skipped)})
    if config.compile:
        compile_model(module)
    trainer = build_trainer(run_dir, max_epochs=config.max_epochs, devices=config.devices,
                            precision=config.precision, progress=config.progress)
    started = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=resume_path(run_dir, config.resume), weights_only=True)
    seconds = time.perf_counter() - started
    info = EncoderInfo(arch=config.arch, task=config.task, image_size=config.image_size)
    encoder_path = save_encoder(module.encoder, run_dir, info)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    write_json(run_dir / "results.json", {"job": "pretrain", "task": config.task, "arch": config.arch,
                                          "seconds": seconds, "metrics": metrics})
    logger.info("encoder written to %s", encoder_path)
    return PretrainResult(run_dir, encoder_path, metrics, seconds)
