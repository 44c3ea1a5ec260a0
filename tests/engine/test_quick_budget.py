"""An iteration budget (``train.iterations``, the quick preset's) is exactly that many iterations whatever the dataset's
size: the last epoch is cut short, the lr schedule spans exactly the budget, a stop inside the short last epoch
resumes bit-identically, and an explicit ``--epochs`` wins over the recipe's budget."""

from __future__ import annotations

import pytest
import torch
from _train_helpers import make_trainer, params_of, tiny_config

from resfu_med.engine.checkpoint import load_checkpoint
from resfu_med.engine.config import RECIPES, resolve_config


def _budget(iterations: int, **train):
    cfg = tiny_config(eval=False, **train)
    cfg["train"]["iterations"] = iterations  # as a recipe sets it (train.epochs is then derived by the trainer)
    return cfg


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical comparisons need the same reduction order
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("n", [20, 36])  # 5 or 9 iterations per epoch at batch 4
def test_the_budget_is_exact_whatever_the_dataset_size(tmp_path, capsys, n):
    cfg = _budget(7, schedule="poly")
    trainer = make_trainer(cfg, tmp_path, n=n)
    summary = trainer.fit()
    assert summary["finished"] and summary["iteration"] == 7  # not rounded up to whole epochs (10 or 9)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["iteration"] == 7 and ckpt["scheduler"]["last_epoch"] == 7
    # the poly schedule spans exactly the 7 iterations: the lr after the last step is 0
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert ckpt["epoch"] == ckpt["config"]["train"]["epochs"] == -(-7 // (n // 4))
    err = capsys.readouterr().err
    assert "7 iterations (7 to go), set by train.iterations 7 (exactly, whatever the dataset's size" in err
    assert (tmp_path / "best.pt").is_file()  # no validation: best.pt is the final model


def test_a_stop_inside_the_short_last_epoch_resumes_exactly(tmp_path):
    cfg = _budget(8)  # 5 + 3 iterations
    make_trainer(cfg, tmp_path / "ref").fit()
    first = make_trainer({**cfg, "train": {**cfg["train"], "max_iters": 6}}, tmp_path / "run").fit()
    assert first["iteration"] == 6 and not first["finished"]
    resumed = make_trainer(cfg, tmp_path / "run", resume=True, runtime={"train.max_iters": None}).fit()
    assert resumed["finished"] and resumed["iteration"] == 8
    ref, run = params_of(tmp_path / "ref" / "last.pt"), params_of(tmp_path / "run" / "last.pt")
    for key, value in ref.items():
        assert torch.equal(run[key], value), key


def test_epochs_given_with_the_quick_preset_apply():
    quick = resolve_config("msd", overrides={"data": {"root": "x"}}, preset="quick")
    assert quick["train"]["iterations"] == RECIPES["quick"]["train"]["iterations"]
    cfg = resolve_config("msd", overrides={"data": {"root": "x"}, "train": {"epochs": 16}}, preset="quick")
    assert cfg["train"]["epochs"] == 16 and cfg["train"]["iterations"] is None  # the recipe's budget yields

