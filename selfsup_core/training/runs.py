"""Run folders: choosing, guarding, and recording what produced them."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any

import yaml

from selfsup_core.errors import ConfigError
from selfsup_core.ioutil import atomic_write_text

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


def prepare_run_dir(out: str | None, prefix: str, *, resume: bool, overwrite: bool) -> Path:
    """Resolve and create the run folder, refusing to clobber earlier work.

    Raises:
        ConfigError: ``out`` holds files and neither ``resume`` nor
            ``overwrite`` was asked for, or ``resume`` with nothing to resume.
    """
    path = Path(out) if out else new_run_dir(prefix)
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
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    """Write the resolved configuration (YAML) and package versions (JSON) into ``folder``."""
    atomic_write_text(folder / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    atomic_write_text(folder / "versions.json", json.dumps(package_versions(), indent=2) + "\n")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as pretty JSON, atomically."""
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
