"""Building the Lightning trainer the same way for every job, and keeping its checkpoint.

Every run keeps one checkpoint, ``checkpoints/last.ckpt``, rewritten
atomically at the end of every epoch (and, if asked, every N steps or
minutes), so a killed run loses at most that much. A non-finite loss or
weight stops training before it can overwrite the last good checkpoint.
SIGINT and SIGTERM finish the current step, save, and raise
:class:`~selfsup_core.errors.RunInterrupted` (a second signal stops at once).
"""

from __future__ import annotations

import datetime
import importlib.util
import logging
import math
import os
import pickle
import shutil
import signal
import sys
import threading
import time
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException

from selfsup_core.errors import CheckpointError, ConfigError, DivergenceError, OutputError, RunInterrupted, SelfsupError
from selfsup_core.ioutil import atomic_write, disk_error
from selfsup_core.training.runs import final_metrics, new_run_dir, prepare_run_dir

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file, then renames it into place.

    An interrupted save leaves the previous checkpoint intact; a full disk is
    one :class:`~selfsup_core.errors.OutputError` naming the checkpoint.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_write(path, lambda handle: torch.save(checkpoint, handle))


@dataclass(frozen=True)
class CheckpointState:
    """Where a checkpoint stands: ``epochs_completed`` whole epochs, ``global_step`` optimiser steps."""

    path: Path
    epochs_completed: int
    global_step: int


def read_checkpoint(path: str | os.PathLike[str]) -> CheckpointState:
    """Check that ``path`` is a selfsup checkpoint and say how far it got.

    Loads with ``weights_only=True``: a file that is not plain tensors and
    values is refused, and nothing in it runs.

    Raises:
        CheckpointError: unreadable, not a checkpoint, or a pickle that asks to run code.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path} is not a selfsup checkpoint (refused to unpickle: "
                              f"{_unpickling_reason(exc)}).") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt file can fail in many ways inside torch.load
        reason = (str(exc).strip().splitlines() or [""])[0] or type(exc).__name__
        raise CheckpointError(f"{path} is not a selfsup checkpoint (cannot read it: {reason}).") from None
    if not isinstance(state, dict) or not {"state_dict", "epoch", "global_step"} <= state.keys():
        raise CheckpointError(f"{path} is not a selfsup checkpoint (no training state in it).")
    own = state.get("selfsup")
    if isinstance(own, dict) and isinstance(own.get("epochs_completed"), int):
        epochs = own["epochs_completed"]
    else:  # written before selfsup recorded it: Lightning's loop counters
        try:
            epochs = int(state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
        except (KeyError, TypeError, ValueError):
            epochs = int(state["epoch"])
    return CheckpointState(path, epochs, int(state["global_step"]))


def _unpickling_reason(exc: BaseException) -> str:
    """The useful line of torch's weights-only refusal (not its advice to load unsafely)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].split("Check the documentation", 1)[0]
    return " ".join(text.split())[:200] or type(exc).__name__


class _StopRequest:
    """SIGINT/SIGTERM during training: the first asks to stop after the current step, a second stops at once."""

    def __init__(self, resume_hint: str) -> None:
        self.resume_hint = resume_hint
        self.signum: int | None = None
        self.last_saved: str = "no checkpoint was saved yet"
        self.saved_any = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise RunInterrupted(
                f"stopped at once by a second {signal.Signals(signum).name}; {self.last_saved}. "
                f"Resume with: {self.resume_hint}", 128 + signum)
        self.signum = signum  # the training loop saves and stops at the end of this step

    def install(self) -> dict[int, Any]:
        """Handle the stop signals (main thread only); returns the handlers it replaced."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, self._handle) for s in _STOP_SIGNALS}

    @contextmanager
    def handling(self) -> Iterator[None]:
        previous = self.install()
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


class RunCheckpoint(Callback):
    """Keeps ``checkpoints/last.ckpt`` up to date, checks for divergence, and stops on SIGINT/SIGTERM.

    Saves at the end of every epoch (after validation) and, optionally, every
    ``every_n_steps`` optimiser steps or ``every_minutes`` of training. Always
    the same file, replaced atomically. Before each save the weights must be
    finite; a non-finite loss (training) or validation loss raises
    :class:`~selfsup_core.errors.DivergenceError` before it can be saved.

    Args:
        path: The checkpoint file.
        resume_hint: The command that resumes the run, for messages.
        every_n_steps: Also save every N optimiser steps (``None``: no).
        every_minutes: Also save every so many minutes (``None``: no).
    """

    def __init__(self, path: Path, resume_hint: str, every_n_steps: int | None = None,
                 every_minutes: float | None = None) -> None:
        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self.every_seconds = None if every_minutes is None else every_minutes * 60
        self.stop = _StopRequest(resume_hint)
        self._saved_step = -1
        self._saved_at = time.monotonic()
        self._epoch_end = False

    # -- saving ---------------------------------------------------------------------------

    def _save(self, trainer: pl.Trainer, *, epoch_end: bool) -> None:
        _check_finite_weights(trainer.lightning_module, trainer, self)
        self._epoch_end = epoch_end
        trainer.save_checkpoint(self.path, weights_only=False)  # optimiser, schedule and loops too
        self._saved_step, self._saved_at = trainer.global_step, time.monotonic()
        self.stop.saved_any = True
        self.stop.last_saved = (f"the last checkpoint is {self.path} "
                                f"({self._epochs_completed(trainer)} epoch(s) completed, step {trainer.global_step})")

    def _epochs_completed(self, trainer: pl.Trainer) -> int:
        return trainer.current_epoch + (1 if self._epoch_end else 0)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint["selfsup"] = {"epochs_completed": self._epochs_completed(trainer),
                                 "global_step": trainer.global_step}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._saved_at = time.monotonic()
        self.stop.install()  # after Lightning's own SIGTERM handler: this one decides

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        due = bool(self.every_n_steps) and trainer.global_step % self.every_n_steps == 0  # type: ignore[operator]
        due = due or (self.every_seconds is not None and time.monotonic() - self._saved_at >= self.every_seconds)
        # Several processes: a signal or a clock seen by one of them decides for all (saving is collective).
        stop, due = agreed(trainer, self.stop.signum is not None, due)
        if stop:
            self.stop.signum = self.stop.signum or signal.SIGTERM  # another process's signal
            self._save(trainer, epoch_end=False)
            raise self._interrupted(trainer)
        if due and trainer.global_step != self._saved_step:
            self._save(trainer, epoch_end=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, epoch_end=True)  # after validation: the epoch is complete
        (stop,) = agreed(trainer, self.stop.signum is not None)
        if stop:
            self.stop.signum = self.stop.signum or signal.SIGTERM
            raise self._interrupted(trainer)

    def _interrupted(self, trainer: pl.Trainer) -> RunInterrupted:
        assert self.stop.signum is not None
        name = signal.Signals(self.stop.signum).name
        return RunInterrupted(f"interrupted by {name}; checkpoint saved: {self.path} "
                              f"({self._epochs_completed(trainer)} epoch(s) completed, step {trainer.global_step}). "
                              f"Resume with: {self.stop.resume_hint}", 128 + self.stop.signum)

    # -- divergence -----------------------------------------------------------------------

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        (diverged,) = agreed(trainer, not bool(torch.isfinite(loss.detach()).all()))  # any process's loss
        if diverged:
            raise self._diverged(trainer, pl_module, f"at step {trainer.global_step + 1}",
                                 f"the training loss is {_number(loss)}")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bad = {k: v for k, v in trainer.callback_metrics.items()
               if k.endswith("loss") and v.numel() == 1 and not math.isfinite(float(v))}
        if bad:
            raise self._diverged(trainer, pl_module, f"in validation after step {trainer.global_step}",
                                 ", ".join(f"{k} is {_number(v)}" for k, v in bad.items()))

    def _diverged(self, trainer: pl.Trainer, pl_module: pl.LightningModule, when: str,
                  what: str) -> DivergenceError:
        metrics = ", ".join(f"{k}={_number(v)}" for k, v in sorted(trainer.callback_metrics.items())
                            if v.numel() == 1)
        kept = (f"the last good checkpoint, {self.path}, is kept" if self.path.is_file()
                else "no checkpoint was saved before it")
        lr = pl_module.hparams.get("lr") if hasattr(pl_module, "hparams") else None
        hint = f"lower --lr (it is {lr:g}) and start a new run" if isinstance(lr, float) else "lower --lr"
        return DivergenceError(
            f"training diverged {when} (epoch {trainer.current_epoch + 1}): {what}"
            f"{f' (metrics: {metrics})' if metrics else ''}. Stopped; nothing was exported; {kept}. "
            f"Try: {hint}.")


def _number(value: Any) -> str:
    value = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _check_finite_weights(module: pl.LightningModule, trainer: pl.Trainer, callback: RunCheckpoint) -> None:
    """Refuse to checkpoint non-finite weights: the last good checkpoint stays."""
    tensors = [t for t in module.state_dict().values() if t.is_floating_point()]
    if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        raise callback._diverged(trainer, module, f"after step {trainer.global_step}",
                                 "the weights are no longer finite")


def default_accelerator() -> str:
    """``"gpu"`` when CUDA is usable, else ``"cpu"``."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def default_precision() -> str:
    """bf16 autocast where the GPU supports it, fp32 elsewhere."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


class EpochLog(Callback):
    """One INFO line per finished epoch where no progress bar shows (``--no-progress``, a log file):
    the epoch, its seconds and its metrics, so a batch job's log shows how training goes.

    Example line: ``epoch 2/15 (41.3 s): train/acc 0.412, train/loss 1.28, val/acc 0.455, val/loss 1.21``
    """

    def __init__(self) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:  # the metrics are the run's; once is enough
            return
        metrics = ", ".join(f"{name} {value:.4g}" for name, value in final_metrics(trainer.callback_metrics).items())
        logger.info("epoch %d/%s (%.1f s): %s", trainer.current_epoch + 1, trainer.max_epochs,
                    time.perf_counter() - self._started, metrics or "no metrics logged")


def interactive_output() -> bool:
    """Whether progress bars have a reader: stderr (where Lightning draws them) is a terminal, or a
    Jupyter kernel renders them."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def build_trainer(
    run_dir: Path,
    *,
    max_epochs: int,
    devices: Any = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    precision: str | None = None,
    progress: bool | None = None,
    checkpoints: bool = True,
    monitor_val: bool = True,
    resume_hint: str | None = None,
    checkpoint_every_steps: int | None = None,
    checkpoint_every_minutes: float | None = None,
) -> pl.Trainer:
    """A trainer that logs to CSV (and TensorBoard when installed) in ``run_dir``
    and keeps ``checkpoints/last.ckpt`` up to date for ``--resume`` (see :class:`RunCheckpoint`).

    ``devices``, ``num_nodes`` and ``strategy`` go to Lightning as they are:
    several processes train with its DDP, started by its own launcher, by
    ``torchrun`` or by SLURM. The data module shards the data itself
    (:class:`~selfsup_core.data.datamodule.ImageDataModule`), so Lightning's
    sampler replacement is off.

    ``progress=None`` shows the progress bar only where someone watches
    (:func:`interactive_output`), so a run whose output goes to a log file
    writes no bar redraws into it.

    Run it with :func:`fit`, which adds the signal handling and the one-line disk errors.

    Raises:
        ConfigError: Lightning refuses the devices, nodes or strategy (one line, its reason).
    """
    # Versioned log folders (logs/version_N): a resumed run adds one, never overwrites.
    loggers: list[Logger] = [CSVLogger(run_dir, name="logs")]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", default_hp_metric=False))
    callbacks: list[pl.Callback] = []
    if checkpoints:
        callbacks.append(RunCheckpoint(
            run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT, resume_hint or f"--resume --out {run_dir}",
            every_n_steps=checkpoint_every_steps, every_minutes=checkpoint_every_minutes))
    show_progress = interactive_output() if progress is None else progress
    if not show_progress:
        callbacks.append(EpochLog())
    # Lightning's known warnings are silenced by the jobs (selfsup_core.quiet), not here.
    check_launch(devices, num_nodes)
    try:
        return pl.Trainer(
            default_root_dir=run_dir,
            max_epochs=max_epochs,
            accelerator=default_accelerator(),
            devices=devices,
            num_nodes=num_nodes,
            strategy=strategy,
            precision=precision or default_precision(),  # type: ignore[arg-type]
            logger=loggers,
            callbacks=callbacks,
            plugins=[AtomicCheckpointIO()],
            enable_checkpointing=False,  # RunCheckpoint writes the one checkpoint
            enable_progress_bar=show_progress,
            enable_model_summary=False,
            log_every_n_steps=10,
            num_sanity_val_steps=0 if not monitor_val else 1,
            deterministic=False,
            use_distributed_sampler=False,  # ImageDataModule gives each process its own shard
        )
    except (MisconfigurationException, ValueError, RuntimeError, TypeError) as exc:
        raise refused_by_lightning(devices, num_nodes, strategy, exc) from None


def refused_by_lightning(devices: Any, num_nodes: int, strategy: str, exc: BaseException) -> ConfigError:
    """Lightning's reason for refusing the process settings, as one line."""
    return ConfigError(f"--devices {devices} --num-nodes {num_nodes} --strategy {strategy}: "
                       f"Lightning refuses them: {' '.join(str(exc).split())}")


def check_launch(devices: Any, num_nodes: int) -> None:
    """Refuse process settings that cannot start, before anything waits for processes that never come.

    * Under ``torchrun`` (``WORLD_SIZE`` set by it), ``--devices`` x ``--num-nodes``
      must equal the processes it started: otherwise Lightning either trains
      each process alone, all writing one folder, or stops with a traceback.
    * ``--num-nodes`` above 1 needs something that starts the processes on
      every machine: torchrun, SLURM, or Lightning's launcher run on each
      machine with ``NODE_RANK`` and ``MASTER_ADDR`` set. Without one, the
      first process would wait for the others for half an hour.

    Raises:
        ConfigError: naming the mismatch and the way out.
    """
    started = os.environ.get("WORLD_SIZE", "")
    if os.environ.get("TORCHELASTIC_RUN_ID") and started.isdigit() and isinstance(devices, int) and devices > 0:
        if devices * num_nodes != int(started):
            raise ConfigError(
                f"torchrun started {started} processes, but --devices {devices} --num-nodes {num_nodes} "
                f"makes {devices * num_nodes}: give --devices equal to --nproc-per-node (and --num-nodes "
                f"to --nnodes).")
    launched = any(os.environ.get(name) for name in ("TORCHELASTIC_RUN_ID", "SLURM_NTASKS")) or (
        os.environ.get("NODE_RANK") is not None and os.environ.get("MASTER_ADDR") is not None)
    if num_nodes > 1 and not launched:
        raise ConfigError(
            f"--num-nodes {num_nodes}: nothing started processes on the other machines, so this one would "
            f"wait for them for half an hour. Start the run with torchrun or SLURM on every machine (see "
            f"docs/index.md, \"Multi-GPU and multi-node\"), or set NODE_RANK and MASTER_ADDR there.")


@dataclass
class Run:
    """A run as every one of its processes sees it: the folder, the trainer, where to resume from.

    Attributes:
        dir: The run folder (created by the first process).
        trainer: The Lightning trainer, its processes already known.
        resume_from: ``checkpoints/last.ckpt`` to continue from, or ``None``.
    """

    dir: Path
    trainer: pl.Trainer
    resume_from: Path | None

    @property
    def primary(self) -> bool:
        """Whether this process writes the run's files (global rank 0); the others only train."""
        return bool(self.trainer.is_global_zero)


def start_run(config: Any, job: str, prefix: str, finished: str) -> Run:
    """Open a ``pretrain`` or ``finetune`` run (``config``: a :class:`~selfsup_core.config.RunConfig`)
    in this process, whichever of the run's processes it is.

    The trainer is built first, so that each process knows its rank before
    any file is touched: rank 0 creates and guards the folder (and later
    writes every file of the run); the others only read it.

    Args:
        config: The job's resolved settings.
        job: ``pretrain`` or ``finetune`` (for the resume hint).
        prefix: Name of a new folder in ``runs/`` when ``config.out`` is unset.
        finished: The file only a finished run has (``encoder.safetensors``, ``results.json``).

    Raises:
        ConfigError: several processes without ``--out`` (each would name its own folder),
            a folder that is not to be reused, or nothing to resume.
    """
    run_dir = Path(config.out) if config.out else new_run_dir(prefix)
    trainer = build_trainer(run_dir, max_epochs=config.max_epochs, devices=config.devices,
                            num_nodes=config.num_nodes, strategy=config.strategy,
                            precision=config.precision, progress=config.progress,
                            resume_hint=resume_command(job, run_dir),
                            checkpoint_every_steps=config.checkpoint_every_steps,
                            checkpoint_every_minutes=config.checkpoint_every_minutes)
    if trainer.world_size > 1 and not config.out:
        raise ConfigError(f"{trainer.world_size} processes (--devices {config.devices}, --num-nodes "
                          f"{config.num_nodes}) need --out DIR: every process must find the same run folder.")
    with rank_zero_outcome(trainer, "run folder"):  # the others fail with rank 0's refusal, at once
        if trainer.is_global_zero:
            prepare_run_dir(run_dir, resume=config.resume, overwrite=config.overwrite)
    resume_from = resume_path(run_dir, config.resume, max_epochs=config.max_epochs,
                              finished=run_dir / finished)  # checked before any data is read
    return Run(run_dir, trainer, resume_from)


def resume_command(job: str, run_dir: Path) -> str:
    """The command that resumes a run, as its messages print it.

    Under torchrun, the same torchrun line with ``--resume``: a plain
    ``selfsup`` command would go on in one process.

    Example:
        >>> resume_command("pretrain", Path("runs/rot"))  # doctest: +SKIP
        'selfsup pretrain --resume --out runs/rot'
    """
    command = f"selfsup {job} --resume --out {run_dir}"
    if "TORCHELASTIC_RUN_ID" in os.environ:  # torchrun started this process and its siblings
        return f"the same torchrun line with --resume added (torchrun ... -m selfsup_core.cli {job} --resume " \
               f"--out {run_dir} ...)"
    return command


@contextmanager
def rank_zero_outcome(trainer: pl.Trainer, what: str) -> Iterator[None]:
    """Every process that torchrun started leaves the block as rank 0 did: on, or with rank 0's error.

    For a step that only rank 0 takes before training (checking the run
    folder). Without it, when rank 0 refused (a non-empty ``--out``, say), the
    others went on to the process group's start and waited there for it until
    torchrun killed them. Rank 0 posts its outcome in torchrun's own key-value
    store, which every process of a torchrun launch can reach; other launchers
    (Lightning's own, which starts the other processes only after this step;
    SLURM) are left as they are.

    Args:
        trainer: The run's trainer (its rank and process count).
        what: Names the step in the key and in the others' error.
    """
    store = _launcher_store(trainer)
    if store is None:
        yield
        return
    key = f"selfsup/{what}"
    if trainer.is_global_zero:
        try:
            yield
        except BaseException as exc:
            store.set(key, f"{type(exc).__name__}\n{exc}")
            raise
        store.set(key, "ok")
        return
    yield
    outcome = store.get(key).decode()  # waits for rank 0
    if outcome != "ok":
        kind, message = outcome.split("\n", 1)
        refusal = {"ConfigError": ConfigError, "OutputError": OutputError}.get(kind)  # what this step refuses with
        if refusal is not None:
            raise refusal(message)
        raise SelfsupError(f"process 0 failed while checking the {what}: {kind}: {message}")


def _launcher_store(trainer: pl.Trainer) -> Any:
    """torchrun's key-value store for this launch attempt, or ``None`` outside torchrun or in one process."""
    if trainer.world_size == 1 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from torch.distributed import PrefixStore, TCPStore

    client = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                      timeout=datetime.timedelta(minutes=10))
    return PrefixStore(f"selfsup/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", client)


def agreed(trainer: pl.Trainer, *flags: bool) -> list[bool]:
    """Each flag, true if it is true in any process of the run.

    Every process calls it at the same point; decisions that end in a
    collective (saving a checkpoint, stopping) must be the same everywhere,
    or the processes wait on each other for ever. One process: the flags.
    """
    if trainer.world_size == 1:
        return list(flags)
    votes = torch.tensor([float(flag) for flag in flags], device=trainer.strategy.root_device)
    return [bool(v) for v in trainer.strategy.reduce(votes, reduce_op="max").tolist()]


def fit(trainer: pl.Trainer, module: pl.LightningModule, datamodule: pl.LightningDataModule, *,
        run_dir: Path, ckpt_path: Path | None) -> None:
    """``trainer.fit`` with SIGINT/SIGTERM handled (save, then :class:`RunInterrupted`) and one-line disk errors.

    Raises:
        RunInterrupted: a stop signal; ``checkpoints/last.ckpt`` holds the last finished step.
        DivergenceError: a non-finite loss or weights; the last good checkpoint is kept.
        OutputError: no space left on the device (or it turned read-only) while writing the run.
    """
    if trainer.is_global_zero:
        warn_if_short_of_space(run_dir, module)
    run_checkpoint = next((c for c in trainer.callbacks if isinstance(c, RunCheckpoint)), None)  # type: ignore[attr-defined]
    stop = run_checkpoint.stop if run_checkpoint is not None else _StopRequest(f"--resume --out {run_dir}")
    with stop.handling():
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except SIGTERMException:  # Lightning's own SIGTERM stop (outside the steps this module handles)
            raise RunInterrupted(f"terminated by SIGTERM; {stop.last_saved}. Resume with: {stop.resume_hint}",
                                 128 + signal.SIGTERM) from None
        except OutputError as exc:  # a checkpoint save met a full or read-only disk
            raise _with_way_back(exc, stop) from exc
        except (OSError, RuntimeError) as exc:  # torch raises a RuntimeError over a failed write
            error = disk_error(exc, getattr(exc, "filename", None) or run_dir)
            if error is None:
                raise
            raise _with_way_back(error, stop) from exc


def _with_way_back(error: OutputError, stop: _StopRequest) -> OutputError:
    """``error``, plus which checkpoint survived and the command that goes on from it."""
    if stop.saved_any:
        return OutputError(f"{error} Nothing earlier is lost: {stop.last_saved}; once there is room, go on "
                           f"with: {stop.resume_hint}")
    return error


def checkpoint_bytes(module: torch.nn.Module) -> int:
    """About how large a checkpoint of ``module`` is: its weights and buffers, plus AdamW's two
    moments of each trainable weight (within a few per cent; the rest is metadata)."""
    weights = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    moments = sum(2 * p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    return weights + moments


def warn_if_short_of_space(run_dir: Path, module: torch.nn.Module) -> bool:
    """Warn, before training, when ``run_dir``'s disk cannot hold what the run will write.

    A save holds the previous checkpoint and the new one at once (it is
    atomic), so a disk without room for two stops the run at its second
    checkpoint: better said now than after the first epoch.

    Returns:
        Whether it warned.
    """
    need = 2 * checkpoint_bytes(module)
    free = shutil.disk_usage(run_dir).free
    if free >= need:
        return False
    logger.warning("only %.1f MB free in %s: this model's checkpoint takes about %.1f MB and a save briefly "
                   "holds two, so the run may stop with 'no space left on device'; free some space or choose "
                   "another --out", free / 1e6, run_dir, need / 2e6)
    return True


def compile_model(module: pl.LightningModule) -> None:
    """``torch.compile`` the encoder and head in place.

    ``nn.Module.compile`` keeps the state-dict keys unchanged, so checkpoints
    and the exported encoder are the same as without compiling.
    """
    for name in ("encoder", "head"):
        getattr(module, name).compile()


def resume_path(run_dir: Path, resume: bool, *, max_epochs: int | None = None,
                finished: Path | None = None) -> Path | None:
    """The checkpoint to resume from, checked, or ``None`` for a fresh start.

    Args:
        run_dir: The run folder.
        resume: Whether ``--resume`` was given.
        max_epochs: The epochs the resumed run is to reach.
        finished: A file that only a finished run has (its encoder or results).

    Raises:
        ConfigError: no checkpoint, or the run already finished ``max_epochs`` epochs.
        CheckpointError: the checkpoint is unreadable or not selfsup's.
    """
    if not resume:
        return None
    path = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    if not path.is_file() and finished is not None and finished.is_file():
        raise ConfigError(f"--resume: {run_dir} is complete ({finished.name} written) and its checkpoint "
                          f"was deleted, so it cannot be trained further; start a new run instead.")
    if not path.is_file():
        raise ConfigError(f"--resume: no checkpoint at {path}; start a new run instead.")
    state = read_checkpoint(path)
    if max_epochs is not None and state.epochs_completed >= max_epochs and finished is not None \
            and finished.is_file():
        raise ConfigError(
            f"{run_dir} is already complete: {state.epochs_completed} epoch(s) trained (--max-epochs "
            f"{max_epochs} asks for no more) and {finished.name} written. Give a --max-epochs above "
            f"{state.epochs_completed} to train it further.")
    logger.info("resuming from %s: %d epoch(s) completed, step %d", path, state.epochs_completed, state.global_step)
    return path
