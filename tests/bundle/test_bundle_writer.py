"""``export_bundle``: the folder MONAI expects, loadable with ConfigParser, verified by MONAI, clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from bundle_helpers import DATA_CFG, STAND_IN, TINY_UNET, make_checkpoint, use_stand_in

from resfu_med.bundle import check_bundle, export_bundle, intensity_transforms, load_bundle_network, schema_path
from resfu_med.cli import main
from resfu_med.errors import CheckpointError, InputError

EXPECTED_FILES = {
    "configs/metadata.json", "configs/inference.json", "configs/train.json", "configs/evaluate.json",
    "models/model.pt", "models/model.ts", "docs/README.md", "LICENSE",
}


@pytest.fixture(scope="module")
def _exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        use_stand_in(mp)
        path, net = make_checkpoint(root / "ckpt.pt")
        return export_bundle(path, root / "demo_bundle"), net


@pytest.fixture
def bundle(tmp_path, _exported, stand_in_targets):
    """A fresh copy of one exported bundle (tests may damage it) and the checkpoint's network."""
    out = tmp_path / "demo_bundle"
    shutil.copytree(_exported[0], out)
    shutil.copy(_exported[0].parent / "ckpt.pt", tmp_path / "ckpt.pt")
    return out, _exported[1]


def test_output_tree_and_contents(bundle):
    out, net = bundle
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == EXPECTED_FILES
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert meta["name"] == "demo_bundle" and meta["eval_metrics"] == {"val_mean_dice": 0.25}
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "liver",
                                                                             "2": "spleen"}
    inference = json.loads((out / "configs" / "inference.json").read_text())
    assert inference["network_def"] == {"_target_": STAND_IN, **TINY_UNET, "spatial_dims": 2}
    # resfu-med infer's own inference with the checkpoint's recorded settings (only the keys prediction reads)
    assert inference["inferer"]["_target_"] == "resfu_med.bundle.EngineInferer" and inference["inferer"]["roi_size"] == [32, 32]
    assert inference["inferer"]["data"] == {"img_size": 32, "num_classes": 3}
    assert inference["inferer"]["model"]["name"] == "unet" and inference["evaluator"]["network"] == "@network"
    state = torch.load(out / "models" / "model.pt", weights_only=True)
    assert state.keys() == net.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    readme = (out / "docs" / "README.md").read_text()
    for needle in ("| 1 | liver |", "| 2 | spleen |", "val_mean_dice", "a_min",
                   "monai.bundle run", "get_parsed_content(\"network_def\")"):
        assert needle in readme
    assert "Apache License" in (out / "LICENSE").read_text()


def test_configparser_three_lines(bundle):
    from monai.bundle import ConfigParser

    out, net = bundle
    parser = ConfigParser(); parser.read_config(str(out / "configs" / "inference.json"))  # noqa: E702
    loaded = parser.get_parsed_content("network_def")
    loaded.load_state_dict(torch.load(out / "models" / "model.pt", map_location="cpu"))
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), net(x))
        assert torch.equal(load_bundle_network(out)(x), net(x))


def test_torchscript_in_bundle_has_metadata(bundle):
    from monai.data import load_net_with_metadata

    out, net = bundle
    ts, meta, extra = load_net_with_metadata(str(out / "models" / "model.ts"), more_extra_files=["inference.json"])
    assert meta["name"] == "demo_bundle" and json.loads(extra["inference.json"])["network_def"]["_target_"] == STAND_IN
    x = torch.rand(1, 1, 48, 40)
    with torch.no_grad():
        assert torch.equal(ts(x), net(x))


def test_monai_verifier_accepts_bundle(bundle):
    from monai.bundle import verify_metadata

    out, _ = bundle
    verify_metadata(meta_file=str(out / "configs" / "metadata.json"), filepath=str(schema_path()))  # raises if invalid


def test_monai_verifier_rejects_bad_field(bundle):
    from monai.bundle import verify_metadata

    out, _ = bundle
    meta_file = out / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["network_data_format"]["inputs"]["image"]["num_channels"] = -1
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="-1 is less than the minimum of 1"):
        verify_metadata(meta_file=str(meta_file), filepath=str(schema_path()))
    with pytest.raises(InputError, match=r"metadata\.json: .*'network_data_format\.inputs\.image\.num_channels'"):
        check_bundle(out)


@pytest.mark.parametrize("missing", ["configs/metadata.json", "configs/inference.json", "models/model.pt"])
def test_missing_file_in_bundle(bundle, missing):
    out, _ = bundle
    (out / missing).unlink()
    with pytest.raises(InputError, match=f"{out / missing}: required bundle file is missing"):
        load_bundle_network(out)


def test_checkpoint_of_another_architecture(tmp_path, stand_in_targets):
    # Weights of a wider U-Net under a config that says the tiny one: the loader must refuse and name the file.
    _, wide = make_checkpoint(tmp_path / "wide.pt", kwargs={**TINY_UNET, "features": [8, 8, 16, 16, 32, 8]})
    path, _ = make_checkpoint(tmp_path / "mixed.pt", state=wide.state_dict())
    with pytest.raises(CheckpointError, match=rf"{path} does not match its 'unet' architecture: .*of another shape"):
        export_bundle(path, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    from monai.networks.nets import SegResNet

    path, _ = make_checkpoint(tmp_path / "segresnet.pt", state=SegResNet(spatial_dims=2).state_dict())
    with pytest.raises(CheckpointError, match=r"segresnet\.pt does not match its 'unet' architecture: .* missing .* unexpected"):
        export_bundle(path, tmp_path / "b")


def test_checkpoint_without_data_config(tmp_path):
    from resfu_med.engine.checkpoint import load_checkpoint, save_checkpoint

    path, _ = make_checkpoint(tmp_path / "ckpt.pt")
    ckpt = load_checkpoint(path)
    del ckpt["config"]["data"]
    save_checkpoint(tmp_path / "nodata.pt", ckpt)
    with pytest.raises(CheckpointError, match=r"nodata\.pt: its config has no data\.num_classes"):
        export_bundle(tmp_path / "nodata.pt", tmp_path / "b")
    torch.save({"model": {}}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match=r"plain\.pt is not a resfu-med checkpoint"):
        export_bundle(tmp_path / "plain.pt", tmp_path / "b")


def test_refuses_to_overwrite(bundle):
    out, _ = bundle
    with pytest.raises(InputError, match="already holds a bundle"):
        export_bundle(out.parent / "ckpt.pt", out)


def test_cli_errors_are_one_line(tmp_path, capsys, stand_in_targets):
    _, wide = make_checkpoint(tmp_path / "wide.pt", kwargs={**TINY_UNET, "features": [8, 8, 16, 16, 32, 8]})
    path, _ = make_checkpoint(tmp_path / "mixed.pt", state=wide.state_dict())
    for argv in (["export-bundle", "--checkpoint", str(path), "--output", str(tmp_path / "b")],
                 ["export", "--checkpoint", str(tmp_path / "absent.pt"), "--output", str(tmp_path / "m.ts")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"resfu-med {argv[0]}: error: ") and str(tmp_path) in err


def test_cli_export_bundle(tmp_path, checkpoint, capsys):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"mean_dice": 0.7, "mean_hd95": 12.5, "per_class": {"liver": 0.9}}))
    assert main(["export-bundle", "--checkpoint", str(checkpoint[0]), "--output", str(tmp_path / "b"),
                 "--no-torchscript", "--metrics", str(metrics), "--name", "demo"]) == 0
    assert "bundle written to" in capsys.readouterr().out
    meta = check_bundle(tmp_path / "b")
    assert meta["name"] == "demo" and meta["eval_metrics"] == {"mean_dice": 0.7, "mean_hd95": 12.5}
    assert not (tmp_path / "b" / "models" / "model.ts").exists()


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"kind": "ct", "a_min": -125, "a_max": 275}, lambda v: (np.clip(v, -125, 275) + 125) / 400),
        ({"kind": "mri", "mode": "minmax"}, lambda v: (v - v.min()) / (v.max() - v.min())),
        ({"kind": "mri", "mode": "zscore"}, lambda v: (v - v.mean()) / v.std()),
    ],
)
def test_intensity_as_monai_transforms(spec, expected):
    from monai.bundle import ConfigParser

    vol = np.random.default_rng(0).normal(100, 300, (1, 6, 7, 5)).astype(np.float64)
    compose = ConfigParser({"t": {"_target_": "Compose", "transforms": intensity_transforms(spec)}}).get_parsed_content("t")
    got = np.asarray(compose({"image": vol.copy()})["image"])
    np.testing.assert_allclose(got, expected(vol), rtol=1e-6, atol=1e-6)


def test_intensity_matches_data_layer():
    data = pytest.importorskip("resfu_med.data")
    if not hasattr(data, "make_intensity_transform"):
        pytest.skip("resfu_med.data.make_intensity_transform not landed yet")
    from monai.bundle import ConfigParser

    vol = np.random.default_rng(1).normal(100, 300, (6, 7, 5)).astype(np.float32)
    for spec in (DATA_CFG["intensity"], {"kind": "mri", "mode": "minmax"}, {"kind": "mri", "mode": "zscore"}):
        compose = ConfigParser({"t": {"_target_": "Compose", "transforms": intensity_transforms(spec)}}).get_parsed_content("t")
        ours = np.asarray(compose({"image": vol[None].copy()})["image"])[0]
        np.testing.assert_allclose(ours, data.make_intensity_transform(spec)(vol.copy()), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cmd", ["export-bundle", "export"])
def test_help_mentions_examples(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "examples:" in out and "--checkpoint" in out


def test_transunet_bundle_loads_with_configparser(tmp_path):
    # The real resfu-med TransUNet (tiny): network_def targets resfu_med.networks.TransUNet with the checkpoint's kwargs.
    from resfu_med.engine.checkpoint import capture_rng, save_checkpoint
    from resfu_med.networks import build_model

    kwargs = {"num_classes": 3, "img_size": 32, "vit_depth": 1, "hidden_size": 32, "mlp_dim": 64, "num_heads": 2,
              "resnet_layers": [1, 1, 1], "resnet_width": 32, "head_channels": 32, "decoder_channels": [16, 16, 16, 16],
              "stem_channels": 16, "upsampler": "resfu"}
    model_cfg = {"name": "transunet", "kwargs": kwargs}
    net = build_model(model_cfg).eval()
    save_checkpoint(tmp_path / "tu.pt", {"model": net.state_dict(), "optimizer": {}, "scheduler": {}, "scaler": {},
                                         "epoch": 0, "iteration": 2, "rng": capture_rng(), "best_metric": None,
                                         "config": {"model": model_cfg, "data": DATA_CFG}})
    out = export_bundle(tmp_path / "tu.pt", tmp_path / "tu_bundle", torchscript=False)
    inference = json.loads((out / "configs" / "inference.json").read_text())
    assert inference["network_def"] == {"_target_": "resfu_med.networks.TransUNet", **kwargs}
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_bundle_network(out)(x), net(x))
    assert json.loads((out / "configs" / "metadata.json").read_text())["eval_metrics"] == {}


def test_cli_verify_bundle(bundle, capsys):
    out, _ = bundle
    assert main(["verify-bundle", str(out)]) == 0
    assert "valid bundle 'demo_bundle'" in capsys.readouterr().out
    meta_file = out / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["network_data_format"]["outputs"]["pred"]["dtype"] = "double"
    meta_file.write_text(json.dumps(meta))
    (out / "models" / "model.pt").unlink()
    for expected in (f"{out / 'models' / 'model.pt'}: required bundle file is missing",
                     "field 'network_data_format.outputs.pred.dtype' is invalid"):
        assert main(["verify-bundle", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err
        shutil.copy(out.parent / "ckpt.pt", out / "models" / "model.pt")  # now only the metadata is wrong


def test_configs_hold_no_expression(tmp_path, checkpoint):
    # Bundles name registered components with plain arguments: no value is a `$` expression or a `%` macro, so
    # verify-bundle needs no allow-list of expressions (it refuses every one).
    from resfu_med.bundle import export_bundle
    from resfu_med.bundle.configs import _walk, check_standard_config
    from resfu_med.errors import InputError

    bundle = export_bundle(checkpoint[0], tmp_path / "bundle", torchscript=False)
    for name in ("inference.json", "train.json", "evaluate.json"):
        config = json.loads((bundle / "configs" / name).read_text())
        strings = [item for _, _, item in _walk(config) if isinstance(item, str)]
        assert not [s for s in strings if s[:1] in "$%"], name
        check_standard_config(config, name)
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    for bad, words in (("$@bundle_root + '/models'", "an expression"), ("@no_such_item", "not an item"),
                       ("%configs/x.json#a", "a macro")):
        config["model_dir"] = bad
        with pytest.raises(InputError, match=words):
            check_standard_config(config, "inference.json")
