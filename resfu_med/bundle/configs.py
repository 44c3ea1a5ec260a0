"""The MONAI bundle configs (``inference.json``, ``train.json``, ``evaluate.json``) of a resfu-med checkpoint.

They are plain MONAI: ``LoadImaged``/``EnsureChannelFirstd``, the checkpoint's intensity transform written as MONAI
transforms, ``SliceInferer`` (2D models, slice by slice) or ``SlidingWindowInferer`` (3D models), ``AsDiscreted`` and
``SaveImaged`` — the only resfu-med name in them is ``network_def``'s ``_target_``.

Axis convention. ``resfu-med`` works on arrays in ``(Z, Y, X)`` order (``resfu_med.data.load_nifti``), so a 2D model
sees ``(Y, X)`` slices; MONAI's NIfTI reader yields ``(X, Y, Z)``. The configs transpose the loaded image to
``(1, Z, Y, X)`` before the network and the prediction back before saving; ``Transposed`` leaves the affine in the
metadata untouched, so ``SaveImaged`` writes the labels with the input's affine, shape and orientation.
"""

from __future__ import annotations

import copy
from typing import Any

from resfu_med.errors import CheckpointError

__all__ = [
    "NETWORK_TARGETS",
    "network_def",
    "intensity_transforms",
    "spatial_dims_of",
    "inferer_def",
    "inference_config",
    "train_config",
    "evaluate_config",
]

# checkpoint ``config["model"]["name"]`` → the class ``network_def`` instantiates, and its fixed spatial_dims (if any).
NETWORK_TARGETS: dict[str, tuple[str, int | None]] = {
    "transunet": ("resfu_med.networks.TransUNet", None),
    "unet": ("resfu_med.networks.BasicUNet", 2),
    "unet3d": ("resfu_med.networks.BasicUNet", 3),
}

# (Z, Y, X) <-> nibabel (X, Y, Z), channel first; the permutation is its own inverse.
_TO_ZYX = [0, 3, 2, 1]


def network_def(model_cfg: dict[str, Any], source: str = "checkpoint") -> dict[str, Any]:
    """The ``network_def`` config item of a checkpoint's ``config["model"]``.

    Args:
        model_cfg: ``{"name": "transunet" | "unet" | "unet3d", "kwargs": {...}}``.
        source: file name cited in errors.

    Returns:
        ``{"_target_": "resfu_med.networks.<Class>", **kwargs}`` (``spatial_dims`` filled in for the U-Nets).

    Raises:
        CheckpointError: unknown model name or malformed kwargs.
    """
    name = model_cfg.get("name") if isinstance(model_cfg, dict) else None
    if name not in NETWORK_TARGETS:
        raise CheckpointError(
            f"{source}: config.model.name is {name!r}; exportable architectures are {sorted(NETWORK_TARGETS)}"
        )
    kwargs = model_cfg.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{source}: config.model.kwargs must be a dict, got {type(kwargs).__name__}")
    target, dims = NETWORK_TARGETS[name]
    out = {"_target_": target, **copy.deepcopy(kwargs)}
    if dims is not None:
        if out.setdefault("spatial_dims", dims) != dims:
            raise CheckpointError(f"{source}: config.model.kwargs.spatial_dims={out['spatial_dims']} for model {name!r}")
    return out


def spatial_dims_of(model_cfg: dict[str, Any]) -> int:
    """2 for slice-wise models, 3 for volumetric ones."""
    return 3 if model_cfg.get("name") == "unet3d" or model_cfg.get("kwargs", {}).get("spatial_dims") == 3 else 2


def intensity_transforms(spec: dict[str, Any], key: str = "image", source: str = "checkpoint") -> list[dict[str, Any]]:
    """The data layer's intensity spec as MONAI dictionary transforms.

    ``{"kind": "ct", "a_min", "a_max"}`` → clip to the window and scale to [0, 1] (``ScaleIntensityRanged``);
    ``{"kind": "mri", "mode": "minmax"}`` → per-volume min-max to [0, 1] (``ScaleIntensityd``);
    ``{"kind": "mri", "mode": "zscore"}`` → per-volume zero mean, unit variance (``NormalizeIntensityd``).

    Raises:
        CheckpointError: an intensity spec this module cannot express.
    """
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "ct":
        try:
            a_min, a_max = float(spec["a_min"]), float(spec["a_max"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{source}: config.data.intensity {spec!r} needs numeric a_min and a_max") from None
        return [
            {"_target_": "ScaleIntensityRanged", "keys": key, "a_min": a_min, "a_max": a_max,
             "b_min": 0.0, "b_max": 1.0, "clip": True}
        ]
    if kind == "mri" and spec.get("mode", "minmax") == "minmax":
        return [{"_target_": "ScaleIntensityd", "keys": key, "minv": 0.0, "maxv": 1.0}]
    if kind == "mri" and spec.get("mode") == "zscore":
        return [{"_target_": "NormalizeIntensityd", "keys": key, "nonzero": False, "channel_wise": True}]
    raise CheckpointError(f"{source}: config.data.intensity {spec!r} is not one of ct / mri minmax / mri zscore")


def inferer_def(spatial_dims: int, roi_size: list[int], overlap: float, mode: str, sw_batch_size: int) -> dict:
    """``SliceInferer`` over the Z axis of a ``(1, Z, Y, X)`` volume for 2D models, ``SlidingWindowInferer`` for 3D."""
    common = {"roi_size": list(roi_size), "sw_batch_size": sw_batch_size, "overlap": overlap, "mode": mode,
              "padding_mode": "constant", "cval": 0.0}
    if spatial_dims == 2:
        return {"_target_": "SliceInferer", "spatial_dim": 0, "progress": False, **common}
    return {"_target_": "SlidingWindowInferer", "progress": False, **common}


def _load_transforms(intensity: list[dict], keys: list[str]) -> list[dict]:
    image = [{"_target_": "LoadImaged", "keys": keys, "image_only": True},
             {"_target_": "EnsureChannelFirstd", "keys": keys}]
    return image + intensity + [{"_target_": "Transposed", "keys": keys, "indices": _TO_ZYX}]


def inference_config(
    net_def: dict[str, Any],
    intensity: dict[str, Any],
    spatial_dims: int,
    roi_size: list[int],
    overlap: float = 0.5,
    mode: str = "gaussian",
    sw_batch_size: int = 4,
) -> dict[str, Any]:
    """``configs/inference.json``: segment every ``*.nii``/``*.nii.gz`` of ``dataset_dir`` into ``output_dir``.

    Outputs are ``<name>_seg.nii.gz`` (uint8 labels, the input's affine and shape), as ``resfu-med infer`` writes.
    Override ``dataset_dir``, ``output_dir``, ``bundle_root`` and ``device`` on the ``monai.bundle run`` command line.
    """
    return {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "model_dir": "$@bundle_root + '/models'",
        "dataset_dir": "$@bundle_root + '/data'",
        "output_dir": "$@bundle_root + '/eval'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": net_def,
        "network": "$@network_def.to(@device)",
        "datalist": "$sorted(glob.glob(os.path.join(@dataset_dir, '*.nii.gz')) + glob.glob(os.path.join(@dataset_dir, '*.nii')))",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": _load_transforms(intensity_transforms(intensity), ["image"])
            + [{"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"}],
        },
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": inferer_def(spatial_dims, roi_size, overlap, mode, sw_batch_size),
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {"_target_": "Transposed", "keys": "pred", "indices": _TO_ZYX},
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
                 "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False,
                 "squeeze_end_dims": True, "print_log": False},
            ],
        },
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "$@model_dir + '/model.pt'", "load_dict": {"model": "@network"},
             "map_location": "@device", "strict": True},
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }


def train_config(
    net_def: dict[str, Any],
    intensity: dict[str, Any],
    spatial_dims: int,
    roi_size: list[int],
    num_classes: int,
    learning_rate: float = 0.01,
    max_epochs: int = 100,
    batch_size: int = 8,
) -> dict[str, Any]:
    """``configs/train.json``: fine-tune from ``models/model.pt`` on ``dataset_dir/imagesTr`` + ``labelsTr`` (NIfTI).

    2D models train on random ``roi_size`` patches of single Z slices, 3D models on random 3D patches; DiceCE loss
    and SGD with momentum 0.9 as the TransUNet protocol; the result is written to ``models/model_finetuned.pt``.
    """
    patch = [1, *roi_size] if spatial_dims == 2 else list(roi_size)
    crop = [
        {"_target_": "SpatialPadd", "keys": ["image", "label"], "spatial_size": patch},
        {"_target_": "RandSpatialCropd", "keys": ["image", "label"], "roi_size": patch, "random_size": False},
    ]
    if spatial_dims == 2:
        crop.append({"_target_": "SqueezeDimd", "keys": ["image", "label"], "dim": 1})
    return {
        "imports": ["$import glob", "$import os", "$import torch"],
        "bundle_root": ".",
        "model_dir": "$@bundle_root + '/models'",
        "dataset_dir": "$@bundle_root + '/data'",
        "output_dir": "$@bundle_root + '/train_out'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": net_def,
        "network": "$@network_def.to(@device)",
        "load_pretrained": "$@network.load_state_dict(torch.load(@model_dir + '/model.pt', map_location=@device))",
        "images": "$sorted(glob.glob(os.path.join(@dataset_dir, 'imagesTr', '*.nii*')))",
        "labels": "$sorted(glob.glob(os.path.join(@dataset_dir, 'labelsTr', '*.nii*')))",
        "train_datalist": "$[{'image': i, 'label': l} for i, l in zip(@images, @labels)]",
        "max_epochs": max_epochs,
        "learning_rate": learning_rate,
        "loss": {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True},
        "optimizer": {"_target_": "torch.optim.SGD", "params": "$@network.parameters()", "lr": "@learning_rate",
                      "momentum": 0.9, "weight_decay": 1e-4},
        "train": {
            "preprocessing": {
                "_target_": "Compose",
                "transforms": _load_transforms(intensity_transforms(intensity), ["image", "label"])
                + crop + [{"_target_": "EnsureTyped", "keys": ["image", "label"], "dtype": "$torch.float32"}],
            },
            "dataset": {"_target_": "Dataset", "data": "@train_datalist", "transform": "@train#preprocessing"},
            "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": batch_size,
                           "shuffle": True, "num_workers": 0},
            "inferer": {"_target_": "SimpleInferer"},
            "handlers": [
                {"_target_": "CheckpointSaver", "save_dir": "@output_dir", "save_dict": {"model": "@network"},
                 "save_final": True, "final_filename": "model_finetuned.pt"},
                {"_target_": "StatsHandler", "tag_name": "train_loss", "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"},
            ],
            "trainer": {
                "_target_": "SupervisedTrainer",
                "max_epochs": "@max_epochs",
                "device": "@device",
                "train_data_loader": "@train#dataloader",
                "network": "@network",
                "loss_function": "@loss",
                "optimizer": "@optimizer",
                "inferer": "@train#inferer",
                "train_handlers": "@train#handlers",
                "amp": False,
            },
        },
        "num_classes": num_classes,
        "initialize": ["$monai.utils.set_determinism(seed=0)", "@load_pretrained"],
        "run": ["$@train#trainer.run()"],
    }


def evaluate_config(intensity: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """``configs/evaluate.json``, layered over ``inference.json``: mean Dice against ``dataset_dir/labelsTs``.

    Run as ``python -m monai.bundle run --config_file "['configs/inference.json','configs/evaluate.json']"
    --dataset_dir DIR`` with ``DIR/imagesTs`` and ``DIR/labelsTs`` holding images and labels in the same sorted order.
    Nothing is written; the mean foreground Dice is logged (``StatsHandler``).
    """
    keys = ["image", "label"]
    return {
        "images": "$sorted(glob.glob(os.path.join(@dataset_dir, 'imagesTs', '*.nii*')))",
        "labels": "$sorted(glob.glob(os.path.join(@dataset_dir, 'labelsTs', '*.nii*')))",
        "datalist": "@images",
        "dataset#data": "$[{'image': i, 'label': l} for i, l in zip(@images, @labels)]",
        "num_classes": num_classes,
        "preprocessing": {
            "_target_": "Compose",
            "transforms": _load_transforms(intensity_transforms(intensity), keys)
            + [{"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"}],
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "AsDiscreted", "keys": keys, "argmax": [True, False],
                 "to_onehot": ["@num_classes", "@num_classes"]},
            ],
        },
        "metrics": {
            "val_mean_dice": {"_target_": "MeanDice", "include_background": False,
                              "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}
        },
        "evaluator#key_val_metric": "@metrics",
    }
