"""The Trainer's hooks: the documented subclass (docs/training.md, "Extending the Trainer") with a custom loss, a
custom metric, a checkpoint entry and an early stop trains, records and saves what it says; the package's own
logging, progress plot and checkpoints run through the same hooks."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from _train_helpers import _register, slice_dataset, tiny_config, volume_cases

from resfu_med.engine.trainer import Trainer


class MyTrainer(Trainer):
    """The example of docs/training.md: cross-entropy only, the worst class's Dice as an extra metric."""

    def compute_loss(self, outputs, label):
        self.loss_calls = getattr(self, "loss_calls", 0) + 1
        return F.cross_entropy(outputs, label[:, 0])

    def on_validation_end(self, metric, result):
        super().on_validation_end(metric, result)  # keeps history.json, TensorBoard
        self.history[-1]["worst_dice"] = min(self.history[-1]["dice"].values())

    def on_checkpoint(self, state):
        state["note"] = "cross-entropy only"
        return state


class StopAfterFive(Trainer):
    def should_stop(self):
        return super().should_stop() or ("plateau" if self.iteration >= 5 else None)


def _fit(cls, tmp_path, **train):
    _register()
    run = tmp_path / "run"
    run.mkdir()
    trainer = cls(tiny_config(**train), run, train_data=slice_dataset(20), val_data=volume_cases(), progress=False)
    return trainer, trainer.fit(), run


def test_user_subclass_custom_loss_metric_and_checkpoint(tmp_path):
    trainer, summary, run = _fit(MyTrainer, tmp_path, epochs=2)
    assert summary["finished"] and trainer.loss_calls == summary["iteration"]
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 2 and all("worst_dice" in h and 0 <= h["worst_dice"] <= 1 for h in history)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["note"] == "cross-entropy only"
    assert (run / "progress.png").is_file() and any((run / "tb").iterdir())  # the package's own hooks still ran


def test_early_stop_hook_saves_and_returns(tmp_path):
    trainer, summary, run = _fit(StopAfterFive, tmp_path, epochs=3)
    assert summary["iteration"] == 5 and not summary["finished"]
    assert torch.load(run / "last.pt", weights_only=True)["iteration"] == 5
