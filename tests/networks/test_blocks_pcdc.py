"""PCDC against a direct per-pixel evaluation of paper eq. 11, and the inner-product similarity against loops."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resfu_med.networks.blocks import PCDC, InnerProductSimilarity, PCDCBlock


def _offsets(kernel_size: int, dims: int):
    """Neighbour offsets, row-major with the first axis slowest (FNS order)."""
    r = kernel_size // 2
    return list(itertools.product(range(-r, r + 1), repeat=dims))


def _neighbour(shape, i, offset, dilation):
    """Replicate padding = clamping the neighbour position into the image."""
    return tuple(min(max(c + s * a, 0), n - 1) for c, a, s, n in zip(i, offset, dilation, shape))


def _eq11(query, key, weight, bias, groups, dilation):
    """v_il = Σ_{d in group(l)} Σ_n w_{n,d,l} (k̄_{j_n d} − q̄_{i d}) + b_l, evaluated pixel by pixel."""
    D, L = query.shape[0], weight.shape[0]
    spatial = query.shape[1:]
    K = weight.shape[-1]
    d_per_group, l_per_group = D // groups, L // groups
    out = np.zeros((L, *spatial))
    offsets = _offsets(K, len(spatial))
    for i in np.ndindex(*spatial):
        for l in range(L):
            g = l // l_per_group
            total = bias[l]
            for dd in range(d_per_group):
                d = g * d_per_group + dd
                for offset in offsets:
                    tap = tuple(a + K // 2 for a in offset)
                    j = _neighbour(spatial, i, offset, dilation)
                    total += weight[(l, dd, *tap)] * (key[(d, *j)] - query[(d, *i)])
            out[(l, *i)] = total
    return out


@pytest.mark.parametrize(
    "spatial, kernel_size, groups, dilation",
    [((5, 6), 3, 2, (2, 2)), ((6, 5), 3, 1, (1, 3)), ((4, 7), 5, 4, (1, 1)), ((3, 4, 4), 3, 2, (1, 2, 2))],
)
def test_pcdc_matches_eq11(spatial, kernel_size, groups, dilation):
    D, L = 4, 8
    pcdc = PCDC(D, L, kernel_size, groups, spatial_dims=len(spatial)).double()
    with torch.no_grad():
        pcdc.bias.normal_()
    q = torch.randn(1, D, *spatial, dtype=torch.float64)
    k = torch.randn(1, D, *spatial, dtype=torch.float64)
    got = pcdc(q, k, dilation)[0].detach().numpy()
    expected = _eq11(q[0].numpy(), k[0].numpy(), pcdc.weight.detach().numpy(), pcdc.bias.detach().numpy(), groups, dilation)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_pcdc_of_identical_constant_pair_is_bias():
    # Known answer: with q̄ = k̄ = constant every central difference is zero, so v = b everywhere.
    pcdc = PCDC(8, 8, 3, 4)
    with torch.no_grad():
        pcdc.bias.copy_(torch.arange(8.0))
    c = torch.full((1, 8, 6, 6), 2.5)
    torch.testing.assert_close(pcdc(c, c, 2), torch.arange(8.0).view(1, 8, 1, 1).expand(1, 8, 6, 6))


def test_pcdc_init_and_bad_arguments():
    pcdc = PCDC(32, 128, 3, 4)
    # kaiming normal, fan_out = L · K² = 1152, ReLU gain: std = sqrt(2 / 1152) ≈ 0.0417.
    assert pcdc.weight.std().item() == pytest.approx((2 / 1152) ** 0.5, rel=0.1)
    assert pcdc.bias.abs().sum().item() == 0.0
    with pytest.raises(ValueError):
        PCDC(30, 128, 3, 4)
    with pytest.raises(ValueError):
        PCDC(32, 128, 4, 4)
    with pytest.raises(ValueError):
        pcdc(torch.randn(1, 32, 4, 4), torch.randn(1, 32, 4, 5))
    with pytest.raises(ValueError):
        pcdc(torch.randn(1, 32, 4, 4), torch.randn(1, 32, 4, 4), dilation=0)


def test_pcdc_block_shares_one_groupnorm_and_outputs_k_squared():
    block = PCDCBlock(32, 128, kernel_size=3, groups=4)
    norms = [m for m in block.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert [(n.num_groups, n.num_channels) for n in norms] == [(8, 32), (8, 128)]
    out = block(torch.randn(2, 32, 6, 7), torch.randn(2, 32, 6, 7), dilation=(2, 3))
    assert out.shape == (2, 9, 6, 7)


@pytest.mark.parametrize("spatial, dilation", [((5, 6), (2, 2)), ((3, 4, 5), (1, 2, 2))])
def test_inner_product_matches_loops(spatial, dilation):
    D = 8
    sim = InnerProductSimilarity(D, kernel_size=3, spatial_dims=len(spatial)).double()
    q = torch.randn(2, D, *spatial, dtype=torch.float64)
    k = torch.randn(2, D, *spatial, dtype=torch.float64)
    got = sim(q, k, dilation).detach().numpy()
    # Shared GroupNorm(8, 8) with identity affine: per-channel standardisation within each sample (library answer).
    qn, kn = F.group_norm(q, 8).numpy(), F.group_norm(k, 8).numpy()
    for n in range(2):
        for t, offset in enumerate(_offsets(3, len(spatial))):
            for i in np.ndindex(*spatial):
                j = _neighbour(spatial, i, offset, dilation)
                expected = sum(qn[(n, d, *i)] * kn[(n, d, *j)] for d in range(D))
                assert got[(n, t, *i)] == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    "dims,lr,ratios,k",
    [(1, (5,), (3,), 3), (2, (4, 5), (2, 2), 3), (2, (3, 4), (4, 1), 3), (2, (6, 5), (2, 3), 5), (2, (1, 2), (3, 2), 3),
     (3, (2, 3, 3), (1, 2, 2), 3), (3, (2, 2, 3), (3, 2, 2), 3)],
)
def test_pcdc_with_key_at_input_resolution_equals_upsample_then_pcdc(dims, lr, ratios, k):
    """Conv-then-upsample (PCDC.forward_upsampled_key) vs upsample-then-conv, at every pixel including the border."""
    torch.manual_seed(0)
    pcdc = PCDC(8, 12, kernel_size=k, groups=4, spatial_dims=dims).double()
    torch.nn.init.normal_(pcdc.bias)
    hr = [h * s for h, s in zip(lr, ratios)]
    key = torch.randn(2, 8, *lr, dtype=torch.float64, requires_grad=True)
    query = torch.randn(2, 8, *hr, dtype=torch.float64, requires_grad=True)
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[dims]
    want = pcdc(query, torch.nn.functional.interpolate(key, size=hr, mode=mode, align_corners=False), ratios)
    got = pcdc.forward_upsampled_key(query, key, ratios)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(want)
    for g, r in zip(torch.autograd.grad(got, (query, key, pcdc.weight, pcdc.bias), grad),
                    torch.autograd.grad(want, (query, key, pcdc.weight, pcdc.bias), grad)):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
