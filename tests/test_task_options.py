"""Task options are declared once, as a dataclass: validation, saving, the CLI and the docs come from it."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from selfsup_crappify import CrappifyOptions, CrappifyTask
from selfsup_cutout import CutoutOptions, CutoutTask
from selfsup_rotation import RotationOptions, RotationTask
from selfsup_simclr import SimCLRTask

from selfsup_core import PretextBatch, PretextTask, create_task, hookimpl
from selfsup_core.cli import main
from selfsup_core.errors import ConfigError, TaskOptionError
from selfsup_core.options import at_least, option, options_table
from selfsup_core.plugin.host import build_plugin_host
from selfsup_core.plugin.registry import check_options
from selfsup_core.tasks.options import TaskOptions, options_class
from selfsup_core.tasks.reconstruction import ReconstructionOptions, ReconstructionTask

ROOT = Path(__file__).parents[1]
BUILTINS = [RotationTask, CutoutTask, CrappifyTask, SimCLRTask]


# -- a user extends a built-in task through the public API ----------------------------------


@dataclass(frozen=True)
class MyOptions(RotationOptions):
    extra: int = option(3, help="an option of my own", check=at_least(1))


class MyRotation(RotationTask):
    name = "my-rotation"
    summary = "rotation with one more option"
    Options = MyOptions

    def make_batch(self, images: torch.Tensor) -> PretextBatch:
        assert self.options.extra >= 1
        return super().make_batch(images)


class _MyPlugin:
    @hookimpl
    def selfsup_register_tasks(self) -> list[type[PretextTask]]:
        return [MyRotation]


@pytest.fixture
def host():  # noqa: ANN201
    return build_plugin_host(autoload=False, plugins=[("mine", _MyPlugin())])


def test_a_subclass_extends_the_options_of_a_builtin(host) -> None:  # noqa: ANN001
    task = create_task("my-rotation", host=host, extra=5, num_transforms=6)
    assert isinstance(task, MyRotation) and isinstance(task.options, MyOptions)
    assert task.options.extra == 5 and task.options.num_transforms == 6 and task.num_classes == 6
    rotation_options = ["num_transforms", "crop_scale", "flip", "augmentations", "all_turns", "head_hidden", "spread"]
    assert task.options.to_dict() == {"num_transforms": 6, "crop_scale": [1.0, 1.0], "flip": False, "augmentations": [],
                                      "all_turns": False, "head_hidden": 0, "spread": 0.0, "extra": 5}
    assert [info.name for info in MyOptions.describe()] == [*rotation_options, "extra"]
    assert task.make_batch(torch.rand(4, 3, 8, 8)).targets.max() < 6
    # The parent's checks, cross-field rules included, still hold; the new option is checked too.
    with pytest.raises(TaskOptionError, match="flips are labels"):
        create_task("my-rotation", host=host, num_transforms=6, flip=True)
    with pytest.raises(TaskOptionError, match="extra must be at least 1, got 0"):
        create_task("my-rotation", host=host, extra=0)
    accepted = "it accepts: num_transforms, crop_scale, flip, augmentations, all_turns, head_hidden, spread, extra"
    with pytest.raises(TaskOptionError, match=accepted):
        create_task("my-rotation", host=host, extar=2)
    # The built-in is unchanged.
    with pytest.raises(TaskOptionError, match="has no option 'extra'"):
        create_task("rotation", extra=2)


def test_the_cli_shows_a_plugin_task_options(host, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    assert main(["tasks", "--options", "my-rotation"], host=host) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["option", "type", "default", "meaning"]
    assert rows[8].split()[:3] == ["extra", "integer", "3"] and rows[8].endswith("an option of my own")


# -- construction and validation -------------------------------------------------------------


def test_options_are_built_and_checked_on_construction() -> None:
    task = RotationTask(crop_scale=0.5)
    assert task.options == RotationOptions(num_transforms=4, crop_scale=(0.5, 1.0), flip=False)
    assert RotationTask(RotationOptions(flip=True)).options.flip
    assert RotationTask(RotationOptions(flip=True), crop_scale=[0.3, 0.9]).options.crop_scale == (0.3, 0.9)
    with pytest.raises(TypeError, match="takes RotationOptions"):
        RotationTask(CutoutOptions())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_transforms must be 4 or 6, got 5"):
        RotationTask(num_transforms=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.options.flip = True  # type: ignore[misc]


def test_errors_are_one_line_task_option_errors() -> None:
    with pytest.raises(TaskOptionError) as info:
        create_task("crappify", colour=1)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("task 'crappify' has no option 'colour'; it accepts: drop_skips, residual, "
                              "skip_dropout, resize_p")
    with pytest.raises(TaskOptionError, match=r"^task 'cutout': boxes must lie in \[1, 32\], got \[0, 0\]$"):
        create_task("cutout", boxes=0)
    # One class for every kind of caller: the CLI's ConfigError and Python's ValueError.
    assert issubclass(TaskOptionError, ConfigError) and issubclass(TaskOptionError, ValueError)


def test_check_options_works_from_the_declaration_before_anything_is_built() -> None:
    check_options(CrappifyTask, {"jpeg_quality": 30}, what="task 'crappify'")
    with pytest.raises(TaskOptionError, match="task 'crappify': jpeg_quality"):
        check_options(CrappifyTask, {"jpeg_quality": (0, 50)}, what="task 'crappify'")
    assert options_class(CrappifyTask) is CrappifyOptions
    assert options_class(lambda: None) is None  # a plain factory is checked when called


def test_a_task_that_declares_nothing_accepts_no_options() -> None:
    class Bare(PretextTask):
        name = "bare"

    assert Bare().options == TaskOptions() and Bare().options.to_dict() == {}
    with pytest.raises(TaskOptionError, match="task 'bare' has no option 'size'; it accepts: no options"):
        Bare(size=3)


@pytest.mark.parametrize(
    ("task", "given", "resolved"),
    [
        (CutoutTask, {"boxes": 3, "area": 0.1}, {"boxes": (3, 3), "area": (0.1, 0.1)}),
        (CrappifyTask, {"jpeg_quality": 30, "text_marks": [2, 4]}, {"jpeg_quality": (30, 30), "text_marks": (2, 4)}),
        (RotationTask, {"crop_scale": 0.7}, {"crop_scale": (0.7, 1.0)}),
    ],
)
def test_one_number_ranges(task: type[PretextTask], given: dict, resolved: dict) -> None:
    options = task(**given).options
    assert {name: getattr(options, name) for name in resolved} == resolved


def test_reconstruction_options_are_shared_and_defaults_overridden() -> None:
    assert issubclass(CutoutOptions, ReconstructionOptions) and issubclass(CrappifyOptions, ReconstructionOptions)
    assert ReconstructionTask().options.to_dict() == {"drop_skips": 0, "residual": False, "skip_dropout": 0.0}
    assert CutoutTask().options.drop_skips == 2 and CrappifyTask().options.drop_skips == "all"
    assert CrappifyTask(drop_skips=0, residual=True, text_p=0.0).options.residual is True


# -- what a run saves ---------------------------------------------------------------------------


@pytest.mark.parametrize("task", BUILTINS)
def test_resolved_options_are_plain_and_rebuild_the_same_task(task: type[PretextTask]) -> None:
    options = task().options
    saved = yaml.safe_load(yaml.safe_dump(options.to_dict(), sort_keys=False))
    assert list(saved) == [info.name for info in task.Options.describe()]  # every option, defaults included
    assert task(**saved).options == options


def test_a_run_records_its_resolved_options(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["pretrain", "--task", "rotation", "--arch", "tiny", "--limit", "16", "--max-epochs", "1",
                 "--image-size", "16", "--batch-size", "8", "--task-option", "num_transforms=6",
                 "--no-progress", "--out", str(out)]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["task_options"] == {"num_transforms": 6}  # as given
    assert saved["resolved_task_options"] == RotationTask(num_transforms=6).options.to_dict()


# -- one declaration for the CLI and the docs -------------------------------------------------


def test_cli_prints_the_declared_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tasks", "--options", "crappify"]) == 0
    out = capsys.readouterr().out
    for info in CrappifyOptions.describe():
        row = next(line for line in out.splitlines() if line.split()[:1] == [info.name])
        assert info.type_text in row and info.default_text in row and row.endswith(info.help)
    assert main(["tasks", "--options", "crapify"]) == 1
    assert "Did you mean 'crappify'" in capsys.readouterr().err


def _section(text: str, name: str) -> str:
    start = text.index(f"\n## `{name}`")
    following = re.search(r"\n## ", text[start + 1:])
    return text[start: start + 1 + following.start()] if following else text[start:]


@pytest.mark.parametrize("task", BUILTINS, ids=lambda t: t.name)
def test_docs_tables_are_generated_from_the_declaration(task: type[PretextTask]) -> None:
    """docs/tasks.md shows, in each task's section, exactly ``options_table(Task.Options)``."""
    table = options_table(task.Options)
    assert table in _section((ROOT / "docs" / "tasks.md").read_text(), task.name), (
        f"docs/tasks.md's table of {task.name} is out of date; paste this under `## `{task.name}``:\n{table}"
    )
