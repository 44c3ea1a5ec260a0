"""The MONAI bundle configs (``inference.json``, ``train.json``, ``evaluate.json``) of a resfu-med checkpoint.

They are MONAI components named by ``_target_`` with plain arguments: ``LoadImaged``/``EnsureChannelFirstd``, the
checkpoint's intensity transform as MONAI transforms, :class:`resfu_med.bundle.EngineInferer` (``resfu-med infer``'s
own window inference, :mod:`resfu_med.engine.inferer`, with the checkpoint's recorded settings: one implementation for
infer, evaluate and bundles) and ``SaveImaged``; the steps MONAI bundles usually write as ``$`` expressions (paths,
device, data lists, running the engine) are the small components of :mod:`resfu_med.bundle.components`. No value is an expression: a config that holds one is refused by
``verify-bundle`` (:func:`check_standard_config`).

Axis convention. ``resfu-med`` works on arrays in ``(Z, Y, X)`` order (``resfu_med.data.read_image``), so a 2D model
sees ``(Y, X)`` slices; MONAI's NIfTI reader yields ``(X, Y, Z)``. The configs transpose the loaded image to
``(1, Z, Y, X)`` before the network and the prediction back before saving; ``Transposed`` leaves the affine in the
metadata untouched, so ``SaveImaged`` writes the labels with the input's affine, shape and orientation.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from resfu_med.errors import CheckpointError, InputError
from resfu_med.networks.model_registry import MODELS, get_model_spec
from resfu_med.safety import check_plain_data

__all__ = [
    "network_def",
    "intensity_transforms",
    "inferer_def",
    "inference_config",
    "train_config",
    "evaluate_config",
    "inferer_problem",
    "check_standard_config",
]

# (Z, Y, X) <-> nibabel (X, Y, Z), channel first; the permutation is its own inverse.
_TO_ZYX = [0, 3, 2, 1]


def network_def(model_cfg: dict[str, Any], source: str = "checkpoint") -> dict[str, Any]:
    """The ``network_def`` config item of a checkpoint's ``config["model"]``.

    Args:
        model_cfg: ``{"name": <a registered model>, "kwargs": {...}}``.
        source: file name cited in errors.

    Returns:
        ``{"_target_": <the model registry's target>, **kwargs}`` (with the entry's fixed arguments, e.g. the U-Nets'
        ``spatial_dims``).

    Raises:
        CheckpointError: unknown model name or malformed kwargs.
    """
    name = model_cfg.get("name") if isinstance(model_cfg, dict) else None
    kwargs = model_cfg.get("kwargs", {}) if isinstance(model_cfg, dict) else None
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{source}: config.model.kwargs must be a dict, got {type(kwargs).__name__}")
    check_plain_data(kwargs, source, "model.kwargs", error=CheckpointError)  # nothing MONAI would evaluate
    try:
        spec = get_model_spec(name)
        return {"_target_": spec.target, **copy.deepcopy(spec.full_kwargs(kwargs))}
    except InputError as err:
        raise CheckpointError(f"{source}: config.model: {err}") from None


def intensity_transforms(spec: dict[str, Any], key: str = "image", source: str = "checkpoint") -> list[dict[str, Any]]:
    """The data layer's intensity spec as MONAI dictionary transforms.

    ``{"kind": "ct", "a_min", "a_max"}`` → clip to the window and scale to [0, 1] (``ScaleIntensityRanged``);
    ``{"kind": "mri", "mode": "minmax"}`` → per-volume min-max to [0, 1] (``ScaleIntensityd``);
    ``{"kind": "mri", "mode": "zscore"}`` → per-volume zero mean, unit variance (``NormalizeIntensityd``);
    ``{"kind": "mri", "mode": "robust", "percentiles": [lo, hi]}`` → z-score over the non-zero voxels clipped to their
    percentiles (``resfu_med.data.RobustZScored``, the data layer's own transform: MONAI has no masked percentile).

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
    if kind == "mri" and spec.get("mode") == "robust":
        try:
            low, high = (float(v) for v in spec.get("percentiles", (0.5, 99.5)))
        except (TypeError, ValueError):
            raise CheckpointError(f"{source}: config.data.intensity {spec!r} needs two numeric percentiles") from None
        return [{"_target_": "resfu_med.data.RobustZScored", "keys": key, "percentiles": [low, high]}]
    raise CheckpointError(f"{source}: config.data.intensity {spec!r} is not one of ct / mri minmax / mri zscore / "
                          "mri robust")


def inferer_problem(roi_size: Any, overlap: Any, mode: Any, sw_batch_size: Any) -> tuple[str, str] | None:
    """``(option, problem)`` for sliding-window settings MONAI's inferers would reject at run time, else ``None``.

    ``roi_size`` positive integers, ``overlap`` in ``[0, 1)``, ``mode`` ``gaussian``/``constant``, ``sw_batch_size`` a
    positive integer.
    """
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(roi_size, (list, tuple)) or not roi_size or not all(is_int(r) and r > 0 for r in roi_size):
        return "roi_size", f"{roi_size!r} must be positive integers"
    if not isinstance(overlap, (int, float)) or isinstance(overlap, bool) or not 0 <= overlap < 1:
        return "overlap", f"{overlap!r} must be >= 0 and < 1"
    if mode not in ("gaussian", "constant"):
        return "mode", f"{mode!r} must be gaussian or constant"
    if not is_int(sw_batch_size) or sw_batch_size < 1:
        return "sw_batch_size", f"{sw_batch_size!r} must be an integer >= 1"
    return None


def inferer_def(recorded: dict[str, Any], roi_size: list[int], overlap: float, sw_batch_size: int,
                resample: bool = True) -> dict[str, Any]:
    """The ``inferer`` item: :class:`resfu_med.bundle.EngineInferer` with the checkpoint's recorded settings.

    Args:
        recorded: the checkpoint's ``model``/``data``/``plan`` sections that decide prediction
            (:func:`resfu_med.bundle.inferer.recorded_settings`).
        roi_size: window size (2D: on the zoomed slice; 3D: on the volume's grid).
        overlap: window overlap in ``[0, 1)``.
        sw_batch_size: slices (2D) or windows (3D) per network call.
        resample: 2D models: zoom slices to the training size and back (``False``: ``infer --no-resample``).

    Raises:
        InputError: settings :func:`inferer_problem` rejects (named as the ``export-bundle`` option).
    """
    problem = inferer_problem(list(roi_size), overlap, "gaussian", sw_batch_size)
    if problem is not None:
        raise InputError(f"--{problem[0].replace('_', '-')} {problem[1]}")
    return {"_target_": "resfu_med.bundle.EngineInferer", **copy.deepcopy(recorded), "roi_size": list(roi_size),
            "overlap": overlap, "sw_batch_size": sw_batch_size, "resample": bool(resample)}


def _load_transforms(intensity: list[dict], keys: list[str]) -> list[dict]:
    image = [{"_target_": "LoadImaged", "keys": keys, "image_only": True},
             {"_target_": "EnsureChannelFirstd", "keys": keys}]
    return image + intensity + [{"_target_": "Transposed", "keys": keys, "indices": _TO_ZYX}]


def _preprocessing(intensity: dict, keys: list[str]) -> dict:
    transforms = _load_transforms(intensity_transforms(intensity), keys)
    transforms.append({"_target_": "EnsureTyped", "keys": "image", "dtype": "float32"})
    return {"_target_": "Compose", "transforms": transforms}


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


def _path(name: str, root: str = "@bundle_root") -> dict[str, Any]:
    return {"_target_": "resfu_med.bundle.components.bundle_path", "root": root, "name": name}


def _header(net_def: dict[str, Any], output: str) -> dict[str, Any]:
    """The items every config starts with: the bundle's folders, the device, ``network_def``, ``network``."""
    return {
        "bundle_root": ".",
        "model_dir": _path("models"),
        "dataset_dir": _path("data"),
        "output_dir": _path(output),
        "device": {"_target_": "resfu_med.bundle.components.default_device"},
        "network_def": net_def,
        "network": {"_target_": "resfu_med.bundle.components.on_device", "module": "@network_def", "device": "@device"},
    }


def inference_config(
    net_def: dict[str, Any],
    intensity: dict[str, Any],
    recorded: dict[str, Any],
    roi_size: list[int],
    overlap: float = 0.25,
    sw_batch_size: int = 8,
    resample: bool = True,
    label_values: list[int] | None = None,
) -> dict[str, Any]:
    """``configs/inference.json``: segment every ``*.nii``/``*.nii.gz`` of ``dataset_dir`` into ``output_dir``.

    MONAI loads the scan and normalises it (the checkpoint's intensity transform), :class:`resfu_med.bundle.EngineInferer`
    predicts it with ``resfu-med infer``'s own function and the checkpoint's recorded settings (2D: slices zoomed to
    the training size and back; 3D: sliding windows), so the labels are identical to ``resfu-med infer``'s. Outputs are
    ``<name>_seg.nii.gz`` (uint8 labels, or uint16 for label values above 255, with the input's affine and shape).
    Override ``dataset_dir``, ``output_dir``, ``bundle_root`` and ``device`` on the ``monai.bundle run`` command line.

    Args:
        net_def: the ``network_def`` item.
        intensity: the checkpoint's intensity spec.
        recorded: the checkpoint's sections that decide prediction (:func:`resfu_med.bundle.inferer.recorded_settings`).
        roi_size: window size.
        overlap: window overlap.
        sw_batch_size: slices (2D) or windows (3D) per network call.
        resample: 2D only: zoom slices to the training size (``False``: ``resfu-med infer --no-resample``).
        label_values: the value written for each class (the dataset's own labels); ``None``: the class indices.
    """
    out_dtype = "uint16" if label_values and max(label_values) > 255 else "uint8"
    return {
        **_header(net_def, "eval"),
        "datalist": {"_target_": "resfu_med.bundle.components.image_list", "folder": "@dataset_dir"},
        "preprocessing": _preprocessing(intensity, ["image"]),
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": inferer_def(recorded, roi_size, overlap, sw_batch_size, resample),
        "postprocessing": {
            "_target_": "Compose",
            "transforms": label_value_transforms("pred", label_values, True) + [
                {"_target_": "Transposed", "keys": "pred", "indices": _TO_ZYX},
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
                 "output_dtype": out_dtype, "resample": False, "separate_folder": False,
                 "squeeze_end_dims": True, "print_log": False},
            ],
        },
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": _path("model.pt", "@model_dir"), "load_dict": {"model": "@network"},
             "map_location": "@device", "strict": True},
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            # the engine's inferer applies the softmax and blends probabilities across windows: the raw network
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "initialize": [{"_target_": "resfu_med.bundle.components.seed_everything", "seed": 0}],
        "run": [{"_target_": "resfu_med.bundle.components.run_engine", "engine": "@evaluator"}],
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
        **_header(net_def, "train_out"),
        "load_pretrained": {"_target_": "resfu_med.bundle.components.load_weights", "network": "@network",
                            "path": _path("model.pt", "@model_dir"), "device": "@device"},
        "train_datalist": {"_target_": "resfu_med.bundle.components.paired_list", "folder": "@dataset_dir", "images": "imagesTr",
                           "labels": "labelsTr"},
        "max_epochs": max_epochs,
        "learning_rate": learning_rate,
        "loss": {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True},
        "optimizer": {"_target_": "torch.optim.SGD", "params": {"_target_": "resfu_med.bundle.components.parameters_of", "module": "@network"}, "lr": "@learning_rate",
                      "momentum": 0.9, "weight_decay": 1e-4},
        "train": {
            "preprocessing": {
                "_target_": "Compose",
                "transforms": _load_transforms(intensity_transforms(intensity), ["image", "label"])
                + crop + [{"_target_": "EnsureTyped", "keys": ["image", "label"], "dtype": "float32"}],
            },
            "dataset": {"_target_": "Dataset", "data": "@train_datalist", "transform": "@train#preprocessing"},
            "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": batch_size,
                           "shuffle": True, "num_workers": 0},
            "inferer": {"_target_": "SimpleInferer"},
            "handlers": [
                {"_target_": "CheckpointSaver", "save_dir": "@output_dir", "save_dict": {"model": "@network"},
                 "save_final": True, "final_filename": "model_finetuned.pt"},
                {"_target_": "StatsHandler", "tag_name": "train_loss", "output_transform": {"_target_": "monai.handlers.from_engine", "keys": ["loss"], "first": True}},
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
        # the weights are loaded when the workflow runs, not when it is initialised: monai.bundle.load(name,
        # bundle_dir=...) initialises train.json only for network_def (and loads model.pt itself) from any directory
        "initialize": [{"_target_": "resfu_med.bundle.components.seed_everything", "seed": 0}],
        "run": ["@load_pretrained", {"_target_": "resfu_med.bundle.components.run_engine", "engine": "@train#trainer"}],
    }


def evaluate_config(inference: dict[str, Any], intensity: dict[str, Any], num_classes: int,
                    label_values: list[int] | None = None) -> dict[str, Any]:
    """``configs/evaluate.json``: ``inference.json``'s predictions scored by mean foreground Dice, nothing written.

    A complete config (not an overlay): ``python -m monai.bundle run --config_file configs/evaluate.json
    --dataset_dir DIR`` with ``DIR/imagesTs`` and ``DIR/labelsTs`` holding images and labels in the same sorted order.
    """
    keys = ["image", "label"]
    cfg = copy.deepcopy(inference)
    cfg.update({
        "datalist": {"_target_": "resfu_med.bundle.components.paired_list", "folder": "@dataset_dir", "images": "imagesTs", "labels": "labelsTs"},
        "num_classes": num_classes,
        "preprocessing": _preprocessing(intensity, keys),
        "postprocessing": {
            "_target_": "Compose",
            "transforms": label_value_transforms("label", label_values, False) + [
                {"_target_": "AsDiscreted", "keys": ["pred", "label"], "to_onehot": ["@num_classes", "@num_classes"]},
            ],
        },
        "metrics": {
            "val_mean_dice": {"_target_": "MeanDice", "include_background": False,
                              "output_transform": {"_target_": "monai.handlers.from_engine", "keys": ["pred", "label"]}}
        },
    })
    cfg["evaluator"]["key_val_metric"] = "@metrics"
    return cfg


def _walk(value: Any, where: str = ""):
    """``(dotted path, key or None, value)`` for every dict entry and list item of a config."""
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            yield path, key, item
            yield from _walk(item, path)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            path = f"{where}.{i}" if where else str(i)
            yield path, None, item
            yield from _walk(item, path)


@lru_cache(maxsize=1)
def _standard_targets() -> frozenset[str]:
    """Every ``_target_`` the configs of this module can contain, but the network's (generated from the builders)."""
    targets: set[str] = set()
    intensities = [{"kind": "ct", "a_min": 0.0, "a_max": 1.0}, {"kind": "mri", "mode": "minmax"},
                   {"kind": "mri", "mode": "zscore"}, {"kind": "mri", "mode": "robust", "percentiles": [0.5, 99.5]}]
    net = {"_target_": "network"}
    recorded = {"model": {"name": "unet"}, "data": {}}
    for intensity in intensities:
        for dims in (2, 3):
            inference = inference_config(net, intensity, recorded, [16] * dims)
            valued = inference_config(net, intensity, recorded, [16] * dims, label_values=[0, 1, 300])
            for cfg in (inference, valued, train_config(net, intensity, dims, [16] * dims, 2),
                        evaluate_config(inference, intensity, 2), evaluate_config(valued, intensity, 3, [0, 1, 300])):
                targets.update(item for _, key, item in _walk(cfg) if key == "_target_")
    targets.discard("network")
    return frozenset(targets)


def _resolves(config: dict[str, Any], reference: str) -> bool:
    """Whether ``@a#b#0`` names an item of ``config`` (MONAI's reference syntax: ids joined by ``#``)."""
    node: Any = config
    for part in reference[1:].split("#"):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def check_standard_config(config: Any, source: str) -> None:
    """Check, without evaluating anything, that a bundle config holds only what resfu-med writes.

    No value is an expression (``$``) or a macro (``%``): resfu-med's bundles contain none. A ``@`` value must name an
    item of the same config (MONAI's reference syntax). Every ``_target_`` is one of the components the builders of
    this module write (MONAI's, or :mod:`resfu_med.bundle.components`) or a registered network; no other ``_..._``
    directive key appears; the inferer's settings are valid.

    Raises:
        InputError: the message names the file, the dotted path and the value.
    """
    targets = _standard_targets() | {spec.target for spec in MODELS.values()}
    if not isinstance(config, dict):
        raise InputError(f"{source}: expected a JSON object at the top level, got {type(config).__name__}")
    for path, key, item in _walk(config):
        if key is not None and (not isinstance(key, str) or key[:1] in "$@%"
                                or (key != "_target_" and len(key) > 1 and key[0] == "_" and key[-1] == "_")):
            raise InputError(f"{source}: config key {path} is not one resfu-med bundles contain; refusing")
        if key == "_target_":
            if item not in targets:
                raise InputError(f"{source}: config value {path} is {item!r}, not a component resfu-med bundles "
                                 "use; refusing")
        elif isinstance(item, str) and item[:1] in "$%":
            kind = "an expression" if item[0] == "$" else "a macro"
            raise InputError(f"{source}: config value {path} is {kind} ({item[:60]!r}); resfu-med bundles contain "
                             "none; refusing")
        elif isinstance(item, str) and item[:1] == "@" and not _resolves(config, item):
            raise InputError(f"{source}: config value {path} refers to {item[:60]!r}, which is not an item of the "
                             "config; refusing")
    inferer = config.get("inferer")
    if isinstance(inferer, dict):
        problem = inferer_problem(inferer.get("roi_size"), inferer.get("overlap"), "gaussian",
                                  inferer.get("sw_batch_size"))
        if problem is not None:
            raise InputError(f"{source}: config value inferer.{problem[0]} {problem[1]}")
