"""The example third-party package in examples/selfsup-jigsaw, installed beside selfsup."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from selfsup_core import create_task, list_tasks
from selfsup_core.cli import main
from selfsup_core.testing import TaskContract

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
