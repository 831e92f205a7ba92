"""The rotation task: labels match the transform actually applied."""

from __future__ import annotations

import pytest
import torch
from selfsup_rotation import apply_transform

from selfsup_core import create_task


@pytest.mark.parametrize("num_transforms", [4, 6])
def test_labels_name_the_applied_transform(num_transforms: int) -> None:
    task = create_task("rotation", num_transforms=num_transforms, crop_scale=1.0, flip=False)
    images = torch.rand(64, 3, 8, 8)
    batch = task.make_batch(images)
    assert set(batch.targets.unique().tolist()) == set(range(num_transforms))
    for image, rotated, label in zip(images, batch.inputs, batch.targets.tolist()):
        assert torch.equal(rotated, apply_transform(image[None], label)[0])


def test_transforms_are_distinct_on_an_asymmetric_image() -> None:
    image = torch.arange(16.0).view(1, 1, 4, 4)
    outputs = [apply_transform(image, i) for i in range(6)]
    assert all(not torch.equal(outputs[i], outputs[j]) for i in range(6) for j in range(i + 1, 6))


def test_flip_happens_before_the_turn_and_keeps_the_label() -> None:
    task = create_task("rotation", crop_scale=1.0, flip=True)
    images = torch.rand(64, 3, 8, 8)
    batch = task.make_batch(images)
    mirrored = 0
    for image, rotated, label in zip(images, batch.inputs, batch.targets.tolist()):
        plain = torch.equal(rotated, apply_transform(image[None], label)[0])
        flipped = torch.equal(rotated, apply_transform(image[None].flip(-1), label)[0])
        assert plain or flipped
        mirrored += flipped and not plain
    assert 0 < mirrored < 64


def test_crops_change_the_content_not_the_size() -> None:
    task = create_task("rotation", crop_scale=(0.3, 0.5), flip=False)
    images = torch.rand(16, 3, 32, 32)
    batch = task.make_batch(images)
    assert batch.inputs.shape == images.shape
    unrotated = [apply_transform(x[None], (4 - k) % 4)[0] for x, k in zip(batch.inputs, batch.targets.tolist())]
    assert not any(torch.allclose(u, x) for u, x in zip(unrotated, images))


def test_crop_and_flip_are_the_crop_flip_augmentation_before_the_named_ones() -> None:
    def steps(**options: object) -> list[tuple[str, dict]]:
        return [(step.name, step.options.to_dict()) for step in create_task("rotation", **options).augmentations.steps]

    assert steps() == []
    cropped = steps(crop_scale=0.5, flip=True, augmentations=["grayscale"])
    assert [name for name, _ in cropped] == ["crop_flip", "grayscale"]
    assert cropped[0][1]["scale"] == [0.5, 1.0] and cropped[0][1]["flip_p"] == 0.5
    assert cropped[0][1]["ratio"] == [0.75, 1.3333]  # torchvision's and Kornia's aspect range
    mirrored = dict(steps(flip=True))["crop_flip"]  # the whole image, mirrored or not
    assert mirrored["scale"] == [1.0, 1.0] and mirrored["ratio"] == [1.0, 1.0] and mirrored["flip_p"] == 0.5
    assert dict(steps(crop_scale=0.5))["crop_flip"]["flip_p"] == 0.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"crop_scale": (0.5, 1.5)}, "crop_scale"),
        ({"crop_scale": 0}, "crop_scale must be above 0"),
        ({"crop_scale": 1.5}, "crop_scale must lie in \\[0, 1\\]"),  # one number above 1: its range, not its order
        ({"crop_scale": (0.9, 0.5)}, "crop_scale must be \\(min, max\\) with min <= max"),
        ({"num_transforms": 5}, "num_transforms must be 4 or 6, got 5"),
        ({"flip": "yes"}, "flip must be true or false"),
        ({"num_transforms": 6, "flip": True}, "flips are labels"),
    ],
)
def test_bad_augmentation_options(options: dict, message: str) -> None:
    from selfsup_core.errors import TaskOptionError

    with pytest.raises(TaskOptionError, match=message):
        create_task("rotation", **options)


def test_options_resolve_with_their_defaults() -> None:
    from selfsup_rotation import RotationOptions, RotationTask

    task = create_task("rotation", crop_scale=0.5)
    assert isinstance(task, RotationTask) and task.options == RotationOptions(crop_scale=(0.5, 1.0))
    assert task.options.to_dict() == {"num_transforms": 4, "crop_scale": [0.5, 1.0], "flip": False, "augmentations": [],
                                      "all_turns": False, "head_hidden": 0, "spread": 0.0}
    assert create_task("rotation", num_transforms=6).num_classes == 6


def test_head_hidden_puts_a_hidden_layer_before_the_turn_logits() -> None:
    from selfsup_core import build_encoder

    encoder = build_encoder("tiny")
    assert isinstance(create_task("rotation").build_head(encoder), torch.nn.Linear)
    head = create_task("rotation", head_hidden=32, num_transforms=6).build_head(encoder)
    assert [type(m).__name__ for m in head] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert head(torch.zeros(2, encoder.feature_dim)).shape == (2, 6) and head[0].out_features == 32


def test_all_turns_shows_each_image_of_a_group_in_every_orientation() -> None:
    images = torch.rand(10, 3, 8, 8)
    batch = create_task("rotation", all_turns=True).make_batch(images)
    assert batch.inputs.shape == images.shape and batch.targets[:8].tolist() == [0, 1, 2, 3] * 2
    for i in range(8):  # image i // 4 in turn i % 4
        assert torch.equal(batch.inputs[i], torch.rot90(images[i // 4], i % 4, dims=(-2, -1)))
    assert torch.equal(batch.inputs[8:], torch.stack([torch.rot90(images[8 + j], int(batch.targets[8 + j]),
                                                                  dims=(-2, -1)) for j in range(2)]))


def test_augmentations_run_before_the_turn_and_the_label_still_names_the_turn() -> None:
    torch.manual_seed(0)
    images = torch.rand(64, 3, 8, 8)
    batch = create_task("rotation", augmentations=["grayscale"]).make_batch(images)  # grayscale: p=0.2
    undone = torch.stack([torch.rot90(x, -int(k), dims=(-2, -1)) for x, k in zip(batch.inputs, batch.targets)])
    grey = (undone[:, 0] == undone[:, 1]).flatten(1).all(dim=1) & (undone[:, 1] == undone[:, 2]).flatten(1).all(dim=1)
    assert 0 < int(grey.sum()) < 64  # some images were made grey, by the plugin, before the turn
    assert torch.equal(undone[~grey], images[~grey])  # the others are the images, turned as labelled


def test_spread_adds_the_variance_covariance_penalty_of_the_pooled_features() -> None:
    from selfsup_rotation import variance_covariance

    from selfsup_core import build_encoder

    torch.manual_seed(0)
    encoder, images = build_encoder("tiny"), torch.rand(16, 3, 16, 16)
    plain, spread = create_task("rotation"), create_task("rotation", spread=2.0)
    head = plain.build_head(encoder)
    batch = plain.make_batch(images)
    logits = plain.forward_model(encoder, head, batch.inputs, batch)
    outputs = spread.forward_model(encoder, head, batch.inputs, batch)
    features = encoder(batch.inputs)
    assert isinstance(logits, torch.Tensor) and torch.allclose(outputs[0], logits)
    penalty = variance_covariance(features)
    assert penalty > 0
    assert torch.allclose(spread.loss(outputs, batch), plain.loss(logits, batch) + 2.0 * penalty)
    assert spread.metrics(outputs, batch)["acc"] == plain.metrics(logits, batch)["acc"]
    assert torch.allclose(spread.metrics(outputs, batch)["spread"], penalty)
    spread.loss(outputs, batch).backward()  # the penalty reaches the encoder
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)


def test_variance_covariance_is_near_zero_for_whitened_features_and_large_for_collapsed_ones() -> None:
    from selfsup_rotation import variance_covariance

    torch.manual_seed(0)
    whitened = torch.randn(4096, 8)
    assert variance_covariance(whitened) < 0.02
    collapsed = torch.randn(4096, 1).repeat(1, 8)  # one direction, eight copies
    assert variance_covariance(collapsed) > 5
    with pytest.raises(ValueError, match="spread"):
        create_task("rotation", spread=-1)
