"""MONAI bundle export (``resfu-med export-bundle``) and TorchScript/ONNX export (``resfu-med export``).

A bundle written by :func:`export_bundle` runs with MONAI's own tools (``python -m monai.bundle run``), validates
offline against the shipped metadata schema (:func:`validate_metadata`), and loads in another project with
``monai.bundle.ConfigParser`` (``network_def`` + ``models/model.pt``). See docs/bundle.md.
"""

from __future__ import annotations

from resfu_med.bundle.checkpoint_io import build_network, default_roi_size, example_input, read_checkpoint
from resfu_med.bundle.configs import inference_config, intensity_transforms, network_def
from resfu_med.bundle.inferer import EngineInferer
from resfu_med.bundle.export import export_model, export_onnx, export_torchscript, onnx_available, run_onnx, script_or_trace
from resfu_med.bundle.metadata import build_metadata
from resfu_med.bundle.schema import SCHEMA_URL, load_schema, schema_path, validate_metadata
from resfu_med.bundle.writer import (
    REQUIRED_FILES,
    check_bundle,
    export_bundle,
    load_bundle_network,
    verify_bundle,
)

__all__ = [
    "EngineInferer",
    "REQUIRED_FILES",
    "SCHEMA_URL",
    "build_metadata",
    "build_network",
    "check_bundle",
    "default_roi_size",
    "example_input",
    "export_model",
    "export_bundle",
    "export_onnx",
    "export_torchscript",
    "inference_config",
    "intensity_transforms",
    "load_bundle_network",
    "load_schema",
    "network_def",
    "onnx_available",
    "read_checkpoint",
    "run_onnx",
    "schema_path",
    "script_or_trace",
    "validate_metadata",
    "verify_bundle",
]
