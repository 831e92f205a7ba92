"""The crappify task: each degradation step, the glyph bank, loss, metrics and options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from selfsup_crappify import CrappifyTask
from selfsup_crappify.overlay import render_text_bank
from selfsup_crappify.resample import down_up

from selfsup_core import Normalizer, create_task, list_tasks
from selfsup_core.data.glyphs import generate_glyphs
from selfsup_core.errors import TaskOptionError
from selfsup_core.models.encoders import build_encoder
from selfsup_core.training.step import optimiser_step, pretext_step

OFF = {"resize_p": 0.0, "noise_p": 0.0, "text_p": 0.0, "jpeg_p": 0.0}


def only(step: str, **options: object) -> CrappifyTask:
    return CrappifyTask(**{**OFF, f"{step}_p": 1.0, **options})  # type: ignore[arg-type]


def test_registered() -> None:
    assert "crappify" in list_tasks()
    assert create_task("crappify").reconstructs


def test_all_steps_off_leaves_images_unchanged() -> None:
    images = torch.rand(3, 3, 32, 32)
    batch = CrappifyTask(**OFF).make_batch(images)
    assert torch.equal(batch.inputs, images) and torch.equal(batch.targets, images)


def test_down_up_matches_interpolate_and_factor_one_is_identity() -> None:
    x = torch.rand(3, 3, 32, 48)
    y = down_up(x, torch.tensor([1.0, 2.0, 4.0]))
    assert torch.allclose(y[0], x[0], atol=1e-6)
    for i, f in [(1, 2), (2, 4)]:
        small = F.interpolate(x[i : i + 1], scale_factor=1 / f, mode="area")
        ref = F.interpolate(small, size=(32, 48), mode="bilinear", align_corners=False)
        assert torch.allclose(y[i : i + 1], ref, atol=1e-5)


def test_resize_step_blurs_with_drawn_factors() -> None:
    torch.manual_seed(0)
    images = torch.rand(8, 3, 32, 32)
    batch = only("resize", resize_factor=(2.0, 3.0)).make_batch(images)
    factor = batch.extras["factor"]
    assert factor.min() >= 2.0 and factor.max() <= 3.0
    # Down-sampling removes high frequencies: neighbouring pixels get closer.
    def roughness(x: torch.Tensor) -> torch.Tensor:
        return (x[..., 1:] - x[..., :-1]).abs().mean()
    assert roughness(batch.inputs) < 0.6 * roughness(images)


def test_noise_step_has_the_drawn_std_and_is_drawn_on_device() -> None:
    torch.manual_seed(1)
    images = torch.full((4, 3, 64, 64), 0.5)
    batch = only("noise", noise_std=(0.02, 0.1)).make_batch(images)
    std = batch.extras["noise_std"]
    measured = (batch.inputs - images).flatten(1).std(dim=1)
    assert torch.allclose(measured, std, rtol=0.1)
    assert std.device == images.device


def test_text_bank_is_a_non_persistent_buffer_with_ink() -> None:
    task = CrappifyTask(bank_size=8)
    assert task.text_bank.shape == (8, 1, 32, 128)
    assert "text_bank" not in task.state_dict()
    assert (task.text_bank.flatten(1).amax(1) > 0.9).all()  # every string has ink
    assert torch.equal(render_text_bank(8), render_text_bank(8))
    assert task.to(torch.float64).text_bank.dtype == torch.float64


def test_text_step_only_touches_images_that_drew_it() -> None:
    torch.manual_seed(2)
    images = torch.rand(16, 3, 32, 32)
    # Noise on every image first, so the text flags are free to vary.
    task = CrappifyTask(**{**OFF, "text_p": 0.5, "noise_p": 1.0, "noise_std": 0.0})
    batch = task.make_batch(images)
    changed = (batch.inputs != images.clamp(0, 1)).flatten(1).any(1)
    assert torch.equal(changed, batch.extras["text"])
    assert 0 < changed.sum() < 16


def test_every_image_is_degraded_at_least_once() -> None:
    torch.manual_seed(4)
    images = torch.rand(64, 3, 32, 32)
    batch = CrappifyTask(**{**OFF, "text_p": 0.1}).make_batch(images)
    assert batch.extras["text"].all()
    assert (batch.inputs != images).flatten(1).any(1).all()


def test_jpeg_step_uses_the_drawn_qualities() -> None:
    torch.manual_seed(3)
    images = generate_glyphs(4, size=32).images.float() / 255
    batch = only("jpeg", jpeg_quality=(5, 15)).make_batch(images)
    quality = batch.extras["quality"]
    assert quality.min() >= 5 and quality.max() <= 15 and quality.dtype == torch.int64
    assert not torch.equal(batch.inputs, images)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_full_chain_keeps_dtype_range_and_degrades(dtype: torch.dtype) -> None:
    torch.manual_seed(4)
    images = (generate_glyphs(8, size=32).images.float() / 255).to(dtype)
    task = CrappifyTask(resize_p=1.0, noise_p=1.0, text_p=1.0, jpeg_p=1.0).to(dtype)
    batch = task.make_batch(images)
    assert batch.inputs.dtype == dtype and batch.inputs.shape == images.shape
    assert batch.inputs.min() >= 0 and batch.inputs.max() <= 1
    metrics = task.metrics(images, batch)
    assert metrics["psnr"] > 90 and metrics["ssim"] > 0.99
    assert metrics["psnr_input"] < 35 and metrics["ssim_input"] < 0.95


@pytest.mark.parametrize("loss", ["l1", "ssim", "l1+ssim"])
def test_losses_are_zero_on_the_target_and_positive_elsewhere(loss: str) -> None:
    images = torch.rand(2, 3, 32, 32)
    task = CrappifyTask(loss=loss)
    batch = task.make_batch(images)
    assert task.loss(images, batch).abs() < 1e-4
    assert task.loss(batch.inputs, batch) > 0.01


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"jpeg_p": 1.5}, r"jpeg_p must be in \[0, 1\], got 1.5"),
        ({"noise_p": -0.1}, "noise_p"),
        ({"resize_factor": (0.5, 2.0)}, "resize_factor"),
        ({"jpeg_quality": (0, 50)}, "jpeg_quality"),
        ({"jpeg_quality": (60, 50)}, "jpeg_quality"),
        ({"jpeg_quality": (10.5, 50)}, "jpeg_quality"),
        ({"noise_std": 2.0}, "noise_std"),
        ({"text_marks": 0}, "text_marks"),
        ({"loss": "l2"}, r"loss must be one of 'l1', 'ssim', 'l1\+ssim', got 'l2'"),
        ({"bank_size": 0}, "bank_size"),
        ({"text_height": (0.3, 0.1)}, "text_height must be \\(min, max\\) with min <= max"),
        ({"residual": 1}, "residual must be true or false"),
    ],
)
def test_bad_options_are_value_errors(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CrappifyTask(**options)
    with pytest.raises(TaskOptionError, match=message):
        create_task("crappify", **options)


def test_a_few_steps_of_training_lower_the_loss() -> None:
    torch.manual_seed(5)
    images = generate_glyphs(32, size=32).images.float() / 255
    # A direct decoder: the residual one starts at the input's own error and
    # needs far more steps to improve on it.
    task = CrappifyTask(drop_skips=0, residual=False)
    encoder = build_encoder("tiny")
    head = task.build_head(encoder)
    optimiser = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=3e-3)
    losses = []
    for _ in range(25):
        loss = pretext_step(task, encoder, head, images, Normalizer()).loss
        optimiser_step(loss, optimiser)
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])


def test_options_are_declared_once_and_saved_with_their_defaults() -> None:
    from selfsup_crappify import CrappifyOptions

    task = create_task("crappify", jpeg_quality=30, text_p=0.0)
    assert isinstance(task.options, CrappifyOptions)
    assert task.options.jpeg_quality == (30, 30) and task.options.drop_skips == "all"  # crappify's own default
    saved = task.options.to_dict()
    assert saved["jpeg_quality"] == [30, 30] and saved["resize_factor"] == [1.5, 4.0] and saved["loss"] == "l1"
    assert task.text_bank.shape == (1, 1, 32, 128)  # derived from the options: no text, no bank


def test_the_documented_restoration_setting_runs_and_keeps_the_skips(tmp_path, capsys) -> None:  # noqa: ANN001
    """docs/tasks.md's restoration command (the non-default U-Net) runs as written, plus a tiny encoder."""
    import shlex
    from pathlib import Path

    import yaml

    from selfsup_core.cli import main

    docs = (Path(__file__).parents[1] / "docs" / "tasks.md").read_text()
    documented = "selfsup pretrain --task crappify --task-option drop_skips=0"
    (line,) = [ln for ln in docs.splitlines() if ln.startswith(documented)]
    out = tmp_path / "restore"
    assert main([*shlex.split(line)[1:], "--arch", "tiny", "--num-workers", "0", "--out", str(out)]) == 0
    options = yaml.safe_load((out / "config.yaml").read_text())["task_options"]
    assert options["drop_skips"] == 0 and options["residual"] is True
    assert "val/psnr" in capsys.readouterr().out
