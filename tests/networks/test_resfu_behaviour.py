"""ReSFU behaviour: known answers (uniform attention = bilinear), border mask, batch independence, gradients, dtypes."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from resfu_med.networks import ReSFU, pcdc_parameter_groups
from resfu_med.networks.blocks import PCDCBlock
from resfu_med.networks.resfu import border_mask
from tests.conftest import requires_cuda

SMALL = dict(embed_dim=8, pcdc_channels=16, gf_radius=4)


def _uniform_scores(model: ReSFU) -> ReSFU:
    """Zero the compressors' last convolutions: both score maps become 0, so attention is uniform over valid neighbours."""
    for block in (model.semantic_block, model.detail_block):
        last = block.compressor[-1]
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
    return model


@pytest.mark.parametrize(
    "dims, lr, hr", [(2, (5, 7), (10, 14)), (2, (14, 14), (32, 32)), (3, (3, 4, 4), (3, 8, 8)), (3, (2, 3, 3), (5, 7, 9))]
)
def test_uniform_attention_with_k1_is_linear_upsampling(dims, lr, hr):
    model = _uniform_scores(ReSFU(6, 4, kernel_size=1, spatial_dims=dims, **SMALL)).double()
    x = torch.randn(2, 6, *lr, dtype=torch.float64)
    out = model(x, torch.randn(2, 4, *hr, dtype=torch.float64))
    mode = "bilinear" if dims == 2 else "trilinear"
    torch.testing.assert_close(out, F.interpolate(x, size=hr, mode=mode, align_corners=False), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("ratio", [2, 4])
def test_uniform_attention_k3_averages_valid_upsampled_neighbours(ratio):
    # Known answer for integer ratios: FNS neighbour (a, b) is the bilinearly upsampled x at (i + r·a, j + r·b), and
    # with zero scores the weights are uniform over the neighbours inside the image.
    model = _uniform_scores(ReSFU(3, 4, **SMALL)).double()
    lr, hr = (4, 5), (4 * ratio, 5 * ratio)
    x = torch.randn(1, 3, *lr, dtype=torch.float64)
    out = model(x, torch.randn(1, 4, *hr, dtype=torch.float64))
    up = F.interpolate(x, size=hr, mode="bilinear", align_corners=False)
    expected = torch.zeros_like(up)
    for i, j in itertools.product(range(hr[0]), range(hr[1])):
        vals = [up[0, :, i + ratio * a, j + ratio * b] for a in (-1, 0, 1) for b in (-1, 0, 1)
                if 0 <= i + ratio * a < hr[0] and 0 <= j + ratio * b < hr[1]]
        expected[0, :, i, j] = torch.stack(vals).mean(0)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dims, lr, hr", [(2, (4, 6), (16, 24)), (2, (14, 14), (32, 32)), (3, (2, 3, 3), (2, 6, 6))])
def test_border_neighbours_get_zero_attention(dims, lr, hr):
    model = ReSFU(4, 4, spatial_dims=dims, **SMALL)
    with torch.no_grad():  # large random scores so that a leak through the mask would show
        for block in (model.semantic_block, model.detail_block):
            block.compressor[-1].weight.normal_(std=2.0)
    attn = model.attention(torch.randn(2, 4, *lr), torch.randn(2, 4, *hr))
    assert attn.shape == (2, 3**dims, *hr) and attn.dtype == torch.float32
    torch.testing.assert_close(attn.sum(1), torch.ones(2, *hr))
    dilation = [H // h if H % h == 0 else int(H / h + 0.5) for H, h in zip(hr, lr)]
    offsets = list(itertools.product((-1, 0, 1), repeat=dims))
    for t, off in enumerate(offsets):
        for pos in itertools.product(*[range(s) for s in hr]):
            outside = any(not 0 <= p + s * a < n for p, s, a, n in zip(pos, dilation, off, hr))
            if outside:
                assert attn[(slice(None), t, *pos)].max().item() < 1e-30


def test_border_mask_hand_values():
    # 1-D view of a 2-D mask: HR width 5, dilation 2, K = 3 -> offset -2 valid for i >= 2, +2 valid for i <= 2.
    mask = border_mask((1, 5), (1, 2), 3)[0]
    row_centre = [mask[3 + b, 0].tolist() for b in range(3)]  # a = 0, b = -1, 0, +1
    assert row_centre == [[False, False, True, True, True], [True] * 5, [True, True, True, False, False]]
    assert not mask[0].any() and not mask[6].any()  # a = ±1 leaves a height-1 image


def _batch_vs_single(model, x, guide):
    with torch.no_grad():
        full = model(x, guide)
        for n in range(x.shape[0]):
            alone = model(x[n : n + 1], guide[n : n + 1])
            torch.testing.assert_close(full[n : n + 1], alone, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kwargs", [{}, {"fine_grained": False}, {"similarity": "inner_product"}])
def test_batch_independence_2d(kwargs):
    model = ReSFU(32, 16, **kwargs)
    _batch_vs_single(model, torch.randn(3, 32, 5, 5), torch.randn(3, 16, 20, 20))


def test_batch_independence_3d():
    model = ReSFU(8, 4, spatial_dims=3, **SMALL)
    _batch_vs_single(model, torch.randn(3, 8, 2, 3, 3), torch.randn(3, 4, 4, 6, 6))


@pytest.mark.parametrize(
    "dims, kwargs",
    [(2, {}), (2, {"fine_grained": False}), (2, {"similarity": "inner_product"}), (2, {"use_checkpoint": True}), (3, {})],
)
def test_gradients_reach_every_parameter(dims, kwargs):
    model = ReSFU(8, 8, spatial_dims=dims, **SMALL, **kwargs)
    lr, hr = ((4, 4), (8, 8)) if dims == 2 else ((2, 3, 3), (4, 6, 6))
    x = torch.randn(2, 8, *lr, requires_grad=True)
    guide = torch.randn(2, 8, *hr, requires_grad=True)
    out = model(x, guide)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0 and guide.grad.abs().sum() > 0


def test_checkpoint_gives_same_output_and_gradients():
    torch.manual_seed(1)
    plain = ReSFU(8, 8, **SMALL)
    ckpt = ReSFU(8, 8, use_checkpoint=True, **SMALL)
    ckpt.load_state_dict(plain.state_dict())
    x, guide = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 16, 16)
    out_a, out_b = plain(x, guide), ckpt(x, guide)
    torch.testing.assert_close(out_a, out_b)
    out_a.sum().backward()
    out_b.sum().backward()
    for (name, pa), pb in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)


@pytest.mark.parametrize("dims", [2, 3])
def test_ablation_variants_run_and_differ(dims):
    if dims == 2:
        x, guide, kw = torch.randn(1, 16, 6, 6), torch.randn(1, 8, 24, 24), {}
    else:
        x, guide, kw = torch.randn(1, 16, 2, 3, 3), torch.randn(1, 8, 2, 6, 6), SMALL
    variants = [{}, {"use_guided_filter": False}, {"use_gaussian": False}, {"similarity": "inner_product"}, {"fine_grained": False}]
    outs = []
    for kwargs in variants:
        torch.manual_seed(0)  # same parameters for every PCDC variant: only the switch differs
        model = ReSFU(16, 8, spatial_dims=dims, **kw, **kwargs)
        with torch.no_grad():
            for block in (model.semantic_block, model.detail_block):
                if isinstance(block, PCDCBlock):
                    block.compressor[-1].weight.mul_(20.0)  # sharper attention so the variants separate clearly
            outs.append(model(x, guide))
    for a, b in itertools.combinations(range(len(outs)), 2):
        assert (outs[a] - outs[b]).abs().max() > 1e-3, (variants[a], variants[b])


@pytest.mark.parametrize("dims", [2, 3])
def test_autocast_bfloat16_cpu_close_to_float32(dims):
    if dims == 2:
        model, x, guide = ReSFU(32, 16), torch.randn(2, 32, 7, 7), torch.randn(2, 16, 28, 28)
    else:
        model, x, guide = ReSFU(16, 8, spatial_dims=3, **SMALL), torch.randn(1, 16, 2, 3, 3), torch.randn(1, 8, 2, 6, 6)
    with torch.no_grad():
        ref = model(x, guide)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, guide)
            low_in = model(x.bfloat16(), guide.bfloat16())
    assert low.dtype == torch.float32 and low_in.dtype == torch.bfloat16
    for out in (low, low_in):
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)


def test_float16_where_supported():
    model = ReSFU(16, 8).half()
    x, guide = torch.randn(1, 16, 6, 6).half(), torch.randn(1, 8, 24, 24).half()
    try:
        with torch.no_grad():
            out = model(x, guide)
    except (RuntimeError, NotImplementedError) as err:  # some CPU builds lack half kernels
        pytest.skip(f"float16 not supported on this CPU build: {err}")
    ref = model.float()(x.float(), guide.float())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref.detach(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("fine_grained", [True, False])
def test_jit_trace(fine_grained):
    model = ReSFU(16, 8, fine_grained=fine_grained).eval()
    x, guide = torch.randn(1, 16, 6, 6), torch.randn(1, 8, 24, 24)
    with torch.no_grad():
        traced = torch.jit.trace(model, (x, guide), check_trace=False)
        x2, guide2 = torch.randn(1, 16, 6, 6), torch.randn(1, 8, 24, 24)
        torch.testing.assert_close(traced(x2, guide2), model(x2, guide2))


def test_pcdc_parameter_groups():
    model = torch.nn.Sequential(ReSFU(16, 8), torch.nn.Conv2d(3, 3, 1))
    groups = pcdc_parameter_groups(model, lr=0.01, pcdc_lr_mult=10.0, weight_decay=1e-4)
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.1)]
    pcdc_weights = {id(model[0].semantic_block.pcdc.weight), id(model[0].detail_block.pcdc.weight)}
    assert {id(p) for p in groups[1]["params"]} == pcdc_weights
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert all(g["weight_decay"] == 1e-4 for g in groups)
    assert len(pcdc_parameter_groups(torch.nn.Linear(2, 2), lr=0.1)) == 1


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_matches_cpu(dtype):
    model = ReSFU(32, 16)
    x, guide = torch.randn(2, 32, 7, 7), torch.randn(2, 16, 28, 28)
    with torch.no_grad():
        ref = model(x, guide)
        cuda_model = model.cuda()
        torch.testing.assert_close(cuda_model(x.cuda(), guide.cuda()).cpu(), ref, rtol=1e-4, atol=1e-4)
        with torch.autocast("cuda", dtype=dtype):
            low = cuda_model(x.cuda(), guide.cuda())
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low.float().cpu(), ref, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("dims,weight", [(2, 0.5), (2, 0.9), (3, 0.5)])
def test_init_centre_weight_starts_the_kernels_on_the_centre(dims, weight):
    """``init_centre_weight=p``: at initialisation the softmax gives the centre neighbour ≈ p (the other scores are
    ~0 there), through one bias of the semantic block; the weights keep their names and shapes (checkpoints load
    either way)."""
    torch.manual_seed(11)
    m = ReSFU(16, 8, spatial_dims=dims, init_centre_weight=weight)
    count = 3**dims
    bias = m.semantic_block.compressor[4].bias
    torch.testing.assert_close(bias[count // 2].item(), float(torch.log(torch.tensor(weight * (count - 1) / (1 - weight)))))
    assert torch.count_nonzero(bias) == 1
    lr, hr = (6,) * dims, (12,) * dims
    attn = m.attention(torch.randn(2, 16, *lr), torch.randn(2, 8, *hr))
    inner = (slice(None), count // 2) + (slice(2, -2),) * dims  # away from the image border (masked neighbours)
    assert abs(attn[inner].mean().item() - weight) < 0.06
    plain = ReSFU(16, 8, spatial_dims=dims)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}
    plain_attn = plain.attention(torch.randn(2, 16, *lr), torch.randn(2, 8, *hr))
    assert abs(plain_attn[inner].mean().item() - 1 / count) < 0.03  # the default: near uniform


def test_init_centre_weight_rejects_what_it_cannot_set():
    for bad in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match="init_centre_weight"):
            ReSFU(8, 8, init_centre_weight=bad)
    with pytest.raises(ValueError, match="similarity='pcdc'"):
        ReSFU(8, 8, similarity="inner_product", init_centre_weight=0.5)
    m = ReSFU(8, 8, kernel_size=1, init_centre_weight=0.5)  # one neighbour: weight 1 whatever its score
    assert torch.count_nonzero(m.semantic_block.compressor[4].bias) == 0


def test_init_centre_weight_reaches_the_unet_steps():
    from resfu_med.networks.basic_unet import BasicUNet

    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=(8, 8, 16, 32, 64, 8),
                    upsampler_kwargs={"init_centre_weight": 0.5, "embed_dim": 8, "pcdc_channels": 16,
                                      "compressor_channels": 16})
    steps = [m for m in net.modules() if isinstance(m, ReSFU)]
    assert steps and all(torch.count_nonzero(m.semantic_block.compressor[4].bias) == 1 for m in steps)
