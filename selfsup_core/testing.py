"""A contract test suite any task author can run against their task.

Use it from pytest by subclassing :class:`TaskContract`::

    from selfsup_core.testing import TaskContract

    class TestJigsaw(TaskContract):
        task_name = "jigsaw"          # looked up through the installed plugins
        task_options = {}             # options to build it with

or call :func:`check_task` directly, which raises ``AssertionError`` naming
the broken rule. Everything runs on tiny 32 x 32 images with the tiny encoder
on the CPU (and on CUDA too when present, see ``devices``).

Augmentations have their own suite, :class:`AugmentationContract` (set
``augmentation_name``) or :func:`check_augmentation`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import yaml
from torch import Tensor

from selfsup_core.augment.base import Augmentation, AugmentationOptions
from selfsup_core.models.encoders import TinyEncoder
from selfsup_core.models.normalization import Normalizer
from selfsup_core.plugin.registry import create_augmentation, create_task
from selfsup_core.tasks.base import PretextBatch, PretextTask, flat_inputs
from selfsup_core.training.step import optimiser_step, pretext_step

IMAGE_SIZE = 32
BATCH = 8


def _views(inputs: Any) -> tuple[Tensor, ...]:
    return tuple(flat_inputs(inputs))


def check_batch(task: PretextTask, images: Tensor) -> PretextBatch:
    """``make_batch`` returns float views on the images' device and leaves the images alone."""
    original = images.clone()
    batch = task.make_batch(images)
    assert isinstance(batch, PretextBatch), f"make_batch must return a PretextBatch, got {type(batch)}"
    assert torch.equal(images, original), "make_batch must not modify the images in place"
    for view in _views(batch.inputs):
        assert isinstance(view, Tensor), "inputs must be a tensor or a tuple of tensors"
        assert view.device == images.device, f"inputs on {view.device}, images on {images.device}"
        assert view.is_floating_point(), "inputs must be float images"
        assert view.shape[:2] == images.shape[:2], f"inputs shape {tuple(view.shape)}: need (B, 3, H, W)"
        assert torch.isfinite(view).all(), "inputs hold NaN or inf"
    if batch.targets is not None:
        assert batch.targets.device == images.device, "targets must be on the images' device"
        assert len(batch.targets) == len(images), "one target per image"
    for name, extra in batch.extras.items():
        assert extra.device == images.device, f"extras[{name!r}] must be on the images' device"
    return batch


def check_dtype(task: PretextTask, images: Tensor) -> None:
    """``make_batch`` keeps the images' float dtype: float32 in, float32 out.

    A task that returns float64 doubles the cost of every layer (or fails
    against float32 weights); one that returns half precision loses the
    detail its targets ask for. Mixed precision is the trainer's job
    (autocast, see :func:`check_autocast_step`), not the task's.
    """
    batch = task.make_batch(images)
    for view in _views(batch.inputs):
        assert view.dtype == images.dtype, (
            f"inputs are {view.dtype} for {images.dtype} images: make_batch must keep the images' dtype"
        )
    if batch.targets is not None and batch.targets.is_floating_point():
        assert batch.targets.dtype == images.dtype, (
            f"targets are {batch.targets.dtype} for {images.dtype} images: make_batch must keep the images' dtype"
        )


def check_reproducible(task: PretextTask, images: Tensor) -> None:
    """The same seed gives the same batch: inputs, targets and every extra.

    Every draw must use torch's seeded generators; a target or an extra drawn
    elsewhere would make a seeded run irreproducible even with equal inputs.
    """
    def draw() -> PretextBatch:
        torch.manual_seed(0)
        return task.make_batch(images)

    first, second = draw(), draw()
    message = "make_batch is not reproducible under torch.manual_seed"
    for a, b in zip(_views(first.inputs), _views(second.inputs), strict=True):
        assert torch.equal(a, b), f"{message}: inputs differ"
    if first.targets is None or second.targets is None:
        assert first.targets is second.targets, f"{message}: targets are None only once"
    else:
        assert torch.equal(first.targets, second.targets), f"{message}: targets differ"
    assert first.extras.keys() == second.extras.keys(), f"{message}: extras have different keys"
    for name, extra in first.extras.items():
        assert torch.equal(extra, second.extras[name]), f"{message}: extras[{name!r}] differ"


def check_training_step(task: PretextTask, images: Tensor) -> None:
    """Head, forward, loss and metrics fit together, and gradients reach the encoder.

    Two SGD steps are taken: a head whose output layer starts at zero (an
    identity-at-init residual decoder) passes no gradient back on the very
    first step, but must from the second on.
    """
    encoder = TinyEncoder().to(images.device)
    head = task.build_head(encoder).to(images.device)
    optimizer = torch.optim.SGD([*encoder.parameters(), *head.parameters()], lr=0.1)
    normalizer = Normalizer().to(images.device)
    for _ in range(2):
        result = pretext_step(task, encoder, head, images, normalizer)
        loss = result.loss
        assert isinstance(loss, Tensor) and loss.dim() == 0, "loss must be a scalar tensor"
        assert torch.isfinite(loss), f"loss is not finite: {loss}"
        optimiser_step(loss, optimizer)
    outputs, batch = result.outputs, result.batch
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters()), (
        "no gradient reaches the encoder: the encoder would not learn"
    )
    for name, value in task.metrics(outputs, batch).items():
        assert isinstance(value, Tensor) and value.numel() == 1, f"metric {name!r} must be a scalar tensor"
    preview = task.preview(outputs, batch)
    if preview is not None:
        for name, column in preview.items():
            assert column.shape[1:] == images.shape[1:], f"preview column {name!r} is not images-shaped"


def check_autocast_step(task: PretextTask, images: Tensor) -> None:
    """Under bfloat16 autocast (what the trainer uses on GPUs) the step gives a finite float loss.

    Catches tasks that break in reduced precision: float32-only constants
    that overflow, ops that reject mixed dtypes, losses that turn to NaN.
    """
    encoder = TinyEncoder().to(images.device)
    head = task.build_head(encoder).to(images.device)
    normalizer = Normalizer().to(images.device)
    try:
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            loss = pretext_step(task, encoder, head, images, normalizer).loss
    except RuntimeError as exc:  # a dtype clash deep in the task: name the rule it breaks
        raise AssertionError(f"the step fails under bfloat16 autocast: {exc}") from exc
    assert isinstance(loss, Tensor) and loss.dim() == 0, "under bfloat16 autocast the loss must be a scalar tensor"
    assert loss.is_floating_point(), f"under bfloat16 autocast the loss is {loss.dtype}, not a float"
    assert torch.isfinite(loss), f"under bfloat16 autocast the loss is not finite: {loss}"


def check_options_plain(task: PretextTask) -> None:
    """Options are declared (an ``Options`` dataclass) and resolve to plain values.

    A run saves ``task.options.to_dict()`` and the task must be rebuilt from
    it, so every value must be YAML-safe and give back the same options.
    """
    from dataclasses import is_dataclass

    from selfsup_core.tasks.options import TaskOptions

    declared = getattr(type(task), "Options", None)
    assert isinstance(declared, type) and issubclass(declared, TaskOptions) and is_dataclass(declared), (
        f"{type(task).__name__}.Options must be a TaskOptions dataclass, got {declared!r}"
    )
    assert isinstance(task.options, declared), (
        f"task.options must be a {declared.__name__}, got {type(task.options).__name__}: "
        "pass options on to super().__init__(options, **kwargs)"
    )
    saved = task.options.to_dict()
    try:
        text = yaml.safe_dump(saved)
    except yaml.YAMLError as exc:
        raise AssertionError(f"task options must be plain values (numbers, strings, lists): {exc}") from exc
    assert declared(**yaml.safe_load(text)) == task.options, (
        "task options do not survive a YAML round trip: the saved run would rebuild another task"
    )


def check_task(task: PretextTask, device: str | torch.device = "cpu") -> None:
    """Run every contract check on ``task``; raises ``AssertionError`` on the first failure."""
    task = task.to(device)
    images = torch.rand(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    check_batch(task, images)
    check_dtype(task, images)
    check_reproducible(task, images)
    check_training_step(task, images)
    check_autocast_step(task, images)
    check_options_plain(task)


def available_devices() -> list[str]:
    """``["cpu"]``, plus ``"cuda"`` when a GPU is present."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class TaskContract:
    """Subclass in a pytest module and set :attr:`task_name` to test a task."""

    task_name: ClassVar[str]
    task_options: ClassVar[dict[str, Any]] = {}
    devices: ClassVar[list[str]] = available_devices()

    def make_task(self) -> PretextTask:
        return create_task(self.task_name, **self.task_options)

    def _each_device(self, check: Any) -> None:
        for device in self.devices:
            task = self.make_task().to(device)
            check(task, torch.rand(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, device=device))

    def test_batch(self) -> None:
        self._each_device(check_batch)

    def test_dtype(self) -> None:
        self._each_device(check_dtype)

    def test_reproducible(self) -> None:
        self._each_device(check_reproducible)

    def test_training_step(self) -> None:
        self._each_device(check_training_step)

    def test_autocast_step(self) -> None:
        self._each_device(check_autocast_step)

    def test_options_plain(self) -> None:
        check_options_plain(self.make_task())


# -- augmentations -------------------------------------------------------------------------


def _augment(augmentation: Augmentation, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    result = augmentation(images)
    assert isinstance(result, tuple) and len(result) == 2, (
        f"calling an augmentation must return (images, params), got {type(result).__name__}"
    )
    return result


def check_augmentation_output(augmentation: Augmentation, images: Tensor) -> None:
    """Images out on the images' device, the same shape and float dtype, finite; the input left alone."""
    original = images.clone()
    out, _ = _augment(augmentation, images)
    assert torch.equal(images, original), "the augmentation must not modify the images in place"
    assert isinstance(out, Tensor), f"the augmented images must be a tensor, got {type(out).__name__}"
    assert out.device == images.device, f"images out on {out.device}, images in on {images.device}"
    assert out.shape == images.shape, f"images out {tuple(out.shape)}, images in {tuple(images.shape)}"
    assert out.dtype == images.dtype, f"images out are {out.dtype} for {images.dtype} images: keep the dtype"
    assert torch.isfinite(out).all(), "the augmented images hold NaN or inf"


def check_augmentation_params(augmentation: Augmentation, images: Tensor) -> None:
    """Params: a dict of tensors on the images' device, each with one row per image (drawn batch-wise)."""
    _, params = _augment(augmentation, images)
    assert isinstance(params, dict), f"params must be a dict of tensors, got {type(params).__name__}"
    for name, value in params.items():
        assert isinstance(name, str), f"param names must be strings, got {name!r}"
        assert isinstance(value, Tensor), f"params[{name!r}] must be a tensor, got {type(value).__name__}"
        assert value.device == images.device, f"params[{name!r}] is on {value.device}, images on {images.device}"
        assert value.dim() >= 1 and len(value) == len(images), (
            f"params[{name!r}] has shape {tuple(value.shape)}: its first dimension must be the batch "
            f"({len(images)}), one draw per image"
        )


def check_augmentation_reproducible(augmentation: Augmentation, images: Tensor) -> None:
    """The same seed gives the same images and the same params: every draw uses torch's seeded generators."""
    def draw() -> tuple[Tensor, dict[str, Tensor]]:
        torch.manual_seed(0)
        return _augment(augmentation, images)

    (first, first_params), (second, second_params) = draw(), draw()
    message = "the augmentation is not reproducible under torch.manual_seed"
    assert torch.equal(first, second), f"{message}: images differ"
    assert first_params.keys() == second_params.keys(), f"{message}: params have different keys"
    for name, value in first_params.items():
        assert torch.equal(value, second_params[name]), f"{message}: params[{name!r}] differ"


def check_augmentation_replay(augmentation: Augmentation, images: Tensor) -> None:
    """``apply(images, params)`` with the returned params gives exactly the returned images.

    Everything random belongs in ``sample``: a view pipeline, a task or a test
    replays an augmentation from its params.
    """
    torch.manual_seed(1)
    out, params = _augment(augmentation, images)
    replayed = augmentation.apply(images, params)
    assert torch.equal(replayed, out), "apply(images, params) does not replay the augmentation: draw in sample()"


def check_augmentation_dtype(augmentation: Augmentation, images: Tensor) -> None:
    """float64 images stay float64 (float32 is checked with the output)."""
    check_augmentation_output(augmentation, images.double())


def check_augmentation_autocast(augmentation: Augmentation, images: Tensor) -> None:
    """Inside a bfloat16 autocast region (the trainer's on GPUs) it still works and keeps the images' dtype."""
    try:
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            out, _ = _augment(augmentation, images)
    except RuntimeError as exc:  # a dtype clash: name the rule it breaks
        raise AssertionError(f"the augmentation fails under bfloat16 autocast: {exc}") from exc
    assert out.dtype == images.dtype, f"under bfloat16 autocast, images out are {out.dtype} for {images.dtype}"


def check_augmentation_options_plain(augmentation: Augmentation) -> None:
    """Options are an ``AugmentationOptions`` dataclass that survives a YAML round trip."""
    from dataclasses import is_dataclass

    declared = getattr(type(augmentation), "Options", None)
    assert isinstance(declared, type) and issubclass(declared, AugmentationOptions) and is_dataclass(declared), (
        f"{type(augmentation).__name__}.Options must be an AugmentationOptions dataclass, got {declared!r}"
    )
    assert isinstance(augmentation.options, declared), (
        f"augmentation.options must be a {declared.__name__}, got {type(augmentation.options).__name__}: "
        "pass options on to super().__init__(options, **kwargs)"
    )
    try:
        text = yaml.safe_dump(augmentation.options.to_dict())
    except yaml.YAMLError as exc:
        raise AssertionError(f"augmentation options must be plain values: {exc}") from exc
    assert declared(**yaml.safe_load(text)) == augmentation.options, "augmentation options do not survive YAML"


AUGMENTATION_CHECKS = (check_augmentation_output, check_augmentation_params, check_augmentation_reproducible,
                       check_augmentation_replay, check_augmentation_dtype, check_augmentation_autocast)


def check_augmentation(augmentation: Augmentation, device: str | torch.device = "cpu") -> None:
    """Run every augmentation contract check; raises ``AssertionError`` on the first failure.

    Example:
        >>> check_augmentation(create_augmentation("crop_flip"))  # doctest: +SKIP
    """
    augmentation = augmentation.to(device)
    images = torch.rand(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    for check in AUGMENTATION_CHECKS:
        check(augmentation, images)
    check_augmentation_options_plain(augmentation)


class AugmentationContract:
    """Subclass in a pytest module and set :attr:`augmentation_name` to test an augmentation."""

    augmentation_name: ClassVar[str]
    augmentation_options: ClassVar[dict[str, Any]] = {}
    devices: ClassVar[list[str]] = available_devices()

    def make_augmentation(self) -> Augmentation:
        return create_augmentation(self.augmentation_name, **self.augmentation_options)

    def _each_device(self, check: Any) -> None:
        for device in self.devices:
            check(self.make_augmentation().to(device), torch.rand(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, device=device))

    def test_output(self) -> None:
        self._each_device(check_augmentation_output)

    def test_params(self) -> None:
        self._each_device(check_augmentation_params)

    def test_reproducible(self) -> None:
        self._each_device(check_augmentation_reproducible)

    def test_replay(self) -> None:
        self._each_device(check_augmentation_replay)

    def test_dtype(self) -> None:
        self._each_device(check_augmentation_dtype)

    def test_autocast(self) -> None:
        self._each_device(check_augmentation_autocast)

    def test_options_plain(self) -> None:
        check_augmentation_options_plain(self.make_augmentation())
