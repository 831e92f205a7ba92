"""Building the Lightning trainer the same way for every job."""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file, then renames it into place.

    An interrupted save leaves the previous checkpoint intact.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def default_accelerator() -> str:
    """``"gpu"`` when CUDA is usable, else ``"cpu"``."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def default_precision() -> str:
    """bf16 autocast where the GPU supports it, fp32 elsewhere."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def build_trainer(
    run_dir: Path,
    *,
    max_epochs: int,
    devices: Any = "auto",
    precision: str | None = None,
    progress: bool = True,
    checkpoints: bool = True,
    monitor_val: bool = True,
) -> pl.Trainer:
    """A trainer that logs to CSV (and TensorBoard when installed) in ``run_dir``
    and keeps ``checkpoints/last.ckpt`` up to date for ``--resume``."""
    # Versioned log folders (logs/version_N): a resumed run adds one, never overwrites.
    loggers: list[Logger] = [CSVLogger(run_dir, name="logs")]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", default_hp_metric=False))
    callbacks: list[pl.Callback] = []
    if checkpoints:
        callbacks.append(ModelCheckpoint(dirpath=run_dir / CHECKPOINT_DIR, save_last=True, save_top_k=0))
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", ".*The number of training batches .* is smaller than the logging interval.*")
    return pl.Trainer(
        default_root_dir=run_dir,
        max_epochs=max_epochs,
        accelerator=default_accelerator(),
        devices=devices,
        precision=precision or default_precision(),  # type: ignore[arg-type]
        logger=loggers,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=checkpoints,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=10,
        num_sanity_val_steps=0 if not monitor_val else 1,
        deterministic=False,
    )


def compile_model(module: pl.LightningModule) -> None:
    """``torch.compile`` the encoder and head in place.

    ``nn.Module.compile`` keeps the state-dict keys unchanged, so checkpoints
    and the exported encoder are the same as without compiling.
    """
    for name in ("encoder", "head"):
        getattr(module, name).compile()


def resume_path(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from, or ``None`` for a fresh start."""
    if not resume:
        return None
    path = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    if not path.is_file():
        from selfsup_core.errors import ConfigError

        raise ConfigError(f"--resume: no checkpoint at {path}; start a new run instead.")
    return path
