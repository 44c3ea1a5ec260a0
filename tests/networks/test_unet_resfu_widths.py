"""ReSFU's widths in the U-Nets (issue 27): the paper's PCDC width by default, recorded in every new config; networks
saved with the earlier widths (ReSFU's own defaults) still rebuild and predict exactly; explicitly configured widths
(the demo preset, the quick recipe) are untouched (docs/networks.md, "ReSFU widths in the U-Nets")."""

from __future__ import annotations

import hashlib

import pytest
import torch

from resfu_med.networks import BasicUNet, DynUNet, ReSFU, SwinUNETR, TransUNet, UNETR
from resfu_med.networks.guided_up import UNET_RESFU_WIDTHS
from resfu_med.networks.model_registry import build_model, model_kwargs, saved_model_config

#: ReSFU's own defaults: the U-Nets' widths before issue 27 (and TransUNet's, unchanged).
OLD = {"embed_dim": 32, "pcdc_channels": 128, "compressor_channels": 128}
NEW = {"embed_dim": 32, "pcdc_channels": 32, "compressor_channels": 128}

SMALL = (8, 8, 16, 16, 32, 8)
MONAI_SMALL = {
    "dynunet": (DynUNet, {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "kernel_size": [3] * 3,
                          "strides": [1, 2, 2], "upsample_kernel_size": [2, 2], "filters": [8, 8, 16]}, 16),
    "swinunetr": (SwinUNETR, {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "feature_size": 12,
                              "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}, 64),
    "unetr": (UNETR, {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "img_size": 16, "feature_size": 8,
                      "hidden_size": 24, "mlp_dim": 48, "num_heads": 2}, 16),
}


def widths(net: torch.nn.Module) -> list[dict[str, int]]:
    """The widths of every ReSFU in ``net``."""
    return [{"embed_dim": m.embed_dim, "pcdc_channels": int(m.semantic_block.pcdc.weight.shape[0]),
             "compressor_channels": int(m.semantic_block.compressor[4].weight.shape[1])}
            for m in net.modules() if isinstance(m, ReSFU)]


def networks(**kw):
    yield "unet", BasicUNet(2, 1, 3, features=SMALL, **kw)
    yield "unet3d", BasicUNet(3, 1, 3, features=SMALL, **kw)
    for name, (cls, args, _) in MONAI_SMALL.items():
        yield name, cls(**args, **kw)


def test_unet_default_widths_are_the_papers_pcdc_width():
    assert UNET_RESFU_WIDTHS == NEW
    for name, net in networks(upsampler="resfu"):
        assert widths(net) and all(w == NEW for w in widths(net)), name
    for name, net in networks(upsampler="resfu", final_upsampler="resfu"):
        assert all(w == NEW for w in widths(net)), name
    # an option that is not a width keeps the default widths; a width given wins
    for name, net in networks(upsampler="resfu", upsampler_kwargs={"use_checkpoint": True, "pcdc_channels": 64}):
        assert all(w == {**NEW, "pcdc_channels": 64} for w in widths(net)), name
    # TransUNet keeps ReSFU's own widths (the official code's)
    net = TransUNet(9, img_size=64, vit_depth=1, hidden_size=64, mlp_dim=128, num_heads=4, resnet_layers=(1, 1, 1),
                    resnet_width=32, head_channels=64, decoder_channels=(32, 32, 16, 16))
    assert widths(net) and all(w == OLD for w in widths(net))


def test_new_configs_record_the_widths():
    for name in ("unet", "unet3d", "dynunet", "swinunetr", "unetr"):
        kw = model_kwargs(name, 4, 32, "resfu", patch_size=[32, 32, 32])
        assert kw["upsampler_kwargs"] == NEW and kw["final_upsampler"] == "deconv", name
        kw = model_kwargs(name, 4, 32, "resfu", extra={"upsampler_kwargs": {"use_checkpoint": True}},
                          patch_size=[32, 32, 32])
        assert kw["upsampler_kwargs"] == {"use_checkpoint": True, **NEW}, name
        assert "upsampler_kwargs" not in model_kwargs(name, 4, 32, "bilinear", patch_size=[32, 32, 32]), name
    # a recorded config is complete: nothing to upgrade
    kw = model_kwargs("unet", 4, 32, "resfu")
    assert saved_model_config({"name": "unet", "kwargs": kw}, {})["kwargs"] == kw


def _fingerprint(net: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in net.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("recipe", ["demo", "quick"])
def test_explicit_widths_are_unchanged_bit_for_bit(recipe, monkeypatch):
    """The demo preset and the quick recipe give all three widths: their config and their network (same seed, same
    weights) are what they were before the U-Net default changed — fingerprints taken on main before the change (torch
    2.13 CPU), and the same network with the default widths set back to ReSFU's own."""
    from resfu_med.engine.config import PRESETS, RECIPES
    from resfu_med.networks import guided_up

    preset = (PRESETS["demo"] if recipe == "demo" else RECIPES["quick"])["model"]["kwargs"]
    before = {"unet": "1586ced136d51837", "unet3d": "9f857f8a579ccc07"}
    for name, patch in (("unet", None), ("unet3d", [16, 32, 32])):
        cfg = model_kwargs(name, 9, 32, "resfu", extra=preset, patch_size=patch)
        assert cfg == {"in_channels": 1, "upsampler": "resfu", "features": [16, 16, 32, 64, 128, 16],
                       "upsampler_kwargs": {"embed_dim": 8, "pcdc_channels": 16, "compressor_channels": 16},
                       "final_upsampler": "deconv", "out_channels": 9}
        torch.manual_seed(0)
        net = build_model({"name": name, "kwargs": cfg})
        if torch.__version__.startswith("2.13."):
            assert _fingerprint(net) == before[name], name
        with monkeypatch.context() as m:
            m.setattr(guided_up, "UNET_RESFU_WIDTHS", dict(OLD))
            torch.manual_seed(0)
            old = build_model({"name": name, "kwargs": cfg})
        for (k, a), (k2, b) in zip(net.state_dict().items(), old.state_dict().items()):
            assert k == k2 and torch.equal(a, b), (name, k)


def _old_unet_checkpoint(tmp_path, name: str, recorded_placement: bool):
    """A ``best.pt`` of a ReSFU U-Net with the earlier default widths, as saved before the widths were recorded
    (``recorded_placement``: after ``final_upsampler`` was, issue 27's first half; else before that too, ReSFU at every
    step). Returns (path, network, input)."""
    from resfu_med.data.registry import dataset_info
    from resfu_med.engine.checkpoint import capture_rng, save_checkpoint

    info = dataset_info("demo")
    classes = info.num_classes
    if name in ("unet", "unet3d"):
        dims = 2 if name == "unet" else 3
        kwargs = {"in_channels": 1, "out_channels": classes, "features": list(SMALL), "upsampler": "resfu"}
        build = lambda **kw: BasicUNet(dims, **kwargs, **kw)  # noqa: E731
        x = torch.rand(1, 1, *[32] * dims)  # the bottom level must keep > 1 voxel (instance norm)
    else:
        cls, args, side = MONAI_SMALL[name]
        kwargs = {**{k: v for k, v in args.items() if k != "spatial_dims"}, "out_channels": classes, "upsampler": "resfu"}
        build = lambda **kw: cls(spatial_dims=3, **kwargs, **kw)  # noqa: E731
        x = torch.rand(1, 1, side, side, side)
    final = "deconv" if recorded_placement else "resfu"
    torch.manual_seed(0)
    old = build(upsampler_kwargs=dict(OLD), final_upsampler=final).eval()
    assert all(w == OLD for w in widths(old))
    if recorded_placement:
        kwargs["final_upsampler"] = final
    data = {"dataset": "demo", "num_classes": classes, "label_names": info.label_names, "intensity": info.intensity,
            "modality": info.modality, "img_size": 32}
    path = tmp_path / f"{name}-{final}.pt"
    save_checkpoint(path, {"model": old.state_dict(), "optimizer": {}, "scheduler": {}, "scaler": {}, "epoch": 1,
                           "iteration": 1, "rng": capture_rng(), "best_metric": 0.5,
                           "config": {"model": {"name": name, "kwargs": kwargs}, "data": data}})
    return path, old, x


@pytest.mark.parametrize("name", ["unet", "unet3d", "dynunet", "swinunetr", "unetr"])
@pytest.mark.parametrize("recorded_placement", [True, False])
def test_checkpoints_with_the_old_default_widths_load_and_predict_identically(tmp_path, name, recorded_placement):
    from resfu_med.engine.checkpoint import load_model

    path, old, x = _old_unet_checkpoint(tmp_path, name, recorded_placement)
    model, cfg = load_model(path)
    assert all(w == OLD for w in widths(model)), name
    assert cfg["model"]["kwargs"]["upsampler_kwargs"] == OLD  # recorded from now on
    assert cfg["model"]["kwargs"]["final_upsampler"] == ("deconv" if recorded_placement else "resfu")
    with torch.no_grad():
        assert torch.equal(model(x), old(x)), name


def test_old_widths_partial_upsampler_kwargs_and_bundle_network_def(tmp_path):
    """A config that set some ReSFU options but not the widths, and a bundle's ``network_def`` of that time, rebuild
    the widths of their weights."""
    from resfu_med.bundle.checkpoint_io import build_network

    torch.manual_seed(0)
    old = BasicUNet(2, 1, 3, features=SMALL, upsampler="resfu", upsampler_kwargs={**OLD, "gf_radius": 4}).eval()
    saved = {"name": "unet", "kwargs": {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "features": list(SMALL),
                                        "upsampler": "resfu", "upsampler_kwargs": {"gf_radius": 4},
                                        "final_upsampler": "deconv"}}
    kw = saved_model_config(saved, old.state_dict())["kwargs"]
    assert kw["upsampler_kwargs"] == {"gf_radius": 4, **OLD}
    # names only (no shapes): ReSFU's own defaults, the widths every U-Net had before they were recorded
    assert saved_model_config(saved, old.state_dict().keys())["kwargs"]["upsampler_kwargs"] == {"gf_radius": 4, **OLD}
    net_def = {"_target_": "resfu_med.networks.BasicUNet", **saved["kwargs"]}
    net = build_network(net_def, old.state_dict())
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), old(x))
