"""Gaussian smoothing (σ = 1, 3 taps, normalised, replicate border) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from resfu_med.networks.blocks import GaussianSmoothing

# Normalised 1-D taps for σ = 1: w(±1) = e^{-1/2} / (1 + 2e^{-1/2}), w(0) = 1 / (1 + 2e^{-1/2}).
W_SIDE = math.exp(-0.5) / (1 + 2 * math.exp(-0.5))
W_MID = 1.0 / (1 + 2 * math.exp(-0.5))


def test_taps_by_hand():
    smooth = GaussianSmoothing(1, spatial_dims=2)
    expected = torch.tensor([W_SIDE, W_MID, W_SIDE], dtype=torch.float64)
    torch.testing.assert_close(smooth.weight[0, 0].double(), torch.outer(expected, expected), rtol=1e-6, atol=1e-7)


def test_corner_delta_with_replicate_border_2d():
    x = torch.zeros(1, 1, 4, 5)
    x[0, 0, 0, 0] = 1.0
    out = GaussianSmoothing(1, spatial_dims=2)(x)[0, 0]
    # (0,0): the padded row/column -1 replicates the delta, so rows {-1, 0} and columns {-1, 0} all see it.
    assert out[0, 0].item() == pytest.approx((W_SIDE + W_MID) ** 2, rel=1e-6)
    # (0,1): rows {-1, 0} see it, column 0 is the left neighbour.
    assert out[0, 1].item() == pytest.approx((W_SIDE + W_MID) * W_SIDE, rel=1e-6)
    assert out[1, 1].item() == pytest.approx(W_SIDE * W_SIDE, rel=1e-6)
    assert out[2, 2].item() == 0.0 and out[0, 2].item() == 0.0


def test_corner_delta_3d_and_interior_point():
    x = torch.zeros(1, 2, 4, 4, 4)
    x[0, 0, 0, 0, 0] = 1.0
    x[0, 1, 2, 2, 2] = 1.0
    out = GaussianSmoothing(2, spatial_dims=3)(x)[0]
    assert out[0, 0, 0, 0].item() == pytest.approx((W_SIDE + W_MID) ** 3, rel=1e-6)
    assert out[1, 2, 2, 2].item() == pytest.approx(W_MID**3, rel=1e-6)
    assert out[1, 1, 1, 1].item() == pytest.approx(W_SIDE**3, rel=1e-6)
    assert out[1, 0, 0, 0].item() == 0.0  # channels do not mix


@pytest.mark.parametrize("dims", [2, 3])
def test_constant_and_linear_ramp_are_preserved(dims):
    # Normalised and symmetric: constants stay, and a linear ramp stays away from the border.
    size = (6,) * dims
    ramp = torch.arange(6, dtype=torch.float64).view(-1, *([1] * (dims - 1))).expand(size)
    x = torch.stack([torch.full(size, 3.0, dtype=torch.float64), ramp])[None]
    out = GaussianSmoothing(2, spatial_dims=dims).double()(x)
    torch.testing.assert_close(out[0, 0], x[0, 0])
    torch.testing.assert_close(out[0, 1, 1:-1], x[0, 1, 1:-1])


def test_kernel_is_a_buffer_not_a_parameter():
    smooth = GaussianSmoothing(32)
    assert list(smooth.parameters()) == []
    assert "weight" not in smooth.state_dict()
    assert smooth.half().weight.dtype == torch.float16


def test_wrong_channels_raise():
    with pytest.raises(ValueError):
        GaussianSmoothing(3)(torch.randn(1, 4, 8, 8))
