"""DynUNet, SwinUNETR and UNETR on the upsampler registry: equal to MONAI's networks with deconv (copied weights),
every upsampler in 2D, ReSFU in 3D guided by area-pooled C1 with anisotropic ratios, deep supervision, tracing."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from monai.networks import nets as monai_nets

from resfu_med.networks import DynUNet, SwinUNETR, UNETR
from resfu_med.networks.guided_up import GuidedUpBlock
from resfu_med.networks.upsamplers import upsampler_names

SLIM = {"embed_dim": 8, "pcdc_channels": 16, "compressor_channels": 16}  # small ReSFU for CPU tests


def dynunet_args(spatial_dims: int, anisotropic: bool = False) -> dict:
    s1 = (1, 2, 2) if anisotropic else 2
    strides = [1, s1, 2, 2] if spatial_dims == 3 else [1, 2, 2, 2]
    return {"spatial_dims": spatial_dims, "in_channels": 1, "out_channels": 3, "kernel_size": [3] * 4, "strides": strides,
            "upsample_kernel_size": strides[1:], "filters": [8, 8, 16, 16]}


def swin_args(spatial_dims: int) -> dict:
    return {"in_channels": 1, "out_channels": 3, "feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1),
            "window_size": 4, "spatial_dims": spatial_dims}


def unetr_args(spatial_dims: int) -> dict:
    return {"in_channels": 1, "out_channels": 3, "img_size": 32, "feature_size": 8, "hidden_size": 24, "mlp_dim": 48,
            "num_heads": 2, "spatial_dims": spatial_dims}


NETS = {"dynunet": (DynUNet, monai_nets.DynUNet, dynunet_args), "swinunetr": (SwinUNETR, monai_nets.SwinUNETR, swin_args),
        "unetr": (UNETR, monai_nets.UNETR, unetr_args)}


def _shape(net: str, spatial_dims: int) -> tuple[int, ...]:
    # SwinUNETR's bottleneck is 1/32 of the input: one side of 64 keeps instance norm above a single element
    first = 64 if net == "swinunetr" else 32
    return (2, 1, first, 32) if spatial_dims == 2 else (1, 1, first, 32, 32)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("net", list(NETS))
def test_deconv_equals_monai(net, spatial_dims):
    ours_cls, monai_cls, args = NETS[net]
    theirs = monai_cls(**args(spatial_dims)).eval()
    ours = ours_cls(**args(spatial_dims), upsampler="deconv").eval()
    ours.load_state_dict(theirs.state_dict())  # strict: the same keys
    x = torch.randn(_shape(net, spatial_dims))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


@pytest.mark.parametrize("supervised", [False, True])
def test_dynunet_deconv_equals_monai_anisotropic_deep_supervision(supervised):
    args = {**dynunet_args(3, anisotropic=True), "deep_supervision": supervised, "deep_supr_num": 2, "res_block": True}
    theirs = monai_nets.DynUNet(**args).train()
    ours = DynUNet(**args, upsampler="deconv").train()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 1, 8, 32, 32)
    out = ours(x)
    torch.testing.assert_close(out, theirs(x), rtol=0, atol=0)
    assert out.shape == ((2, 3, 3, 8, 32, 32) if supervised else (2, 3, 8, 32, 32))


def test_same_constructor_arguments_as_monai():
    for ours_cls, monai_cls, _ in NETS.values():
        ours = inspect.signature(ours_cls).parameters
        theirs = inspect.signature(monai_cls).parameters
        assert list(ours)[: len(theirs)] == list(theirs)
        assert list(ours)[len(theirs):] == ["upsampler", "upsampler_kwargs", "final_upsampler", "upsample"]
        assert ours["upsampler"].default == "resfu"


@pytest.mark.parametrize("name", upsampler_names())
def test_dynunet_2d_every_upsampler(name):
    net = DynUNet(**dynunet_args(2), upsampler=name, upsampler_kwargs=SLIM if name == "resfu" else None,
                  final_upsampler=name)
    assert all(isinstance(b, GuidedUpBlock) for b in net.upsamples) == (name != "deconv")
    out = net(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 3, 32, 32)
    out.square().mean().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname


@pytest.mark.parametrize("name", ["resfu", "bilinear", "nearest", "pixelshuffle", "carafe", "sapa", "dysample"])
@pytest.mark.parametrize("net", ["swinunetr", "unetr"])
def test_transformer_nets_2d_upsamplers(net, name):
    ours_cls, _, args = NETS[net]
    model = ours_cls(**args(2), upsampler=name, upsampler_kwargs=SLIM if name == "resfu" else None).eval()
    shape = _shape(net, 2)
    with torch.no_grad():
        assert model(torch.rand(shape)).shape == (shape[0], 3, *shape[2:])


@pytest.mark.parametrize("net", list(NETS))
def test_3d_resfu_trains(net):
    ours_cls, _, args = NETS[net]
    kw, shape = args(3), _shape(net, 3)
    if net == "dynunet":
        kw, shape = dynunet_args(3, anisotropic=True), (1, 1, 8, 32, 32)
    steps = 3 if net == "dynunet" else 5 if net == "swinunetr" else 4
    default = ours_cls(**kw, upsampler="resfu", upsampler_kwargs=SLIM)
    assert sum(type(m).__name__ == "ReSFU" for m in default.modules()) == steps - 1  # full resolution: deconv
    model = ours_cls(**kw, upsampler="resfu", upsampler_kwargs=SLIM, final_upsampler="resfu")
    assert sum(type(m).__name__ == "ReSFU" for m in model.modules()) == steps
    out = model(torch.rand(shape))
    assert out.shape == (1, 3, *shape[2:])
    out.mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if ".upsample.resfu." in n]
    assert grads and all(g is not None for g in grads)


def _c1_and_guides(model, c1_module, x):
    feats, seen = {}, []
    c1_module.register_forward_hook(lambda m, i, o: feats.update(c1=o))
    for m in model.modules():
        if type(m).__name__ == "ReSFU":
            m.register_forward_pre_hook(lambda m, args: seen.append((args[0].shape[2:], args[1])))
    with torch.no_grad():
        model(x)
    return feats["c1"], seen


def test_dynunet_resfu_guided_by_area_pooled_c1_anisotropic():
    model = DynUNet(**dynunet_args(3, anisotropic=True), upsampler="resfu", upsampler_kwargs=SLIM,
                    final_upsampler="resfu").eval()
    c1, seen = _c1_and_guides(model, model.input_block, torch.rand(1, 1, 8, 32, 32))
    # strides 1, (1, 2, 2), 2, 2 on 8x32x32; steps deepest first: (2, 4, 4)→(4, 8, 8), (4, 8, 8)→(8, 16, 16),
    # (8, 16, 16)→C1 (8, 32, 32)
    kernels = [(2, 4, 4), (1, 2, 2), None]
    assert [tuple(lr) for lr, _ in seen] == [(2, 4, 4), (4, 8, 8), (8, 16, 16)]
    for (_, guide), k in zip(seen, kernels):
        torch.testing.assert_close(guide, c1 if k is None else F.avg_pool3d(c1, k))
    # anisotropic ratios: (1, 2, 2) at the first skip level, 2 elsewhere
    from resfu_med.networks.resfu import upsampling_dilation

    assert [upsampling_dilation(g.shape[2:], lr) for lr, g in seen] == [(2, 2, 2), (2, 2, 2), (1, 2, 2)]


@pytest.mark.parametrize("net", ["swinunetr", "unetr"])
def test_transformer_nets_resfu_guided_by_encoder1(net):
    ours_cls, _, args = NETS[net]
    model = ours_cls(**args(2), upsampler="resfu", upsampler_kwargs=SLIM, final_upsampler="resfu").eval()
    c1, seen = _c1_and_guides(model, model.encoder1, torch.rand(_shape(net, 2)))
    assert len(seen) == (5 if net == "swinunetr" else 4)
    for lr, guide in seen:
        size = [2 * int(s) for s in lr]
        expected = c1 if size == list(c1.shape[2:]) else F.adaptive_avg_pool2d(c1, size)
        torch.testing.assert_close(guide, expected)
    assert seen[-1][1] is c1 or torch.equal(seen[-1][1], c1)


@pytest.mark.parametrize("net", list(NETS))
def test_resfu_default_keeps_monais_up_block_at_full_resolution(net):
    """Default placement (docs/networks.md): ReSFU guided by C1 at every step below full resolution; the step to C1's
    resolution is MONAI's own up block (transposed convolution), weights and all; other names at every step."""
    ours_cls, monai_cls, args = NETS[net]
    model = ours_cls(**args(2), upsampler="resfu", upsampler_kwargs=SLIM)
    theirs = monai_cls(**args(2))
    last = {"dynunet": "skip_layers", "swinunetr": "decoder1", "unetr": "decoder2"}[net]
    ours_last = model.skip_layers.upsample if net == "dynunet" else getattr(model, last)
    their_last = theirs.skip_layers.upsample if net == "dynunet" else getattr(theirs, last)
    assert type(ours_last) is type(their_last) and not isinstance(ours_last, GuidedUpBlock)
    assert model.final_upsampler == "deconv"
    blocks = [m for m in model.modules() if isinstance(m, GuidedUpBlock)]
    assert blocks and all(b.guide == "c1" for b in blocks)
    assert ours_cls(**args(2), upsampler="bilinear").final_upsampler == "bilinear"
    out = model(torch.rand(_shape(net, 2)))
    assert out.shape[-2:] == _shape(net, 2)[-2:]


def test_dynunet_resfu_deep_supervision():
    args = {**dynunet_args(2), "deep_supervision": True, "deep_supr_num": 2}
    model = DynUNet(**args, upsampler="resfu", upsampler_kwargs=SLIM).train()
    out = model(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 3, 3, 32, 32)
    out.mean().backward()
    for head in model.deep_supervision_heads:
        assert head.conv.conv.weight.grad is not None
    assert model.eval()(torch.rand(2, 1, 32, 32)).shape == (2, 3, 32, 32)


def test_bad_upsampler_choices_raise():
    with pytest.raises(ValueError, match="2D only"):
        DynUNet(**dynunet_args(3), upsampler="carafe")
    with pytest.raises(ValueError, match="one integer scale"):
        DynUNet(**dynunet_args(3, anisotropic=True), upsampler="pixelshuffle")
    with pytest.raises(ValueError, match="resfu"):
        UNETR(**unetr_args(2), upsampler="no-such-upsampler")


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("net,name", [("dynunet", "resfu"), ("swinunetr", "bilinear"), ("unetr", "bilinear")])
def test_trace(net, name):
    # the bundle export traces; ReSFU itself is traced in test_basic_unet, here each network's forward once
    ours_cls, _, args = NETS[net]
    model = ours_cls(**args(2), upsampler=name, upsampler_kwargs=SLIM if name == "resfu" else None).eval()
    x = torch.rand(_shape(net, 2))
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.trace(model, x, check_trace=False)(x), model(x))
