"""Multi-task pretraining: any installed tasks on one encoder, a weighted loss sum."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torchvision
import yaml

from selfsup_core import Normalizer, create_task, pretext_step
from selfsup_core.cli import main
from selfsup_core.errors import TaskOptionError, UnknownTaskError
from selfsup_core.models.encoders import build_encoder
from selfsup_core.tasks.multitask import MultiTask, parse_tasks
from selfsup_core.testing import check_task


def test_the_loss_is_the_weighted_sum_and_metrics_are_named_per_task() -> None:
    task = create_task("rotation:2+cutout:0.5")
    assert isinstance(task, MultiTask) and task.weights == {"rotation": 2.0, "cutout": 0.5}
    encoder = build_encoder("tiny")
    result = pretext_step(task, encoder, task.build_head(encoder), torch.rand(4, 3, 32, 32), Normalizer())
    expected = 2 * result.metrics["rotation/loss"] + 0.5 * result.metrics["cutout/loss"]
    assert torch.allclose(result.loss.detach(), expected)
    assert {"rotation/acc", "cutout/psnr"} <= set(result.metrics)


def test_a_multitask_meets_the_contract_third_party_tasks_included() -> None:
    check_task(create_task("rotation+jigsaw:0.5", **{"jigsaw.num_permutations": 6}))


def test_options_go_to_their_task_and_are_resolved() -> None:
    task = create_task("rotation+crappify", crappify={"jpeg_p": 0.25}, **{"rotation.num_transforms": 6})
    resolved = task.options.to_dict()["task_options"]
    assert resolved["crappify"]["jpeg_p"] == 0.25 and resolved["rotation"]["num_transforms"] == 6
    assert resolved["crappify"]["resize_p"] == 0.5  # defaults included


@pytest.mark.parametrize(
    ("name", "options", "error", "message"),
    [
        ("rotation+", {}, TaskOptionError, "empty task name"),
        ("rotation+rotation", {}, TaskOptionError, "appears twice"),
        ("rotation:0+cutout", {}, TaskOptionError, "weight of 'rotation' must be a number above 0"),
        ("rotation:x+cutout", {}, TaskOptionError, "weight of 'rotation'"),
        ("rotation+cutout", {"cutout.nope": 1}, TaskOptionError, "has no option 'nope'"),
        ("rotation+cutout", {"jigsaw.num_permutations": 6}, TaskOptionError, "not one of its tasks"),
        ("rotation+cutout", {"fill": "zero"}, TaskOptionError, "must name its task"),
        ("rotation+cutout", {"cutout:fill": "zero"}, TaskOptionError, r"written TASK.KEY: cutout.fill='zero'"),
        ("rotation+nosuchtask", {}, UnknownTaskError, "unknown task 'nosuchtask'"),
    ],
)
def test_bad_multitasks_are_one_line_errors(name: str, options: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        create_task(name, **options)


def test_parse_tasks_reads_weights() -> None:
    assert parse_tasks("a:1.5 + b") == {"a": 1.5, "b": 1.0}


def test_pretrain_rotation_plus_crappify_exports_and_fine_tunes(tmp_path: Path) -> None:
    common = ["--image-size", "32", "--batch-size", "16", "--limit", "64", "--max-epochs", "1", "--no-progress",
              "--no-keep-checkpoint"]  # a ResNet-18 checkpoint is 0.14 GB: no test disk needs two
    assert main(["pretrain", "--task", "rotation+crappify:0.5", "--task-option", "crappify.text_p=0",
                 "--arch", "resnet18", *common, "--out", str(tmp_path / "pre")]) == 0
    info = json.loads((tmp_path / "pre" / "encoder.json").read_text())
    assert info["task"] == "rotation+crappify:0.5"  # which tasks trained it
    config = yaml.safe_load((tmp_path / "pre" / "config.yaml").read_text())
    assert config["resolved_task_options"]["task_options"]["crappify"]["text_p"] == 0
    metrics = (tmp_path / "pre" / "logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "val/rotation/acc" in metrics and "val/crappify/psnr" in metrics
    assert list((tmp_path / "pre" / "previews").glob("*.png"))
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    model.load_state_dict(safetensors.torch.load_file(tmp_path / "pre" / "encoder.safetensors"), strict=True)
    assert main(["finetune", "--encoder", str(tmp_path / "pre" / "encoder.safetensors"), *common,
                 "--out", str(tmp_path / "fine")]) == 0
