"""``selfsup bench throughput``: selfsup's data path against the tutorial's, and the ceiling.

In one run, on the same model, optimiser and batch size, it times (images/s):

* ``tutorial_loop`` (a): the original tutorial's per-sample pipeline (PIL
  open, RGB, resize, a random quarter turn in PIL, ToTensor, Normalize in
  ``--num-workers`` loader processes) feeding a train step;
* ``selfsup_loop`` (b): selfsup's loop: decode cache -> uint8 batches
  gathered from the memory-mapped cache -> device -> ``task.make_batch`` ->
  normalisation -> the same train step;
* ``model_step`` (c): the train step alone on a resident batch (the ceiling);

and the data paths alone, delivering batches ready for the model (decoded,
augmented, labelled, normalised, on the device):

* ``tutorial_data`` (a'): the tutorial's loader;
* ``selfsup_data`` (b'): selfsup's, with the same number of loader processes;
* ``selfsup_data_resident`` (b'): selfsup's without workers, sampling the
  cache in place (on a GPU: a copy of it in device memory).

The decode cache is built first (its build time is reported on its own), so
every figure is "after the first epoch". Each measurement is repeated
``--repeats`` times, interleaved, and the median reported. Every result is a
JSON line, so runs can be tracked.

Example:
    $ selfsup bench throughput --data imagenette2-224/train --image-size 64 \\
        --arch resnet18 --num-workers 2 --limit 2000
    {"kind": "throughput", "name": "selfsup_loop", "images_per_s": 231.4, ...}
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms

from selfsup_core.bench.timing import device_name, synchronize
from selfsup_core.config import BenchThroughputConfig
from selfsup_core.data.cache import load_decoded
from selfsup_core.data.datamodule import ImageDataModule
from selfsup_core.data.decoded import DecodedImages
from selfsup_core.data.files import ImageList, scan_folder
from selfsup_core.data.sources import limited
from selfsup_core.models.encoders import build_encoder
from selfsup_core.models.normalization import IMAGENET_MEAN, IMAGENET_STD, Normalizer, to_unit_range
from selfsup_core.plugin.registry import create_task
from selfsup_core.tasks.base import ClassificationTask, PretextBatch, PretextTask
from selfsup_core.threads import one_cpu_thread
from selfsup_core.training.step import forward_loss, optimiser_step, prepare_batch

#: Ratio name -> (numerator, denominator, goal on CPU, goal on GPU); see docs/performance.md.
RATIOS: dict[str, tuple[str, str, float | None, float | None]] = {
    "b/a": ("selfsup_loop", "tutorial_loop", None, 4.0),
    "b/c": ("selfsup_loop", "model_step", 0.9, 0.9),
    "b'/a'": ("selfsup_data", "tutorial_data", 3.0, None),
    "b'(resident)/a'": ("selfsup_data_resident", "tutorial_data", None, None),
}

_TUTORIAL = ("tutorial_loop", "tutorial_data")


def run(args: BenchThroughputConfig, out: TextIO | None = None) -> int:
    """Run the benchmark; JSON lines go to ``out`` (default stdout). Returns 0."""
    out = out or sys.stdout
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    image_list = limited(scan_folder(args.data), args.limit, args.seed)
    task = create_task(args.task)
    bench = ThroughputBench(args, device, task)

    def emit(record: dict[str, Any]) -> None:
        out.write(json.dumps(record) + "\n")
        out.flush()

    emit(bench.config(image_list))
    emit(bench.build_cache(image_list))
    measurements = bench.measurements(image_list)
    runs: dict[str, list[float]] = {name: [] for name in measurements}
    for _ in range(args.repeats):
        for name, measure in measurements.items():
            runs[name].append(measure())
    medians = {name: statistics.median(values) for name, values in runs.items()}
    for name, values in runs.items():
        emit({"kind": "throughput", "name": name, "what": _WHAT[name],
              "images_per_s": round(medians[name], 1), "runs": [round(v, 1) for v in values]})
    goal_column = 3 if device.type == "cuda" else 2
    for ratio, spec in RATIOS.items():
        numerator, denominator, goal = spec[0], spec[1], spec[goal_column]
        if numerator not in medians or denominator not in medians:
            continue
        value = medians[numerator] / medians[denominator]
        emit({"kind": "ratio", "name": ratio, "numerator": numerator, "denominator": denominator,
              "value": round(value, 3), "goal": goal, "met": None if goal is None else value >= goal})
    return 0


_WHAT = {
    "model_step": "(c) train step alone on a resident batch: the ceiling",
    "selfsup_loop": "(b) decode cache -> uint8 batch -> device -> make_batch -> normalise -> train step",
    "tutorial_loop": "(a) per-sample PIL pipeline in loader workers -> train step",
    "selfsup_data": "(b') decode cache -> uint8 batch (loader workers) -> device -> make_batch -> normalise",
    "selfsup_data_resident": "(b') resident cache, no workers -> device -> make_batch -> normalise",
    "tutorial_data": "(a') per-sample PIL pipeline in loader workers -> device",
}


class _TutorialRotation(ClassificationTask):
    """The tutorial's model on top of the encoder: a 4-way head on labels its loader made."""

    num_classes = 4


class ThroughputBench:
    """The models, optimisers and batch sources shared by every measurement.

    ``selfsup bench gpu`` reuses them for its comparisons (bf16, compile, data
    on the device), so every bench times the same step the same way.

    selfsup's path trains ``--task``'s model; the tutorial's path trains the
    tutorial's (the encoder and a 4-way rotation head), so the two loops
    compare like for like with the default ``--task rotation``.
    """

    def __init__(self, args: BenchThroughputConfig, device: torch.device, task: PretextTask) -> None:
        self.args, self.device, self.task = args, device, task.to(device)
        # As the trainer does: channels_last and bf16 autocast on GPUs, plain fp32 on CPUs.
        self.channels_last = device.type == "cuda"
        self.bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.normalizer = Normalizer(channels_last=self.channels_last).to(device)
        self.model = self.build_model(task)
        self.tutorial_task = _TutorialRotation()
        self.tutorial_model = self.build_model(self.tutorial_task)
        self.images: Tensor | None = None

    def build_model(self, task: PretextTask) -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]:
        """A fresh ``--arch`` encoder, ``task``'s head and their optimiser, on the device as the trainer sets them."""
        encoder = build_encoder(self.args.arch)
        head = task.build_head(encoder)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        encoder.to(self.device, memory_format=memory_format).train()
        head.to(self.device).train()
        optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=1e-3, weight_decay=0.05)
        return encoder, head, optimizer

    def config(self, image_list: ImageList) -> dict[str, Any]:
        a = self.args
        return {
            "kind": "config", "data": str(a.data), "images": len(image_list), "image_size": a.image_size,
            "arch": a.arch, "task": a.task, "batch_size": a.batch_size, "num_workers": a.num_workers,
            "steps": a.steps, "data_steps": a.data_steps, "repeats": a.repeats,
            "device": str(self.device),
            "device_name": device_name(self.device),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "precision": "bf16-autocast" if self.bf16 else "fp32", "torch": torch.__version__,
        }

    def build_cache(self, image_list: ImageList) -> dict[str, Any]:
        """Build the decode cache (timed), then open it again: the hit every later run gets."""
        a = self.args
        cache_dir = a.cache_dir or tempfile.mkdtemp(prefix="selfsup-bench-cache-")
        try:
            start = time.perf_counter()
            load_decoded(image_list, a.image_size, num_workers=a.num_workers, cache_dir=cache_dir)
            first = time.perf_counter() - start
            start = time.perf_counter()
            decoded = load_decoded(image_list, a.image_size, num_workers=a.num_workers, cache_dir=cache_dir)
            hit = time.perf_counter() - start
        finally:
            if a.cache_dir is None:
                # The open mapping keeps the data readable after the files go.
                shutil.rmtree(cache_dir, ignore_errors=True)
        self.images = decoded.images  # a whole data set (not a view): the memory map itself, no copy
        return {"kind": "cache", "images": len(decoded), "skipped": len(decoded.skipped),
                "first_call_s": round(first, 3), "images_per_s": round(len(image_list) / first, 1),
                "hit_s": round(hit, 4), "fresh": a.cache_dir is None}

    def measurements(self, image_list: ImageList) -> dict[str, Callable[[], float]]:
        a = self.args
        found: dict[str, Callable[[], float]] = {
            "model_step": lambda: self.time_steps(self.resident_step_source(), self._resident_step, a.steps),
            "selfsup_loop": lambda: self.time_steps(
                self.selfsup_batches(0, resident=False), self.selfsup_train, a.steps),
            "selfsup_data": lambda: self.time_steps(
                self.selfsup_batches(a.num_workers, resident=False), self._selfsup_data, a.data_steps),
            "selfsup_data_resident": lambda: self.time_steps(
                self.selfsup_batches(0, resident=True), self._selfsup_data, a.data_steps),
        }
        found["tutorial_loop"] = lambda: self.time_steps(
            self._tutorial_batches(image_list), self._tutorial_train, a.steps)
        found["tutorial_data"] = lambda: self.time_steps(
            self._tutorial_batches(image_list), self._tutorial_data, a.data_steps)
        return found

    # -- timing ---------------------------------------------------------------------

    def time_steps(self, batches: Iterator[Any], consume: Callable[[Any], int], steps: int) -> float:
        """Images/s of ``consume`` over ``steps`` batches, after ``--warmup`` untimed ones."""
        try:
            for _ in range(self.args.warmup):
                consume(next(batches))
            synchronize(self.device)
            start, images = time.perf_counter(), 0
            for _ in range(steps):
                images += consume(next(batches))
            synchronize(self.device)
            return images / (time.perf_counter() - start)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # ends the loader's worker processes before the next measurement

    # -- the train step: the trainer's own step functions ----------------------------------

    def train(self, task: PretextTask, model: tuple[Any, Any, Any], batch: PretextBatch, inputs: Any) -> int:
        """One training step of ``model`` (from :meth:`build_model`) on a prepared batch; returns its images."""
        encoder, head, optimizer = model
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            result = forward_loss(task, encoder, head, batch, inputs)
        optimiser_step(result.loss, optimizer)
        return _count(inputs)

    # -- selfsup's path --------------------------------------------------------------

    def selfsup_batches(self, num_workers: int, resident: bool) -> Iterator[Tensor]:
        """uint8 batches from the trainer's own data module (same dataset, sampler and loader)."""
        assert self.images is not None
        images = self.images
        if resident and self.device.type == "cuda":
            images = images.to(self.device)
        data = ImageDataModule(DecodedImages(images, None), batch_size=self.args.batch_size,
                               seed=self.args.seed, num_workers=num_workers)
        return _images_only(_forever(data.train_dataloader()))

    def _selfsup_ready(self, uint8: Tensor) -> tuple[PretextBatch, Any]:
        """What the trainer does after transfer: float in [0, 1], then the step's first half."""
        with one_cpu_thread(self.device):  # short ops beside the model: see selfsup_core.threads
            images = to_unit_range(uint8.to(self.device, non_blocking=True))
        return prepare_batch(self.task, images, self.normalizer)

    def _selfsup_data(self, uint8: Tensor) -> int:
        return _count(self._selfsup_ready(uint8)[1])

    def selfsup_train(self, uint8: Tensor) -> int:
        """A full trainer step from a uint8 batch: on the device, make the pretext batch, train."""
        return self.train(self.task, self.model, *self._selfsup_ready(uint8))

    def resident_step_source(self) -> Iterator[tuple[PretextBatch, Any]]:
        """One prepared batch, repeated: the model step alone (the ceiling of the loop)."""
        assert self.images is not None
        count = min(self.args.batch_size, len(self.images))
        ready = self._selfsup_ready(self.images[:count])
        while True:
            yield ready

    def _resident_step(self, ready: tuple[PretextBatch, Any]) -> int:
        return self.train(self.task, self.model, *ready)

    # -- the tutorial's path ------------------------------------------------------------

    def _tutorial_batches(self, image_list: ImageList) -> Iterator[tuple[Tensor, Tensor]]:
        loader = torch.utils.data.DataLoader(
            TutorialRotationDataset(image_list.files, self.args.image_size),
            batch_size=self.args.batch_size, shuffle=True, drop_last=True,
            num_workers=self.args.num_workers, pin_memory=self.device.type == "cuda",
        )
        return _forever(loader)

    def _tutorial_ready(self, batch: tuple[Tensor, Tensor]) -> tuple[PretextBatch, Tensor]:
        inputs, labels = batch  # already normalised by the tutorial's transforms
        inputs = inputs.to(self.device, non_blocking=True)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return PretextBatch(inputs=inputs, targets=labels.to(self.device, non_blocking=True)), inputs

    def _tutorial_data(self, batch: tuple[Tensor, Tensor]) -> int:
        return _count(self._tutorial_ready(batch)[1])

    def _tutorial_train(self, batch: tuple[Tensor, Tensor]) -> int:
        return self.train(self.tutorial_task, self.tutorial_model, *self._tutorial_ready(batch))


class TutorialRotationDataset(torch.utils.data.Dataset[tuple[Tensor, int]]):
    """The original tutorial's per-sample pipeline: decode, resize and rotate in PIL, per image.

    Each item: a normalised ``(3, size, size)`` float tensor turned by a
    random quarter turn, and the number of quarter turns as its label.
    """

    def __init__(self, files: list[Path] | tuple[Path, ...], size: int) -> None:
        self.files = list(files)
        self.resize = transforms.Resize((size, size))
        self.to_tensor = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        with Image.open(self.files[index]) as image:
            image = self.resize(image.convert("RGB"))
        turns = random.randrange(4)  # DataLoader seeds `random` in each worker
        return self.to_tensor(image.rotate(90 * turns)), turns


def _images_only(batches: Iterator[tuple[Tensor, Tensor]]) -> Iterator[Tensor]:
    try:
        for images, _ in batches:
            yield images
    finally:
        batches.close()  # type: ignore[attr-defined]  # ends the loader's workers


def _forever(loader: torch.utils.data.DataLoader) -> Iterator[Any]:
    while True:
        iterator = iter(loader)
        try:
            yield from iterator
        finally:
            del iterator  # shuts the workers down when the generator is closed


def _count(inputs: Tensor | tuple[Tensor, ...]) -> int:
    return len(inputs[0] if isinstance(inputs, tuple) else inputs)


