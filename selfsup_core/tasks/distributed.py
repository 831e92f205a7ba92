"""What a task needs to know about other processes: gathering with gradients, and its rank.

Under multi-process training (Lightning's DDP) each process sees its own
shard of the global batch. A contrastive loss wants its negatives from the
whole global batch, and its gradients to flow back through them: plain
``torch.distributed.all_gather`` returns tensors without gradients, so this
uses a differentiable gather of its own.
In one process every function here is a no-op.

Example:
    >>> gather_with_grad(torch.ones(4, 8)).shape  # one process: unchanged
    torch.Size([4, 8])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """How many processes train together (1 without a process group)."""
    return dist.get_world_size() if _distributed() else 1


def rank() -> int:
    """This process's index among them (0 without a process group)."""
    return dist.get_rank() if _distributed() else 0


def gather_with_grad(tensor: Tensor) -> Tensor:
    """``tensor`` from every process, concatenated in rank order along dim 0, with gradients.

    Every process must call it with a tensor of the same shape.
    """
    if not _distributed():
        return tensor
    return torch.cat(_GatherWithGrad.apply(tensor), dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """``all_gather`` whose backward returns to each process the gradient of its share, summed over
    every process's loss (each loss used every share). PyTorch's own differentiable gather,
    ``torch.distributed.nn.functional.all_gather``, is deprecated."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> tuple[Tensor, ...]:
        shares = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(shares, tensor.contiguous())
        return tuple(shares)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> Tensor:
        summed = torch.stack(grads)
        dist.all_reduce(summed)
        return summed[dist.get_rank()]
