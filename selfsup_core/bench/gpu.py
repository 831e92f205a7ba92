"""``selfsup bench gpu``: every GPU measurement in one run, sized to fit a time budget.

Sections, in this order, each reported with its wall seconds:

* ``tasks``: ``selfsup bench tasks`` (each installed task's ``make_batch``
  against its model's train step) at ``--tasks-image-size`` (224) with
  ``--tasks-arch`` (ResNet-18);
* ``throughput``: ``selfsup bench throughput`` (a, b, b', c and their ratios,
  docs/performance.md; GPU goals b/c >= 0.9 and b/a >= 4) at ``--image-size``
  (128) with ``--arch`` (ResNet-34);
* ``nvjpeg``: decoding with the decode cache's ``decoder="nvjpeg"`` against
  ``"pil"`` in ``--num-workers`` processes (the decode alone, no cache files);
* ``data_on_device``: selfsup's loop (b) sampling decoded images kept in GPU
  memory (training's ``--data-on-device``) against host memory;
* ``bf16``: the train step (c) under bf16 autocast (``--precision
  bf16-mixed``) against fp32 (``32-true``);
* ``compile``: the train step (c) with encoder and head ``torch.compile``d
  (``--compile``) against eager, plus the first call's compile time.

The three comparisons of the train step run the throughput benchmark's own
models, batch sources and timing loop (``throughput.ThroughputBench``), so each
measures what the throughput section measures with one switch flipped; the
two halves of a comparison are measured ``--repeats`` times, interleaved.

Budget: without ``--steps``, each section may spend its weight's share
(:data:`WEIGHTS`) of the budget left when it starts, and sizes its steps (at
most 20, at least 2) from a short probe of its own; time a section leaves
unused goes to the later ones. A section that fails is reported and the
others still run (exit status 1). On a CPU (``--device cpu``, a smoke test)
the sections that need CUDA are reported as skipped.

Example:
    $ selfsup bench gpu --data "$SELFSUP_IMAGENETTE" --budget-minutes 10
    $ selfsup bench gpu --device cpu --data DIR --image-size 32 --tasks-image-size 32 \\
        --batch-size 8 --steps 2 --arch tiny --tasks-arch tiny
"""

from __future__ import annotations

import io
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from shlex import quote
from typing import Any, TextIO

import torch

from selfsup_core.bench import throughput
from selfsup_core.bench.eval import default_data
from selfsup_core.bench.tasks import bench_task
from selfsup_core.bench.timing import device_name, machine
from selfsup_core.config import IMAGENETTE_ENV, BenchGpuConfig, BenchTasksConfig, BenchThroughputConfig
from selfsup_core.data.cache import load_decoded
from selfsup_core.data.decoded import DecodedImages
from selfsup_core.data.files import ImageList, scan_folder
from selfsup_core.data.sources import limited
from selfsup_core.errors import ConfigError, DataError, SelfsupError
from selfsup_core.options import _value_text
from selfsup_core.plugin.registry import build_task_registry, create_task
from selfsup_core.training.runs import new_run_dir

logger = logging.getLogger(__name__)

NEEDS_CUDA = "skipped: needs a CUDA GPU"
MIN_STEPS, MAX_STEPS = 2, 20  # 20: bench tasks' GPU repeats and the suggested throughput --steps
COMPILE_S = 120.0  # a guess at torch.compile's cost for a ResNet-34 step (never measured here); below it, skip
PROBE_IMAGES = 256  # images the nvjpeg section decodes first, to size the rest (amortises start-ups)
REPORT_MD, REPORT_JSONL = "bench_gpu.md", "bench_gpu.jsonl"
#: Each section's share of the budget left when it starts, against the sections still to run.
WEIGHTS = {"tasks": 2.0, "throughput": 3.0, "nvjpeg": 1.0, "data_on_device": 1.0, "bf16": 1.0, "compile": 2.0}
CUDA_ONLY = ("nvjpeg", "data_on_device", "bf16", "compile")
WHAT = {
    "tasks": "each task's make_batch against its train step (bench tasks)",
    "throughput": "tutorial loop (a), selfsup loop (b), data paths (a', b'), model step (c) (bench throughput)",
    "nvjpeg": "decoding: nvJPEG on the GPU against PIL in loader processes",
    "data_on_device": "selfsup loop (b): images in GPU memory against host memory",
    "bf16": "train step (c): bf16-mixed against 32-true",
    "compile": "train step (c): torch.compile against eager",
}
# Measurements of bench throughput timed over --data-steps batches (the others over --steps).
_DATA_MEASUREMENTS = ("selfsup_data", "selfsup_data_resident", "tutorial_data")

Measure = Callable[[int], float]
"""Images/s over a number of timed steps (after the warm-up)."""


class _Skip(Exception):
    """A section that does not run here; the message is its status."""


# -- the budget ----------------------------------------------------------------------


@dataclass
class Budget:
    """The run's wall-time budget and each section's share of what is left.

    Example:
        >>> budget = Budget(600.0)
        >>> round(budget.allowance("tasks", ["tasks", "throughput"]))  # weights 2 of 2 + 3
        240
    """

    total_s: float
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def allowance(self, section: str, remaining: Sequence[str]) -> float:
        """Seconds ``section`` may spend: its weight's share of the time left among ``remaining`` (itself included)."""
        return max(0.0, self.left()) * WEIGHTS[section] / sum(WEIGHTS[name] for name in remaining)


def fit_count(seconds: float, unit_s: float, low: int = MIN_STEPS, high: int = MAX_STEPS) -> int:
    """How many units of ``unit_s`` seconds fit in ``seconds``, kept within ``[low, high]``.

    Example:
        >>> fit_count(10.0, 0.5), fit_count(10.0, 4.0), fit_count(-3.0, 1.0)
        (20, 2, 2)
    """
    if unit_s <= 0:
        return high
    return max(low, min(high, int(seconds / unit_s)))


def data_steps(steps: int) -> int:
    """Batches of the throughput data paths for ``steps`` train steps (their 30 to 20 default).

    Example:
        >>> data_steps(20), data_steps(2)
        (30, 3)
    """
    return steps + (steps + 1) // 2


# -- records -----------------------------------------------------------------------------


class Recorder:
    """Prints each record as one JSON line at once (tagged with its section) and keeps it for the report.

    Example:
        >>> recorder = Recorder(io.StringIO())
        >>> recorder.emit("bf16", {"kind": "speedup", "value": 2.1})["section"]
        'bf16'
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.records: list[dict[str, Any]] = []

    def emit(self, section: str, record: dict[str, Any]) -> dict[str, Any]:
        record = {"section": section, **record}
        self.records.append(record)
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()
        return record

    def of(self, section: str, kind: str | None = None) -> list[dict[str, Any]]:
        """The records of ``section`` (of one ``kind``, when given)."""
        return [r for r in self.records if r["section"] == section and kind in (None, r.get("kind"))]


class _JsonLines(io.TextIOBase):
    """A text stream that hands each JSON line written to it to ``take`` (bench throughput writes to one)."""

    def __init__(self, take: Callable[[dict[str, Any]], Any]) -> None:
        super().__init__()
        self.take, self.pending = take, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.strip():
                self.take(json.loads(line))
        return len(text)


# -- what the sections share ----------------------------------------------------------------


@dataclass
class _Run:
    """Settings, device, files, budget and records of one run, and the comparisons' bench."""

    config: BenchGpuConfig
    device: torch.device
    folder: Path
    images: ImageList
    budget: Budget
    recorder: Recorder
    decoded: DecodedImages | None = None  # PIL-decoded at --image-size: the nvjpeg section's, else decoded later
    bench: throughput.ThroughputBench | None = None

    @property
    def num_workers(self) -> int:
        workers = self.config.num_workers
        return min(4, os.cpu_count() or 1) if workers is None else workers

    def emit(self, section: str, record: dict[str, Any]) -> dict[str, Any]:
        return self.recorder.emit(section, record)

    def throughput_config(self, **changes: Any) -> BenchThroughputConfig:
        """``bench throughput``'s settings for this run (``changes`` override them)."""
        c = self.config
        steps = c.steps or MAX_STEPS
        settings = BenchThroughputConfig(
            data=str(self.folder), image_size=c.image_size, arch=c.arch, task=c.task,
            num_workers=self.num_workers, batch_size=c.batch_size, steps=steps, data_steps=data_steps(steps),
            warmup=c.warmup, repeats=c.repeats, limit=c.limit, device=str(self.device), seed=c.seed)
        return settings.replace(**changes)

    def decoded_images(self) -> DecodedImages:
        """PIL-decoded images at ``--image-size``: the nvjpeg section's, else 8 batches' worth decoded now."""
        if self.decoded is None:
            subset = limited(self.images, 8 * self.config.batch_size, self.config.seed)
            self.decoded = load_decoded(subset, self.config.image_size, self.num_workers, cache=False)
        return self.decoded

    def comparison_bench(self) -> throughput.ThroughputBench:
        """bench throughput's models and batch sources (on the decoded images), made once for the comparisons."""
        if self.bench is None:
            task = create_task(self.config.task)
            self.bench = throughput.ThroughputBench(self.throughput_config(), self.device, task)
            self.bench.images = self.decoded_images().images
        return self.bench


# -- sections ---------------------------------------------------------------------------------


def tasks_section(state: _Run, allowance_s: float) -> dict[str, Any]:
    """bench tasks' record of each task; without ``--steps`` a discarded first call sizes the timed calls."""
    c = state.config
    names = build_task_registry().names(c.tasks)
    if not names:
        raise _Skip(f"skipped: no installed task matches {c.tasks!r}")
    settings = BenchTasksConfig(device=str(state.device), image_size=c.tasks_image_size, batch_size=c.batch_size,
                                arch=c.tasks_arch, repeats=c.steps or MAX_STEPS, warmup=c.warmup)
    started, call_s = time.perf_counter(), 0.0
    if c.steps is None:  # probe: one warm-up and one timed call of make_batch and the step, model built
        call_s = _wall(lambda: bench_task(names[0], settings.replace(repeats=1, warmup=1), state.device)) / 2
    for i, name in enumerate(names):
        if c.steps is None:
            share = (allowance_s - (time.perf_counter() - started)) / (len(names) - i)
            settings = settings.replace(repeats=fit_count(share - c.warmup * call_s, call_s))
        start = time.perf_counter()
        state.emit("tasks", {**bench_task(name, settings, state.device), "timed_calls": settings.repeats})
        # Wall per call, model building included: the next task's sizing errs on the short side.
        call_s = (time.perf_counter() - start) / (settings.repeats + settings.warmup)
    return {"tasks": len(names)}


def throughput_section(state: _Run, allowance_s: float) -> dict[str, Any]:
    """bench throughput, its JSON lines passed on; without ``--steps`` a small probe run sizes the steps."""
    steps = state.config.steps or throughput_steps(state, allowance_s)
    settings = state.throughput_config(steps=steps, data_steps=data_steps(steps))
    throughput.run(settings, out=_JsonLines(lambda record: state.emit("throughput", record)))
    return {"steps": settings.steps, "data_steps": settings.data_steps}


def throughput_steps(state: _Run, allowance_s: float) -> int:
    """The steps of bench throughput that fit ``allowance_s``, from a probe run of it.

    The probe decodes 4 batches of images and times one step of each
    measurement; its wall time without the cache build stands for the
    per-repeat overhead (models, loader start-ups, warm-ups).
    """
    c = state.config
    records: list[dict[str, Any]] = []
    probe = state.throughput_config(steps=1, data_steps=1, repeats=1, warmup=1,
                                  limit=min(len(state.images), 4 * c.batch_size))
    probe_s = _wall(lambda: throughput.run(probe, out=_JsonLines(records.append)))
    cache = next(r for r in records if r["kind"] == "cache")
    batch_s = {r["name"]: c.batch_size / max(r["images_per_s"], 1e-9) for r in records if r["kind"] == "throughput"}
    per_step = sum(s * (1.5 if name in _DATA_MEASUREMENTS else 1.0) for name, s in batch_s.items())
    cache_s = len(state.images) / max(cache["images_per_s"], 1e-9)
    overhead = probe_s - cache["first_call_s"]
    return fit_count((allowance_s - probe_s - cache_s) / c.repeats - overhead - c.warmup * per_step, per_step)


def nvjpeg_section(state: _Run, allowance_s: float) -> dict[str, Any]:
    """Images/s of decoding with nvJPEG and with PIL; a first pass over 256 images sizes the subset."""
    c, workers = state.config, {"nvjpeg": 0, "pil": state.num_workers}
    probe = limited(state.images, PROBE_IMAGES, c.seed)
    probe_s = {name: _decode(state, probe, name)[0] for name in workers}  # also starts CUDA, nvJPEG and workers
    per_image = sum(probe_s.values()) / len(probe)
    count = fit_count(allowance_s - sum(probe_s.values()), per_image, low=len(probe), high=len(state.images))
    chosen = limited(state.images, count, c.seed)
    rates = {}
    for name, processes in workers.items():
        seconds, decoded = _decode(state, chosen, name)
        rates[name] = len(decoded) / seconds
        if name == "pil":
            state.decoded = decoded  # the comparisons sample these
        what = "nvJPEG on the GPU (main process)" if name == "nvjpeg" else f"PIL in {processes} loader processes"
        state.emit("nvjpeg", {"kind": "throughput", "name": name, "what": what, "images": len(decoded),
                            "seconds": round(seconds, 3), "images_per_s": round(rates[name], 1),
                            "runs": [round(rates[name], 1)]})
    _emit_speedup(state, "nvjpeg", "nvjpeg", "pil", rates["nvjpeg"] / rates["pil"])
    return {"images": len(chosen), "of": len(state.images)}


def _decode(state: _Run, image_list: ImageList, decoder: str) -> tuple[float, DecodedImages]:
    """Seconds to decode ``image_list`` into RAM with ``decoder`` (the cache's own decode path, no files)."""
    start = time.perf_counter()
    decoded = load_decoded(image_list, state.config.image_size, state.num_workers, cache=False, decoder=decoder)
    return time.perf_counter() - start, decoded


def data_on_device_section(state: _Run, allowance_s: float) -> dict[str, Any]:
    """selfsup's loop (b), the decoded images in device memory against host memory."""
    bench = state.comparison_bench()

    def loop(resident: bool) -> Measure:
        return lambda steps: bench.time_steps(bench.selfsup_batches(0, resident=resident), bench.selfsup_train, steps)

    return compare(state, "data_on_device", {
        "on_device": ("(b) batches gathered from the images in device memory, no workers", loop(True)),
        "host": ("(b) batches gathered in host memory (no workers), then copied to the device", loop(False)),
    }, allowance_s)


def bf16_section(state: _Run, allowance_s: float) -> dict[str, Any]:
    """The train step (c) under bf16 autocast against fp32."""
    if state.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise _Skip("skipped: this GPU does not support bf16")
    bench = state.comparison_bench()
    # As Lightning's 32-true leaves them: PyTorch's own TF32 switches, recorded since they decide fp32's speed.
    tf32 = (f"TF32 convolutions {'on' if torch.backends.cudnn.allow_tf32 else 'off'}, "
            f"TF32 matmuls {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}")
    return compare(state, "bf16", {
        "bf16-mixed": ("(c) train step under bf16 autocast", train_step(bench, bf16=True)),
        "32-true": (f"(c) train step in fp32 ({tf32})", train_step(bench, bf16=False)),
    }, allowance_s)


def compile_section(state: _Run, allowance_s: float) -> dict[str, Any]:
    """The train step (c) with encoder and head compiled against eager; the first call's wall is the compile time."""
    if allowance_s < COMPILE_S:
        raise _Skip(f"skipped: {allowance_s:.0f} s of the budget left, torch.compile needs about {COMPILE_S:.0f} s")
    bench = state.comparison_bench()
    compiled = bench.build_model(bench.task)  # a second encoder and head, of the same architecture
    for module in compiled[:2]:
        module.compile()  # as training.trainer.compile_model does: in place, state-dict keys unchanged
    measure = train_step(bench, model=compiled)
    compile_s = _wall(lambda: measure(1))
    state.emit("compile", {"kind": "compile", "first_call_s": round(compile_s, 1),
                         "what": "first call: compiles encoder and head (forward and backward)"})
    result = compare(state, "compile", {
        "compiled": ("(c) train step, encoder and head torch.compile'd", measure),
        "eager": ("(c) train step, eager", train_step(bench)),
    }, allowance_s - compile_s)
    return {"compile_s": round(compile_s, 1), **result}


def train_step(bench: throughput.ThroughputBench, *, bf16: bool | None = None,
               model: tuple[Any, Any, Any] | None = None) -> Measure:
    """bench throughput's model step (c): ``bf16`` switches autocast, ``model`` replaces its model.

    Example:
        >>> measure = train_step(bench, bf16=False)  # doctest: +SKIP
        >>> measure(10)  # images/s over 10 timed steps  # doctest: +SKIP
        1843.2
    """
    def consume(ready: Any) -> int:
        return bench.train(bench.task, model or bench.model, *ready)

    def measure(steps: int) -> float:
        saved = bench.bf16
        bench.bf16 = saved if bf16 is None else bf16
        try:
            return bench.time_steps(bench.resident_step_source(), consume, steps)
        finally:
            bench.bf16 = saved

    return measure


def compare(state: _Run, section: str, variants: dict[str, tuple[str, Measure]], allowance_s: float) -> dict[str, Any]:
    """Images/s of each variant, ``--repeats`` times interleaved; emits the medians and first/second's speedup.

    Without ``--steps``, one call of each with a single step (its warm-up included) sizes the steps.
    """
    c = state.config
    steps = c.steps or probe_steps([measure for _, measure in variants.values()], allowance_s, c.repeats, c.warmup)
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(c.repeats):
        for name, (_, measure) in variants.items():
            runs[name].append(measure(steps))
    medians = {name: statistics.median(values) for name, values in runs.items()}
    for name, (what, _) in variants.items():
        state.emit(section, {"kind": "throughput", "name": name, "what": what, "images_per_s": round(medians[name], 1),
                           "runs": [round(v, 1) for v in runs[name]]})
    first, second = list(variants)
    _emit_speedup(state, section, first, second, medians[first] / medians[second])
    return {"steps": steps}


def probe_steps(measures: Sequence[Measure], allowance_s: float, repeats: int, warmup: int) -> int:
    """The steps per measurement that fit ``allowance_s``, from one single-step call of each measure.

    Example:
        >>> probe_steps([lambda steps: 100.0], allowance_s=60.0, repeats=3, warmup=2)  # a quick measure: the cap
        20
    """
    start = time.perf_counter()
    step_s = sum(_wall(lambda m=measure: m(1)) / (warmup + 1) for measure in measures)
    left = allowance_s - (time.perf_counter() - start)
    return fit_count(left / repeats - warmup * step_s, step_s)


def _emit_speedup(state: _Run, section: str, numerator: str, denominator: str, value: float) -> None:
    state.emit(section, {"kind": "speedup", "name": f"{numerator}/{denominator}", "numerator": numerator,
                       "denominator": denominator, "value": round(value, 3)})


def _wall(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


SECTIONS: dict[str, Callable[[_Run, float], dict[str, Any]]] = {
    "tasks": tasks_section, "throughput": throughput_section, "nvjpeg": nvjpeg_section,
    "data_on_device": data_on_device_section, "bf16": bf16_section, "compile": compile_section,
}


# -- the run ----------------------------------------------------------------------------------


def run(config: BenchGpuConfig) -> int:
    """Run every section, print JSON lines, write the report; returns 0, or 1 when a section failed."""
    budget = Budget(config.budget_minutes * 60)
    device = resolve_device(config.device)  # first: no GPU is one line, before any data is read
    folder = data_folder(config.data)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    images = limited(scan_folder(folder), config.limit, config.seed)
    out = Path(config.out) if config.out else new_run_dir("bench-gpu")
    out.mkdir(parents=True, exist_ok=True)
    state = _Run(config, device, folder, images, budget, Recorder())
    state.emit("setup", _setup(state))
    planned = [name for name in SECTIONS if device.type == "cuda" or name not in CUDA_ONLY]
    statuses = {}
    for name in SECTIONS:
        if name not in planned:
            statuses[name] = _report_section(state, name, NEEDS_CUDA, 0.0, 0.0, {})
            continue
        statuses[name] = run_section(state, name, budget.allowance(name, planned[planned.index(name):]))
    failed = [name for name, status in statuses.items() if status.startswith("failed")]
    state.emit("total", {"kind": "total", "wall_s": round(budget.elapsed(), 1), "budget_s": budget.total_s,
                         "within_budget": budget.left() >= 0, "failed": failed, "report": str(out / REPORT_MD)})
    write_report(state, out)
    print(f"bench gpu: {budget.elapsed():.1f} s of a {budget.total_s:.0f} s budget; report in {out / REPORT_MD}",
          file=sys.stderr)
    return 1 if failed else 0


def run_section(state: _Run, name: str, allowance_s: float) -> str:
    """Run one section and emit its status line; a failure is reported, never raised."""
    start, details, status = time.perf_counter(), {}, "done"
    try:
        if state.budget.left() <= 0:
            raise _Skip("skipped: the time budget is spent")
        details = SECTIONS[name](state, allowance_s)
    except _Skip as skip:
        status = str(skip)
    except SelfsupError as exc:  # a user-facing error (data, settings): its one line says it all
        status = f"failed: {exc}"
    except Exception as exc:  # noqa: BLE001 - one broken section must not cost the others' figures
        logger.error("bench gpu: section %s failed", name, exc_info=True)
        status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # after an out-of-memory, give the next section its memory back
    return _report_section(state, name, status, time.perf_counter() - start, allowance_s, details)


def _report_section(state: _Run, name: str, status: str, wall_s: float, allowance_s: float,
                    details: dict[str, Any]) -> str:
    state.emit(name, {"kind": "section", "status": status, "what": WHAT[name], "wall_s": round(wall_s, 2),
                      "allowance_s": round(allowance_s, 1), **details})
    if status != "done":
        print(f"bench gpu: {name}: {status}", file=sys.stderr)
    return status


def resolve_device(name: str | None) -> torch.device:
    """The device to measure: CUDA unless ``cpu`` is asked for; without a GPU, a one-line error that says what to run.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    try:
        device = torch.device(name or "cuda")
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: use cuda, cuda:N or cpu.") from None
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(f"selfsup bench gpu measures cuda (or cpu for a smoke test), not {device.type}.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("selfsup bench gpu needs a CUDA GPU and none is available; for a smoke test on the CPU "
                          f"run: {SMOKE_TEST}")
    return device


SMOKE_TEST = ("selfsup bench gpu --device cpu --data DIR --image-size 32 --tasks-image-size 32 --batch-size 8 "
              "--steps 2 --arch tiny --tasks-arch tiny")


def data_folder(value: str | None) -> Path:
    """The image folder: ``--data`` (else ``$SELFSUP_IMAGENETTE``), its ``train/`` when it has one.

    Example:
        >>> data_folder("imagenette2-224")  # doctest: +SKIP
        PosixPath('imagenette2-224/train')
    """
    root = Path(value).expanduser() if value else default_data()
    if root is None:
        raise DataError(f"no data: pass --data DIR (an Imagenette root or any image folder) or set {IMAGENETTE_ENV}.")
    return root / "train" if (root / "train").is_dir() else root


def _setup(state: _Run) -> dict[str, Any]:
    c = state.config
    return {"kind": "config", "device": str(state.device), "device_name": device_name(state.device),
            "data": str(state.folder), "images": len(state.images), "budget_minutes": c.budget_minutes,
            "image_size": c.image_size, "tasks_image_size": c.tasks_image_size, "batch_size": c.batch_size,
            "arch": c.arch, "tasks_arch": c.tasks_arch, "task": c.task, "steps": c.steps, "repeats": c.repeats,
            "warmup": c.warmup, "num_workers": state.num_workers, "machine": machine()}


# -- the report --------------------------------------------------------------------------------


def write_report(state: _Run, out: Path) -> None:
    """``bench_gpu.jsonl`` (every record) and ``bench_gpu.md`` (the tables) into ``out``."""
    records = state.recorder.records
    (out / REPORT_JSONL).write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / REPORT_MD).write_text(markdown_report(state.recorder, command_line(state.config)))


def markdown_report(recorder: Recorder, command: str) -> str:
    """The summary (each section's wall seconds and status, the total), then each section's figures."""
    (setup,) = recorder.of("setup")
    (total,) = recorder.of("total")
    lines = ["# selfsup bench gpu", "",
             f"{setup['device_name']} ({setup['device']}), torch {setup['machine']['torch']}, "
             f"{setup['machine']['cpus']} CPUs; {setup['images']} images from `{setup['data']}`; "
             f"budget {setup['budget_minutes']:g} min.", "",
             "| section | measures | wall s | status |", "|---|---|---|---|"]
    for name in SECTIONS:
        for r in recorder.of(name, "section"):
            lines.append(f"| {name} | {r['what']} | {r['wall_s']:.1f} | {r['status']} |")
    within = "within" if total["within_budget"] else "over"
    lines += [f"| **total** | | **{total['wall_s']:.1f}** | {within} the {total['budget_s']:.0f} s budget |", ""]
    lines += _tasks_table(recorder) + _throughput_tables(recorder) + _comparison_table(recorder)
    lines += ["Reproduce:", "", "```bash", command, "```", ""]
    return "\n".join(lines)


def _tasks_table(recorder: Recorder) -> list[str]:
    rows = [r for r in recorder.of("tasks") if r.get("bench") == "tasks"]
    if not rows:
        return []
    lines = ["## tasks", "", "| task | model | make_batch img/s | train step img/s | ratio (goal >= 10) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['model']} | {r['make_batch_images_per_s']:,.1f} | "
              f"{r['train_step_images_per_s']:,.1f} | {r['ratio']:g} {'met' if r['goal_met'] else 'missed'} |"
              for r in rows]
    return lines + [""]


def _throughput_tables(recorder: Recorder) -> list[str]:
    rates, ratios = recorder.of("throughput", "throughput"), recorder.of("throughput", "ratio")
    if not rates:
        return []
    lines = ["## throughput", "", "| measurement | img/s (median) | runs |", "|---|---|---|"]
    lines += [f"| {r['name']} | {r['images_per_s']:,.1f} | {', '.join(f'{v:g}' for v in r['runs'])} |"
              for r in rates]
    lines += ["", "| ratio | value | goal | met |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['value']:g} | {'-' if r['goal'] is None else '>= ' + format(r['goal'], 'g')} | "
              f"{'-' if r['met'] is None else ('yes' if r['met'] else 'no')} |" for r in ratios]
    return lines + [""]


def _comparison_table(recorder: Recorder) -> list[str]:
    lines = ["## comparisons", "", "| section | variant | img/s | counterpart | img/s | speedup |",
             "|---|---|---|---|---|---|"]
    for name in CUDA_ONLY:
        rates = {r["name"]: r["images_per_s"] for r in recorder.of(name, "throughput")}
        for r in recorder.of(name, "speedup"):
            lines.append(f"| {name} | {r['numerator']} | {rates[r['numerator']]:,.1f} | {r['denominator']} | "
                         f"{rates[r['denominator']]:,.1f} | {r['value']:g}x |")
        for r in recorder.of(name, "compile"):
            lines.append(f"| {name} | first call (compiles) | {r['first_call_s']:g} s | | | |")
    return lines + [""] if len(lines) > 4 else []


def command_line(config: BenchGpuConfig) -> str:
    """The ``selfsup bench gpu`` command that repeats this run (the options that differ from the defaults).

    Example:
        >>> command_line(BenchGpuConfig(budget_minutes=5))
        'selfsup bench gpu --budget-minutes 5.0'
    """
    defaults = BenchGpuConfig()
    parts = ["selfsup bench gpu"]
    for name, value in config.to_dict().items():
        if value != getattr(defaults, name) and name != "out":
            parts.append(f"--{name.replace('_', '-')} {quote(_value_text(value))}")
    return " ".join(parts)
