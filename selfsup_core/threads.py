"""CPU threads for the small per-batch tensor work that runs beside the model.

On a CPU, PyTorch splits every large-enough op over all intra-op threads.
That pays off for convolutions, but the per-batch preparation (uint8 to
float, the task's augmentation, normalisation) is a string of short ops, and
when loader workers or other processes hold the cores each of them waits for
its descheduled helper thread: on 2 busy cores, rotation's preparation of a
128 x 3 x 64 x 64 batch took 5-120 ms with 2 threads against 5-9 ms with one
(see docs/performance.md).

Example:
    >>> with one_cpu_thread("cpu"):
    ...     batch = torch.rand(8, 3, 32, 32).sub_(0.5)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


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
