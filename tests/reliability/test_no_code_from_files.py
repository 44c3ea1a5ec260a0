"""A checkpoint or a bundle is data: crafted values never run code (issue 15, item 1).

Each crafted file carries a payload that would create a marker file if anything evaluated it (MONAI's ``ConfigParser``
evaluates strings starting with ``$`` and instantiates ``_target_`` mappings). Every command must refuse the file in one
line naming the offending value, with no side effect and nothing written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from _reliability import assert_one_line_error, ct_volume, run_cli, write_nifti
from resfu_med.atomic import atomic_torch_save


def _payload(marker: Path) -> str:
    return f"$__import__('os').system('touch {marker}') or 1"


#: name -> (edit of config["model"]["kwargs"] given the marker, dotted path the error names, what it says)
VARIANTS = {
    "expression": (lambda k, m: k.update(in_channels=_payload(m)), "model.kwargs.in_channels", "is an expression"),
    "reference": (lambda k, m: k.update(in_channels="@network_def"), "model.kwargs.in_channels", "is a reference"),
    "macro": (lambda k, m: k.update(in_channels="%configs/x.json#y"), "model.kwargs.in_channels", "is a macro"),
    "nested-list": (lambda k, m: k.update(features=[4, 4, _payload(m), 8, 16, 4]), "model.kwargs.features.2",
                    "is an expression"),
    "unknown-kwarg": (lambda k, m: k.update(run_me=1), "model.kwargs.run_me", "is not an argument of BasicUNet"),
    "target": (lambda k, m: k.update(act={"_target_": "os.system", "command": f"touch {m}"}),
               "model.kwargs.act._target_", "refusing"),
}


def _evil_checkpoint(checkpoint: Path, tmp_path: Path, variant: str) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    ckpt = torch.load(checkpoint, weights_only=True)
    VARIANTS[variant][0](ckpt["config"]["model"]["kwargs"], marker)
    evil = tmp_path / "evil.pt"
    atomic_torch_save(ckpt, evil)
    return evil, marker


def _scan(tmp_path: Path) -> Path:
    return write_nifti(tmp_path / "scans" / "scan.nii.gz", ct_volume())


COMMANDS = {
    "export-bundle": lambda e, t: ["export-bundle", "--checkpoint", str(e), "--output", str(t / "out")],
    "export": lambda e, t: ["export", "--checkpoint", str(e), "--output", str(t / "out" / "m.ts")],
    "evaluate": lambda e, t: ["evaluate", "--checkpoint", str(e), "--dataset", "demo", "--output", str(t / "out"),
                              "--device", "cpu"],
    "infer": lambda e, t: ["infer", "-i", str(_scan(t)), "-o", str(t / "out"), "--checkpoint", str(e),
                           "--device", "cpu"],
    "train": lambda e, t: ["train", "--output", str(t / "out"), "--resume", "--device", "cpu", "--no-progress"],
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_crafted_checkpoint_is_refused_without_side_effect(command, variant, checkpoint, tmp_path, capsys,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil, marker = _evil_checkpoint(checkpoint, tmp_path, variant)
    if command == "train":  # a run folder whose last.pt was replaced by the crafted file
        (tmp_path / "out").mkdir()
        shutil.copy(evil, tmp_path / "out" / "last.pt")
    before = sorted((tmp_path / "out").rglob("*")) if (tmp_path / "out").exists() else None
    rc, err = run_cli(COMMANDS[command](evil, tmp_path), capsys)
    _, where, says = VARIANTS[variant]
    name = "last.pt" if command == "train" else "evil.pt"  # --resume reads the run's own last.pt
    assert_one_line_error(rc, err, command, name, f"config value {where}", says, "refusing")
    assert not marker.exists(), "the payload ran"
    after = sorted((tmp_path / "out").rglob("*")) if (tmp_path / "out").exists() else None
    assert after == before, f"{command} wrote {after}"


def test_issue_message_verbatim(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil, marker = _evil_checkpoint(checkpoint, tmp_path, "expression")
    rc, err = run_cli(["export-bundle", "--checkpoint", "evil.pt", "--output", "b"], capsys)
    assert err.startswith("resfu-med export-bundle: error: evil.pt: config value model.kwargs.in_channels is an "
                          "expression"), err
    assert err.rstrip().endswith("; refusing") and not marker.exists() and not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory, checkpoint) -> Path:
    from resfu_med.bundle import export_bundle

    return export_bundle(checkpoint, tmp_path_factory.mktemp("bundle") / "b", torchscript=False)


#: name -> (edit of inference.json given the marker, words of the error)
BUNDLE_EDITS = {
    "network-def-expression": (lambda c, m: c["network_def"].update(in_channels=_payload(m)),
                               ["network_def.in_channels", "refusing"]),
    "network-def-target": (lambda c, m: c["network_def"].update({"_target_": "os.system"}),
                           ["network_def._target_", "refusing"]),
    "run-expression": (lambda c, m: c["run"].append(_payload(m)), ["run.1", "expression", "refusing"]),
    "initialize-target": (lambda c, m: c["initialize"].append({"_target_": "subprocess.call", "args": ["touch", str(m)]}),
                          ["initialize.1._target_", "subprocess.call", "refusing"]),
    "requires-key": (lambda c, m: c["network_def"].update(_requires_=_payload(m)), ["network_def._requires_"]),
    "overlap": (lambda c, m: c["inferer"].update(overlap=1.5), ["inferer.overlap", "1.5"]),
    "sw-batch-size": (lambda c, m: c["inferer"].update(sw_batch_size=0), ["inferer.sw_batch_size"]),
}


@pytest.mark.parametrize("edit", sorted(BUNDLE_EDITS))
def test_verify_bundle_is_static(edit, good_bundle, tmp_path, capsys):
    bundle = tmp_path / "b"
    shutil.copytree(good_bundle, bundle)
    marker = tmp_path / "pwned"
    cfg_path = bundle / "configs" / "inference.json"
    cfg = json.loads(cfg_path.read_text())
    BUNDLE_EDITS[edit][0](cfg, marker)
    cfg_path.write_text(json.dumps(cfg))
    before = sorted(bundle.rglob("*"))
    rc, err = run_cli(["verify-bundle", str(bundle)], capsys)
    assert_one_line_error(rc, err, "verify-bundle", "inference.json", *BUNDLE_EDITS[edit][1])
    assert not marker.exists() and sorted(bundle.rglob("*")) == before


def test_verify_bundle_accepts_what_export_writes(good_bundle, capsys):
    rc, err = run_cli(["verify-bundle", str(good_bundle)], capsys)
    assert rc == 0 and not err, err


def test_bundle_train_json_loads_weights_only(good_bundle, tmp_path):
    import pickle

    from resfu_med.bundle.components import load_weights

    train = json.loads((good_bundle / "configs" / "train.json").read_text())
    assert train["load_pretrained"]["_target_"] == "resfu_med.bundle.components.load_weights"
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "model.pt"
    evil.write_bytes(pickle.dumps({"w": Payload()}))
    from resfu_med.errors import CheckpointError

    with pytest.raises(CheckpointError):
        load_weights(torch.nn.Linear(1, 1), str(evil))
    assert not marker.exists()


@pytest.mark.parametrize("argv, words", [
    (["--overlap", "1.5"], ["--overlap", "1.5"]),
    (["--sw-batch-size", "0"], ["--sw-batch-size", "0"]),
    (["--roi-size", "32", "0"], ["--roi-size"]),
])
def test_export_bundle_rejects_bad_inferer_options(argv, words, checkpoint, tmp_path, capsys):
    rc, err = run_cli(["export-bundle", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "b"), *argv], capsys)
    assert_one_line_error(rc, err, "export-bundle", *words)
    assert not (tmp_path / "b").exists()


REPO = Path(__file__).resolve().parents[2]


def test_every_torch_load_in_package_and_docs_is_weights_only():
    """Package code, README and docs snippets, and the configs a bundle ships: ``torch.load(..., weights_only=True)``."""
    import re

    files = [*REPO.glob("resfu_med/**/*.py"), *REPO.glob("networks/**/*.py"), *REPO.glob("data/**/*.py"),
             *REPO.glob("scripts/*.py"), REPO / "README.md", *REPO.glob("docs/*.md")]
    bad = []
    for f in files:
        text = f.read_text(encoding="utf-8")
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start(): text.find("\n\n", m.start())]
            depth, end = 0, None
            for i, ch in enumerate(call):
                depth += ch == "("
                depth -= ch == ")"
                if depth == 0 and ch == ")":
                    end = i
                    break
            if end is not None and "weights_only=True" not in call[:end]:
                bad.append(f"{f.relative_to(REPO)}: {call[:end + 1]}")
    assert not bad, bad


def test_torch_floor_covers_the_apis_the_code_uses():
    """``torch.library.register_autograd``/``register_fake`` and ``torch.is_autocast_enabled(device_type)``: 2.4."""
    import configparser

    from packaging.requirements import Requirement
    from packaging.version import Version

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    reqs = [Requirement(line.split("#")[0].strip()) for line in cfg["options"]["install_requires"].splitlines()
            if line.strip()]
    torch_req = next(r for r in reqs if r.name == "torch")
    assert not torch_req.specifier.contains(Version("2.3.1")) and torch_req.specifier.contains(Version("2.4.0"))


@pytest.mark.parametrize("kind, words", [("nifti", "is a NIfTI image"),
                                         ("objects", "holds Python objects other than tensors")])
@pytest.mark.parametrize("command", ["export", "infer", "export-bundle"])
def test_wrong_checkpoint_file_never_suggests_weights_only_false(command, kind, words, tmp_path, capsys):
    import numpy as np

    if kind == "nifti":
        bad = write_nifti(tmp_path / "scan.nii.gz", ct_volume())
    else:  # a pickle holding a numpy array: torch's weights-only loader refuses it and advises weights_only=False
        bad = tmp_path / "objects.pt"
        torch.save({"format": "resfu-med-checkpoint", "model": np.zeros(3)}, bad)
    argv = {"export": ["export", "--checkpoint", str(bad), "--output", str(tmp_path / "o" / "m.ts")],
            "infer": ["infer", "-i", str(_scan(tmp_path)), "-o", str(tmp_path / "o"), "--checkpoint", str(bad),
                      "--device", "cpu"],
            "export-bundle": ["export-bundle", "--checkpoint", str(bad), "--output", str(tmp_path / "o")]}[command]
    rc, err = run_cli(argv, capsys)
    assert_one_line_error(rc, err, command, bad.name, words)
    assert "weights_only" not in err and not (tmp_path / "o").exists()
