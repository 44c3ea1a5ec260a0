"""The shipped metadata schema encodes the MONAI Bundle Specification's mandatory fields (offline, jsonschema)."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest

from resfu_med.bundle import build_metadata, load_schema, schema_path, validate_metadata
from resfu_med.errors import InputError

# The example of docs/source/mb_specification.rst (MONAI), with the schema URL MONAI's verifier needs and the
# channel_def keys as JSON strings: an independent, known-good document.
SPEC_EXAMPLE = {
    "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
    "version": "0.1.0",
    "changelog": {"0.1.0": "complete the model package", "0.0.1": "initialize the model package structure"},
    "monai_version": "0.8.0",
    "pytorch_version": "1.10.0",
    "numpy_version": "1.21.2",
    "optional_packages_version": {"nibabel": "3.2.1"},
    "task": "Decathlon spleen segmentation",
    "description": "A pre-trained model for volumetric (3D) segmentation of the spleen from CT image",
    "authors": "MONAI team",
    "copyright": "Copyright (c) MONAI Consortium",
    "data_source": "Task09_Spleen.tar from http://medicaldecathlon.com/",
    "data_type": "dicom",
    "eval_metrics": {"mean_dice": 0.96},
    "intended_use": "This is an example, not to be used for diagnostic purposes",
    "references": ["Xia, Yingda, et al. 3D Semi-Supervised Learning ... (2018)."],
    "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR", "num_channels": 1,
                             "spatial_shape": [160, 160, 160], "dtype": "float32", "value_range": [0, 1],
                             "is_patch_data": False, "channel_def": {"0": "image"}}},
        "outputs": {"pred": {"type": "image", "format": "labels", "modality": "n/a", "num_channels": 2,
                             "spatial_shape": [160, 160, 160], "dtype": "float32", "value_range": [],
                             "is_patch_data": False, "channel_def": {"0": "background", "1": "spleen"}}},
    },
}


def test_schema_file_is_valid_draft7_and_package_data():
    schema = json.loads(schema_path().read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema == load_schema()
    mandatory = {"version", "monai_version", "pytorch_version", "numpy_version", "optional_packages_version", "task",
                 "description", "authors", "copyright", "network_data_format"}
    assert mandatory <= set(schema["required"])
    tensor_keys = {"type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range",
                   "is_patch_data", "channel_def"}
    assert set(schema["definitions"]["tensor"]["required"]) == tensor_keys


def test_spec_example_is_valid():
    assert validate_metadata(copy.deepcopy(SPEC_EXAMPLE)) == SPEC_EXAMPLE


def test_spatial_shape_expressions_are_valid():
    meta = copy.deepcopy(SPEC_EXAMPLE)
    meta["network_data_format"]["inputs"]["image"]["spatial_shape"] = ["2**n", "2**n", "*"]
    validate_metadata(meta)


def _set(meta, path, value):
    node = meta
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


_DELETE = object()
IMG = ("network_data_format", "inputs", "image")


@pytest.mark.parametrize(
    "path, value, field",
    [
        (("version",), _DELETE, "version"),
        (("network_data_format",), _DELETE, "network_data_format"),
        (("optional_packages_version",), _DELETE, "optional_packages_version"),
        (("schema",), _DELETE, "schema"),
        (("version",), "first", "version"),
        (("authors",), "", "authors"),
        (("network_data_format", "outputs"), _DELETE, "network_data_format.outputs"),
        ((*IMG, "num_channels"), 0, "network_data_format.inputs.image.num_channels"),
        ((*IMG, "num_channels"), "1", "network_data_format.inputs.image.num_channels"),
        ((*IMG, "value_range"), [0, 1, 2], "network_data_format.inputs.image.value_range"),
        ((*IMG, "is_patch_data"), "false", "network_data_format.inputs.image.is_patch_data"),
        ((*IMG, "spatial_shape"), [160, 0], "network_data_format.inputs.image.spatial_shape.1"),
        ((*IMG, "type"), "volume", "network_data_format.inputs.image.type"),
        ((*IMG, "dtype"), "float", "network_data_format.inputs.image.dtype"),
        ((*IMG, "channel_def"), {"first": "image"}, "network_data_format.inputs.image.channel_def"),
        ((*IMG, "modality"), _DELETE, "network_data_format.inputs.image.modality"),
    ],
)
def test_bad_metadata_names_the_field(path, value, field):
    meta = copy.deepcopy(SPEC_EXAMPLE)
    _set(meta, path, value)
    with pytest.raises(InputError, match=rf"metadata\.json: invalid bundle metadata: field '{field}'"):
        validate_metadata(meta)


def test_bad_metadata_file(tmp_path):
    missing = tmp_path / "configs" / "metadata.json"
    with pytest.raises(InputError, match=f"{missing}: bundle metadata file not found"):
        validate_metadata(missing)
    broken = tmp_path / "metadata.json"
    broken.write_text("{\"version\": ")
    with pytest.raises(InputError, match=f"{broken}: not valid JSON"):
        validate_metadata(broken)


@pytest.mark.parametrize("intensity, value_range", [({"kind": "ct", "a_min": -125, "a_max": 275}, [0.0, 1.0]),
                                                    ({"kind": "mri", "mode": "zscore"}, [])])
def test_built_metadata_is_valid(intensity, value_range):
    config = {"model": {"name": "transunet", "kwargs": {"num_classes": 9, "upsampler": "resfu"}},
              "data": {"dataset": "synapse", "num_classes": 9, "intensity": intensity, "modality": "MRI",
                       "label_names": ["aorta", "gallbladder"]}}
    meta = validate_metadata(build_metadata(config, [224, 224], name="synapse_transunet", metrics={"dice": 0.8,
                                                                                                 "hd95": float("nan")}))
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert image["modality"] == "MR" and image["spatial_shape"] == [224, 224] and image["value_range"] == value_range
    assert pred["num_channels"] == 9
    assert pred["channel_def"] == {"0": "background", "1": "aorta", "2": "gallbladder",
                                   **{str(i): f"class {i}" for i in range(3, 9)}}
    assert meta["eval_metrics"] == {"dice": 0.8}
