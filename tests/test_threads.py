"""CPU threads: the cores a process may use, and the governor that follows the load."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from selfsup_core.errors import ConfigError
from selfsup_core.threads import ThreadGovernor, available_cpus, cgroup_cpu_quota, fixed_threads

IDLE = {2: 0.10, 1: 0.17}  # seconds per step: two threads win on idle cores
BUSY = {2: 3.00, 1: 0.40}  # two busy processes beside it: each op waits on a descheduled thread


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(governor: ThreadGovernor, clock: list[float], costs: dict[int, float], steps: int,
        start: int = 0) -> float:
    """``steps`` training steps whose duration depends on the governor's thread count; their time."""
    spent = 0.0
    for step in range(start, start + steps):
        governor.step((0, step))
        duration = costs[governor.threads]
        clock[0] += duration
        spent += duration
    return spent


def test_the_governor_follows_the_load_at_little_cost() -> None:
    clock = [0.0]
    governor = ThreadGovernor(2, clock=lambda: clock[0])
    idle = run(governor, clock, IDLE, 600)
    assert governor.threads == 2 and torch.get_num_threads() == 2
    assert idle < 1.02 * 600 * IDLE[2]  # probing costs under 2 %
    busy = run(governor, clock, BUSY, 600, start=600)
    assert governor.threads == 1
    assert busy < 1.10 * 600 * BUSY[1]  # 2 threads throughout would take 7.5 times as long
    again = run(governor, clock, IDLE, 600, start=1200)
    assert governor.threads == 2  # the load went: back to every core
    assert again < 1.02 * 600 * IDLE[2]


def test_a_busy_start_rules_all_cores_out_in_one_step() -> None:
    clock = [0.0]
    governor = ThreadGovernor(2, clock=lambda: clock[0])
    spent = run(governor, clock, BUSY, 20)
    assert governor.threads == 1
    assert spent < 20 * BUSY[1] + 2 * BUSY[2]  # at most two steps on both cores


def test_steps_that_are_not_consecutive_measure_nothing() -> None:
    clock = [0.0]
    governor = ThreadGovernor(2, clock=lambda: clock[0])
    for step in range(0, 40, 2):  # a gap every time (validation, an epoch's end)
        governor.step((0, step))
        clock[0] += 100.0
    assert governor.history == []
    governor.pause()
    governor.step((0, 41))
    assert governor.history == []


def test_one_core_means_nothing_to_choose() -> None:
    clock = [0.0]
    governor = ThreadGovernor(1, clock=lambda: clock[0])
    run(governor, clock, {1: 0.1}, 50)
    assert governor.candidates == [1] and governor.history == []


def test_fixed_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SELFSUP_CPU_THREADS", raising=False)
    assert fixed_threads() is None
    monkeypatch.setenv("SELFSUP_CPU_THREADS", "auto")
    assert fixed_threads() is None
    monkeypatch.setenv("SELFSUP_CPU_THREADS", "3")
    assert fixed_threads() == 3
    monkeypatch.setenv("SELFSUP_CPU_THREADS", "many")
    with pytest.raises(ConfigError, match="SELFSUP_CPU_THREADS"):
        fixed_threads()


@pytest.mark.parametrize("version", ["v2", "v1", "none"])
def test_cgroup_quota(tmp_path: Path, version: str) -> None:
    proc = tmp_path / "cgroup"
    root = tmp_path / "fs"
    if version == "v2":
        proc.write_text("0::/job\n")
        (root / "job").mkdir(parents=True)
        (root / "job" / "cpu.max").write_text("150000 100000\n")
        (root / "cpu.max").write_text("max 100000\n")
        assert cgroup_cpu_quota(root, proc) == 1.5
    elif version == "v1":
        proc.write_text("4:cpu,cpuacct:/job\n3:memory:/job\n")
        folder = root / "cpu,cpuacct" / "job"
        folder.mkdir(parents=True)
        (folder / "cpu.cfs_quota_us").write_text("50000\n")
        (folder / "cpu.cfs_period_us").write_text("100000\n")
        assert cgroup_cpu_quota(root, proc) == 0.5
    else:
        proc.write_text("0::/\n")
        root.mkdir()
        (root / "cpu.max").write_text("max 100000\n")
        assert cgroup_cpu_quota(root, proc) is None


def test_available_cpus_counts_the_affinity_and_the_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    import selfsup_core.threads as threads

    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: None)
    assert available_cpus() == 4
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: 2.5)
    assert available_cpus() == 2
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: 0.2)
    assert available_cpus() == 1


class _Tiny(pl.LightningModule):
    """A linear classifier on 8 x 8 images that records the thread count of each step."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3 * 8 * 8, 4)
        self.threads: list[int] = []

    def training_step(self, batch, batch_idx):
        images, labels = batch
        self.threads.append(torch.get_num_threads())
        return torch.nn.functional.cross_entropy(self.layer(images.float().flatten(1)), labels)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("setting", ["1", "auto"])
def test_the_data_module_sets_the_threads_of_cpu_training_and_restores_them(
    monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    from selfsup_core.data.datamodule import ImageDataModule
    from selfsup_core.data.decoded import DecodedImages

    monkeypatch.setenv("SELFSUP_CPU_THREADS", setting)
    torch.set_num_threads(2)
    data = DecodedImages(torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8), torch.arange(64) % 4)
    module = ImageDataModule(data, batch_size=8)
    model = _Tiny()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=module)
    assert len(model.threads) == 16
    if setting == "1":
        assert set(model.threads) == {1}
    else:
        assert module._governor is None  # dropped at the end of training
        assert set(model.threads) <= {1, 2}
    assert torch.get_num_threads() == 2  # given back
