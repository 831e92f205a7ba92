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
from selfsup_core.models.export import EncoderInfo, _mismatch, load_encoder, read_encoder_info, save_encoder


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
    with pytest.raises(EncoderFileError, match="do not fit") as caught:
        load_encoder(tmp_path)
    message = str(caught.value)  # one line naming a few keys, not PyTorch's list of every key
    assert "\n" not in message and len(message) < 600, message
    assert "missing: conv1.weight, bn1.weight, bn1.bias, ... (" in message and "unexpected: " in message
    # The same weights but one of another shape.
    state = build_encoder("tiny").state_dict()
    key = next(iter(state))
    wrong = {**state, key: torch.zeros(1, *state[key].shape[1:])}
    assert _mismatch(state, wrong) == f"of another shape: {key} {tuple(wrong[key].shape)} not {tuple(state[key].shape)}"
    assert _mismatch(state, state) == ""


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


# -- every encoder file is checked when written and read ----------------------------------------


def _saved(tmp_path: Path) -> Path:
    save_encoder(build_encoder("tiny"), tmp_path, EncoderInfo(arch="tiny", task="t", image_size=32))
    return tmp_path / "encoder.safetensors"


def _rewrite_json(folder: Path, **changes: object) -> None:
    meta = json.loads((folder / "encoder.json").read_text())
    (folder / "encoder.json").write_text(json.dumps({**meta, **changes}))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format_version": "1"}, "format_version must be a whole number, got '1'"),
        ({"image_size": "32"}, "image_size must be a whole number, got '32'"),
        ({"image_size": 32.5}, "image_size must be a whole number, got 32.5"),
        ({"image_size": 20000}, "image_size must lie in [8, 4096], got 20000"),
        ({"image_size": 4}, "image_size must lie in [8, 4096], got 4"),
        ({"mean": [0.5, 0.5, 0.5, 0.5, 0.5]}, "mean must be [number, number, number]"),
        ({"mean": [0.5, "x", 0.5]}, "mean[1] must be a number"),
        ({"std": [0.2, 0.0, 0.2]}, "std must be above 0"),
        ({"std": [0.2, -1.0, 0.2]}, "std must be above 0"),
        ({"arch": 18}, "arch must be a string, got 18"),
        ({"task": None}, "task must be a string, got None"),
        ({"colour": "red"}, "has no option 'colour'"),
    ],
)
def test_each_bad_encoder_json_field_is_one_line(tmp_path: Path, changes: dict[str, object], message: str) -> None:
    weights = _saved(tmp_path)
    _rewrite_json(tmp_path, **changes)
    with pytest.raises(EncoderFileError) as error:
        load_encoder(weights)
    text = str(error.value)
    assert message in text and "encoder.json" in text and "\n" not in text


def test_encoder_json_missing_fields_nesting_and_shape(tmp_path: Path) -> None:
    weights = _saved(tmp_path)
    meta = tmp_path / "encoder.json"
    meta.write_text(json.dumps({"format_version": 1, "arch": "tiny"}))
    with pytest.raises(EncoderFileError, match="no task, image_size"):
        read_encoder_info(weights)
    meta.write_text("[" * 200_000 + "]" * 200_000)  # would blow the parser's stack
    with pytest.raises(EncoderFileError, match="nested too deeply"):
        read_encoder_info(weights)
    meta.write_text("[1, 2, 3]")
    with pytest.raises(EncoderFileError, match="a JSON object is expected"):
        read_encoder_info(weights)
    meta.write_text(json.dumps({"format_version": 99, "arch": "tiny", "task": "t", "image_size": 32}))
    with pytest.raises(EncoderFileError, match="newer than this selfsup"):
        read_encoder_info(weights)


def test_bad_info_cannot_be_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size must lie in"):
        EncoderInfo(arch="tiny", task="t", image_size=20000)
    with pytest.raises(ValueError, match="std must be above 0"):
        EncoderInfo(arch="tiny", task="t", image_size=32, std=(0.2, 0.0, 0.2))


def test_non_finite_weights_are_refused_when_written_and_read(tmp_path: Path) -> None:
    encoder = build_encoder("tiny")
    with torch.no_grad():
        next(encoder.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(EncoderFileError, match="NaN or infinite.*refusing to write"):
        save_encoder(encoder, tmp_path / "out", EncoderInfo(arch="tiny", task="t", image_size=32))
    assert not (tmp_path / "out" / "encoder.safetensors").exists()
    weights = _saved(tmp_path)
    state = safetensors.torch.load_file(weights)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("inf"))
    safetensors.torch.save_file(state, weights)
    with pytest.raises(EncoderFileError, match=f"NaN or infinite values \\(first: {name}\\)"):
        load_encoder(weights)


def test_text_file_is_not_a_safetensors_file(tmp_path: Path) -> None:
    weights = _saved(tmp_path)
    weights.write_text("these are not weights\n" * 20)
    with pytest.raises(EncoderFileError, match="is not a safetensors file"):
        load_encoder(weights)


def test_missing_file_is_named_exactly(tmp_path: Path) -> None:
    _saved(tmp_path)  # an encoder.safetensors beside it must not be reported instead
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(EncoderFileError, match=f"^{missing} not found"):
        load_encoder(missing)


def _nan_encoder(folder: Path) -> Path:
    weights = _saved(folder)
    state = safetensors.torch.load_file(weights)
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    safetensors.torch.save_file(state, weights)
    return weights


@pytest.mark.parametrize("fault", ["nan-weights", "zero-std", "negative-std", "text-file"])
@pytest.mark.parametrize("command", ["finetune", "evaluate"])
def test_finetune_and_evaluate_refuse_bad_encoders_before_reading_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        command: str, fault: str) -> None:
    from selfsup_core.cli import main

    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("data was read before the encoder file was checked")

    monkeypatch.setattr("selfsup_core.training.finetuning.load_split", no_data)
    monkeypatch.setattr("selfsup_core.evaluation.protocols.load_split", no_data)
    weights = _nan_encoder(tmp_path) if fault == "nan-weights" else _saved(tmp_path)
    if fault.endswith("std"):
        _rewrite_json(tmp_path, std=[0.2, 0.0 if fault == "zero-std" else -0.2, 0.2])
    if fault == "text-file":
        weights.write_text("hello\n")
    extra = ["--protocol", "knn"] if command == "evaluate" else ["--max-epochs", "1"]
    assert main([command, "--encoder", str(weights), "--out", str(tmp_path / "run"), *extra]) == 1
    err = capsys.readouterr().err
    expected = {"nan-weights": "NaN or infinite", "text-file": "not a safetensors file"}.get(
        fault, "std must be above 0")
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
