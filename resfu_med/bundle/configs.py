"""The MONAI bundle configs (``inference.json``, ``train.json``, ``evaluate.json``) of a resfu-med checkpoint.

They are plain MONAI: ``LoadImaged``/``EnsureChannelFirstd``, the checkpoint's intensity transform written as MONAI
transforms, ``SliceInferer`` (2D models, slice by slice) or ``SlidingWindowInferer`` (3D models), ``AsDiscreted`` and
``SaveImaged`` — the only resfu-med name in them is ``network_def``'s ``_target_``.

Axis convention. ``resfu-med`` works on arrays in ``(Z, Y, X)`` order (``resfu_med.data.read_image``), so a 2D model
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
    if dims == 3:
        out["spatial_dims"] = 3  # as resfu_med.engine.model_factory builds unet3d
    elif dims is not None:
        out.setdefault("spatial_dims", dims)
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
    """``SliceInferer`` over the Z axis of a ``(1, Z, Y, X)`` volume for 2D models, ``SlidingWindowInferer`` for 3D.

    Slices (2D) are cut in Z order and ``sw_batch_size`` of them go through the network per call, the batches
    ``resfu-med infer --batch-size`` forms, so the two give bit-identical network outputs.
    """
    common = {"roi_size": list(roi_size), "sw_batch_size": sw_batch_size, "overlap": overlap, "mode": mode,
              "padding_mode": "constant", "cval": 0.0, "progress": False}
    if spatial_dims == 2:
        return {"_target_": "SliceInferer", "spatial_dim": 0, **common}
    return {"_target_": "SlidingWindowInferer", **common}


def _load_transforms(intensity: list[dict], keys: list[str]) -> list[dict]:
    image = [{"_target_": "LoadImaged", "keys": keys, "image_only": True},
             {"_target_": "EnsureChannelFirstd", "keys": keys}]
    return image + intensity + [{"_target_": "Transposed", "keys": keys, "indices": _TO_ZYX}]


def _zoom_in(size: int) -> str:
    # Every (Y, X) slice to size x size with scipy's cubic spline, as resfu-med trains and infers (TransUNet protocol).
    # The slice is left as is when it already has that size (a cubic "zoom" by 1 is not exactly the identity).
    return (
        "$lambda x: monai.data.MetaTensor(torch.from_numpy(numpy.stack(["
        f"s if s.shape == ({size}, {size}) else ndi_zoom(s, [{size} / s.shape[0], {size} / s.shape[1]], order=3) "
        "for s in numpy.ascontiguousarray(x.as_tensor()[0].numpy(), dtype=numpy.float32)])[None]), meta=x.meta)"
    )


# Labels back to each slice's own (Y, X) size, nearest neighbour; the size is the loaded image's (X, Y, Z) shape.
_ZOOM_OUT = (
    "$lambda x: monai.data.MetaTensor(torch.from_numpy(numpy.stack(["
    "s if s.shape == (int(x.meta['spatial_shape'][1]), int(x.meta['spatial_shape'][0])) else "
    "ndi_zoom(s, [int(x.meta['spatial_shape'][1]) / s.shape[0], int(x.meta['spatial_shape'][0]) / s.shape[1]], order=0) "
    "for s in numpy.ascontiguousarray(x.as_tensor()[0].numpy())])[None]), meta=x.meta)"
)


def _preprocessing(intensity: dict, keys: list[str], zoom_to: int | None) -> dict:
    transforms = _load_transforms(intensity_transforms(intensity), keys)
    transforms.append({"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"})
    if zoom_to is not None:
        transforms.append({"_target_": "Lambdad", "keys": "image", "func": _zoom_in(zoom_to)})
    return {"_target_": "Compose", "transforms": transforms}


def _label_transforms(zoomed: bool) -> list[dict]:
    """``pred`` probabilities → labels in the loaded volume's ``(1, Z, Y, X)`` grid."""
    out = [{"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]
    if zoomed:
        out.append({"_target_": "Lambdad", "keys": "pred", "func": _ZOOM_OUT})
    return out


def label_value_transforms(key: str, label_values: list[int] | None, to_values: bool) -> list[dict[str, Any]]:
    """MONAI ``MapLabelValued`` between class indices and the dataset's own label values (:mod:`resfu_med.data.labels`).

    ``to_values``: class → value (predictions written); otherwise value → class (labels read for training/scoring).
    Nothing when the values are the class indices. The values are validated integers, never expressions.
    """
    if label_values is None or list(label_values) == list(range(len(label_values))):
        return []
    values, classes = [int(v) for v in label_values], list(range(len(label_values)))
    orig, target = (classes, values) if to_values else (values, classes)
    dtype = "uint8" if max(target) <= 255 else "uint16"
    return [{"_target_": "MapLabelValued", "keys": key, "orig_labels": orig, "target_labels": target, "dtype": dtype}]


def inference_config(
    net_def: dict[str, Any],
    intensity: dict[str, Any],
    spatial_dims: int,
    roi_size: list[int],
    overlap: float = 0.25,
    mode: str = "gaussian",
    sw_batch_size: int = 8,
    img_size: int | None = None,
    label_values: list[int] | None = None,
) -> dict[str, Any]:
    """``configs/inference.json``: segment every ``*.nii``/``*.nii.gz`` of ``dataset_dir`` into ``output_dir``.

    The steps are those of ``resfu-med infer`` with its defaults, so the labels are identical: 2D models see every
    ``(Y, X)`` slice zoomed to ``img_size`` (cubic), windows of ``roi_size`` blended with ``mode``, softmax, argmax,
    labels zoomed back (nearest); 3D models run sliding windows on the volume's own grid. Outputs are
    ``<name>_seg.nii.gz`` (uint8 labels with the input's affine and shape). Override ``dataset_dir``,
    ``output_dir``, ``bundle_root`` and ``device`` on the ``monai.bundle run`` command line.

    Args:
        net_def: the ``network_def`` item.
        intensity: the checkpoint's intensity spec.
        spatial_dims: 2 (slice-wise) or 3.
        roi_size: sliding-window size.
        overlap: window overlap.
        mode: window blending.
        sw_batch_size: slices (2D) or windows (3D) per network call.
        img_size: 2D only: the size slices are zoomed to (the training size); ``None`` runs on the native grid
            (``resfu-med infer --no-resample``).
        label_values: the value written for each class (the dataset's own labels); ``None``: the class indices.
    """
    zoom = img_size if spatial_dims == 2 else None
    out_dtype = "$numpy.uint16" if label_values and max(label_values) > 255 else "$numpy.uint8"
    return {
        "imports": ["$import glob", "$import os", "$from scipy.ndimage import zoom as ndi_zoom"],
        "bundle_root": ".",
        "model_dir": "$@bundle_root + '/models'",
        "dataset_dir": "$@bundle_root + '/data'",
        "output_dir": "$@bundle_root + '/eval'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": net_def,
        "network": "$@network_def.to(@device)",
        # resfu-med blends softmax probabilities (not logits) across windows: the evaluator runs network + softmax.
        "predictor": "$torch.nn.Sequential(@network, torch.nn.Softmax(dim=1)).eval()",
        "datalist": "$sorted(glob.glob(os.path.join(@dataset_dir, '*.nii.gz')) + glob.glob(os.path.join(@dataset_dir, '*.nii')))",
        "preprocessing": _preprocessing(intensity, ["image"], zoom),
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": inferer_def(spatial_dims, roi_size, overlap, mode, sw_batch_size),
        "postprocessing": {
            "_target_": "Compose",
            "transforms": _label_transforms(zoom is not None) + label_value_transforms("pred", label_values, True) + [
                {"_target_": "Transposed", "keys": "pred", "indices": _TO_ZYX},
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
                 "output_dtype": out_dtype, "resample": False, "separate_folder": False,
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
            "network": "@predictor",
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

    2D models train on random whole ``(Y, X)`` slices resized to ``roi_size`` (bilinear image, nearest label),
    3D models on random 3D patches; DiceCE loss and SGD with momentum 0.9 as the TransUNet protocol; the result is
    written to ``<output_dir>/model_finetuned.pt``.
    """
    keys = ["image", "label"]
    if spatial_dims == 2:
        crop = [
            {"_target_": "RandSpatialCropd", "keys": keys, "roi_size": [1, -1, -1], "random_size": False},
            {"_target_": "SqueezeDimd", "keys": keys, "dim": 1},
            {"_target_": "Resized", "keys": keys, "spatial_size": list(roi_size), "mode": ["bilinear", "nearest"]},
        ]
    else:
        crop = [
            {"_target_": "SpatialPadd", "keys": keys, "spatial_size": list(roi_size)},
            {"_target_": "RandSpatialCropd", "keys": keys, "roi_size": list(roi_size), "random_size": False},
        ]
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


def evaluate_config(inference: dict[str, Any], intensity: dict[str, Any], num_classes: int, spatial_dims: int,
                    img_size: int | None = None, label_values: list[int] | None = None) -> dict[str, Any]:
    """``configs/evaluate.json``: ``inference.json``'s predictions scored by mean foreground Dice, nothing written.

    A complete config (not an overlay): ``python -m monai.bundle run --config_file configs/evaluate.json
    --dataset_dir DIR`` with ``DIR/imagesTs`` and ``DIR/labelsTs`` holding images and labels in the same sorted order.
    """
    zoom = img_size if spatial_dims == 2 else None
    keys = ["image", "label"]
    cfg = copy.deepcopy(inference)
    cfg.update({
        "images": "$sorted(glob.glob(os.path.join(@dataset_dir, 'imagesTs', '*.nii*')))",
        "labels": "$sorted(glob.glob(os.path.join(@dataset_dir, 'labelsTs', '*.nii*')))",
        "datalist": "@images",
        "num_classes": num_classes,
        "preprocessing": _preprocessing(intensity, keys, zoom),
        "postprocessing": {
            "_target_": "Compose",
            "transforms": _label_transforms(zoom is not None) + label_value_transforms("label", label_values, False) + [
                {"_target_": "AsDiscreted", "keys": ["pred", "label"], "to_onehot": ["@num_classes", "@num_classes"]},
            ],
        },
        "metrics": {
            "val_mean_dice": {"_target_": "MeanDice", "include_background": False,
                              "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}
        },
    })
    cfg["dataset"]["data"] = "$[{'image': i, 'label': l} for i, l in zip(@images, @labels)]"
    cfg["evaluator"]["key_val_metric"] = "@metrics"
    return cfg
