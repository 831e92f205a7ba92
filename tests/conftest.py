"""Shared fixtures: tiny generated image folders and an isolated working folder."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from PIL import Image

from selfsup_core.data.glyphs import generate_glyphs
from selfsup_core.plugin.host import get_plugin_host

_SHARED_IMAGENETTE = Path(__file__).parents[1] / ".." / "shared" / "data" / "imagenette2-224"
IMAGENETTE = Path(os.environ.get("SELFSUP_IMAGENETTE", _SHARED_IMAGENETTE))


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own folder (``runs/`` lands there) with its own cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SELFSUP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SELFSUP_DISABLE_PLUGINS", raising=False)
    torch.manual_seed(0)
    get_plugin_host.cache_clear()  # a test that fakes entry points gets its own host


def write_image_folder(root: Path, per_class: int = 6, size: int = 40, classes: int = 3, seed: int = 0) -> Path:
    """An ImageFolder-layout tree of glyph images, PNG and JPEG with mixed-case suffixes."""
    data = generate_glyphs(per_class * 10, size=size, seed=seed)
    counts = dict.fromkeys(range(classes), 0)
    for i, (image, label) in enumerate(zip(data.images, data.labels.tolist())):
        if label >= classes or counts[label] >= per_class:
            continue
        counts[label] += 1
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        suffix = (".png", ".JPG", ".jpeg")[i % 3]
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"img_{i}{suffix}")
    return root


def checkpoint_epochs(out: Path) -> int:
    """Epochs completed in ``out/checkpoints/last.ckpt``; -1 while there is none (or it is being replaced)."""
    path = out / "checkpoints" / "last.ckpt"
    if not path.is_file():
        return -1
    try:
        return int(torch.load(path, weights_only=True)["selfsup"]["epochs_completed"])
    except Exception:  # noqa: BLE001 - being replaced right now: look again
        return -1


def start_until_checkpoint(command: list[str], out: Path, log: Path, min_epochs: int, *,
                           env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.Popen:
    """Start ``command`` in its own session; return once ``out``'s last.ckpt holds ``min_epochs`` epochs.

    Its own session, so that ``os.killpg(process.pid, ...)`` reaches every process it starts.
    """
    with log.open("wb") as stream:
        process = subprocess.Popen(command, env=env, cwd=log.parent, stdout=stream, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    deadline = time.monotonic() + timeout
    while checkpoint_epochs(out) < min_epochs:
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"no checkpoint of {min_epochs} epoch(s) within {timeout} s (exit {process.poll()}):\n"
                        f"{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return process


@contextmanager
def mounted(path: Path, *options: str):
    """Mount a tmpfs (or remount a bind mount read-only) at ``path`` when this process may; yields whether it did."""
    path.mkdir(parents=True, exist_ok=True)
    if "ro" in options:
        command = [["mount", "--bind", str(path), str(path)], ["mount", "-o", "remount,ro,bind", str(path)]]
    else:
        command = [["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)]]
    done = 0
    try:
        for step in command:
            if subprocess.run(step, capture_output=True).returncode != 0:
                break
            done += 1
        yield done == len(command)
    finally:
        if done:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """3 classes x 6 images of 40 x 40."""
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def imagenette() -> Path:
    """The Imagenette folder, or a clean skip when it is absent."""
    if not (IMAGENETTE / "train").is_dir():
        pytest.skip("Imagenette not found: set SELFSUP_IMAGENETTE")
    return IMAGENETTE


class FakeEntryPoint:
    """Stands in for an installed entry point of the ``selfsup`` group.

    ``load()`` raises ``target`` when it is an exception, imports it when it is
    a module name, and returns it otherwise.
    """

    def __init__(self, name: str, dist: str, target: object) -> None:
        self.name, self.group, self.target = name, "selfsup", target
        self.dist = type("Dist", (), {"name": dist})()

    def load(self) -> object:
        if isinstance(self.target, BaseException):
            raise self.target
        if isinstance(self.target, str):
            return importlib.import_module(self.target)
        return self.target


@pytest.fixture
def fake_entry_points(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeEntryPoint]]:
    """Entry points appended to this list are installed in front of the real ones."""
    extra: list[FakeEntryPoint] = []
    real = importlib.metadata.entry_points

    def entry_points(**params: str) -> object:
        # Other libraries (triton, imported by Lightning) look up their own groups.
        return [*extra, *real(**params)] if params.get("group") == "selfsup" else real(**params)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    yield extra
