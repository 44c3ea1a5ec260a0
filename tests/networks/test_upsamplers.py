"""Upsampler registry: shapes over ×2/×4/×8, gradients, known answers, TorchScript, name validation."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from resfu_med.networks.upsamplers import get_upsampler, is_guided, upsampler_names

PEERS = [n for n in upsampler_names() if n != "resfu"]
NAMES = PEERS + ["resfu"]



def _nearest(x: torch.Tensor, r: int) -> torch.Tensor:
    out = x
    for d in range(2, x.dim()):
        out = out.repeat_interleave(r, dim=d)
    return out


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [2, 4, 8])
def test_shapes(name, scale):
    x = torch.rand(2, 16, 4, 5)
    guide = torch.rand(2, 8, 4 * scale, 5 * scale)
    up = get_upsampler(name, 16, 8, scale)
    assert up(x, guide).shape == (2, 16, 4 * scale, 5 * scale)
    if not is_guided(name):  # unguided: the default ratio alone decides
        assert up(x).shape == (2, 16, 4 * scale, 5 * scale)


@pytest.mark.parametrize("name", NAMES)
def test_explicit_size_wins(name):
    x = torch.rand(1, 16, 7, 7)
    guide = torch.rand(1, 8, 14, 14)
    up = get_upsampler(name, 16, 8, 2)
    # size = 2x+1: interpolation resizes, fixed-ratio ones are replicate-padded (MONAI UpCat convention)
    assert up(x, guide, [15, 15]).shape == (1, 16, 15, 15)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    x = torch.rand(2, 16, 6, 6, requires_grad=True)
    guide = torch.rand(2, 8, 24, 24, requires_grad=is_guided(name))
    up = get_upsampler(name, 16, 8, 4)
    (up(x, guide) * torch.rand(2, 16, 24, 24)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in up.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{name}: no gradient reaches {pname}"
    if is_guided(name):
        assert guide.grad is not None and guide.grad.abs().sum() > 0


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_upsampler("bicubic-magic", 8)
    for name in upsampler_names():
        assert name in str(err.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="2D only"):
        get_upsampler("carafe", 8, scale=2, spatial_dims=3)
    with pytest.raises(ValueError, match="guide_channels"):
        get_upsampler("sapa", 8, None)
    with pytest.raises(ValueError, match="integer"):
        get_upsampler("carafe", 8, scale=1.5)
    with pytest.raises(ValueError, match="unexpected"):
        get_upsampler("nearest", 8, align_corners=True)
    with pytest.raises(ValueError, match="guide"):
        get_upsampler("sapa", 8, 4)(torch.rand(1, 8, 4, 4))


@pytest.mark.parametrize("align_corners", [True, False])
def test_bilinear_equals_interpolate(align_corners):
    x = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    up = get_upsampler("bilinear", 3, scale=2, align_corners=align_corners)
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=align_corners)
    torch.testing.assert_close(up(x), ref)
    # any size (non-integer ratio), set by the guide
    ref = F.interpolate(x, size=(11, 16), mode="bilinear", align_corners=align_corners)
    torch.testing.assert_close(up(x, torch.rand(2, 1, 11, 16)), ref)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_nearest_is_pixel_repetition(spatial_dims):
    x = torch.rand(1, 2, *[3] * spatial_dims)
    up = get_upsampler("nearest", 2, scale=4, spatial_dims=spatial_dims)
    torch.testing.assert_close(up(x), _nearest(x, 4))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_deconv_with_ones_kernel_is_nearest(spatial_dims):
    x = torch.rand(1, 3, *[3] * spatial_dims)
    up = get_upsampler("deconv", 3, scale=2, spatial_dims=spatial_dims)
    conv = up.up.deconv
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(3):
            conv.weight[c, c] = 1.0  # transposed conv weight: (in, out, *k)
        conv.bias.zero_()
    torch.testing.assert_close(up(x), _nearest(x, 2))


def test_pixelshuffle_centre_tap_is_nearest():
    x = torch.rand(1, 3, 4, 4)
    r = 2
    up = get_upsampler("pixelshuffle", 3, scale=r)
    conv = [m for m in up.modules() if isinstance(m, torch.nn.Conv2d)][0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        for c in range(3):
            conv.weight[c * r * r : (c + 1) * r * r, c, 1, 1] = 1.0
    torch.testing.assert_close(up(x), _nearest(x, r))


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("k_up", [3, 5])
def test_carafe_uniform_kernels_are_box_mean(scale, k_up):
    x = torch.rand(2, 4, 6, 5, dtype=torch.float64)
    up = get_upsampler("carafe", 4, scale=scale, k_up=k_up).double()
    with torch.no_grad():
        up.encoder.weight.zero_()
        up.encoder.bias.zero_()
    # uniform softmax over k_up² taps with zeros outside x: the zero-padded box mean, repeated σ×σ
    box = F.avg_pool2d(x, k_up, stride=1, padding=k_up // 2, count_include_pad=True)
    torch.testing.assert_close(up(x), _nearest(box, scale))


def test_carafe_centre_kernel_is_nearest():
    x = torch.rand(1, 4, 5, 5, dtype=torch.float64)
    up = get_upsampler("carafe", 4, scale=2, k_up=3).double()
    with torch.no_grad():
        up.encoder.weight.zero_()
        bias = torch.full((9, 4), -1e4, dtype=torch.float64)
        bias[4] = 0.0  # centre tap (index 4 of 3×3) for all σ² sub-pixels; channel = tap·σ² + sub
        up.encoder.bias.copy_(bias.reshape(-1))
    torch.testing.assert_close(up(x), _nearest(x, 2))


@pytest.mark.parametrize("scale", [2, 4])
def test_sapa_constant_keys_average_the_valid_neighbourhood(scale):
    x = torch.rand(2, 4, 6, 7, dtype=torch.float64)
    guide = torch.rand(2, 3, 6 * scale, 7 * scale, dtype=torch.float64)
    up = get_upsampler("sapa", 4, 3, scale).double()
    with torch.no_grad():
        up.key.weight.zero_()
        up.key.bias.fill_(0.7)
    ref = F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    torch.testing.assert_close(up(x, guide), _nearest(ref, scale))


def test_sapa_selects_the_most_similar_neighbour():
    # One-dimensional embedding with q = 1 everywhere and key = 2000·x (added by a hook after the key projection):
    # the softmax is then a hard arg-max, so each HR pixel takes the largest x of its 5×5 LR neighbourhood.
    x = (torch.randperm(36, dtype=torch.float64) / 36).reshape(1, 1, 6, 6)  # values 1/36 apart: a clear winner
    up = get_upsampler("sapa", 1, 1, 2, embed_dim=1).double()
    with torch.no_grad():
        up.key.weight.zero_()
        up.key.bias.zero_()
        up.query.weight.zero_()
        up.query.bias.fill_(1.0)
    up.key.register_forward_hook(lambda mod, inp, out: out + 2000.0 * x)
    out = up(x, torch.rand(1, 1, 12, 12, dtype=torch.float64))
    best = F.max_pool2d(x, 5, stride=1, padding=2)
    torch.testing.assert_close(out, _nearest(best, 2))


@pytest.mark.parametrize("scale", [2, 4, 8])
@pytest.mark.parametrize("dyscope", [False, True])
def test_dysample_zero_offsets_equal_bilinear(scale, dyscope):
    x = torch.rand(2, 8, 5, 6, dtype=torch.float64)
    up = get_upsampler("dysample", 8, scale=scale, groups=4, dyscope=dyscope).double()
    with torch.no_grad():
        up.offset.weight.zero_()
        up.offset.bias.zero_()
    ref = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    torch.testing.assert_close(up(x), ref)


def test_dysample_whole_pixel_offset_shifts_the_sample():
    # An offset of +1 LR pixel in x for every point (scope 0.25 → raw offset 4) samples the next LR column:
    # for ×1-style check use the bilinear reference on x shifted left by one column (border-clamped).
    x = torch.rand(1, 4, 5, 6, dtype=torch.float64)
    up = get_upsampler("dysample", 4, scale=2, groups=1).double()
    with torch.no_grad():
        up.offset.weight.zero_()
        bias = torch.zeros(2, 4, dtype=torch.float64)
        bias[0] = 4.0  # x-offsets (first g·σ² channels) = 4 · 0.25 = 1 LR pixel
        up.offset.bias.copy_(bias.reshape(-1))
    shifted = torch.cat([x[..., 1:], x[..., -1:]], dim=-1)
    ref = F.interpolate(shifted, scale_factor=2, mode="bilinear", align_corners=False)
    # border clamping differs at the first HR column (F.interpolate clamps before the shift): compare the interior
    torch.testing.assert_close(up(x)[..., 1:], ref[..., 1:])


@pytest.mark.parametrize("name", PEERS)
def test_torchscript(name):
    x = torch.rand(1, 16, 6, 6)
    guide = torch.rand(1, 8, 12, 12)
    up = get_upsampler(name, 16, 8, 2).eval()
    scripted = torch.jit.script(up)
    torch.testing.assert_close(scripted(x, guide), up(x, guide))


@pytest.mark.parametrize("name", ["bilinear", "nearest", "deconv", "pixelshuffle"] + ["resfu"])
def test_3d_shapes(name):
    x = torch.rand(1, 8, 3, 4, 5, requires_grad=True)
    guide = torch.rand(1, 4, 6, 8, 10)
    try:
        up = get_upsampler(name, 8, 4, 2, spatial_dims=3)
    except (ValueError, NotImplementedError) as err:  # ReSFU before its 3D version lands
        pytest.skip(f"3D {name} not available: {err}")
    out = up(x, guide)
    assert out.shape == (1, 8, 6, 8, 10)
    out.sum().backward()


def test_resfu_adapter_sizes():
    x = torch.rand(1, 16, 7, 7)
    up = get_upsampler("resfu", 16, 8, 2)
    assert up(x, torch.rand(1, 8, 28, 28)).shape == (1, 16, 28, 28)
    # an explicit size different from the guide's resamples the guide
    assert up(x, torch.rand(1, 8, 28, 28), [14, 14]).shape == (1, 16, 14, 14)
    with pytest.raises(ValueError, match="guide"):
        up(x)
