"""The reusable contract suite: every installed task meets it, and each check catches what it is for."""

from __future__ import annotations

import os

import pytest
import torch

from selfsup_core import ClassificationTask, PretextBatch, PretextTask, list_tasks
from selfsup_core.plugin.registry import create_task
from selfsup_core.testing import (
    BATCH,
    IMAGE_SIZE,
    TaskContract,
    check_autocast_step,
    check_batch,
    check_dtype,
    check_reproducible,
    check_task,
    check_training_step,
)

# Fixed, not list_tasks(): a registry that came up empty at collection time
# would silently give zero tests. jigsaw is the example plugin the test
# command installs (tests/test_example_plugin.py fails without it).
EXPECTED_TASKS = ("rotation", "cutout", "crappify", "jigsaw")


@pytest.mark.parametrize("name", EXPECTED_TASKS)
def test_expected_task_meets_contract(name: str) -> None:
    check_task(create_task(name))


def test_every_other_installed_task_meets_contract() -> None:
    """Tasks beyond the expected ones (another installed plugin) are checked too."""
    installed = list_tasks()
    assert set(EXPECTED_TASKS) <= set(installed), f"expected tasks missing: {set(EXPECTED_TASKS) - set(installed)}"
    for name in sorted(set(installed) - set(EXPECTED_TASKS)):
        try:
            check_task(create_task(name))
        except AssertionError as exc:
            raise AssertionError(f"installed task {name!r}: {exc}") from exc


class TestRotationContract(TaskContract):
    task_name = "rotation"
    task_options = {"num_transforms": 6}


def images() -> torch.Tensor:
    return torch.rand(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)


def unseeded(shape: tuple[int, ...]) -> torch.Tensor:
    """Noise from a generator the trainer's seed does not reach."""
    generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    return torch.rand(shape, generator=generator)


class _Classify(ClassificationTask):
    """A well-behaved 2-class task; the broken ones below change one thing each."""

    num_classes = 2

    def make_batch(self, images: torch.Tensor) -> PretextBatch:
        return PretextBatch(inputs=images.clone(), targets=torch.randint(2, (len(images),)))


class _InPlace(PretextTask):
    def make_batch(self, images: torch.Tensor) -> PretextBatch:
        images.mul_(0.5)
        return PretextBatch(inputs=images, targets=torch.zeros(len(images), dtype=torch.long))


class _Unseeded(_InPlace):
    def make_batch(self, images: torch.Tensor) -> PretextBatch:
        return PretextBatch(inputs=images + unseeded(images.shape), targets=None)


class _UnseededTargets(_Classify):
    """Targets that ignore the seed: each call flips them (random 2-class targets for 8 images
    would repeat once in 256 pairs of calls, and the test would flake)."""

    calls = 0

    def make_batch(self, images: torch.Tensor) -> PretextBatch:
        type(self).calls += 1
        return PretextBatch(inputs=images.clone(), targets=torch.full((len(images),), self.calls % 2))


class _UnseededExtras(_Classify):
    def make_batch(self, images: torch.Tensor) -> PretextBatch:
        batch = super().make_batch(images)
        batch.extras["mask"] = unseeded((len(images), 1, IMAGE_SIZE, IMAGE_SIZE)) < 0.5
        return batch


class _Float64Inputs(_Classify):
    def make_batch(self, images: torch.Tensor) -> PretextBatch:
        return PretextBatch(inputs=images.double(), targets=torch.randint(2, (len(images),)))


class _HalfInputs(_Classify):
    def make_batch(self, images: torch.Tensor) -> PretextBatch:
        return PretextBatch(inputs=images.half(), targets=torch.randint(2, (len(images),)))


class _Float64Targets(_Classify):
    def make_batch(self, images: torch.Tensor) -> PretextBatch:
        return PretextBatch(inputs=images.clone(), targets=images.double())


class _Float32Sentinel(_Classify):
    """Masks logits with float32's lowest value, which bfloat16 cannot hold (a common mixed-precision bug)."""

    def loss(self, outputs: torch.Tensor, batch: PretextBatch) -> torch.Tensor:
        masked = outputs.masked_fill(torch.ones_like(outputs, dtype=torch.bool), -3.4e38)
        return super().loss(outputs, batch) + super().loss(masked, batch)


def test_contract_catches_in_place_changes() -> None:
    with pytest.raises(AssertionError, match="in place"):
        check_task(_InPlace())


def test_contract_catches_unseeded_randomness() -> None:
    with pytest.raises(AssertionError, match="reproducible"):
        check_task(_Unseeded())


@pytest.mark.parametrize(("task", "what"), [(_UnseededTargets(), "targets"), (_UnseededExtras(), r"extras\['mask'\]")])
def test_reproducibility_covers_targets_and_extras(task: PretextTask, what: str) -> None:
    with pytest.raises(AssertionError, match=f"not reproducible.*{what} differ"):
        check_reproducible(task, images())
    with pytest.raises(AssertionError, match="reproducible"):
        check_task(task)


@pytest.mark.parametrize(("task", "message"), [
    (_Float64Inputs(), "inputs are torch.float64 for torch.float32 images"),
    (_HalfInputs(), "inputs are torch.float16 for torch.float32 images"),
    (_Float64Targets(), "targets are torch.float64 for torch.float32 images"),
])
def test_contract_catches_a_changed_dtype(task: PretextTask, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_dtype(task, images())
    with pytest.raises(AssertionError, match="keep the images' dtype"):
        check_task(task)


def test_contract_catches_a_step_that_breaks_under_autocast() -> None:
    task = _Float32Sentinel()
    check_reproducible(task, images())  # fine in float32...
    with pytest.raises(AssertionError, match="bfloat16 autocast"):  # ...not in bfloat16
        check_autocast_step(task, images())
    with pytest.raises(AssertionError, match="bfloat16 autocast"):
        check_task(task)


def test_a_well_behaved_task_passes() -> None:
    """So the failures above come from the one thing each task breaks."""
    task = _Classify()
    for check in (check_batch, check_dtype, check_reproducible, check_training_step, check_autocast_step):
        check(task, images())


class _IgnoresEncoder(PretextTask):
    def make_batch(self, images: torch.Tensor) -> PretextBatch:
        return PretextBatch(inputs=images, targets=torch.zeros(len(images), dtype=torch.long))

    def build_head(self, encoder: torch.nn.Module) -> torch.nn.Module:
        return torch.nn.Linear(3, 2)

    def forward_model(self, encoder, head, inputs, batch):  # noqa: ANN001, ANN201
        return head(inputs.mean(dim=(2, 3)))

    def loss(self, outputs: torch.Tensor, batch: PretextBatch) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(outputs, batch.targets)


def test_contract_catches_a_detached_encoder() -> None:
    with pytest.raises(AssertionError, match="no gradient reaches the encoder"):
        check_task(_IgnoresEncoder())
