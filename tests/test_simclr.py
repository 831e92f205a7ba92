"""The simclr task: NT-Xent across processes, views, training and export."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision
from selfsup_simclr import SimCLRTask, nt_xent

from selfsup_core import PretextTask, create_task
from selfsup_core.cli import main
from selfsup_core.testing import check_task

WORLD = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _shards(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(WORLD * 4, 16, generator=generator), torch.randn(WORLD * 4, 16, generator=generator)


def _rank_loss(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        z1, z2 = (z.chunk(WORLD)[rank].clone().requires_grad_(True) for z in _shards())
        loss = nt_xent(z1, z2, 0.5, gather=PretextTask.gather, rank=PretextTask.rank())
        loss.backward()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        torch.save({"loss": mean / WORLD, "grad1": z1.grad, "grad2": z2.grad}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_nt_xent_over_two_processes_equals_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    mp.spawn(_rank_loss, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    z1, z2 = (z.clone().requires_grad_(True) for z in _shards())
    whole = nt_xent(z1, z2, 0.5)
    whole.backward()
    for rank in range(WORLD):
        saved = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.allclose(saved["loss"], whole.detach(), atol=1e-6)
        # Gradients flow back through the gather from every process's loss; DDP
        # then averages over processes, which gives the whole-batch gradient.
        rows = slice(rank * 4, rank * 4 + 4)
        assert torch.allclose(saved["grad1"] / WORLD, z1.grad[rows], atol=1e-6)
        assert torch.allclose(saved["grad2"] / WORLD, z2.grad[rows], atol=1e-6)


def test_gather_is_a_no_op_in_one_process() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    assert PretextTask.gather(x) is x and PretextTask.rank() == 0


def test_nt_xent_prefers_matching_views() -> None:
    z = torch.randn(8, 16)
    assert float(nt_xent(z, z + 0.01 * torch.randn(8, 16), 0.2)) < float(nt_xent(z, torch.randn(8, 16), 0.2))


def test_simclr_meets_the_contract() -> None:
    check_task(create_task("simclr"))


def test_both_views_share_one_encoder_pass() -> None:
    task = SimCLRTask()
    calls = []

    class Counting(torch.nn.Module):
        feature_dim = 4

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(len(x))
            return x.mean(dim=(2, 3)).repeat(1, 2)[:, :4]

    encoder = Counting()
    batch = task.make_batch(torch.rand(6, 3, 32, 32))
    first, second = task.forward_model(encoder, task.build_head(encoder), batch.inputs, batch)
    assert calls == [12] and first.shape == second.shape == (6, task.options.projection_dim)


def test_pretrain_simclr_exports_a_torchvision_encoder_and_fine_tunes(tmp_path: Path) -> None:
    common = ["--image-size", "32", "--batch-size", "16", "--limit", "64", "--max-epochs", "1", "--no-progress",
              "--no-keep-checkpoint"]  # a ResNet-18 checkpoint is 0.14 GB: no test disk needs two
    assert main(["pretrain", "--task", "simclr", "--arch", "resnet18", *common, "--out", str(tmp_path / "pre")]) == 0
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    model.load_state_dict(safetensors.torch.load_file(tmp_path / "pre" / "encoder.safetensors"), strict=True)
    assert main(["finetune", "--encoder", str(tmp_path / "pre" / "encoder.safetensors"), *common,
                 "--out", str(tmp_path / "fine")]) == 0


@pytest.mark.parametrize("bad", [{"temperature": 0}, {"augmentations": ["no_such_augmentation"]}])
def test_bad_simclr_options_are_clear(bad: dict) -> None:
    with pytest.raises(Exception, match="temperature|no_such_augmentation"):
        create_task("simclr", **bad)
