"""``selfsup bench gpu``: a CPU smoke run through the command line, the no-GPU error, the budget's sizing,
and (on a GPU only) the real command with a small budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import IMAGENETTE, write_image_folder

from selfsup_core.bench import gpu
from selfsup_core.cli import main
from selfsup_core.config import BenchGpuConfig
from selfsup_core.data.files import scan_folder
from selfsup_core.plugin.registry import build_task_registry

# The tiny sizes of a smoke test: 32 px, batch 8, 2 steps, the tiny encoder, one thread (a busy
# 2-core CI machine stalls tiny ops on more, see selfsup_core.threads).
TINY = ["--image-size", "32", "--tasks-image-size", "32", "--batch-size", "8", "--steps", "2", "--repeats", "1",
        "--warmup", "1", "--arch", "tiny", "--tasks-arch", "tiny", "--num-workers", "0", "--threads", "1"]


def _records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _statuses(records: list[dict[str, Any]]) -> dict[str, str]:
    return {r["section"]: r["status"] for r in records if r.get("kind") == "section"}


@pytest.fixture
def keep_threads() -> Any:
    """``--threads`` sets the process's intra-op threads: give them back after the test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_cpu_smoke_run_measures_tasks_and_throughput_and_skips_the_cuda_parts(
        image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], keep_threads: None) -> None:
    out = tmp_path / "report"
    assert main(["bench", "gpu", "--device", "cpu", "--data", str(image_folder), *TINY, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    records = _records(captured.out)

    assert _statuses(records) == {"tasks": "done", "throughput": "done",
                                  **dict.fromkeys(gpu.CUDA_ONLY, gpu.NEEDS_CUDA)}
    for name in gpu.CUDA_ONLY:  # a plain line too, not only JSON
        assert f"{name}: skipped: needs a CUDA GPU" in captured.err
    assert "Traceback" not in captured.err
    # tasks: bench tasks' record for every installed task, at the sizes asked for.
    assert {r["task"] for r in records if r.get("bench") == "tasks"} == set(build_task_registry().names())
    assert all(r["timed_calls"] == 2 for r in records if r.get("bench") == "tasks")
    # throughput: bench throughput's own lines, passed on under their section.
    measured = {r["name"] for r in records if r["section"] == "throughput" and r.get("kind") == "throughput"}
    assert {"model_step", "selfsup_loop", "tutorial_loop"} <= measured
    assert {r["name"] for r in records if r.get("kind") == "ratio"} >= {"b/a", "b/c"}
    sections = [r for r in records if r.get("kind") == "section"]
    assert all(r["wall_s"] >= 0 for r in sections) and [r["section"] for r in sections] == list(gpu.SECTIONS)
    (total,) = [r for r in records if r.get("kind") == "total"]
    assert total["failed"] == [] and total["within_budget"] and total["wall_s"] > 0

    report = (out / gpu.REPORT_MD).read_text()
    assert "| nvjpeg |" in report and gpu.NEEDS_CUDA in report and "**total**" in report
    assert "## tasks" in report and "## throughput" in report and "selfsup bench gpu --data" in report
    assert _records((out / gpu.REPORT_JSONL).read_text()) == records


def test_without_a_gpu_the_default_device_is_a_one_line_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine with a GPU
    monkeypatch.delenv("SELFSUP_IMAGENETTE", raising=False)  # the GPU is checked before the data
    assert main(["bench", "gpu"]) == 1
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("selfsup: error: selfsup bench gpu needs a CUDA GPU")
    assert "selfsup bench gpu --device cpu" in line and "Traceback" not in captured.err
    assert captured.out == "" and not (tmp_path / "runs").exists()


def test_the_budget_sizes_the_steps_of_every_kind_of_section(image_folder: Path, keep_threads: None) -> None:
    """Without --steps: tasks, throughput and the comparisons size their steps from probes (run on the CPU here)."""
    torch.set_num_threads(1)
    config = BenchGpuConfig(device="cpu", data=str(image_folder), image_size=32, tasks_image_size=32,
                            batch_size=8, arch="tiny", tasks_arch="tiny", tasks="rotation", repeats=2,
                            warmup=1, num_workers=0)
    state = gpu._Run(config, torch.device("cpu"), image_folder, scan_folder(image_folder), gpu.Budget(60.0),
                     gpu.Recorder())
    assert gpu.MIN_STEPS <= gpu.throughput_steps(state, 5.0) <= gpu.MAX_STEPS
    for name in ("tasks", "data_on_device", "bf16"):  # bf16 autocast runs on a CPU too
        assert gpu.run_section(state, name, 3.0) == "done"
    (calls,) = [r["timed_calls"] for r in state.recorder.of("tasks") if r.get("bench") == "tasks"]
    assert gpu.MIN_STEPS <= calls <= gpu.MAX_STEPS
    for name in ("data_on_device", "bf16"):
        (section,) = state.recorder.of(name, "section")
        assert gpu.MIN_STEPS <= section["steps"] <= gpu.MAX_STEPS
        rates = {r["name"]: r for r in state.recorder.of(name, "throughput")}
        assert len(rates) == 2 and all(len(r["runs"]) == 2 and r["images_per_s"] > 0 for r in rates.values())
        (speedup,) = state.recorder.of(name, "speedup")
        first, second = speedup["numerator"], speedup["denominator"]
        expected = rates[first]["images_per_s"] / rates[second]["images_per_s"]
        assert speedup["value"] == pytest.approx(expected, rel=1e-2)
    # A spent budget skips what is left, and says so.
    assert gpu.run_section(gpu._Run(config, torch.device("cpu"), image_folder, state.images, gpu.Budget(0.0),
                                    state.recorder), "bf16", 0.0) == "skipped: the time budget is spent"


def test_budget_shares_and_counts() -> None:
    assert gpu.fit_count(10.0, 0.5) == gpu.MAX_STEPS and gpu.fit_count(1.0, 4.0) == gpu.MIN_STEPS
    assert gpu.fit_count(9.0, 1.0, low=1, high=100) == 9
    budget = gpu.Budget(600.0)
    shares = [budget.allowance(name, list(gpu.SECTIONS)) for name in gpu.SECTIONS]
    assert sum(shares) == pytest.approx(600.0, rel=1e-3)  # the shares of a fresh budget cover it
    assert budget.allowance("compile", ["compile"]) == pytest.approx(600.0, rel=1e-3)  # the last takes what is left


# -- on a GPU ---------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_default_command_fits_a_small_budget_on_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real command, default sizes (224 px tasks, 128 px ResNet-34, batch 256) in a 4-minute budget."""
    if (IMAGENETTE / "train").is_dir():
        data = IMAGENETTE
    else:  # JPEGs (and some PNGs) to decode, larger than the sizes measured
        data = write_image_folder(tmp_path / "data", per_class=60, size=160, classes=10)
    budget_minutes = 4
    assert main(["bench", "gpu", "--data", str(data), "--budget-minutes", str(budget_minutes),
                 "--out", str(tmp_path / "report")]) == 0
    records = _records(capsys.readouterr().out)
    statuses = _statuses(records)
    assert all(statuses[name] == "done" for name in ("tasks", "throughput", "nvjpeg", "data_on_device", "bf16"))
    assert statuses["compile"] == "done" or "budget" in statuses["compile"]
    (total,) = [r for r in records if r.get("kind") == "total"]
    assert total["wall_s"] <= budget_minutes * 60 * 1.25
    speedups = {r["section"]: r["value"] for r in records if r.get("kind") == "speedup"}
    assert set(speedups) >= {"nvjpeg", "data_on_device", "bf16"} and all(v > 0 for v in speedups.values())
    assert (tmp_path / "report" / gpu.REPORT_MD).is_file()
