"""Numerical safety: a diverging run stops with the iteration named and its last good checkpoint kept; NaN voxels in a
prepared dataset stop training the same way; fp16 overflow is absorbed by the grad scaler; the FNS op and ReSFU stay
finite for constant inputs, all-equal scores and extreme magnitudes."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch

from _reliability import TINY, assert_one_line_error, make_btcv, run_cli, write_config
from resfu_med.engine.checkpoint import load_checkpoint
from resfu_med.networks import ReSFU
from resfu_med.ops import fns_gather

ARGS = ["--device", "cpu", "--no-progress", "--deterministic"]


def _finite_state(path) -> bool:
    return all(torch.isfinite(v).all() for v in load_checkpoint(path)["model"].values() if v.is_floating_point())


def test_diverging_loss_stops_naming_the_iteration_and_keeps_last_good(tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    rc, err = run_cli(["train", "--dataset", "demo", "--config", str(tiny_config), "--output", str(run),
                       "--max-iters", "24", "--checkpoint-every", "1", "--lr", "1e5", *ARGS], capsys)
    line = assert_one_line_error(rc, err, "train", "not finite", "iteration", str(run / "last.pt"), strict=False)
    failed_at = int(re.search(r"iteration (\d+)", line).group(1))
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["iteration"] == failed_at - 1  # saved every iteration: the one before the NaN, nothing after
    assert _finite_state(run / "last.pt")


def test_nan_voxels_in_prepared_training_data_stop_the_run(tmp_path, capsys):
    raw = make_btcv(tmp_path / "raw")
    prep = tmp_path / "prep"
    rc, err = run_cli(["prepare", "--dataset", "synapse", "--data-root", str(raw), "--output", str(prep),
                       "--no-progress"], capsys)
    assert rc == 0, err
    # a prepared slice damaged afterwards (by another tool, a disk): prepare's own NaN check cannot see it
    victim = sorted((prep / "train_npz").glob("*.npz"))[2]
    with np.load(victim) as z:
        arrays = dict(z)
    arrays["image"][5, 5] = np.nan
    np.savez(victim, **arrays)
    cfg = write_config(tmp_path / "cfg.yaml", {**TINY, "train": {**TINY["train"], "epochs": 1}})
    rc, err = run_cli(["train", "--dataset", "synapse", "--data-root", str(prep), "--config", str(cfg),
                       "--output", str(tmp_path / "run"), *ARGS], capsys)
    assert_one_line_error(rc, err, "train", "NaN/inf voxels", "iteration", strict=False)


def test_fp16_overflow_is_absorbed_by_the_grad_scaler(tiny_config, tmp_path, capsys, monkeypatch):
    if not torch.amp.is_autocast_available("cpu"):
        pytest.skip("no CPU autocast in this torch")
    scaler_cls = torch.amp.GradScaler
    # start at 2**40 so the first steps' fp16 gradients overflow: the scaler must skip them and back off
    monkeypatch.setattr(torch.amp, "GradScaler", lambda *a, **k: scaler_cls(*a, init_scale=2.0**40, **k))
    run = tmp_path / "run"
    rc, err = run_cli(["train", "--dataset", "demo", "--config", str(tiny_config), "--output", str(run),
                       "--max-iters", "6", "--amp", "fp16", "--device", "cpu", "--no-progress"], capsys)
    assert rc == 0, err
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["iteration"] == 6 and _finite_state(run / "last.pt")
    assert ckpt["scaler"]["scale"] < 2.0**40  # it backed off after overflowing steps


# -- the operator and the module -------------------------------------------------------------------------------------

def _uniform_attn(n, hr, dtype):
    return torch.full((n, 9, *hr), 1.0 / 9, dtype=dtype)


@pytest.mark.parametrize("dtype,value", [
    (torch.float32, 1e30), (torch.float32, -1e30), (torch.float32, 1e-30), (torch.float32, 0.0),
    (torch.bfloat16, torch.finfo(torch.bfloat16).max), (torch.bfloat16, -torch.finfo(torch.bfloat16).max),
    (torch.bfloat16, torch.finfo(torch.bfloat16).tiny), (torch.float16, torch.finfo(torch.float16).max),
])
def test_fns_gather_constant_input_gives_the_constant(dtype, value):
    """A convex combination of equal values is that value: no overflow, no underflow to 0, no NaN."""
    x = torch.full((2, 3, 5, 4), value, dtype=dtype)
    attn = _uniform_attn(2, (15, 12), dtype).requires_grad_()
    out = fns_gather(attn, x)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), torch.full(out.shape, float(x[0, 0, 0, 0])), rtol=1e-2, atol=0)
    if dtype == torch.float32 and abs(value) <= 1e30:
        out.sum().backward()
        assert torch.isfinite(attn.grad).all()


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_fns_gather_extreme_magnitudes_scale_exactly(scale):
    """out(s·x) = s·out(x) for powers-of-ten extremes in float32 (values and gradients finite)."""
    torch.manual_seed(0)
    attn = torch.softmax(torch.randn(1, 9, 12, 12), dim=1)
    x = torch.randn(1, 4, 4, 4, requires_grad=True)
    out = fns_gather(attn, x * scale)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out / scale, fns_gather(attn, x), rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def _resfu(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return ReSFU(16, 8).eval().to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resfu_constant_inputs_reproduce_the_constant(dtype):
    """Constant x and guide: GroupNorm sees zero variance (0/sqrt(eps)); any softmax over a constant is the constant."""
    x = torch.full((2, 16, 4, 4), 3.5, dtype=dtype)
    guide = torch.full((2, 8, 16, 16), -2.0, dtype=dtype)
    with torch.no_grad():
        out = _resfu(dtype)(x, guide)
    assert out.shape == (2, 16, 16, 16) and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), torch.full(out.shape, 3.5), rtol=1e-2, atol=0)


def test_resfu_all_equal_scores_average_the_valid_neighbours():
    """Zero projections: every score is equal, so each HR pixel is the plain mean of its in-image neighbours' FNS
    samples; with x linear along one axis and the border mask symmetric in the interior, the interior output equals the
    bilinear upsampling of x (the mean of samples at ±1 LR pixel around it)."""
    m = _resfu()
    for mod in m.modules():
        if isinstance(mod, torch.nn.Conv2d):
            torch.nn.init.zeros_(mod.weight)
            if mod.bias is not None:
                torch.nn.init.zeros_(mod.bias)
    torch.manual_seed(1)
    x = torch.arange(8, dtype=torch.float32).view(1, 1, 8, 1).expand(1, 16, 8, 8).contiguous()
    guide = torch.randn(1, 8, 32, 32)
    with torch.no_grad():
        attn = m.attention(x, guide)
        out = m(x, guide)
    inside = attn[0, :, 8:24, 8:24]
    torch.testing.assert_close(inside, torch.full_like(inside, 1 / 9))  # all-equal scores: uniform weights
    up = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[..., 8:24, 8:24], up[..., 8:24, 8:24], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,scale", [
    (torch.float32, 1e30), (torch.float32, 1e-30), (torch.float32, 1e36),
    (torch.bfloat16, torch.finfo(torch.bfloat16).max), (torch.bfloat16, torch.finfo(torch.bfloat16).tiny),
])
def test_resfu_extreme_magnitudes_stay_finite_and_scale(dtype, scale):
    """ReSFU(s·x, s·y) = s·ReSFU(x, y): its kernels depend on normalised inputs only (GroupNorm is scale invariant)."""
    torch.manual_seed(2)
    x = torch.rand(2, 16, 4, 4) * 2 - 1
    guide = torch.rand(2, 8, 16, 16) * 2 - 1
    m = _resfu(dtype)
    with torch.no_grad():
        ref = m(x.to(dtype), guide.to(dtype)).float()
        out = m((x * scale).to(dtype), (guide * scale).to(dtype))
    assert torch.isfinite(out).all(), f"non-finite output at scale {scale:g} in {dtype}"
    if scale >= 1:  # far below 1 the GroupNorm eps dominates the variance and the kernels legitimately change
        torch.testing.assert_close(out.float() / scale, ref, rtol=5e-2 if dtype == torch.bfloat16 else 1e-4,
                                   atol=5e-2 if dtype == torch.bfloat16 else 1e-4)
