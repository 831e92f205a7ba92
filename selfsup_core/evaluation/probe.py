"""A linear classifier trained on cached, frozen features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PROBE_STEPS = 300


class LinearProbe(nn.Module):
    """Standardise features with the train statistics, then one linear layer."""

    def __init__(self, mean: Tensor, std: Tensor, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(len(mean), num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear((features - self.mean) / self.std)


def train_linear_probe(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    steps: int = PROBE_STEPS,
    lr: float = 0.01,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> LinearProbe:
    """Fit a linear classifier on cached features, full-batch AdamW with cosine decay.

    Full batch because the features fit in memory and it makes the result
    depend on the seed only through the initialisation.

    Example:
        >>> x = torch.cat([torch.randn(20, 4) + 5, torch.randn(20, 4) - 5])
        >>> y = torch.tensor([0] * 20 + [1] * 20)
        >>> probe = train_linear_probe(x, y, 2, steps=50)
        >>> (probe(x).argmax(1) == y).float().mean().item()
        1.0
    """
    features = features.float()
    generator = torch.Generator().manual_seed(seed)
    probe = LinearProbe(features.mean(0), features.std(0).clamp_min(1e-6), num_classes)
    with torch.no_grad():
        probe.linear.weight.copy_(torch.randn(probe.linear.weight.shape, generator=generator) * 0.01)
        probe.linear.bias.zero_()
    optimizer = torch.optim.AdamW(probe.linear.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(probe(features), labels).backward()
        optimizer.step()
        schedule.step()
    return probe.eval()
