"""Checks that only a GPU can make; skipped cleanly without one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_contract import EXPECTED_TASKS

from selfsup_core import create_task, list_tasks
from selfsup_core.testing import check_task

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("name", EXPECTED_TASKS)  # fixed: see test_contract.py
def test_task_batches_stay_on_the_gpu(name: str) -> None:
    check_task(create_task(name), device="cuda")


def test_other_installed_tasks_stay_on_the_gpu() -> None:
    for name in sorted(set(list_tasks()) - set(EXPECTED_TASKS)):
        check_task(create_task(name), device="cuda")


def test_pretrain_on_gpu_with_bf16(tmp_path: Path) -> None:
    from selfsup_core.training.pretraining import pretrain

    result = pretrain(task="rotation", arch="resnet18", limit=256, max_epochs=1, out=str(tmp_path / "run"),
                      precision="bf16-mixed", progress=False)
    assert result.encoder_path.is_file()


def test_resident_batches_are_sampled_on_the_gpu() -> None:
    from types import SimpleNamespace

    from selfsup_core.data.datamodule import ImageDataModule
    from selfsup_core.data.decoded import DecodedImages

    data = DecodedImages(torch.zeros(32, 3, 8, 8, dtype=torch.uint8), torch.arange(32))
    module = ImageDataModule(data, batch_size=8, on_device=True)
    module.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    images, labels = next(iter(module.train_dataloader()))
    assert images.is_cuda and labels.is_cuda
