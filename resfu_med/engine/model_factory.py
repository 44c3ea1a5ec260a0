"""Build a network from the ``model`` section of a run config (``{"name": ..., "kwargs": {...}}``).

The same description is stored in every checkpoint, so :func:`build_model` is how training, evaluation, inference and
the bundle all rebuild one network. Names: ``transunet`` (:class:`resfu_med.networks.TransUNet`), ``unet`` and
``unet3d`` (:class:`resfu_med.networks.BasicUNet` with ``spatial_dims`` 2 / 3). Further names can be registered with
:func:`register_model` (a custom network for experiments; it must then be registered before a checkpoint is loaded).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

from resfu_med.errors import InputError

__all__ = ["build_model", "register_model", "model_names", "model_kwargs", "num_classes_of", "model_constructor",
           "check_model_config", "MODEL_BUILDERS"]


def _transunet(**kwargs: Any) -> nn.Module:
    from resfu_med.networks import TransUNet

    return TransUNet(**kwargs)


def _unet(**kwargs: Any) -> nn.Module:
    from resfu_med.networks import BasicUNet

    return BasicUNet(**{"spatial_dims": 2, **kwargs})


def _unet3d(**kwargs: Any) -> nn.Module:
    from resfu_med.networks import BasicUNet

    return BasicUNet(**{**kwargs, "spatial_dims": 3})


#: name → constructor taking the ``kwargs`` of the model config.
MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {"transunet": _transunet, "unet": _unet, "unet3d": _unet3d}

# The network class behind each built-in builder (whose own signature is ``**kwargs``): what its kwargs are checked
# against.
_CONSTRUCTORS = {"transunet": "TransUNet", "unet": "BasicUNet", "unet3d": "BasicUNet"}

# Which constructor argument carries the class count and which the upsampler name, per model.
_CLASSES_KEY = {"transunet": "num_classes", "unet": "out_channels", "unet3d": "out_channels"}
_UPSAMPLER_KEY = {"transunet": "upsampler", "unet": "upsample", "unet3d": "upsample"}


def register_model(name: str, builder: Callable[..., nn.Module], classes_key: str = "out_channels",
                   upsampler_key: str | None = None) -> None:
    """Register a network constructor under ``name`` for :func:`build_model`.

    Args:
        name: the model name used in configs.
        builder: called with the config's ``kwargs``; returns an ``nn.Module`` mapping ``(N, C, *spatial)`` images to
            ``(N, num_classes, *spatial)`` logits.
        classes_key: the constructor argument that takes the number of classes.
        upsampler_key: the constructor argument that takes the upsampler name, or ``None`` if it has none.
    """
    MODEL_BUILDERS[name] = builder
    _CLASSES_KEY[name] = classes_key
    if upsampler_key is not None:
        _UPSAMPLER_KEY[name] = upsampler_key


def model_constructor(name: str) -> Callable[..., nn.Module]:
    """The callable whose signature defines the accepted ``kwargs`` of model ``name`` (the class for built-ins)."""
    if name in _CONSTRUCTORS:
        import resfu_med.networks as networks

        return getattr(networks, _CONSTRUCTORS[name])
    return MODEL_BUILDERS[name]


def check_model_config(model_cfg: Any, source: str = "model config", error: type[Exception] = InputError) -> None:
    """Check a ``{"name", "kwargs"}`` model description read from a file before anything is built from it.

    The name must be a registered model; ``kwargs`` plain data (:func:`resfu_med.safety.check_plain_data`) whose keys
    are arguments of the model's constructor.

    Raises:
        error: the message names ``source`` and the offending value (``model.kwargs.in_channels``).
    """
    from resfu_med.safety import check_constructor_kwargs, check_plain_data

    if not isinstance(model_cfg, dict):
        raise error(f"{source}: config value model must be a mapping, got {type(model_cfg).__name__}")
    check_plain_data(model_cfg, source, "model", error=error)
    name = model_cfg.get("name")
    if name not in MODEL_BUILDERS:
        raise error(f"{source}: config value model.name is {name!r}; known models: {', '.join(model_names())}")
    check_constructor_kwargs(model_cfg.get("kwargs") or {}, model_constructor(name), source, error=error)


def model_names() -> tuple[str, ...]:
    """The names :func:`build_model` accepts."""
    return tuple(MODEL_BUILDERS)


def model_kwargs(name: str, num_classes: int, img_size: int, upsampler: str | None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The constructor arguments of model ``name`` for a dataset with ``num_classes`` classes (incl. background).

    Args:
        name: a model name (:func:`model_names`).
        num_classes: classes including background.
        img_size: training slice size (TransUNet needs it for its position embedding).
        upsampler: upsampler name (``resfu``, ``bilinear``, ...) or ``None`` for the network's default.
        extra: further constructor arguments from the config (``model.kwargs``); they win over the derived ones
            except the class count.

    Raises:
        InputError: unknown model name (the valid names are listed).
    """
    if name not in MODEL_BUILDERS:
        raise InputError(f"unknown model {name!r}: choose one of {', '.join(model_names())}")
    kwargs: dict[str, Any] = {}
    if name == "transunet":
        kwargs.update(img_size=img_size)  # 1-channel slices are repeated to 3 inside TransUNet
    elif name in ("unet", "unet3d"):
        kwargs.update(in_channels=1)
    if upsampler is not None and name in _UPSAMPLER_KEY:
        kwargs[_UPSAMPLER_KEY[name]] = upsampler
    kwargs.update(extra or {})
    kwargs[_CLASSES_KEY[name]] = num_classes
    return kwargs


def num_classes_of(model_cfg: dict[str, Any]) -> int | None:
    """The class count recorded in a model config, or ``None`` if it has none."""
    key = _CLASSES_KEY.get(model_cfg.get("name", ""))
    value = model_cfg.get("kwargs", {}).get(key) if key else None
    return int(value) if value is not None else None


def build_model(model_cfg: dict[str, Any]) -> nn.Module:
    """Instantiate the network described by ``model_cfg``.

    Args:
        model_cfg: ``{"name": "transunet" | "unet" | "unet3d" | <registered>, "kwargs": {...}}``.

    Returns:
        The network (freshly initialised, in training mode).

    Raises:
        InputError: unknown name, or arguments the constructor rejects (the message names them).

    Example:
        >>> net = build_model({"name": "unet", "kwargs": {"in_channels": 1, "out_channels": 4}})
    """
    if not isinstance(model_cfg, dict) or "name" not in model_cfg:
        raise InputError(f"model config must be a mapping with a 'name', got {model_cfg!r}")
    name = model_cfg["name"]
    if name not in MODEL_BUILDERS:
        raise InputError(f"unknown model {name!r}: choose one of {', '.join(model_names())}")
    check_model_config(model_cfg)
    kwargs = dict(model_cfg.get("kwargs") or {})
    try:
        return MODEL_BUILDERS[name](**kwargs)
    except (TypeError, ValueError, KeyError) as err:
        raise InputError(f"model {name!r} rejected its arguments {kwargs}: {err}") from err
