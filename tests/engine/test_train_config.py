"""Run configuration: paper defaults, presets, YAML/JSON files, flags, and errors naming the bad key."""

from __future__ import annotations

import json

import pytest

from resfu_med.engine.config import load_config_file, merge_config, resolve_config
from resfu_med.networks.model_registry import model_kwargs
from resfu_med.errors import InputError


def test_defaults_are_the_paper_protocol():
    cfg = resolve_config("synapse")
    # docs/datasets.md / TransUNet: R50-ViT-B/16 at 224², batch 24, SGD 0.01/0.9/1e-4, poly 0.9, 150 epochs, 0.5 CE + 0.5 Dice
    assert cfg["model"]["name"] == "transunet" and cfg["model"]["upsampler"] == "resfu"
    assert cfg["data"]["img_size"] == 224
    t = cfg["train"]
    assert (t["batch_size"], t["lr"], t["momentum"], t["weight_decay"], t["poly_power"], t["epochs"]) == (
        24, 0.01, 0.9, 1e-4, 0.9, 150)
    assert (t["ce_weight"], t["dice_weight"]) == (0.5, 0.5)
    assert cfg["seed"] == 1234 and cfg["data"]["dataset"] == "synapse"


def test_demo_preset_is_a_small_resfu_unet():
    cfg = resolve_config("demo")
    assert cfg["model"]["name"] == "unet" and cfg["model"]["upsampler"] == "resfu"
    assert cfg["train"]["epochs"] < 150 and cfg["data"]["img_size"] < 224


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_file_overrides_preset_and_flags_override_file(tmp_path, suffix):
    body = {"train": {"lr": 0.02, "epochs": 7}, "model": {"kwargs": {"dropout": 0.1}}}
    path = tmp_path / f"c{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(body))
    else:
        path.write_text("train:\n  lr: 0.02\n  epochs: 7\nmodel:\n  kwargs:\n    dropout: 0.1\n")
    cfg = resolve_config("demo", path, {"train": {"epochs": 3}})
    assert cfg["train"]["lr"] == 0.02 and cfg["train"]["epochs"] == 3  # flag beats file beats preset
    assert cfg["train"]["batch_size"] == resolve_config("demo")["train"]["batch_size"]
    # network arguments merge with the preset's rather than replacing them
    assert cfg["model"]["kwargs"]["dropout"] == 0.1 and "features" in cfg["model"]["kwargs"]


def test_file_may_name_the_dataset(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  dataset: demo\n")
    assert resolve_config(None, path)["model"]["name"] == "unet"


def test_switching_model_drops_the_presets_network_arguments():
    cfg = resolve_config("demo", overrides={"model": {"name": "transunet"}})
    assert cfg["model"]["kwargs"] == {}


def test_unet3d_keeps_the_demo_presets_unet_widths():
    # unet and unet3d are the same BasicUNet: the demo's slim widths carry over to 3D (they are what makes it CPU-sized)
    cfg = resolve_config("demo", overrides={"model": {"name": "unet3d"}})
    assert cfg["model"]["kwargs"]["features"] == [16, 16, 32, 64, 128, 16]
    assert cfg["model"]["kwargs"]["upsampler_kwargs"] == {"embed_dim": 8, "pcdc_channels": 16, "compressor_channels": 16}


@pytest.mark.parametrize("upsampler", ["bilinear", "deconv", "carafe"])
def test_switching_upsampler_drops_the_presets_resfu_options(upsampler):
    # `--dataset demo --upsampler bilinear` must not hand ReSFU's widths to bilinear (it rejected them).
    cfg = resolve_config("demo", overrides={"model": {"upsampler": upsampler}})
    assert "upsampler_kwargs" not in cfg["model"]["kwargs"]
    assert cfg["model"]["kwargs"]["features"] == [16, 16, 32, 64, 128, 16]  # the U-Net itself is kept


def test_upsampler_options_the_user_gives_survive_a_switch():
    mine = {"align_corners": True}
    cfg = resolve_config("demo", overrides={"model": {"upsampler": "bilinear", "kwargs": {"upsampler_kwargs": mine}}})
    assert cfg["model"]["kwargs"]["upsampler_kwargs"] == mine


def test_upsampler_options_add_to_the_presets_widths(tmp_path):
    """A config file giving one ReSFU option on top of a preset keeps the preset's other options (the slim widths):
    before, its ``upsampler_kwargs`` replaced the preset's whole mapping, and the quick run silently trained ReSFU at
    the U-Nets' full widths."""
    path = tmp_path / "opts.json"
    path.write_text('{"model": {"kwargs": {"upsampler_kwargs": {"use_checkpoint": true}}}}')
    slim = {"embed_dim": 8, "pcdc_channels": 16, "compressor_channels": 16}
    for cfg in (resolve_config("msd", path, {"data": {"root": "x"}}, preset="quick"), resolve_config("demo", path)):
        assert cfg["model"]["kwargs"]["upsampler_kwargs"] == {**slim, "use_checkpoint": True}
    # a flag's mapping adds to the file's, and an explicit width still wins
    cfg = resolve_config("demo", path, {"model": {"kwargs": {"upsampler_kwargs": {"embed_dim": 16}}}})
    assert cfg["model"]["kwargs"]["upsampler_kwargs"] == {**slim, "embed_dim": 16, "use_checkpoint": True}
    # switching the upsampler still hands it the user's options alone (the file's and the flags' merged)
    cfg = resolve_config("demo", path, {"model": {"upsampler": "bilinear", "kwargs": {"upsampler_kwargs": {"x": 1}}}})
    assert cfg["model"]["kwargs"]["upsampler_kwargs"] == {"use_checkpoint": True, "x": 1}


def test_int_is_accepted_for_float_and_converted():
    cfg = merge_config(resolve_config("synapse"), {"train": {"lr": 1}})
    assert cfg["train"]["lr"] == 1.0 and isinstance(cfg["train"]["lr"], float)


@pytest.mark.parametrize(
    "update,pattern",
    [
        ({"train": {"lrr": 0.1}}, r"unknown key 'train\.lrr'"),
        ({"optimizer": {}}, r"unknown key 'optimizer'"),
        ({"train": {"epochs": "ten"}}, r"train\.epochs must be int, got str 'ten'"),
        ({"train": {"epochs": True}}, r"train\.epochs must be int"),
        ({"train": {"epochs": 0}}, r"train\.epochs must be > 0"),
        ({"train": {"lr": -1.0}}, r"train\.lr must be > 0"),
        ({"deterministic": 1}, r"deterministic must be bool"),
        ({"amp": "fp8"}, r"amp must be one of none, bf16, fp16"),
        ({"model": {"name": "vnet"}}, r"model\.name must be one of transunet, unet, unet3d"),
        ({"train": 5}, r"train must be a mapping"),
    ],
)
def test_bad_keys_and_types_name_the_key(update, pattern):
    with pytest.raises(InputError, match=pattern):
        merge_config(resolve_config("synapse"), update, source="test")


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(InputError, match=r"unknown dataset 'brats'.*synapse, acdc, msd, demo"):
        resolve_config("brats")


@pytest.mark.parametrize("text,pattern", [("train: [1, 2\n", "not valid YAML"), ("- 1\n- 2\n", "must be a mapping")])
def test_bad_config_files(tmp_path, text, pattern):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=pattern) as err:
        load_config_file(path)
    assert str(path) in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        resolve_config("demo", tmp_path / "nope.yaml")


def test_error_in_file_names_the_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"train": {"batchsize": 8}}')
    with pytest.raises(InputError, match=rf"config file {path}: unknown key 'train\.batchsize'"):
        resolve_config("demo", path)


def test_model_kwargs_per_architecture():
    assert model_kwargs("transunet", 9, 224, "resfu") == {"img_size": 224, "upsampler": "resfu", "num_classes": 9,
                                                         "final_upsampler": "bilinear"}
    unet = model_kwargs("unet", 4, 96, "bilinear", {"features": [8] * 6})
    assert unet["out_channels"] == 4 and unet["upsampler"] == "bilinear" and unet["features"] == [8] * 6
    # the class count always comes from the dataset
    assert model_kwargs("unet", 4, 96, None, {"out_channels": 2})["out_channels"] == 4
