"""Encoder export: safetensors + JSON, loadable by hand into torchvision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torchvision

from selfsup_core.errors import EncoderFileError
from selfsup_core.models.encoders import build_encoder, list_encoders
from selfsup_core.models.export import EncoderInfo, load_encoder, read_encoder_info, save_encoder


def test_resnet18_export_loads_by_hand_strict(tmp_path: Path) -> None:
    encoder = build_encoder("resnet18")
    save_encoder(encoder, tmp_path, EncoderInfo(arch="resnet18", task="rotation", image_size=32))
    m = torchvision.models.resnet18()
    m.fc = torch.nn.Identity()
    m.load_state_dict(safetensors.torch.load_file(tmp_path / "encoder.safetensors"), strict=True)
    m.eval(), encoder.eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(m(x), encoder(x))
    meta = json.loads((tmp_path / "encoder.json").read_text())
    assert meta["arch"] == "resnet18" and meta["format_version"] == 1 and len(meta["mean"]) == 3


@pytest.mark.parametrize("arch", ["resnet34", "tiny"])
def test_round_trip(tmp_path: Path, arch: str) -> None:
    encoder = build_encoder(arch)
    save_encoder(encoder, tmp_path, EncoderInfo(arch=arch, task="t", image_size=16))
    loaded = load_encoder(tmp_path / "encoder.safetensors")
    for (name, a), b in zip(encoder.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert read_encoder_info(tmp_path).image_size == 16


def test_wrong_architecture_is_a_clear_error(tmp_path: Path) -> None:
    save_encoder(build_encoder("tiny"), tmp_path, EncoderInfo(arch="tiny", task="t", image_size=16))
    with pytest.raises(EncoderFileError, match="holds a 'tiny' encoder, not 'resnet18'"):
        load_encoder(tmp_path, arch="resnet18")
    # A JSON that lies about the architecture: the weights do not fit.
    meta = json.loads((tmp_path / "encoder.json").read_text())
    (tmp_path / "encoder.json").write_text(json.dumps({**meta, "arch": "resnet18"}))
    with pytest.raises(EncoderFileError, match="do not fit"):
        load_encoder(tmp_path)


def test_missing_or_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(EncoderFileError, match="not found"):
        load_encoder(tmp_path / "encoder.safetensors")
    save_encoder(build_encoder("tiny"), tmp_path, EncoderInfo(arch="tiny", task="t", image_size=16))
    (tmp_path / "encoder.json").write_text("{not json")
    with pytest.raises(EncoderFileError, match="not a valid"):
        load_encoder(tmp_path)


def test_weights_file_is_not_a_pickle(tmp_path: Path) -> None:
    """A pickle posing as weights is refused, never unpickled (no code runs)."""
    save_encoder(build_encoder("tiny"), tmp_path, EncoderInfo(arch="tiny", task="t", image_size=16))
    torch.save({"x": torch.zeros(1)}, tmp_path / "encoder.safetensors")
    with pytest.raises(EncoderFileError):
        load_encoder(tmp_path)


def test_builtin_encoders_listed() -> None:
    assert {"resnet18", "resnet34", "tiny"} <= set(list_encoders())
