"""What ReSFU's blocks keep for the backward pass (issue #27: TransUNet's step memory), each against the plain layers
it replaces, in float64: the fixed-kernel depthwise convolution (Gaussian smoothing, the linear upsampling of the
semantic PCDC scores), GroupNorm followed by a 1×1 convolution (the projections and the compressors), and the whole
module against the frozen module of main before the rewrites.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resfu_med.networks import ReSFU
from resfu_med.networks.blocks.fixed_conv import fixed_depthwise_conv
from resfu_med.networks.blocks.pcdc import group_norm_then_conv
from tests.networks.resfu_reference_v1 import ReSFUv1

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
TOL = dict(rtol=1e-10, atol=1e-12)


class _Saved:
    """Storages autograd packs for backward while active (bytes, deduplicated), minus those of ``exclude``."""

    def __init__(self, *exclude: torch.Tensor) -> None:
        self.skip = {t.untyped_storage().data_ptr() for t in exclude}
        self.storages: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.skip:
            self.storages[ptr] = t.untyped_storage().nbytes()
        return t

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


@pytest.mark.parametrize("dims,stride,transposed", [(1, 1, False), (2, 1, False), (3, 1, False), (1, 3, True),
                                                    (2, (2, 1), True), (3, 2, True)])
def test_fixed_depthwise_conv_equals_conv_and_keeps_only_its_kernel(dims, stride, transposed):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *(7, 6, 5)[:dims], dtype=torch.float64, requires_grad=True)
    weight = torch.rand(3, 1, *(3, 4, 3)[:dims], dtype=torch.float64)
    step = (stride,) * dims if isinstance(stride, int) else stride
    want = (CONV_T if transposed else CONV)[dims](x, weight, stride=step, groups=3)
    with _Saved(x, weight) as saved:
        got = fixed_depthwise_conv(x, weight, stride, transposed=transposed)
    torch.testing.assert_close(got, want, **TOL)
    assert saved.nbytes == 0  # the input (or any activation) is not kept
    grad = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, x, grad)[0], torch.autograd.grad(want, x, grad)[0], **TOL)


def test_fixed_depthwise_conv_bad_arguments():
    x = torch.randn(1, 2, 5, 5)
    with pytest.raises(ValueError, match="constant"):
        fixed_depthwise_conv(x, torch.ones(2, 1, 3, 3, requires_grad=True))
    with pytest.raises(ValueError, match="depthwise"):
        fixed_depthwise_conv(x, torch.ones(3, 1, 3, 3))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided", "3d"])
def test_group_norm_then_conv_equals_the_two_layers_and_keeps_no_normalised_map(layout):
    torch.manual_seed(1)
    shape = (2, 16, 4, 5, 6) if layout == "3d" else (2, 16, 9, 7)
    h = torch.randn(*shape, dtype=torch.float64) * 3 + 1
    if layout == "channels_last":
        h = h.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a non-dense view: the GroupNorm kernels must not read it as dense
        h = torch.randn(2, 16, 9, 14, dtype=torch.float64)[..., ::2]
    h.requires_grad_(True)
    dims = h.dim() - 2
    gamma, beta = torch.randn(16, dtype=torch.float64, requires_grad=True), torch.randn(16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 16, *(1,) * dims, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(9, dtype=torch.float64, requires_grad=True)
    want = CONV[dims](F.group_norm(h, 4, gamma, beta, 1e-5), weight, bias)
    with _Saved(h, gamma, beta, weight, bias) as saved:
        got = group_norm_then_conv(h, 4, gamma, beta, 1e-5, weight, bias)
    torch.testing.assert_close(got, want, **TOL)
    # kept: h (a dense copy only for the strided view) and the (N, groups) statistics, never the normalised map
    assert saved.nbytes <= (h.numel() * 8 if layout == "strided" else 0) + 4 * 2 * 4 * 8
    grad = torch.randn_like(want)
    inputs = (h, gamma, beta, weight, bias)
    for g, r in zip(torch.autograd.grad(got, inputs, grad), torch.autograd.grad(want, inputs, grad)):
        torch.testing.assert_close(g, r, **TOL)


def test_group_norm_then_conv_without_grad_runs_the_layers():
    h, w = torch.randn(1, 8, 5, 5), torch.randn(4, 8, 1, 1)
    with torch.no_grad():
        got = group_norm_then_conv(h, 2, None, None, 1e-5, w, None)
    assert torch.equal(got, F.conv2d(F.group_norm(h, 2, eps=1e-5), w))


@pytest.mark.parametrize("lr,hr", [((14, 14), (28, 28)), ((7, 9), (28, 27))])
def test_resfu_keeps_less_than_the_module_before_issue_27(lr, hr):
    """The activations one ReSFU step keeps for backward, against main before issue #27 (2D, ReSFU's own widths:
    PCDC and compressor 128): measured 0.77× for both ratios after the activation rewrites, 0.59× since the guided
    filter's hand-written backward and the GroupNorm + centre-term function; the bound leaves margin."""
    torch.manual_seed(3)
    new, old = ReSFU(64, 32), ReSFUv1(64, 32)
    x = torch.randn(2, 64, *lr, requires_grad=True)
    guide = torch.randn(2, 32, *hr, requires_grad=True)
    with _Saved(x, guide, *new.parameters()) as now:
        new(x, guide)
    with _Saved(x, guide, *old.parameters()) as before:
        old(x, guide)
    assert now.nbytes < 0.65 * before.nbytes, (now.nbytes, before.nbytes)


def test_group_norm_then_conv_double_backward_equals_the_layers():
    """``create_graph=True`` differentiates the plain layers again: second derivatives as before the rewrite."""
    torch.manual_seed(4)
    h = torch.randn(2, 8, 5, 6, dtype=torch.float64, requires_grad=True)
    gamma, beta = torch.randn(8, dtype=torch.float64, requires_grad=True), torch.randn(8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 8, 1, 1, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(9, dtype=torch.float64, requires_grad=True)
    inputs = (h, gamma, beta, weight, bias)

    def second(fn):
        (g,) = torch.autograd.grad(fn().square().sum(), h, create_graph=True)
        return torch.autograd.grad(g.square().sum(), inputs)

    got = second(lambda: group_norm_then_conv(h, 4, gamma, beta, 1e-5, weight, bias))
    want = second(lambda: F.conv2d(F.group_norm(h, 4, gamma, beta, 1e-5), weight, bias))
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, **TOL)


def test_resfu_double_backward_with_the_reference_gather_matches_the_frozen_module():
    """docs/fns_operator.md: double backward works with the reference backend; the rewrites keep it working."""
    from resfu_med.ops import use_backend

    torch.manual_seed(5)
    small = dict(embed_dim=8, pcdc_channels=16, compressor_channels=16, gf_radius=2)
    old = ReSFUv1(8, 8, **small).double()
    new = ReSFU(8, 8, **small).double()
    new.load_state_dict(old.state_dict())
    x = torch.randn(1, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    guide = torch.randn(1, 8, 8, 8, dtype=torch.float64, requires_grad=True)
    grads = []
    with use_backend("reference"):
        for m in (new, old):
            (gx,) = torch.autograd.grad(m(x, guide).square().sum(), x, create_graph=True)
            grads.append(torch.autograd.grad(gx.square().sum(), (guide, *m.parameters())))
    for g, r in zip(*grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("fuse_key", [False, True])
def test_pcdc_with_its_group_norms_equals_the_layers_and_keeps_no_normalised_map(dims, fuse_key):
    """``PCDC(query, key, query_norm=norm[, key_norm=norm])`` equals ``PCDC(norm(query), norm(key))`` (values and every
    gradient, float64) and keeps ``query`` and ``key``, not their normalised (and, for the key, padded) maps."""
    from resfu_med.networks.blocks.pcdc import PCDC
    from resfu_med.networks.blocks.norm import group_norm

    torch.manual_seed(6)
    pcdc, norm = PCDC(8, 16, groups=4, spatial_dims=dims).double(), group_norm(8, 4, dims).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
        pcdc.bias.uniform_(-0.5, 0.5)
    size = (6, 7, 5)[:dims]
    q = torch.randn(2, 8, *size, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 8, *size, dtype=torch.float64, requires_grad=True)
    params = (*pcdc.parameters(), *norm.parameters())
    with _Saved(q, k, *params) as fused:
        got = pcdc(q, k if fuse_key else norm(k), 2, query_norm=norm, key_norm=norm if fuse_key else None)
    with _Saved(q, k, *params) as plain:
        want = pcdc(norm(q), norm(k), 2)
    torch.testing.assert_close(got, want, **TOL)
    w = torch.randn_like(got)
    for g, r in zip(torch.autograd.grad((got * w).sum(), (q, k, *params)), torch.autograd.grad((want * w).sum(), (q, k, *params))):
        torch.testing.assert_close(g, r, **TOL)
    padded_key = 2 * 8 * int(torch.tensor([s + 4 for s in size]).prod()) * 8  # dilation 2, radius 1: 2 per side
    maps = q.numel() * 8 + (padded_key if fuse_key else 0)
    assert 0 <= plain.nbytes - fused.nbytes - maps < 1024  # the maps, and the padding's index vectors (bytes)


@pytest.mark.parametrize("shape,pad", [((2, 3, 5), [2, 1]), ((1, 2, 4, 3), [1, 2, 0, 3]), ((1, 2, 3, 2, 4), [2, 2, 1, 1, 3, 0])])
def test_replicate_pad_adjoint_is_the_transpose(shape, pad):
    from resfu_med.networks.blocks.padding import replicate_pad, replicate_pad_adjoint

    torch.manual_seed(7)
    x = torch.randn(shape, dtype=torch.float64)
    padded = replicate_pad(x, pad)
    y = torch.randn_like(padded)
    torch.testing.assert_close((padded * y).sum(), (x * replicate_pad_adjoint(y, pad)).sum(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dims", [2, 3])
def test_recompute_hidden_equals_the_default_and_keeps_one_hidden_map_less_per_block(dims):
    """``ReSFU(recompute_hidden=True)``: the same values and gradients (float64), and each PCDC block keeps one
    compressor-width HR map less (two per module)."""
    torch.manual_seed(8)
    small = dict(embed_dim=8, pcdc_channels=16, compressor_channels=16, gf_radius=2, spatial_dims=dims)
    ref, new = ReSFU(8, 8, **small).double(), ReSFU(8, 8, recompute_hidden=True, **small).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    new.load_state_dict(ref.state_dict())
    lr, hr = (3, 4, 3)[:dims], (6, 8, 6)[:dims]
    x = torch.randn(2, 8, *lr, dtype=torch.float64, requires_grad=True)
    guide = torch.randn(2, 8, *hr, dtype=torch.float64, requires_grad=True)
    with _Saved(x, guide, *ref.parameters()) as kept_ref:
        want = ref(x, guide)
    with _Saved(x, guide, *new.parameters()) as kept_new:
        got = new(x, guide)
    assert torch.equal(got, want)
    w = torch.randn_like(got)
    grads = [torch.autograd.grad((o * w).sum(), (x, guide, *m.parameters())) for o, m in ((got, new), (want, ref))]
    for g, r in zip(*grads):
        torch.testing.assert_close(g, r, **TOL)
    hidden_map = 2 * 16 * int(torch.tensor(hr).prod()) * 8
    assert kept_ref.nbytes - kept_new.nbytes == 2 * hidden_map
