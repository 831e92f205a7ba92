"""The U-Net decoder: shapes, skip dropping, and that the encoder stays separate."""

from __future__ import annotations

import pytest
import torch

from selfsup_core import Normalizer, PretextBatch
from selfsup_core.models.encoders import build_encoder
from selfsup_core.models.unet import UNetDecoder
from selfsup_core.tasks.reconstruction import ReconstructionTask


@pytest.mark.parametrize("arch", ["tiny", "resnet18"])
@pytest.mark.parametrize("size", [(32, 32), (40, 36)])
def test_output_is_an_image_at_input_resolution(arch: str, size: tuple[int, int]) -> None:
    encoder = build_encoder(arch)
    decoder = UNetDecoder.for_encoder(encoder, drop_skips=1)
    x = torch.rand(2, 3, *size)
    out = decoder(encoder.forward_stages(x), size=size)
    assert out.shape == (2, 3, *size)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("bad", [-1, 3, 10, "none", True])
def test_drop_skips_out_of_range_is_a_value_error(bad: int) -> None:
    with pytest.raises(ValueError, match="drop_skips must be 'all' or between 0 and 2"):
        UNetDecoder((16, 32, 64), drop_skips=bad)


@pytest.mark.parametrize("stages", [(16, 32, 64), (64, 64, 128, 256, 512)])
def test_drop_skips_all_means_every_skip_of_any_encoder(stages: tuple[int, ...]) -> None:
    assert UNetDecoder(stages, drop_skips="all").drop_skips == len(stages) - 1
    assert not any(UNetDecoder(stages, drop_skips="all").uses_skip(i) for i in range(len(stages) - 1))


def test_skip_dropout_cuts_whole_images_off_their_skips_in_training_only() -> None:
    torch.manual_seed(0)
    stages = [torch.rand(64, 16, 16, 16), torch.rand(64, 32, 8, 8), torch.rand(64, 64, 4, 4)]
    changed = [stages[0] + 1.0, stages[1] + 1.0, stages[2]]
    decoder = UNetDecoder((16, 32, 64), skip_dropout=0.5)
    decoder.final_block[1].eval()  # BatchNorm on batch statistics would mix the images
    for block in decoder.up_blocks:
        block[1].eval()
    torch.manual_seed(1)
    first = decoder(stages, (32, 32))
    torch.manual_seed(1)  # the same per-image draws
    second = decoder(changed, (32, 32))
    unaffected = torch.isclose(first, second).flatten(1).all(dim=1)
    assert 16 < int(unaffected.sum()) < 48  # about half the images were restored from the deepest stage alone
    decoder.eval()  # a finished decoder keeps every skip
    assert not torch.isclose(decoder(stages, (32, 32)), decoder(changed, (32, 32))).flatten(1).all(dim=1).any()
    with pytest.raises(ValueError, match="skip_dropout"):
        UNetDecoder((16, 32, 64), skip_dropout=1.5)


def test_dropped_skips_cut_the_shallow_stages_off() -> None:
    torch.manual_seed(0)
    stages = [torch.rand(2, 16, 16, 16), torch.rand(2, 32, 8, 8), torch.rand(2, 64, 4, 4)]
    changed = [stages[0] + 1.0, stages[1], stages[2]]
    for drop, depends in [(0, True), (1, False), (2, False)]:
        decoder = UNetDecoder((16, 32, 64), drop_skips=drop).eval()
        same = torch.allclose(decoder(stages, (32, 32)), decoder(changed, (32, 32)))
        assert same is not depends, f"drop_skips={drop}"
    # With every skip dropped, only the deepest stage matters.
    decoder = UNetDecoder((16, 32, 64), drop_skips=2).eval()
    middle = [stages[0], stages[1] + 1.0, stages[2]]
    assert torch.allclose(decoder(stages, (32, 32)), decoder(middle, (32, 32)))


def test_head_holds_no_encoder_weights_and_gradients_reach_the_deepest_stage() -> None:
    encoder = build_encoder("tiny")
    task = ReconstructionTask(drop_skips=2)
    head = task.build_head(encoder)
    encoder_ids = {id(p) for p in encoder.parameters()}
    assert not encoder_ids & {id(p) for p in head.parameters()}
    x = torch.rand(2, 3, 32, 32)
    out = task.forward_model(encoder, head, x, PretextBatch(inputs=x, targets=x))
    assert out.shape == x.shape
    out.mean().backward()
    deepest = encoder.blocks[-1][0].weight
    assert deepest.grad is not None and deepest.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1"])
def test_task_rejects_bad_drop_skips(bad: object) -> None:
    with pytest.raises(ValueError, match="drop_skips"):
        ReconstructionTask(drop_skips=bad)  # type: ignore[arg-type]


def test_residual_decoder_starts_as_the_identity_on_the_unnormalised_input() -> None:
    encoder = build_encoder("tiny")
    task = ReconstructionTask(drop_skips=0, residual=True)
    head = task.build_head(encoder)
    images = torch.rand(2, 3, 32, 32)
    batch = PretextBatch(inputs=images, targets=images)
    # Statistics far from ImageNet's: the base image must come from the batch, not from constants.
    normalizer = Normalizer(mean=(0.1, 0.9, 0.3), std=(0.5, 0.05, 2.0))
    out = task.forward_model(encoder, head, normalizer(images), batch)
    assert torch.allclose(out, images, atol=1e-5)
    with pytest.raises(ValueError, match="base image"):
        head(encoder.forward_stages(images), size=(32, 32))


@pytest.mark.parametrize(("options", "message"), [
    (["drop_skips=7"], "task 'crappify' on resnet18: drop_skips must be 'all' or between 0 and 4"),
    (["skip_dropout=0.5"], "skip_dropout drops skips, but drop_skips=all leaves none"),
    (["drop_skips=4", "skip_dropout=0.5"], "skip_dropout drops skips, but drop_skips=4 leaves none"),
])
def test_options_only_the_encoder_can_judge_fail_as_one_line_before_any_data(
        options: list[str], message: str, tmp_path, capsys) -> None:  # noqa: ANN001
    from selfsup_core.cli import main

    flags = [word for option in options for word in ("--task-option", option)]
    out = tmp_path / "run"
    assert main(["pretrain", "--task", "crappify", *flags, "--data", str(tmp_path / "nowhere"),
                 "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1  # one line, and before the missing data is noticed
    assert not out.exists()
