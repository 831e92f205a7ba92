"""Smoke test of ``selfsup bench eval`` on a generated image folder (the real run is never a test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_image_folder

from selfsup_core.cli import main


def test_bench_eval_writes_table_and_json(tmp_path: Path, capsys) -> None:
    root = tmp_path / "nette"
    write_image_folder(root / "train", per_class=8, size=36)
    write_image_folder(root / "val", per_class=4, size=36, seed=1)
    out = tmp_path / "bench"
    assert main(["bench", "eval", "--data", str(root), "--tasks", "rotation", "--arch", "tiny",
                 "--image-size", "32", "--batch-size", "8", "--pretrain-epochs", "1",
                 "--finetune-epochs", "1", "--seeds", "2", "--label-fraction", "0.5", "--limit", "18",
                 "--task-option", "rotation:num_transforms=6", "--num-workers", "0", "--out", str(out)]) == 0
    table = (out / "bench_eval.md").read_text()
    assert "random init" in table and "rotation num_transforms=6" in table
    assert "range over seeds [0, 1]" in table and "fine-tune 1 epoch." in table
    report = json.loads((out / "bench_eval.json").read_text())
    assert [r["encoder"] for r in report["rows"]] == ["random init", "rotation"]
    assert len(report["rows"][1]["finetune"]["values"]) == 2 and "beats" in report["rows"][1]["knn"]
    resolved = report["rows"][1]["resolved_task_options"]
    assert resolved == {"num_transforms": 6, "crop_scale": [1.0, 1.0], "flip": False, "augmentations": [],
                        "all_turns": False, "head_hidden": 0, "spread": 0.0}  # defaults too
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2 + 2 + 2 * 2 + 2  # random and task: kNN+linear per seed, FT per seed
    # Each seed pretrains anew: the row's seed range holds the pretraining's spread.
    assert sorted(p.name for p in out.glob("pretrain-*")) == ["pretrain-rotation-seed0", "pretrain-rotation-seed1"]
    assert not list(out.rglob("*.ckpt")) and len(list(out.glob("pretrain-*/encoder.safetensors"))) == 2
    assert len(report["rows"][1]["pretrain_seconds"]) == 2 and len(report["rows"][1]["knn"]["values"]) == 2
    encoders = {json.loads(line)["encoder"] for line in lines if json.loads(line)["protocol"] == "knn"}
    assert len(encoders - {"none"}) == 2  # kNN read each seed's own encoder


def test_bench_eval_reads_the_stage_it_is_given(tmp_path: Path, capsys) -> None:
    root = tmp_path / "nette"
    write_image_folder(root / "train", per_class=4, size=36)
    write_image_folder(root / "val", per_class=2, size=36, seed=1)
    base = ["bench", "eval", "--data", str(root), "--tasks", "rotation", "--arch", "tiny", "--image-size", "32",
            "--batch-size", "8", "--pretrain-epochs", "1", "--finetune-epochs", "1", "--seeds", "1",
            "--num-workers", "0"]
    assert main([*base, "--stage", "3", "--out", str(tmp_path / "none")]) == 1  # tiny has 3 stages: 0-2
    assert "--stage 3: this encoder has 3 stages" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()  # refused before anything was read or written
    out = tmp_path / "bench"
    assert main([*base, "--stage", "1", "--out", str(out)]) == 0
    frozen = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()
              if json.loads(line)["protocol"] != "finetune"]
    assert len(frozen) == 4 and all(r["stage"] == 1 and r["feature_dim"] == 32 for r in frozen)
    report = json.loads((out / "bench_eval.json").read_text())
    assert report["settings"]["stage"] == 1 and "--stage 1" in report["command"]
    assert "read the mean-pooled map of encoder stage 1" in (out / "bench_eval.md").read_text()


def test_bench_eval_missing_data_is_one_line_error(tmp_path: Path, capsys) -> None:
    assert main(["bench", "eval", "--data", str(tmp_path / "nowhere")]) == 1
    assert "train/ and val/" in capsys.readouterr().err


def test_one_seed_gives_no_verdict_two_seeds_compare_the_gain_with_the_spread() -> None:
    from selfsup_core.bench.eval import Row, _gain, summarise

    random, task = Row("random init", knn=[0.30]), Row("rotation", knn=[0.35])
    entry = summarise(task, random)["knn"]
    assert entry["beats"] is None and _gain(entry) == "+5.0 (one seed: noise not measured)"
    random, task = Row("random init", knn=[0.30, 0.32]), Row("rotation", knn=[0.33, 0.37])
    entry = summarise(task, random)["knn"]
    assert entry["noise"] == pytest.approx(0.04) and entry["beats"] is False  # +4 points against a 4-point spread
    task = Row("rotation", knn=[0.36, 0.37])
    assert summarise(task, random)["knn"]["beats"] is True  # +5.5 against 2


def test_the_table_note_of_one_seed_names_it_instead_of_a_range() -> None:
    from selfsup_core.bench.eval import markdown_table

    settings = {"label_fraction": 0.1, "val_images": 10, "seeds": [0], "arch": "tiny", "image_size": 32,
                "train_images": 20, "finetune_epochs": 1}
    row = {"encoder": "random init", "task_options": {}, "pretrain_epochs": 0, "pretrain_seconds": []}
    table = markdown_table({"settings": settings, "rows": [row], "wall_seconds": 60})
    assert "one seed (0)." in table and "range over seeds" not in table and "fine-tune 1 epoch." in table


@pytest.mark.parametrize("text", ["crappify:drop_skips=all", "crappify.drop_skips=all"])
def test_a_task_option_names_its_task_with_a_colon_or_a_dot_as_pretrain_does(text: str) -> None:
    from selfsup_core.cli import build_parser

    args = build_parser(["bench", "eval"]).parse_args(["bench", "eval", "--task-option", text,
                                                       "--task-option", "rotation:crop_scale=[0.5, 1.0]"])
    assert args.task_option_items == [("crappify", "drop_skips", "all"), ("rotation", "crop_scale", [0.5, 1.0])]
