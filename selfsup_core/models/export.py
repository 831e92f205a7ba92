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

import safetensors
import safetensors.torch
import torch
from torch import nn

from selfsup_core.errors import ConfigError, EncoderFileError
from selfsup_core.ioutil import atomic_write_bytes
from selfsup_core.models.encoders import build_encoder
from selfsup_core.models.normalization import IMAGENET_MEAN, IMAGENET_STD, check_statistics
from selfsup_core.options import Options, above, at_least, option, within

FORMAT_VERSION = 1
WEIGHTS_NAME = "encoder.safetensors"
META_NAME = "encoder.json"
_META_MAX_BYTES = 1 << 20  # encoder.json is a few hundred bytes
_REQUIRED = ("arch", "task", "image_size")


@dataclass(frozen=True)
class EncoderInfo(Options):
    """What ``encoder.json`` records about an exported encoder, checked when built, written and read."""

    arch: str = option(help="encoder architecture, as build_encoder names it")
    task: str = option(help="pretext task that trained it")
    image_size: int = option(help="square input size it was trained at, in pixels", check=within(8, 4096))
    mean: tuple[float, float, float] = option(IMAGENET_MEAN, help="per-channel mean of its input normalisation")
    std: tuple[float, float, float] = option(IMAGENET_STD, help="per-channel std of its input normalisation",
                                             check=above(0))
    format_version: int = option(FORMAT_VERSION, help="version of this description's format", check=at_least(1))

    def validate(self) -> None:
        check_statistics(self.mean, self.std)


def save_encoder(encoder: nn.Module, out_dir: str | os.PathLike[str], info: EncoderInfo) -> Path:
    """Write ``encoder.safetensors`` and ``encoder.json`` into ``out_dir``, atomically.

    Returns:
        The path of the weights file.

    Raises:
        EncoderFileError: a weight is not finite (nothing is written).
    """
    out = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    _check_finite(state, out / WEIGHTS_NAME, "refusing to write it")
    weights = safetensors.torch.save(state, metadata={"arch": info.arch, "task": info.task})
    atomic_write_bytes(out / WEIGHTS_NAME, weights)
    atomic_write_bytes(out / META_NAME, (json.dumps(asdict(info), indent=2) + "\n").encode())
    return out / WEIGHTS_NAME


def read_encoder_info(path: str | os.PathLike[str]) -> EncoderInfo:
    """Read and check ``encoder.json`` for an encoder file or the folder holding it.

    Raises:
        EncoderFileError: missing, not JSON, a field of the wrong type or out of
            bounds, or a format newer than this selfsup.
    """
    meta = _resolve(path)[1]
    try:
        if meta.stat().st_size > _META_MAX_BYTES:
            raise ValueError(f"{meta.stat().st_size} bytes, far more than an encoder description")
        raw = json.loads(meta.read_text(encoding="utf-8"))
    except RecursionError:
        raise EncoderFileError(f"{meta}: not a valid selfsup encoder description (JSON nested too deeply).") from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise EncoderFileError(f"{meta}: not a valid selfsup encoder description ({exc}).") from None
    if not isinstance(raw, dict):
        raise EncoderFileError(f"{meta}: not a valid selfsup encoder description (a JSON object is expected, "
                               f"got {type(raw).__name__}).")
    version = raw.get("format_version", FORMAT_VERSION)
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise EncoderFileError(
            f"{meta}: format version {version} is newer than this selfsup understands ({FORMAT_VERSION}); "
            f"upgrade selfsup."
        )
    missing = [name for name in _REQUIRED if name not in raw]
    try:
        if missing:
            raise ConfigError(f"{meta}: no {', '.join(missing)}")
        return EncoderInfo.from_mapping(raw, source=str(meta))
    except ConfigError as exc:
        raise EncoderFileError(f"{_short(exc)}; not a valid selfsup encoder description.") from None


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
        EncoderFileError: missing files, not a safetensors file, another
            architecture, weights that do not fit it or are not finite, or an
            ``encoder.json`` that fails :func:`read_encoder_info`'s checks.

    Example:
        >>> enc = load_encoder("runs/rotation/encoder.safetensors")  # doctest: +SKIP
    """
    return _open(path, arch)[0]


def check_encoder(path: str | os.PathLike[str], arch: str | None = None) -> EncoderInfo:
    """Check an encoder file completely (as :func:`load_encoder`) and return its description.

    Jobs call it before reading any data, so a bad file fails at once.
    """
    return _open(path, arch)[1]


def _open(path: str | os.PathLike[str], arch: str | None) -> tuple[nn.Module, EncoderInfo]:
    weights_path, _ = _resolve(path)
    try:  # the header only: a text or pickle file is refused before anything else is read
        with safetensors.safe_open(str(weights_path), framework="pt"):
            pass
    except (OSError, safetensors.SafetensorError) as exc:
        raise EncoderFileError(f"{weights_path} is not a safetensors file ({_short(exc)}); pass an "
                               f"encoder.safetensors written by 'selfsup pretrain'.") from None
    info = read_matching_info(path, arch)
    encoder = build_encoder(info.arch)
    try:
        state = safetensors.torch.load_file(str(weights_path))
        _check_finite(state, weights_path, "refused")
        mismatch = _mismatch(encoder.state_dict(), state)
        if mismatch:
            raise EncoderFileError(f"{weights_path}: weights do not fit architecture {info.arch!r} (as "
                                   f"{META_NAME} beside them says): {mismatch}; are these the weights of "
                                   f"another run?")
        encoder.load_state_dict(state, strict=True)
    except (OSError, RuntimeError, safetensors.SafetensorError) as exc:
        raise EncoderFileError(
            f"{weights_path}: weights do not fit architecture {info.arch!r}: {_short(exc)}"
        ) from exc
    return encoder, info


def _mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], shown: int = 3) -> str:
    """What keeps ``found`` from loading strictly where ``expected`` is wanted, in one line ("" if nothing)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    reshaped = [f"{k} {tuple(found[k].shape)} not {tuple(expected[k].shape)}"
                for k in expected if k in found and found[k].shape != expected[k].shape]
    parts = []
    for what, names in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)):
        if names:
            more = f", ... ({len(names)} in all)" if len(names) > shown else ""
            parts.append(f"{what}: {', '.join(names[:shown])}{more}")
    return "; ".join(parts)


def _check_finite(state: dict[str, torch.Tensor], path: Path, action: str) -> None:
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise EncoderFileError(
            f"{path}: {len(bad)} of {len(state)} weight tensors hold NaN or infinite values "
            f"(first: {bad[0]}), as a diverged run leaves them; {action}."
        )


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _resolve(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    path = Path(path)
    weights = path / WEIGHTS_NAME if path.is_dir() else path  # a missing file is named as given
    meta = weights.parent / META_NAME
    for needed in (weights, meta):
        if not needed.is_file():
            raise EncoderFileError(
                f"{needed} not found: pass an encoder.safetensors written by "
                f"'selfsup pretrain' (with encoder.json beside it), or 'none'."
            )
    return weights, meta
