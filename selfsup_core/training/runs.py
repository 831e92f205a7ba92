"""Run folders: choosing, guarding, and recording what produced them."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata
import json
import logging
import math
import platform
from pathlib import Path
from typing import Any, TypeVar

import yaml

from selfsup_core.config import read_yaml
from selfsup_core.errors import ConfigError, OutputError
from selfsup_core.ioutil import atomic_write_text, check_writable, remove_stale_temporaries
from selfsup_core.options import Options
from selfsup_core.wording import counted

logger = logging.getLogger(__name__)
OptionsT = TypeVar("OptionsT", bound=Options)

RUNS_ROOT = Path("runs")
_PACKAGES = ("selfsup", "torch", "torchvision", "pytorch-lightning", "kornia", "pluggy", "pillow")


def new_run_dir(prefix: str, root: Path = RUNS_ROOT) -> Path:
    """A fresh folder name under ``root``: ``PREFIX-YYYYmmdd-HHMMSS[-N]``."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = root / f"{prefix}-{stamp}"
    n = 1
    while candidate.exists():
        n += 1
        candidate = root / f"{prefix}-{stamp}-{n}"
    return candidate


def prepare_run_dir(path: Path, *, resume: bool, overwrite: bool) -> Path:
    """Create the run folder, refusing to clobber earlier work.

    In a run of several processes only the first (global rank 0) calls it:
    the others find the folder it made.

    Raises:
        ConfigError: ``path`` holds files and neither ``resume`` nor
            ``overwrite`` was asked for, or ``resume`` with nothing to resume.
        OutputError: the folder cannot be created or written.
    """
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} is a file, not a folder.")
    occupied = path.is_dir() and any(path.iterdir())
    if resume and not occupied:
        raise ConfigError(f"--resume: {path} holds no earlier run to resume.")
    if occupied and not (resume or overwrite):
        raise ConfigError(
            f"{path} is not empty: pass --resume to continue that run, --overwrite to "
            f"replace its results, or another --out."
        )
    existed = path.exists()
    try:
        check_writable(path)  # before any decoding or training: a read-only or full disk fails now
    except OutputError:
        if not existed and path.is_dir() and not any(path.iterdir()):
            path.rmdir()  # made just now: a refused run leaves no empty folder behind
        raise
    if occupied:
        remove_stale_temporaries(path, path / "checkpoints")
    if occupied and overwrite and not resume:
        # Replaced, not mixed: a later --resume must never pick up the earlier run's checkpoint.
        for name in _REPLACED_ON_OVERWRITE:
            (path / name).unlink(missing_ok=True)
    return path


# What a new run in an --overwrite folder replaces at once (logs are versioned, previews rewritten).
_REPLACED_ON_OVERWRITE = ("checkpoints/last.ckpt", "encoder.safetensors", "encoder.json", "results.json")


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a run's results."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def record_run(folder: Path, config: dict[str, Any]) -> None:
    """Write the resolved configuration (YAML) and package versions (JSON) into ``folder``.

    ``out`` is recorded as ``folder``: without ``--out`` it was unset, and the
    folder a default name gave is the one a reader wants.
    """
    if "out" in config:
        config = {**config, "out": str(folder)}
    atomic_write_text(folder / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    atomic_write_text(folder / "versions.json", json.dumps(package_versions(), indent=2) + "\n")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as pretty, valid JSON, atomically.

    JSON has no NaN or infinity: such a value is written as ``null`` and named
    in a ``notes`` list, never as the bare ``NaN`` most parsers refuse.
    """
    notes: list[str] = []
    clean = _finite(payload, "", notes)
    if notes:
        clean["notes"] = [*clean.get("notes", []), *notes]
    atomic_write_text(path, json.dumps(clean, indent=2, allow_nan=False) + "\n")


def _finite(value: Any, where: str, notes: list[str]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        notes.append(f"{where} was {value} (not finite), written as null")
        return None
    if isinstance(value, dict):
        return {k: _finite(v, f"{where}.{k}" if where else str(k), notes) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{where}[{i}]", notes) for i, v in enumerate(value)]
    return value


def _plain(value: Any) -> Any:
    """Tuples as lists, as they come back from YAML, so equal settings compare equal."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# Options a resumed run may change: how long it trains and what it runs on, never what or how it learns.
RESUME_MAY_CHANGE = frozenset({
    "max_epochs", "progress", "devices", "num_nodes", "strategy", "precision", "num_workers", "cache",
    "data_on_device", "compile",
    "checkpoint_every_steps", "checkpoint_every_minutes", "keep_checkpoint", "verbose", "strict",
})
_RUN_CONTROL = frozenset({"out", "resume", "overwrite"})


def resumed_config(config: OptionsT, job: str) -> OptionsT:
    """The configuration a ``--resume`` continues with: the run's own ``config.yaml``.

    An option counts as given when it was set (:attr:`~selfsup_core.options.Options.given`:
    on the command line, in ``--config``, or as a keyword), even at its default value. Given options
    in :data:`RESUME_MAY_CHANGE` replace the saved values (``--max-epochs 30``
    extends a run); any other given option that differs from the saved one is
    refused by name, since continuing with other data or settings would
    silently mix two runs.

    Raises:
        ConfigError: no ``--out``, no ``config.yaml``, a run of another job, or conflicting options.
    """
    out = getattr(config, "out", None)
    if not out:
        raise ConfigError("--resume needs --out RUN: the folder of the run to continue.")
    path = Path(out) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume: {path} not found, so {out} holds no {job} run to continue; "
                          f"start a new run instead.")
    saved = read_yaml(path)
    if saved.get("job", job) != job:
        raise ConfigError(f"--resume: {out} holds a {saved['job']} run, not a {job} run.")
    names = [f.name for f in dataclasses.fields(config)]
    values = {k: v for k, v in saved.items() if k in names}
    conflicts = []
    for name in names:
        given = getattr(config, name)
        if name in _RUN_CONTROL or name not in config.given:
            continue  # not given: the run's own value
        if name in RESUME_MAY_CHANGE or name not in values:
            values[name] = given
        elif _plain(given) != _plain(values[name]):
            flag = "--" + name.replace("_", "-")
            had = "no value" if values[name] is None else repr(values[name])
            conflicts.append(f"{flag} {given!r} (the run has {had})")
    if conflicts:
        raise ConfigError(
            f"--resume continues {out} with its own settings ({path}); refused: {'; '.join(conflicts)}. "
            f"Drop them, or start a new run. A resumed run may change only "
            f"{', '.join('--' + n.replace('_', '-') for n in sorted(RESUME_MAY_CHANGE & set(names)))}."
        )
    values.update(out=str(out), resume=True, overwrite=False)
    logger.info("resuming %s with its saved settings (%s)", out, path)
    return type(config).from_mapping(values, source=str(path))


# -- mirroring a run (--like) ----------------------------------------------------------------

# What --like copies from a finetune run's config.yaml: the network, its input, the recipe, its data, and what
# picks its labelled images (seed, held-out share, limit), so both rows train and validate on the same ones.
MIRRORED = ("arch", "image_size", "max_epochs", "batch_size", "lr", "weight_decay", "label_fraction", "augment",
            "data", "val_data", "seed", "val_fraction", "limit")


def mirrored_settings(like: str | Path) -> tuple[dict[str, Any], str]:
    """The settings a baseline copies from ``like``, and where they came from.

    ``like`` is a run folder or an encoder file:

    * a ``finetune`` run folder (its ``config.yaml``): architecture, image size,
      the recipe (epochs, batch size, lr, weight decay, label fraction,
      augmentations), its train and validation folders, and the seed,
      validation share and limit, which pick the labelled images;
    * a ``pretrain`` run folder, ``encoder.safetensors`` or ``encoder.json``:
      architecture and image size (from ``encoder.json``; fine-tuning it uses
      the stated defaults, so a baseline that mirrors it does too).

    Raises:
        ConfigError: ``like`` is missing or holds neither.
    """
    path = Path(like).expanduser()
    if path.is_file() and path.suffix in (".safetensors", ".json"):
        folder = path.parent
    elif path.is_dir():
        folder = path
    elif path.exists():
        raise ConfigError(f"--like {like}: give a run folder or an encoder.safetensors, not {path.name}.")
    else:
        raise ConfigError(f"--like {like} does not exist: give a run folder (pretrain or finetune) "
                          f"or an encoder.safetensors.")
    saved = read_yaml(folder / "config.yaml") if (folder / "config.yaml").is_file() else {}
    if saved.get("job") == "finetune":
        values = {k: saved[k] for k in MIRRORED if saved.get(k) is not None}
        return values, f"{folder}/config.yaml"
    if (folder / "encoder.json").is_file():
        from selfsup_core.models.export import read_encoder_info  # torch: only when needed

        info = read_encoder_info(folder)
        return {"arch": info.arch, "image_size": info.image_size}, f"{folder}/encoder.json"
    if saved.get("job") == "pretrain":  # a run that has not exported its encoder yet
        return {k: saved[k] for k in ("arch", "image_size") if saved.get(k) is not None}, f"{folder}/config.yaml"
    raise ConfigError(f"--like {like}: no encoder.json and no finetune or pretrain config.yaml in {folder}.")


def apply_like(config: OptionsT) -> OptionsT:
    """``config`` with the settings it was not given (:attr:`~selfsup_core.options.Options.given`)
    taken from ``config.like``, if any.

    Settings given win, even at their default value; where one differs from
    the mirrored run, a warning says so.
    """
    like = getattr(config, "like", None)
    if not like:
        return config
    values, source = mirrored_settings(like)
    names = {f.name for f in dataclasses.fields(config)}
    updates = {}
    for name, value in values.items():
        if name not in names:
            continue
        current = getattr(config, name)
        if current is None or name not in config.given:
            updates[name] = value
        elif not _same_setting(name, current, value):
            logger.warning("--%s %s given: kept, although %s has %s", name.replace("_", "-"), current, source, value)
    return type(config).from_mapping({**config.to_dict(), **updates}, source=f"--like {like} ({source})")


def _same_setting(name: str, given: Any, mirrored: Any) -> bool:
    """Whether a given setting equals the mirrored run's; folders by where they lead, not how they are spelt."""
    if name in ("data", "val_data"):
        return Path(given).expanduser().resolve() == Path(mirrored).expanduser().resolve()
    return bool(given == mirrored)


def holds_out(config: Any) -> bool:
    """True when ``config`` validates on a held-out ``val_fraction`` of its ``data`` folder: a folder is
    given and no ``val_data`` (the built-in data has its own split)."""
    return (getattr(config, "data", None) is not None and getattr(config, "val_data", None) is None
            and getattr(config, "val_fraction", None) is not None)


def settings_line(config: Any, job: str) -> str:
    """The settings a pretraining, fine-tune or evaluation uses, in one line (the commands print it)."""
    parts = []
    if getattr(config, "task", None) is not None:  # pretraining
        options = dict(getattr(config, "task_options", None) or {})
        parts.append(f"task {config.task}" + (f" {options}" if options else ""))
    else:
        encoder = str(getattr(config, "encoder", "none"))
        like = getattr(config, "like", None)
        if like:
            encoder += f" (mirroring {like})"
        elif encoder == "none":
            encoder += " (from scratch, stated defaults; --like RUN mirrors a run)"
        parts.append(f"encoder {encoder}")
    parts += [f"arch {config.arch}", f"image size {config.image_size} px"]
    if job != "evaluate knn" and job != "evaluate linear":
        epochs = config.max_epochs
        parts += [counted(epochs, "epoch"), f"batch size {config.batch_size}", f"lr {config.lr:g}",
                  f"weight decay {config.weight_decay:g}"]
    if getattr(config, "label_fraction", None) is not None:
        parts.append(f"label fraction {config.label_fraction:g}")
    parts.append(f"seed {config.seed}")
    if holds_out(config):
        parts.append(f"val fraction {config.val_fraction:g}")
    if getattr(config, "limit", None) is not None:
        parts.append(f"limit {config.limit}")
    if getattr(config, "augment", None) is not None:
        parts.append(f"augment [{', '.join(config.augment)}]")
    if getattr(config, "stage", None) is not None:
        parts.append(f"stage {config.stage}")
    if getattr(config, "precision", None):
        parts.append(f"precision {config.precision}")
    return f"{job} settings: " + ", ".join(parts)


# -- what a finished run keeps ---------------------------------------------------------------


def final_metrics(callback_metrics: Any) -> dict[str, float]:
    """One value per metric: Lightning's ``x``, ``x_step`` and ``x_epoch`` become ``x``, the epoch's.

    A metric logged per step and per epoch appears three times in
    ``trainer.callback_metrics``; the epoch value (the mean over the last
    epoch) is the one that describes the run.
    """
    scalars = {str(k): float(v) for k, v in dict(callback_metrics).items() if getattr(v, "numel", lambda: 1)() == 1}
    metrics: dict[str, float] = {}
    for name, value in scalars.items():
        if name.endswith("_step"):
            continue
        if name.endswith("_epoch"):
            metrics[name.removesuffix("_epoch")] = value
        elif name + "_epoch" not in scalars:
            metrics[name] = value
    return dict(sorted(metrics.items()))


def device_text(devices: Any, processes: int = 1) -> str:
    """The device a run trains on, for ``config.yaml``: ``cpu``, ``cuda (NVIDIA H100 ...) x N``,
    and ``, N processes`` when several train together."""
    import torch

    several = f", {processes} processes" if processes > 1 else ""
    if not torch.cuda.is_available():
        return "cpu" + several
    count = torch.cuda.device_count() if devices in ("auto", -1) else (
        len(devices) if isinstance(devices, list) else int(devices))
    return f"cuda ({torch.cuda.get_device_name(0)}) x {count}{several}"


def finish_checkpoint(run_dir: Path, keep: bool) -> str:
    """After a finished run: delete ``checkpoints/last.ckpt`` unless ``keep``.

    Returns:
        The line it logs (INFO) saying what happened, or ``""`` without a checkpoint.
    """
    from selfsup_core.training.trainer import CHECKPOINT_DIR, LAST_CHECKPOINT  # Lightning: only here

    path = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    if not path.is_file():
        return ""
    if keep:
        note = (f"checkpoint kept: {path} ({path.stat().st_size / 1e6:.1f} MB) is needed only to train this "
                f"run further (--resume --max-epochs N); delete it otherwise, or pass --no-keep-checkpoint")
    else:
        path.unlink()
        if not any(path.parent.iterdir()):
            path.parent.rmdir()
        note = f"checkpoint deleted (the run is complete and keeps none): {path}"
    logger.info(note)
    return note
