"""1×1 convolutions as matrix products (networks/blocks/pointwise.py) against torch's own convolution (issue 27)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resfu_med.networks.blocks import pointwise
from resfu_med.networks.blocks.pointwise import is_pointwise, pointwise_conv, pointwise_conv_backward

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CASES = [(1, 8, 4, 2, True), (2, 8, 12, 4, True), (2, 6, 9, 1, False), (3, 4, 8, 4, True), (3, 3, 5, 1, False)]


def _inputs(dims, cin, cout, groups, bias, dtype=torch.float64):
    torch.manual_seed(dims * 100 + cin)
    x = torch.randn(2, cin, *(5, 4, 3)[:dims], dtype=dtype, requires_grad=True)
    w = torch.randn(cout, cin // groups, *(1,) * dims, dtype=dtype, requires_grad=True)
    b = torch.randn(cout, dtype=dtype, requires_grad=True) if bias else None
    return x, w, b


@pytest.mark.parametrize("dims,cin,cout,groups,bias", CASES)
def test_pointwise_conv_is_the_convolution(dims, cin, cout, groups, bias):
    x, w, b = _inputs(dims, cin, cout, groups, bias)
    got, want = pointwise_conv(x, w, b, groups), _CONV[dims](x, w, b, groups=groups)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    inputs = [t for t in (x, w, b) if t is not None]
    g = torch.randn_like(got)
    for mine, ref in zip(torch.autograd.grad(got, inputs, g), torch.autograd.grad(want, inputs, g)):
        torch.testing.assert_close(mine, ref, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *t: pointwise_conv(*t, groups), (x, w, b))
    assert torch.autograd.gradgradcheck(lambda *t: pointwise_conv(*t, groups), (x, w, b))


@pytest.mark.parametrize("dims,cin,cout,groups,bias", CASES)
def test_pointwise_backward_is_the_convolution_backward(dims, cin, cout, groups, bias):
    x, w, _ = _inputs(dims, cin, cout, groups, bias)
    g = torch.randn(2, cout, *x.shape[2:], dtype=x.dtype)
    want = torch.ops.aten.convolution_backward(g, x, w, [cout], [1] * dims, [0] * dims, [1] * dims, False, [0] * dims,
                                               groups, [True, True, True])
    for needs in ([True, True, True], [False, True, False], [True, False, False]):
        got = pointwise_conv_backward(g, x.detach(), w.detach(), groups, needs)
        for mine, ref, need in zip(got, want, needs):
            assert (mine is not None) == need
            if need:
                torch.testing.assert_close(mine, ref, rtol=1e-12, atol=1e-12)


def test_float32_channels_last_and_in_place_use():
    """Float32 within rounding of the convolution; a channels-last input; the output may be modified in place (the
    networks apply in-place ReLUs and sums to it) with correct gradients."""
    torch.manual_seed(3)
    x = torch.randn(2, 16, 7, 9).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(16, 4, 1, 1, requires_grad=True)
    b = torch.randn(16, requires_grad=True)
    got = torch.relu_(pointwise_conv(x, w, b, 4))
    want = torch.relu(F.conv2d(x, w, b, groups=4))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for mine, ref in zip(torch.autograd.grad(got.sum(), (x, w, b)), torch.autograd.grad(want.sum(), (x, w, b))):
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-4)


def test_keeps_only_its_inputs_for_backward():
    """Autograd's matmul node would keep the weight expanded over the samples as well; this keeps x, W, b only."""
    x, w, b = _inputs(2, 8, 12, 4, True, torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        pointwise_conv(x, w, b, 4)
    assert {t.data_ptr() for t in saved} == {x.data_ptr(), w.data_ptr(), b.data_ptr()}


def test_convolution_runs_off_the_product_devices_and_under_autocast(monkeypatch):
    x, w, b = _inputs(2, 8, 12, 4, True, torch.float32)
    ops = []

    class Ops(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with Ops():
        pointwise_conv(x, w, b, 4).sum().backward()
    assert "convolution" not in ops and "bmm" in ops
    monkeypatch.setattr(pointwise, "PRODUCT_DEVICES", ())  # as on a GPU
    ops.clear()
    with Ops():
        out = pointwise_conv(x, w, b, 4)
        grads = pointwise_conv_backward(torch.ones_like(out), x.detach(), w.detach(), 4, [True, True, True])
    assert "convolution" in ops and "convolution_backward" in ops and "bmm" not in ops
    torch.testing.assert_close(grads[2], torch.full_like(b, 2 * 5 * 4))
    monkeypatch.setattr(pointwise, "PRODUCT_DEVICES", ("cpu",))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert pointwise_conv(x, w, b, 4).dtype == F.conv2d(x, w, b, groups=4).dtype == torch.bfloat16


@pytest.mark.parametrize("shape,groups", [((12, 4, 3, 3), 2), ((12, 8, 1, 1), 2), ((12, 8, 1), 1)])
def test_rejects_what_is_not_a_1x1_convolution_of_x(shape, groups):
    with pytest.raises(ValueError, match="not a 1x1 kernel"):
        pointwise_conv(torch.randn(1, 8, 4, 4), torch.randn(shape), None, groups)


def test_is_pointwise():
    assert is_pointwise(torch.empty(4, 2, 1, 1)) and is_pointwise(torch.empty(4, 2, 1, 1, 1))
    assert not is_pointwise(torch.empty(4, 2, 3, 3)) and not is_pointwise(torch.empty(4, 2, 1, 1), pad=[1, 1, 1, 1])
