"""Run configurations: defaults < YAML file < command line.

Each job has a dataclass of plain values. ``None`` means "choose for me":
:func:`resolve_defaults` fills those from the data source and the device,
small and quick for the built-in data on a CPU, larger for folders on a GPU.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml

from selfsup_core.errors import ConfigError


@dataclass
class RunConfig:
    """Settings every training job shares."""

    data: str | None = None
    image_size: int | None = None
    batch_size: int | None = None
    max_epochs: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.05
    seed: int = 0
    num_workers: int | None = None
    devices: Any = "auto"
    precision: str | None = None
    limit: int | None = None
    out: str | None = None
    resume: bool = False
    overwrite: bool = False
    cache: bool = True
    data_on_device: bool | None = None
    compile: bool = False
    progress: bool = True


@dataclass
class PretrainConfig(RunConfig):
    """``selfsup pretrain`` settings."""

    task: str = "rotation"
    task_options: dict[str, Any] = field(default_factory=dict)
    arch: str = "resnet18"
    val_fraction: float = 0.1


@dataclass
class FinetuneConfig(RunConfig):
    """``selfsup finetune`` settings. ``encoder="none"`` trains from scratch."""

    encoder: str = "none"
    arch: str | None = None
    val_data: str | None = None
    val_fraction: float = 0.2
    label_fraction: float = 1.0


ConfigT = TypeVar("ConfigT", bound=RunConfig)

# Defaults chosen from where the data comes from and what runs it.
_BUILTIN = {"image_size": 32, "batch_size": 128}
_FOLDER_CPU = {"image_size": 64, "batch_size": 128}
_FOLDER_GPU = {"image_size": 128, "batch_size": 256}
_EPOCHS = {("pretrain", True): 12, ("pretrain", False): 30, ("finetune", True): 15, ("finetune", False): 30}


def config_from_mapping(cls: type[ConfigT], values: Mapping[str, Any], source: str) -> ConfigT:
    """Build ``cls`` from a mapping, rejecting unknown keys with the known ones listed."""
    known = {f.name for f in dataclasses.fields(cls)}
    values = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}."
        )
    return cls(**values)


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML configuration file (a mapping at the top level)."""
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values.")
    return loaded


def resolve_defaults(config: ConfigT, job: str) -> ConfigT:
    """Fill every ``None`` size/epoch/worker setting from the data source and device."""
    builtin = config.data is None
    table = _BUILTIN if builtin else (_FOLDER_GPU if torch.cuda.is_available() else _FOLDER_CPU)
    updates: dict[str, Any] = {k: v for k, v in table.items() if getattr(config, k) is None}
    if config.max_epochs is None:
        updates["max_epochs"] = _EPOCHS[(job, builtin)]
    if config.num_workers is None:
        updates["num_workers"] = 0 if builtin else min(4, os.cpu_count() or 1)
    config = dataclasses.replace(config, **updates)
    for name in ("image_size", "batch_size", "max_epochs"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}.")
    return config
