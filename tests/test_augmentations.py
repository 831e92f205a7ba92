"""Augmentations are plugins: the built-ins, their contract, the command line and fine-tuning."""

from __future__ import annotations

import math
from pathlib import Path

import kornia
import pytest
import torch
import torch.nn.functional as F
from selfsup_augment import CropFlip, Erase
from selfsup_augment.blur import gaussian_blur, kernel_size
from selfsup_augment.color import ColorJitter, Grayscale, grey, hue_matrices
from selfsup_augment.geometry import crop_grid
from selfsup_augment.ops import select
from selfsup_crappify import CrappifyTask

from selfsup_core import Pipeline, create_augmentation, create_task, list_augmentations
from selfsup_core.cli import main
from selfsup_core.config import FinetuneConfig
from selfsup_core.errors import ConfigError, TaskOptionError, UnknownTaskError
from selfsup_core.plugin.host import get_plugin_host
from selfsup_core.testing import check_augmentation

# Fixed lists, never list_augmentations() at collection time: a plugin that
# fails to load must fail a test, not silently drop its cases.
BUILTIN = ["crop_flip", "color_jitter", "grayscale", "blur", "erase", "down_up", "noise", "text", "jpeg"]
EXAMPLE = ["posterize"]  # examples/selfsup-jigsaw, tested in tests/test_example_plugin.py too
CASES = [
    *[(name, {}) for name in BUILTIN + EXAMPLE],
    # Every image augmented: the apply path of each image, not just the pass-through.
    *[(name, {"p": 1.0}) for name in ["color_jitter", "grayscale", "blur", "erase", "down_up", "noise", "text",
                                      "jpeg", "posterize"]],
    ("crop_flip", {"flip_p": 1.0, "scale": (0.05, 0.3)}),
    ("erase", {"p": 1.0, "fill": "noise", "boxes": (1, 4)}),
    ("erase", {"p": 1.0, "fill": "mean"}),
]


def test_every_installed_augmentation_is_covered() -> None:
    installed = set(list_augmentations())
    assert set(BUILTIN) <= installed, f"built-in augmentations missing: {sorted(set(BUILTIN) - installed)}"
    uncovered = installed - set(BUILTIN + EXAMPLE)
    assert not uncovered, f"installed augmentations the contract below does not run: {sorted(uncovered)}"


@pytest.mark.parametrize(("name", "options"), CASES, ids=lambda v: str(v) if isinstance(v, str) else "")
def test_contract(name: str, options: dict) -> None:
    check_augmentation(create_augmentation(name, **options))


def test_registered_through_the_entry_point_group_with_their_distribution() -> None:
    registry = get_plugin_host().augmentations
    assert registry.get("crop_flip").plugin == "augment" and registry.get("crop_flip").distribution == "selfsup"
    assert registry.get("jpeg").plugin == "crappify"  # crappify's degradations come from its own hook


def test_listed_with_their_package(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["augmentations"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(BUILTIN) <= set(lines)
    assert lines["crop_flip"].endswith("[selfsup]") and "crop" in lines["crop_flip"]


def test_options_table_and_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["augmentations", "--options", "color_jitter"]) == 0
    out = capsys.readouterr().out
    assert "| `brightness` | number | `0.4` |" in out and "| `p` | number | `0.8` |" in out
    assert main(["augmentations", "--options", "colour_jitter"]) == 1
    assert "Did you mean 'color_jitter'" in capsys.readouterr().err


def test_bad_options_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"augmentation 'crop_flip': scale must be \(min, max\)"):
        create_augmentation("crop_flip", scale=(0.9, 0.1))
    with pytest.raises(ConfigError, match="has no option 'sigma'"):
        create_augmentation("grayscale", sigma=1.0)
    with pytest.raises(UnknownTaskError, match="unknown augmentation 'rotate'"):
        create_augmentation("rotate")


def test_pipeline_keeps_every_param_under_its_augmentation_name() -> None:
    pipeline = Pipeline([create_augmentation("crop_flip"), create_augmentation("grayscale", p=1.0)])
    views, params = pipeline(torch.rand(4, 3, 16, 16))
    assert set(params) == {"crop_flip.box", "crop_flip.flip", "grayscale.applied"}
    assert torch.equal(views[:, 0], views[:, 1])  # grey last


def test_select_is_exactly_where() -> None:
    images, augmented = torch.rand(6, 3, 8, 8), torch.rand(6, 3, 8, 8)
    flags = torch.tensor([True, False, True, True, False, False])
    assert torch.equal(select(flags, augmented, images), torch.where(flags[:, None, None, None], augmented, images))
    mask = torch.rand(6, 1, 8, 8) < 0.5
    assert torch.equal(select(mask, torch.zeros(()), images), torch.where(mask, 0.0, images))


# -- crop_flip ---------------------------------------------------------------------------


def test_crop_flip_full_box_is_the_identity_or_the_mirror() -> None:
    images = torch.rand(2, 3, 24, 40)
    same, params = CropFlip(scale=1.0, ratio=40 / 24, flip_p=0.0)(images)
    assert torch.allclose(same, images, atol=1e-5)
    assert torch.allclose(params["box"], torch.tensor([[0.5, 0.5, 1.0, 1.0]] * 2), atol=1e-6)
    mirrored, _ = CropFlip(scale=1.0, ratio=40 / 24, flip_p=1.0)(images)
    assert torch.allclose(mirrored, images.flip(-1), atol=1e-5)


def test_crop_flip_samples_one_box_per_image_inside_the_image() -> None:
    torch.manual_seed(0)
    images = torch.rand(2000, 1, 8, 8)
    params = CropFlip(scale=(0.2, 0.6), ratio=(0.75, 1.3333)).sample(images)
    cx, cy, w, h = params["box"].unbind(1)
    assert (cx - w / 2 >= -1e-6).all() and (cx + w / 2 <= 1 + 1e-6).all()
    assert (cy - h / 2 >= -1e-6).all() and (cy + h / 2 <= 1 + 1e-6).all()
    area, ratio = w * h, w / h
    assert area.min() >= 0.2 - 1e-5 and area.max() <= 0.6 + 1e-5
    assert ratio.min() >= 0.75 - 1e-4 and ratio.max() <= 1.3333 + 1e-4
    assert 0.45 < params["flip"].float().mean() < 0.55


def test_crop_flip_reads_its_box_and_its_grid_is_affine_grids() -> None:
    images = torch.arange(32 * 48, dtype=torch.float32).view(1, 1, 32, 48).expand(2, 3, 32, 48)
    box = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.5, 0.5, 1.0]])
    flip = torch.tensor([False, True])
    out = CropFlip().apply(images, {"box": box, "flip": flip})
    # The top-left quarter, up-sampled: the same as interpolating that crop away from its last row/column.
    reference = F.interpolate(images[:1, :, :16, :24], size=(32, 48), mode="bilinear", align_corners=False)
    assert torch.allclose(out[0, :, :-2, :-2], reference[0, :, :-2, :-2])
    # The right half, mirrored (its left edge, which reads column 23 too, comes last).
    reference = F.interpolate(images[1:, :, :, 24:], size=(32, 48), mode="bilinear", align_corners=False)
    assert torch.allclose(out[1, :, :, :-2], reference[0].flip(-1)[:, :, :-2])
    theta = torch.zeros(2, 2, 3)
    theta[:, 0, 0] = box[:, 2] * torch.tensor([1.0, -1.0])
    theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = 2 * box[:, 0] - 1, box[:, 3], 2 * box[:, 1] - 1
    expected = F.affine_grid(theta, [2, 3, 32, 48], align_corners=False)
    assert torch.allclose(crop_grid(box, flip, images), expected, atol=1e-6)


# -- colour ------------------------------------------------------------------------------


def jitter_params(n: int, **values: float) -> dict[str, torch.Tensor]:
    base = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0, **values}
    return {"applied": torch.ones(n, dtype=torch.bool), **{k: torch.full((n,), v) for k, v in base.items()}}


def test_color_jitter_neutral_factors_are_the_identity() -> None:
    images = torch.rand(3, 3, 16, 16)
    assert torch.allclose(ColorJitter().apply(images, jitter_params(3)), images, atol=1e-6)


def test_color_jitter_matches_torchvision_for_brightness_contrast_saturation() -> None:
    import torchvision.transforms.functional as TF

    images = torch.rand(2, 3, 16, 16)
    out = ColorJitter().apply(images, jitter_params(2, brightness=0.8, contrast=1.3, saturation=0.5))
    expected = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(images, 0.8), 1.3), 0.5)
    assert torch.allclose(out, expected, atol=1e-4)


def test_hue_rotation_keeps_grey_and_turns_red_towards_yellow() -> None:
    matrices = hue_matrices(torch.tensor([0.05, 0.5, 1.0]))
    grey_pixel = torch.full((3,), 0.4, dtype=torch.float64)
    assert torch.allclose(matrices @ grey_pixel, grey_pixel.expand(3, 3))
    assert torch.allclose(matrices[2], torch.eye(3, dtype=torch.float64), atol=1e-9)  # a full turn
    red = torch.tensor([0.8, 0.2, 0.2], dtype=torch.float64)
    shifted = matrices[0] @ red
    assert shifted[1] > red[1]  # green up, as a positive HSV hue shift does:
    assert kornia.enhance.adjust_hue(red.view(1, 3, 1, 1), 0.3).flatten()[1] > red[1]


def test_color_jitter_leaves_unapplied_images_alone() -> None:
    torch.manual_seed(0)
    images = torch.rand(16, 3, 8, 8)
    out, params = ColorJitter(p=0.5)(images)
    changed = (out != images).flatten(1).any(1)
    assert torch.equal(changed, params["applied"]) and 0 < changed.sum() < 16


def test_grayscale_sets_the_luma_in_every_channel_of_the_drawn_images() -> None:
    torch.manual_seed(1)
    images = torch.rand(16, 3, 8, 8)
    out, params = Grayscale(p=0.5)(images)
    applied = params["applied"]
    assert torch.equal(out[~applied], images[~applied])
    assert torch.allclose(out[applied], grey(images[applied]).expand(-1, 3, -1, -1))


# -- blur --------------------------------------------------------------------------------


def test_blur_matches_kornia_per_image_sigma() -> None:
    images = torch.rand(3, 3, 64, 64)
    sigma = torch.tensor([0.3, 1.0, 2.0])
    out = gaussian_blur(images, sigma)
    k = kernel_size(64, 64)
    assert k == 7 and kernel_size(32, 32) == 3 and kernel_size(224, 224) == 23
    for i, s in enumerate(sigma.tolist()):
        expected = kornia.filters.gaussian_blur2d(images[i : i + 1], (k, k), (s, s), border_type="reflect")
        assert torch.allclose(out[i], expected[0], atol=1e-6)


# -- erase -------------------------------------------------------------------------------


def test_erase_fills_the_drawn_boxes_of_the_drawn_images() -> None:
    torch.manual_seed(2)
    images = torch.rand(16, 3, 32, 32)
    out, params = Erase(p=0.5, boxes=(1, 3), fill="zero")(images)
    erased = params["mask"] & params["applied"][:, None, None, None]
    assert (out.masked_select(erased.expand_as(out)) == 0).all()
    assert torch.equal(out[~erased.expand_as(out)], images[~erased.expand_as(images)])
    assert params["boxes"].shape == (16, 3, 4) and 0 < params["applied"].sum() < 16


def test_cutout_erases_with_the_erase_augmentation() -> None:
    import selfsup_cutout

    task = create_task("cutout", boxes=2, fill="mean")
    assert isinstance(task.erase, Erase) and task.erase.options.p == 1.0
    assert selfsup_cutout.draw_boxes is __import__("selfsup_augment").draw_boxes  # one home


# -- crappify composes degradations by name ---------------------------------------------


def test_crappify_degradations_are_augmentations_in_the_listed_order() -> None:
    task = CrappifyTask(degradations=["jpeg", "down_up"], jpeg_p=1.0, resize_p=1.0, jpeg_quality=20)
    assert list(task.steps) == ["jpeg", "down_up"]
    assert task.steps["jpeg"].options.quality == (20, 20)  # crappify's own options reach its steps
    images = torch.rand(2, 3, 32, 32)
    torch.manual_seed(3)
    batch = task.make_batch(images)
    steps = task.steps
    expected = steps["down_up"].apply(steps["jpeg"].apply(images, {"applied": batch.extras["jpeg.applied"],
                                                                   "quality": batch.extras["jpeg.quality"]}),
                                      {"applied": batch.extras["down_up.applied"],
                                       "factor": batch.extras["down_up.factor"]})
    assert torch.allclose(batch.inputs, expected.clamp(0, 1))
    assert "noise_std" not in batch.extras and batch.extras["quality"].eq(20).all()


def test_crappify_without_text_has_no_bank() -> None:
    task = CrappifyTask(degradations=["noise"])
    with pytest.raises(AttributeError, match="text_bank"):
        task.text_bank  # noqa: B018


def test_crappify_gives_every_image_a_degradation_through_any_augmentation() -> None:
    torch.manual_seed(4)
    task = CrappifyTask(degradations=["grayscale", "noise"], noise_p=0.0,
                        degradation_options={"grayscale": {"p": 0.1}})
    images = torch.rand(32, 3, 8, 8)
    batch = task.make_batch(images)
    assert batch.extras["grayscale.applied"].all()  # forced on: the only enabled step
    assert torch.equal(batch.inputs[:, 0], batch.inputs[:, 1])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"degradations": ["jpeg", "rotate"]}, "degradations: unknown augmentation 'rotate'"),
        ({"degradations": ["jpeg", "jpeg"]}, "degradations names jpeg more than once"),
        ({"degradations": ["blur"], "degradation_options": {"blur": {"sigma": 0}}}, "degradations: .*sigma"),
        ({"degradation_options": {"blur": {"p": 1.0}}}, "'blur', which is not in degradations"),
        ({"degradation_options": {"jpeg": {"p": 1.0}}}, "set jpeg's options with crappify's own options"),
    ],
)
def test_crappify_rejects_bad_degradations(options: dict, message: str) -> None:
    with pytest.raises(TaskOptionError, match=message):
        create_task("crappify", **options)


# -- fine-tuning -------------------------------------------------------------------------


def test_finetune_config_takes_a_list_or_comma_separated_names() -> None:
    assert FinetuneConfig().augment == ["crop_flip"]
    assert FinetuneConfig(augment="crop_flip, color_jitter").augment == ["crop_flip", "color_jitter"]
    assert FinetuneConfig(augment=[]).augment == []
    with pytest.raises(ValueError, match="augment"):
        FinetuneConfig(augment=3)


def test_classifier_keeps_todays_recipe_and_saves_plain_names() -> None:
    from selfsup_core.training.finetune_module import ClassifierModule

    module = ClassifierModule(num_classes=3, arch="tiny")
    (crop,) = module.augmentations.steps
    assert isinstance(crop, CropFlip) and crop.options.scale == (0.35, 1.0)
    assert module.hparams["augment"] == ["crop_flip"] and "host" not in module.hparams
    module = ClassifierModule(num_classes=3, arch="tiny", augment=("crop_flip", "grayscale"))
    assert [step.name for step in module.augmentations.steps] == ["crop_flip", "grayscale"]
    assert type(module.hparams["augment"]) is list


def test_finetune_with_named_augmentations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    out = tmp_path / "run"
    assert main(["finetune", "--arch", "tiny", "--image-size", "32", "--limit", "64", "--max-epochs", "1",
                 "--batch-size", "16", "--no-progress", "--augment", "[crop_flip, color_jitter, blur]",
                 "--out", str(out)]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["augment"] == ["crop_flip", "color_jitter", "blur"]
    checkpoint = out / "checkpoints" / "last.ckpt"
    if checkpoint.is_file():
        hparams = torch.load(checkpoint, weights_only=True)["hyper_parameters"]
        assert hparams["augment"] == ["crop_flip", "color_jitter", "blur"]
    assert main(["finetune", "--arch", "tiny", "--augment", "crop_flip,sharpen", "--out", str(tmp_path / "x")]) == 1
    assert "unknown augmentation 'sharpen'" in capsys.readouterr().err
    assert not (tmp_path / "x" / "config.yaml").exists()  # refused before any data was read


def test_the_bench_compares_each_builtin_with_kornia() -> None:
    from selfsup_augment.bench import bench_augmentations

    records = bench_augmentations(torch.device("cpu"), size=16, batch=2, repeats=1, warmup=0, rounds=1)
    names = [r["augmentation"].split()[0] for r in records]
    assert {"crop_flip", "color_jitter", "grayscale", "blur", "erase"} <= set(names)
    assert all(r["images_per_s"] > 0 and r["kornia_images_per_s"] > 0 and not math.isnan(r["speedup"])
               for r in records)
