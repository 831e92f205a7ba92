"""``selfsup bench tasks``: batch generation of each task against its model's train step.

For every installed task, on one resident batch of random images on the
device, it times ``task.make_batch`` and one optimiser step of the model the
task trains (the encoder plus the task's own head: a linear head for
classification tasks, the U-Net for reconstruction tasks), and prints one
JSON line each with images/s and their ratio. The goal is a ratio of at least
10: making a batch should cost under a tenth of training on it.

Both halves are the trainer's own step functions
(:func:`~selfsup_core.training.step.prepare_batch` and
:func:`~selfsup_core.training.step.forward_loss`), not copies. Comparisons
that concern one task belong to that task's package (crappify's degradation
against Kornia's: ``python -m selfsup_crappify.bench``).

Medians over ``--repeats`` timed calls after ``--warmup`` untimed ones.
Absolute figures mean something only on a GPU; ratios are what to compare.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser)
    >>> args = parser.parse_args(["--device", "cpu", "--size", "32", "--batch", "4",
    ...                           "--arch", "tiny", "--repeats", "1"])
    >>> run(args)  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import torch

from selfsup_core.bench.timing import device_name, time_call
from selfsup_core.models.encoders import build_encoder
from selfsup_core.models.normalization import Normalizer
from selfsup_core.plugin.registry import build_task_registry, create_task
from selfsup_core.tasks.base import PretextTask
from selfsup_core.training.step import forward_loss, optimiser_step, prepare_batch

GOAL_RATIO = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``selfsup bench tasks`` to ``parser``."""
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--size", type=int, default=None, help="image side (default: 224 on GPU, 64 on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 256 on GPU, 32 on CPU)")
    parser.add_argument("--arch", default="resnet34", help="encoder of the timed model (default: resnet34)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default: 20 on GPU, 5 on CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (default: 2)")
    parser.add_argument("--tasks", default="*", help="shell pattern of task names (default: all)")


def _train_step(
    task: PretextTask, arch: str, images: torch.Tensor, device: torch.device
) -> tuple[Callable[[], None], str]:
    """One optimiser step of ``task``'s model on a fixed, resident batch made from ``images``,
    and the model's name (encoder + head class)."""
    channels_last = device.type == "cuda"
    encoder = build_encoder(arch).to(device)
    head = task.build_head(encoder).to(device)
    if channels_last:
        encoder, head = encoder.to(memory_format=torch.channels_last), head.to(memory_format=torch.channels_last)
    optimiser = torch.optim.SGD([*encoder.parameters(), *head.parameters()], lr=1e-3, momentum=0.9)
    batch, inputs = prepare_batch(task, images, Normalizer(channels_last=channels_last).to(device))

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            result = forward_loss(task, encoder, head, batch, inputs)
        optimiser_step(result.loss, optimiser)

    return step, f"{arch}+{type(head).__name__}"


def bench_task(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Time ``make_batch`` and the train step of task ``name``; return the JSON record."""
    task = create_task(name).to(device)
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    normalizer = Normalizer(channels_last=device.type == "cuda").to(device)
    make_s = time_call(lambda: prepare_batch(task, images, normalizer), device, args.repeats, args.warmup)
    step, model = _train_step(task, args.arch, images, device)
    step_s = time_call(step, device, args.repeats, args.warmup)
    make_ips, step_ips = args.batch / make_s, args.batch / step_s
    return {
        "bench": "tasks",
        "task": name,
        "model": model,
        "make_batch_images_per_s": round(make_ips, 1),
        "train_step_images_per_s": round(step_ips, 1),
        "ratio": round(make_ips / step_ips, 2),
        "goal_met": make_ips / step_ips >= GOAL_RATIO,
    }


def _resolve(args: argparse.Namespace) -> torch.device:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    args.size = args.size or (224 if gpu else 64)
    args.batch = args.batch or (256 if gpu else 32)
    args.repeats = args.repeats or (20 if gpu else 5)
    for option in ("size", "batch", "repeats"):
        if getattr(args, option) < 1:
            raise ValueError(f"--{option} must be at least 1, got {getattr(args, option)}")
    return device


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print JSON lines; returns the exit status (0)."""
    device = _resolve(args)
    header = {"bench": "setup", "device": str(device),
              "device_name": device_name(device),
              "threads": torch.get_num_threads(), "size": args.size, "batch": args.batch,
              "arch": args.arch, "repeats": args.repeats, "torch": torch.__version__}
    print(json.dumps(header), flush=True)
    for name in build_task_registry().names(args.tasks):
        print(json.dumps(bench_task(name, args, device)), flush=True)
    return 0
