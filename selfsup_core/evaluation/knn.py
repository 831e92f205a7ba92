"""Weighted k-nearest-neighbour classification on frozen features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup_core.errors import DataError

KNN_K = 20
KNN_TEMPERATURE = 0.07


def knn_predict(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    num_classes: int,
    *,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    chunk: int = 1024,
) -> Tensor:
    """Weighted kNN class predictions by cosine similarity.

    Each query's ``k`` most similar bank entries vote for their class with
    weight ``exp(similarity / temperature)`` (the protocol of InstDisc, DINO
    and most SSL libraries). Features are L2-normalised here.

    Args:
        bank: ``(N, D)`` features of the labelled images.
        bank_labels: ``(N,)`` class indices.
        queries: ``(M, D)`` features to classify.
        num_classes: Number of classes.
        k: Neighbours per query (capped at ``N``).
        temperature: Softness of the vote weights; small values let the
            nearest neighbours dominate.
        chunk: Queries per similarity matrix (bounds memory at ``chunk x N``).

    Returns:
        ``(M,)`` predicted class indices.

    Example:
        >>> bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> knn_predict(bank, torch.tensor([0, 0, 1]), torch.tensor([[0.1, 1.0]]), 2, k=1).tolist()
        [1]
    """
    if len(bank) == 0:
        raise DataError("the kNN bank is empty: no labelled train images.")
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, len(bank))
    predictions = []
    for start in range(0, len(queries), chunk):
        query = F.normalize(queries[start:start + chunk].float(), dim=1)
        similarity, index = (query @ bank.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes = torch.zeros(len(query), num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, bank_labels[index], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)
