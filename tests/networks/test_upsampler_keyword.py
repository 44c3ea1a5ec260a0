"""One upsampler keyword across every network: ``upsampler=``; ``upsample=`` (earlier releases) still works for one
release with a ``DeprecationWarning``; a checkpoint recorded with ``upsample`` builds the same network silently."""

from __future__ import annotations

import warnings

import pytest
import torch

from resfu_med.networks import BasicUNet, DynUNet, SwinUNETR, TransUNet, UNETR
from resfu_med.networks.model_registry import MODELS, build_model

SMALL = (8, 8, 16, 16, 32, 8)
CASES = {
    "unet": (BasicUNet, {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "features": SMALL}),
    "dynunet": (DynUNet, {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "kernel_size": [3, 3, 3],
                          "strides": [1, 2, 2], "upsample_kernel_size": [2, 2]}),
    "unetr": (UNETR, {"in_channels": 1, "out_channels": 2, "img_size": (32, 32), "feature_size": 8, "hidden_size": 32,
                      "mlp_dim": 32, "num_heads": 4, "spatial_dims": 2}),
    "swinunetr": (SwinUNETR, {"in_channels": 1, "out_channels": 2, "feature_size": 12, "depths": (1, 1, 1, 1),
                              "spatial_dims": 2}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_network_takes_upsampler_and_the_old_keyword_warns(name):
    cls, args = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        new = cls(**args, upsampler="bilinear")
    assert new.upsampler == "bilinear"
    with pytest.warns(DeprecationWarning, match=r"upsample=\.\.\.\) is deprecated.*use upsampler="):
        old = cls(**args, upsample="bilinear")
    assert old.upsampler == "bilinear" and old.state_dict().keys() == new.state_dict().keys()


def test_transunet_and_the_registry_use_the_same_keyword():
    assert TransUNet.__init__.__code__.co_varnames.count("upsampler") == 1
    # every network that takes an upsampler takes it by one keyword (test stand-ins registered without one are skipped)
    assert {spec.upsampler_key for spec in MODELS.values() if spec.upsampler_key is not None} == {"upsampler"}
    assert all(MODELS[name].upsampler_key == "upsampler"
               for name in ("transunet", "unet", "unet3d", "dynunet", "swinunetr", "unetr"))


def test_a_checkpoint_recorded_with_upsample_builds_silently():
    old = {"name": "unet", "kwargs": {"in_channels": 1, "out_channels": 2, "features": list(SMALL), "upsample": "nearest"}}
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        net = build_model(old)
    assert net.upsampler == "nearest"
    assert net(torch.rand(1, 1, 32, 32)).shape == (1, 2, 32, 32)
