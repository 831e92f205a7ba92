"""The contract fits a SimCLR-style task (two views, a loss without targets) unchanged."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup_core import Normalizer, PretextBatch, PretextTask, TaskOptions
from selfsup_core.models.encoders import TinyEncoder
from selfsup_core.options import option, positive
from selfsup_core.testing import check_task
from selfsup_core.training.step import optimiser_step, pretext_step


@dataclass(frozen=True)
class TwoViewOptions(TaskOptions):
    temperature: float = option(0.5, help="NT-Xent temperature", check=positive)


class TwoViewTask(PretextTask):
    """A minimal SimCLR: two random crops+flips per image, NT-Xent loss."""

    Options = TwoViewOptions

    def _view(self, images: Tensor) -> Tensor:
        b, _, h, w = images.shape
        flip = torch.rand(b, device=images.device) < 0.5
        shift = torch.randint(-4, 5, (2,), device=images.device)
        view = torch.roll(images, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
        return torch.where(flip[:, None, None, None], view.flip(-1), view)

    def make_batch(self, images: Tensor) -> PretextBatch:
        return PretextBatch(inputs=(self._view(images), self._view(images)), targets=None)

    def build_head(self, encoder: nn.Module) -> nn.Module:
        return nn.Sequential(nn.Linear(encoder.feature_dim, 32), nn.ReLU(), nn.Linear(32, 16))

    def loss(self, outputs: tuple[Tensor, Tensor], batch: PretextBatch) -> Tensor:
        z = F.normalize(torch.cat(outputs), dim=1)
        n = len(outputs[0])
        similarity = z @ z.T / self.options.temperature
        similarity.fill_diagonal_(float("-inf"))
        positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        return F.cross_entropy(similarity, positives)


def test_two_view_task_meets_contract() -> None:
    check_task(TwoViewTask())


def test_two_view_task_trains() -> None:
    torch.manual_seed(0)
    task, encoder = TwoViewTask(), TinyEncoder()
    head = task.build_head(encoder)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=3e-3)
    images = torch.rand(16, 3, 32, 32)
    losses = []
    for _ in range(30):
        result = pretext_step(task, encoder, head, images, Normalizer())
        assert result.batch.targets is None and len(result.batch.inputs) == 2
        loss = result.loss
        optimiser_step(loss, optimizer)
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
