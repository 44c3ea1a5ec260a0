"""Checkpoints: atomic save, validated load (missing / corrupt / foreign / incomplete), RNG states, load_model."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from _train_helpers import TINY, tiny_config
from resfu_med.engine.checkpoint import (
    REQUIRED_KEYS,
    capture_rng,
    load_checkpoint,
    load_model,
    restore_rng,
    save_checkpoint,
)
from resfu_med.networks import build_model
from resfu_med.errors import CheckpointError


def _state(cfg=None):
    cfg = cfg or tiny_config()
    model = build_model(cfg["model"])
    return model, {"model": model.state_dict(), "optimizer": {}, "scheduler": {}, "scaler": {}, "epoch": 1,
                   "iteration": 5, "rng": capture_rng(), "best_metric": 0.5, "config": cfg}


def test_roundtrip_and_no_temporary_files(tmp_path):
    _, state = _state()
    save_checkpoint(tmp_path / "last.pt", state)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert set(REQUIRED_KEYS) <= set(ckpt) and ckpt["iteration"] == 5 and ckpt["format"] == "resfu-med-checkpoint"
    # loadable without unpickling arbitrary objects
    torch.load(tmp_path / "last.pt", weights_only=True)


def test_save_rejects_incomplete_state(tmp_path):
    with pytest.raises(ValueError, match="lacks keys"):
        save_checkpoint(tmp_path / "x.pt", {"model": {}})


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    _, state = _state()
    save_checkpoint(tmp_path / "last.pt", state)
    before = (tmp_path / "last.pt").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "last.pt", {**state, "iteration": 6})
    assert (tmp_path / "last.pt").read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt not found"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty"])
def test_corrupt_checkpoint_names_the_file(tmp_path, kind):
    path = tmp_path / "bad.pt"
    if kind == "garbage":
        path.write_bytes(b"this is not a checkpoint" * 10)
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        _, state = _state()
        save_checkpoint(path, state)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is corrupt"):
        load_checkpoint(path)


def test_foreign_and_incomplete_files(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a resfu-med checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"format": "resfu-med-checkpoint", "version": 1, "model": {}}, tmp_path / "part.pt")
    with pytest.raises(CheckpointError, match="incomplete: missing optimizer"):
        load_checkpoint(tmp_path / "part.pt")
    torch.save({"format": "resfu-med-checkpoint", "version": 99}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path / "new.pt")


def test_rng_roundtrip():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.rand(3), np.random.rand(3), random.random(), np.random.randn()  # leave a cached gaussian state behind
    state = capture_rng()
    expected = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)], np.random.randn(3))
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng(state)
    got = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)], np.random.randn(3))
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2] == got[2] and np.array_equal(expected[3], got[3])


def test_load_model_rebuilds_the_trained_network(tmp_path):
    model, state = _state()
    save_checkpoint(tmp_path / "best.pt", state)
    loaded, cfg = load_model(tmp_path / "best.pt", "cpu", num_classes=3, model_name=TINY)
    assert not loaded.training and cfg["model"]["name"] == TINY
    x = torch.randn(2, 1, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_load_model_wrong_class_count_or_architecture(tmp_path):
    _, state = _state()
    save_checkpoint(tmp_path / "c.pt", state)
    with pytest.raises(CheckpointError, match=r"trained for 3 classes .*expected 9"):
        load_model(tmp_path / "c.pt", num_classes=9)
    with pytest.raises(CheckpointError, match=rf"holds a '{TINY}' model, expected 'transunet'"):
        load_model(tmp_path / "c.pt", model_name="transunet")


def test_load_model_weights_that_do_not_fit_their_architecture(tmp_path):
    # weights of a 2-class head under a config claiming 3 classes: the mismatch is named, not a raw RuntimeError
    cfg2 = tiny_config()
    cfg2["model"]["kwargs"]["out_channels"] = 2
    model2 = build_model(cfg2["model"])
    _, state = _state()
    state["model"] = model2.state_dict()
    save_checkpoint(tmp_path / "c.pt", state)
    with pytest.raises(CheckpointError, match=r"does not match its .* architecture: .*shape mismatches"):
        load_model(tmp_path / "c.pt")
    state["model"] = {k: v for k, v in model2.state_dict().items() if "final" not in k}
    save_checkpoint(tmp_path / "d.pt", state)
    with pytest.raises(CheckpointError, match="missing weights"):
        load_model(tmp_path / "d.pt")
