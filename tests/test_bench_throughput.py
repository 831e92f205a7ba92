"""``selfsup bench throughput`` on tiny generated images: every line, positive figures."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from selfsup_core.bench import throughput
from selfsup_core.threads import one_cpu_thread


def make_folder(root: Path, n: int = 24) -> Path:
    generator = torch.Generator().manual_seed(0)
    for i in range(n):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = torch.randint(0, 256, (32, 32, 3), generator=generator, dtype=torch.uint8)
        image = Image.frombytes("RGB", (32, 32), bytes(pixels.flatten().tolist()))
        image.save(folder / f"{i}.{'jpg' if i % 3 else 'png'}")
    return root


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    throughput.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_throughput_prints_every_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        num_workers: int) -> None:
    monkeypatch.setenv("SELFSUP_CACHE_DIR", str(tmp_path / "cache"))
    # One thread: tiny ops on a busy CI machine stall with more (see selfsup_core.threads).
    threads = torch.get_num_threads()
    data = make_folder(tmp_path / "data")
    args = parse(["--data", str(data), "--image-size", "32", "--arch", "tiny",
                  "--num-workers", str(num_workers), "--batch-size", "8", "--steps", "2",
                  "--data-steps", "2", "--warmup", "1", "--repeats", "2", "--device", "cpu",
                  "--threads", "1"])
    out = io.StringIO()
    try:
        assert throughput.run(args, out=out) == 0
    finally:
        torch.set_num_threads(threads)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
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
    for record in rates.values():
        assert record["images_per_s"] > 0 and len(record["runs"]) == 2 and record["what"]
    ratios = {r["name"]: r for r in by_kind["ratio"]}
    assert set(ratios) == {"b/a", "b/c", "b'/a'", "b'(resident)/a'"}
    for record in ratios.values():
        assert record["value"] > 0
        assert record["met"] is None or isinstance(record["met"], bool)
    # The temporary cache was removed; nothing was written inside the data folder.
    assert not any(p.suffix == ".u8" for p in data.rglob("*"))


def test_one_cpu_thread_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    with one_cpu_thread("cpu"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with one_cpu_thread("meta"):
        assert torch.get_num_threads() == before
