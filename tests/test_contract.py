"""The reusable contract suite, run over every installed task."""

from __future__ import annotations

import pytest
import torch

from selfsup_core import PretextBatch, PretextTask, list_tasks
from selfsup_core.plugin.registry import create_task
from selfsup_core.testing import TaskContract, check_task


@pytest.mark.parametrize("name", list_tasks())
def test_installed_task_meets_contract(name: str) -> None:
    check_task(create_task(name))


class TestRotationContract(TaskContract):
    task_name = "rotation"
    task_options = {"num_transforms": 6}


class _InPlace(PretextTask):
    def make_batch(self, images: torch.Tensor) -> PretextBatch:
        images.mul_(0.5)
        return PretextBatch(inputs=images, targets=torch.zeros(len(images), dtype=torch.long))


class _Unseeded(_InPlace):
    def make_batch(self, images: torch.Tensor) -> PretextBatch:
        gen = torch.Generator().manual_seed(int.from_bytes(__import__("os").urandom(4), "little"))
        return PretextBatch(inputs=images + torch.rand(images.shape, generator=gen), targets=None)


def test_contract_catches_in_place_changes() -> None:
    with pytest.raises(AssertionError, match="in place"):
        check_task(_InPlace())


def test_contract_catches_unseeded_randomness() -> None:
    with pytest.raises(AssertionError, match="reproducible"):
        check_task(_Unseeded())


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
