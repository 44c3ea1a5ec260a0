"""Every exact rewrite of ReSFU (issue #27: key PCDC at input resolution, batched guided filter, fused similarity
blocks) against the frozen module of main before the rewrites (tests/networks/resfu_reference_v1.py), in float64.

Both modules get the same state dict; forward outputs and the gradients of inputs and every parameter must agree to
float64 rounding (1e-10), for 2D and 3D, integer, anisotropic and non-integer ratios, odd sizes, channels-last inputs,
the ablations and checkpointing.
"""

from __future__ import annotations

import pytest
import torch
import torch.utils._python_dispatch

from resfu_med.networks import ReSFU
from tests.networks.resfu_reference_v1 import ReSFUv1

SMALL = dict(embed_dim=8, pcdc_channels=16, gf_radius=4, compressor_channels=16)
TOL = dict(rtol=1e-10, atol=1e-10)


def _pair(c_in: int, c_g: int, **kwargs) -> tuple[ReSFU, ReSFUv1]:
    new = ReSFU(c_in, c_g, **kwargs).double()
    old = ReSFUv1(c_in, c_g, **kwargs).double()
    with torch.no_grad():  # random (not the initial zero) biases and norm affines, so every term is exercised
        for p in old.parameters():
            p.normal_(0.0, 0.3)
    new.load_state_dict(old.state_dict(), strict=True)
    return new, old


def _compare(new, old, x, guide) -> None:
    x1, g1 = x.detach().clone().requires_grad_(), guide.detach().clone().requires_grad_()
    x2, g2 = x.detach().clone().requires_grad_(), guide.detach().clone().requires_grad_()
    out, want = new(x1, g1), old(x2, g2)
    torch.testing.assert_close(out, want, **TOL)
    grad = torch.randn_like(want)
    got = torch.autograd.grad(out, (x1, g1, *new.parameters()), grad)
    ref = torch.autograd.grad(want, (x2, g2, *old.parameters()), grad)
    names = ["x", "guide"] + [n for n, _ in new.named_parameters()]
    for name, g, r in zip(names, got, ref):
        torch.testing.assert_close(g, r, **TOL, msg=lambda m, name=name: f"gradient of {name}: {m}")


CASES_2D = [
    ((7, 7), (14, 14), 3),  # x2
    ((5, 6), (15, 18), 3),  # x3, odd LR
    ((3, 5), (12, 20), 3),  # x4
    ((4, 3), (8, 9), 3),  # anisotropic x2 / x3
    ((6, 6), (6, 12), 3),  # x1 on one axis
    ((9, 7), (18, 14), 5),  # K = 5
    ((2, 2), (16, 16), 3),  # x8 from a tiny LR (every pixel near the border)
    ((1, 3), (3, 9), 3),  # LR axis of length 1
    ((5, 3), (17, 11), 3),  # non-integer ratios (HR path)
    ((7, 7), (16, 14), 3),  # one non-integer axis
]


@pytest.mark.parametrize("lr,hr,k", CASES_2D)
def test_2d_matches_v1(lr, hr, k):
    torch.manual_seed(0)
    new, old = _pair(16, 8, kernel_size=k, **SMALL)
    _compare(new, old, torch.randn(2, 16, *lr, dtype=torch.float64), torch.randn(2, 8, *hr, dtype=torch.float64))


@pytest.mark.parametrize("lr,hr", [((3, 4, 4), (6, 8, 8)), ((3, 3, 5), (3, 6, 10)), ((2, 3, 3), (6, 9, 9)), ((3, 3, 3), (5, 6, 7))])
def test_3d_matches_v1(lr, hr):
    torch.manual_seed(1)
    new, old = _pair(8, 8, spatial_dims=3, **SMALL)
    _compare(new, old, torch.randn(1, 8, *lr, dtype=torch.float64), torch.randn(1, 8, *hr, dtype=torch.float64))


def test_channels_last_inputs_match_v1():
    torch.manual_seed(2)
    new, old = _pair(16, 8, **SMALL)
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64).to(memory_format=torch.channels_last)
    g = torch.randn(2, 8, 12, 10, dtype=torch.float64).to(memory_format=torch.channels_last)
    _compare(new, old, x, g)
    new3, old3 = _pair(8, 8, spatial_dims=3, **SMALL)
    x3 = torch.randn(1, 8, 3, 4, 4, dtype=torch.float64).to(memory_format=torch.channels_last_3d)
    g3 = torch.randn(1, 8, 6, 8, 8, dtype=torch.float64).to(memory_format=torch.channels_last_3d)
    _compare(new3, old3, x3, g3)


VARIANTS = [
    {"use_guided_filter": False},
    {"use_gaussian": False},
    {"similarity": "inner_product"},
    {"fine_grained": False},
    {"fast_guided_filter": False},
    {"use_checkpoint": True},
    {"groups": 2, "pcdc_channels": 8},
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={w}" for k, w in v.items()))
def test_variants_match_v1(variant):
    torch.manual_seed(3)
    new, old = _pair(16, 8, **(SMALL | variant))
    _compare(new, old, torch.randn(2, 16, 5, 7, dtype=torch.float64), torch.randn(2, 8, 10, 14, dtype=torch.float64))


def test_paper_configuration_matches_v1():
    """The default constructor (D = 32, L = 128, r = 8) at x4, where the guided-filter window spans the whole image."""
    torch.manual_seed(4)
    new, old = _pair(32, 16)
    _compare(new, old, torch.randn(1, 32, 6, 6, dtype=torch.float64), torch.randn(1, 16, 24, 24, dtype=torch.float64))


class _CountConvolutions(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts forward convolutions with a learned kernel (one of ``weights``): the adjoint convolutions that the
    fixed-kernel maps (Gaussian, linear upsampling) run as their backward are not recomputation."""

    def __init__(self, weights) -> None:
        super().__init__()
        self.count = 0
        self.ptrs = {w.data_ptr() for w in weights}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default and args[1].data_ptr() in self.ptrs:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("option", [None, "use_checkpoint", "recompute_hidden"])
def test_backward_recomputes_the_similarity_only_when_asked(option, monkeypatch):
    """Issue #27: no forward convolution runs again in backward unless ``use_checkpoint=True`` (whole blocks) or
    ``recompute_hidden=True`` (the compressors' first convolution) asks for it. The 1×1 convolutions run as matrix
    products (networks/blocks/pointwise.py): their forward calls count as convolutions too."""
    from resfu_med.networks.blocks import pointwise

    pointwise_calls = []
    product = pointwise._product
    monkeypatch.setattr(pointwise, "_product", lambda *a: pointwise_calls.append(1) or product(*a))
    torch.manual_seed(5)
    m = ReSFU(16, 8, **({option: True} if option else {}), **SMALL)
    out = m(torch.randn(1, 16, 4, 4, requires_grad=True), torch.randn(1, 8, 8, 8, requires_grad=True))
    assert pointwise_calls  # the forward pass does run its 1x1 convolutions through it
    pointwise_calls.clear()
    with _CountConvolutions(p for p in m.parameters() if p.dim() > 2) as counter:
        out.square().sum().backward()
    count = counter.count + len(pointwise_calls)
    assert (count > 0) == (option is not None)
    if option == "recompute_hidden":
        assert count == 2 and len(pointwise_calls) == 2  # one per PCDC block, the compressors' first convolution


@pytest.mark.parametrize("lr,hr,dims", [((5, 6), (10, 12), 2), ((5, 3), (17, 11), 2), ((2, 3, 3), (4, 6, 6), 3)])
def test_fused_similarity_blocks_match_v1(lr, hr, dims, monkeypatch):
    """The one-pass variant of the two PCDC blocks (``ReSFU._fuse_blocks``, compress_sum) is exact too."""
    monkeypatch.setattr(ReSFU, "_fuse_blocks", True)
    torch.manual_seed(6)
    new, old = _pair(8, 8, spatial_dims=dims, **SMALL)
    _compare(new, old, torch.randn(2, 8, *lr, dtype=torch.float64), torch.randn(2, 8, *hr, dtype=torch.float64))
    new_ck, old_ck = _pair(8, 8, spatial_dims=dims, use_checkpoint=True, **SMALL)
    _compare(new_ck, old_ck, torch.randn(1, 8, *lr, dtype=torch.float64), torch.randn(1, 8, *hr, dtype=torch.float64))
