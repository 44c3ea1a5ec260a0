"""The training loop: outputs of a short run, exact resume (in-process and after SIGKILL), NaN handling, AMP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _train_helpers import make_trainer, params_of, tiny_config
from resfu_med.engine.checkpoint import REQUIRED_KEYS, load_checkpoint
from resfu_med.engine.trainer import TrainingDiverged

HERE = Path(__file__).resolve().parent


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/engine/conftest.py


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, one_thread):
    """An uninterrupted 3-epoch run (5 iterations per epoch) that the resume tests must reproduce."""
    run = tmp_path_factory.mktemp("ref")
    summary = make_trainer(tiny_config(), run).fit()
    return run, summary


def _assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"parameter {k} differs"


def test_short_run_writes_checkpoints_tensorboard_and_config(reference_run):
    run, summary = reference_run
    assert summary["finished"] and summary["iteration"] == 15 and summary["epoch"] == 3
    for name in ("last.pt", "best.pt", "config.json", "history.json"):
        assert (run / name).is_file(), name
    events = list((run / "tb").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/lr", "val/mean_dice", "val/dice/square", "val/dice/other"} <= set(tags["scalars"])
    assert any(t.startswith("val/overlay/") for t in tags["images"])
    # log_every=1: one loss per iteration; poly lr at iteration i (1-based) is 0.05 * (1 - (i-1)/15)^0.9
    lrs = [e.value for e in acc.Scalars("train/lr")]
    assert len(lrs) == 15
    assert lrs[0] == pytest.approx(0.05) and lrs[5] == pytest.approx(0.05 * (1 - 5 / 15) ** 0.9, rel=1e-5)
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["lr"] == 0.05 and saved["data"]["num_classes"] == 3 and saved["seed"] == 1234
    assert len(json.loads((run / "history.json").read_text())) == 3


def test_checkpoint_contents(reference_run):
    run, summary = reference_run
    ckpt = load_checkpoint(run / "last.pt")
    assert set(REQUIRED_KEYS) <= set(ckpt)
    assert ckpt["epoch"] == 3 and ckpt["iteration"] == 15
    assert ckpt["position"]["batch_in_epoch"] == 0
    assert set(ckpt["rng"]) == {"torch", "numpy", "python", "cuda"}
    assert ckpt["scheduler"]["last_epoch"] == 15
    assert len(ckpt["optimizer"]["state"]) == len(list(ckpt["model"].keys() & ckpt["model"].keys())) or ckpt["optimizer"]["state"]
    assert ckpt["config"]["model"]["kwargs"]["out_channels"] == 3
    best = load_checkpoint(run / "best.pt")
    history = json.loads((run / "history.json").read_text())
    assert best["best_metric"] == pytest.approx(max(h["mean_dice"] for h in history))


@pytest.mark.parametrize("stop_at,workers", [(7, 0), (10, 1)])
def test_resume_reproduces_uninterrupted_run(reference_run, tmp_path, stop_at, workers):
    ref, _ = reference_run
    cfg = tiny_config(max_iters=stop_at)
    first = make_trainer(cfg, tmp_path).fit()
    assert not first["finished"] and first["iteration"] == stop_at
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == stop_at
    # resume with the limit lifted (and, in one case, with data loader workers: augmentation must not change)
    resumed = make_trainer(cfg, tmp_path, resume=True,
                           runtime={"train.max_iters": None, "data.num_workers": workers}).fit()
    assert resumed["finished"] and resumed["iteration"] == 15
    _assert_same_params(params_of(ref / "last.pt"), params_of(tmp_path / "last.pt"))
    _assert_same_params(params_of(ref / "best.pt"), params_of(tmp_path / "best.pt"))
    ref_hist = json.loads((ref / "history.json").read_text())
    assert json.loads((tmp_path / "history.json").read_text()) == ref_hist


def test_sigkill_mid_run_then_resume_matches(reference_run, tmp_path):
    ref, _ = reference_run
    cfg = tiny_config(checkpoint_every=2)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    code = f"import _train_helpers as h; h.run_in_subprocess({str(run)!r}, {str(cfg_file)!r})"
    kills = 0
    for min_iteration in (3, 9):  # kill twice, at different points
        proc = subprocess.Popen([sys.executable, "-c", code], env=env)
        deadline = time.time() + 300  # generous: interpreter start-up is slow on a loaded CI machine
        while time.time() < deadline:
            try:
                if load_checkpoint(run / "last.pt")["iteration"] >= min_iteration:
                    break
            except Exception:
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        assert load_checkpoint(run / "last.pt")["iteration"] >= min_iteration  # last.pt always loads
    assert kills >= 1
    # the final resume runs in-process (same code path as the subprocess; saves an interpreter start-up)
    make_trainer(cfg, run, resume=True).fit()
    # checkpoint_every saves do not change the result: same parameters as the reference run
    _assert_same_params(params_of(ref / "last.pt"), params_of(run / "last.pt"))
    assert not list(run.glob(".*.tmp*")), "temporary files of writes torn by the kills were not cleaned up"


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_config(nan_after=6, checkpoint_every=2)
    with pytest.raises(TrainingDiverged, match=r"loss is not finite.*iteration 6 \(epoch 2\)"):
        make_trainer(cfg, tmp_path).fit()
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["iteration"] == 5  # end of epoch 1 (5 iterations); nothing after the NaN was saved
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_nan_batch_stops_with_iteration(tmp_path):
    cfg = tiny_config(epochs=1)
    with pytest.raises(TrainingDiverged, match=r"NaN/inf voxels at iteration \d+ \(epoch 1\)"):
        make_trainer(cfg, tmp_path, nan_at=3).fit()
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_cpu_runs_and_saves_scaler(tmp_path, amp):
    cfg = tiny_config(epochs=1, max_iters=3)
    cfg["amp"] = amp
    summary = make_trainer(cfg, tmp_path).fit()
    assert summary["iteration"] == 3
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert bool(ckpt["scaler"]) == (amp == "fp16")  # the grad scaler is only active for fp16
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_deterministic_reruns_are_bit_identical(tmp_path):
    cfg = tiny_config(epochs=1, eval=False)
    cfg["deterministic"] = True
    make_trainer(cfg, tmp_path / "a").fit()
    make_trainer(cfg, tmp_path / "b").fit()
    _assert_same_params(params_of(tmp_path / "a" / "last.pt"), params_of(tmp_path / "b" / "last.pt"))
    # without validation best.pt is the final model
    _assert_same_params(params_of(tmp_path / "a" / "last.pt"), params_of(tmp_path / "a" / "best.pt"))
