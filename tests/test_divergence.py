"""A run that diverges stops at once, keeps its last good checkpoint and exports nothing;
results files are always valid JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from selfsup_core.cli import main
from selfsup_core.errors import DivergenceError
from selfsup_core.training.runs import write_json
from selfsup_core.training.trainer import build_trainer, fit

TINY = ["--arch", "tiny", "--image-size", "32", "--batch-size", "16", "--limit", "64", "--no-progress"]


def test_huge_learning_rate_stops_with_no_encoder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(["pretrain", *TINY, "--lr", "1000000", "--max-epochs", "3", "--checkpoint-every-steps", "1",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "training diverged" in err and "lower --lr" in err and "nothing was exported" in err
    assert "Traceback" not in err
    assert not (out / "encoder.safetensors").exists() and not (out / "encoder.json").exists()
    assert not (out / "results.json").exists()
    # The checkpoint kept is the last one with finite weights (the divergence was never saved).
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())


class _NanAtStep(pl.LightningModule):
    """Linear regression whose loss turns NaN at optimiser step ``bad_step`` (1-based)."""

    def __init__(self, bad_step: int) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss)
        self.log("train/extra", 0.5)
        if self.global_step + 1 == self.hparams["bad_step"]:
            loss = loss * float("nan")
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_stops_at_the_first_non_finite_loss_with_step_and_metrics(tmp_path: Path) -> None:
    data = pl.LightningDataModule.from_datasets(torch.utils.data.TensorDataset(torch.randn(32, 4)), batch_size=4)
    trainer = build_trainer(tmp_path, max_epochs=2, progress=False, monitor_val=False, checkpoint_every_steps=1)
    module = _NanAtStep(bad_step=6)
    with pytest.raises(DivergenceError) as error:
        fit(trainer, module, data, run_dir=tmp_path, ckpt_path=None)
    message = str(error.value)
    assert "at step 6 (epoch 1): the training loss is nan" in message
    assert "train/extra=0.5" in message and "lower --lr" in message
    assert "last good checkpoint" in message
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 5  # the step before; the bad step never updated the weights
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_results_json_is_always_valid_json(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_json(path, {"metrics": {"val/loss": float("nan"), "val/acc": 0.5, "worst": [float("-inf"), 1.0]}})

    def refuse(constant: str) -> None:
        raise ValueError(f"bare {constant} in JSON")

    loaded = json.loads(path.read_text(), parse_constant=refuse)
    assert loaded["metrics"] == {"val/loss": None, "val/acc": 0.5, "worst": [None, 1.0]}
    assert any("metrics.val/loss was nan" in note for note in loaded["notes"])
    assert any("metrics.worst[0] was -inf" in note for note in loaded["notes"])
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in loaded["metrics"].values())
