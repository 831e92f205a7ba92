"""The :class:`PretextTask` base class: what a task plugin implements.

A task turns a batch of unlabelled images, already on the training device,
into what the network sees and what it is trained to produce. It also builds
the part of the network that sits on top of the shared encoder (a classifier
head, a decoder, a projection head) and defines the loss.

The same contract covers the three families of tasks:

* classification pretexts (rotation): ``inputs`` is a tensor, ``targets``
  holds class indices, the head is a linear layer on pooled features;
* reconstruction pretexts (cutout, crappify): ``targets`` is the clean image,
  the head is a decoder fed with the encoder's stages (override
  :meth:`PretextTask.forward_model`);
* contrastive pretexts (SimCLR): ``inputs`` is a tuple of two views,
  ``targets`` is ``None``, :meth:`PretextTask.loss` compares the two outputs.

Example:
    A complete task that predicts whether an image was flipped upside down::

        class VFlipTask(PretextTask):
            def make_batch(self, images):
                flipped = torch.rand(len(images), device=images.device) < 0.5
                inputs = torch.where(flipped[:, None, None, None], images.flip(-2), images)
                return PretextBatch(inputs=inputs, targets=flipped.long())

            def build_head(self, encoder):
                return torch.nn.Linear(encoder.feature_dim, 2)

            def loss(self, outputs, batch):
                return torch.nn.functional.cross_entropy(outputs, batch.targets)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from selfsup_core.tasks.distributed import gather_with_grad
from selfsup_core.tasks.distributed import rank as process_rank
from selfsup_core.tasks.metrics import accuracy
from selfsup_core.tasks.options import TaskOptions

Inputs = Tensor | tuple[Any, ...]
"""One batch of network inputs, or a tuple of them: several views of the same
images, or (multi-task) each task's inputs, which may be tuples themselves."""


@dataclass
class PretextBatch:
    """What a task makes from a batch of images.

    Attributes:
        inputs: What the network sees, in ``[0, 1]`` before normalisation
            (the trainer normalises it). A tuple for multi-view tasks.
        targets: Class indices or clean images; ``None`` for tasks whose loss
            needs no targets (contrastive learning).
        extras: Anything else the loss or metrics need, drawn together with
            the inputs (for example the erased mask), so nothing is re-derived.
        parts: The batches of the tasks a multi-task batch is made of, by task
            name (empty for a single task).
    """

    inputs: Inputs
    targets: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    parts: dict[str, PretextBatch] = field(default_factory=dict)


def map_inputs(inputs: Inputs, fn: Any) -> Inputs:
    """Apply ``fn`` to a tensor, or to every tensor of a (nested) tuple of them."""
    if isinstance(inputs, tuple):
        return tuple(map_inputs(view, fn) for view in inputs)
    return fn(inputs)


def flat_inputs(inputs: Inputs) -> list[Tensor]:
    """Every tensor of ``inputs``, nested tuples flattened, in order."""
    if isinstance(inputs, tuple):
        return [tensor for view in inputs for tensor in flat_inputs(view)]
    return [inputs]


class PretextTask(nn.Module):
    """Base class of every pretext task.

    A task is an ``nn.Module`` so that constant tensors it needs (quantisation
    tables, glyph masks) move to the device with the model; register them
    with ``persistent=False`` so they stay out of checkpoints. It holds no
    trainable parameters: those belong to the head it builds.

    Options are declared once, in a frozen dataclass named by the class
    attribute ``Options`` (a :class:`~selfsup_core.tasks.options.TaskOptions`
    subclass listing each option with :func:`~selfsup_core.options.option`).
    The task is built with those options as keyword arguments (or one options
    object), checked on construction, and reads them from ``self.options``.
    Its ``__init__``, if it has one, only builds derived state (buffers,
    tables) from ``self.options``. ``self.options.to_dict()``, defaults
    included, is what a run saves.

    Args:
        options: A ready options object (an instance of ``type(self).Options``);
            ``**kwargs`` then override some of its values.
        **kwargs: Option values; the ones not given take their declared default.

    Raises:
        TaskOptionError: An option the task does not declare, or a value its
            declaration rejects (also a :class:`ValueError`).

    Attributes:
        name: The task's registered name (set by the plugin).
        summary: One line shown by ``selfsup tasks``.
        reconstructs: True when the targets are images; the trainer then
            writes preview grids and the benchmarks time a U-Net.
        Options: The options dataclass (no options by default).
        options: This task's resolved options, an instance of ``Options``.
    """

    name: ClassVar[str] = "unnamed"
    summary: ClassVar[str] = ""
    reconstructs: ClassVar[bool] = False
    Options: ClassVar[type[TaskOptions]] = TaskOptions

    options: TaskOptions

    def __init__(self, options: TaskOptions | None = None, **kwargs: Any) -> None:
        """Build the task with ``options`` and/or option values (see the class docstring).

        ``type(self).Options.describe()`` lists the options with their types,
        defaults and meanings, as ``selfsup tasks --options NAME`` prints them.
        """
        super().__init__()
        declared, what = type(self).Options, f"task {self.name!r}"
        if options is None:
            options = declared.parse(kwargs, what=what)
        elif not isinstance(options, declared):
            raise TypeError(f"{what} takes {declared.__name__} options, got {type(options).__name__}")
        elif kwargs:
            current = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
            options = declared.parse({**current, **kwargs}, what=what)
        self.options = options

    # -- what every task implements -------------------------------------------------

    def make_batch(self, images: Tensor) -> PretextBatch:
        """Make training inputs and targets from clean images.

        Args:
            images: ``(B, 3, H, W)`` float images in ``[0, 1]`` on the
                training device. Every random draw must happen batch-wise on
                that device (``torch.rand(..., device=images.device)``); the
                trainer seeds the global generators.

        Returns:
            The :class:`PretextBatch` to train on.
        """
        raise NotImplementedError

    def build_head(self, encoder: nn.Module) -> nn.Module:
        """Build the trainable part that sits on ``encoder``.

        Args:
            encoder: A module following :class:`selfsup_core.encoders.Encoder`:
                ``encoder(x)`` gives pooled ``(B, encoder.feature_dim)``
                features and ``encoder.forward_stages(x)`` the feature map of
                every stage (channels in ``encoder.stage_channels``).
        """
        raise NotImplementedError

    def loss(self, outputs: Any, batch: PretextBatch) -> Tensor:
        """The scalar training loss of ``outputs`` (from :meth:`forward_model`)."""
        raise NotImplementedError

    # -- optional ------------------------------------------------------------------

    @staticmethod
    def gather(tensor: Tensor) -> Tensor:
        """``tensor`` from every process, concatenated along dim 0, with gradients.

        Contrastive losses use it so that negatives come from the whole global
        batch under multi-process training; in one process it returns
        ``tensor`` itself. See :func:`~selfsup_core.tasks.distributed.gather_with_grad`.
        """
        return gather_with_grad(tensor)

    @staticmethod
    def rank() -> int:
        """This process's index among the training processes (0 in one process):
        where its share of the batch sits in what :meth:`gather` returns."""
        return process_rank()

    def forward_model(self, encoder: nn.Module, head: nn.Module, inputs: Inputs, batch: PretextBatch) -> Any:
        """Run the network on normalised ``inputs``.

        The default feeds pooled features to the head, once per view for
        multi-view inputs. Reconstruction tasks override it to feed the
        encoder's stages to a decoder.

        Args:
            encoder: The shared encoder.
            head: What :meth:`build_head` built.
            inputs: ``batch.inputs`` normalised for the encoder.
            batch: The batch itself, for tasks that need the un-normalised
                images (``batch.inputs``, in ``[0, 1]``) or the extras.
        """
        return map_inputs(inputs, lambda x: head(encoder(x)))

    def metrics(self, outputs: Any, batch: PretextBatch) -> dict[str, Tensor]:
        """Scalar metrics to log beside the loss (for example accuracy, PSNR)."""
        return {}

    def preview(self, outputs: Any, batch: PretextBatch) -> dict[str, Tensor] | None:
        """Named image columns (each ``(B, 3, H, W)`` in ``[0, 1]``) to save as a grid.

        Reconstruction tasks return for example ``{"input": ..., "restored": ...,
        "original": ...}``; the default (no preview) suits classification.
        """
        return None


def mlp_head(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """Linear, BatchNorm, ReLU, Linear: the head of SimCLR's projection.

    Between the encoder and the pretext's own output it takes up what only the
    pretext needs, so the encoder's pooled features stay more general.

    Example:
        >>> mlp_head(512, 256, 4)(torch.zeros(2, 512)).shape
        torch.Size([2, 4])
    """
    return nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_features))


class ClassificationTask(PretextTask):
    """A pretext task whose targets are class indices (rotation, jigsaw...).

    Subclasses provide ``num_classes`` (usually a property reading
    ``self.options``) and implement :meth:`make_batch`; the linear head,
    cross-entropy loss and accuracy metric come from here.
    """

    num_classes: int

    def build_head(self, encoder: nn.Module) -> nn.Module:
        return nn.Linear(encoder.feature_dim, self.num_classes)

    def loss(self, outputs: Tensor, batch: PretextBatch) -> Tensor:
        return nn.functional.cross_entropy(outputs, batch.targets)

    def metrics(self, outputs: Tensor, batch: PretextBatch) -> dict[str, Tensor]:
        return {"acc": accuracy(outputs, batch.targets)}
