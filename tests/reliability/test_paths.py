"""No reads or writes outside the folders the user named (issue 15, item 3): case names from list files and
``dataset.json`` entries cannot leave their folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from _reliability import assert_one_line_error, run_cli
from test_outputs import _msd_task


@pytest.fixture()
def demo_copy(tmp_path) -> Path:
    from resfu_med.data import ensure_demo_data

    root = tmp_path / "demo"
    shutil.copytree(ensure_demo_data(), root)
    return root


@pytest.mark.parametrize("case", ["../../planted", "/tmp/planted", "sub/planted", "bad\x07name", ".."])
def test_listed_case_name_cannot_escape(case, demo_copy, checkpoint, tmp_path, capsys):
    lst = demo_copy / "lists" / "lists_Synapse" / "test_vol.txt"
    lst.write_text(lst.read_text() + case + "\n")
    out = tmp_path / "deep" / "er" / "eval"
    rc, err = run_cli(["evaluate", "--checkpoint", str(checkpoint), "--dataset", "demo", "--data-root", str(demo_copy),
                       "--output", str(out), "--save-predictions", "--device", "cpu", "--no-progress"], capsys)
    assert_one_line_error(rc, err, "evaluate", "test_vol.txt", "case name", strict=False)
    assert not list(tmp_path.rglob("planted*")) and not Path("/tmp/planted_pred.nii.gz").exists()
    assert not (tmp_path / "deep").exists(), "the refused run left its output folder"


@pytest.mark.parametrize("field, value", [("image", "../outside.nii.gz"), ("label", "/etc/passwd"),
                                          ("image", "imagesTr/../../x.nii.gz")])
def test_dataset_json_entries_stay_inside_the_dataset(field, value, tmp_path, capsys):
    raw = _msd_task(tmp_path / "Task09_Spleen")
    meta = json.loads((raw / "dataset.json").read_text())
    meta["training"][0][field] = value
    (raw / "dataset.json").write_text(json.dumps(meta))
    rc, err = run_cli(["prepare", "--dataset", "msd", "--data-root", str(raw), "--output", str(tmp_path / "p"),
                       "--no-progress"], capsys)
    assert_one_line_error(rc, err, "prepare", "dataset.json", f"training[0].{field}", "outside")
    assert not (tmp_path / "p").exists()


def test_case_name_check_unit():
    from resfu_med.errors import InputError
    from resfu_med.safety import check_case_name, check_inside

    for ok in ("case0001", "patient001_frame01", "img.v2", "spleen_1"):
        assert check_case_name(ok, "list") == ok
    for bad in ("", " ", "..", ".", "a/b", "a\\b", "/abs", "C:evil", "tab\there"):
        with pytest.raises(InputError):
            check_case_name(bad, "list")
    with pytest.raises(InputError, match="resolves outside"):
        check_inside("../x", "/data/root", "dataset.json")
