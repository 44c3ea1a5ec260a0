"""``resfu-med train --help`` lists every name ``--model``, ``--upsampler``, ``--dataset``, ``--preset`` and ``--amp``
accept, generated from the registries (so a newly registered name appears without editing the help), and the quick
preset's help quotes the preset's own iteration budget."""

from __future__ import annotations

import re

import pytest

from resfu_med.cli import build_parser


def _train_help(capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    return re.sub(r"\s+", " ", capsys.readouterr().out)


def test_help_lists_every_registered_name(capsys):
    from resfu_med.data.registry import DATASET_NAMES
    from resfu_med.engine.config import RECIPES
    from resfu_med.networks.model_registry import model_names
    from resfu_med.networks.upsamplers import upsampler_names

    text = _train_help(capsys)
    for name in (*model_names(), *upsampler_names(), *DATASET_NAMES, *RECIPES, "none", "bf16", "fp16"):
        assert re.search(rf"\b{re.escape(name)}\b", text), f"{name!r} missing from train --help"
    for must in ("dynunet", "unetr", "swinunetr", "dysample", "carafe", "sapa", "pixelshuffle", "msd", "acdc"):
        assert must in text


def test_quick_preset_help_quotes_the_preset(capsys):
    from resfu_med.engine.config import RECIPES

    text = _train_help(capsys)
    assert "1,200 iterations" not in text
    iterations = RECIPES["quick"]["train"]["iterations"]
    assert re.search(rf"\b{iterations:,}\b|\b{iterations}\b iterations", text)


def test_a_newly_registered_model_appears_in_help(capsys):
    from resfu_med.networks.model_registry import MODELS, register_model
    from resfu_med.networks.basic_unet import BasicUNet

    register_model("my_test_unet", BasicUNet, fixed={"spatial_dims": 2}, in_channels_key="in_channels",
                   description="a test-only U-Net")
    try:
        text = _train_help(capsys)
        assert "my_test_unet" in text and "a test-only U-Net" in text
    finally:
        MODELS.pop("my_test_unet", None)


def test_flag_help_gives_every_preset_and_recipe_value_from_the_presets(capsys, monkeypatch):
    from resfu_med.engine import config

    text = _train_help(capsys)
    assert "(default: zoom; msd: plan; --preset quick: plan)" in text  # --pipeline
    assert f"--preset quick: {config.RECIPES['quick']['train']['iterations']})" in text  # --iterations
    # generated, not written: a changed preset shows up in the help
    monkeypatch.setitem(config.PRESETS, "acdc", {"data": {"pipeline": "plan"}})
    assert "(default: zoom; msd: plan; acdc: plan; --preset quick: plan)" in _train_help(capsys)
