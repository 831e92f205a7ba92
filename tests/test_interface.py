"""A fair comparison by default and an interface that explains itself.

The baseline mirrors the run it is compared with, the library is quiet, messages
say what to type, run folders can be shared, pictures are labelled, and the docs
stand on their own.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from selfsup_core.cli import build_parser, main

ROOT = Path(__file__).parents[1]
SMALL = ["--limit", "48", "--batch-size", "16", "--no-progress"]


def _config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


# -- the baseline mirrors the encoder ---------------------------------------------------------


def test_baseline_like_a_run_trains_at_its_size_and_architecture(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="selfsup_core")
    pre, tuned, base = tmp_path / "pre", tmp_path / "tuned", tmp_path / "base"
    # 24 px and tiny: neither is a default, so only mirroring can produce them.
    assert main(["pretrain", "--arch", "tiny", "--image-size", "24", "--max-epochs", "1", *SMALL,
                 "--out", str(pre)]) == 0
    assert main(["finetune", "--encoder", str(pre / "encoder.safetensors"), "--max-epochs", "1", "--lr", "0.002",
                 "--label-fraction", "0.5", "--augment", "[]", *SMALL, "--batch-size", "8", "--seed", "3",
                 "--val-fraction", "0.25", "--out", str(tuned)]) == 0
    assert main(["finetune", "--encoder", "none", "--like", str(tuned), "--no-progress", "--out", str(base)]) == 0
    mirrored = _config(base)
    assert (mirrored["arch"], mirrored["image_size"]) == ("tiny", 24)
    assert (mirrored["max_epochs"], mirrored["batch_size"], mirrored["lr"], mirrored["label_fraction"]) == \
        (1, 8, 0.002, 0.5)
    # The same labelled images: the seed, held-out share and limit that picked them.
    assert (mirrored["seed"], mirrored["val_fraction"], mirrored["limit"]) == (3, 0.25, 48)
    assert mirrored["augment"] == [] and mirrored["like"] == str(tuned)
    assert json.loads((base / "results.json").read_text())["train_images"] == \
        json.loads((tuned / "results.json").read_text())["train_images"]
    # The settings used, in one line, for the pretraining and each fine-tune.
    (pretrain_line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pretrain settings:")]
    assert pretrain_line.startswith("pretrain settings: task rotation, arch tiny, image size 24 px, 1 epoch, "
                                    "batch size ")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("finetune settings:")]
    assert len(lines) == 2
    assert lines[1].startswith(f"finetune settings: encoder none (mirroring {tuned}), arch tiny, image size 24 px, "
                               "1 epoch, batch size 8, lr 0.002, weight decay 0.05, label fraction 0.5, seed 3")

    # A pretrain run folder gives architecture and size; a setting given on the command line wins.
    from_pre = tmp_path / "from-pre"
    assert main(["finetune", "--encoder", "none", "--like", str(pre), "--max-epochs", "1", *SMALL,
                 "--out", str(from_pre)]) == 0
    assert (_config(from_pre)["arch"], _config(from_pre)["image_size"], _config(from_pre)["lr"]) == ("tiny", 24, 0.001)


def test_every_protocol_like_a_finetune_run_holds_out_its_share(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    from conftest import write_image_folder

    from selfsup_core import evaluate, finetune

    caplog.set_level(logging.INFO, logger="selfsup_core")
    images = write_image_folder(tmp_path / "images", per_class=8, size=24)  # 24 images, no val folder
    tuned = finetune(encoder="none", arch="tiny", data=str(images), image_size=24, max_epochs=1, batch_size=8,
                     val_fraction=0.5, seed=2, augment=[], progress=False, out=str(tmp_path / "tuned"))
    held_out = json.loads((tuned.run_dir / "results.json").read_text())
    for protocol in ("knn", "linear"):
        row = evaluate(encoder="none", protocol=protocol, like=str(tuned.run_dir), data=str(images),
                       out=tmp_path / "ev").as_dict()
        assert row["val_images"] == 12 and row["seed"] == 2  # half of 24, as the run held out; default: 20 %
        assert row["val_fraction"] == 0.5 and "limit" not in row  # what picked the images, in the record
    assert (held_out["train_images"], held_out["val_images"], held_out["seed"]) == (12, 12, 2)
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluate linear settings:")][-1]
    assert "seed 2, val fraction 0.5" in line


def test_evaluate_like_mirrors_and_without_like_states_its_defaults(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    from selfsup_core import evaluate, pretrain

    caplog.set_level(logging.INFO, logger="selfsup_core")
    pre = pretrain(arch="tiny", image_size=24, max_epochs=1, limit=32, batch_size=16, progress=False,
                   out=str(tmp_path / "pre"))
    result = evaluate(encoder="none", protocol="knn", like=str(pre.run_dir), limit=32, out=tmp_path / "ev")
    assert (result.arch, result.image_size, result.details["like"]) == ("tiny", 24, str(pre.run_dir))
    evaluate(encoder="none", protocol="knn", arch="tiny", limit=32, out=tmp_path / "ev")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluate knn settings:")]
    assert "mirroring" in lines[0] and "image size 24 px" in lines[0]
    assert "from scratch, stated defaults; --like RUN mirrors a run" in lines[1] and "image size 32 px" in lines[1]


def test_pretrain_ends_with_the_commands_to_run_next(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "pre"
    assert main(["pretrain", "--arch", "tiny", "--max-epochs", "1", *SMALL, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    commands = [line.strip() for line in out.splitlines() if line.startswith("  selfsup ")]
    assert commands == [f"selfsup finetune --encoder {run}/encoder.safetensors --out {run}-finetune",
                        f"selfsup finetune --encoder none --like {run}-finetune",
                        f"selfsup evaluate --protocol knn --encoder {run}/encoder.safetensors --out {run}-knn",
                        f"selfsup evaluate --protocol knn --encoder none --like {run} --out {run}-knn"]
    for command in commands:  # they parse as printed
        build_parser().parse_args(command.split()[1:])


# -- a quiet library ----------------------------------------------------------------------


@pytest.mark.parametrize("verbose", [False, True])
def test_the_library_is_quiet_unless_asked(verbose: bool, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """pretrain() from a fresh Python process, warnings on: no Lightning banner, tip or known warning."""
    code = ("from selfsup_core import pretrain\n"
            f"pretrain(arch='tiny', max_epochs=1, limit=32, batch_size=16, out='run', progress=False, "
            f"verbose={verbose})\n")
    subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=tmp_path, check=True,
                   env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    out, err = capfd.readouterr()
    printed = out + err
    if verbose:  # the check can see them: they are there when asked for
        assert "GPU available" in printed
    else:
        for banner in ("GPU available", "TPU available", "💡", "litlogger", "LeafSpec", "on_after_batch_transfer"):
            assert banner not in printed, printed
        assert printed == ""


def test_quiet_lightning_restores_what_it_changed() -> None:
    from selfsup_core.quiet import quiet_lightning

    lightning = logging.getLogger("pytorch_lightning")
    before = lightning.level
    with quiet_lightning():
        assert not lightning.isEnabledFor(logging.INFO)
    assert lightning.level == before


# -- precise messages ---------------------------------------------------------------------


def test_data_that_is_a_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "some.jpg"
    image.write_bytes(b"not really")
    assert main(["pretrain", "--data", str(image)]) == 1
    assert f"{image} is a file, not a folder" in capsys.readouterr().err


def test_image_size_is_checked_before_any_data(capsys: pytest.CaptureFixture[str]) -> None:
    # The folder does not exist: the size check comes first.
    assert main(["pretrain", "--data", "missing-folder", "--image-size", "16"]) == 1
    assert "use at least 32 px" in capsys.readouterr().err
    for arch, size in (("tiny", 8), ("resnet18", 32)):  # the minimum itself works
        from selfsup_core.models.encoders import check_image_size

        encoder = check_image_size(arch, size).train()
        encoder(torch.rand(2, 3, size, size)).sum().backward()


# -- run folders a team can use -------------------------------------------------------------


@pytest.mark.parametrize("keep", [True, False])
def test_run_folder_is_shared_clean_and_complete(keep: bool, tmp_path: Path) -> None:
    run = tmp_path / "run"
    previous = os.umask(0o022)
    try:
        assert main(["pretrain", "--arch", "tiny", "--max-epochs", "1", *SMALL, "--out", str(run),
                     "--keep-checkpoint" if keep else "--no-keep-checkpoint"]) == 0
    finally:
        os.umask(previous)
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file() == keep
    for name in ("config.yaml", "results.json", "versions.json", "encoder.safetensors", "encoder.json",
                 *(["checkpoints/last.ckpt"] if keep else [])):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o644, name
    metrics = json.loads((run / "results.json").read_text())["metrics"]
    assert sorted(metrics) == ["train/acc", "train/loss", "val/acc", "val/loss"]  # one value each
    saved = _config(run)
    if not torch.cuda.is_available():
        assert (saved["precision"], saved["device"]) == ("32-true", "cpu")


# -- pictures that explain themselves --------------------------------------------------------


def _made_up_report(seeds: list[int]) -> dict:
    def entry(*values: float) -> dict:
        return {"values": list(values), "mean": sum(values) / len(values)}

    return {"settings": {"arch": "resnet18", "image_size": 32, "label_fraction": 0.1, "val_images": 3925,
                         "num_classes": 10, "seeds": seeds, "data": "imagenette2-224"},
            "command": "selfsup bench eval --tasks rotation",
            "rows": [{"encoder": "random init", "knn": entry(*[0.2 + 0.01 * s for s in seeds]),
                      "finetune": entry(*[0.3 + 0.02 * s for s in seeds])},
                     {"encoder": "rotation", "knn": entry(0.35), "finetune": entry(*[0.4 + 0.01 * s for s in seeds])}]}


def test_bench_report_embeds_the_chart_and_its_command() -> None:
    from selfsup_core.bench.eval import markdown_report

    text = markdown_report(_made_up_report([0, 1]), "| table |", chart=True)
    assert "](bench_eval.png)" in text and "selfsup bench eval --tasks rotation" in text
    assert "https://github.com/fastai/imagenette" in text
    assert "bench_eval.png" not in markdown_report(_made_up_report([0, 1]), "| table |", chart=False)


@pytest.mark.parametrize("seeds", [[0, 1], [0]])
def test_bench_chart_is_drawn_with_its_labels(seeds: list[int], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from selfsup_core.bench.eval import write_chart

    path = tmp_path / "chart.png"
    assert write_chart(_made_up_report(seeds), path) == f"chart written to {path}"
    assert path.stat().st_size > 10_000


# -- docs that stand alone -------------------------------------------------------------------


def test_docs_point_nowhere_outside_the_repository() -> None:
    """No path outside the repository, no reference to an issue the reader cannot see."""
    pattern = re.compile(r"\.\./shared|the issue")
    files = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*") if p.is_file())]  # as grep -r
    hits = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}" for path in files
            for number, line in enumerate(path.read_bytes().decode("utf-8", "replace").splitlines(), 1)
            if pattern.search(line)]
    assert not hits, "\n".join(hits)


def test_previews_reach_tensorboard_titled(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main(["pretrain", "--task", "cutout", "--arch", "tiny", "--max-epochs", "1", *SMALL, "--out", str(run)]) == 0
    events = EventAccumulator(str(run / "tensorboard" / "version_0"), size_guidance={"images": 0})
    events.Reload()
    (image,) = events.Images("preview")
    from PIL import Image

    with Image.open(run / "previews" / "epoch_000.png") as png:
        assert (image.width, image.height) == png.size  # the titled grid, not the bare one


@pytest.mark.parametrize(("terminal", "progress", "shown"), [
    (True, None, True), (False, None, False), (False, True, True), (True, False, False)])
def test_progress_bars_show_on_a_terminal_unless_told(terminal: bool, progress: bool | None, shown: bool,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """By default a run writes bars to a terminal, not redraws into a log file; --progress/--no-progress win."""
    import sys
    import types

    from selfsup_core.training.trainer import build_trainer

    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    trainer = build_trainer(tmp_path, max_epochs=1, progress=progress)
    assert (trainer.progress_bar_callback is not None) is shown
    if progress is None and not terminal:  # a notebook renders them, though its stderr is no terminal
        monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
        assert build_trainer(tmp_path, max_epochs=1, progress=progress).progress_bar_callback is not None


def test_without_a_progress_bar_each_epoch_logs_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="selfsup_core")
    assert main(["pretrain", "--arch", "tiny", "--max-epochs", "2", *SMALL, "--out", str(tmp_path / "run")]) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split(" (")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all(re.search(r"\(\d+\.\d s\): train/acc [\d.]+, train/loss [\d.]+, val/acc [\d.]+, val/loss", line)
               for line in lines), lines


def test_a_baseline_like_a_run_takes_its_folders_and_warns_when_given_others(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from conftest import write_image_folder

    train = write_image_folder(tmp_path / "lab" / "train", per_class=8, size=32)
    val = write_image_folder(tmp_path / "lab" / "val", per_class=4, size=32, seed=1)
    other = write_image_folder(tmp_path / "other", per_class=8, size=32, seed=2)
    tuned, base = tmp_path / "tuned", tmp_path / "base"
    common = ["--arch", "tiny", "--image-size", "32", "--max-epochs", "1", "--batch-size", "8", "--no-progress"]
    assert main(["finetune", "--encoder", "none", "--data", str(train), "--val-data", str(val), *common,
                 "--out", str(tuned)]) == 0
    # The baseline forgets --data and --val-data: it takes the run's, so it validates on the same images.
    assert main(["finetune", "--encoder", "none", "--like", str(tuned), "--no-progress", "--out", str(base)]) == 0
    assert (_config(base)["data"], _config(base)["val_data"]) == (str(train), str(val))
    assert json.loads((base / "results.json").read_text())["val_images"] == \
        json.loads((tuned / "results.json").read_text())["val_images"] == 12
    # Another train folder is kept, and said; the same folder spelt another way is not.
    caplog.set_level(logging.WARNING, logger="selfsup_core")
    assert main(["finetune", "--encoder", "none", "--like", str(tuned), "--data", str(other), "--no-progress",
                 "--out", str(tmp_path / "b2")]) == 0
    assert f"--data {other} given: kept, although {tuned}/config.yaml has {train}" in caplog.text
    caplog.clear()
    assert main(["finetune", "--encoder", "none", "--like", str(tuned), "--data", f"{train}/../train/",
                 "--no-progress", "--out", str(tmp_path / "b3")]) == 0
    assert "given: kept" not in caplog.text


def test_fine_tuning_at_another_size_than_pretraining_is_said(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    assert main(["pretrain", "--arch", "tiny", "--image-size", "24", "--max-epochs", "1", *SMALL,
                 "--out", str(tmp_path / "pre")]) == 0
    encoder = tmp_path / "pre" / "encoder.safetensors"
    caplog.set_level(logging.WARNING, logger="selfsup_core")
    assert main(["finetune", "--encoder", str(encoder), "--image-size", "32", "--max-epochs", "1", *SMALL,
                 "--out", str(tmp_path / "ft")]) == 0
    assert f"--image-size 32 given: kept, although {encoder} was pretrained at 24 px" in caplog.text


def test_a_baseline_keeps_a_setting_given_at_its_default_value(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    tuned = tmp_path / "tuned"
    assert main(["finetune", "--encoder", "none", "--arch", "tiny", "--image-size", "24", "--lr", "0.002",
                 "--max-epochs", "1", *SMALL, "--out", str(tuned)]) == 0
    caplog.set_level(logging.WARNING, logger="selfsup_core")
    # 0.001 is the default lr: given on purpose, it wins over the mirrored 0.002, and is said.
    assert main(["finetune", "--encoder", "none", "--like", str(tuned), "--lr", "0.001", "--no-progress",
                 "--out", str(tmp_path / "base")]) == 0
    assert _config(tmp_path / "base")["lr"] == 0.001 and _config(tmp_path / "base")["image_size"] == 24
    assert f"--lr 0.001 given: kept, although {tuned}/config.yaml has 0.002" in caplog.text
