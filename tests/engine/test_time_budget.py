"""``--time-budget``: a wall-clock cap that stops cleanly, saves a resumable last.pt, and the budget said up front."""

from __future__ import annotations

import pytest
import torch
from _train_helpers import make_trainer, params_of, tiny_config

from resfu_med.engine.checkpoint import load_checkpoint
from resfu_med.engine.preparation import resume_runtime


def test_time_budget_stops_saves_and_resumes_exactly(tmp_path, capsys):
    ref = make_trainer(tiny_config(epochs=2), tmp_path / "ref").fit()
    assert ref["finished"] and ref["iteration"] == 10
    cfg = tiny_config(epochs=2, time_budget=1e-6)  # over budget after the first iteration
    first = make_trainer(cfg, tmp_path / "run").fit()
    err = capsys.readouterr().err
    assert not first["finished"] and first["iteration"] == 1
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 1
    assert "10 iterations (10 to go), set by train.epochs 2 x 5 iterations per epoch (20 items per process / batch 4)" in err
    assert "at most 1e-06 s of training (train.time_budget)" in err
    assert "time budget of 1e-06 s reached at iteration 1 of 10" in err and "--resume" in err
    # the budget applies to one session: --resume without it finishes the same run as if never stopped
    runtime = resume_runtime(cfg, {})
    assert runtime == {"train.max_iters": None, "train.time_budget": None}
    resumed = make_trainer(cfg, tmp_path / "run", resume=True, runtime=runtime).fit()
    assert resumed["finished"] and resumed["iteration"] == 10
    for key, value in params_of(tmp_path / "ref" / "last.pt").items():
        torch.testing.assert_close(params_of(tmp_path / "run" / "last.pt")[key], value, rtol=0, atol=0)


def test_expected_time_is_measured_before_training_and_names_the_budget(tmp_path, capsys):
    make_trainer(tiny_config(epochs=2, max_iters=8, time_budget=600.0), tmp_path).fit()
    err = capsys.readouterr().err
    assert "8 iterations (8 to go), set by train.epochs 2 x 5 iterations per epoch" in err
    assert "stopping at train.max_iters 8" in err
    line = next(x for x in err.splitlines() if "s per iteration" in x)
    assert "measured over iterations 2-6 of this session" in line and "for the 2 iterations to go" in line
    assert "the time budget leaves" in line


def test_time_budget_may_be_given_on_resume(tmp_path):
    assert resume_runtime(tiny_config(), {"train": {"time_budget": 30.0}})["train.time_budget"] == 30.0


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_time_budget_flag_rejects_bad_values(tmp_path, capsys, value):
    from resfu_med.cli import main

    with pytest.raises(SystemExit):
        code = main(["train", "--dataset", "demo", "--time-budget", value, "--output", str(tmp_path / "r")])
        raise SystemExit(code)
    assert "time" in capsys.readouterr().err
