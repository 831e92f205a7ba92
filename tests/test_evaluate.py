"""Evaluation protocols: kNN and linear probe on known features, and the three protocols end to end."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from conftest import write_image_folder

from selfsup_core.cli import main
from selfsup_core.errors import ConfigError, EncoderFileError
from selfsup_core.evaluation.features import extract_features
from selfsup_core.evaluation.knn import knn_predict
from selfsup_core.evaluation.probe import train_linear_probe
from selfsup_core.evaluation.protocols import evaluate, open_encoder


@pytest.fixture
def folders(tmp_path: Path) -> tuple[str, str]:
    """Labelled train (3 x 8) and val (3 x 4) folders of 36 px glyph images."""
    train = write_image_folder(tmp_path / "train", per_class=8, size=36)
    val = write_image_folder(tmp_path / "val", per_class=4, size=36, seed=1)
    return str(train), str(val)


def _clusters(n: int, centres: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(centres)).repeat_interleave(n)
    return centres[labels] + 0.1 * torch.randn(len(labels), centres.shape[1], generator=generator), labels


def test_knn_is_perfect_on_separable_clusters() -> None:
    centres = torch.eye(5, 16) * 3
    bank, bank_labels = _clusters(30, centres, seed=0)
    queries, labels = _clusters(10, centres, seed=1)
    assert torch.equal(knn_predict(bank, bank_labels, queries, 5, chunk=7), labels)


def test_knn_uses_cosine_not_euclidean_distance() -> None:
    # Same direction, far away in Euclidean terms: cosine similarity calls it identical.
    bank = torch.tensor([[100.0, 0.0], [0.0, 1.0]])
    assert knn_predict(bank, torch.tensor([0, 1]), torch.tensor([[0.1, 0.02]]), 2, k=1).tolist() == [0]


def test_knn_temperature_weights_the_nearest_neighbour() -> None:
    # One neighbour of class 0 at cosine 0.99, two of class 1 at cosine 0.5.
    angle = math.acos(0.5)
    bank = torch.tensor([[0.99, math.sqrt(1 - 0.99**2)], [math.cos(angle), math.sin(angle)],
                         [math.cos(angle), -math.sin(angle)]])
    labels, query = torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.0]])
    # exp(0.99 / 0.07) outweighs 2 exp(0.5 / 0.07); with a flat temperature the majority wins.
    assert knn_predict(bank, labels, query, 2, k=3, temperature=0.07).tolist() == [0]
    assert knn_predict(bank, labels, query, 2, k=3, temperature=100.0).tolist() == [1]


def test_linear_probe_learns_separable_features() -> None:
    # Far off zero: needs standardising.
    centres = torch.randn(4, 32, generator=torch.Generator().manual_seed(0)) * 2 + 50
    train, train_labels = _clusters(25, centres, seed=0)
    val, val_labels = _clusters(10, centres, seed=1)
    probe = train_linear_probe(train, train_labels, 4, steps=100)
    assert torch.equal(probe(val).argmax(1), val_labels)


def test_random_encoder_is_seeded_and_features_are_frozen() -> None:
    a, b, c = (open_encoder("none", "tiny", seed=s).module for s in (1, 1, 2))
    assert torch.equal(a.blocks[0][0].weight, b.blocks[0][0].weight)
    assert not torch.equal(a.blocks[0][0].weight, c.blocks[0][0].weight)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    a.train()
    first = extract_features(a, images, batch_size=4)
    assert a.training  # mode restored
    assert torch.allclose(first[:2], extract_features(a, images[:2]), atol=1e-5)  # eval mode: no batch effect


@pytest.mark.parametrize("protocol", ["knn", "linear"])
def test_frozen_protocols_through_the_library(protocol: str, folders: tuple[str, str], tmp_path: Path) -> None:
    result = evaluate(encoder="none", protocol=protocol, arch="tiny", data=folders[0], val_data=folders[1],
                      image_size=32,
                      label_fraction=0.5, seed=3, out=tmp_path / "ev")
    row = result.as_dict()
    assert 0 <= row["top1"] <= 1 and row["val_images"] == 12 and row["image_size"] == 32
    described = (row["protocol"], row["encoder"], row["task"], row["arch"], row["seed"])
    assert described == (protocol, "none", "none", "tiny", 3)
    if protocol == "knn":
        assert (row["k"], row["temperature"], row["bank_size"]) == (12, 0.07, 12)  # k capped at the bank
    else:
        assert row["train_images"] == 12 and row["steps"] == 300


def test_the_deepest_stage_of_a_resnet_is_what_the_encoder_returns() -> None:
    from selfsup_core.evaluation.features import StageFeatures

    encoder = open_encoder("none", "resnet18", seed=0).module.eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(StageFeatures(encoder, -1)(images), encoder(images), atol=1e-6)
        assert torch.allclose(StageFeatures(encoder, 4)(images), encoder(images), atol=1e-6)
        layer3 = StageFeatures(encoder, 3)
        assert layer3(images).shape == (2, 256) and layer3.feature_dim == 256
    with pytest.raises(ConfigError, match=r"--stage 5: this encoder has 5 stages, 0 to 4 \(or -5 to -1"):
        StageFeatures(encoder, 5)


def test_a_stage_is_read_by_the_frozen_protocols_and_recorded(folders: tuple[str, str], tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="selfsup_core")
    common = {"encoder": "none", "arch": "tiny", "data": folders[0], "val_data": folders[1], "image_size": 32,
              "out": tmp_path / "ev"}
    for protocol in ("knn", "linear"):
        row = evaluate(protocol=protocol, stage=0, **common).as_dict()
        assert row["stage"] == 0 and row["feature_dim"] == 16  # the tiny encoder's first stage
    assert "stage" not in evaluate(protocol="knn", **common).as_dict()
    assert any(r.getMessage().endswith("seed 0, stage 0") for r in caplog.records)
    with pytest.raises(ConfigError, match="frozen protocols"):
        evaluate(protocol="finetune", stage=1, **common)
    # A stage the encoder lacks fails before any image is read.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="this encoder has 3 stages"):
        evaluate(protocol="knn", stage=3, **{**common, "data": str(empty), "val_data": str(empty)})


def test_cli_prints_json_and_appends_results(folders: tuple[str, str], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "ev"
    base = ["evaluate", "--encoder", "none", "--arch", "tiny", "--data", folders[0], "--val-data", folders[1],
            "--image-size", "32", "--out", str(out)]
    assert main([*base, "--protocol", "finetune", "--max-epochs", "1", "--batch-size", "8",
                 "--label-fraction", "0.5", "--seed", "1"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["protocol"] == "finetune" and printed["train_images"] == 12 and printed["epochs"] == 1
    assert printed["top1"] == printed["history"][-1] and printed["label_fraction"] == 0.5
    assert printed["seconds"] > 0 and printed["image_size"] == 32
    with caplog.at_level(logging.WARNING, logger="selfsup_core"):
        assert main([*base, "--protocol", "knn"]) == 0
    # 8 train images a class against the standard k = 20: said, since the score is coarse.
    assert "kNN votes over k = 20 neighbours in a bank of 24 images, 8 in its smallest class" in caplog.text
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [line["protocol"] for line in lines] == ["finetune", "knn"]
    assert all(line["val_data"] == folders[1] for line in lines)  # which images were scored


def test_pretrained_encoder_records_its_task(folders: tuple[str, str], tmp_path: Path) -> None:
    assert main(["pretrain", "--task", "rotation", "--arch", "tiny", "--image-size", "32", "--batch-size", "8",
                 "--data", folders[0], "--max-epochs", "1", "--no-progress", "--out", str(tmp_path / "pre")]) == 0
    result = evaluate(encoder=str(tmp_path / "pre" / "encoder.safetensors"), protocol="knn", data=folders[0],
                      val_data=folders[1], out=tmp_path / "ev")
    assert (result.task, result.arch, result.image_size) == ("rotation", "tiny", 32)
    with pytest.raises(EncoderFileError, match="holds a 'tiny' encoder"):
        evaluate(encoder=str(tmp_path / "pre"), protocol="knn", arch="resnet18", data=folders[0], val_data=folders[1])


def test_user_errors_exit_1(folders: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--encoder", str(tmp_path / "missing.safetensors"), "--protocol", "knn",
                 "--data", folders[0], "--val-data", folders[1]]) == 1
    assert "not found" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        evaluate(encoder="none", protocol="knn", arch="tiny", data=folders[0], val_data=folders[1], label_fraction=0)
    with pytest.raises(EncoderFileError):
        open_encoder(str(tmp_path / "nowhere"))
