"""``selfsup bench tasks``: batch generation of each task against its model's train step.

For every installed task, on one resident batch of random images on the
device, it times ``task.make_batch`` and one optimiser step of the model the
task trains (the encoder plus the task's own head: a linear head for
classification tasks, the U-Net for reconstruction tasks), and prints one
JSON line each with images/s and their ratio. The goal is a ratio of at least
10: making a batch should cost under a tenth of training on it.

It also times, in the same run, Kornia's down/up-sampling + ``RandomJPEG`` +
``RandomGaussianNoise`` pipeline against crappify's own tensor-op degradation.

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
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from selfsup_core.encoders import build_encoder
from selfsup_core.export import normalization_tensors
from selfsup_core.registry import build_task_registry, create_task
from selfsup_core.task import PretextBatch, PretextTask, map_inputs

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
    parser.add_argument(
        "--no-degradations", action="store_true",
        help="skip the Kornia vs crappify degradation comparison",
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> float:
    """Median seconds of one call of ``fn`` (device work included)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _train_step(task: PretextTask, arch: str, batch: PretextBatch, device: torch.device) -> Callable[[], None]:
    """One optimiser step of ``task``'s model on a fixed, resident ``batch``."""
    encoder = build_encoder(arch).to(device)
    head = task.build_head(encoder).to(device)
    if device.type == "cuda":
        encoder, head = encoder.to(memory_format=torch.channels_last), head.to(memory_format=torch.channels_last)
    params = list(encoder.parameters()) + list(head.parameters())
    optimiser = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    mean, std = normalization_tensors(device=device)
    inputs = map_inputs(batch.inputs, lambda x: (x - mean) / std)
    if device.type == "cuda":
        inputs = map_inputs(inputs, lambda x: x.contiguous(memory_format=torch.channels_last))

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outputs = task.forward_model(encoder, head, inputs)
            loss = task.loss(outputs, batch)
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    return step


def bench_task(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Time ``make_batch`` and the train step of task ``name``; return the JSON record."""
    task = create_task(name).to(device)
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    make_s = time_call(lambda: task.make_batch(images), device, args.repeats, args.warmup)
    step = _train_step(task, args.arch, task.make_batch(images), device)
    step_s = time_call(step, device, args.repeats, args.warmup)
    make_ips, step_ips = args.batch / make_s, args.batch / step_s
    return {
        "bench": "tasks",
        "task": name,
        "model": f"{args.arch}+{'unet' if task.reconstructs else 'head'}",
        "make_batch_images_per_s": round(make_ips, 1),
        "train_step_images_per_s": round(step_ips, 1),
        "ratio": round(make_ips / step_ips, 2),
        "goal_met": make_ips / step_ips >= GOAL_RATIO,
    }


def degradation_pipelines(device: torch.device) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Kornia's and crappify's degradations, with like-for-like settings where possible."""
    import kornia.augmentation as K

    from selfsup_crappify import CrappifyTask
    from selfsup_crappify.jpeg import jpeg

    kornia_jpeg = K.RandomJPEG(jpeg_quality=(10.0, 60.0), p=1.0).to(device)
    kornia_noise = K.RandomGaussianNoise(std=0.05, p=1.0).to(device)
    kornia_both = K.AugmentationSequential(kornia_jpeg, kornia_noise).to(device)

    def kornia_pipeline(x: torch.Tensor) -> torch.Tensor:
        # Kornia has no random down/up-sampling; a fixed factor 2 is the cheapest stand-in.
        small = F.interpolate(x, scale_factor=0.5, mode="area")
        x = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return kornia_both(x)

    same_steps = CrappifyTask(resize_p=1.0, noise_p=1.0, jpeg_p=1.0, text_p=0.0).to(device)
    default = CrappifyTask().to(device)
    everything = CrappifyTask(resize_p=1.0, noise_p=1.0, jpeg_p=1.0, text_p=1.0).to(device)

    def quality(x: torch.Tensor) -> torch.Tensor:
        return torch.randint(10, 61, (len(x),), device=x.device)

    return {
        "kornia: down/up x2 + RandomJPEG + RandomGaussianNoise": kornia_pipeline,
        "crappify: down/up + jpeg + noise (all p=1, no text)": lambda x: same_steps.degrade(x)[0],
        "crappify: all four steps p=1": lambda x: everything.degrade(x)[0],
        "crappify: defaults": lambda x: default.degrade(x)[0],
        "kornia: RandomJPEG alone": kornia_jpeg,
        "crappify: jpeg alone": lambda x: jpeg(x, quality(x)),
        "kornia: RandomGaussianNoise alone": kornia_noise,
        "torch.randn noise alone": lambda x: (x + 0.05 * torch.randn_like(x)).clamp(0, 1),
    }


def bench_degradations(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Time each pipeline of :func:`degradation_pipelines` on one resident batch."""
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    records = []
    for name, fn in degradation_pipelines(device).items():
        seconds = time_call(lambda fn=fn: fn(images), device, args.repeats, args.warmup)
        records.append({"bench": "degradation", "pipeline": name,
                        "images_per_s": round(args.batch / seconds, 1)})
    base = records[0]["images_per_s"]
    for record in records:
        record["vs_kornia_pipeline"] = round(record["images_per_s"] / base, 2)
    return records


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
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "threads": torch.get_num_threads(), "size": args.size, "batch": args.batch,
              "arch": args.arch, "repeats": args.repeats, "torch": torch.__version__}
    print(json.dumps(header), flush=True)
    registry = build_task_registry()
    for name in registry.names(args.tasks):
        print(json.dumps(bench_task(name, args, device)), flush=True)
    if not args.no_degradations and "crappify" in registry.names():
        for record in bench_degradations(args, device):
            print(json.dumps(record), flush=True)
    elif not args.no_degradations:
        print("note: crappify is not installed; degradation comparison skipped", file=sys.stderr)
    return 0
