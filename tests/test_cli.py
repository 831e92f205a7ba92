"""The command line, called in-process through ``main(argv)``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import FakeEntryPoint

from selfsup_core.cli import main
from selfsup_core.config import PretrainConfig

TINY = ["--arch", "tiny", "--image-size", "32", "--batch-size", "16", "--no-progress"]


def pretrain_tiny(out: Path, *extra: str) -> int:
    return main(["pretrain", "--task", "rotation", *TINY, "--limit", "64", "--max-epochs", "1",
                 "--out", str(out), *extra])


def test_version_and_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "rotation" in out and "[selfsup]" in out


def test_pretrain_then_finetune_both_ways(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert pretrain_tiny(tmp_path / "pre") == 0
    encoder = tmp_path / "pre" / "encoder.safetensors"
    assert encoder.is_file() and (tmp_path / "pre" / "encoder.json").is_file()
    assert (tmp_path / "pre" / "config.yaml").is_file() and (tmp_path / "pre" / "versions.json").is_file()
    assert (tmp_path / "pre" / "logs" / "version_0" / "metrics.csv").is_file()
    for source in (str(encoder), "none"):
        out = tmp_path / f"fine-{Path(source).stem}"
        assert main(["finetune", "--encoder", source, "--arch", "tiny", "--limit", "60", "--max-epochs", "1",
                     "--label-fraction", "0.5", "--image-size", "32", "--no-progress", "--out", str(out)]) == 0
        result = json.loads((out / "results.json").read_text())
        assert 0 <= result["val_acc"] <= 1 and result["train_images"] == 30
    printed = capsys.readouterr().out
    assert "val accuracy (final epoch)" in printed and "best epoch" in printed


@pytest.mark.parametrize("task", ["rotation", "crappify"])
def test_finetune_starts_from_the_pretrained_weights(tmp_path: Path, task: str) -> None:
    from selfsup_core.training.finetune_module import ClassifierModule

    assert pretrain_tiny(tmp_path / "pre", "--task", task) == 0
    assert json.loads((tmp_path / "pre" / "encoder.json").read_text())["task"] == task
    saved = safetensors.torch.load_file(tmp_path / "pre" / "encoder.safetensors")
    module = ClassifierModule(num_classes=3, arch="tiny", encoder_path=str(tmp_path / "pre"))
    for name, value in module.encoder.state_dict().items():
        assert torch.equal(value, saved[name]), name
    scratch = ClassifierModule(num_classes=3, arch="tiny")
    assert not torch.equal(scratch.encoder.state_dict()["blocks.0.0.weight"], saved["blocks.0.0.weight"])


def test_non_empty_out_is_refused_then_resumed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert pretrain_tiny(out) == 0
    assert pretrain_tiny(out) == 1
    assert "--resume" in capsys.readouterr().err
    checkpoint = out / "checkpoints" / "last.ckpt"
    first = torch.load(checkpoint, weights_only=True)  # plain types only
    assert pretrain_tiny(out, "--resume", "--max-epochs", "2") == 0
    second = torch.load(checkpoint, weights_only=True)
    assert second["epoch"] == first["epoch"] + 1
    assert second["global_step"] == 2 * first["global_step"]
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["version_0", "version_1"]


def test_default_out_is_a_new_folder_under_runs(tmp_path: Path) -> None:
    args = ["pretrain", *TINY, "--limit", "32", "--max-epochs", "1"]
    assert main(args) == 0 and main(args) == 0
    runs = sorted(Path("runs").iterdir())
    assert len(runs) == 2 and all(r.name.startswith("rotation-") for r in runs)
    import yaml

    assert [yaml.safe_load((r / "config.yaml").read_text())["out"] for r in runs] == [str(r) for r in runs]


def test_config_file_precedence(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("arch: tiny\nmax_epochs: 1\nimage_size: 16\nlimit: 32\ntask_options:\n  num_transforms: 6\n")
    out = tmp_path / "run"
    assert main(["pretrain", "--config", str(config), "--image-size", "32", "--out", str(out), "--no-progress"]) == 0
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["image_size"] == 32  # command line wins over the file
    assert saved["arch"] == "tiny" and saved["task_options"] == {"num_transforms": 6}  # file over defaults
    from selfsup_core.config import resolve_defaults

    # Neither file nor flags set it: the default for the built-in data (PretrainConfig() holds None).
    assert saved["batch_size"] == resolve_defaults(PretrainConfig(), "pretrain").batch_size == 128


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pretrain", "--task", "rotaton"], "Did you mean 'rotation'"),
        (["pretrain", "--task", "SimCLR"], "Did you mean 'simclr'"),
        (["pretrain", "--task-option", "colour=1"], "has no option 'colour'"),
        (["pretrain", "--data", "missing-folder"], "does not exist"),
        (["finetune", "--encoder", "nowhere/encoder.safetensors"], "not found"),
        (["pretrain", "--image-size", "0"], "image_size must be at least 1"),
        (["pretrain", "--arch", "resnet9"], "unknown encoder 'resnet9'"),
        (["pretrain", "--image-size", "16"], "too small for resnet18, which down-samples 32x: use at least 32 px"),
        (["finetune", "--arch", "tiny", "--image-size", "7"], "use at least 8 px"),
        (["pretrain", "--task-option", "crop_scale=0.7,1.0"], "written like [0.7, 1.0]; got '0.7,1.0'"),
        (["evaluate", "--encoder", "none", "--protocol", "knn", "--like", "nowhere"], "--like nowhere does not exist"),
    ],
)
def test_user_errors_are_one_clear_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(("argv", "usage", "error"), [
    (["finetune", "--lable-fraction", "0.1", "--max-epoch", "2"], "usage: selfsup finetune ",
     "selfsup finetune: error: unrecognized arguments: --lable-fraction 0.1 --max-epoch 2 "
     "(did you mean --label-fraction? --max-epochs?)"),
    (["bench", "eval", "--seed", "3"], "usage: selfsup bench eval ",
     "selfsup bench eval: error: unrecognized arguments: --seed 3 (did you mean --seeds?)"),
    (["pretrain", "--bogus"], "usage: selfsup pretrain ", "selfsup pretrain: error: unrecognized arguments: --bogus"),
])
def test_an_unknown_flag_is_refused_by_its_command_with_the_nearest(
        argv: list[str], usage: str, error: str, capsys: pytest.CaptureFixture[str]) -> None:
    # argparse alone refused it with the top-level usage and no hint, and read --max-epoch as --max-epochs.
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith(usage) and err.strip().splitlines()[-1] == error


def test_folder_without_images_and_corrupt_images(tmp_path: Path, image_folder: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["pretrain", "--data", str(tmp_path / "empty")]) == 1
    assert "is empty" in capsys.readouterr().err
    (image_folder / "class_1" / "bad.png").write_bytes(b"nope")
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(image_folder), *TINY, "--max-epochs", "1", "--out", str(out)]) == 0
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["skipped_images"] == 1


def test_wrong_architecture_encoder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert pretrain_tiny(tmp_path / "pre") == 0
    assert main(["finetune", "--encoder", str(tmp_path / "pre"), "--arch", "resnet18"]) == 1
    assert "holds a 'tiny' encoder" in capsys.readouterr().err


def test_tasks_marks_conflicts_and_broken_plugins(fake_entry_points: list[FakeEntryPoint],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import selfsup_rotation

    class Duplicate:
        selfsup_register_tasks = staticmethod(selfsup_rotation.selfsup_register_tasks)

    fake_entry_points += [FakeEntryPoint("rotation-copy", "other-dist", Duplicate()),
                          FakeEntryPoint("broken", "broken-dist", ImportError("cannot import name 'x'"))]
    assert main(["tasks"]) == 0
    captured = capsys.readouterr()
    assert "rotation     CONFLICT" in captured.out and "other-dist" in captured.out
    assert "'broken' (broken-dist) failed to load" in captured.err
    assert "SELFSUP_DISABLE_PLUGINS=rotation-copy" in captured.out  # the way out
    # A third-party plugin cannot take a built-in name away: rotation stays the built-in.
    from selfsup_core.plugin.host import get_plugin_host

    assert get_plugin_host().tasks.get("rotation").distribution == "selfsup"


def test_reconstruction_writes_preview_grids(tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "run"
    assert pretrain_tiny(out, "--task", "cutout", "--max-epochs", "2") == 0
    grids = sorted((out / "previews").glob("epoch_*.png"))
    assert [g.name for g in grids] == ["epoch_000.png", "epoch_001.png"]
    with Image.open(grids[0]) as grid:
        # 8 rows of input | restored | original, 32 px tiles enlarged 3x, 2 px padding,
        # under a white band with the task, epoch, metrics and column titles drawn in black.
        body = (3 * (96 + 2) + 2, 8 * (96 + 2) + 2)
        assert grid.width == body[0] and grid.height > body[1] + 3 * 16
        band = grid.convert("L").crop((0, 0, grid.width, grid.height - body[1]))
        assert band.getextrema() == (0, 255)  # text on white
    # A classification task writes none.
    assert pretrain_tiny(tmp_path / "rot") == 0
    assert not (tmp_path / "rot" / "previews").exists()


@pytest.mark.slow
def test_compiled_run_exports_the_same_format(tmp_path: Path) -> None:
    """--compile must not change state-dict keys (needs a C++ compiler on CPU)."""
    assert pretrain_tiny(tmp_path / "run", "--compile") == 0
    from selfsup_core.models.export import load_encoder

    load_encoder(tmp_path / "run", arch="tiny")


@pytest.mark.parametrize("data", ["folder", "built-in"])
def test_the_next_steps_pretrain_prints_run_as_printed(tmp_path: Path, data: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import shlex

    from conftest import write_image_folder

    labelled = tmp_path / "LABELLED"
    write_image_folder(labelled / "train", per_class=8, size=32)
    write_image_folder(labelled / "val", per_class=4, size=32, seed=1)
    source = ["--data", str(write_image_folder(tmp_path / "unlabelled", size=32))] if data == "folder" else []
    tiny = ["--image-size", "32", "--batch-size", "8", "--limit", "48", "--no-progress"]
    assert main(["pretrain", "--arch", "tiny", "--max-epochs", "1", *source, *tiny,
                 "--out", str(tmp_path / "rot")]) == 0
    printed = [line.strip() for line in capsys.readouterr().out.splitlines() if line.startswith("  selfsup ")]
    assert len(printed) == 4  # fine-tune and its baseline, kNN and its baseline
    for line in printed:
        argv = shlex.split(line.replace("LABELLED", str(labelled)))[1:]
        extra = ["--max-epochs", "1", "--no-progress"] if argv[0] == "finetune" and "--like" not in argv else []
        assert main([*argv, *extra]) == 0, line
    knn = (tmp_path / "rot-knn" / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["encoder"] for line in knn] == [str(tmp_path / "rot" / "encoder.safetensors"), "none"]
