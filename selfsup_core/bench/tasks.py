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
    $ selfsup bench tasks --device cpu --image-size 64 --batch-size 32 --arch resnet18
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch

from selfsup_core.bench.timing import device_name, time_call
from selfsup_core.config import BenchTasksConfig
from selfsup_core.models.encoders import build_encoder
from selfsup_core.models.normalization import Normalizer
from selfsup_core.plugin.registry import build_task_registry, create_task
from selfsup_core.tasks.base import PretextTask
from selfsup_core.training.step import forward_loss, optimiser_step, prepare_batch

GOAL_RATIO = 10.0


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


def bench_task(name: str, config: BenchTasksConfig, device: torch.device) -> dict[str, Any]:
    """Time ``make_batch`` and the train step of task ``name``; return the JSON record."""
    task = create_task(name).to(device)
    size, batch_size = config.image_size, config.batch_size
    assert size is not None and batch_size is not None and config.repeats is not None  # resolved in run()
    images = torch.rand(batch_size, 3, size, size, device=device)
    normalizer = Normalizer(channels_last=device.type == "cuda").to(device)
    make_s = time_call(lambda: prepare_batch(task, images, normalizer), device, config.repeats, config.warmup)
    step, model = _train_step(task, config.arch, images, device)
    step_s = time_call(step, device, config.repeats, config.warmup)
    make_ips, step_ips = batch_size / make_s, batch_size / step_s
    return {
        "bench": "tasks",
        "task": name,
        "model": model,
        "make_batch_images_per_s": round(make_ips, 1),
        "train_step_images_per_s": round(step_ips, 1),
        "ratio": round(make_ips / step_ips, 2),
        "goal_met": make_ips / step_ips >= GOAL_RATIO,
    }


def run(config: BenchTasksConfig) -> int:
    """Run the benchmark and print JSON lines; returns the exit status (0)."""
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    config = config.replace(image_size=config.image_size or (224 if gpu else 64),
                            batch_size=config.batch_size or (256 if gpu else 32),
                            repeats=config.repeats or (20 if gpu else 5))
    header = {"bench": "setup", "device": str(device), "device_name": device_name(device),
              "threads": torch.get_num_threads(), "image_size": config.image_size,
              "batch_size": config.batch_size, "arch": config.arch, "repeats": config.repeats,
              "torch": torch.__version__}
    print(json.dumps(header), flush=True)
    for name in build_task_registry().names(config.tasks):
        print(json.dumps(bench_task(name, config, device)), flush=True)
    return 0
