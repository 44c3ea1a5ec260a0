"""``configs/metadata.json`` of a bundle, from a checkpoint's run config (MONAI Bundle Specification fields)."""

from __future__ import annotations

import math
from importlib import metadata as importlib_metadata
from typing import Any

from resfu_med import __version__
from resfu_med.bundle.schema import SCHEMA_URL

__all__ = ["build_metadata", "channel_names", "package_versions"]

_OPTIONAL = ("nibabel", "pytorch-ignite", "fire", "SimpleITK", "onnx", "onnxruntime")


def package_versions(names: tuple[str, ...] = _OPTIONAL) -> dict[str, str]:
    """Installed versions of the given distributions (absent ones are left out)."""
    out = {}
    for name in names:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def channel_names(num_classes: int, label_names: list[str] | None) -> dict[str, str]:
    """``{"0": "background", "1": <first label>, ...}``; unnamed classes are called ``class <i>``."""
    names = list(label_names or [])
    return {str(i): ("background" if i == 0 else names[i - 1] if i - 1 < len(names) else f"class {i}")
            for i in range(num_classes)}


def eval_metrics_from(doc: dict[str, Any]) -> dict[str, float]:
    """``eval_metrics`` from a metrics file: ``resfu-med evaluate``'s ``metrics.json`` or a flat ``{name: number}``.

    From ``metrics.json`` every report gives ``<protocol>_mean_dice``, ``<protocol>_mean_hd95`` and
    ``<protocol>_dice_<class name>`` (protocols ``transunet`` (voxel units) and ``spacing`` (mm)); Dice as a fraction.
    Non-numeric entries are left out.
    """
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    out = {k: float(v) for k, v in doc.items() if number(v)}
    reports = doc.get("reports")
    if isinstance(reports, dict):
        for protocol, rep in reports.items():
            if not isinstance(rep, dict):
                continue
            mean = rep.get("mean") if isinstance(rep.get("mean"), dict) else {}
            for key in ("dice", "hd95"):
                if number(mean.get(key)):
                    out[f"{protocol}_mean_{key}"] = float(mean[key])
            for c in rep.get("classes") or []:
                if isinstance(c, dict) and number(c.get("dice")):
                    out[f"{protocol}_dice_{c.get('name', c.get('index'))}"] = float(c["dice"])
    return out


def _value_range(intensity: dict[str, Any]) -> list[float]:
    if intensity.get("kind") == "ct" or intensity.get("mode", "minmax") == "minmax":
        return [0.0, 1.0]
    return []  # z-score: unbounded


def build_metadata(
    config: dict[str, Any],
    roi_size: list[int],
    *,
    name: str,
    version: str = "0.1.0",
    description: str | None = None,
    authors: str = "resfu-med",
    copyright: str = "Copyright (c) the resfu-med authors",  # noqa: A002 - the specification's field name
    metrics: dict[str, float] | None = None,
    spatial_dims: int = 2,
    raw_labels: bool = False,
) -> dict[str, Any]:
    """Metadata of the bundle of one checkpoint.

    Args:
        config: the checkpoint's run config (``config["model"]``, ``config["data"]``, see docs/api.md).
        roi_size: the patch the network sees (``network_data_format`` spatial shape).
        name: bundle name.
        version: bundle version.
        description: long description; a default one is written from the config.
        authors: the model's authors.
        copyright: copyright line.
        metrics: evaluation metrics (``eval_metrics``); non-finite values are left out.
        spatial_dims: 2 (slice-wise model) or 3.
        raw_labels: the bundle writes the raw release's label values (Synapse: BTCV numbering).

    Returns:
        A dict valid against :func:`resfu_med.bundle.schema.load_schema`.
    """
    import monai
    import numpy
    import torch

    data, model = config["data"], config["model"]
    num_classes = int(data["num_classes"])
    modality = {"MRI": "MR"}.get(str(data.get("modality", "n/a")).upper(), str(data.get("modality", "n/a")).upper())
    dataset = data.get("dataset", "unknown")
    arch = model["name"]
    upsampler = model.get("kwargs", {}).get("upsampler") or model.get("kwargs", {}).get("upsample")
    task = f"{'Slice-wise 2D' if spatial_dims == 2 else 'Volumetric 3D'} {modality} segmentation of {num_classes - 1} structures ({dataset})"
    if description is None:
        description = (
            f"A {arch} network{f' with the {upsampler} upsampler' if upsampler else ''} trained with resfu-med on the "
            f"{dataset} dataset. It segments {', '.join(channel_names(num_classes, data.get('label_names')).values())} "
            f"from {modality} volumes ({'slice by slice' if spatial_dims == 2 else 'with 3D sliding windows'})."
        )
    metrics = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and math.isfinite(v)}
    value_range = _value_range(data.get("intensity", {}))
    from resfu_med.data.labels import output_values

    values = output_values(data, raw=raw_labels) or list(range(num_classes))
    names = channel_names(num_classes, data.get("label_names"))
    return {
        "schema": SCHEMA_URL,
        "version": version,
        "changelog": {version: "exported by resfu-med export-bundle"},
        "monai_version": monai.__version__.split("+")[0],
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "optional_packages_version": package_versions(),
        "required_packages_version": {"resfu-med": __version__, **package_versions(("nibabel", "pytorch-ignite", "fire"))},
        "name": name,
        "task": task,
        "description": description,
        "authors": authors,
        "copyright": copyright,
        "intended_use": "Research only; not for clinical or diagnostic use.",
        "data_source": str(dataset),
        "data_type": "nifti",
        "references": [
            "Zhou M. et al. Refreshing Similarity-based Upsamplers for Direct High-Ratio Feature Upsampling. "
            "arXiv:2407.02283 (2024).",
            "Chen J. et al. TransUNet: Transformers Make Strong Encoders for Medical Image Segmentation. "
            "arXiv:2102.04306 (2021).",
        ],
        "eval_metrics": metrics,
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": modality,
                    "num_channels": 1,
                    "spatial_shape": list(roi_size),
                    "dtype": "float32",
                    "value_range": value_range,
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "labels",
                    "modality": "n/a",
                    "num_channels": num_classes,
                    "spatial_shape": list(roi_size),
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": names,
                }
            },
        },
        # the label value the bundle's inference writes for each class: the dataset's own values, not the indices
        "label_values": {str(c): {"name": names[str(c)], "value": int(values[c])} for c in range(num_classes)},
    }
