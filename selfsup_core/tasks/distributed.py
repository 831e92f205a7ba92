"""What a task needs to know about other processes: gathering with gradients, and its rank.

Under multi-process training (Lightning's DDP) each process sees its own
shard of the global batch. A contrastive loss wants its negatives from the
whole global batch, and its gradients to flow back through them: plain
``torch.distributed.all_gather`` returns tensors without gradients, so this
uses ``torch.distributed.nn.functional.all_gather``, which is differentiable.
In one process every function here is a no-op.

Example:
    >>> gather_with_grad(torch.ones(4, 8)).shape  # one process: unchanged
    torch.Size([4, 8])
"""

from __future__ import annotations

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
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)
