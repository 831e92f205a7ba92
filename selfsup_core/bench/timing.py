"""Timing helpers shared by every benchmark, and what machine ran it.

Example:
    >>> seconds = time_call(lambda: torch.ones(8).sum(), torch.device("cpu"), repeats=3, warmup=1)
    >>> seconds >= 0
    True
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> float:
    """Median seconds of one call of ``fn`` (device work included), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_name() -> str:
    """The processor's model name, as ``/proc/cpuinfo`` gives it where it exists."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def machine() -> dict[str, Any]:
    """What ran a benchmark: platform, CPU, core and thread counts, GPU."""
    return {"platform": platform.platform(), "cpu_model": cpu_name(), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__}
