"""ReSFU output shapes, parameter counts and argument checks (hand-derived expectations)."""

from __future__ import annotations

import pytest
import torch

from resfu_med.networks import ReSFU


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_paper_config():
    # docs/resfu_module.md: C = c = 256, D = 32, G = 4, L = 128, K = 3 -> 47,570.
    assert _count(ReSFU(256, 256)) == 47570


def _hand_count(C, c, D, K, G, L, dims, hidden=128):
    taps = K**dims
    norms_in = 2 * C + 2 * c
    projections = (c * D + D) + (C * D + D)
    block = 2 * D + (L * (D // G) * taps + L) + (L // 4 * hidden + hidden) + 2 * hidden + (hidden * taps + taps)
    return norms_in + projections + 2 * block


@pytest.mark.parametrize(
    "C, c, D, K, G, L, dims, expected",
    [
        # Written out by hand: GN 128 + 64; proj 32·16+16 = 528, 64·16+16 = 1040; block: GN 32, PCDC 32·8·25+32 = 6432,
        # conv 8·128+128 = 1152, GN 256, conv 128·25+25 = 3225 -> 11,097; total 128+64+528+1040+2·11,097 = 23,954.
        (64, 32, 16, 5, 2, 32, 2, 23954),
        # 3D paper config: PCDC 128·8·27+128 = 27,776, last conv 128·27+27 = 3,483 -> block 35,803; 1024+16,448+71,606.
        (256, 256, 32, 3, 4, 128, 3, 89078),
    ],
)
def test_parameter_count_other_configs(C, c, D, K, G, L, dims, expected):
    assert _hand_count(C, c, D, K, G, L, dims) == expected
    model = ReSFU(C, c, kernel_size=K, embed_dim=D, groups=G, pcdc_channels=L, spatial_dims=dims)
    assert _count(model) == expected


def test_inner_product_variant_count():
    # GN 1024 + projections 16,448 + two shared GroupNorm(8, 32) with 64 parameters each.
    assert _count(ReSFU(256, 256, similarity="inner_product")) == 17600


@pytest.mark.parametrize(
    "lr, hr",
    [((7, 7), (14, 14)), ((4, 4), (16, 16)), ((3, 4), (24, 32)), ((14, 14), (32, 32)), ((5, 3), (17, 11)), ((6, 6), (6, 6))],
)
def test_output_shape_2d(lr, hr):
    model = ReSFU(16, 8)
    out = model(torch.randn(2, 16, *lr), torch.randn(2, 8, *hr))
    assert out.shape == (2, 16, *hr)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("lr, hr", [((3, 4, 4), (6, 8, 8)), ((4, 4, 4), (4, 8, 8)), ((2, 3, 3), (5, 7, 9))])
def test_output_shape_3d(lr, hr):
    model = ReSFU(8, 4, spatial_dims=3, embed_dim=8, pcdc_channels=16)
    out = model(torch.randn(1, 8, *lr), torch.randn(1, 4, *hr))
    assert out.shape == (1, 8, *hr)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "x_shape, g_shape",
    [
        ((1, 16, 4, 4), (1, 8, 8)),  # guide rank
        ((1, 15, 4, 4), (1, 8, 8, 8)),  # x channels
        ((1, 16, 4, 4), (1, 7, 8, 8)),  # guide channels
        ((2, 16, 4, 4), (1, 8, 8, 8)),  # batch
        ((1, 16, 8, 8), (1, 8, 4, 8)),  # HR smaller than LR
        ((0, 16, 4, 4), (0, 8, 8, 8)),  # empty
    ],
)
def test_bad_inputs_raise(x_shape, g_shape):
    model = ReSFU(16, 8)
    with pytest.raises(ValueError):
        model(torch.randn(*x_shape), torch.randn(*g_shape))


@pytest.mark.parametrize(
    "kwargs", [{"kernel_size": 2}, {"spatial_dims": 1}, {"similarity": "cosine"}, {"groups": 3}, {"gf_radius": 0}]
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        ReSFU(16, 8, **kwargs)
