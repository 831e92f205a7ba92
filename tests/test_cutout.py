"""The cutout task: boxes, mask, fill, loss and options."""

from __future__ import annotations

import pytest
import torch
from selfsup_cutout import CutoutTask, draw_boxes

from selfsup_core import create_task, list_tasks
from selfsup_core.errors import TaskOptionError


def reference_mask(coords: torch.Tensor, active: torch.Tensor, h: int, w: int) -> torch.Tensor:
    mask = torch.zeros(len(coords), 1, h, w, dtype=torch.bool)
    for b in range(len(coords)):
        for k in range(coords.shape[1]):
            if active[b, k]:
                top, left, bh, bw = coords[b, k].tolist()
                mask[b, 0, top : top + bh, left : left + bw] = True
    return mask


def test_registered() -> None:
    assert "cutout" in list_tasks()
    assert isinstance(create_task("cutout"), CutoutTask)


def test_mask_is_the_union_of_the_drawn_boxes() -> None:
    torch.manual_seed(0)
    task = CutoutTask(boxes=(1, 5), area=(0.01, 0.3))
    batch = task.make_batch(torch.rand(16, 3, 32, 40))
    extras = batch.extras
    assert extras["mask"].shape == (16, 1, 32, 40) and extras["mask"].dtype == torch.bool
    assert torch.equal(extras["mask"], reference_mask(extras["boxes"], extras["active"], 32, 40))
    counts = extras["active"].sum(1)
    assert counts.min() >= 1 and counts.max() <= 5
    top, left, h, w = extras["boxes"].unbind(-1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 40).all()


def test_box_areas_and_aspects_follow_the_ranges() -> None:
    torch.manual_seed(1)
    coords, _ = draw_boxes(500, 64, 64, (1, 1), (0.05, 0.1), (0.5, 2.0))
    _, _, h, w = coords[:, 0].unbind(-1)
    area = (h * w).float() / 64**2
    # Rounding each side to whole pixels moves the area by a few percent.
    assert area.min() > 0.05 * 0.8 and area.max() < 0.1 * 1.2
    aspect = h.float() / w.float()
    assert aspect.min() > 0.5 * 0.8 and aspect.max() < 2.0 * 1.25


@pytest.mark.parametrize("fill", ["zero", "mean", "noise"])
def test_fill_inside_and_untouched_outside(fill: str) -> None:
    torch.manual_seed(2)
    images = torch.rand(4, 3, 32, 32)
    batch = CutoutTask(fill=fill, boxes=3).make_batch(images)
    mask = batch.extras["mask"].expand_as(images)
    assert torch.equal(batch.inputs[~mask], images[~mask])
    assert torch.equal(batch.targets, images)
    inside = batch.inputs.masked_select(mask)
    if fill == "zero":
        assert (inside == 0).all()
    elif fill == "mean":
        means = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
        assert torch.allclose(inside, means.masked_select(mask))
    else:
        assert not torch.equal(inside, images.masked_select(mask))
        assert inside.min() >= 0 and inside.max() <= 1 and inside.std() > 0.2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_draws_follow_device_and_dtype(dtype: torch.dtype) -> None:
    images = torch.rand(2, 3, 32, 32, dtype=dtype)
    batch = CutoutTask().make_batch(images)
    assert batch.inputs.dtype == dtype
    for value in batch.extras.values():
        assert value.device == images.device


def test_loss_counts_the_erased_region_and_optionally_the_rest() -> None:
    torch.manual_seed(3)
    images = torch.rand(4, 3, 32, 32)
    task = CutoutTask(whole_weight=0.0)
    batch = task.make_batch(images)
    mask = batch.extras["mask"]
    assert task.loss(images, batch) == 0
    wrong_outside = torch.where(mask, images, 1 - images)
    assert task.loss(wrong_outside, batch) == 0
    assert CutoutTask(whole_weight=0.5).loss(wrong_outside, batch) > 0
    wrong_inside = torch.where(mask, 1 - images, images)
    assert task.loss(wrong_inside, batch) > 0.2
    metrics = task.metrics(images, batch)
    assert metrics["psnr_masked"] > 90 > metrics["psnr_masked_input"]
    columns = task.preview(batch.inputs, batch)
    assert list(columns) == ["input", "restored", "original"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"boxes": 0}, "boxes"),
        ({"boxes": (3, 1)}, "boxes"),
        ({"boxes": 1.5}, "boxes"),
        ({"area": (0.0, 0.5)}, "area"),
        ({"area": 1.5}, "area"),
        ({"area": "big"}, "area"),
        ({"aspect": (2.0, 1.0)}, "aspect"),
        ({"fill": "blue"}, "fill must be one of 'noise', 'zero', 'mean', got 'blue'"),
        ({"whole_weight": -1}, "whole_weight"),
        ({"drop_skips": -1}, "drop_skips"),
    ],
)
def test_bad_options_are_value_errors(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CutoutTask(**options)
    with pytest.raises(TaskOptionError, match=message):
        create_task("cutout", **options)


def test_options_are_saved_as_plain_types() -> None:
    task = CutoutTask(boxes=2, area=(0.1, 0.2))
    assert task.options.boxes == (2, 2) and task.options.area == (0.1, 0.2)  # one number x means (x, x)
    saved = task.options.to_dict()
    assert saved["boxes"] == [2, 2] and saved["area"] == [0.1, 0.2]
    assert saved["residual"] is False and saved["fill"] == "noise"  # defaults are saved too
    assert CutoutTask(**saved).options == task.options


def test_inpainted_keeps_known_pixels_and_takes_the_boxes_from_the_network() -> None:
    from selfsup_cutout import CutoutTask

    torch.manual_seed(0)
    task = CutoutTask()
    batch = task.make_batch(torch.rand(4, 3, 32, 32))
    outputs = torch.full_like(batch.inputs, 0.5)
    restored = task.inpainted(outputs, batch)
    mask = batch.extras["mask"].expand_as(restored)
    assert torch.equal(restored[~mask], batch.inputs[~mask])
    assert (restored[mask] == 0.5).all()
    assert task.metrics(outputs, batch)["psnr"] > task.metrics(outputs, batch)["psnr_input"]
