"""The pure-PyTorch FNS reference against hand-computed values and torch's own interpolation (independent answers)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resfu_med.ops import fns_gather_reference


def _one_hot(n: int, taps: int, t: int, size: tuple[int, ...]) -> torch.Tensor:
    attn = torch.zeros(n, taps, *size, dtype=torch.float64)
    attn[:, t] = 1.0
    return attn


@pytest.mark.parametrize("lr,hr", [((4, 4), (4, 4)), ((5, 6), (10, 12)), ((3, 4), (12, 16)), ((14, 14), (32, 32)), ((5, 3), (17, 11))])
def test_k1_equals_bilinear_interpolate(lr, hr):
    x = torch.randn(2, 3, *lr, dtype=torch.float64)
    out = fns_gather_reference(torch.ones(2, 1, *hr, dtype=torch.float64), x)
    torch.testing.assert_close(out, F.interpolate(x, size=hr, mode="bilinear", align_corners=False), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lr,hr", [((2, 3, 3), (4, 6, 6)), ((3, 4, 4), (3, 8, 8)), ((3, 3, 2), (5, 7, 6))])
def test_k1_equals_trilinear_interpolate(lr, hr):
    x = torch.randn(1, 2, *lr, dtype=torch.float64)
    out = fns_gather_reference(torch.ones(1, 1, *hr, dtype=torch.float64), x)
    torch.testing.assert_close(out, F.interpolate(x, size=hr, mode="trilinear", align_corners=False), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,r", [(3, 2), (5, 2), (3, 4)])
def test_one_hot_selects_shifted_upsampled_pixel_2d(k, r):
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64)
    up = F.interpolate(x, scale_factor=r, mode="bilinear", align_corners=False)
    H, W = up.shape[2:]
    R = k // 2
    for a, b in [(-R, 0), (R, R), (0, -1), (1, 1)]:
        out = fns_gather_reference(_one_hot(1, k * k, (a + R) * k + (b + R), (H, W)), x)
        # in-range neighbours only: the clamped ones are tested separately
        i0, i1 = max(0, -r * a), min(H, H - r * a)
        j0, j1 = max(0, -r * b), min(W, W - r * b)
        torch.testing.assert_close(out[..., i0:i1, j0:j1], up[..., i0 + r * a : i1 + r * a, j0 + r * b : j1 + r * b])


def test_one_hot_selects_shifted_upsampled_pixel_3d_anisotropic():
    # ratios (1, 2, 2), K = 3: offset (a, b, c) = (1, -1, 1)
    x = torch.randn(1, 2, 4, 5, 5, dtype=torch.float64)
    up = F.interpolate(x, size=(4, 10, 10), mode="trilinear", align_corners=False)
    a, b, c = 1, -1, 1
    out = fns_gather_reference(_one_hot(1, 27, ((a + 1) * 3 + (b + 1)) * 3 + (c + 1), (4, 10, 10)), x)
    torch.testing.assert_close(out[:, :, :3, 2:, :8], up[:, :, 1:, :8, 2:])


def test_border_clamping_by_hand_2x2():
    # x = [[1, 2], [3, 4]] upsampled x2, neighbour (a, b) = (+1, 0): u = (i + .5)/2 - .5 + 1 = .75, 1.25, 1.75, 2.25
    # clamped to .75, 1, 1, 1; v = -.25, .25, .75, 1.25 clamped to 0, .25, .75, 1.
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64, requires_grad=True)
    attn = _one_hot(1, 9, (1 + 1) * 3 + 1, (4, 4))
    out = fns_gather_reference(attn, x)
    expected = torch.tensor(
        [[2.5, 2.75, 3.25, 3.5], [3.0, 3.25, 3.75, 4.0], [3.0, 3.25, 3.75, 4.0], [3.0, 3.25, 3.75, 4.0]], dtype=torch.float64
    )
    torch.testing.assert_close(out[0, 0], expected)
    # d(sum out)/dx = (row weights) x (col weights): rows (.25, 3.75), cols (2, 2); the last LR row gets its gradient.
    out.sum().backward()
    torch.testing.assert_close(x.grad[0, 0], torch.tensor([[0.5, 0.5], [7.5, 7.5]], dtype=torch.float64))


def test_border_clamping_by_hand_3d_depth():
    # depth 2 -> 4, offset a = -1 in depth, K = 3; in-plane size 1 -> 1: u_z = (i + .5)/2 - .5 - 1 = -1.25, -.75, -.25, .25
    # clamped to 0, 0, 0, .25 -> values 1, 1, 1, .75 * 1 + .25 * 5 = 2
    x = torch.tensor([1.0, 5.0], dtype=torch.float64).view(1, 1, 2, 1, 1)
    attn = _one_hot(1, 27, (0 * 3 + 1) * 3 + 1, (4, 1, 1))
    out = fns_gather_reference(attn, x)
    torch.testing.assert_close(out.flatten(), torch.tensor([1.0, 1.0, 1.0, 2.0], dtype=torch.float64))


def test_rejects_bad_neighbour_count():
    with pytest.raises(ValueError, match="attn"):
        fns_gather_reference(torch.ones(1, 4, 4, 4), torch.ones(1, 1, 2, 2))
