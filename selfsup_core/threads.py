"""CPU threads: one for the small per-batch ops, and a count for training that follows the load.

On a CPU, PyTorch splits every large-enough op over all intra-op threads.
That pays off for convolutions, but the per-batch preparation (uint8 to
float, the task's augmentation, normalisation) is a string of short ops, and
when loader workers or other processes hold the cores each of them waits for
its descheduled helper thread: on 2 busy cores, rotation's preparation of a
128 x 3 x 64 x 64 batch took 5-120 ms with 2 threads against 5-9 ms with one
(see docs/performance.md). :func:`one_cpu_thread` runs such ops on one thread.

The same wait hits the training step itself when other processes share the
cores: each op waits for its slowest thread, and a descheduled thread holds
up all the others. :class:`ThreadGovernor` therefore picks the thread count
of CPU training by measuring: it times a few steps with each candidate
(every core this process may use, as :func:`available_cpus` counts them, and
one), keeps the fastest, and measures again when step times drift or after a
while. ``$SELFSUP_CPU_THREADS`` fixes the count instead.

Example:
    >>> with one_cpu_thread("cpu"):
    ...     batch = torch.rand(8, 3, 32, 32).sub_(0.5)
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

THREADS_ENV = "SELFSUP_CPU_THREADS"
"""``auto`` (default): the governor picks; a number: that many intra-op threads, fixed."""


@contextmanager
def one_cpu_thread(device: torch.device | str) -> Iterator[None]:
    """Run the enclosed tensor ops on one intra-op thread when ``device`` is the CPU.

    On other devices (the ops run there, not on CPU threads) it does nothing.
    The previous thread count is restored on exit.
    """
    previous = torch.get_num_threads()
    if torch.device(device).type != "cpu" or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def available_cpus() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (rounded down, at least 1)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.floor(quota)))
    return max(1, count)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
                     ) -> float | None:
    """CPUs' worth of time the process's cgroup may use (``cpu.max``, or v1's CFS quota); ``None``: no quota."""
    limits: list[float] = []
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    folders: list[tuple[Path, str]] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":  # cgroup v2
            folders += [(root / relative, "v2"), (root, "v2")]
        elif "cpu" in controllers.split(","):
            for name in (controllers, "cpu", "cpu,cpuacct"):
                folders += [(root / name / relative, "v1"), (root / name, "v1")]
    for folder, version in folders:
        try:
            if version == "v2":
                quota, period = (folder / "cpu.max").read_text().split()[:2]
                if quota != "max":
                    limits.append(int(quota) / int(period))
            else:
                quota = (folder / "cpu.cfs_quota_us").read_text().strip()
                period = (folder / "cpu.cfs_period_us").read_text().strip()
                if int(quota) > 0:
                    limits.append(int(quota) / int(period))
        except (OSError, ValueError):
            continue
    return min(limits) if limits else None


def fixed_threads() -> int | None:
    """The thread count ``$SELFSUP_CPU_THREADS`` fixes, or ``None`` for ``auto`` (or unset)."""
    value = os.environ.get(THREADS_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    try:
        return max(1, int(value))
    except ValueError:
        from selfsup_core.errors import ConfigError

        raise ConfigError(f"{THREADS_ENV} must be auto or a number of threads, got {value!r}.") from None


class ThreadGovernor:
    """Chooses the intra-op thread count of CPU training from measured step times.

    Call :meth:`step` at the start of each training step, with the step's
    position, and :meth:`pause` whenever something else runs in between
    (validation): the time from one step's start to the next is that step's
    duration. A probe runs ``probe_steps`` steps with each candidate count
    (after one step to settle), and the fastest is kept; it is measured again
    after ``first_hold_s`` seconds (doubling, up to ``max_hold_s``, while the
    choice stays the same), or at once when the recent steps drift more than
    ``drift`` from what the probe measured. A candidate whose step takes more
    than ``reject`` times the best one's is dropped after that one step. What
    a probe costs (its steps' time beyond the best count's) is kept below
    ``budget`` of the training time: the next probe waits accordingly.

    Args:
        max_threads: The most threads to use (default: PyTorch's count, at
            most :func:`available_cpus`).
        clock: Seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, max_threads: int | None = None, *, probe_steps: int = 3, warmup_steps: int = 1,
                 first_hold_s: float = 30.0, max_hold_s: float = 600.0, drift: float = 0.3,
                 reject: float = 2.0, budget: float = 0.05,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.max_threads = max_threads or min(torch.get_num_threads(), available_cpus())
        self.candidates = sorted({self.max_threads, max(1, self.max_threads // 2), 1}, reverse=True)
        self.probe_steps, self.warmup, self.drift, self.reject = probe_steps, warmup_steps, drift, reject
        self.budget = budget
        self.first_hold_s, self.max_hold_s = first_hold_s, max_hold_s
        self.clock = clock
        self.threads = self.max_threads
        self.hold_s = first_hold_s
        self.history: list[tuple[float, dict[int, float], int]] = []  # (time, medians, choice) per probe
        self._last: tuple[float, tuple[int, int]] | None = None
        self._probing: list[int] = []  # candidates still to measure
        self._samples: list[float] = []
        self._settle = False
        self._results: dict[int, float] = {}
        self._recent: list[float] = []
        self._reference = 0.0
        self._hold_until = 0.0
        self._earliest = 0.0  # no probe before this, whatever drifts (the cost budget)
        self._probe_time, self._probe_count = 0.0, 0
        self._apply(self.threads)

    def step(self, position: tuple[int, int]) -> None:
        """A training step starts; ``position``: (epoch, global step), consecutive steps differ by one step."""
        if len(self.candidates) == 1:
            return  # one core: nothing to choose
        now = self.clock()
        last, self._last = self._last, (now, position)
        if last is None or position != (last[1][0], last[1][1] + 1):
            return  # not consecutive: no duration to learn from
        duration = now - last[0]
        if self.warmup > 0:
            self.warmup -= 1
            if self.warmup == 0:
                self._start_probe(now)
            return
        if self._probing:
            self._probe(duration, now)
            return
        self._recent = [*self._recent[-4:], duration]
        ratio = statistics.median(self._recent) / self._reference if len(self._recent) == 5 else 1.0
        # Faster steps: the load went down, more threads may pay (and trying them is cheap).
        # Slower steps on every core: fewer threads may pay (cheap to try too). Slower steps on
        # fewer threads: more load, so more threads would only lose: wait for the next check.
        cheap = ratio < 1 - self.drift or (ratio > 1 + self.drift and self.threads == self.max_threads)
        if cheap or (now >= self._earliest and now >= self._hold_until):
            self._start_probe(now)

    def pause(self) -> None:
        """Something other than training ran: the next step's start measures nothing."""
        self._last = None

    def _start_probe(self, now: float) -> None:
        # Later probes start with the current count (no switch, no settling step). The first
        # starts with one thread: on busy cores a step on all of them can take 10-30 times
        # longer, and one such step is then enough to rule them out.
        first = self.threads if self.history else 1
        self._probing = [first, *(c for c in self.candidates if c != first)]
        self._results, self._samples = {}, []
        self._probe_time, self._probe_count = 0.0, 0
        self._settle = first != self.threads
        self._apply(first)

    def _probe(self, duration: float, now: float) -> None:
        self._probe_time += duration
        self._probe_count += 1
        best = min(self._results.values(), default=float("inf"))
        if duration > self.reject * best:  # far slower than a count already measured: no need to go on
            self._results[self._probing[0]] = duration
            self._next_candidate(now)
            return
        if self._settle:  # the first step after a switch pays for it
            self._settle = False
            return
        self._samples.append(duration)
        if len(self._samples) >= self.probe_steps:
            self._results[self._probing[0]] = statistics.median(self._samples)
            self._next_candidate(now)

    def _next_candidate(self, now: float) -> None:
        self._probing.pop(0)
        self._samples = []
        if self._probing:
            self._apply(self._probing[0])
            self._settle = True
            return
        best = min(self._results, key=lambda c: (self._results[c], -c))
        previous = self.history[-1][2] if self.history else self.max_threads
        self.hold_s = min(self.max_hold_s, self.hold_s * 2) if best == previous else self.first_hold_s
        self.history.append((now, dict(self._results), best))
        timings = ", ".join(f"{c} thread{'s' if c > 1 else ''} {t * 1000:.0f} ms"
                            for c, t in sorted(self._results.items(), reverse=True))
        logger.log(logging.INFO if best != previous else logging.DEBUG,
                   "CPU training %s %d intra-op thread%s (measured per step: %s; next check in %.0f s)",
                   "now on" if best != previous else "stays on", best, "s" if best > 1 else "", timings, self.hold_s)
        self._apply(best)
        self._reference, self._recent = self._results[best], []
        excess = max(0.0, self._probe_time - self._probe_count * self._results[best])
        self._earliest = now + excess / self.budget
        self._hold_until = max(now + self.hold_s, self._earliest)

    def _apply(self, threads: int) -> None:
        self.threads = threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
