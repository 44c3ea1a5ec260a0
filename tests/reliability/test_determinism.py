"""Determinism: ``resfu-med train --deterministic`` twice gives bit-identical checkpoints on CPU, and the switch reaches
the FNS operator (its CUDA backward then runs without atomics)."""

from __future__ import annotations

import pytest
import torch

from _reliability import run_cli, train_argv
from resfu_med.engine.checkpoint import load_checkpoint
from resfu_med.ops import fns_gather


def test_two_deterministic_cli_runs_are_bit_identical(reference_run, tiny_config, tmp_path, capsys):
    rc, err = run_cli(train_argv(tmp_path / "again", tiny_config), capsys)
    assert rc == 0, err
    a, b = load_checkpoint(reference_run / "last.pt"), load_checkpoint(tmp_path / "again" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"parameter {k} differs between identical runs"
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


@pytest.mark.parametrize("global_switch,flag,expected", [(False, False, False), (True, False, True),
                                                        (False, True, True)])
def test_fns_gather_follows_torch_deterministic_switch(monkeypatch, global_switch, flag, expected):
    import sys

    mod = sys.modules["resfu_med.ops.fns_gather"]  # the module (the package re-exports the function under its name)
    seen = []

    class FakeOps:
        @staticmethod
        def fns_gather_forward(attn, x, kernel_depth, deterministic):
            seen.append(deterministic)
            return torch.zeros(x.shape[0], x.shape[1], *attn.shape[2:])

    monkeypatch.setattr(mod, "backend", lambda device=None: "cpp")
    monkeypatch.setattr(torch.ops, "resfu_med", FakeOps, raising=False)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(global_switch, warn_only=True)
    try:
        fns_gather(torch.full((1, 9, 8, 8), 1 / 9), torch.ones(1, 2, 4, 4), deterministic=flag)
    finally:
        torch.use_deterministic_algorithms(before)
    assert seen == [expected]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_resfu_backward_is_bit_identical_in_deterministic_mode():
    from resfu_med.networks import ReSFU

    torch.manual_seed(0)
    m = ReSFU(32, 16).cuda()
    x = torch.randn(2, 32, 14, 14, device="cuda", requires_grad=True)
    guide = torch.randn(2, 16, 56, 56, device="cuda")
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        grads = []
        for _ in range(2):
            x.grad = None
            m(x, guide).square().sum().backward()
            grads.append(x.grad.clone())
    finally:
        torch.use_deterministic_algorithms(before)
    assert torch.equal(grads[0], grads[1])
