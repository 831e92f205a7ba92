"""Listing and decoding image folders; subsets and splits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from selfsup_core.data.decoded import decode_images, split_indices, stratified_subset
from selfsup_core.data.files import load_image, scan_folder
from selfsup_core.data.glyphs import CLASSES, builtin_split, generate_glyphs
from selfsup_core.errors import DataError


def test_scan_labelled_folder(image_folder: Path) -> None:
    found = scan_folder(image_folder, labelled=True)
    assert found.classes == ("class_0", "class_1", "class_2")
    assert len(found) == 18
    assert sorted(set(found.labels)) == [0, 1, 2]
    assert {p.suffix for p in found.files} == {".png", ".JPG", ".jpeg"}


def test_scan_flat_folder_is_unlabelled(tmp_path: Path) -> None:
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    found = scan_folder(tmp_path)
    assert len(found) == 3 and found.labels is None
    with pytest.raises(DataError, match="one sub-folder per class"):
        scan_folder(tmp_path, labelled=True)


@pytest.mark.parametrize("make", ["missing", "empty", "no_images"])
def test_bad_folders_get_clear_errors(tmp_path: Path, make: str) -> None:
    folder = tmp_path / "data"
    if make != "missing":
        folder.mkdir()
    if make == "no_images":
        (folder / "readme.txt").write_text("x")
    expected = {"missing": "does not exist", "empty": "is empty", "no_images": "has no image files"}[make]
    with pytest.raises(DataError, match=expected):
        scan_folder(folder)


def test_load_image_resizes_crops_and_converts(tmp_path: Path) -> None:
    Image.new("L", (80, 40), color=200).save(tmp_path / "grey.png")
    image = load_image(tmp_path / "grey.png", 32)
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert (image == 200).all()


def test_load_image_applies_exif_orientation(tmp_path: Path) -> None:
    # Left half black, right half white, stored with "rotate 90" (orientation 6).
    image = Image.new("RGB", (40, 40), "white")
    image.paste((0, 0, 0), (0, 0, 20, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "turned.jpg", exif=exif, quality=95)
    decoded = load_image(tmp_path / "turned.jpg", 40).float()
    # After transposing, the dark half is on top, not on the left.
    assert decoded[:, :15].mean() < 60 and decoded[:, 25:].mean() > 190


def test_corrupt_image_is_skipped_and_counted(image_folder: Path) -> None:
    bad = image_folder / "class_0" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    found = scan_folder(image_folder, labelled=True)
    decoded = decode_images(found, 16)
    assert decoded.skipped == (bad,)
    assert len(decoded) == len(found) - 1 == len(decoded.labels)


def test_nothing_decodes_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="none of the 1 images"):
        decode_images(scan_folder(tmp_path), 16)


def test_stratified_subset_keeps_every_class_and_is_seeded() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 3)
    subset = stratified_subset(len(labels), labels, fraction=0.1, seed=1)
    counts = torch.bincount(labels[subset], minlength=3).tolist()
    assert counts == [5, 3, 1]
    assert torch.equal(subset, stratified_subset(len(labels), labels, fraction=0.1, seed=1))
    assert not torch.equal(subset, stratified_subset(len(labels), labels, fraction=0.1, seed=2))
    assert len(stratified_subset(83, None, count=10, seed=0)) == 10


@pytest.mark.parametrize("count", [3, 10, 37, 300, 999])
def test_a_stratified_count_is_met_exactly_with_every_class_kept(count: int) -> None:
    labels = torch.tensor([0] * 517 + [1] * 301 + [2] * 93 + [3] * 7 + [4] * 83)  # proportions that round badly
    subset = stratified_subset(len(labels), labels, count=count, seed=0)
    counts = torch.bincount(labels[subset], minlength=5)
    assert len(subset) == max(count, 5) and len(subset.unique()) == len(subset)  # --limit 300 gave 298
    assert (counts >= 1).all()
    if count >= 5:  # below one image per class, every class gets one
        shares = counts.float() / len(subset)
        assert torch.allclose(shares, torch.bincount(labels).float() / len(labels), atol=1 / count + 0.01)


def test_split_is_disjoint_and_complete() -> None:
    train, val = split_indices(100, 0.2, seed=3)
    assert len(val) == 20 and set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(100))


def test_builtin_glyphs_are_deterministic_and_balanced() -> None:
    a, b = generate_glyphs(40, size=16, seed=5), generate_glyphs(40, size=16, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.bincount(a.labels).tolist() == [4] * len(CLASSES)
    train, val = builtin_split("train", 16, limit=20), builtin_split("val", 16, limit=20)
    assert not torch.equal(train.images, val.images)
