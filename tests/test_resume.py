"""Nothing lost: a checkpoint every epoch, resumable after SIGKILL, SIGINT or SIGTERM,
with the run's own settings; clear one-line errors for bad checkpoints and full disks."""

from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from conftest import mounted, start_until_checkpoint

from selfsup_core.cli import main
from selfsup_core.errors import OutputError
from selfsup_core.ioutil import atomic_write_text
from selfsup_core.training.pretext_module import PretextModule
from selfsup_core.training.trainer import build_trainer, checkpoint_bytes, fit, read_checkpoint, warn_if_short_of_space

TINY = ["--arch", "tiny", "--image-size", "32", "--batch-size", "16", "--limit", "64", "--no-progress"]
STEPS_PER_EPOCH = 64 // 16
LONG = "300"  # epochs: far more than a test waits for before it stops the run


def _pretrain(out: Path, *extra: str) -> int:
    return main(["pretrain", *TINY, "--out", str(out), *extra])


def _resume(out: Path, *extra: str) -> int:
    return main(["pretrain", "--resume", "--out", str(out), "--no-progress", *extra])


def _checkpoint(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)


def _adam_steps(checkpoint: dict) -> int:
    """How many steps the saved AdamW state has taken (a fresh optimiser restarts at 0)."""
    states = checkpoint["optimizer_states"][0]["state"]
    assert states, "no optimiser state in the checkpoint"
    return int(next(iter(states.values()))["step"])


# -- the pinned Lightning does not do this by itself: ModelCheckpoint(save_top_k=0, save_last=True) ---------
# -- writes last.ckpt only when training ends, so a killed run would lose every epoch.                ---------


class _Linear(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=0.01)


def test_last_checkpoint_is_written_at_every_epoch_end(tmp_path: Path) -> None:
    seen: list[object] = []
    path = tmp_path / "checkpoints" / "last.ckpt"

    class Probe(pl.Callback):
        def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            seen.append(read_checkpoint(path).epochs_completed if path.is_file() else None)

    dataset = torch.utils.data.TensorDataset(torch.randn(16, 4))
    data = pl.LightningDataModule.from_datasets(dataset, dataset, batch_size=8)
    trainer = build_trainer(tmp_path, max_epochs=3, progress=False)
    trainer.callbacks.append(Probe())
    fit(trainer, _Linear(), data, run_dir=tmp_path, ckpt_path=None)
    assert seen == [None, 1, 2]  # during training, not only at its end
    assert read_checkpoint(path).epochs_completed == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_checkpoint_every_n_steps(tmp_path: Path) -> None:
    steps: list[int] = []
    path = tmp_path / "checkpoints" / "last.ckpt"

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: object,
                                 batch_idx: int) -> None:
            steps.append(read_checkpoint(path).global_step if path.is_file() else -1)

    dataset = torch.utils.data.TensorDataset(torch.randn(32, 4))
    data = pl.LightningDataModule.from_datasets(dataset, batch_size=4)  # 8 steps an epoch
    trainer = build_trainer(tmp_path, max_epochs=1, progress=False, monitor_val=False, checkpoint_every_steps=3)
    trainer.callbacks.append(Probe())
    fit(trainer, _Linear(), data, run_dir=tmp_path, ckpt_path=None)
    assert steps == [-1, -1, -1, 3, 3, 3, 6, 6]


# -- interrupted runs ---------------------------------------------------------------------------------------


@pytest.fixture
def harmless_stray_signals() -> Iterator[None]:
    """A signal that lands after ``main()`` returned must not end the test process."""
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)


@pytest.mark.usefixtures("harmless_stray_signals")
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_save_a_checkpoint_then_resume_twice(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], signum: int, code: int) -> None:
    out = tmp_path / "run"
    checkpoint = out / "checkpoints" / "last.ckpt"
    sent, finished = threading.Event(), threading.Event()

    def signal_once_saved() -> None:  # as a user or a scheduler would: while training runs
        while not finished.is_set():
            if checkpoint.is_file():
                os.kill(os.getpid(), signum)
                sent.set()
                return
            time.sleep(0.01)

    sender = threading.Thread(target=signal_once_saved, daemon=True)
    sender.start()
    try:
        assert _pretrain(out, "--max-epochs", LONG) == code
    finally:
        finished.set()
        sender.join()
    assert sent.is_set()
    err = capsys.readouterr().err
    assert f"interrupted by {signal.Signals(signum).name}" in err and "Traceback" not in err
    assert f"selfsup pretrain --resume --out {out}" in err
    assert not (out / "encoder.safetensors").exists()
    stopped = _checkpoint(out)
    assert stopped["selfsup"]["epochs_completed"] >= 1 and _adam_steps(stopped) == stopped["global_step"] > 0

    # Resume: the run's own settings (tiny arch, --limit 64) without repeating them.
    target = stopped["selfsup"]["epochs_completed"] + 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _resume(out, "--max-epochs", str(target)) == 0
    # Mid-epoch on purpose (docs/index.md): Lightning's "dataloader is not resumable" alarm stays hidden.
    assert not [w for w in caught if "ended before the epoch ended" in str(w.message)]
    resumed = _checkpoint(out)
    assert resumed["global_step"] == target * STEPS_PER_EPOCH == _adam_steps(resumed)
    assert (out / "encoder.safetensors").is_file()
    # A resume after a resume continues from the latest epoch; still one checkpoint file.
    assert _resume(out, "--max-epochs", str(target + 1)) == 0
    again = _checkpoint(out)
    assert again["selfsup"]["epochs_completed"] == target + 1
    assert again["global_step"] == (target + 1) * STEPS_PER_EPOCH == _adam_steps(again)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt"]
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["version_0", "version_1", "version_2"]


def _run_until_checkpoint(out: Path, cwd: Path, min_epochs: int) -> subprocess.Popen:
    """Start ``selfsup pretrain`` in its own process; return once last.ckpt holds ``min_epochs`` epochs."""
    command = [sys.executable, "-m", "selfsup_core.cli", "pretrain", *TINY, "--max-epochs", LONG, "--out", str(out)]
    return start_until_checkpoint(command, out, cwd / "pretrain.log", min_epochs)


@pytest.mark.slow
def test_sigkill_then_resume_continues_from_that_epoch(tmp_path: Path) -> None:
    out = tmp_path / "run"
    process = _run_until_checkpoint(out, tmp_path, min_epochs=2)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    killed = _checkpoint(out)
    done = killed["selfsup"]["epochs_completed"]
    assert done >= 2 and killed["global_step"] == done * STEPS_PER_EPOCH == _adam_steps(killed)

    assert _resume(out, "--max-epochs", str(done + 1)) == 0
    final = _checkpoint(out)
    # Continued, not restarted: one more epoch of steps, and AdamW's own step count carried on.
    assert final["global_step"] == (done + 1) * STEPS_PER_EPOCH == _adam_steps(final)
    epochs_logged = {line.split(",")[0] for line in
                     (out / "logs" / "version_1" / "metrics.csv").read_text().splitlines()[1:]}
    assert epochs_logged == {str(done)}
    assert (out / "encoder.safetensors").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt"]  # no -v1, no .tmp left


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_to_a_real_process_exit_128_plus_signal(tmp_path: Path, signum: int, code: int) -> None:
    out = tmp_path / "run"
    process = _run_until_checkpoint(out, tmp_path, min_epochs=1)
    process.send_signal(signum)
    assert process.wait(timeout=120) == code
    log = (tmp_path / "pretrain.log").read_text()
    assert f"selfsup pretrain --resume --out {out}" in log and "Traceback" not in log
    stopped = _checkpoint(out)
    assert _adam_steps(stopped) == stopped["global_step"] > 0
    assert _resume(out, "--max-epochs", str(stopped["selfsup"]["epochs_completed"] + 1)) == 0


# -- what --resume continues with ---------------------------------------------------------------------------


def test_resume_uses_the_runs_own_settings(tmp_path: Path, image_folder: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert _pretrain(out, "--lr", "0.002", "--max-epochs", "1") == 0
    # Not repeated: arch, image size, limit and lr come from config.yaml (the defaults would not fit).
    assert _resume(out, "--max-epochs", "2") == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lr"] == 0.002 and saved["arch"] == "tiny" and saved["data"] is None and saved["max_epochs"] == 2
    assert _checkpoint(out)["global_step"] == 2 * STEPS_PER_EPOCH
    capsys.readouterr()

    assert _resume(out, "--lr", "0.01", "--data", str(image_folder), "--max-epochs", "3") == 1
    err = capsys.readouterr().err
    assert "--lr 0.01 (the run has 0.002)" in err and f"--data '{image_folder}'" in err
    assert _resume(out) == 1
    assert "already complete: 2 epoch(s) trained (--max-epochs 2 asks for no more)" in capsys.readouterr().err
    assert main(["pretrain", "--resume"]) == 1
    assert "--resume needs --out" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a run")
    assert _resume(tmp_path / "other") == 1
    assert "holds no pretrain run" in capsys.readouterr().err


def test_a_run_killed_during_export_is_exported_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _pretrain(out, "--max-epochs", "1") == 0
    for name in ("encoder.safetensors", "encoder.json", "results.json"):
        (out / name).unlink()
    assert _resume(out) == 0  # training is complete: nothing trains, the encoder is written
    assert (out / "encoder.safetensors").is_file() and _checkpoint(out)["global_step"] == STEPS_PER_EPOCH


def test_stale_temporary_files_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _pretrain(out, "--max-epochs", "1") == 0
    stale = [out / ".config.yaml.k2j4.tmp", out / "checkpoints" / ".last.ckpt.a8f1.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    assert _resume(out, "--max-epochs", "2") == 0
    assert not any(path.exists() for path in stale)


def test_hostile_checkpoint_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert _pretrain(out, "--max-epochs", "1") == 0
    marker = tmp_path / "PWNED"

    class Exploit:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    (out / "checkpoints" / "last.ckpt").write_bytes(pickle.dumps(Exploit()))
    capsys.readouterr()
    assert _resume(out, "--max-epochs", "2") == 1
    err = capsys.readouterr().err
    assert "is not a selfsup checkpoint (refused to unpickle:" in err
    assert "weights_only" not in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()
    (out / "checkpoints" / "last.ckpt").write_text("just text")
    assert _resume(out, "--max-epochs", "2") == 1
    assert "is not a selfsup checkpoint" in capsys.readouterr().err


# -- full and read-only disks -------------------------------------------------------------------------------


def _no_space(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_checkpointing_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch, "save", _no_space)
    out = tmp_path / "run"
    assert _pretrain(out, "--max-epochs", "1") == 1
    err = capsys.readouterr().err
    assert "no space left on device" in err and str(out / "checkpoints" / "last.ckpt") in err
    assert "Traceback" not in err and not list((out / "checkpoints").glob(".*.tmp"))


def test_a_really_full_disk_is_one_line_keeps_the_last_checkpoint_and_resumes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    # Room for one checkpoint of the tiny model (0.3 MB) but not for the next one's temporary copy
    # beside it: epoch 1 saves, epoch 2 meets a real ENOSPC inside torch.save (which raises a
    # RuntimeError over it; the test above fakes the OSError). Then the disk grows and the run goes on.
    disk = tmp_path / "disk"
    run, checkpoint = disk / "run", disk / "run" / "checkpoints" / "last.ckpt"
    with mounted(disk, "size=500k") as real_disk:
        if not real_disk:
            pytest.skip("cannot mount a small tmpfs here (needs root): the simulated test above stands in")
        assert _pretrain(run, "--max-epochs", "3") == 1
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1] == (
            f"selfsup: error: no space left on device while writing {checkpoint}: free some space or choose "
            f"another --out. Nothing earlier is lost: the last checkpoint is {checkpoint} (1 epoch(s) completed, step "
            f"{STEPS_PER_EPOCH}); once there is room, go on with: selfsup pretrain --resume --out {run}"), err
        assert "Traceback" not in err
        assert f"MB free in {run}: this model's checkpoint takes about 0.3 MB" in caplog.text  # said up front
        assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["last.ckpt"]  # no half-written temporary
        assert read_checkpoint(checkpoint).epochs_completed == 1
        assert subprocess.run(["mount", "-o", "remount,size=4m", str(disk)]).returncode == 0
        assert _resume(run) == 0  # the printed command, with the room it asked for
        assert read_checkpoint(checkpoint).epochs_completed == 3 and (run / "encoder.safetensors").is_file()


def test_the_space_warning_knows_a_checkpoints_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "run"
    assert _pretrain(out, "--max-epochs", "1") == 0
    assert "MB free in" not in caplog.text  # a roomy disk: no warning
    module = PretextModule(task="rotation", task_options={}, arch="tiny", preview_dir=str(tmp_path / "p"))
    real = (out / "checkpoints" / "last.ckpt").stat().st_size
    assert 0.9 * real < checkpoint_bytes(module) <= real  # the rest is Lightning's metadata
    free = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: free._replace(free=int(1.5 * real)))
    assert warn_if_short_of_space(out, module)  # room for one checkpoint, not for the next save
    monkeypatch.setattr(shutil, "disk_usage", lambda path: free._replace(free=3 * real))
    assert not warn_if_short_of_space(out, module)


def test_full_disk_in_an_atomic_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "results.json"
    atomic_write_text(path, "old")
    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(OutputError, match=f"no space left on device while writing {path}"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_unwritable_out_fails_before_any_data_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("data was read before --out was checked")

    monkeypatch.setattr("selfsup_core.ioutil.tempfile.mkstemp", read_only)
    monkeypatch.setattr("selfsup_core.training.pretraining.load_split", no_data)
    out = tmp_path / "run"
    assert _pretrain(out, "--max-epochs", "1") == 1
    err = capsys.readouterr().err
    assert f"cannot write {out}: read-only file system" in err and "Traceback" not in err
    assert not out.exists()  # the folder it made to probe is gone again


def test_overwrite_never_leaves_the_earlier_runs_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert _pretrain(out, "--max-epochs", "1") == 0

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the new run stops before its first checkpoint

    monkeypatch.setattr("selfsup_core.training.pretraining.load_split", killed)
    assert _pretrain(out, "--overwrite", "--lr", "0.01", "--max-epochs", "1") == 130
    assert not (out / "checkpoints" / "last.ckpt").exists() and not (out / "encoder.safetensors").exists()
    assert _resume(out) == 1
    assert "no checkpoint at" in capsys.readouterr().err


def test_finetune_resumes_with_its_settings_and_whole_history(tmp_path: Path) -> None:
    import json

    out = tmp_path / "fine"
    common = ["--no-progress", "--out", str(out)]
    assert main(["finetune", "--encoder", "none", "--arch", "tiny", "--image-size", "32", "--limit", "40",
                 "--max-epochs", "1", *common]) == 0
    assert main(["finetune", "--resume", "--max-epochs", "2", *common]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["history"]) == 2 and results["arch"] == "tiny" and results["train_images"] == 40
    assert read_checkpoint(out / "checkpoints" / "last.ckpt").epochs_completed == 2


def test_the_docs_list_what_a_resumed_run_may_change() -> None:
    from selfsup_core.training.runs import RESUME_MAY_CHANGE

    docs = (Path(__file__).parents[1] / "docs" / "index.md").read_text()
    start = docs.index("- `--resume --out RUN` continues with the run's own `config.yaml`.")
    paragraph = docs[start:docs.index("\n- ", start + 1)]
    listed = paragraph[paragraph.index(" only "):paragraph.index(" may\n")]
    assert set(re.findall(r"`--([a-z-]+)`", listed)) == {n.replace("_", "-") for n in RESUME_MAY_CHANGE}


@pytest.mark.parametrize("job", ["pretrain", "finetune"])
def test_a_seeded_run_is_the_same_whether_it_decoded_its_images_or_found_them_cached(
        tmp_path: Path, image_folder: Path, monkeypatch: pytest.MonkeyPatch, job: str) -> None:
    # Decoding drew random numbers that a cache hit does not: the same command trained other weights, and a
    # baseline --like a fine-tune (one decoded, the other a cache hit) started from another random state.
    monkeypatch.setenv("SELFSUP_CPU_THREADS", "1")  # the same arithmetic in both runs
    command = [job, "--arch", "tiny", "--image-size", "32", "--batch-size", "6", "--max-epochs", "2",
               "--no-progress", "--data", str(image_folder), "--val-fraction", "0.25"]
    assert main([*command, "--out", str(tmp_path / "cold")]) == 0  # decodes and builds the cache
    assert main([*command, "--out", str(tmp_path / "warm")]) == 0  # finds it
    metrics = [(tmp_path / run / "logs" / "version_0" / "metrics.csv").read_text() for run in ("cold", "warm")]
    assert metrics[0] == metrics[1]


def test_an_option_given_at_its_default_value_still_counts_on_resume(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert _pretrain(out, "--max-epochs", "1") == 0  # arch tiny, lr 0.001
    capsys.readouterr()
    # resnet18 is the default architecture: it was silently ignored, and the run went on as tiny.
    assert _resume(out, "--max-epochs", "2", "--arch", "resnet18") == 1
    assert "refused: --arch 'resnet18' (the run has 'tiny')" in capsys.readouterr().err
    # The run's own value, given again, is no conflict.
    assert _resume(out, "--max-epochs", "2", "--arch", "tiny", "--lr", "0.001") == 0
