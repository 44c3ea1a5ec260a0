"""TransUNet: forward/backward for every registry name (lite config), guidance wiring, ReSFU module count,
ResNetV2 details, TorchScript, and one full-size check."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resfu_med.networks import TransUNet
from resfu_med.networks.transunet import ResNetV2, StdConv2d
from resfu_med.networks.upsamplers import upsampler_names

NAMES = [n for n in upsampler_names() if n != "resfu"] + ["resfu"]


# width 32: C1 32 ch @S/2, C2 128 @S/4, C3 256 @S/8, C4 512 @S/16
LITE = dict(img_size=64, vit_depth=1, hidden_size=64, mlp_dim=128, num_heads=4, resnet_layers=(1, 1, 1),
            resnet_width=32, head_channels=64, decoder_channels=(32, 32, 16, 16), stem_channels=16)


def _resfu_count(model: torch.nn.Module) -> int:
    return sum(type(m).__name__ == "ReSFU" for m in model.modules())


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_every_upsampler(name):
    net = TransUNet(9, upsampler=name, **LITE)
    x = torch.rand(2, 1, 64, 64)
    out = net(x)
    assert out.shape == (2, 9, 64, 64)
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    assert net.resnet.conv_root.weight.grad.abs().sum() > 0


def test_one_channel_is_repeated():
    net = TransUNet(3, upsampler="bilinear", **LITE).eval()
    x = torch.rand(1, 1, 64, 64)
    torch.testing.assert_close(net(x), net(x.repeat(1, 3, 1, 1)))


def _record_guides(net):
    seen = []
    for block in net.decoder.blocks:
        block.up.register_forward_pre_hook(lambda m, args, seen=seen: seen.append(args))
    return seen


def test_peer_guidance_is_iterative():
    net = TransUNet(2, upsampler="sapa", **LITE).eval()
    seen = _record_guides(net)
    feats = {}
    net.resnet.register_forward_hook(lambda m, i, o: feats.update(skips=o[1]))
    net(torch.rand(1, 3, 64, 64))
    c3, c2, c1 = feats["skips"]
    assert seen[0][1] is c3 and seen[1][1] is c2 and seen[2][1] is c1
    assert seen[3][1] is None and net.stem is None  # the paper's placement: the last step is the original bilinear
    assert [tuple(a[0].shape[2:]) for a in seen] == [(4, 4), (8, 8), (16, 16), (32, 32)]
    four = TransUNet(2, upsampler="sapa", final_upsampler="sapa", **LITE).eval()
    seen = _record_guides(four)
    four(torch.rand(1, 3, 64, 64))
    assert seen[3][1].shape == (1, 16, 64, 64)  # the four-step variant: the image stem at full size


def test_default_placement_is_the_papers():
    """Fig. 18 of the paper: the upsampler at the three skip steps, the last step the original bilinear one."""
    for name in NAMES:
        net = TransUNet(2, upsampler=name, **LITE)
        assert net.final_upsampler_name == "bilinear" and net.guide_sources[3] == "none" and net.stem is None
        assert not list(net.decoder.blocks[3].up.parameters())
    net = TransUNet(2, upsampler="resfu", **LITE).eval()
    outs = []
    net.decoder.blocks[3].up.register_forward_hook(lambda m, args, out: outs.append((args[0], out)))
    net(torch.rand(1, 3, 64, 64))
    x, y = outs[0]
    torch.testing.assert_close(y, F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))


def test_bilinear_is_the_original_decoder():
    net = TransUNet(2, upsampler="bilinear", **LITE).eval()
    assert net.stem is None
    outs = []
    for block in net.decoder.blocks:
        block.up.register_forward_hook(lambda m, args, out: outs.append((args[0], out)))
    net(torch.rand(1, 3, 64, 64))
    for x, y in outs:  # nn.UpsamplingBilinear2d(scale_factor=2) of the original == align_corners=True
        torch.testing.assert_close(y, F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))


def test_bad_names():
    with pytest.raises(ValueError, match="bilinear"):
        TransUNet(2, upsampler="bilinar", **LITE)
    with pytest.raises(ValueError):
        TransUNet(2, final_guidance="c2", **LITE)
    with pytest.raises(ValueError, match="multiple of 16"):
        TransUNet(2, **{**LITE, "img_size": 60})
    with pytest.raises(ValueError, match="img_size=64"):
        TransUNet(2, upsampler="bilinear", **LITE)(torch.rand(1, 1, 96, 96))


def test_resfu_guidance_from_c1():
    net = TransUNet(2, upsampler="resfu", **LITE).eval()
    assert _resfu_count(net) == 3
    seen = _record_guides(net)
    feats = {}
    net.resnet.register_forward_hook(lambda m, i, o: feats.update(c1=o[1][2]))
    net(torch.rand(1, 3, 64, 64))
    c1 = feats["c1"]  # (1, 32, 32, 32)
    torch.testing.assert_close(seen[0][1], F.avg_pool2d(c1, 4))  # area pooling 32 → 8 (112 → 28 at 224²)
    torch.testing.assert_close(seen[1][1], F.avg_pool2d(c1, 2))
    assert seen[2][1] is c1
    assert seen[3][1] is None


def test_resfu_variants_module_counts():
    assert _resfu_count(TransUNet(2, upsampler="resfu", final_upsampler="bilinear", **LITE)) == 3
    four = TransUNet(2, upsampler="resfu", final_upsampler="resfu", **LITE)  # the full-resolution variant
    assert _resfu_count(four) == 4 and four.stem is not None
    seen = _record_guides(four)
    four.eval()(torch.rand(1, 3, 64, 64))
    assert seen[3][1].shape == (1, 16, 64, 64)  # the image stem
    net = TransUNet(2, upsampler="resfu", final_upsampler="resfu", final_guidance="c1", **LITE)
    assert _resfu_count(net) == 4 and net.stem is None
    seen = _record_guides(net)
    net.eval()(torch.rand(1, 3, 64, 64))
    assert seen[3][1].shape == (1, 32, 64, 64)  # C1 bilinearly upsampled


def test_std_conv_standardises_each_filter():
    conv = StdConv2d(3, 4, 3, padding=1, bias=False).double()
    x = torch.rand(1, 3, 5, 5, dtype=torch.float64)
    w = conv.weight.detach().numpy()
    flat = w.reshape(4, -1)
    ws = (flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True) + 1e-5)
    ref = F.conv2d(x, torch.from_numpy(ws.reshape(w.shape)), padding=1)
    torch.testing.assert_close(conv(x), ref)


def test_resnet_feature_sizes_and_official_padding():
    net = ResNetV2((1, 1, 1), width=32).eval()
    c4, (c3, c2, c1) = net(torch.rand(1, 3, 64, 64))
    assert c1.shape == (1, 32, 32, 32) and c2.shape == (1, 128, 16, 16) and c3.shape == (1, 256, 8, 8)
    assert c4.shape == (1, 512, 4, 4)
    # max-pool without padding gives 15² at S/4; the official model zero-pads the skip to 16² at the bottom/right
    assert c2[..., -1, :].abs().sum() == 0 and c2[..., :, -1].abs().sum() == 0
    assert c2[..., :-1, :-1].abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_torchscript_trace(name):
    net = TransUNet(2, upsampler=name, **LITE).eval()
    x = torch.rand(1, 1, 64, 64)
    traced = torch.jit.trace(net, x, check_trace=False)
    torch.testing.assert_close(traced(x), net(x))


def test_full_size_parameter_count_and_forward_backward():
    # The paper's configuration: R50-ViT-B/16, 224², 9 classes. One forward/backward at batch 1 on CPU.
    net = TransUNet(9, upsampler="resfu")
    base = TransUNet(9, upsampler="bilinear")
    n_base = sum(p.numel() for p in base.parameters())
    assert 105.0e6 < n_base < 105.5e6  # TransUNet reports 105.28 M
    del base
    extra = sum(p.numel() for p in net.parameters()) - n_base
    assert 0 < extra < 0.01 * n_base  # the ReSFU overhead stays well under 1 %
    out = net(torch.rand(1, 3, 224, 224))
    assert out.shape == (1, 9, 224, 224)
    out.mean().backward()


def _legacy_checkpoint(tmp_path, final: str):
    """A checkpoint as earlier releases wrote it: kwargs without ``final_upsampler`` (their default: ``upsampler``
    at all four steps), DDP-prefixed weights."""
    from resfu_med.data.registry import dataset_info
    from resfu_med.engine.checkpoint import capture_rng, save_checkpoint

    info = dataset_info("demo")
    torch.manual_seed(0)
    old = TransUNet(info.num_classes, upsampler="resfu", final_upsampler=final, **LITE).eval()
    kwargs = {**{k: list(v) if isinstance(v, tuple) else v for k, v in LITE.items()}, "upsampler": "resfu",
              "num_classes": info.num_classes}
    data = {"dataset": "demo", "num_classes": info.num_classes, "label_names": info.label_names,
            "intensity": info.intensity, "modality": info.modality, "img_size": 64}
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"model": {f"module.{k}": v for k, v in old.state_dict().items()}, "optimizer": {},
                           "scheduler": {}, "scaler": {}, "epoch": 1, "iteration": 1, "rng": capture_rng(),
                           "best_metric": 0.5, "config": {"model": {"name": "transunet", "kwargs": kwargs}, "data": data}})
    return path, old, kwargs


def test_checkpoint_of_the_old_four_step_default_still_loads(tmp_path):
    from resfu_med.bundle.checkpoint_io import build_network
    from resfu_med.engine.checkpoint import load_model

    path, old, kwargs = _legacy_checkpoint(tmp_path, "resfu")
    model, cfg = load_model(path)
    assert _resfu_count(model) == 4 and cfg["model"]["kwargs"]["final_upsampler"] == "resfu"  # recorded from now on
    x = torch.rand(1, 1, 64, 64)
    torch.testing.assert_close(model(x), old(x))
    # a bundle of an earlier release (network_def without final_upsampler) too
    net = build_network({"_target_": "resfu_med.networks.TransUNet", **kwargs}, old.state_dict())
    torch.testing.assert_close(net(x), old(x))


def test_new_configs_record_the_placement():
    from resfu_med.networks.model_registry import build_model, model_kwargs, saved_model_config

    kw = model_kwargs("transunet", 9, 64, "resfu", {k: v for k, v in LITE.items() if k != "img_size"})
    assert kw["final_upsampler"] == "bilinear"
    net = build_model({"name": "transunet", "kwargs": kw})
    assert _resfu_count(net) == 3
    cfg = {"name": "transunet", "kwargs": kw}
    assert saved_model_config(cfg, net.state_dict().keys()) == cfg  # recorded: never reinterpreted
    four = model_kwargs("transunet", 9, 64, "resfu", {"final_upsampler": "resfu"})
    assert four["final_upsampler"] == "resfu"


def test_resfu_steps_recompute_the_compressor_hidden_map_by_default():
    """Issue #27 (TransUNet's step memory ≤ 1.10× bilinear): every ReSFU step computes its compressors' hidden maps
    again in backward unless the user's ``upsampler_kwargs`` says otherwise; the state dict is the same either way."""
    from resfu_med.networks import ReSFU

    def flags(net):
        return {b.compressor.recompute_hidden for m in net.modules() if isinstance(m, ReSFU)
                for b in (m.semantic_block, m.detail_block)}

    torch.manual_seed(0)
    default = TransUNet(9, upsampler="resfu", final_upsampler="resfu", **LITE)
    plain = TransUNet(9, upsampler="resfu", final_upsampler="resfu", upsampler_kwargs={"recompute_hidden": False}, **LITE)
    assert flags(default) == {True} and flags(plain) == {False}
    plain.load_state_dict(default.state_dict())
    default.eval(), plain.eval()  # no dropout; gradients still enabled, so the recomputing path runs
    x = torch.rand(1, 1, 64, 64)
    torch.testing.assert_close(default(x), plain(x), rtol=0, atol=0)
