"""1×1 convolutions as matrix products on multi-threaded CPU (networks/blocks/pointwise.py, issue 27).

With more than one thread PyTorch runs 1×1 convolutions through oneDNN, slow for ReSFU's grouped and 9/27-channel
ones; ``pointwise_conv`` runs those as matrix products instead. Checked against ``F.conv{1,2,3}d`` in float64 (values
and every gradient), the switch itself, and the whole ReSFU module at 2 threads against the frozen module
(tests/networks/resfu_reference_v1.py) — the network tests otherwise run single-threaded, where the convolution stays.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from resfu_med.networks.blocks.pcdc import group_norm_then_1x1
from resfu_med.networks.blocks.pointwise import pointwise_conv, use_matmul
from resfu_med.networks.resfu import ReSFU
from tests.networks.resfu_reference_v1 import ReSFUv1

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
SMALL = {"embed_dim": 8, "groups": 4, "pcdc_channels": 8, "compressor_channels": 8}


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("cin,cout,groups,bias", [(16, 9, 1, True), (8, 32, 4, True), (8, 8, 4, False), (12, 27, 3, True)])
def test_matrix_product_equals_the_convolution(dims, cin, cout, groups, bias):
    torch.manual_seed(0)
    x = torch.randn(2, cin, *([5, 4, 3][:dims]), dtype=torch.float64, requires_grad=True)
    w = torch.randn(cout, cin // groups, *([1] * dims), dtype=torch.float64, requires_grad=True)
    b = torch.randn(cout, dtype=torch.float64, requires_grad=True) if bias else None
    with _threads(2):
        assert use_matmul(x, w, groups)
        got = pointwise_conv(x, w, b, groups=groups)
    want = _CONV[dims](x, w, b, groups=groups)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(want)
    inputs = (x, w) + ((b,) if bias else ())
    with _threads(2):
        got_grads = torch.autograd.grad(got, inputs, grad)
    for g, r in zip(got_grads, torch.autograd.grad(want, inputs, grad)):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def test_when_the_matrix_product_is_used():
    x, w9, w32 = torch.randn(1, 32, 4, 4), torch.randn(9, 32, 1, 1), torch.randn(32, 32, 1, 1)
    with _threads(1):
        assert not use_matmul(x, w9)  # one thread: PyTorch's own GEMM path, kept
    with _threads(2):
        assert use_matmul(x, w9) and use_matmul(x, torch.randn(32, 8, 1, 1), groups=4)
        assert not use_matmul(x, w32)  # ungrouped, a multiple of 16 outputs: oneDNN handles it
        assert not use_matmul(x.to(memory_format=torch.channels_last), w9)  # only dense channels-first
        assert not use_matmul(x.half(), w9.half())


@pytest.mark.parametrize("dims", [2, 3])
def test_group_norm_then_1x1_at_two_threads(dims):
    torch.manual_seed(0)
    h = torch.randn(2, 16, *([6] * dims), dtype=torch.float64, requires_grad=True)
    gamma, beta = (torch.randn(16, dtype=torch.float64, requires_grad=True) for _ in range(2))
    w = torch.randn(3**dims, 16, *([1] * dims), dtype=torch.float64, requires_grad=True)
    b = torch.randn(3**dims, dtype=torch.float64, requires_grad=True)
    with _threads(2):
        got = group_norm_then_1x1(h, 4, gamma, beta, 1e-5, w, b)
        grad = torch.randn_like(got)
        got_grads = torch.autograd.grad(got, (h, gamma, beta, w, b), grad)
    want = _CONV[dims](F.group_norm(h, 4, gamma, beta, 1e-5), w, b)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, r in zip(got_grads, torch.autograd.grad(want, (h, gamma, beta, w, b), grad)):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dims,lr,hr", [(2, (5, 6), (10, 12)), (2, (4, 5), (9, 13)), (3, (3, 4, 4), (6, 8, 8))])
def test_resfu_at_two_threads_equals_the_frozen_module(dims, lr, hr):
    torch.manual_seed(0)
    new = ReSFU(8, 8, spatial_dims=dims, **SMALL).double()
    old = ReSFUv1(8, 8, spatial_dims=dims, **SMALL).double()
    old.load_state_dict(new.state_dict())
    x = torch.randn(2, 8, *lr, dtype=torch.float64, requires_grad=True)
    guide = torch.randn(2, 8, *hr, dtype=torch.float64, requires_grad=True)
    with _threads(2):
        got = new(x, guide)
        grad = torch.randn_like(got)
        got_grads = torch.autograd.grad(got, (x, guide, *new.parameters()), grad)
    want = old(x, guide)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    for g, r in zip(got_grads, torch.autograd.grad(want, (x, guide, *old.parameters()), grad)):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10)
