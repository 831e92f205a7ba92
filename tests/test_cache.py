"""The decode cache: hits, invalidation, corruption, skipped files, placement, races."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import mounted
from PIL import Image

import selfsup_core.data.files as data_module
from selfsup_core.data import cache as cache_module
from selfsup_core.data.cache import cache_key, default_cache_dir, load_decoded
from selfsup_core.data.decoded import decode_images
from selfsup_core.data.files import scan_folder
from selfsup_core.errors import ConfigError, DataError

SIZE = 32


def write_images(root: Path, per_class: int = 3, classes: tuple[str, ...] = ("cat", "dog")) -> Path:
    """A tiny ImageFolder tree of 32 x 32 PNGs and JPEGs (oblong, so they get cropped)."""
    generator = torch.Generator().manual_seed(0)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (40, 32, 3), generator=generator, dtype=torch.uint8)
            image = Image.frombytes("RGB", (32, 40), bytes(pixels.flatten().tolist()))
            image.save(folder / f"{c}_{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_images(tmp_path / "data")


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("SELFSUP_CACHE_DIR", str(path))
    return path


@pytest.fixture
def decode_count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of data.load_image (num_workers=0 keeps them in this process)."""
    calls = [0]
    original = data_module.load_image

    def counting(path, size):
        calls[0] += 1
        return original(path, size)

    monkeypatch.setattr(data_module, "load_image", counting)
    return calls


def entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in (cache_dir / "decoded").iterdir() if not p.name.startswith("."))


def assert_same(a, b) -> None:
    assert torch.equal(a.images, b.images)
    assert (a.labels is None and b.labels is None) or torch.equal(a.labels, b.labels)
    assert a.classes == b.classes
    assert a.skipped == b.skipped


@pytest.mark.parametrize("num_workers", [0, 2])
def test_cache_gives_the_same_data_as_decode_images(
    folder: Path, cache_dir: Path, num_workers: int
) -> None:
    images = scan_folder(folder, labelled=True)
    reference = decode_images(images, SIZE)
    built = load_decoded(images, SIZE, num_workers=num_workers)
    hit = load_decoded(images, SIZE, num_workers=num_workers)
    assert_same(built, reference)
    assert_same(hit, reference)
    assert hit.images.shape == (6, 3, SIZE, SIZE) and hit.images.dtype == torch.uint8


def test_without_cache_nothing_is_written(folder: Path, cache_dir: Path) -> None:
    images = scan_folder(folder)
    assert_same(load_decoded(images, SIZE, cache=False), decode_images(images, SIZE))
    assert not cache_dir.exists()


def test_second_call_is_a_hit(folder: Path, cache_dir: Path, decode_count: list[int]) -> None:
    images = scan_folder(folder)
    load_decoded(images, SIZE)
    assert decode_count[0] == 6
    load_decoded(images, SIZE)
    assert decode_count[0] == 6
    assert len(entries(cache_dir)) == 1


def test_size_and_decoder_are_part_of_the_key(folder: Path) -> None:
    images = scan_folder(folder)
    assert cache_key(images, 32) != cache_key(images, 64)
    assert cache_key(images, 32, "pil") != cache_key(images, 32, "nvjpeg")
    assert cache_key(images, 32) == cache_key(scan_folder(folder), 32)


@pytest.mark.parametrize("change", ["add", "remove", "touch"])
def test_a_changed_folder_rebuilds(folder: Path, cache_dir: Path, decode_count: list[int],
                                   change: str) -> None:
    first = load_decoded(scan_folder(folder), SIZE)
    victim = folder / "cat" / "0_0.jpg"
    if change == "add":
        Image.new("RGB", (32, 32), (1, 2, 3)).save(folder / "dog" / "extra.png")
    elif change == "remove":
        victim.unlink()
    else:
        stat = victim.stat()
        os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    calls_before = decode_count[0]
    images = scan_folder(folder)
    second = load_decoded(images, SIZE)
    assert decode_count[0] - calls_before == len(images)  # decoded afresh
    assert_same(second, decode_images(images, SIZE))
    assert len(second) == len(first) + {"add": 1, "remove": -1, "touch": 0}[change]


def _corrupt(entry: Path, how: str) -> None:
    if how == "truncate":
        with open(entry / "images.u8", "r+b") as handle:
            handle.truncate(entry.joinpath("images.u8").stat().st_size - 100)
    elif how == "marker":
        (entry / "COMPLETE").unlink()
    elif how == "metadata":
        (entry / "meta.json").write_text("{not json")
    elif how == "consistent-garbage-metadata":
        # Valid JSON with a checksum to match, but describing other files.
        meta = b'{"format": 1, "key": "x", "count": 1, "total": 1, "skipped": []}'
        (entry / "meta.json").write_bytes(meta)
        marker = json.loads((entry / "COMPLETE").read_text())
        marker["meta_sha256"] = cache_module._sha256(meta)
        (entry / "COMPLETE").write_text(json.dumps(marker))
    elif how == "array-bytes":
        with open(entry / "images.u8", "r+b") as handle:
            handle.write(b"\xff" * 64)
    elif how == "array-missing":
        (entry / "images.u8").unlink()


@pytest.mark.parametrize(
    "how",
    ["truncate", "marker", "metadata", "consistent-garbage-metadata", "array-bytes", "array-missing"],
)
def test_a_corrupt_cache_is_detected_and_rebuilt(
    folder: Path, cache_dir: Path, decode_count: list[int], how: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    images = scan_folder(folder)
    # A copy: corrupting the file in place also shows through a live mapping
    # (selfsup never does that; it replaces entries with new files).
    reference = load_decoded(images, SIZE).images.clone()
    _corrupt(entries(cache_dir)[0], how)
    calls_before = decode_count[0]
    with caplog.at_level("WARNING", logger="selfsup_core.data.cache"):
        rebuilt = load_decoded(images, SIZE)
    assert "corrupt" in caplog.text
    assert decode_count[0] - calls_before == len(images)
    # The rebuilt entry is whole again: the next call is a hit.
    again = load_decoded(images, SIZE)
    assert decode_count[0] - calls_before == len(images)
    assert torch.equal(rebuilt.images, reference)
    assert_same(again, decode_images(images, SIZE))


def test_a_corrupt_image_is_skipped_and_reported_on_every_run(
    folder: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = folder / "dog" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    images = scan_folder(folder, labelled=True)
    built = load_decoded(images, SIZE)
    assert built.skipped == (bad,)
    assert len(built) == len(images) - 1
    caplog.clear()
    with caplog.at_level("WARNING"):
        hit = load_decoded(images, SIZE)
    assert hit.skipped == (bad,)
    assert "1 of 7 files under" in caplog.text and "dog/broken.jpg (does not decode" in caplog.text
    assert_same(hit, decode_images(images, SIZE))
    meta = json.loads((entries(cache_dir)[0] / "meta.json").read_text())
    assert meta["skipped_files"] == ["dog/broken.jpg"]


def test_no_image_decodes(tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="none of the 1 images"):
        load_decoded(scan_folder(tmp_path / "bad"), SIZE)
    assert not entries(cache_dir)  # nothing half-built left behind


def test_cache_is_never_inside_the_data_folder(folder: Path, cache_dir: Path) -> None:
    images = scan_folder(folder)
    before = sorted(p for p in folder.rglob("*"))
    load_decoded(images, SIZE)
    assert sorted(p for p in folder.rglob("*")) == before
    assert cache_dir.exists()
    with pytest.raises(ConfigError, match="inside the data folder"):
        load_decoded(images, SIZE, cache_dir=folder / ".cache")
    with pytest.raises(ConfigError, match="inside the data folder") as error:
        load_decoded(images, SIZE, cache_dir=folder)
    assert "--cache-dir" not in str(error.value)  # pretrain, finetune and evaluate have no such flag


def test_cache_dir_argument_and_defaults(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SELFSUP_CACHE_DIR", str(tmp_path / "from-env"))
    assert default_cache_dir() == tmp_path / "from-env"
    load_decoded(scan_folder(folder), SIZE, cache_dir=tmp_path / "explicit")
    assert entries(tmp_path / "explicit") and not (tmp_path / "from-env").exists()
    monkeypatch.delenv("SELFSUP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "selfsup"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "selfsup"


def test_cached_images_are_read_only_for_other_runs(folder: Path, cache_dir: Path) -> None:
    images = scan_folder(folder)
    first = load_decoded(images, SIZE)
    original = first.images[0].clone()
    first.images[0].zero_()  # a private mapping: the file keeps its bytes
    assert torch.equal(load_decoded(images, SIZE).images[0], original)


def test_a_run_that_loses_the_race_uses_the_winners_entry(
    folder: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run publishes the same key while this one decodes: no error, one entry."""
    images = scan_folder(folder)
    original = cache_module._write_array
    raced = []

    def decode_while_another_run_finishes(*args, **kwargs):
        if not raced:
            raced.append(True)
            load_decoded(images, SIZE)  # the "other run" builds and publishes first
        return original(*args, **kwargs)

    monkeypatch.setattr(cache_module, "_write_array", decode_while_another_run_finishes)
    result = load_decoded(images, SIZE)
    assert raced
    assert_same(result, decode_images(images, SIZE))
    assert len(entries(cache_dir)) == 1
    assert not [p for p in (cache_dir / "decoded").iterdir() if p.name.startswith(".")]


def test_concurrent_builds_agree(folder: Path, cache_dir: Path) -> None:
    images = scan_folder(folder)
    results, errors = [], []

    def build() -> None:
        try:
            results.append(load_decoded(images, SIZE))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    reference = decode_images(images, SIZE)
    for result in results:
        assert_same(result, reference)
    assert len(entries(cache_dir)) == 1
    assert not [p for p in (cache_dir / "decoded").iterdir() if p.name.startswith(".")]


def test_unknown_decoder(folder: Path, cache_dir: Path) -> None:
    with pytest.raises(ConfigError, match="unknown decoder"):
        load_decoded(scan_folder(folder), SIZE, decoder="magic")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without a GPU")
def test_nvjpeg_without_gpu_is_a_clear_error(folder: Path, cache_dir: Path) -> None:
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        load_decoded(scan_folder(folder), SIZE, decoder="nvjpeg")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nvjpeg_cache(folder: Path, cache_dir: Path) -> None:
    (folder / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    images = scan_folder(folder, labelled=True)
    built = load_decoded(images, SIZE, decoder="nvjpeg")
    hit = load_decoded(images, SIZE, decoder="nvjpeg")
    uncached = load_decoded(images, SIZE, decoder="nvjpeg", cache=False)
    assert_same(built, hit)
    assert_same(built, uncached)
    assert len(built.skipped) == 1 and len(built) == len(images) - 1
    # Same picture as PIL's, up to resampling differences.
    pil = decode_images(images, SIZE)
    assert (built.images.float() - pil.images.float()).abs().mean() < 20
    assert len(entries(cache_dir)) == 1


def test_leftovers_of_killed_runs_are_removed(folder: Path, cache_dir: Path) -> None:
    decoded = cache_dir / "decoded"
    dead, alive = decoded / ".tmp-x-dead", decoded / ".tmp-x-alive"
    old, recent = decoded / ".tmp-x-old", decoded / ".tmp-x-recent"  # without a lock: an older version's
    trash = decoded / ".trash-x-1-2"
    for path in (dead, alive, old, recent, trash):
        path.mkdir(parents=True)
        (path / "images.u8").write_bytes(b"half")
    (dead / ".lock").write_bytes(b"")  # its run died: nobody holds the lock
    with open(alive / ".lock", "wb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a run still building (another open file: a conflicting lock)
        os.utime(old, (0, 0))  # long ago
        load_decoded(scan_folder(folder), SIZE)
        assert not dead.exists() and not old.exists() and not trash.exists()
        assert alive.exists() and recent.exists()


def test_runs_see_the_same_data_with_and_without_the_cache(folder: Path, cache_dir: Path) -> None:
    """What pretrain and finetune load (sources.load_split): same images, labels, order."""
    sources = pytest.importorskip("selfsup_core.data.sources")
    options = dict(val_fraction=0.34, labelled=True, seed=3)
    cached = sources.load_split(str(folder), SIZE, cache=True, **options)
    again = sources.load_split(str(folder), SIZE, cache=True, **options)
    uncached = sources.load_split(str(folder), SIZE, cache=False, **options)
    assert entries(cache_dir)
    for split in ("train", "val"):
        assert_same(getattr(cached, split), getattr(uncached, split))
        assert_same(getattr(again, split), getattr(uncached, split))


def test_an_unwritable_cache_folder_falls_back_to_memory(
    folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    images = scan_folder(folder)
    with caplog.at_level("WARNING"):
        result = load_decoded(images, SIZE, cache_dir=blocker)
    assert "cannot write the decode cache" in caplog.text
    assert_same(result, decode_images(images, SIZE))


# -- faults: a full disk, corruption anywhere, a read-only folder; eviction; selfsup cache ---------------


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["reserve", "write"])
def test_a_full_disk_decodes_into_memory_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    """The run goes on (no SIGBUS), in memory, and the half-written entry is gone at once."""
    folder = write_images(tmp_path / "data", per_class=10)  # 20 x 3 x 64 x 64 = 240 kB to cache
    images = scan_folder(folder)
    small = tmp_path / "small"
    with mounted(small, "size=128k") as real_disk:
        if where == "write":  # a file system without fallocate: the writes themselves fail
            monkeypatch.setattr(cache_module, "_reserve", lambda fd, n: None)
        if not real_disk:  # no mount here: the same errors, simulated
            monkeypatch.setattr(cache_module, "_reserve" if where == "reserve" else "_write_chunk", _no_space)
        with caplog.at_level("WARNING"):
            result = load_decoded(images, 64, cache_dir=small)
        assert "No space left on device" in caplog.text and "decoding into memory instead" in caplog.text
        assert_same(result, decode_images(images, 64))
        assert not list((small / "decoded").iterdir())  # nothing left behind
        if real_disk:
            usage = os.statvfs(small)
            assert usage.f_bfree == usage.f_blocks


@pytest.mark.parametrize("chunk_images", [None, 3])
def test_corruption_of_any_cached_image_is_detected_and_rebuilt(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    chunk_images: int | None,
) -> None:
    if chunk_images:
        monkeypatch.setattr(cache_module, "_CHUNK_BYTES", chunk_images * 3 * SIZE * SIZE)
    folder = write_images(tmp_path / "data", per_class=20)
    images = scan_folder(folder)
    reference = decode_images(images, SIZE)
    load_decoded(images, SIZE)
    entry = entries(cache_dir)[0]
    # Image 1 is none of the 16 the marker of format 1 sampled; 38 lies in the last, partial chunk.
    for index in (1, 20, 38):
        with open(entry / "images.u8", "r+b") as handle:
            handle.seek(index * 3 * SIZE * SIZE + 100)
            byte = handle.read(1)
            handle.seek(-1, os.SEEK_CUR)
            handle.write(bytes([byte[0] ^ 0x01]))  # one bit
        caplog.clear()
        with caplog.at_level("WARNING"):
            rebuilt = load_decoded(images, SIZE)
        assert "corrupt" in caplog.text and "do not match their checksum" in caplog.text
        if chunk_images:
            first = index // chunk_images * chunk_images
            assert f"images {first}-{min(first + chunk_images, len(images)) - 1}" in caplog.text
        assert_same(rebuilt, reference)
        entry = entries(cache_dir)[0]


def test_a_corrupt_entry_in_a_read_only_cache_folder_is_not_used(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    images = scan_folder(folder)
    shared = tmp_path / "shared"
    load_decoded(images, SIZE, cache_dir=shared)
    (entries(shared)[0] / "COMPLETE").unlink()
    with mounted(shared, "ro") as read_only:
        if not read_only:
            def refuse(*args, **kwargs):
                raise OSError(errno.EROFS, "Read-only file system")

            monkeypatch.setattr(cache_module.os, "rename", refuse)
            monkeypatch.setattr(cache_module.tempfile, "mkdtemp", refuse)
        with caplog.at_level("WARNING"):
            result = load_decoded(images, SIZE, cache_dir=shared)
    assert "Read-only file system" in caplog.text and "decoding into memory instead" in caplog.text
    assert_same(result, decode_images(images, SIZE))


def _age(entry: Path, seconds_ago: float) -> None:
    moment = time.time() - seconds_ago
    os.utime(entry / "COMPLETE", (moment, moment))


def test_the_least_recently_used_entries_are_evicted_over_the_cap(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lists = {name: scan_folder(write_images(tmp_path / name)) for name in ("a", "b", "c")}
    load_decoded(lists["a"], SIZE)
    one_entry = cache_module.list_entries(cache_dir)[0].bytes
    monkeypatch.setenv("SELFSUP_CACHE_MAX_GB", str(2.5 * one_entry / 1e9))  # room for two
    load_decoded(lists["b"], SIZE)
    by_folder = {Path(e.folder).name: e.path for e in cache_module.list_entries(cache_dir)}
    _age(by_folder["a"], 200)
    _age(by_folder["b"], 100)
    load_decoded(lists["a"], SIZE)  # a hit: "a" is now the most recently used
    load_decoded(lists["c"], SIZE)  # needs room: "b", least recently used, goes
    assert sorted(Path(e.folder).name for e in cache_module.list_entries(cache_dir)) == ["a", "c"]
    # A single entry larger than the cap is still built and kept (it is the one in use).
    monkeypatch.setenv("SELFSUP_CACHE_MAX_GB", "0")
    load_decoded(lists["b"], SIZE)
    assert [Path(e.folder).name for e in cache_module.list_entries(cache_dir)] == ["b"]
    monkeypatch.setenv("SELFSUP_CACHE_MAX_GB", "lots")
    with pytest.raises(ConfigError, match="SELFSUP_CACHE_MAX_GB"):
        load_decoded(lists["c"], SIZE)


def test_selfsup_cache_list_verify_clear(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from selfsup_core.cli import main

    first, second = (scan_folder(write_images(tmp_path / name)) for name in ("first", "second"))
    load_decoded(first, SIZE)
    load_decoded(second, SIZE)
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert "2 entries" in out and str(first.root.resolve()) in out and str(second.root.resolve()) in out
    assert "images" in out and "last used" in out and " 6 " in out

    assert main(["cache", "verify"]) == 0
    assert "all whole" in capsys.readouterr().out
    victim = next(e for e in cache_module.list_entries(cache_dir) if e.folder.endswith("second"))
    with open(victim.path / "images.u8", "r+b") as handle:
        handle.seek(5000)
        handle.write(b"\x00\xff")
    assert main(["cache", "verify"]) == 1
    out = capsys.readouterr().out
    assert "CORRUPT" in out and victim.path.name in out and "1 corrupt, removed" in out
    assert len(cache_module.list_entries(cache_dir)) == 1

    load_decoded(second, SIZE)
    (old,) = [e for e in cache_module.list_entries(cache_dir) if e.folder.endswith("first")]
    _age(old.path, 40 * 86400)
    assert main(["cache", "clear", "--older-than", "30"]) == 0
    assert "1 entries removed" in capsys.readouterr().out
    assert [e.folder for e in cache_module.list_entries(cache_dir)] == [str(second.root.resolve())]

    load_decoded(first, SIZE)
    assert main(["cache", "clear", "--max-gb", "0.00002"]) == 0  # 20 kB: room for one entry
    assert len(cache_module.list_entries(cache_dir)) == 1
    assert main(["cache", "clear", "--cache-dir", str(cache_dir)]) == 0
    assert cache_module.list_entries(cache_dir) == []
    assert main(["cache", "list"]) == 0 and "0 entries" in capsys.readouterr().out
