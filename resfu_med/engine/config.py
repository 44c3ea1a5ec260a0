"""Training run configuration: one typed schema, from which defaults, validation, flags and ``--help`` are made.

The schema is :class:`RunConfig`, frozen dataclasses (:class:`ModelConfig`, :class:`DataConfig`,
:class:`TrainConfig`) whose every field is declared once with :func:`option`: its type (the annotation), default,
help text, allowed values, bounds and command-line flag. Generated from it: :data:`DEFAULTS` (the paper protocol as a
nested dict), :data:`OPTIONS` (dotted key → :class:`Option`), the validation of every file and flag value, the
``train`` flags and their ``--help`` (``resfu_med.cli.train``), and the record saved as ``config.json`` and in every
checkpoint. Adding an option is adding one field.

A run's configuration is resolved from layers, later layers winning (:func:`resolve_layers`):

    defaults < dataset preset (:data:`PRESETS`) < recipe (``--preset``, :data:`RECIPES`) < config file (``--config``)
    < flags

An explicit setting always wins over the layers below it, including over a different key of the same budget: the
training length is given either as ``train.epochs`` or as ``train.iterations``, so ``--preset quick --epochs 16``
trains 16 epochs (the recipe's iteration budget yields). Two explicit settings that contradict each other (a flag and
the config file, or one file setting both) are an error. Every key a file or flag sets must exist and have the right
type and range; all bad keys are reported, one line each naming the file and the key, unknown keys with a
did-you-mean. The run prints and records which layer set each non-default value (:func:`describe_sources`).
Configs of earlier releases are brought up to date by :func:`migrate_config`.

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
import dataclasses
import difflib
import json
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from resfu_med.errors import InputError

__all__ = [
    "RunConfig",
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "Option",
    "OPTIONS",
    "option",
    "DEFAULTS",
    "PRESETS",
    "CHOICES",
    "registry_choices",
    "default_config",
    "merge_kwargs",
    "load_config_file",
    "merge_config",
    "resolve_config",
    "resolve_layers",
    "describe_sources",
    "migrate_config",
    "RECIPES",
    "RECIPE_PURPOSES",
    "recipe_summary",
    "AMP_MODES",
    "flatten",
]

#: ``amp`` modes and what they are (``--help`` lists them).
AMP_MODES: dict[str, str] = {
    "none": "float32 throughout",
    "bf16": "bfloat16 autocast (CPU and recent GPUs; no loss scaling needed)",
    "fp16": "float16 autocast with gradient scaling (GPUs)",
}
_OPTIMIZERS = {"sgd": "SGD with momentum (the paper)", "adamw": "AdamW (converges faster on short schedules)"}
_PIPELINES = {"zoom": "whole slices zoomed to img_size (the TransUNet paper protocol)",
              "plan": "native-resolution patches of the dataset plan (plans.json), Gaussian sliding-window inference"}
_SCHEDULES = {"poly": "polynomial decay (TransUNet)", "cosine": "cosine decay", "constant": "constant",
              "constant-decay": "constant, then linear decay to 0 over the last decay_fraction of the budget"}


def registry_choices(key: str) -> tuple[str, ...] | None:
    """The names a registry accepts for ``key``: ``model.name`` (the model registry), ``model.upsampler`` (the
    upsampler registry), ``data.dataset`` (the data registry); ``None`` for other keys.

    Imported on use: the registries need torch and MONAI, importing the config does not.
    """
    described = _registry_described(key)
    return tuple(described) if described is not None else None


def _registry_described(key: str) -> dict[str, str] | None:
    if key == "model.name":
        from resfu_med.networks.model_registry import MODELS

        return {n: s.description for n, s in MODELS.items()}
    if key == "model.upsampler":
        from resfu_med.networks.upsamplers import UPSAMPLERS

        return {n: e.description for n, e in UPSAMPLERS.items()}
    if key == "data.dataset":
        from resfu_med.data.registry import DATASETS

        return {n: e.description for n, e in DATASETS.items()}
    return None


@dataclasses.dataclass(frozen=True)
class Option:
    """One config field as the schema declares it (read from the dataclass field; see :func:`option`).

    Attributes:
        key: dotted key (``train.epochs``).
        default: the default value.
        types: the accepted Python types (``type(None)`` for null).
        help: one line for ``--help`` and the docs.
        flag: the ``train`` flag setting it (``--epochs``), or ``None``.
        described: ``f() -> {value: description}`` of the allowed values, or ``None`` for any value of the type.
        minimum, maximum: bounds (inclusive), or ``None``; ``positive``: > 0.
        excludes: the key giving the same thing another way (``train.epochs`` / ``train.iterations``): a layer
            setting one clears the other below it, and one explicit layer may not set both.
        runtime: may change when a run is resumed (where or how fast it runs, not its result).
        derived: filled in by resfu-med from the dataset (kept when a written config is read again).
        flag_kwargs: extra ``argparse`` arguments of the flag (``nargs``, ``metavar``, ``action``).
    """

    key: str
    default: Any
    types: tuple[type, ...]
    help: str
    flag: str | None = None
    described: Callable[[], dict[str, str]] | None = None
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False
    excludes: str | None = None
    runtime: bool = False
    derived: bool = False
    flag_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def choices(self) -> tuple[str, ...] | None:
        """The allowed values, or ``None``."""
        return tuple(self.described()) if self.described is not None else None


def option(default: Any, help: str, *, flag: str | None = None, choices: Any = None, minimum: float | None = None,
           maximum: float | None = None, positive: bool = False, excludes: str | None = None, runtime: bool = False,
           derived: bool = False, flag_help: str | None = None, **flag_kwargs: Any) -> Any:
    """Declare a schema field: its default and everything else the package needs to know about it, in one place.

    Args:
        default: the default (lists and dicts are copied per instance).
        help: one line for ``--help`` and the docs.
        flag: the ``resfu-med train`` flag setting it, or ``None``.
        choices: the allowed values, ``{value: description}`` or a registry key (``"model"``, ``"upsampler"``,
            ``"dataset"``), or ``None``.
        minimum, maximum, positive: bounds.
        excludes: the other key of the same budget (see :class:`Option`).
        runtime: may change on ``--resume``.
        derived: filled in from the dataset, not set by users.
        flag_help: the flag's help where it differs from ``help`` (an inverting flag such as ``--no-eval``).
        flag_kwargs: ``argparse`` arguments of the flag (``nargs``, ``metavar``, ``action``).
    """
    if flag_help is not None:
        flag_kwargs["help"] = flag_help
    meta = {"help": help, "flag": flag, "choices": choices, "minimum": minimum, "maximum": maximum,
            "positive": positive, "excludes": excludes, "runtime": runtime, "derived": derived,
            "flag_kwargs": flag_kwargs}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network (``model.*``)."""

    name: str = option("transunet", "network", flag="--model", choices="model", metavar="NAME")
    upsampler: str = option("resfu", "decoder upsampler", flag="--upsampler", choices="upsampler", metavar="NAME")
    pretrained: Optional[str] = option(None, "R50+ViT-B_16.npz ImageNet-21k weights for transunet", flag="--pretrained",
                                       metavar="NPZ")
    kwargs: dict = option({}, "extra constructor arguments of the network, e.g. {vit_depth: 4} (merged key by key)")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The dataset and its sampling (``data.*``)."""

    dataset: Optional[str] = option(None, "dataset", flag="--dataset", choices="dataset", metavar="NAME")
    root: Optional[str] = option(None, "prepared (or raw) dataset folder; not needed for demo", flag="--data-root",
                                 runtime=True, metavar="DIR")
    img_size: Optional[int] = option(224, "slice size; null: the slices' own size, at most 128 (a multiple of 16)",
                                     flag="--img-size", positive=True, metavar="N")
    num_workers: int = option(2, "data loader workers", flag="--num-workers", minimum=0, runtime=True, metavar="N")
    # scale (#29): the training cache is sized by memory, not by a fraction of the dataset (docs/scale.md)
    cache_gb: Optional[float] = option(
        None, "memory budget of the training cache in GB per process (MONAI CacheDataset: the first items that fit "
              "stay in memory, the others are read from disk); null: a quarter of the memory available at start; "
              "0: no cache", flag="--cache-gb", minimum=0, runtime=True, metavar="GB")
    cache_rate: float = option(1.0, "at most this fraction of the training items is cached (within --cache-gb)",
                               minimum=0, maximum=1)
    val_split: str = option("val", "split used to pick best.pt; none when the dataset has no such split")
    val_cases: int = option(0, "validation cases, 0 = every case of the validation split", minimum=0)
    class_names: Optional[list] = option(
        None, "names of the foreground classes 1..K-1 in label order, for a copy labelled in another order than the "
              "dataset's default (stored in the checkpoint; evaluation tables use them)",
        flag="--class-names", nargs="+", metavar="NAME")
    patch_size: list = option([96, 96, 96], "3D models: training patch and inference window (Z Y X), multiples of 16 "
                                             "(swinunetr: 32)", flag="--patch-size", nargs=3, type=int,
                              metavar=("Z", "Y", "X"))
    patches_per_volume: int = option(2, "3D models: patches drawn per volume and batch item",
                                     flag="--patches-per-volume", positive=True, metavar="N")
    pipeline: str = option("zoom", "2D models' slice pipeline", flag="--pipeline", choices=_PIPELINES)
    # filled in from the dataset when a run starts (complete_config); a written config.json carries them
    plan: Optional[dict] = option(None, "the 2D plan the model trains with (from the dataset's plans.json)",
                                  derived=True)
    num_classes: Optional[int] = option(None, "classes including background (from the dataset)", derived=True)
    label_names: Optional[list] = option(None, "foreground class names (from the dataset)", derived=True)
    intensity: Optional[dict] = option(None, "intensity normalisation (from the dataset)", derived=True)
    modality: Optional[str] = option(None, "CT or MRI (from the dataset)", derived=True)
    label_values: Optional[list] = option(None, "label value written per class (from the dataset)", derived=True)
    raw_label_values: Optional[list] = option(None, "raw release's value per class (from the dataset)", derived=True)
    ignore_index: Optional[int] = option(None, "nnU-Net 'ignore' label value (from the dataset)", derived=True)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The optimisation schedule (``train.*``)."""

    epochs: int = option(150, "epochs", flag="--epochs", positive=True, excludes="train.iterations", metavar="N")
    iterations: Optional[int] = option(None, "a budget of exactly N iterations whatever the dataset's size (the last "
                                              "epoch is cut short; the lr schedule spans the N)", flag="--iterations",
                                       positive=True, excludes="train.epochs",
                                       metavar="N")
    max_iters: Optional[int] = option(None, "stop after N iterations in total, saving last.pt (the lr schedule still "
                                            "spans all epochs)", flag="--max-iters", minimum=0, runtime=True,
                                      metavar="N")
    time_budget: Optional[float] = option(None, "wall-clock cap in seconds on this session's training loop: stop at the "
                                                "first iteration past it and save last.pt (--resume continues; the lr "
                                                "schedule still spans all epochs)", flag="--time-budget",
                                          positive=True, runtime=True, metavar="SECONDS")
    batch_size: int = option(24, "global batch size (split across DDP processes)", flag="--batch-size", positive=True,
                             metavar="N")
    optimizer: str = option("sgd", "optimizer", choices=_OPTIMIZERS)
    lr: float = option(0.01, "base learning rate", flag="--lr", positive=True, metavar="LR")
    momentum: float = option(0.9, "SGD momentum", minimum=0)
    weight_decay: float = option(1e-4, "weight decay", minimum=0)
    poly_power: float = option(0.9, "exponent of the poly schedule", minimum=0)
    schedule: str = option("poly", "learning-rate schedule, per iteration after warmup_iters", choices=_SCHEDULES)
    warmup_iters: int = option(0, "linear lr warm-up iterations", minimum=0)
    decay_fraction: float = option(0.2, "constant-decay: share of the iterations, at the end, over which the lr falls "
                                        "linearly to 0", minimum=0, maximum=1)
    fg_oversample: Optional[float] = option(
        None, "share of every batch drawn from slices holding a foreground class, the class drawn uniformly (3D: "
              "class-balanced patch centres); null: uniform",
        flag="--fg-oversample", minimum=0, maximum=1, metavar="P")
    ce_weight: float = option(0.5, "weight of the cross-entropy loss", minimum=0)
    dice_weight: float = option(0.5, "weight of the Dice loss", minimum=0)
    eval: bool = option(True, "validate (volume-wise Dice) to pick best.pt; --no-eval: best.pt is the final model",
                        flag="--no-eval", action="store_false",
                        flag_help="skip validation during training (best.pt is then the final model)")
    val_every: int = option(1, "epochs between validations", positive=True)
    checkpoint_every: int = option(0, "also save last.pt every N iterations, 0: at epoch ends only",
                                   flag="--checkpoint-every", minimum=0, metavar="N")
    log_every: int = option(10, "iterations between TensorBoard scalar writes", positive=True)
    num_images: int = option(3, "image/prediction overlays written to TensorBoard per validation", minimum=0)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole run's configuration; the defaults are the paper's protocol (TransUNet R50-ViT-B/16 on Synapse)."""

    seed: int = option(1234, "random seed", flag="--seed", metavar="N")
    deterministic: bool = option(False, "deterministic algorithms (bit-identical reruns on CPU; slower on GPU)",
                                 flag="--deterministic", action="store_true")
    device: str = option("auto", "auto | cpu | cuda | cuda:N", flag="--device", runtime=True, metavar="DEV")
    amp: str = option("none", "mixed precision", flag="--amp", choices=AMP_MODES, metavar="MODE")
    threads: int = option(0, "torch intra-op CPU threads; 0 = torch's default", minimum=0, runtime=True)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    plan: Optional[dict] = option(None, "the dataset's fingerprint and plans (plans.json), recorded from the prepared "
                                        "dataset", derived=True)
    sources: Optional[dict] = option(None, "the layer that set each non-default value (written by resfu-med train)",
                                     derived=True)


def _types(hint: Any) -> tuple[type, ...]:
    args = typing.get_args(hint) or (hint,)
    out: list[type] = []
    for a in args:
        a = typing.get_origin(a) or a
        out += [float, int] if a is float else [a]
    return tuple(out)


def _options(cls: type, prefix: str = "") -> dict[str, Option]:
    hints = typing.get_type_hints(cls)
    out: dict[str, Option] = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_options(hints[f.name], f"{key}."))
            continue
        m = dict(f.metadata)
        choices = m.pop("choices")
        described = (choices if callable(choices) else (lambda c=dict(choices): c) if isinstance(choices, dict)
                     else (lambda k=key: _registry_described(k)) if isinstance(choices, str) else None)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out[key] = Option(key=key, default=default, types=_types(hints[f.name]), described=described, **m)
    return out


def _flatten_all(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if f"{prefix}{key}" in OPTIONS:
            out[f"{prefix}{key}"] = value
        else:
            out.update(_flatten_all(value, f"{prefix}{key}."))
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *path, leaf = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


#: Dotted key → :class:`Option`, in declaration order: the whole schema.
OPTIONS: dict[str, Option] = _options(RunConfig)

#: The defaults as a nested dict (the paper's protocol); the derived keys are absent until a run fills them in.
DEFAULTS: dict[str, Any] = _nest({k: v for k, v in _flatten_all(dataclasses.asdict(RunConfig())).items()
                                  if not OPTIONS[k].derived})

#: Keys restricted to a fixed set of values (registry keys are listed by :func:`registry_choices`).
CHOICES: dict[str, tuple[str, ...]] = {k: o.choices() for k, o in OPTIONS.items()  # type: ignore[misc]
                                       if o.described is not None and isinstance(o.described(), dict)
                                       and _registry_described(k) is None}

#: Per-dataset presets applied on top of the defaults (a dataset without one uses the defaults: the Synapse protocol,
#: which TransUNet's follow-ups also apply to ACDC; the paper gives no other schedule).
PRESETS: dict[str, dict[str, Any]] = {
    # MSD: nnU-Net's way: native-resolution patches of the dataset plan, Gaussian sliding-window inference, and its
    # foreground oversampling (a third of every batch from slices holding a class). Synapse and ACDC keep the
    # TransUNet protocol (slices zoomed to 224²), on which the paper's figures are quoted.
    "msd": {"data": {"pipeline": "plan"}, "train": {"fg_oversample": 0.33}},
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
    # quick: check a dataset end to end on a CPU before booking a GPU (docs/training.md, docs/real_benchmark.md).
    "quick": {
        "model": {"name": "unet", "upsampler": "resfu", "kwargs": copy.deepcopy(PRESETS["demo"]["model"]["kwargs"])},
        "threads": 1,
        # every dataset: native-resolution patches of its plan (zooming whole slices throws away the pixels of small
        # structures and distorts anisotropic slices); img_size: the plan's patch (zoom pipeline: the slices' own
        # size up to 128)
        "data": {"pipeline": "plan", "img_size": None, "num_workers": 0, "cache_rate": 1.0},
        "train": {
            # exactly this many iterations whatever the dataset's size (the last epoch is cut short, the lr schedule
            # spans exactly them). 1,500: measured on whole 1 mm brain MRI volumes with the plan pipeline
            # (docs/real_benchmark.md): about 10-15 min of one core with ReSFU, and the fewest iterations after which
            # every structure passed 80 % Dice (bilinear)
            "iterations": 1500,
            "batch_size": 4,
            "optimizer": "adamw",
            "lr": 1e-3,
            "weight_decay": 1e-4,
            # warm-up, constant, then a linear decay to 0 over the last 20 %: on the same whole volumes, 3 seeds, it
            # beat the constant lr it replaced for ReSFU and bilinear alike, with less spread (docs/real_benchmark.md)
            "schedule": "constant-decay",
            "decay_fraction": 0.2,
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
             f", {recipe['data']['pipeline']} pipeline" if "pipeline" in recipe.get("data", {}) else "",
             f", foreground share {train['fg_oversample']:g}" if train.get("fg_oversample") else ""]
    return f"{RECIPE_PURPOSES.get(name, name)}: " + "".join(parts).strip(", ")



def default_config() -> dict[str, Any]:
    """A deep copy of :data:`DEFAULTS`."""
    return copy.deepcopy(DEFAULTS)


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested config to dotted keys (``model.kwargs`` and other dict-valued options stay one value)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in OPTIONS:
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = value
    return out


def _check_value(key: str, value: Any, source: str) -> tuple[Any, str | None]:
    """``(value, None)`` with ints widened to float where the option is a float, or ``(value, error line)``."""
    opt = OPTIONS[key]
    allowed = opt.types
    # bool is an int subclass: reject True for an int key and 1 for a bool key.
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in dict.fromkeys(allowed))
        return value, f"{source}: {key} must be {names}, got {type(value).__name__} {value!r}"
    if isinstance(value, int) and not isinstance(value, bool) and float in allowed:
        value = float(value)
    choices = opt.choices()
    if choices is not None and value is not None and value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        registry = {"model.name": "model", "model.upsampler": "upsampler", "data.dataset": "dataset"}.get(key)
        what = f"unknown {registry} {value!r}: " if registry else ""
        return value, f"{source}: {what}{key} must be one of {', '.join(choices)}, got {value!r}{hint}"
    if key == "device" and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        return value, f"{source}: device must be auto, cpu, cuda or cuda:N, got {value!r}"
    if value is not None and not isinstance(value, (str, list, dict, bool)):
        if opt.positive and value <= 0:
            return value, f"{source}: {key} must be > 0, got {value!r}"
        if opt.minimum is not None and value < opt.minimum:
            return value, f"{source}: {key} must be >= {opt.minimum:g}, got {value!r}"
        if opt.maximum is not None and value > opt.maximum:
            return value, f"{source}: {key} must be <= {opt.maximum:g}, got {value!r}"
    return value, None


def _validate(update: Any, source: str) -> dict[str, Any]:
    """The dotted keys of a nested partial config, every value checked; all problems raised at once, one per line."""
    if not isinstance(update, dict):
        raise InputError(f"{source}: the top level must be a mapping of keys, got {type(update).__name__}")
    errors: list[str] = []
    out: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if name in OPTIONS:
                value, err = _check_value(name, value, source)
                errors.append(err) if err else out.__setitem__(name, copy.deepcopy(value))
            elif any(k.startswith(f"{name}.") for k in OPTIONS):
                if isinstance(value, dict):
                    walk(value, f"{name}.")
                else:
                    errors.append(f"{source}: {name} must be a mapping, got {type(value).__name__} {value!r}")
            else:
                close = difflib.get_close_matches(name, list(OPTIONS), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                valid = sorted({k[len(prefix):].split(".")[0] for k in OPTIONS if k.startswith(prefix)})
                errors.append(f"{source}: unknown key {name!r}{hint} (valid here: {', '.join(valid)})")

    walk(update, "")
    pairs = [(k, o.excludes) for k, o in OPTIONS.items() if o.excludes and k < o.excludes]
    for a, b in pairs:
        if out.get(a) is not None and out.get(b) is not None:
            errors.append(f"{source}: {a} and {b} give the training length twice; set one of them")
    if errors:
        raise InputError("\n".join(errors))
    return out


def merge_kwargs(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update`` key by key, a mapping value in both (``upsampler_kwargs``) merged key by key too."""
    out = dict(base)
    for key, value in update.items():
        old = out.get(key)
        out[key] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
    return out


def merge_config(base: dict[str, Any], update: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Return ``base`` updated by the nested ``update``, validating every key and type against the schema.

    Args:
        base: a full config (not modified).
        update: a nested partial config, e.g. ``{"train": {"lr": 0.02}}``.
        source: where ``update`` came from, for error messages (a file name, ``"flags"``).

    Returns:
        A new config dict. ``model.kwargs`` merges key by key, and so does a mapping inside it (``upsampler_kwargs``:
        one option given adds to the preset's, it does not drop the preset's widths); setting one of
        ``train.epochs``/``train.iterations`` clears the other (they are two ways to give one budget).

    Raises:
        InputError: unknown keys, wrong types or values out of range, one line each naming the key and the source.
    """
    flat = flatten(copy.deepcopy(base))
    for key, value in _validate(update, source).items():
        if key == "model.kwargs":
            value = merge_kwargs(flat.get(key) or {}, value)
        flat[key] = value
        excluded = OPTIONS[key].excludes
        if excluded and value is not None:
            flat[excluded] = OPTIONS[excluded].default
    return _nest(flat)


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
    return migrate_config(data)


def _family(model: str) -> object:
    """Models taking the same constructor arguments (``unet`` and ``unet3d`` are both BasicUNet) share a family."""
    from resfu_med.networks.model_registry import get_model_spec

    return get_model_spec(model).constructor




#: Keys renamed since earlier releases: old dotted key → new dotted key (:func:`migrate_config`).
RENAMED: dict[str, str] = {"train.base_lr": "train.lr", "model.kwargs.upsample": "model.kwargs.upsampler"}


def migrate_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A config of an earlier release (a config file, ``config.json`` or a checkpoint's record) in today's keys.

    Renamed keys (:data:`RENAMED`) move to their new name unless the new one is also present. The input is not
    modified.
    """
    out = copy.deepcopy(cfg)
    for old, new in RENAMED.items():
        *path, leaf = old.split(".")
        node: Any = out
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            value = node.pop(leaf)
            new_leaf = new.split(".")[-1]
            if new.rsplit(".", 1)[0] == old.rsplit(".", 1)[0]:
                node.setdefault(new_leaf, value)
    return out


def _flag_or_key(key: str, source: str) -> str:
    flag = OPTIONS[key].flag
    return f"{flag} ({key})" if source == "flags" and flag else key


def resolve_layers(
    dataset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    preset: str | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Resolve defaults < dataset preset < recipe (``preset``) < config file < overrides (flags).

    The dataset may come from ``dataset``, the file (``data.dataset``) or ``overrides``; its preset is chosen after
    all three are read so a file can name its dataset.

    Args:
        dataset: dataset name or ``None``.
        config_file: optional YAML/JSON file.
        overrides: nested dict from command-line flags (highest priority).
        preset: a training recipe of :data:`RECIPES` (``"quick"``) or ``None``.

    Returns:
        ``(config, sources)``: the validated config (dataset facts and model kwargs are completed later by
        :func:`resfu_med.engine.preparation.complete_config`) and, for every value that differs from the default,
        the layer that set it (``"preset demo"``, ``"recipe quick"``, ``"config file run.yaml"``, ``"flags"``).

    Raises:
        InputError: unknown dataset or preset, unknown keys, wrong types (all of a file's problems, one line each),
            or two explicit settings that contradict each other (``--epochs`` with ``train.iterations`` in the file).
    """
    file_src = f"config file {config_file}"
    file_cfg = load_config_file(config_file) if config_file is not None else {}
    overrides = overrides or {}
    explicit = {file_src: _validate(file_cfg, file_src), "flags": _validate(overrides, "flags")}
    for key, opt in OPTIONS.items():  # a flag contradicting the file
        other = opt.excludes
        if other and explicit["flags"].get(key) is not None and explicit[file_src].get(other) is not None:
            raise InputError(f"{_flag_or_key(key, 'flags')} conflicts with {other} set in {file_src}; set one of them")
    name = dataset or explicit["flags"].get("data.dataset") or explicit[file_src].get("data.dataset")
    if name is None:
        raise InputError(f"no dataset given: pass --dataset ({', '.join(registry_choices('data.dataset') or ())})")
    _, err = _check_value("data.dataset", name, "--dataset")
    if err:
        raise InputError(err)
    layers: list[tuple[str, dict[str, Any]]] = [(f"preset {name}", PRESETS.get(name, {}))]
    if preset is not None:
        if preset not in RECIPES:
            close = difflib.get_close_matches(str(preset), list(RECIPES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"unknown preset {preset!r}{hint}: choose one of {', '.join(RECIPES)}")
        layers.append((f"recipe {preset}", RECIPES[preset]))
    layers += [(file_src, file_cfg), ("flags", overrides)]
    cfg, sources = default_config(), {}
    for source, update in layers:
        if source == file_src:
            preset_model, preset_upsampler = cfg["model"]["name"], cfg["model"]["upsampler"]  # after the recipe
        cfg = merge_config(cfg, update, source=source)
        for key in _validate(update, source):
            sources[key] = source
            if OPTIONS[key].excludes:
                sources.pop(OPTIONS[key].excludes, None)
    user_kwargs = merge_kwargs(file_cfg.get("model", {}).get("kwargs", {}), overrides.get("model", {}).get("kwargs", {}))
    if _family(cfg["model"]["name"]) != _family(preset_model):
        # The preset's network arguments belong to its own model (unet and unet3d share BasicUNet's); keep only those
        # the user gave.
        cfg["model"]["kwargs"] = user_kwargs
    elif cfg["model"]["upsampler"] != preset_upsampler:
        # Likewise the preset's upsampler options (the demo's slim ReSFU widths) mean nothing to another upsampler:
        # it gets the user's own options only.
        cfg["model"]["kwargs"].pop("upsampler_kwargs", None)
        if "upsampler_kwargs" in user_kwargs:
            cfg["model"]["kwargs"]["upsampler_kwargs"] = user_kwargs["upsampler_kwargs"]
    cfg["data"]["dataset"] = name
    sources.setdefault("data.dataset", "flags")
    _check_img_size_applies(cfg, sources, file_src)
    flat = flatten(cfg)
    return cfg, {k: v for k, v in sources.items() if flat.get(k) != OPTIONS[k].default}


def _check_img_size_applies(cfg: dict[str, Any], sources: dict[str, str], file_src: str) -> None:
    """An explicit ``img_size`` with the plan pipeline of a 2D model would be ignored (the plan's patch sets the
    input): refuse it in one line rather than drop it silently."""
    source = sources.get("data.img_size")
    if source not in ("flags", file_src) or cfg["data"]["pipeline"] != "plan":
        return
    from resfu_med.networks.model_registry import get_model_spec

    if get_model_spec(cfg["model"]["name"]).spatial_dims == 2:
        where = "" if source == "flags" else f"{source}: "
        raise InputError(f"{where}{_flag_or_key('data.img_size', source)} applies to --pipeline zoom only; "
                         f"the plan pipeline ({sources.get('data.pipeline', 'preset ' + cfg['data']['dataset'])}) "
                         "trains on the dataset plan's patch (plans.2d.patch_size in plans.json): drop it or add "
                         "--pipeline zoom")


def resolve_config(
    dataset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    preset: str | None = None,
) -> dict[str, Any]:
    """The config of :func:`resolve_layers` (same arguments and errors), without the sources."""
    return resolve_layers(dataset, config_file, overrides, preset)[0]


def describe_sources(cfg: dict[str, Any], sources: dict[str, str]) -> str:
    """One line per non-default value: ``key = value  (layer)``, in schema order, for the run's log."""
    flat = flatten(cfg)
    keys = [k for k in OPTIONS if k in sources]
    width = max((len(k) for k in keys), default=0)
    return "\n".join(f"  {k:<{width}} = {json.dumps(flat.get(k))}  ({sources[k]})" for k in keys)
