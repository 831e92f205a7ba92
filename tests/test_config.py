"""One configuration system for every command: help, config files, checks."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from selfsup_core import config as settings
from selfsup_core.cli import BENCHMARKS, COMMANDS, build_parser, main
from selfsup_core.errors import ConfigError

ALL_COMMANDS = [[name] for name in COMMANDS] + [["bench", name] for name in BENCHMARKS]


def _subparser(path: list[str]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=" ".join)
def test_every_option_in_help_states_its_default(path: list[str]) -> None:
    parser = _subparser(path)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and "(default:" in action.help, (
                f"selfsup {' '.join(path)} {action.option_strings[0]}: help must state the default or "
                f"how it is chosen, got {action.help!r}")


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=" ".join)
def test_every_command_takes_a_config_file(path: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("no_such_key: 1\n")
    positional = ["list"] if path == ["cache"] else []  # selfsup cache ACTION
    assert main([*path, *positional, "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"config file {config}: unknown key(s) no_such_key" in err and "\n" == err[-1] and err.count("\n") == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_epochs: lots\n", "max_epochs must be a whole number, got 'lots'"),
        ("image_size: 32.5\n", "image_size must be a whole number, got 32.5"),
        ("data: [1, 2]\n", "data must be a string"),
        ("task_options: 5\n", "task_options must be a mapping"),
        ("lr: .nan\n", "lr must be a finite number"),
        ("lr: -1\n", "lr must be above 0"),
        ("- a list\n", "must hold a mapping"),
    ],
)
def test_bad_config_values_are_one_line_errors(text: str, message: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(text)
    assert main(["pretrain", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_binary_config_file_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_bytes(bytes(range(256)) * 4)
    assert main(["finetune", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "cannot read config file" in err and err.count("\n") == 1


def test_command_line_wins_over_file_over_defaults(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("max_epochs: 3\nlr: 0.01\ntask_options: {num_transforms: 6}\n")
    args = build_parser().parse_args(["pretrain", "--config", str(config), "--lr", "0.5",
                                      "--task-option", "crop_scale=[0.7, 1.0]"])
    from selfsup_core.cli import settings_from_args

    resolved = settings_from_args(args, COMMANDS["pretrain"])
    assert (resolved.max_epochs, resolved.lr, resolved.weight_decay) == (3, 0.5, 0.05)
    assert resolved.task_options == {"num_transforms": 6, "crop_scale": [0.7, 1.0]}


def test_bench_eval_task_settings_are_typed_and_checked(tmp_path: Path) -> None:
    args = build_parser().parse_args(["bench", "eval", "--tasks", "rotation", "--task-option",
                                      "rotation:num_transforms=6", "--task-epochs", "rotation=3"])
    from selfsup_core.cli import settings_from_args

    resolved = settings_from_args(args, BENCHMARKS["eval"])
    assert resolved.task_options == {"rotation": {"num_transforms": 6}} and resolved.task_epochs == {"rotation": 3}
    with pytest.raises(ConfigError, match="--task-epochs names task 'cutout', which is not in tasks"):
        settings.BenchEvalConfig.from_mapping({"tasks": "rotation", "task_epochs": {"cutout": 2}}, source="x")
    # A multi-task row is its own name: its part's settings do not reach it, and the message says how.
    with pytest.raises(ConfigError, match=r"--task-option names task 'cutout'.*--task-option rotation\+cutout:"):
        settings.BenchEvalConfig.from_mapping(
            {"tasks": "rotation+cutout", "task_options": {"cutout": {"fill": "zero"}}}, source="x")


def test_library_and_command_line_share_the_checks() -> None:
    from selfsup_core import pretrain

    with pytest.raises(ConfigError, match="max_epochs must be a whole number"):
        pretrain(max_epochs="lots")
    with pytest.raises(ConfigError, match="has no option 'max_epoch'; it accepts: devices, num_nodes, strategy, "
                                          "data, image_size"):
        pretrain(max_epoch=3)


def test_selfsup_help_does_not_import_torch() -> None:
    code = ("import sys\nfrom selfsup_core.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'selfsup --help imported torch'\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize(("text", "value"), [("1e-3", 0.001), ("1e6", 1e6), ("-2.5E2", -250.0), ("6", 6),
                                             ("[0.7, 1.0]", [0.7, 1.0]), ("true", True), ("abc", "abc")])
def test_command_line_values_are_typed_as_users_mean_them(text: str, value: object) -> None:
    from selfsup_core.options import parse_value

    assert parse_value(text) == value and type(parse_value(text)) is type(value)


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--devices", "0", "devices must be a count of at least 1"),
    ("--devices", "abc", "devices must be a count"),
    ("--precision", "17-bad", "precision must be one of"),
])
def test_lightning_settings_are_checked_before_any_work(flag: str, value: str, message: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pretrain", flag, value]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_precision_as_lightning_writes_it() -> None:
    assert settings.PretrainConfig(precision=32).precision == "32"
    assert settings.PretrainConfig(precision="bf16-mixed").precision == "bf16-mixed"
    assert settings.PretrainConfig(devices="2").devices == 2


def test_given_names_what_was_set_on_purpose() -> None:
    from selfsup_core.config import PretrainConfig

    built = PretrainConfig.from_mapping({"lr": 0.001, "arch": "tiny"}, source="test")  # 0.001 is the default
    assert built.given == {"lr", "arch"}
    assert built.updated({"seed": 0}, source="test").given == {"lr", "arch", "seed"}
    assert built.replace(seed=3).given == {"lr", "arch"}  # a resolved value is not a given one
    assert PretrainConfig(arch="tiny").given == {"arch"}  # built directly: what differs from the defaults
