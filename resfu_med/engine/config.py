"""Training run configuration: paper defaults, per-dataset presets, config files and flag overrides.

A run's configuration is one nested, JSON-able dict. It is resolved in this order, later layers winning:
:data:`DEFAULTS` (the TransUNet/ReSFU paper protocol) → the dataset's preset (:data:`PRESETS`) → a YAML/JSON config
file (``--config``) → command-line flags. Every key a file or flag sets must exist in :data:`DEFAULTS` and have the
right type; otherwise :class:`~resfu_med.errors.InputError` names the key. The resolved config is saved next to the
run (``config.json``) and inside every checkpoint, so a run can be resumed, evaluated and reproduced from it alone.

Example config file (YAML; JSON with the same nesting works too)::

    model:
      name: unet
      upsampler: resfu
    train:
      epochs: 40
      batch_size: 16
      lr: 0.02
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from resfu_med.errors import InputError

__all__ = [
    "DEFAULTS",
    "PRESETS",
    "CHOICES",
    "registry_choices",
    "default_config",
    "load_config_file",
    "merge_config",
    "resolve_config",
    "RECIPES",
    "RECIPE_PURPOSES",
    "recipe_summary",
    "AMP_MODES",
    "flatten",
]


#: The paper's protocol (TransUNet R50-ViT-B/16 on Synapse; docs/datasets.md).
DEFAULTS: dict[str, Any] = {
    "seed": 1234,
    "deterministic": False,
    "device": "auto",  # auto | cpu | cuda | cuda:N
    "amp": "none",  # none | bf16 | fp16
    "threads": 0,  # torch intra-op CPU threads; 0 = torch's default
    "model": {
        "name": "transunet",
        "upsampler": "resfu",
        "pretrained": None,  # path to R50+ViT-B_16.npz (TransUNet only)
        "kwargs": {},  # extra constructor arguments of the network, e.g. {"vit_depth": 4}
    },
    "data": {
        "dataset": None,
        "root": None,
        "img_size": 224,  # null: the dataset's own slice size, at most 128 (rounded up to a multiple of 16)
        "num_workers": 2,
        "cache_rate": 0.0,  # fraction of loaded training slices kept in memory (MONAI CacheDataset)
        "val_split": "val",  # split used for best.pt selection; falls back to none when the dataset has no such split
        "val_cases": 0,  # 0 = every case of the validation split
        # foreground class names 1..K-1 replacing the dataset's (a copy labelled in another order); None = dataset's
        "class_names": None,
        # 3D models (unet3d): training patch (Z, Y, X) in voxels, also the inference window; patches per volume draw
        "patch_size": [96, 96, 96],
        "patches_per_volume": 2,
    },
    "train": {
        "epochs": 150,
        "max_iters": None,  # stop after this many iterations (the schedule still spans all epochs)
        "iterations": None,  # a budget in iterations: epochs become ceil(iterations / iterations per epoch)
        "batch_size": 24,  # global batch; split across DDP processes
        "optimizer": "sgd",  # sgd (the paper) | adamw (converges faster on short schedules; momentum unused)
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "poly_power": 0.9,
        "schedule": "poly",  # poly (TransUNet) | cosine | constant, per iteration, after warmup_iters
        "warmup_iters": 0,  # linear lr warm-up from base/warmup_iters to base over these iterations
        # share of every batch drawn from slices holding a foreground class (class uniform among those present;
        # 3D: class-balanced patch centres); null = the dataset's default (uniform slices, 3D half foreground patches)
        "fg_oversample": None,
        "ce_weight": 0.5,
        "dice_weight": 0.5,
        "eval": True,  # validate (volume-wise Dice) to pick best.pt
        "val_every": 1,  # epochs between validations
        "checkpoint_every": 0,  # iterations between mid-epoch last.pt saves (0: end of each epoch only)
        "log_every": 10,  # iterations between TensorBoard scalar writes
        "num_images": 3,  # image/prediction overlays written to TensorBoard per validation
    },
}

#: Allowed types of keys whose default is ``None`` or that accept several types.
_TYPES: dict[str, tuple[type, ...]] = {
    "model.pretrained": (str, type(None)),
    "data.dataset": (str, type(None)),
    "data.root": (str, type(None)),
    "data.img_size": (int, type(None)),
    "train.max_iters": (int, type(None)),
    "train.iterations": (int, type(None)),
    "train.fg_oversample": (float, int, type(None)),
    "data.class_names": (list, type(None)),
    "model.kwargs": (dict,),
}

#: ``amp`` modes and what they are (``--help`` lists them).
AMP_MODES: dict[str, str] = {
    "none": "float32 throughout",
    "bf16": "bfloat16 autocast (CPU and recent GPUs; no loss scaling needed)",
    "fp16": "float16 autocast with gradient scaling (GPUs)",
}

#: Keys restricted to a fixed set of values.
CHOICES: dict[str, tuple[str, ...]] = {
    "amp": tuple(AMP_MODES),
    "train.optimizer": ("sgd", "adamw"),
    "train.schedule": ("poly", "cosine", "constant"),
}


def registry_choices(key: str) -> tuple[str, ...] | None:
    """The names a registry accepts for ``key``: ``model.name`` (the model registry), ``model.upsampler`` (the
    upsampler registry), ``data.dataset`` (the data registry); ``None`` for other keys.

    Imported on use: the registries need torch and MONAI, ``resfu-med --help`` does not.
    """
    if key == "model.name":
        from resfu_med.networks.model_registry import model_names

        return model_names()
    if key == "model.upsampler":
        from resfu_med.networks.upsamplers import upsampler_names

        return upsampler_names()
    if key == "data.dataset":
        from resfu_med.data.registry import DATASET_NAMES

        return tuple(DATASET_NAMES)
    return None

_POSITIVE = {"train.iterations", "data.img_size", "data.patches_per_volume", "train.epochs", "train.batch_size", "train.lr", "train.val_every", "train.log_every"}
_NON_NEGATIVE = {
    "threads",
    "data.num_workers", "data.val_cases", "data.cache_rate", "train.momentum", "train.weight_decay", "train.poly_power",
    "train.ce_weight", "train.dice_weight", "train.checkpoint_every", "train.num_images", "train.max_iters",
    "train.warmup_iters", "train.fg_oversample",
}
_AT_MOST_ONE = {"train.fg_oversample"}

#: Per-dataset presets applied on top of the defaults (a dataset without one uses the defaults: the Synapse protocol,
#: which TransUNet's follow-ups also apply to ACDC; the paper gives no other schedule).
PRESETS: dict[str, dict[str, Any]] = {
    # MSD: nnU-Net's foreground oversampling (a third of every batch from slices holding a class)
    "msd": {"train": {"fg_oversample": 0.33}},
    # The demo: a small ReSFU U-Net and a short schedule so train + evaluate finish in minutes on 2 CPU cores.
    "demo": {
        "model": {
            "name": "unet",
            "upsampler": "resfu",
            # A slim ReSFU (embedding 8, PCDC 16, compressor 16 channels): the default sizes are made for 256-channel
            # decoder features and would cost 4x the whole U-Net on a CPU.
            "kwargs": {
                "features": [16, 16, 32, 64, 128, 16],
                "upsampler_kwargs": {"embed_dim": 8, "pcdc_channels": 16, "compressor_channels": 16},
            },
        },
        # One thread: on an idle 2-core machine it costs little, on a shared one 2 OpenMP threads ran 10x slower.
        "threads": 1,
        # patch_size: for --model unet3d; the demo volumes are 40 x 128 x 128 (Z, Y, X)
        "data": {"img_size": 96, "num_workers": 0, "cache_rate": 1.0, "patch_size": [32, 96, 96]},
        "train": {
            # Measured on the demo test cases (volume Dice, 96², SGD 0.05): batch 8 reached mean Dice 0.703 after 15
            # epochs (600 iterations); batch 4, same compute, 0.774 (docs/training.md).
            "epochs": 15,
            "batch_size": 4,
            "lr": 0.05,
            "eval": False,  # the demo data have train and test splits only; best.pt is the final model
            "checkpoint_every": 100,
            "log_every": 10,
        },
    },
}


#: Training recipes applied on top of any dataset's preset (``--preset NAME``).
RECIPES: dict[str, dict[str, Any]] = {
    # quick: check a dataset end to end on a CPU (about 15 min on 2 cores) before booking a GPU; measured on the
    # real T1 benchmark (docs/real_benchmark.md).
    "quick": {
        "model": {"name": "unet", "upsampler": "resfu", "kwargs": copy.deepcopy(PRESETS["demo"]["model"]["kwargs"])},
        "threads": 1,
        # the slices' own size up to 128 (Synapse's 512² slices train at 128²): small structures keep their pixels
        "data": {"img_size": None, "num_workers": 0, "cache_rate": 1.0},
        "train": {
            # 300 iterations (whole epochs covering them): on the real T1 benchmark (64² slices) warm-up + constant lr
            # reached 75.7 % mean Dice in 336 iterations, cosine 60.4 %, warm-up + poly 66.9 % (docs/real_benchmark.md)
            "iterations": 300,
            "batch_size": 4,
            "optimizer": "adamw",
            "lr": 1e-3,
            "weight_decay": 1e-4,
            "schedule": "constant",
            "warmup_iters": 50,
            "fg_oversample": 0.5,
            "eval": False,
            "checkpoint_every": 100,
        },
    },
}


#: What each recipe is for (``--help`` adds the recipe's own values, so the help cannot disagree with them).
RECIPE_PURPOSES: dict[str, str] = {
    "quick": "check a dataset end to end on a CPU before booking a GPU",
}


def recipe_summary(name: str) -> str:
    """One line on recipe ``name``: its purpose, then the values it sets, read from :data:`RECIPES` itself."""
    recipe = RECIPES[name]
    model, train = recipe.get("model", {}), recipe.get("train", {})
    parts = [f"{model['upsampler']} " if "upsampler" in model else "", model.get("name", ""),
             f", {train['optimizer']}" if "optimizer" in train else "",
             f" lr {train['lr']:g}" if "lr" in train else "",
             f", {train['iterations']:,} iterations" if train.get("iterations") else "",
             f", {train['epochs']} epochs" if "epochs" in train else "",
             f", batch {train['batch_size']}" if "batch_size" in train else "",
             f", foreground share {train['fg_oversample']:g}" if train.get("fg_oversample") else ""]
    return f"{RECIPE_PURPOSES.get(name, name)}: " + "".join(parts).strip(", ")


def default_config() -> dict[str, Any]:
    """A deep copy of :data:`DEFAULTS`."""
    return copy.deepcopy(DEFAULTS)


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested config to dotted keys (``model.kwargs`` stays one value)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name != "model.kwargs":
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = value
    return out


def _check_value(key: str, value: Any, default: Any, source: str) -> Any:
    allowed = _TYPES.get(key)
    if allowed is None:
        allowed = (float, int) if isinstance(default, float) else (type(default),)
    # bool is an int subclass: reject True for an int key and 1 for a bool key.
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if not ok:
        names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        raise InputError(f"{source}: {key} must be {names}, got {type(value).__name__} {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and float in allowed:
        value = float(value)
    choices = CHOICES.get(key) or registry_choices(key)
    if choices is not None and value is not None and value not in choices:
        registry = {"model.name": "model", "model.upsampler": "upsampler", "data.dataset": "dataset"}.get(key)
        what = f"unknown {registry} {value!r}: " if registry else ""
        raise InputError(f"{source}: {what}{key} must be one of {', '.join(choices)}, got {value!r}")
    if key == "device" and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise InputError(f"{source}: device must be auto, cpu, cuda or cuda:N, got {value!r}")
    if key in _POSITIVE and value is not None and value <= 0:
        raise InputError(f"{source}: {key} must be > 0, got {value!r}")
    if key in _NON_NEGATIVE and value is not None and value < 0:
        raise InputError(f"{source}: {key} must be >= 0, got {value!r}")
    if key in _AT_MOST_ONE and value is not None and value > 1:
        raise InputError(f"{source}: {key} must be <= 1, got {value!r}")
    return value


def merge_config(base: dict[str, Any], update: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Return ``base`` updated by the nested ``update``, validating every key and type against :data:`DEFAULTS`.

    Args:
        base: a full config (not modified).
        update: a nested partial config, e.g. ``{"train": {"lr": 0.02}}``.
        source: where ``update`` came from, for error messages (a file name, ``"flags"``).

    Returns:
        A new config dict.

    Raises:
        InputError: an unknown key, a wrong type or a value out of range; the message names the key and the source.
    """
    out = copy.deepcopy(base)
    schema = flatten(DEFAULTS)
    if not isinstance(update, dict):
        raise InputError(f"{source}: the top level must be a mapping of keys, got {type(update).__name__}")

    def walk(node: dict[str, Any], target: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if name == "model.kwargs":
                # Network arguments merge key by key (they are checked by the network's constructor).
                target[key] = {**target.get(key, {}), **copy.deepcopy(_check_value(name, value, {}, source))}
            elif name in schema:
                target[key] = copy.deepcopy(_check_value(name, value, schema[name], source))
            elif any(k.startswith(f"{name}.") for k in schema):
                if not isinstance(value, dict):
                    raise InputError(f"{source}: {name} must be a mapping, got {type(value).__name__} {value!r}")
                walk(value, target[key], f"{name}.")
            else:
                valid = sorted({k.split(".")[len(prefix.split(".")) - 1] for k in schema if k.startswith(prefix)})
                raise InputError(f"{source}: unknown key {name!r} (valid here: {', '.join(valid)})")

    walk(update, out, "")
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or JSON config file into a nested dict (not yet validated).

    Raises:
        InputError: the file is missing, unreadable or not valid YAML/JSON; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"config file {path} is not readable: {err}") from err
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # json.JSONDecodeError, yaml.YAMLError
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"config file {path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {first}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"config file {path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _family(model: str) -> object:
    """Models taking the same constructor arguments (``unet`` and ``unet3d`` are both BasicUNet) share a family."""
    from resfu_med.networks.model_registry import get_model_spec

    return get_model_spec(model).constructor


def resolve_config(
    dataset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    preset: str | None = None,
) -> dict[str, Any]:
    """Resolve defaults → dataset preset → recipe (``preset``) → config file → overrides (flags) into a validated
    user config.

    The dataset may come from ``dataset``, the file (``data.dataset``) or ``overrides``; the preset is chosen after
    all three are read so a file can name its dataset.

    Args:
        dataset: dataset name (``synapse``, ``acdc``, ``msd``, ``demo``) or ``None``.
        config_file: optional YAML/JSON file.
        overrides: nested dict from command-line flags (highest priority).
        preset: a training recipe of :data:`RECIPES` (``"quick"``) or ``None``.

    Returns:
        The validated config (model kwargs and data facts are completed later by the trainer).

    Raises:
        InputError: unknown dataset, unknown key, wrong type; the message names it.
    """
    file_cfg = load_config_file(config_file) if config_file is not None else {}
    overrides = overrides or {}
    # Validate the file and flags once on their own so errors name their source.
    merge_config(DEFAULTS, file_cfg, source=f"config file {config_file}")
    merge_config(DEFAULTS, overrides, source="flags")
    name = dataset or overrides.get("data", {}).get("dataset") or file_cfg.get("data", {}).get("dataset")
    if name is None:
        raise InputError(f"no dataset given: pass --dataset ({', '.join(registry_choices('data.dataset'))})")
    _check_value("data.dataset", name, None, "--dataset")
    cfg = merge_config(default_config(), PRESETS.get(name, {}), source=f"preset {name}")
    if preset is not None:  # the quick recipe's data.img_size null is resolved by complete_config
        if preset not in RECIPES:
            raise InputError(f"unknown preset {preset!r}: choose one of {', '.join(RECIPES)}")
        cfg = merge_config(cfg, RECIPES[preset], source=f"preset {preset}")
    preset_model, preset_upsampler = cfg["model"]["name"], cfg["model"]["upsampler"]  # after the recipe
    cfg = merge_config(cfg, file_cfg, source=f"config file {config_file}")
    cfg = merge_config(cfg, overrides, source="flags")
    user_kwargs = {**file_cfg.get("model", {}).get("kwargs", {}), **overrides.get("model", {}).get("kwargs", {})}
    if _family(cfg["model"]["name"]) != _family(preset_model):
        # The preset's network arguments belong to its own model (unet and unet3d share BasicUNet's); keep only those
        # the user gave.
        cfg["model"]["kwargs"] = user_kwargs
    elif cfg["model"]["upsampler"] != preset_upsampler and "upsampler_kwargs" not in user_kwargs:
        # Likewise the preset's upsampler options (the demo's slim ReSFU widths) mean nothing to another upsampler.
        cfg["model"]["kwargs"].pop("upsampler_kwargs", None)
    cfg["data"]["dataset"] = name
    return cfg
