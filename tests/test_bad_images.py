"""Bad images and odd folders: every kind is decoded, a named skip, or (strict) a one-line error.

The corpus is generated here, file by file (no committed binaries). A
decompression bomb only needs a PNG header claiming a huge size: nothing is
allocated for its pixels.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

import selfsup_core.data.files as files_module
from selfsup_core.data.cache import load_decoded
from selfsup_core.data.datamodule import ImageDataModule
from selfsup_core.data.decoded import decode_images
from selfsup_core.data.files import DEFAULT_MAX_PIXELS, scan_folder
from selfsup_core.data.sources import SKIPPED_NAME, load_split
from selfsup_core.errors import DataError

SIZE = 16


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` RGB pixels and holds almost none."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def frames(fmt: str, colours: list[tuple[int, int, int]]) -> bytes:
    images = [Image.new("RGB", (24, 24), c) for c in colours]
    return encoded(images[0], fmt, save_all=True, append_images=images[1:])


RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)

# name in good/ -> (bytes, expected outcome): "decoded", or "skip:<reason starts with>"
FILES: dict[str, tuple[bytes, str]] = {
    "plain.png": (encoded(Image.new("RGB", (30, 20), RED), "PNG"), "decoded"),
    "upper.JPEG": (encoded(Image.new("RGB", (30, 20), RED), "JPEG"), "decoded"),
    "upper.PNG": (encoded(Image.new("RGB", (30, 20), RED), "PNG"), "decoded"),
    "cmyk.jpg": (encoded(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG"), "decoded"),
    "grey16.png": (encoded(Image.new("I;16", (30, 20), 0x8000), "PNG"), "decoded"),
    "palette.png": (encoded(Image.new("RGB", (30, 20), RED).convert("P"), "PNG"), "decoded"),
    "alpha.png": (encoded(Image.new("RGBA", (30, 20), (255, 0, 0, 100)), "PNG"), "decoded"),
    "one_pixel.png": (encoded(Image.new("RGB", (1, 1), RED), "PNG"), "decoded"),
    "wide.png": (encoded(Image.new("RGB", (2000, 2), RED), "PNG"), "decoded"),
    "animated.gif": (frames("GIF", [RED, BLUE]), "decoded"),
    "upper.GIF": (frames("GIF", [RED]), "decoded"),
    "pages.tif": (frames("TIFF", [RED, GREEN]), "decoded"),
    "upper.TIFF": (frames("TIFF", [RED]), "decoded"),
    "bomb.png": (png_header(100_000, 100_000), "skip:too large"),
    "over_budget.png": (png_header(10_000, 6_000), "skip:too large"),
    "zero.jpg": (b"", "skip:empty file"),
    "truncated.jpg": (encoded(Image.new("RGB", (64, 64), RED), "JPEG")[:300], "skip:"),
    "truncated.png": (encoded(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")[:400], "skip:"),
    "text.jpg": (b"hello, I am not a JPEG\n", "skip:does not decode"),
    "locked.png": (encoded(Image.new("RGB", (30, 20), RED), "PNG"), "skip:cannot read"),
    "photo.heic": (b"\0\0\0\x18ftypheic", "skip:unsupported format"),
}
IGNORED = ("notes.txt", ".DS_Store", "labels.csv")


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A labelled tree with one file of each kind, odd links and odd class folders."""
    root = tmp_path / "corpus"
    good = root / "good"
    good.mkdir(parents=True)
    for name, (data, _) in FILES.items():
        (good / name).write_bytes(data)
    for name in IGNORED:
        (good / name).write_text("not an image")
    (good / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (good / "loop").symlink_to(root)  # a folder linking back to its parent's parent: a loop
    outside = tmp_path / "elsewhere" / "linked"
    outside.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (20, 20), GREEN).save(outside / f"{i}.png")
    (root / "linked").symlink_to(outside, target_is_directory=True)  # a symlinked class folder
    (root / "empty").mkdir()  # an empty class folder
    (root / "only_text").mkdir()
    (root / "only_text" / "readme.txt").write_text("no images here")
    (root / "all_bad").mkdir()  # a class folder of undecodable files only
    (root / "all_bad" / "a.jpg").write_bytes(b"")
    (root / "all_bad" / "b.png").write_bytes(b"garbage")
    # Tests run as root, which reads any file: an unreadable one is simulated.
    locked = str(good / "locked.png")
    real_open = files_module.Image.open

    def open_denying(path, *args, **kwargs):
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(files_module.Image, "open", open_denying)
    return root


def outcomes(decoded, root: Path) -> dict[str, str]:
    reasons = {p.relative_to(root).as_posix(): r for p, r in zip(decoded.skipped, decoded.skip_reasons)}
    return reasons


@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("name", sorted(FILES))
def test_each_kind_of_file_has_its_outcome(corpus: Path, name: str, cache: bool) -> None:
    images = scan_folder(corpus, labelled=True)
    decoded = load_decoded(images, SIZE, cache=cache)
    reasons = outcomes(decoded, corpus)
    expected = FILES[name][1]
    if expected == "decoded":
        assert f"good/{name}" not in reasons
        assert corpus / "good" / name in images.files
    else:
        assert reasons[f"good/{name}"].startswith(expected[len("skip:"):]), reasons[f"good/{name}"]


def test_decoded_pixels_are_right(corpus: Path) -> None:
    good = corpus / "good"

    def pixel(name: str) -> list[int]:
        return files_module.load_image(good / name, SIZE)[:, SIZE // 2, SIZE // 2].tolist()

    assert pixel("cmyk.jpg")[0] > 200 and max(pixel("cmyk.jpg")[1:]) < 60
    assert all(120 <= v <= 136 for v in pixel("grey16.png"))  # 16-bit 0x8000 scaled, not clipped to 255
    assert pixel("palette.png") == list(RED)
    assert pixel("alpha.png") == list(RED)  # alpha dropped
    assert pixel("one_pixel.png") == list(RED)
    assert pixel("wide.png") == list(RED)
    assert pixel("animated.gif") == list(RED)  # the first frame
    assert pixel("pages.tif") == list(RED)  # the first page
    for name in ("upper.JPEG", "upper.PNG", "upper.GIF", "upper.TIFF"):
        assert pixel(name)[0] > 200


def test_odd_folders_are_named(corpus: Path) -> None:
    images = scan_folder(corpus, labelled=True)
    problems = {p.path.relative_to(corpus).as_posix(): p.reason for p in images.problems}
    assert problems["good/dangling.png"].startswith("broken link")
    assert problems["good/loop"].startswith("folder loop")
    assert problems["good/photo.heic"].startswith("unsupported format")
    # A symlinked class folder is followed; an empty one is reported and left out.
    assert "linked" in images.classes
    assert sum(1 for f in images.files if f.parent.name == "linked") == 2
    assert set(images.empty_classes) == {"empty", "only_text"}
    assert "empty" not in images.classes
    # Files that are not images are counted, not treated as failures.
    assert images.ignored_count == len(IGNORED) + 1  # + only_text/readme.txt
    assert not any(p.path.name in IGNORED for p in images.problems)


def test_a_class_of_undecodable_files_is_dropped_and_named(
    corpus: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images = scan_folder(corpus, labelled=True)
    assert "all_bad" in images.classes
    with caplog.at_level("WARNING"):
        decoded = decode_images(images, SIZE)
    assert decoded.classes == ("good", "linked")
    assert "all_bad" in caplog.text and "left out" in caplog.text
    assert sorted(set(decoded.labels.tolist())) == [0, 1]
    assert len(decoded) == len(decoded.labels)
    assert torch.bincount(decoded.labels).tolist()[1] == 2  # "linked" keeps its two images


def test_every_skip_is_named_in_the_log_and_in_the_run_folder(
    corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with caplog.at_level("WARNING"):
        split = load_split(str(corpus), SIZE, labelled=True, val_fraction=0.3, report_to=run)
    expected = {f"good/{n}" for n, (_, outcome) in FILES.items() if outcome != "decoded"}
    expected |= {"good/dangling.png", "good/loop", "all_bad/a.jpg", "all_bad/b.png"}
    assert {s.path.relative_to(corpus).as_posix() for s in split.skipped} == expected
    listed = (run / SKIPPED_NAME).read_text().splitlines()[1:]
    assert len(listed) == len(expected)
    assert all("\t" in line for line in listed)
    assert f"{len(expected)} of" in caplog.text and "files under" in caplog.text
    # And once more at the end of training (the data module's teardown).
    module = ImageDataModule(split.train, split.val)
    caplog.clear()
    with caplog.at_level("WARNING"):
        module.teardown("fit")
    assert f"{len(expected)} files under" in caplog.text and "good/bomb.png (too large" in caplog.text


def test_a_cache_hit_names_the_skipped_files_again(corpus: Path, caplog: pytest.LogCaptureFixture) -> None:
    images = scan_folder(corpus, labelled=True)
    built = load_decoded(images, SIZE)
    caplog.clear()
    with caplog.at_level("WARNING"):
        hit = load_decoded(images, SIZE)
    assert hit.skipped == built.skipped and hit.skip_reasons == built.skip_reasons
    assert "good/text.jpg (does not decode" in caplog.text


@pytest.mark.parametrize("first_bad", ["scan", "decode", "cache-hit", "empty-class"])
def test_strict_fails_with_one_line_naming_the_first_bad_file(
    tmp_path: Path, first_bad: str
) -> None:
    root = tmp_path / "data"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (20, 20), RED).save(root / cls / f"{i}.png")
    (root / "a" / "notes.txt").write_text("ignored, even with --strict")
    load_split(str(root), SIZE, labelled=True, val_fraction=0.5, strict=True)  # nothing bad: fine
    if first_bad == "scan":
        (root / "b" / "gone.png").symlink_to(tmp_path / "missing.png")
        expected = "gone.png: broken link"
    elif first_bad == "empty-class":
        (root / "c").mkdir()
        expected = "class folder"
    else:
        (root / "b" / "bad.jpg").write_bytes(b"not a jpeg")
        expected = "bad.jpg: does not decode"
        if first_bad == "cache-hit":
            load_split(str(root), SIZE, labelled=True, val_fraction=0.5)  # builds the entry, skipping it
    with pytest.raises(DataError) as error:
        load_split(str(root), SIZE, labelled=True, val_fraction=0.5, strict=True)
    message = str(error.value)
    assert "\n" not in message and message.startswith("--strict") and expected in message


def test_strict_on_the_command_line_is_one_line(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from selfsup_core.cli import main

    status = main(["pretrain", "--data", str(corpus), "--strict", "--arch", "tiny", "--max-epochs", "1",
                   "--out", "run", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert len(err) == 1 and err[0].startswith("selfsup: error: --strict: cannot use ") and "corpus/" in err[0]


def test_train_and_val_classes_must_match_and_the_error_names_them(tmp_path: Path) -> None:
    train, val = tmp_path / "train", tmp_path / "val"
    for root, classes in ((train, ("cat", "dog", "owl")), (val, ("cat", "dog", "eel"))):
        for cls in classes:
            (root / cls).mkdir(parents=True)
            Image.new("RGB", (20, 20), RED).save(root / cls / "0.png")
    with pytest.raises(DataError, match=r"only in .*train: owl; only in .*val: eel"):
        load_split(str(train), SIZE, val_data=str(val), labelled=True)
    # A class whose only image does not decode: dropped in train, so the lists differ after decoding.
    (val / "eel" / "0.png").rename(val / "owl.png")
    (val / "eel").rmdir()
    (val / "owl").mkdir()
    (val / "owl.png").rename(val / "owl" / "0.png")
    (train / "owl" / "0.png").write_bytes(b"broken")
    with pytest.raises(DataError, match=r"differ \(after leaving out .*only in .*val: owl"):
        load_split(str(train), SIZE, val_data=str(val), labelled=True)


def test_the_pixel_budget_can_be_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(png_header(10_000, 6_000))
    with pytest.raises(files_module.SkipImage, match=f"{DEFAULT_MAX_PIXELS:,}-pixel budget"):
        files_module.load_image(path, SIZE)
    monkeypatch.setenv("SELFSUP_MAX_IMAGE_PIXELS", "1e9")
    with pytest.raises(OSError):  # now it is decoded, and found to hold no pixel data
        files_module.load_image(path, SIZE)


@pytest.mark.slow
def test_a_huge_jpeg_decodes_in_little_memory(tmp_path: Path) -> None:
    """A 12,000 x 12,000 JPEG (432 MB as RGB) decodes at 1/8 scale: its peak memory stays small."""
    path = tmp_path / "huge.jpg"
    make = ("from PIL import Image; "
            f"Image.effect_noise((12000, 12000), 40).convert('RGB').save({str(path)!r}, quality=50)")
    subprocess.run([sys.executable, "-c", make], check=True)
    measure = textwrap.dedent(f"""
        import resource
        import torch
        from selfsup_core.data.files import load_image
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        image = load_image({str(path)!r}, 64)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert image.shape == (3, 64, 64)
        print((after - before) // 1024)
    """)
    grown_mb = int(subprocess.run([sys.executable, "-c", measure], check=True, capture_output=True,
                                  text=True).stdout.split()[-1])
    assert grown_mb < 60, f"decoding took {grown_mb} MB more"
