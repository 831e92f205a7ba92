"""The "CPU training beside other jobs" table of docs/performance.md.

Runs the README's main job for a few epochs (``selfsup -v pretrain
--max-epochs 3``) alone, beside two busy loops and beside two PyTorch
matmul loops, each time with the thread count fixed at every core
("before": ``SELFSUP_CPU_THREADS`` = the core count, PyTorch's default) and
measured by the governor ("after": ``SELFSUP_CPU_THREADS`` unset). Runs are
interleaved (before, after, per condition, per round) so that drifting load
from outside hits both alike. The figure is the "trained in" line, without
start-up; the 1-minute load average before each run is printed beside it.

Prints a Markdown table, one row per condition, one column pair per round.

Example:
    $ python tools/cpu_contention.py              # 2 rounds, about 10 minutes on 2 idle cores
    $ python tools/cpu_contention.py --rounds 1 --epochs 1 --limit 64 --conditions none   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPETITORS = {
    "none": None,
    "2 busy loops": "while True: pass",
    "2 matmul loops": "import torch\na = torch.rand(512, 512)\nwhile True: a @ a",
}
TRAINED_IN = re.compile(r"trained in ([0-9.]+) s")


def timed_pretrain(epochs: int, threads: str | None, out: Path, limit: int | None = None) -> float:
    """Seconds of training that ``selfsup pretrain`` reports for one run."""
    env = dict(os.environ)
    env.pop("SELFSUP_CPU_THREADS", None)
    if threads is not None:
        env["SELFSUP_CPU_THREADS"] = threads
    # This interpreter's selfsup, found without the venv on PATH (as CI runs it).
    command = [sys.executable, "-m", "selfsup_core.cli", "-v", "pretrain", "--max-epochs", str(epochs),
               "--out", str(out), "--no-progress"]
    command += [] if limit is None else ["--limit", str(limit)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    found = TRAINED_IN.search(done.stdout + done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"selfsup pretrain failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return float(found.group(1))


def run_beside(code: str | None, epochs: int, threads: str | None, out: Path,
               limit: int | None = None) -> tuple[float, float]:
    """(seconds, load average before) for one run beside two copies of ``code``."""
    load = os.getloadavg()[0]
    competitors = [] if code is None else [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    try:
        time.sleep(3 if competitors else 0)  # let them get going first
        return timed_pretrain(epochs, threads, out, limit), load
    finally:
        for process in competitors:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="training images (default: all)")
    parser.add_argument("--conditions", nargs="+", choices=list(COMPETITORS), default=list(COMPETITORS))
    args = parser.parse_args()
    cores = str(len(os.sched_getaffinity(0)))
    figures: dict[str, list[str]] = {name: [] for name in args.conditions}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for name in args.conditions:
                for label, threads in (("before", cores), ("after", None)):
                    out = Path(scratch) / f"{round_}-{args.conditions.index(name)}-{label}"
                    seconds, load = run_beside(COMPETITORS[name], args.epochs, threads, out, args.limit)
                    figures[name].append(f"{seconds:.1f} ({load:.1f})")
                    print(f"round {round_ + 1}, {name}, {label}: {seconds:.1f} s (load {load:.1f})", flush=True)
    header = " | ".join(f"before, round {r + 1} | after, round {r + 1}" for r in range(args.rounds))
    print(f"\n| seconds (load before the run) | {header} |")
    print("|---" * (1 + 2 * args.rounds) + "|")
    for name, cells in figures.items():
        print(f"| {'no competitor' if name == 'none' else name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
