"""The one pretext training step, shared by the trainer, the benchmarks and the contract suite.

A step has two halves, kept apart so that benchmarks can time them apart:

1. :func:`prepare_batch`: the task turns images in ``[0, 1]`` into a
   :class:`~selfsup_core.tasks.base.PretextBatch`, and the normaliser maps its
   inputs to what the encoder expects;
2. :func:`forward_loss`: the task runs encoder and head, then its loss and
   metrics.

:func:`pretext_step` is both. The optimiser step is the caller's (Lightning's
in the trainer).

Example:
    >>> from selfsup_core import create_task
    >>> from selfsup_core.models.encoders import build_encoder
    >>> from selfsup_core.models.normalization import Normalizer
    >>> task, encoder = create_task("rotation"), build_encoder("tiny")
    >>> result = pretext_step(task, encoder, task.build_head(encoder), torch.rand(4, 3, 32, 32), Normalizer())
    >>> result.loss.dim()
    0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from selfsup_core.models.normalization import Normalizer
from selfsup_core.tasks.base import Inputs, PretextBatch, PretextTask, map_inputs
from selfsup_core.threads import one_cpu_thread


@dataclass
class StepResult:
    """What one step computed.

    Attributes:
        loss: The scalar loss to back-propagate.
        outputs: What ``task.forward_model`` returned.
        batch: The task's batch (inputs in ``[0, 1]``, targets, extras).
        metrics: The task's scalar metrics.
    """

    loss: Tensor
    outputs: Any
    batch: PretextBatch
    metrics: dict[str, Tensor]


def prepare_batch(task: PretextTask, images: Tensor, normalizer: Normalizer) -> tuple[PretextBatch, Inputs]:
    """The task's batch from float images in ``[0, 1]``, and its normalised network inputs."""
    # A string of short ops: on a CPU one thread does them faster than two
    # that wait on each other (see selfsup_core.threads).
    with one_cpu_thread(images.device):
        batch = task.make_batch(images)
        inputs = map_inputs(batch.inputs, normalizer.normalize)
    return batch, inputs


def forward_loss(task: PretextTask, encoder: nn.Module, head: nn.Module, batch: PretextBatch,
                 inputs: Inputs) -> StepResult:
    """Run the network on ``inputs`` and score it against ``batch``."""
    outputs = task.forward_model(encoder, head, inputs, batch)
    loss = task.loss(outputs, batch)
    return StepResult(loss, outputs, batch, task.metrics(outputs, batch))


def pretext_step(task: PretextTask, encoder: nn.Module, head: nn.Module, images: Tensor,
                 normalizer: Normalizer) -> StepResult:
    """:func:`prepare_batch` then :func:`forward_loss`: everything up to ``loss.backward()``."""
    batch, inputs = prepare_batch(task, images, normalizer)
    return forward_loss(task, encoder, head, batch, inputs)


def optimiser_step(loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
    """Back-propagate ``loss`` and update: what Lightning does after a training step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
