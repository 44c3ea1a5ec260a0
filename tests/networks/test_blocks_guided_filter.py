"""Guided filter against slow explicit loops of paper eq. 4–6 and of the half-resolution "fast" procedure (docs/resfu_module.md)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from resfu_med.networks.blocks import GuidedFilter, box_filter, fast_guided_filter, guided_filter


def _window(shape, centre, radius):
    """Index slices of the (2r+1)^d window around ``centre``, clipped to the image."""
    return tuple(slice(max(0, c - radius), min(s, c + radius + 1)) for c, s in zip(centre, shape))


def _slow_coefficients(guide: np.ndarray, src: np.ndarray, radius: int, eps: float):
    """Eq. 5 per window j, then eq. 6's average of (m_j, n_j) over every window containing pixel i."""
    m = np.zeros_like(guide)
    n = np.zeros_like(guide)
    for j in np.ndindex(*guide.shape):
        win = _window(guide.shape, j, radius)
        g, s = guide[win], src[win]
        mu_g, mu_s = g.mean(), s.mean()
        var = (g * g).mean() - mu_g**2  # population variance over the |I_j| valid pixels
        m[j] = ((g * s).mean() - mu_g * mu_s) / (var + eps)
        n[j] = mu_s - m[j] * mu_g
    m_bar = np.zeros_like(guide)
    n_bar = np.zeros_like(guide)
    for i in np.ndindex(*guide.shape):
        covering = [j for j in np.ndindex(*guide.shape) if max(abs(a - b) for a, b in zip(i, j)) <= radius]
        m_bar[i] = np.mean([m[j] for j in covering])
        n_bar[i] = np.mean([n[j] for j in covering])
    return m_bar, n_bar


def _slow_guided_filter(guide, src, radius, eps):
    m_bar, n_bar = _slow_coefficients(guide, src, radius, eps)
    return m_bar * guide + n_bar


def _linear_taps(out_size: int, in_size: int):
    """PyTorch ``align_corners=False`` linear-interpolation taps, written from its definition."""
    taps = []
    for i in range(out_size):
        u = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
        i0 = min(int(math.floor(u)), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        taps.append((i0, i1, u - i0))
    return taps


def _slow_upsample(arr: np.ndarray, size) -> np.ndarray:
    per_axis = [_linear_taps(o, s) for o, s in zip(size, arr.shape)]
    out = np.zeros(size)
    for i in np.ndindex(*size):
        total = 0.0
        for corner in itertools.product((0, 1), repeat=len(size)):
            weight, src = 1.0, []
            for axis, bit in enumerate(corner):
                i0, i1, frac = per_axis[axis][i[axis]]
                weight *= frac if bit else 1.0 - frac
                src.append(i1 if bit else i0)
            total += weight * arr[tuple(src)]
        out[i] = total
    return out


def _slow_fast_guided_filter(guide, src, radius, eps):
    lo = tuple(slice(0, 2 * max(1, s // 2) - 1, 2) for s in guide.shape)  # pixel 2i, floor(S/2) of them
    m_bar, n_bar = _slow_coefficients(guide[lo], src[lo], max(1, radius // 2), eps)
    return _slow_upsample(m_bar, guide.shape) * guide + _slow_upsample(n_bar, guide.shape)


def _random_pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    guide = rng.standard_normal(shape)
    src = 0.7 * guide + 0.3 * rng.standard_normal(shape) + np.linspace(0, 1, guide.size).reshape(shape)
    return guide, src


@pytest.mark.parametrize("shape, radius", [((9, 11), 3), ((6, 5), 8), ((4, 5, 6), 2)])
def test_guided_filter_matches_loops(shape, radius):
    eps = 1e-2
    guide, src = _random_pair(shape)
    expected = _slow_guided_filter(guide, src, radius, eps)
    got = guided_filter(torch.from_numpy(guide)[None, None], torch.from_numpy(src)[None, None], radius, eps)
    np.testing.assert_allclose(got[0, 0].numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape, radius", [((12, 14), 4), ((11, 9), 8), ((16, 16), 8), ((5, 8, 7), 4), ((1, 8, 6), 2)])
def test_fast_guided_filter_matches_loops(shape, radius):
    eps = 1e-3
    guide, src = _random_pair(shape, seed=1)
    expected = _slow_fast_guided_filter(guide, src, radius, eps)
    got = GuidedFilter(radius, eps)(torch.from_numpy(guide)[None, None], torch.from_numpy(src)[None, None])
    np.testing.assert_allclose(got[0, 0].numpy(), expected, rtol=1e-10, atol=1e-10)


def test_channels_and_batch_are_independent():
    guide, src = torch.randn(3, 4, 10, 12, dtype=torch.float64), torch.randn(3, 4, 10, 12, dtype=torch.float64)
    full = fast_guided_filter(guide, src, 8, 1e-3)
    alone = fast_guided_filter(guide[1:2, 2:3], src[1:2, 2:3], 8, 1e-3)
    torch.testing.assert_close(full[1:2, 2:3], alone, rtol=0, atol=1e-12)


def test_identity_guide_reproduces_src_for_tiny_eps():
    # Known answer: guiding an image by itself with ε → 0 gives a = 1, b = 0 in every window, so q_GF = src.
    x = torch.randn(1, 2, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(guided_filter(x, x, 3, 1e-12), x, rtol=1e-6, atol=1e-6)


def test_box_filter_hand_values():
    x = torch.arange(5, dtype=torch.float64).view(1, 1, 5)  # 0 1 2 3 4, radius 1, clipped windows at both ends
    expected = torch.tensor([0.5, 1.0, 2.0, 3.0, 3.5], dtype=torch.float64)
    torch.testing.assert_close(box_filter(x, 1)[0, 0], expected)


def test_half_precision_input_computes_in_float32():
    guide, src = torch.randn(1, 2, 16, 16), torch.randn(1, 2, 16, 16)
    ref = fast_guided_filter(guide, src, 8, 1e-3)
    got = fast_guided_filter(guide.bfloat16(), src.bfloat16(), 8, 1e-3)
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), ref, rtol=0.05, atol=0.05)


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        guided_filter(torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 9), 2, 1e-3)
    with pytest.raises(ValueError):
        GuidedFilter(radius=0)


@pytest.mark.parametrize("fast", [True, False])
def test_channels_last_input_gives_the_same_values_and_layout(fast):
    torch.manual_seed(0)
    g, s = torch.randn(2, 6, 13, 10, dtype=torch.float64), torch.randn(2, 6, 13, 10, dtype=torch.float64)
    f = fast_guided_filter if fast else guided_filter
    want = f(g, s, 4, 1e-3)
    cl = torch.channels_last
    got = f(g.contiguous(memory_format=cl), s.contiguous(memory_format=cl), 4, 1e-3)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got.is_contiguous(memory_format=cl) and want.is_contiguous()


# --- issue #27: the hand-written backward (keeps four coefficient-resolution maps, not autograd's ~15) --------------

SHAPES_1_3D = [(2, 3, 17), (1, 2, 5, 7), (2, 3, 16, 13), (1, 2, 3, 9), (1, 2, 6, 5, 7), (1, 1, 20, 3, 4)]


@pytest.mark.parametrize("shape", SHAPES_1_3D)
@pytest.mark.parametrize("radius", [1, 2, 8])
def test_box_filter_adjoint_is_the_transpose(shape, radius):
    """``<B x, y> = <x, Bᵀ y>`` in float64, windows longer than the axis included (the hand-padded path)."""
    from resfu_med.networks.blocks.guided_filter import box_filter_adjoint

    torch.manual_seed(radius)
    x, y = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    lhs, rhs = (box_filter(x, radius) * y).sum(), (x * box_filter_adjoint(y, radius)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def _plain(fast):
    import importlib

    gf = importlib.import_module("resfu_med.networks.blocks.guided_filter")
    return lambda g, s, r, eps: gf._filter_plain(g, s, max(1, r // 2) if fast else r, eps, fast)


@pytest.mark.parametrize("shape", SHAPES_1_3D)
@pytest.mark.parametrize("fast", [True, False])
def test_hand_written_backward_equals_autograd_of_the_plain_filter(shape, fast):
    """Values bit-identical, gradients of guide and src equal to autograd's through the plain operations (float64)."""
    torch.manual_seed(1)
    g = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    s = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    f = fast_guided_filter if fast else guided_filter
    out, ref = f(g, s, 4, 1e-2), _plain(fast)(g, s, 4, 1e-2)
    assert torch.equal(out, ref)
    w = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad((out * w).sum(), (g, s)), torch.autograd.grad((ref * w).sum(), (g, s))):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_hand_written_backward_gradcheck_and_double_backward():
    torch.manual_seed(2)
    g = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    s = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    for f in (fast_guided_filter, guided_filter):
        assert torch.autograd.gradcheck(lambda a, b: f(a, b, 2, 1e-2), (g, s))
        assert torch.autograd.gradgradcheck(lambda a, b: f(a, b, 2, 1e-2), (g, s))


@pytest.mark.parametrize("fast", [True, False])
def test_hand_written_backward_keeps_less_than_autograd(fast):
    """Kept for backward beyond the inputs: measured 0.22× (fast) and 0.29× (full) of the plain operations' at 2×32×56²."""
    from tests.networks.test_blocks_activation_memory import _Saved

    g = torch.randn(2, 32, 56, 56, requires_grad=True)
    s = torch.randn(2, 32, 56, 56, requires_grad=True)
    f = fast_guided_filter if fast else guided_filter
    with _Saved(g, s) as now:
        f(g, s, 8, 1e-3)
    with _Saved(g, s) as before:
        _plain(fast)(g, s, 8, 1e-3)
    assert now.nbytes < 0.4 * before.nbytes, (now.nbytes, before.nbytes)


def test_no_gradient_needed_runs_the_plain_filter():
    g, s = torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8, requires_grad=True)
    with torch.no_grad():
        out = fast_guided_filter(g, s, 2, 1e-3)
    assert out.grad_fn is None and torch.equal(out, _plain(True)(g, s.detach(), 2, 1e-3))
