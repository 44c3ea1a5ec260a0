"""Write a MONAI bundle from a resfu-med checkpoint, check one, and load its network back.

Layout (MONAI Bundle Specification)::

    <out>/configs/metadata.json   inference.json   train.json   evaluate.json
    <out>/models/model.pt         (state dict)     model.ts (TorchScript, optional)   model.onnx (optional)
    <out>/docs/README.md
    <out>/LICENSE
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from resfu_med.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from resfu_med.bundle.checkpoint_io import (
    build_network,
    network_from_def,
    default_roi_size,
    example_input,
    load_for_bundle,
)
from resfu_med.bundle.configs import (
    check_standard_config,
    evaluate_config,
    inference_config,
    inferer_def,
    network_def,
    train_config,
)
from resfu_med.bundle.inferer import recorded_settings
from resfu_med.bundle.metadata import build_metadata, eval_metrics_from
from resfu_med.bundle.readme import render_license, render_readme
from resfu_med.bundle.schema import validate_metadata
from resfu_med.data.labels import output_values
from resfu_med.errors import CheckpointError, InputError
from resfu_med.networks.model_registry import img_size_of, spatial_dims_of
from resfu_med.outputs import claim_output, output_folder
from resfu_med.safety import check_plain_data

__all__ = [
    "REQUIRED_FILES",
    "export_bundle",
    "check_bundle",
    "load_bundle_network",
    "read_metrics_file",
    "verify_bundle",
]

REQUIRED_FILES = ("configs/metadata.json", "configs/inference.json", "models/model.pt")
def export_bundle(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    name: str | None = None,
    version: str = "0.1.0",
    roi_size: list[int] | None = None,
    overlap: float = 0.25,
    mode: str = "gaussian",
    sw_batch_size: int = 8,
    resample: bool = True,
    metrics: dict[str, float] | str | os.PathLike | None = None,
    torchscript: bool = True,
    onnx: bool = False,
    overwrite: bool = False,
    raw_labels: bool = False,
) -> Path:
    """Export a checkpoint as a MONAI bundle folder.

    Args:
        checkpoint: a ``resfu-med train`` checkpoint.
        out: the bundle folder to write.
        name: bundle name (default: the folder's name).
        version: bundle version (``metadata.json``).
        roi_size: inferer patch (default :func:`default_roi_size`).
        overlap: sliding-window overlap.
        mode: window blending, ``"gaussian"`` or ``"constant"``.
        sw_batch_size: slices (2D) or windows (3D) per network call.
        resample: 2D models: zoom slices to the training size (as ``resfu-med infer``); ``False`` = native grid
            (as ``resfu-med infer --no-resample``).
        metrics: evaluation metrics for ``eval_metrics`` and the README, or a JSON file of them (its top-level numbers;
            ``resfu-med evaluate``'s ``metrics.json`` works); default: the checkpoint's best metric.
        torchscript: also write ``models/model.ts`` (skipped with a warning if the network cannot be compiled).
        onnx: also write ``models/model.onnx`` (needs ``onnx`` and ``onnxruntime``).
        overwrite: replace an existing bundle in ``out``.
        raw_labels: write the raw release's label values (Synapse: BTCV numbering) instead of the dataset's default.

    Returns:
        The bundle folder.

    Raises:
        CheckpointError: unreadable checkpoint or weights of another architecture.
        InputError: ``out`` already holds a bundle and ``overwrite`` is false.
    """
    out = Path(out)
    source = str(checkpoint)
    if (out / "configs" / "metadata.json").exists() and not overwrite:
        raise InputError(f"{out}: already holds a bundle (configs/metadata.json); pass overwrite/--overwrite")
    claim_output(out, "export-bundle", inputs=[checkpoint], overwrite=overwrite, owned=_is_bundle_part)
    trained = load_for_bundle(checkpoint)  # fails before anything is written
    net, config, info = trained.model, trained.config, trained.info
    net_def = network_def(config["model"], source)
    dims = spatial_dims_of(config["model"])
    roi = list(roi_size) if roi_size else default_roi_size(config)
    if len(roi) != dims:
        raise InputError(f"--roi-size {' '.join(map(str, roi))} has {len(roi)} entries for a {dims}D model")
    if mode != "gaussian":
        raise InputError(f"--mode {mode}: bundles segment with resfu-med infer's own inference, which blends windows "
                         "with a Gaussian (mode gaussian)")
    recorded = recorded_settings(config)
    check_plain_data(recorded, source, "config", error=CheckpointError)
    inferer_def(recorded, roi, overlap, sw_batch_size, resample)  # InputError naming the option, before writing
    data = config["data"]
    if isinstance(metrics, (str, os.PathLike)):
        metrics = read_metrics_file(metrics)
    if metrics is None and isinstance(info.get("best_metric"), (int, float)):
        metrics = {"val_mean_dice": float(info["best_metric"])}
    metadata = build_metadata(config, roi, name=name or out.resolve().name, version=version, metrics=metrics,
                              spatial_dims=dims, raw_labels=raw_labels)
    validate_metadata(metadata, source=str(out / "configs" / "metadata.json"))
    try:
        values = output_values(data, raw=raw_labels)
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None
    inference = inference_config(net_def, data["intensity"], recorded, roi, overlap, sw_batch_size, resample, values)
    train_patch = [img_size_of(config["data"])] * 2 if dims == 2 else roi
    configs = {
        "metadata.json": metadata,
        "inference.json": inference,
        "train.json": train_config(net_def, data["intensity"], dims, train_patch, int(data["num_classes"])),
        "evaluate.json": evaluate_config(inference, data["intensity"], int(data["num_classes"]), values),
    }
    with output_folder(out, "export-bundle", inputs=[checkpoint], overwrite=overwrite, owned=_is_bundle_part):
        for fname, content in configs.items():
            atomic_write_json(out / "configs" / fname, content)
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, buffer)
        atomic_write_bytes(out / "models" / "model.pt", buffer.getvalue())
        example = example_input(config, roi)
        if torchscript:
            _optional_export("TorchScript", out / "models" / "model.ts", lambda p: _ts(net, p, example, metadata, inference))
        if onnx:
            from resfu_med.bundle.export import export_onnx

            _optional_export("ONNX", out / "models" / "model.onnx", lambda p: export_onnx(net, p, example))
        atomic_write_text(out / "docs" / "README.md", render_readme(metadata, config, net_def, inference, info))
        atomic_write_text(out / "LICENSE", render_license(metadata["copyright"]))
        check_bundle(out)
    return out


def read_metrics_file(path: str | os.PathLike) -> dict[str, float]:
    """``eval_metrics`` from a JSON metrics file (:func:`resfu_med.bundle.metadata.eval_metrics_from`).

    Raises:
        InputError: the file is missing, not JSON, or not a JSON object.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: metrics file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: metrics file is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: metrics file must hold a JSON object (resfu-med evaluate's metrics.json, or name: number)")
    return eval_metrics_from(data)


def _is_bundle_part(path: Path) -> bool:
    """What :func:`export_bundle` writes at the top of a bundle (a bundle folder carries no marker file)."""
    return path.name in ("configs", "models", "docs", "LICENSE")


def _ts(net, path, example, metadata, inference):
    from resfu_med.bundle.export import export_torchscript

    return export_torchscript(net, path, example, meta_values=metadata,
                              extra_files={"inference.json": json.dumps(inference).encode()})


def _optional_export(kind: str, path: Path, fn) -> None:
    import warnings

    try:
        fn(path)
    except Exception as err:  # noqa: BLE001 - optional artefacts never fail the bundle
        if path.exists():
            path.unlink()
        warnings.warn(f"{kind} export skipped for {path.name}: {err}".splitlines()[0])


def check_bundle(bundle_dir: str | os.PathLike) -> dict[str, Any]:
    """Check that a folder is a complete bundle and its metadata is valid.

    Static: nothing in the configs is evaluated. Every expression and ``_target_`` must be one that resfu-med
    bundles contain (:func:`~resfu_med.bundle.configs.check_standard_config`), metadata is plain data.

    Returns:
        The metadata dict.

    Raises:
        InputError: a required file is missing (names it), the metadata is invalid (names the field), or a config
            holds an expression, component or inferer setting resfu-med does not write (names the value).
    """
    root = Path(bundle_dir)
    if not root.is_dir():
        raise InputError(f"{root}: bundle folder not found")
    for rel in REQUIRED_FILES:
        if not (root / rel).is_file():
            raise InputError(f"{root / rel}: required bundle file is missing")
    for name in ("inference.json", "train.json", "evaluate.json"):
        if (root / "configs" / name).is_file():
            check_standard_config(_read_json(root / "configs" / name), str(root / "configs" / name))
    metadata = validate_metadata(root / "configs" / "metadata.json")
    check_plain_data(metadata, str(root / "configs" / "metadata.json"))
    return metadata


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from None


def load_bundle_network(bundle_dir: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The network of a bundle with its weights, in eval mode (``network_def`` + ``models/model.pt``).

    ``network_def`` is read as JSON and built from validated plain values (:func:`network_from_def`); nothing in the
    bundle is evaluated.

    Raises:
        InputError: incomplete bundle or a config resfu-med did not write.
        CheckpointError: ``network_def`` is not a resfu-med network of plain arguments, or the weights do not fit it.
    """
    root = Path(bundle_dir)
    check_bundle(root)
    config = root / "configs" / "inference.json"
    net_def = _read_json(config).get("network_def")
    network_from_def(net_def, str(config))  # refused before the weights file is even opened
    weights = root / "models" / "model.pt"
    from resfu_med.engine.checkpoint import read_torch_file, unwrap_state_dict  # the one reader and unwrapper

    state = read_torch_file(weights, "weights file", map_location=device)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{weights}: not a state dict of tensors")
    return build_network(net_def, unwrap_state_dict(state), str(weights)).to(device)


def verify_bundle(bundle_dir: str | os.PathLike) -> dict[str, Any]:
    """``resfu-med verify-bundle``: check the files and metadata, rebuild the network and load its weights.

    Returns:
        ``{"name", "version", "network" (class name), "parameters"}``.

    Raises:
        InputError: incomplete bundle or invalid metadata. CheckpointError: weights that do not fit ``network_def``.
    """
    meta = check_bundle(bundle_dir)
    net = load_bundle_network(bundle_dir)
    return {"name": meta.get("name", "?"), "version": meta["version"], "network": type(net).__name__,
            "parameters": sum(p.numel() for p in net.parameters())}
