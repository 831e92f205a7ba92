"""Writing and reading exported encoders: ``encoder.safetensors`` + ``encoder.json``.

The weights are a plain safetensors file (no pickle, so loading never runs
code from the file) holding the encoder's own state dict; the JSON beside it
says how to rebuild and feed it.

Loading by hand, without selfsup::

    m = torchvision.models.resnet18()
    m.fc = torch.nn.Identity()
    m.load_state_dict(safetensors.torch.load_file("encoder.safetensors"), strict=True)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import safetensors.torch
from torch import nn

from selfsup_core.errors import EncoderFileError
from selfsup_core.ioutil import atomic_write_bytes
from selfsup_core.models.encoders import build_encoder
from selfsup_core.models.normalization import IMAGENET_MEAN, IMAGENET_STD

FORMAT_VERSION = 1
WEIGHTS_NAME = "encoder.safetensors"
META_NAME = "encoder.json"

@dataclass(frozen=True)
class EncoderInfo:
    """What ``encoder.json`` records about an exported encoder."""

    arch: str
    task: str
    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    format_version: int = FORMAT_VERSION


def save_encoder(encoder: nn.Module, out_dir: str | os.PathLike[str], info: EncoderInfo) -> Path:
    """Write ``encoder.safetensors`` and ``encoder.json`` into ``out_dir``, atomically.

    Returns:
        The path of the weights file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    weights = safetensors.torch.save(state, metadata={"arch": info.arch, "task": info.task})
    atomic_write_bytes(out / WEIGHTS_NAME, weights)
    atomic_write_bytes(out / META_NAME, (json.dumps(asdict(info), indent=2) + "\n").encode())
    return out / WEIGHTS_NAME


def read_encoder_info(path: str | os.PathLike[str]) -> EncoderInfo:
    """Read ``encoder.json`` for an encoder file or the folder holding it."""
    meta = _resolve(path)[1]
    try:
        raw = json.loads(meta.read_text())
        raw["mean"], raw["std"] = tuple(raw["mean"]), tuple(raw["std"])
        info = EncoderInfo(**raw)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise EncoderFileError(f"{meta}: not a valid selfsup encoder description ({exc}).") from exc
    if info.format_version > FORMAT_VERSION:
        raise EncoderFileError(
            f"{meta}: format version {info.format_version} is newer than this selfsup "
            f"understands ({FORMAT_VERSION}); upgrade selfsup."
        )
    return info


def read_matching_info(path: str | os.PathLike[str], arch: str | None) -> EncoderInfo:
    """``encoder.json`` of ``path``, checked against the architecture the caller expects.

    The one place where an encoder file meets ``--arch``.

    Raises:
        EncoderFileError: ``arch`` is given and differs from the file's.
    """
    info = read_encoder_info(path)
    if arch is not None and arch != info.arch:
        raise EncoderFileError(
            f"{path} holds a {info.arch!r} encoder, not {arch!r}: drop --arch or pass --arch {info.arch}."
        )
    return info


def load_encoder(path: str | os.PathLike[str], arch: str | None = None) -> nn.Module:
    """Rebuild an exported encoder.

    Args:
        path: ``encoder.safetensors`` or the folder holding it.
        arch: The architecture you expect; a mismatch is an error rather than
            a silent surprise. ``None`` takes the one in ``encoder.json``.

    Returns:
        The encoder (for ResNets, a torchvision ``ResNet`` with ``fc = Identity``).

    Raises:
        EncoderFileError: missing files, another architecture, or weights that
            do not fit the architecture.

    Example:
        >>> enc = load_encoder("runs/rotation/encoder.safetensors")  # doctest: +SKIP
    """
    weights_path, _ = _resolve(path)
    info = read_matching_info(path, arch)
    encoder = build_encoder(info.arch)
    try:
        state = safetensors.torch.load_file(str(weights_path))
        encoder.load_state_dict(state, strict=True)
    except (OSError, RuntimeError, safetensors.SafetensorError) as exc:
        raise EncoderFileError(
            f"{weights_path}: weights do not fit architecture {info.arch!r}: {exc}"
        ) from exc
    return encoder


def _resolve(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    weights = path if path.is_file() else folder / WEIGHTS_NAME
    meta = folder / META_NAME
    for needed in (weights, meta):
        if not needed.is_file():
            raise EncoderFileError(
                f"{needed} not found: pass an encoder.safetensors written by "
                f"'selfsup pretrain' (with encoder.json beside it), or 'none'."
            )
    return weights, meta
