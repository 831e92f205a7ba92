"""``selfsup bench throughput`` on tiny generated images: every line, positive figures."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from conftest import write_image_folder

from selfsup_core.cli import main
from selfsup_core.threads import one_cpu_thread

REPEATS = 2


@pytest.mark.parametrize("num_workers", [0, 1])
def test_throughput_prints_every_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str], num_workers: int) -> None:
    monkeypatch.setenv("SELFSUP_CACHE_DIR", str(tmp_path / "cache"))
    # One thread: tiny ops on a busy CI machine stall with more (see selfsup_core.threads).
    threads = torch.get_num_threads()
    data = write_image_folder(tmp_path / "data", per_class=12, size=32, classes=2)  # 24 images
    try:
        assert main(["bench", "throughput", "--data", str(data), "--image-size", "32", "--arch", "tiny",
                     "--num-workers", str(num_workers), "--batch-size", "8", "--steps", "2",
                     "--data-steps", "2", "--warmup", "1", "--repeats", str(REPEATS), "--device", "cpu",
                     "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    by_kind: dict[str, list[dict]] = {}
    for record in records:
        by_kind.setdefault(record["kind"], []).append(record)

    (config,) = by_kind["config"]
    assert config["images"] == 24 and config["arch"] == "tiny" and config["task"] == "rotation"
    (cache,) = by_kind["cache"]
    assert cache["images"] == 24 and cache["skipped"] == 0 and cache["first_call_s"] > 0
    rates = {r["name"]: r for r in by_kind["throughput"]}
    assert set(rates) == {"model_step", "selfsup_loop", "tutorial_loop",
                          "selfsup_data", "selfsup_data_resident", "tutorial_data"}
    for name, record in rates.items():
        assert record["what"], name
        # One figure per --repeats, each a real measurement, and the reported one their median.
        assert len(record["runs"]) == REPEATS and all(v > 0 for v in record["runs"]), (name, record["runs"])
        assert record["images_per_s"] == pytest.approx(statistics.median(record["runs"]), abs=0.11), name
    ratios = {r["name"]: r for r in by_kind["ratio"]}
    assert set(ratios) == {"b/a", "b/c", "b'/a'", "b'(resident)/a'"}
    for name, record in ratios.items():
        # Each ratio is the quotient of the medians it names (up to the 0.1 img/s rounding of the figures).
        expected = rates[record["numerator"]]["images_per_s"] / rates[record["denominator"]]["images_per_s"]
        assert record["value"] == pytest.approx(expected, rel=5e-3, abs=2e-3), name
        if record["goal"] is None:
            assert record["met"] is None, name
        elif abs(record["value"] - record["goal"]) > 1e-3:  # "met" compares the unrounded value
            assert record["met"] is (record["value"] >= record["goal"]), name
    # The temporary cache was removed; nothing was written inside the data folder.
    assert not any(p.suffix == ".u8" for p in data.rglob("*"))


def test_one_cpu_thread_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    with one_cpu_thread("cpu"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with one_cpu_thread("meta"):
        assert torch.get_num_threads() == before
