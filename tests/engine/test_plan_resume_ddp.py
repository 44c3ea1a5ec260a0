"""The plan pipeline's training (native-resolution patches, ``data.pipeline: plan``) is exactly resumable — after a
stop and after SIGKILL, with or without DataLoader workers — and DDP-sharded: two gloo processes train the same model
as one process with the same global batch. The same checks as test_train_loop.py / test_train_ddp.py for the zoom
pipeline, on the plan pipeline's transform (resampling, padding, class-balanced patch centres, augmentation) with
foreground oversampling on."""

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
import torch.multiprocessing as mp

from _train_helpers import ddp_worker, free_port, make_trainer, params_of, tiny_plan_config
from resfu_med.engine.checkpoint import load_checkpoint

HERE = Path(__file__).resolve().parent


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/engine/conftest.py


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    """An uninterrupted 2-epoch plan-pipeline run (5 iterations per epoch, validation each epoch)."""
    run = tmp_path_factory.mktemp("plan_ref")
    summary = make_trainer(tiny_plan_config(epochs=2, fg_oversample=0.5, checkpoint_every=2), run).fit()
    assert summary["finished"] and summary["iteration"] == 10
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["config"]["data"]["pipeline"] == "plan"
    return run


def _same(a: Path, b: Path) -> None:
    pa, pb = params_of(a), params_of(b)
    assert pa.keys() == pb.keys()
    for key in pa:
        assert torch.equal(pa[key], pb[key]), f"parameter {key} differs"


def test_plan_patches_reach_the_network_at_the_plan_size(tmp_path, monkeypatch):
    from resfu_med.engine.trainer import Trainer

    seen = []
    step = Trainer.training_step
    monkeypatch.setattr(Trainer, "training_step", lambda self, b: seen.append(tuple(b["image"].shape)) or step(self, b))
    make_trainer(tiny_plan_config(epochs=1, max_iters=2, eval=False), tmp_path).fit()
    assert seen == [(4, 1, 32, 32)] * 2


def test_plan_pipeline_resumes_exactly_with_other_workers(reference, tmp_path):
    cfg = tiny_plan_config(epochs=2, fg_oversample=0.5, checkpoint_every=2, max_iters=7)
    first = make_trainer(cfg, tmp_path).fit()
    assert first["iteration"] == 7 and not first["finished"]
    # resume mid-epoch with a DataLoader worker: patch choice and augmentation must not change
    resumed = make_trainer(cfg, tmp_path, resume=True, runtime={"train.max_iters": None, "data.num_workers": 1}).fit()
    assert resumed["finished"] and resumed["iteration"] == 10
    _same(reference / "last.pt", tmp_path / "last.pt")
    assert json.loads((tmp_path / "history.json").read_text()) == json.loads((reference / "history.json").read_text())


@pytest.mark.slow
def test_plan_pipeline_sigkill_then_resume_matches(reference, tmp_path):
    cfg = tiny_plan_config(epochs=2, fg_oversample=0.5, checkpoint_every=2)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    code = f"import _train_helpers as h; h.run_in_subprocess({str(run)!r}, {str(cfg_file)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.time() + 300  # interpreter start-up is slow on a loaded machine
    while time.time() < deadline and proc.poll() is None:
        try:
            if load_checkpoint(run / "last.pt")["iteration"] >= 3:
                break
        except Exception:
            pass
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed, "the run finished before it could be killed"
    assert 3 <= load_checkpoint(run / "last.pt")["iteration"] < 10
    make_trainer(cfg, run, resume=True).fit()
    _same(reference / "last.pt", run / "last.pt")


@pytest.mark.slow
def test_plan_pipeline_two_process_gloo_matches_single_process(tmp_path):
    # as test_train_ddp.py: cross-entropy only and no dropout, so the DDP gradient equals the single-process one when
    # every sample (slice, patch centre, augmentation, foreground draw) depends on its global position only
    cfg = tiny_plan_config(epochs=2, batch_size=4, ce_weight=1.0, dice_weight=0.0, fg_oversample=0.5, eval=False)
    cfg["model"]["kwargs"]["dropout"] = 0.0
    mp.spawn(ddp_worker, args=(2, free_port(), str(tmp_path / "ddp"), cfg), nprocs=2, join=True)
    torch.set_num_threads(1)
    make_trainer(cfg, tmp_path / "single").fit()
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ckpt["iteration"] == 10 and ckpt["position"]["world_size"] == 2
    ddp_p, single_p = params_of(tmp_path / "ddp" / "last.pt"), params_of(tmp_path / "single" / "last.pt")
    for k in single_p:
        torch.testing.assert_close(ddp_p[k], single_p[k], rtol=1e-4, atol=1e-5, msg=f"parameter {k}")
