"""Several processes: Lightning's DDP on the CPU (gloo), started by Lightning's own launcher.

Each run here is a real ``selfsup`` command with ``--devices 2 --strategy
ddp``: Lightning starts the second process by running the same command
line again. A third-party task (installed for the test by putting a
``dist-info`` folder on ``PYTHONPATH``, as pip would) records what every
process saw: the images of each training batch, the augmentation draws,
the losses, and which process wrote previews.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import start_until_checkpoint, write_image_folder

PROCESSES = 2
TRAIN, VAL, BATCH = 64, 16, 16  # 80 images: 64 train / 16 val; 32 per process, 2 steps per epoch
STEPS_PER_EPOCH = TRAIN // PROCESSES // BATCH

RECORDER = '''
"""A rotation-like task that records, per process, what it trained on (test only)."""
import hashlib, json, os
import torch
from selfsup_core import ClassificationTask, PretextBatch, hookimpl


def _record(entry):
    path = os.path.join(os.environ["RECORD_DIR"], f"rank{ClassificationTask.rank()}.jsonl")
    with open(path, "a") as handle:
        handle.write(json.dumps(entry) + "\\n")


def _fingerprints(images):
    pixels = (images * 255).round().to(torch.uint8).cpu()
    return [hashlib.sha1(image.numpy().tobytes()).hexdigest()[:16] for image in pixels]


class RecorderTask(ClassificationTask):
    name = "recorder"
    summary = "rotation that records what each process saw (test only)"

    @property
    def num_classes(self):
        return 4

    def make_batch(self, images):
        labels = torch.randint(4, (len(images),), device=images.device)
        inputs = torch.stack([torch.rot90(image, int(k), dims=(-2, -1)) for image, k in zip(images, labels.tolist())])
        kind = "train" if torch.is_grad_enabled() else "val"
        _record({"kind": kind, "images": _fingerprints(images), "draws": labels.tolist()})
        return PretextBatch(inputs=inputs, targets=labels)

    def loss(self, outputs, batch):
        loss = super().loss(outputs, batch)
        _record({"kind": "loss" if torch.is_grad_enabled() else "val_loss", "value": float(loss)})
        return loss

    def metrics(self, outputs, batch):
        return {**super().metrics(outputs, batch), "rank": torch.tensor(float(self.rank()))}

    def preview(self, outputs, batch):
        _record({"kind": "preview"})
        return {"input": batch.inputs}


@hookimpl
def selfsup_register_tasks():
    return [RecorderTask]
'''


@pytest.fixture
def ddp_env(tmp_path: Path) -> dict[str, str]:
    """An environment with the recorder plugin installed and a private decode cache."""
    site = tmp_path / "site"
    (site / "ddp_recorder-0.1.dist-info").mkdir(parents=True)
    (site / "ddp_recorder.py").write_text(RECORDER)
    (site / "ddp_recorder-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: ddp-recorder\n"
                                                                  "Version: 0.1\n")
    (site / "ddp_recorder-0.1.dist-info" / "entry_points.txt").write_text("[selfsup]\nrecorder = ddp_recorder\n")
    records = tmp_path / "records"
    records.mkdir()
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join([str(site), env.get("PYTHONPATH", "")]), RECORD_DIR=str(records),
               SELFSUP_CACHE_DIR=str(tmp_path / "cache"), SELFSUP_CPU_THREADS="1")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_PORT"):
        env.pop(name, None)
    return env


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """80 distinct images in 4 classes (64 train, 16 val with the default split)."""
    return write_image_folder(tmp_path / "images", per_class=20, size=32, classes=4)


def selfsup(env: dict[str, str], cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "selfsup_core.cli", *args], env=env, cwd=cwd, text=True,
                          capture_output=True, timeout=timeout, check=False)


def pretrain_args(data: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    return ["pretrain", "--task", "recorder", "--data", str(data), "--arch", "tiny", "--image-size", "32",
            "--batch-size", str(BATCH), "--val-fraction", str(VAL / (TRAIN + VAL)), "--max-epochs", str(epochs),
            "--out", str(out), "--no-progress", "--devices", str(PROCESSES), "--strategy", "ddp", *extra]


def records(env: dict[str, str], rank: int) -> list[dict]:
    path = Path(env["RECORD_DIR"]) / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def epoch_metrics(out: Path) -> list[dict[str, float]]:
    """The epoch-level rows of the run's metrics.csv, one dict per epoch (train and val merged)."""
    lines = (out / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    epochs: dict[int, dict[str, float]] = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(",")))
        merged = epochs.setdefault(int(row["epoch"]), {})
        merged.update({k: float(v) for k, v in row.items() if v and k not in ("epoch", "step")})
    return [epochs[e] for e in sorted(epochs)]


def test_two_processes_share_the_data_draw_differently_and_write_once(ddp_env: dict[str, str], images: Path,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = selfsup(ddp_env, tmp_path, *pretrain_args(images, out, epochs=2))
    assert done.returncode == 0, done.stderr[-3000:]

    seen = {rank: [r for r in records(ddp_env, rank) if r["kind"] == "train"] for rank in range(PROCESSES)}
    assert all(len(batches) == 2 * STEPS_PER_EPOCH for batches in seen.values())
    val_images = {i for rank in range(PROCESSES) for r in records(ddp_env, rank) if r["kind"] == "val"
                  for i in r["images"]}
    unions = []
    for epoch in range(2):
        shares = [{i for batch in seen[rank][epoch * STEPS_PER_EPOCH:(epoch + 1) * STEPS_PER_EPOCH]
                   for i in batch["images"]} for rank in range(PROCESSES)]
        assert [len(s) for s in shares] == [TRAIN // PROCESSES] * PROCESSES
        assert not shares[0] & shares[1], "the processes trained on the same images in one epoch"
        unions.append(shares[0] | shares[1])
        assert len(unions[-1]) == TRAIN and not unions[-1] & val_images
    assert unions[0] == unions[1]  # every epoch covers the whole training set
    first_epoch_rank0 = {i for b in seen[0][:STEPS_PER_EPOCH] for i in b["images"]}
    second_epoch_rank0 = {i for b in seen[0][STEPS_PER_EPOCH:] for i in b["images"]}
    assert first_epoch_rank0 != second_epoch_rank0, "the shards were not reshuffled between epochs"

    draws = [[d for batch in seen[rank] for d in batch["draws"]] for rank in range(PROCESSES)]
    assert draws[0] != draws[1], "both processes drew the same augmentation parameters"

    # Logged epoch metrics are over both processes: the mean of their values.
    losses = [[r["value"] for r in records(ddp_env, rank) if r["kind"] == "loss"] for rank in range(PROCESSES)]
    for epoch, row in enumerate(epoch_metrics(out)):
        assert row["train/rank_epoch"] == pytest.approx(0.5)
        mean = sum(sum(ls[epoch * STEPS_PER_EPOCH:(epoch + 1) * STEPS_PER_EPOCH]) for ls in losses) / (
            PROCESSES * STEPS_PER_EPOCH)
        assert row["train/loss_epoch"] == pytest.approx(mean, rel=1e-5)
        assert row["val/rank"] == pytest.approx(0.5)

    # One process wrote the run's files.
    assert (out / "encoder.safetensors").is_file() and (out / "results.json").is_file()
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["version_0"]
    assert sorted(p.name for p in (out / "previews").iterdir()) == ["epoch_000.png", "epoch_001.png"]
    assert not [r for r in records(ddp_env, 1) if r["kind"] == "preview"]
    assert json.loads((out / "results.json").read_text())["processes"] == PROCESSES
    assert done.stdout.count("trained in") == 1  # one report, from the first process


def test_several_processes_need_out(ddp_env: dict[str, str], tmp_path: Path) -> None:
    done = selfsup(ddp_env, tmp_path, "pretrain", "--arch", "tiny", "--devices", "2", "--strategy", "ddp")
    assert done.returncode == 1
    assert "need --out DIR" in done.stderr and "Traceback" not in done.stderr


def test_a_strategy_lightning_refuses_is_one_line(ddp_env: dict[str, str], tmp_path: Path) -> None:
    done = selfsup(ddp_env, tmp_path, "pretrain", "--arch", "tiny", "--strategy", "no-such-strategy",
                   "--out", str(tmp_path / "run"))
    assert done.returncode == 1
    assert "Lightning refuses them" in done.stderr and "Traceback" not in done.stderr


def _start_until_checkpoint(env: dict[str, str], images: Path, tmp_path: Path, min_epochs: int) -> subprocess.Popen:
    """Start a long 2-process pretraining; return once last.ckpt holds ``min_epochs``."""
    command = [sys.executable, "-m", "selfsup_core.cli", *pretrain_args(images, tmp_path / "run", epochs=300)]
    return start_until_checkpoint(command, tmp_path / "run", tmp_path / "run.log", min_epochs, env=env)


@pytest.mark.slow
def test_killed_ddp_run_resumes_from_its_last_epoch(ddp_env: dict[str, str], images: Path, tmp_path: Path) -> None:
    """SIGKILL to every process of the run (a node lost), then --resume with two processes again."""
    out = tmp_path / "run"
    process = _start_until_checkpoint(ddp_env, images, tmp_path, min_epochs=2)
    os.killpg(process.pid, signal.SIGKILL)  # both processes, at once
    process.wait(timeout=60)
    killed = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    done_epochs = killed["selfsup"]["epochs_completed"]
    assert killed["global_step"] == done_epochs * STEPS_PER_EPOCH

    resumed = selfsup(ddp_env, tmp_path, "pretrain", "--resume", "--out", str(out), "--max-epochs",
                      str(done_epochs + 1), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == (done_epochs + 1) * STEPS_PER_EPOCH
    states = final["optimizer_states"][0]["state"]
    assert int(next(iter(states.values()))["step"]) == final["global_step"]  # AdamW carried on, not restarted
    assert (out / "encoder.safetensors").is_file()



def labelled_args(data: Path) -> list[str]:
    return ["--data", str(data), "--arch", "tiny", "--image-size", "32", "--seed", "3"]


def test_knn_with_two_processes_equals_one(ddp_env: dict[str, str], images: Path, tmp_path: Path) -> None:
    """Each process computes the features of half the images; gathered, the kNN result is the same."""
    results = []
    for devices in ("1", "2"):
        out = tmp_path / f"knn-{devices}"
        done = selfsup(ddp_env, tmp_path, "evaluate", "--encoder", "none", "--protocol", "knn",
                       *labelled_args(images), "--devices", devices, "--strategy", "ddp" if devices == "2" else "auto",
                       "--out", str(out))
        assert done.returncode == 0, done.stderr[-3000:]
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        assert len(lines) == 1  # printed once, by the first process
        assert len((out / "results.jsonl").read_text().splitlines()) == 1
        assert "Initializing distributed" not in done.stdout + done.stderr  # Lightning's banners stay quiet
        results.append(lines[0])
    assert results[1]["processes"] == 2 and results[0]["processes"] == 1
    assert results[1]["top1"] == results[0]["top1"]
    assert results[1]["bank_size"] == results[0]["bank_size"] and results[1]["val_images"] == results[0]["val_images"]


def test_finetune_with_two_processes_reports_the_accuracy_of_its_weights(ddp_env: dict[str, str], images: Path,
                                                                        tmp_path: Path) -> None:
    """The validation images are shared out; the accuracy reported over both processes equals the
    accuracy of the same weights on all of them, computed in one process."""
    from selfsup_core.data.sources import load_split
    from selfsup_core.models.normalization import to_unit_range
    from selfsup_core.training.finetune_module import ClassifierModule

    out = tmp_path / "tuned"
    done = selfsup(ddp_env, tmp_path, "finetune", *labelled_args(images), "--max-epochs", "2", "--batch-size", "8",
                   "--val-fraction", "0.34", "--devices", "2", "--strategy", "ddp", "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("val accuracy (final epoch)") == 1
    reported = json.loads((out / "results.json").read_text())
    assert reported["processes"] == 2

    # The same weights, the same validation images, one process.
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    module = ClassifierModule(num_classes=4, arch="tiny", augment=[])
    module.load_state_dict(checkpoint["state_dict"])
    os.environ["SELFSUP_CACHE_DIR"] = ddp_env["SELFSUP_CACHE_DIR"]
    try:
        split = load_split(str(images), 32, val_fraction=0.34, labelled=True, seed=3)
    finally:
        del os.environ["SELFSUP_CACHE_DIR"]
    assert split.val is not None and len(split.val) % 2 == 1  # an odd count: the shares differ in size
    module.eval()
    with torch.no_grad():
        predicted = module(to_unit_range(split.val.take(slice(0, len(split.val))))).argmax(1)
    accuracy = float((predicted == split.val.labels).float().mean())
    assert reported["val_acc"] == pytest.approx(accuracy, abs=1e-6)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_and_saves_all(ddp_env: dict[str, str], images: Path, tmp_path: Path) -> None:
    """SIGTERM reaching only the second process (as a scheduler's may): both save, the run exits 143."""
    out = tmp_path / "run"
    process = _start_until_checkpoint(ddp_env, images, tmp_path, min_epochs=1)
    try:
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True,
                                  check=False).stdout.split()
        assert len(children) == 1, f"expected Lightning's one child process, found {children}"
        os.kill(int(children[0]), signal.SIGTERM)
        assert process.wait(timeout=120) == 128 + signal.SIGTERM, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "Resume with: selfsup pretrain --resume" in (tmp_path / "run.log").read_text()
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] >= STEPS_PER_EPOCH


def test_the_documented_torchrun_command_runs(ddp_env: dict[str, str], tmp_path: Path) -> None:
    """docs/index.md's torchrun line, as written, plus tiny sizes (torchrun starts both processes)."""
    docs = (Path(__file__).parents[1] / "docs" / "index.md").read_text().splitlines()
    (line,) = [text for text in docs if text.startswith("torchrun --nproc-per-node 2 ")]
    tiny = ["--arch", "tiny", "--limit", "64", "--batch-size", "16", "--max-epochs", "1", "--no-progress"]
    with socket.socket() as probe:  # torchrun's default port may be taken by another job on this machine
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run([*line.split(), *tiny], env={**ddp_env, "PET_MASTER_PORT": str(port)}, cwd=tmp_path,
                          text=True, capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "rotation-2proc"
    assert (run / "encoder.safetensors").is_file()
    assert json.loads((run / "results.json").read_text())["processes"] == 2

    # The same line again: only rank 0 checks the folder, and every process fails with its refusal at
    # once (before, rank 1 waited for rank 0 in the process group's start until torchrun killed it, 30 s on).
    started = time.monotonic()
    again = subprocess.run([*line.split(), *tiny], env={**ddp_env, "PET_MASTER_PORT": str(port)}, cwd=tmp_path,
                           text=True, capture_output=True, timeout=300, check=False)
    assert again.returncode == 1
    assert again.stderr.count("rotation-2proc is not empty: pass --resume") == 2, again.stderr[-3000:]
    assert time.monotonic() - started < 25, again.stderr[-3000:]
    assert "SIGKILL" not in again.stderr


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--num-nodes", "2", "--strategy", "ddp"], {}, "nothing started processes on the other machines"),
    (["--devices", "1", "--strategy", "ddp"], {"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2"},
     "torchrun started 2 processes, but --devices 1 --num-nodes 1 makes 1"),
    (["--devices", "[0, 1]"], {}, "Lightning refuses them"),
])
def test_process_settings_that_cannot_start_are_one_line_errors(
        args: list[str], env: dict[str, str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from selfsup_core.cli import main

    if torch.cuda.is_available() and args[0] == "--devices" and not env:
        pytest.skip("a list of GPU ids is valid on a GPU machine")
    for name in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "SLURM_NTASKS", "NODE_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    assert main(["pretrain", "--arch", "tiny", "--limit", "64", "--out", str(tmp_path / "run"), *args]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert time.monotonic() - started < 30  # refused, not waited on


def test_evaluate_with_several_processes_needs_out(ddp_env: dict[str, str], tmp_path: Path) -> None:
    done = selfsup(ddp_env, tmp_path, "evaluate", "--encoder", "none", "--protocol", "knn", "--arch", "tiny",
                   "--limit", "64", "--devices", "2", "--strategy", "ddp")
    assert done.returncode == 1 and "need --out DIR" in done.stderr and "Traceback" not in done.stderr


def test_the_command_line_releases_its_process_group(tmp_path: Path) -> None:
    # Left to the interpreter's exit, gloo's threads sometimes abort a finished rank (SIGABRT,
    # "terminate called without an active exception"): about 1 torchrun run in 10 on this machine.
    import torch.distributed as dist

    from selfsup_core.cli import main

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert main(["tasks"]) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_under_torchrun_the_resume_hint_is_the_torchrun_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from selfsup_core.training.trainer import resume_command

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert resume_command("pretrain", Path("runs/r")) == "selfsup pretrain --resume --out runs/r"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # as torchrun sets it in every process it starts
    assert resume_command("finetune", Path("runs/r")) == (
        "the same torchrun line with --resume added (torchrun ... -m selfsup_core.cli finetune --resume "
        "--out runs/r ...)")
