"""The decode cache is built once per machine when several processes (torchrun's ranks) ask at once."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import write_image_folder

from selfsup_core.data import cache as cache_module
from selfsup_core.data.cache import load_decoded
from selfsup_core.data.decoded import DecodedImages, decode_images
from selfsup_core.data.files import scan_folder

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fcntl locks: POSIX only")

SIZE = 16
PROCESSES = 3

# One rank: import everything, say it is ready, wait for the start signal, load.
# Decoding is slowed down so the build surely lasts until every other rank has asked.
RANK = r"""
import logging, sys, time
from pathlib import Path

import torch

import selfsup_core.data.cache as cache
from selfsup_core.data.files import scan_folder

folder, ready, go, out = map(Path, sys.argv[1:5])
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
original = cache._decoded


def slow(*args, **kwargs):
    print("DECODING", flush=True)
    time.sleep(1.5)
    yield from original(*args, **kwargs)


cache._decoded = slow
images = scan_folder(folder)
ready.touch()
while not go.exists():
    time.sleep(0.002)
data = cache.load_decoded(images, 16)
torch.save({"images": data.images.clone(), "labels": data.labels}, out)
"""


def start_ranks(folder: Path, work: Path, cache_dir: Path) -> list[subprocess.Popen[str]]:
    """Start the ranks and release them together once all are ready (imports take seconds)."""
    env = {**os.environ, "SELFSUP_CACHE_DIR": str(cache_dir)}
    ranks = [subprocess.Popen([sys.executable, "-c", RANK, str(folder), str(work / f"ready{i}"), str(work / "go"),
                               str(work / f"out{i}.pt")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(PROCESSES)]
    deadline = time.monotonic() + 120
    while not all((work / f"ready{i}").exists() for i in range(PROCESSES)):
        if time.monotonic() > deadline or any(rank.poll() is not None for rank in ranks):
            for rank in ranks:
                rank.kill()
            pytest.fail("a rank did not start: " + "".join(rank.communicate()[0] for rank in ranks))
        time.sleep(0.01)
    (work / "go").touch()
    return ranks


def test_ranks_started_together_decode_the_folder_once(tmp_path: Path) -> None:
    folder, cache_dir = write_image_folder(tmp_path / "data", per_class=20, classes=2), tmp_path / "cache"
    ranks = start_ranks(folder, tmp_path, cache_dir)
    outputs = [rank.communicate(timeout=180)[0] for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks), "\n".join(outputs)
    log = "\n".join(outputs)
    assert log.count("DECODING") == 1, log
    assert log.count("decode cache built") == 1, log
    assert log.count("waiting for another process building the decode cache entry") == PROCESSES - 1, log
    assert log.count("built by another process") == PROCESSES - 1, log
    results = [torch.load(tmp_path / f"out{i}.pt") for i in range(PROCESSES)]
    reference = decode_images(scan_folder(folder), SIZE)
    for result in results:
        assert torch.equal(result["images"], reference.images)
        assert torch.equal(result["labels"], reference.labels)
    left = sorted(p.name for p in (cache_dir / "decoded").iterdir())
    assert len(left) == 1 and not left[0].endswith(".build-lock"), left  # one entry, no lock file behind


def entry_path(folder: Path) -> Path:
    """The cache entry ``load_decoded(scan_folder(folder), SIZE)`` uses."""
    key = cache_module.cache_key(scan_folder(folder), SIZE)
    decoded = cache_module._checked_cache_dir(None, folder) / "decoded"
    return decoded / f"{cache_module._safe_name(folder)}-{SIZE}px-pil-{key[:24]}"


def test_a_lock_file_that_cannot_be_opened_builds_without_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As in a cache folder where the lock file cannot be created: the entry is still built and used."""
    folder = write_image_folder(tmp_path / "data", per_class=3, classes=2)
    images = scan_folder(folder)
    entry = entry_path(folder)
    entry.with_name(entry.name + ".build-lock").mkdir(parents=True)  # open() of it fails
    with caplog.at_level(logging.DEBUG, logger=cache_module.__name__):
        result = load_decoded(images, SIZE)
    assert "building without it" in caplog.text and "decode cache built" in caplog.text
    assert torch.equal(result.images, decode_images(images, SIZE).images)


def test_a_held_lock_makes_the_next_builder_wait_then_use_the_entry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In one process: the lock is held while a thread asks; that thread then maps the entry built meanwhile."""
    folder = write_image_folder(tmp_path / "data", per_class=3, classes=2)
    images = scan_folder(folder)
    entry = entry_path(folder)
    results: list[DecodedImages] = []
    waiter = threading.Thread(target=lambda: results.append(load_decoded(images, SIZE)))
    with caplog.at_level(logging.INFO, logger=cache_module.__name__):
        with cache_module._build_lock(entry) as locked:
            assert locked
            waiter.start()
            deadline = time.monotonic() + 60
            while "waiting for another process" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.01)
            key = cache_module.cache_key(images, SIZE)
            built = cache_module._build_entry(entry, key, images, SIZE, "pil", 0)
        waiter.join(60)
    assert "waiting for another process" in caplog.text and "built by another process" in caplog.text
    assert torch.equal(results[0].images, built.images)
    assert not entry.with_name(entry.name + ".build-lock").exists()
