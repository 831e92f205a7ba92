"""The example third-party package in examples/selfsup-jigsaw, installed beside selfsup."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch

from selfsup_core import create_augmentation, create_task, list_augmentations, list_tasks
from selfsup_core.cli import main
from selfsup_core.testing import AugmentationContract, TaskContract

INSTALL = "pip install -e examples/selfsup-jigsaw"


@pytest.fixture(autouse=True, scope="module")
def _installed() -> None:
    """Fail, not skip: a missing example plugin would hide that third-party tasks broke."""
    try:
        importlib.metadata.distribution("selfsup-jigsaw")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"the example plugin selfsup-jigsaw is not installed; install it with: {INSTALL}",
                    pytrace=False)


def test_discovered_through_its_entry_point() -> None:
    names = {ep.name: ep.dist.name for ep in importlib.metadata.entry_points(group="selfsup")}
    assert names.get("jigsaw") == "selfsup-jigsaw"
    assert "jigsaw" in list_tasks()


def test_listed_with_its_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tasks"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("jigsaw"))
    assert "[selfsup-jigsaw]" in line


def test_selectable_by_name_and_trains(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["pretrain", "--task", "jigsaw", "--arch", "tiny", "--limit", "64", "--max-epochs", "1",
                 "--image-size", "32", "--batch-size", "16", "--no-progress", "--out", str(out)]) == 0
    assert (out / "encoder.safetensors").is_file()
    assert create_task("jigsaw", num_permutations=6).num_classes == 6  # the option reaches the task


class TestJigsawContract(TaskContract):
    task_name = "jigsaw"


# -- a third-party augmentation: posterize ------------------------------------------------


def test_augmentation_listed_with_its_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    assert "posterize" in list_augmentations()
    assert main(["augmentations"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("posterize"))
    assert line.endswith("[selfsup-jigsaw]")
    assert main(["augmentations", "--options", "posterize"]) == 0
    assert "| `bits` | [integer, integer] | `[2, 5]` |" in capsys.readouterr().out


def test_augmentation_posterizes() -> None:
    images = torch.rand(4, 3, 8, 8)
    out, params = create_augmentation("posterize", p=1.0, bits=2)(images)
    assert params["bits"].eq(2).all()
    assert set((out * 255).round().unique().tolist()) <= {0.0, 64.0, 128.0, 192.0}


def test_augmentation_usable_by_crappify() -> None:
    task = create_task("crappify", degradations=["posterize", "noise"], noise_p=0.0,
                       degradation_options={"posterize": {"p": 0.5, "bits": 1}})
    images = torch.rand(16, 3, 16, 16)
    batch = task.make_batch(images)
    assert batch.extras["posterize.applied"].all()  # every image gets a degradation: posterize is the one enabled
    assert set((batch.inputs * 255).round().unique().tolist()) <= {0.0, 128.0}


def test_augmentation_usable_by_finetune(tmp_path: Path) -> None:
    import yaml

    out = tmp_path / "run"
    assert main(["finetune", "--augment", "posterize", "--arch", "tiny", "--image-size", "32", "--limit", "64",
                 "--max-epochs", "1", "--batch-size", "16", "--no-progress", "--out", str(out)]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["augment"] == ["posterize"]


class TestPosterizeContract(AugmentationContract):
    augmentation_name = "posterize"
    augmentation_options = {"p": 1.0}
