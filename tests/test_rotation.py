"""The rotation task: labels match the transform actually applied."""

from __future__ import annotations

import pytest
import torch

from selfsup_core import create_task
from selfsup_rotation import apply_transform


@pytest.mark.parametrize("num_transforms", [4, 6])
def test_labels_name_the_applied_transform(num_transforms: int) -> None:
    task = create_task("rotation", num_transforms=num_transforms)
    images = torch.rand(64, 3, 8, 8)
    batch = task.make_batch(images)
    assert set(batch.targets.unique().tolist()) == set(range(num_transforms))
    for image, rotated, label in zip(images, batch.inputs, batch.targets.tolist()):
        assert torch.equal(rotated, apply_transform(image[None], label)[0])


def test_transforms_are_distinct_on_an_asymmetric_image() -> None:
    image = torch.arange(16.0).view(1, 1, 4, 4)
    outputs = [apply_transform(image, i) for i in range(6)]
    assert all(not torch.equal(outputs[i], outputs[j]) for i in range(6) for j in range(i + 1, 6))
