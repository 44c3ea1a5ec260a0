"""BasicUNet on the registry: equals MONAI's BasicUNet with deconv, shapes for every upsampler (2D and 3D),
ReSFU guidance from C1, gradients, TorchScript."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet as MonaiBasicUNet

from resfu_med.networks import BasicUNet
from resfu_med.networks.upsamplers import upsampler_names

SMALL = (8, 8, 16, 16, 32, 8)



def _copy_from_monai(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    # Same modules in the same order; only our upsampler sits one level deeper ("upsample.up." vs "upsample.").
    src = theirs.state_dict()
    mapped = {k.replace(".upsample.up.", ".upsample."): k for k in ours.state_dict()}
    assert set(mapped) == set(src)
    ours.load_state_dict({mapped[k]: v for k, v in src.items()})


@pytest.mark.parametrize("spatial_dims,shape", [(2, (2, 1, 32, 48)), (2, (1, 1, 36, 36)), (3, (1, 1, 16, 32, 16))])
def test_deconv_equals_monai_basic_unet(spatial_dims, shape):
    theirs = MonaiBasicUNet(spatial_dims, 1, 3, features=SMALL, upsample="deconv").eval()
    ours = BasicUNet(spatial_dims, 1, 3, features=SMALL, upsampler="deconv").eval()
    _copy_from_monai(ours, theirs)
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), theirs(x))


def test_default_features_equal_monai_parameter_count():
    ours = BasicUNet(2, 1, 2, upsampler="deconv")
    theirs = MonaiBasicUNet(2, 1, 2, upsample="deconv")
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


@pytest.mark.parametrize("name", upsampler_names())
def test_2d_every_upsampler(name):
    net = BasicUNet(2, 1, 3, features=SMALL, upsampler=name)
    out = net(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 3, 32, 32)
    out.square().mean().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname


@pytest.mark.parametrize("name", ["bilinear", "nearest", "deconv", "pixelshuffle", "resfu"])
def test_3d(name):
    net = BasicUNet(3, 1, 2, features=SMALL, upsampler=name)
    out = net(torch.rand(1, 1, 32, 32, 32))
    assert out.shape == (1, 2, 32, 32, 32)
    out.mean().backward()


@pytest.mark.parametrize("name", ["carafe", "sapa", "dysample"])
def test_2d_only_upsamplers_refuse_3d(name):
    with pytest.raises(ValueError, match="2D only"):
        BasicUNet(3, 1, 2, features=SMALL, upsampler=name)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_resfu_guided_by_area_pooled_c1(spatial_dims):
    net = BasicUNet(spatial_dims, 1, 2, features=SMALL, upsampler="resfu", final_upsampler="resfu").eval()
    assert sum(type(m).__name__ == "ReSFU" for m in net.modules()) == 4
    seen = []
    for up in (net.upcat_4, net.upcat_3, net.upcat_2, net.upcat_1):
        up.upsample.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    feats = {}
    net.conv_0.register_forward_hook(lambda m, i, o: feats.update(x0=o))
    net(torch.rand(1, 1, *[32] * spatial_dims))
    x0 = feats["x0"]
    pool = F.avg_pool2d if spatial_dims == 2 else F.avg_pool3d
    for guide, k in zip(seen, (8, 4, 2)):
        torch.testing.assert_close(guide, pool(x0, k))
    assert seen[3] is x0


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_resfu_default_keeps_monais_deconv_at_full_resolution(spatial_dims):
    """Default placement (docs/networks.md): ReSFU at the three lower steps, the full-resolution step MONAI's own
    transposed convolution — the same module as in MONAI's BasicUNet(upsample="deconv")."""
    net = BasicUNet(spatial_dims, 1, 2, features=SMALL, upsampler="resfu", upsampler_kwargs={"embed_dim": 16}).eval()
    assert net.final_upsampler == "deconv" and net.guide_modes == ["c1", "c1", "c1", "none"]
    assert [sum(type(m).__name__ == "ReSFU" for m in up.modules()) for up in
            (net.upcat_4, net.upcat_3, net.upcat_2, net.upcat_1)] == [1, 1, 1, 0]
    assert net.upcat_4.upsample.resfu.embed_dim == 16  # options go to the ReSFU steps only
    theirs = MonaiBasicUNet(spatial_dims, 1, 2, features=SMALL, upsample="deconv").upcat_1
    ours = net.upcat_1
    assert ours.pre_conv is None
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in theirs.parameters()]
    out = net(torch.rand(1, 1, *[32] * spatial_dims))
    assert out.shape == (1, 2, *[32] * spatial_dims)
    for name in ("bilinear", "sapa", "deconv"):  # every other name: the same upsampler at all four steps
        assert BasicUNet(2, 1, 2, features=SMALL, upsampler=name).final_upsampler == name


@pytest.mark.parametrize("name", ["deconv", "bilinear", "nearest", "pixelshuffle"])
def test_torchscript_script(name):
    net = BasicUNet(2, 1, 2, features=SMALL, upsampler=name).eval()
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(torch.jit.script(net)(x), net(x))


@pytest.mark.parametrize("name", ["resfu", "carafe", "sapa", "dysample"])
def test_torchscript_trace(name):
    net = BasicUNet(2, 1, 2, features=SMALL, upsampler=name).eval()
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(torch.jit.trace(net, x, check_trace=False)(x), net(x))


def test_checkpoints_of_the_old_all_resfu_default_still_load(tmp_path):
    """Checkpoints written before ``final_upsampler`` was recorded had ReSFU at every step: they rebuild that network;
    new configs record the placement (docs/networks.md)."""
    from resfu_med.data.registry import dataset_info
    from resfu_med.engine.checkpoint import capture_rng, load_model, save_checkpoint
    from resfu_med.networks import DynUNet, SwinUNETR, UNETR
    from resfu_med.networks.model_registry import model_kwargs, saved_model_config

    slim = {"embed_dim": 8, "pcdc_channels": 16, "compressor_channels": 16}
    small = {
        "dynunet": (DynUNet, {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "kernel_size": [3] * 3,
                              "strides": [1, 2, 2], "upsample_kernel_size": [2, 2], "filters": [8, 8, 16]}),
        "swinunetr": (SwinUNETR, {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "feature_size": 12,
                                  "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}),
        "unetr": (UNETR, {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "img_size": 16, "feature_size": 8,
                          "hidden_size": 24, "mlp_dim": 48, "num_heads": 2}),
    }
    for name, (cls, kw) in small.items():
        old = cls(**kw, upsampler="resfu", upsampler_kwargs=slim, final_upsampler="resfu")
        saved = {"name": name, "kwargs": {**kw, "upsampler": "resfu", "upsampler_kwargs": slim}}
        assert saved_model_config(saved, old.state_dict().keys())["kwargs"]["final_upsampler"] == "resfu", name
        new = cls(**kw, upsampler="resfu", upsampler_kwargs=slim)
        assert "final_upsampler" not in saved_model_config(saved, new.state_dict().keys())["kwargs"], name
    assert model_kwargs("unet", 4, 32, "resfu")["final_upsampler"] == "deconv"
    assert model_kwargs("unet", 4, 32, "sapa")["final_upsampler"] == "sapa"

    info = dataset_info("demo")
    kwargs = {"in_channels": 1, "out_channels": info.num_classes, "features": list(SMALL), "upsampler": "resfu"}
    torch.manual_seed(0)
    old = BasicUNet(2, final_upsampler="resfu", **kwargs).eval()
    data = {"dataset": "demo", "num_classes": info.num_classes, "label_names": info.label_names,
            "intensity": info.intensity, "modality": info.modality, "img_size": 32}
    save_checkpoint(tmp_path / "best.pt", {"model": old.state_dict(), "optimizer": {}, "scheduler": {}, "scaler": {},
                                           "epoch": 1, "iteration": 1, "rng": capture_rng(), "best_metric": 0.5,
                                           "config": {"model": {"name": "unet", "kwargs": kwargs}, "data": data}})
    model, cfg = load_model(tmp_path / "best.pt")
    assert model.final_upsampler == "resfu" and cfg["model"]["kwargs"]["final_upsampler"] == "resfu"
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(model(x), old(x))
