"""Multi-task pretraining: several installed tasks, one shared encoder, one head each.

``--task rotation+crappify`` trains the encoder on both tasks at once; a
weight per task goes after a colon (``rotation:1+crappify:0.5``, default 1).
Each step, every task makes its own batch from the same images, the encoder
runs on each task's inputs, each task's head and loss follow, and the loss
is the weighted sum. Each task's metrics are logged under its name
(``train/rotation/acc``, ``train/crappify/psnr``...). Any installed tasks
combine, third-party ones included.

Options of the parts go under their names: ``task_options={"crappify":
{"jpeg_p": 0.5}}``, or on the command line ``--task-option crappify.jpeg_p=0.5``.

Example:
    >>> task = create_multitask("rotation:1+cutout:0.5", {"cutout.fill": "zero"})  # doctest: +SKIP
    >>> task.weights
    {'rotation': 1.0, 'cutout': 0.5}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from selfsup_core.errors import TaskOptionError
from selfsup_core.options import option
from selfsup_core.tasks.base import Inputs, PretextBatch, PretextTask
from selfsup_core.tasks.options import TaskOptions

if TYPE_CHECKING:
    from selfsup_core.plugin.host import PluginHost

SEPARATOR = "+"


def is_multitask(name: str) -> bool:
    """True for a task name that combines several tasks (``a+b``)."""
    return SEPARATOR in name


def parse_tasks(spec: str) -> dict[str, float]:
    """``"rotation:1+crappify:0.5"`` -> ``{"rotation": 1.0, "crappify": 0.5}``.

    Raises:
        TaskOptionError: An empty part, a repeated task, or a weight that is
            not a finite number above 0.
    """
    weights: dict[str, float] = {}
    for part in spec.split(SEPARATOR):
        name, _, weight_text = part.strip().partition(":")
        name = name.strip()
        if not name:
            raise TaskOptionError(f"task {spec!r}: an empty task name; write tasks as rotation+crappify:0.5.")
        if name in weights:
            raise TaskOptionError(f"task {spec!r}: {name!r} appears twice.")
        try:
            weight = float(weight_text) if weight_text.strip() else 1.0
        except ValueError:
            weight = math.nan
        if not (math.isfinite(weight) and weight > 0):
            raise TaskOptionError(f"task {spec!r}: the weight of {name!r} must be a number above 0, "
                                  f"got {weight_text.strip()!r}.")
        weights[name] = weight
    if len(weights) < 2:
        raise TaskOptionError(f"task {spec!r}: a multi-task names at least two tasks, e.g. rotation+cutout.")
    return weights


def nest_options(options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-task options from ``{"crappify": {...}}`` or dotted keys ``{"crappify.jpeg_p": 0.5}``."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in options.items():
        task, dot, option_name = key.partition(".")
        if dot:
            nested.setdefault(task, {})[option_name] = value
        elif isinstance(value, dict):
            nested.setdefault(task, {}).update(value)
        elif ":" in key:  # bench eval's TASK:KEY form
            task, _, option_name = key.partition(":")
            raise TaskOptionError(f"a multi-task's option is written TASK.KEY: {task}.{option_name}={value!r}, "
                                  f"not {key}.")
        else:
            raise TaskOptionError(f"a multi-task's option {key!r} must name its task: write TASK.{key}={value!r}.")
    return nested


@dataclass(frozen=True)
class MultiTaskOptions(TaskOptions):
    """What a multi-task was built from; after construction, with every part's resolved options."""

    tasks: str = option("", help="the tasks and their weights, e.g. rotation:1+crappify:0.5")
    task_options: dict[str, dict[str, Any]] = option(
        help="options of each task, by task name", default_factory=dict, default_text="each task's defaults")


class MultiTask(PretextTask):
    """Several tasks trained together on one encoder (see the module docstring).

    Args:
        parts: The tasks, by name.
        weights: Loss weight of each task, by name.
        spec: The task string it was made from (what ``encoder.json`` records).
    """

    name = "multi-task"
    summary = "Several installed tasks at once: one encoder, one head per task, a weighted loss sum."
    Options = MultiTaskOptions

    def __init__(self, parts: dict[str, PretextTask], weights: dict[str, float], spec: str) -> None:
        resolved = {name: task.options.to_dict() for name, task in parts.items()}
        super().__init__(MultiTaskOptions(tasks=spec, task_options=resolved))
        self.name = spec  # type: ignore[misc]  # this instance's name: the combination
        self.parts = nn.ModuleDict(parts)
        self.weights = dict(weights)
        self.reconstructs = any(task.reconstructs for task in parts.values())  # type: ignore[misc]

    def make_batch(self, images: Tensor) -> PretextBatch:
        batches = {name: task.make_batch(images) for name, task in self.parts.items()}
        return PretextBatch(inputs=tuple(b.inputs for b in batches.values()), parts=batches)

    def build_head(self, encoder: nn.Module) -> nn.Module:
        return nn.ModuleDict({name: task.build_head(encoder) for name, task in self.parts.items()})

    def forward_model(self, encoder: nn.Module, head: nn.Module, inputs: Inputs, batch: PretextBatch) -> Any:
        assert isinstance(inputs, tuple) and isinstance(head, nn.ModuleDict)
        return {name: task.forward_model(encoder, head[name], part_inputs, batch.parts[name])
                for (name, task), part_inputs in zip(self.parts.items(), inputs, strict=True)}

    def loss(self, outputs: dict[str, Any], batch: PretextBatch) -> Tensor:
        return sum(self.weights[name] * self._part_loss(name, outputs, batch) for name in self.parts)

    def _part_loss(self, name: str, outputs: dict[str, Any], batch: PretextBatch) -> Tensor:
        return self.parts[name].loss(outputs[name], batch.parts[name])

    def metrics(self, outputs: dict[str, Any], batch: PretextBatch) -> dict[str, Tensor]:
        found: dict[str, Tensor] = {}
        for name, task in self.parts.items():
            found[f"{name}/loss"] = self._part_loss(name, outputs, batch).detach()
            part_metrics = task.metrics(outputs[name], batch.parts[name])
            found.update({f"{name}/{key}": value for key, value in part_metrics.items()})
        return found

    def preview(self, outputs: dict[str, Any], batch: PretextBatch) -> dict[str, Tensor] | None:
        for name, task in self.parts.items():  # the first task that shows pictures
            columns = task.preview(outputs[name], batch.parts[name])
            if columns:
                return {f"{name} {column}": image for column, image in columns.items()}
        return None


def create_multitask(spec: str, options: dict[str, Any], *, host: PluginHost | None = None) -> MultiTask:
    """Build a :class:`MultiTask` from ``"a:w+b:w"`` and options keyed by task name.

    Raises:
        UnknownTaskError: A part that is not installed.
        TaskOptionError: A bad spec, options for a task that is not a part, or
            a part's own option errors.
    """
    from selfsup_core.plugin.registry import create_task

    weights = parse_tasks(spec)
    per_task = nest_options(options)
    strangers = sorted(set(per_task) - set(weights))
    if strangers:
        raise TaskOptionError(f"task {spec!r}: options given for {', '.join(map(repr, strangers))}, "
                              f"which is not one of its tasks ({', '.join(weights)}).")
    parts = {name: create_task(name, host=host, **per_task.get(name, {})) for name in weights}
    return MultiTask(parts, weights, spec)
