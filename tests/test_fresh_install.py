"""What a fresh install must give: every module imports and every registered model x upsampler builds and runs.

On a fresh machine, MONAI imports ``einops`` optionally: without it MONAI's ViT blocks (TransUNet's and UNETR's
transformer, SwinUNETR's windows) fail only when a network is *built*, with ``OptionalImportError``. So importing is not
enough; every registered network is built with every registered upsampler (small sizes) and run once. CI installs into a
new virtual environment (``.ci/run``), so a dependency missing from setup.cfg fails here.
"""

from __future__ import annotations

import configparser
import importlib
import pkgutil
from pathlib import Path

import pytest
import torch

import resfu_med
from resfu_med.networks.model_registry import build_model, get_model_spec, model_kwargs, model_names
from resfu_med.networks.upsamplers.registry import upsampler_names

ROOT = Path(__file__).resolve().parents[1]

# Small constructor arguments per registered model (everything else is the registry's default derivation).
SMALL = {
    "transunet": {"vit_depth": 1, "hidden_size": 32, "mlp_dim": 32, "num_heads": 2, "resnet_layers": (1, 1, 1),
                  "resnet_width": 32, "head_channels": 32, "decoder_channels": (16, 16, 16, 16)},
    "unet": {"features": (8, 8, 8, 8, 8, 8)},
    "unet3d": {"features": (4, 4, 4, 4, 4, 4)},
    "dynunet": {"filters": [4, 4, 8, 8, 8]},
    "swinunetr": {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)},
    "unetr": {"feature_size": 4, "hidden_size": 32, "mlp_dim": 32, "num_heads": 2},
}
TWO_D_ONLY = {"carafe", "sapa", "dysample"}  # docs/networks.md: kernels predicted per 2D neighbourhood
SLIM_RESFU = {"embed_dim": 8, "pcdc_channels": 8, "compressor_channels": 8}


def _all_modules() -> list[str]:
    # networks/ and data/ are mapped into the package (setup.cfg package_dir): walk each mapped package's own path.
    names = set()
    for package in ("resfu_med", "resfu_med.networks", "resfu_med.data"):
        module = importlib.import_module(package)
        names.add(package)
        names.update(info.name for info in pkgutil.walk_packages(module.__path__, package + "."))
    return sorted(names)


def test_every_module_imports():
    names = _all_modules()
    assert {"resfu_med.networks", "resfu_med.data", "resfu_med.engine.trainer", "resfu_med.bundle"} <= set(names)
    for name in names:
        importlib.import_module(name)


def test_monai_optional_imports_are_installed():
    # The optional imports MONAI makes on resfu-med's default code paths: ViT/UNETR/SwinUNETR blocks (einops),
    # bundle runs (fire, ignite), progress.png (matplotlib).
    from monai.utils import optional_import

    for module in ("einops", "fire", "ignite", "matplotlib"):
        _, ok = optional_import(module)
        assert ok, f"{module} is not installed: add it to setup.cfg install_requires"


def test_setup_cfg_lists_what_monai_imports_optionally():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = [ln.strip() for ln in cfg["options"]["install_requires"].splitlines()]
    required = {ln.split(">")[0].split("=")[0].split("<")[0].strip().lower() for ln in lines if ln and not ln.startswith("#")}
    assert {"einops", "matplotlib", "fire", "pytorch-ignite", "monai", "torch"} <= required


def _case(model: str, upsampler: str) -> tuple[dict, tuple[int, ...]]:
    spec = get_model_spec(model)
    extra = dict(SMALL.get(model, {}))
    if upsampler == "resfu" and model != "transunet":
        extra["upsampler_kwargs"] = SLIM_RESFU
    size = 64 if model == "swinunetr" else 32  # SwinUNETR halves 5 times; its 1-voxel bottleneck cannot be normalised
    patch = [size] * 3 if spec.spatial_dims == 3 else None
    kwargs = model_kwargs(model, 3, size, upsampler, extra, patch_size=patch)
    shape = (1, 1, *([size] * spec.spatial_dims))
    return {"name": model, "kwargs": kwargs}, shape


@pytest.mark.parametrize("upsampler", upsampler_names())
@pytest.mark.parametrize("model", model_names())
def test_every_registered_model_builds_with_every_upsampler(model, upsampler):
    cfg, shape = _case(model, upsampler)
    if upsampler in TWO_D_ONLY and len(shape) == 5:  # refused by design, with a message naming the upsampler
        with pytest.raises(ValueError, match=f"'{upsampler}' is 2D only"):
            build_model(cfg)
        return
    try:
        net = build_model(cfg).eval()
    except ImportError as err:  # MONAI's OptionalImportError is an ImportError
        pytest.fail(f"{model} x {upsampler}: a dependency is missing on a fresh install: {err}")
    torch.manual_seed(0)
    with torch.no_grad():
        out = net(torch.randn(shape))
    out = out[0] if isinstance(out, (list, tuple)) else out
    assert out.shape == (shape[0], 3, *shape[2:])
    assert torch.isfinite(out).all()
