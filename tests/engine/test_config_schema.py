"""The typed config schema: one precedence (defaults < dataset preset < recipe < config file < flags) where an explicit
flag always wins, conflicting explicit settings are errors, unknown keys get a did-you-mean, every non-default value
names the layer that set it, and a config written by this version (config.json) or an old checkpoint loads again."""

from __future__ import annotations

import dataclasses
import json

import pytest

from resfu_med.engine import config as C
from resfu_med.errors import InputError


def test_flag_epochs_beats_the_recipe_iteration_budget():
    # train --preset quick --epochs 16: the recipe's iteration budget must not silently override the flag
    cfg = C.resolve_config("demo", overrides={"train": {"epochs": 16}}, preset="quick")
    assert cfg["train"]["epochs"] == 16 and cfg["train"]["iterations"] is None


def test_flag_iterations_beats_a_file_epochs_of_a_lower_layer(tmp_path):
    cfg = C.resolve_config("demo", overrides={"train": {"iterations": 40}})
    assert cfg["train"]["iterations"] == 40


def test_epochs_flag_with_iterations_in_the_config_file_is_an_error(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("train:\n  iterations: 500\n")
    with pytest.raises(InputError, match=r"--epochs .*conflicts with train\.iterations .*run\.yaml"):
        C.resolve_config("demo", config_file=f, overrides={"train": {"epochs": 16}})


def test_both_budgets_in_one_file_is_an_error(tmp_path):
    f = tmp_path / "run.json"
    f.write_text(json.dumps({"train": {"iterations": 500, "epochs": 3}}))
    with pytest.raises(InputError, match=r"run\.json: train\.epochs and train\.iterations"):
        C.resolve_config("demo", config_file=f)


def test_unknown_key_is_one_line_with_did_you_mean(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("train:\n  epoch: 3\n")
    with pytest.raises(InputError, match=r"run\.yaml: unknown key 'train\.epoch' \(did you mean 'train\.epochs'\?\)") as err:
        C.resolve_config("demo", config_file=f)
    assert "\n" not in str(err.value)


def test_every_bad_key_is_reported_once(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("train:\n  epoch: 3\n  lr: fast\nmodel:\n  upsampler: bilnear\n")
    with pytest.raises(InputError) as err:
        C.resolve_config("demo", config_file=f)
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and all(line.startswith(f"config file {f}: ") for line in lines)
    assert "did you mean 'bilinear'" in str(err.value)


def test_sources_name_the_layer_of_every_non_default_value(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("train:\n  lr: 0.002\n")
    cfg, sources = C.resolve_layers("demo", config_file=f, overrides={"train": {"batch_size": 2}}, preset="quick")
    assert sources["train.lr"] == f"config file {f}"
    assert sources["train.batch_size"] == "flags"
    assert sources["train.optimizer"] == "recipe quick"
    assert sources["data.img_size"] == "recipe quick"  # the demo preset set it too (96); the recipe came later (null)
    assert sources["model.name"] == "recipe quick"
    assert "train.momentum" not in sources  # a default
    assert "train.lr" in C.describe_sources(cfg, sources)


def test_the_schema_is_the_one_description():
    # defaults, types, choices and flags come from the dataclasses
    full = C.flatten(dataclasses.asdict(C.RunConfig()))
    assert C.flatten(C.DEFAULTS) == {k: v for k, v in full.items() if not C.OPTIONS[k].derived}
    assert C.OPTIONS["train.epochs"].flag == "--epochs" and C.OPTIONS["train.epochs"].help
    assert C.OPTIONS["amp"].choices() == tuple(C.AMP_MODES)
    assert "dysample" in C.OPTIONS["model.upsampler"].choices()
    with pytest.raises(dataclasses.FrozenInstanceError):
        C.RunConfig().seed = 3  # type: ignore[misc]


def test_a_config_json_written_by_this_version_loads_again(tmp_path):
    from resfu_med.engine.preparation import complete_config

    written = complete_config(C.resolve_config("demo", overrides={"train": {"epochs": 2}}))
    f = tmp_path / "config.json"
    f.write_text(json.dumps(written))
    again = C.resolve_config(None, config_file=f)
    assert again["train"]["epochs"] == 2 and again["data"]["num_classes"] == written["data"]["num_classes"]


def test_an_old_checkpoint_config_migrates():
    old = {"seed": 1, "model": {"name": "unet", "upsampler": "resfu", "kwargs": {"upsample": "resfu"}},
           "data": {"dataset": "demo", "img_size": 96, "num_classes": 9}, "train": {"epochs": 3, "base_lr": 0.01}}
    cfg = C.migrate_config(old)
    assert cfg["model"]["kwargs"] == {"upsampler": "resfu"}
    assert cfg["train"]["lr"] == 0.01 and "base_lr" not in cfg["train"]
    C.merge_config(C.DEFAULTS, cfg, source="old checkpoint")  # valid now
