"""Tearing down a gloo process group: a pause without the GIL first (pytorch/pytorch#56297, see destroy_distributed)."""

from __future__ import annotations

import torch.distributed as dist

from resfu_med.engine import distributed as ddp


def test_gloo_group_is_destroyed_after_a_pause_without_the_gil(tmp_path, monkeypatch):
    pauses = []
    monkeypatch.setattr(ddp.time, "sleep", pauses.append)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp.destroy_distributed()
        assert not dist.is_initialized()
        assert pauses == [ddp.GLOO_DRAIN_SECONDS]
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_destroy_without_a_group_is_a_no_op(monkeypatch):
    pauses = []
    monkeypatch.setattr(ddp.time, "sleep", pauses.append)
    ddp.destroy_distributed()
    assert pauses == []
