"""ReSFU against a step-by-step reference forward (docs/resfu_module.md, written out with the pure-PyTorch FNS reference), and
``torch.compile(fullgraph=True)`` of its forward + backward (no graph break through the FNS op)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resfu_med.networks import ReSFU
from resfu_med.networks.resfu import border_mask, upsampling_dilation
from resfu_med.ops import build, fns_gather_reference

SMALL = dict(embed_dim=8, pcdc_channels=16, gf_radius=4, compressor_channels=16)
MODE = {2: "bilinear", 3: "trilinear"}


def reference_forward(m: ReSFU, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """The module's documented steps, one by one, with the always-multiplying power-of-two prescale of issue 3."""

    def prescale(t):
        amax = t.detach().abs().flatten(1).amax(dim=1).float().clamp_min(1.0)
        shift = torch.clamp(torch.ceil(torch.log2(amax)) - 16, min=0)
        return t * torch.exp2(-shift).to(t.dtype).view((-1,) + (1,) * (t.dim() - 1))

    hr, lr = tuple(guide.shape[2:]), tuple(x.shape[2:])
    s = upsampling_dilation(hr, lr)
    q = m.proj_q(m.norm_guide(prescale(guide)))
    k = m.proj_k(m.norm_x(prescale(x)))
    k_up = F.interpolate(k, size=hr, mode=MODE[x.dim() - 2], align_corners=False)
    scores = m.semantic_block(m.guided_filter(q, k_up), k_up, s) + m.detail_block(q, m.gaussian(q), s)
    scores = scores.masked_fill(~border_mask(hr, s, m.kernel_size), torch.finfo(scores.dtype).min / 2)
    return fns_gather_reference(torch.softmax(scores, dim=1), x)


@pytest.mark.parametrize("dims,lr,hr,k", [(2, (7, 7), (14, 14), 3), (2, (12, 9), (44, 32), 5), (3, (3, 4, 4), (6, 8, 8), 3)])
def test_matches_reference_forward_and_gradients(dims, lr, hr, k):
    torch.manual_seed(0)
    # float64, so the comparison sees the algorithm and not float32 summation order (parameter gradients sum 1e3+ terms)
    m = ReSFU(16, 8, kernel_size=k, spatial_dims=dims, **SMALL).double()
    x = torch.randn(2, 16, *lr, dtype=torch.float64, requires_grad=True)
    guide = torch.randn(2, 8, *hr, dtype=torch.float64, requires_grad=True)
    out = m(x, guide)
    want = reference_forward(m, x, guide)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, guide, *m.parameters()), grad)
    ref = torch.autograd.grad(want, (x, guide, *m.parameters()), grad)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_huge_inputs_are_still_prescaled():
    m = ReSFU(16, 8, **SMALL).eval()
    x, guide = torch.randn(1, 16, 4, 4), torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(m(x * 1e30, guide * 1e30) / 1e30, m(x, guide), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not build.available("cpu", warn=False), reason="C++ extension not built")
def test_torch_compile_fullgraph_forward_and_backward():
    torch.manual_seed(0)
    m = ReSFU(8, 8, **SMALL)
    x = torch.randn(1, 8, 6, 6, requires_grad=True)
    guide = torch.randn(1, 8, 12, 12)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")  # fullgraph: any graph break is an error
    out = compiled(x, guide)
    (gx,) = torch.autograd.grad(out.square().sum(), x)
    want = m(x, guide)
    (rx,) = torch.autograd.grad(want.square().sum(), x)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, rx, rtol=1e-4, atol=1e-5)
