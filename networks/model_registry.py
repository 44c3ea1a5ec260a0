"""The model registry: one :class:`ModelSpec` per network name, read by training, inference, evaluation and export.

A run config names its network as ``{"name": ..., "kwargs": {...}}`` (also stored in every checkpoint). The entry of
that name says everything the rest of resfu-med needs to know about the network:

- how to build it (``constructor``, with ``fixed`` arguments such as BasicUNet's ``spatial_dims``) and the import
  path a MONAI bundle's ``network_def`` names (``target``);
- which constructor arguments it accepts (:attr:`ModelSpec.accepted_keys`, from the constructor's signature), which
  one takes the class count, the upsampler name, the input channels and the training slice size;
- its spatial dimensionality and default inference window (:meth:`ModelSpec.default_roi`);
- the smallest input it trains on and the multiple a 3D patch must be of; its pretrained-weights loader, if any.

Each built-in entry is registered once, beside its one-line description (shown by ``resfu-med train --help``).
Built-in names: ``transunet`` (:class:`~resfu_med.networks.TransUNet`), ``unet`` and ``unet3d``
(:class:`~resfu_med.networks.BasicUNet`, 2D / 3D), and the 3D ``dynunet``, ``swinunetr``, ``unetr`` (MONAI's networks
with registry upsamplers: :class:`~resfu_med.networks.DynUNet`, ...). Add a network with :func:`register_model` (a
call, or a decorator on the class); it then trains, evaluates, infers and exports as a bundle and is listed by
``--help`` with no other change (the constructor must be importable by its ``target`` path for the bundle). An unknown
name is an :class:`~resfu_med.errors.InputError` with a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from resfu_med.errors import CheckpointError, InputError, look_up
from resfu_med.safety import check_kwargs

__all__ = [
    "ModelSpec",
    "MODELS",
    "register_model",
    "get_model_spec",
    "model_names",
    "model_kwargs",
    "num_classes_of",
    "spatial_dims_of",
    "img_size_of",
    "build_model",
    "saved_model_config",
    "load_state_strict",
    "DEFAULT_IMG_SIZE",
]

#: Training slice size when a config gives none (TransUNet's 224).
DEFAULT_IMG_SIZE = 224


def img_size_of(data: Mapping[str, Any]) -> int:
    """The training slice size of a config's ``data`` section (``img_size``, :data:`DEFAULT_IMG_SIZE` when absent)."""
    return int(data.get("img_size") or DEFAULT_IMG_SIZE)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything resfu-med knows about one registered network.

    Attributes:
        name: the model name in configs and ``--model``.
        description: one line for ``--help``.
        constructor: class or function; called with the config's ``kwargs`` (plus ``fixed``) it returns a module
            mapping ``(N, C, *spatial)`` images to ``(N, num_classes, *spatial)`` logits.
        spatial_dims: 2 (trained on slices, inferred slice by slice) or 3 (patches, 3D sliding windows).
        classes_key: the constructor argument taking the class count (background included).
        upsampler_key: the argument taking the decoder upsampler name, or ``None``.
        in_channels_key: the argument taking the input channel count (resfu-med feeds 1 channel), or ``None``.
        img_size_key: the argument taking the training slice size, or ``None``.
        fixed: arguments always passed (a config may repeat them but not change them).
        target: import path of ``constructor`` for a bundle's ``network_def`` (default: where it is defined).
        pretrained: ``loader(model, path)`` loading published weights (``--pretrained``), or ``None``.
        patch_divisor: 3D models: each patch side must be a multiple of it (the network's total downsampling).
        min_img_size: 2D models: the smallest training slice size.
        patch_kwargs: 3D models: ``f(patch_size) -> kwargs``, constructor arguments derived from the training patch
            (UNETR's ``img_size``, DynUNet's kernel sizes and strides); the config's own ``kwargs`` win over them.
        recorded: constructor defaults written into every new config (:func:`model_kwargs`), so a later change of
            the default cannot change the network a checkpoint rebuilds (the ``final_upsampler`` of TransUNet and the
            U-Nets, the U-Nets' ReSFU widths in ``upsampler_kwargs``; a mapping value is merged key by key, the
            config's own keys winning): a mapping, or ``f(kwargs) -> mapping`` when the value depends on other
            arguments.
        legacy_kwargs: ``f(kwargs, state) -> kwargs``: the arguments that rebuild a network saved by an earlier
            release (whose config lacks a ``recorded`` key) from its recorded kwargs and weights (``state``: the
            ``state_dict``, names and shapes, or only the names); applied to
            checkpoints and bundles only (:func:`saved_model_config`), never to new configs.
    """

    name: str
    constructor: Callable[..., nn.Module]
    description: str = ""
    spatial_dims: int = 2
    classes_key: str = "out_channels"
    upsampler_key: str | None = None
    in_channels_key: str | None = None
    img_size_key: str | None = None
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    target: str = ""
    pretrained: Callable[[nn.Module, str], Any] | None = None
    patch_divisor: int = 1
    min_img_size: int = 1
    patch_kwargs: Callable[[list[int]], Mapping[str, Any]] | None = None
    recorded: Mapping[str, Any] | Callable[[Mapping[str, Any]], Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    legacy_kwargs: Callable[[dict[str, Any], Collection[str]], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"model {self.name!r}: spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if not self.target:
            object.__setattr__(self, "target", f"{self.constructor.__module__}.{self.constructor.__qualname__}")

    @property
    def accepted_keys(self) -> frozenset[str] | None:
        """The constructor's keyword arguments, or ``None`` when it takes ``**kwargs`` (any key)."""
        params = inspect.signature(self.constructor).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        return frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    def full_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """``kwargs`` with the fixed arguments added.

        Raises:
            InputError: ``kwargs`` contradicts a fixed argument, names one the constructor does not take, or holds a
                value that is not plain data (:func:`resfu_med.safety.check_kwargs`).
        """
        if "upsample" in kwargs and self.upsampler_key == "upsampler" and "upsampler" not in kwargs:
            # checkpoints of earlier releases name the upsampler ``upsample`` (the networks' old keyword)
            kwargs = {("upsampler" if k == "upsample" else k): v for k, v in kwargs.items()}
        for key, value in self.fixed.items():
            if key in kwargs and kwargs[key] != value:
                raise InputError(f"model {self.name!r}: {key} is always {value!r}, got {kwargs[key]!r}")
        check_kwargs(dict(kwargs), self.accepted_keys, self.name, f"model {self.name!r}")
        return {**kwargs, **self.fixed}

    def default_roi(self, data: Mapping[str, Any]) -> list[int]:
        """The inference window for a config's ``data`` section: ``img_size`` (one size: squared) for 2D models; for
        3D models ``roi_size``, else ``patch_size`` (the training patch), else ``img_size`` cubed."""
        size = data.get("img_size") or DEFAULT_IMG_SIZE
        window = size if self.spatial_dims == 2 else data.get("roi_size", data.get("patch_size", size))
        window = [int(window)] if isinstance(window, (int, float)) else [int(w) for w in window]
        return window * self.spatial_dims if len(window) == 1 else window

    def recorded_defaults(self, kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
        """The :attr:`recorded` defaults for a config's ``kwargs``."""
        return self.recorded(kwargs) if callable(self.recorded) else self.recorded


#: name → entry. Use :func:`register_model` to add to it.
MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, constructor: Callable[..., nn.Module] | None = None, classes_key: str = "out_channels",
                   upsampler_key: str | None = None, **spec: Any) -> Any:
    """Register a network under ``name`` (replacing an entry of that name); without ``constructor``, a decorator.

    Args:
        name: the model name used in configs and ``--model``.
        constructor: see :class:`ModelSpec`; omitted, the decorated class or function.
        classes_key: the constructor argument that takes the number of classes.
        upsampler_key: the constructor argument that takes the upsampler name (``"upsampler"``), or ``None``.
        spec: further :class:`ModelSpec` fields (``description``, ``spatial_dims``, ``in_channels_key``, ...).

    Returns:
        The new entry; as a decorator, the decorated constructor unchanged.

    Example:
        >>> register_model("my_unet", MyUNet, description="my U-Net", in_channels_key="in_channels")
        >>> @register_model("my_net", description="my network", classes_key="num_classes")
        ... class MyNet(nn.Module): ...
    """
    if constructor is None:
        def decorate(cls: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
            register_model(name, cls, classes_key, upsampler_key, **spec)
            return cls

        return decorate
    entry = ModelSpec(name=name, constructor=constructor, classes_key=classes_key, upsampler_key=upsampler_key, **spec)
    MODELS[name] = entry
    return entry


def model_names() -> tuple[str, ...]:
    """The registered model names."""
    return tuple(MODELS)


def get_model_spec(name: Any) -> ModelSpec:
    """The entry of ``name``.

    Raises:
        InputError: unknown name (with a did-you-mean; the registered names are listed).
    """
    return look_up(name, MODELS, "model")


def model_kwargs(name: str, num_classes: int, img_size: int, upsampler: str | None,
                 extra: Mapping[str, Any] | None = None, patch_size: Sequence[int] | None = None) -> dict[str, Any]:
    """The constructor arguments of model ``name`` for a dataset with ``num_classes`` classes (incl. background).

    Args:
        name: a model name (:func:`model_names`).
        num_classes: classes including background.
        img_size: training slice size (for networks with an ``img_size_key``, e.g. TransUNet's position embedding).
        upsampler: upsampler name (``resfu``, ``bilinear``, ...) or ``None`` for the network's default.
        extra: further constructor arguments from the config (``model.kwargs``); they win over the derived ones
            except the class count.
        patch_size: 3D models: the training patch, for the network's ``patch_kwargs``.

    Raises:
        InputError: unknown model name (the valid names are listed).
    """
    spec = get_model_spec(name)
    kwargs: dict[str, Any] = {}
    if spec.img_size_key:
        kwargs[spec.img_size_key] = img_size
    if spec.in_channels_key:
        kwargs[spec.in_channels_key] = 1  # 1-channel images (TransUNet repeats them to 3 inside)
    if upsampler is not None and spec.upsampler_key:
        kwargs[spec.upsampler_key] = upsampler
    if spec.patch_kwargs is not None and patch_size is not None:
        kwargs.update(spec.patch_kwargs([int(s) for s in patch_size]))
    kwargs.update(extra or {})
    for key, value in spec.recorded_defaults(kwargs).items():
        if isinstance(value, Mapping) and isinstance(kwargs.get(key), Mapping):  # the config's own keys win
            kwargs[key] = {**kwargs[key], **{k: v for k, v in value.items() if k not in kwargs[key]}}
        elif kwargs.get(key) is None:
            kwargs[key] = value
    kwargs[spec.classes_key] = num_classes
    return kwargs


def num_classes_of(model_cfg: Mapping[str, Any]) -> int | None:
    """The class count recorded in a model config, or ``None`` if it has none."""
    spec = MODELS.get(model_cfg.get("name", ""))
    value = (model_cfg.get("kwargs") or {}).get(spec.classes_key) if spec else None
    return int(value) if value is not None else None


def spatial_dims_of(model_cfg: Mapping[str, Any]) -> int:
    """2 or 3: the spatial dimensionality of the network a model config (``{"name", "kwargs"}``) describes."""
    return get_model_spec(model_cfg.get("name")).spatial_dims


def build_model(model_cfg: Mapping[str, Any]) -> nn.Module:
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
    if not isinstance(model_cfg, Mapping) or "name" not in model_cfg:
        raise InputError(f"model config must be a mapping with a 'name', got {model_cfg!r}")
    spec = get_model_spec(model_cfg["name"])
    kwargs = model_cfg.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise InputError(f"model {spec.name!r}: kwargs must be a mapping, got {type(kwargs).__name__}")
    kwargs = spec.full_kwargs(kwargs)
    try:
        return spec.constructor(**kwargs)
    except (TypeError, ValueError, KeyError) as err:
        raise InputError(f"model {spec.name!r} rejected its arguments {kwargs}: {err}") from err


def saved_model_config(model_cfg: Mapping[str, Any], state_keys: Collection[str] | Mapping[str, Any]) -> dict[str, Any]:
    """The model config that rebuilds a saved network: ``model_cfg`` (from a checkpoint or bundle) with the entry's
    :attr:`ModelSpec.legacy_kwargs` applied when it lacks a key that configs record since (e.g. a TransUNet of the
    four-step default of earlier releases keeps its four steps).

    Args:
        model_cfg: ``{"name": ..., "kwargs": {...}}`` as saved.
        state_keys: the saved weights (``state_dict``: the U-Nets read ReSFU's widths from their shapes), or only
            their names.

    Returns:
        A new config; ``model_cfg`` itself is not changed.

    Raises:
        InputError: unknown model name.
    """
    spec = get_model_spec(model_cfg.get("name"))
    kwargs = dict(model_cfg.get("kwargs") or {})
    if spec.legacy_kwargs is not None and _lacks_recorded(kwargs, spec.recorded_defaults(kwargs)):
        kwargs = spec.legacy_kwargs(kwargs, state_keys)
    return {**model_cfg, "kwargs": kwargs}


def _few(items: list[str]) -> str:
    return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], context: str, hint: str = "") -> nn.Module:
    """Load ``state`` into ``model`` only if every weight name and shape matches.

    Args:
        model: the freshly built network.
        state: its weights as saved (wrapper prefixes already removed).
        context: the start of the error message (which file, which architecture).
        hint: a likely cause, appended to the message.

    Returns:
        ``model`` with the weights.

    Raises:
        CheckpointError: ``"<context>: N missing weights (...), N unexpected weights (...), N weights of another
            shape (...)"``.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    parts = [f"{len(missing)} missing weights (e.g. {_few(missing)})" if missing else "",
             f"{len(unexpected)} unexpected weights (e.g. {_few(unexpected)})" if unexpected else "",
             f"{len(shapes)} weights of another shape (shape mismatches, checkpoint vs model: {_few(shapes)})"
             if shapes else ""]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{context}: " + "; ".join(p for p in parts if p) + (f" — {hint}" if hint else ""))
    model.load_state_dict(dict(state), strict=True)
    return model


def _transunet_pretrained(model: nn.Module, path: str) -> Any:
    return model.load_pretrained(path)


def _img_size_is_patch(patch_size: list[int]) -> dict[str, Any]:
    return {"img_size": list(patch_size)}  # UNETR's position embedding is fixed to the training patch


def _recorded_unet(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The U-Nets' recorded defaults: ``final_upsampler`` (the name the network resolves it to for the config's
    upsampler) and, for ReSFU, its widths (``upsampler_kwargs``: :data:`~resfu_med.networks.guided_up.UNET_RESFU_WIDTHS`
    filling the widths the config does not set)."""
    from resfu_med.networks.guided_up import UNET_RESFU_WIDTHS, configured_upsampler, final_step_upsampler

    name = configured_upsampler(kwargs)
    out: dict[str, Any] = {"final_upsampler": final_step_upsampler(name, kwargs.get("final_upsampler"))}
    if name == "resfu":
        out["upsampler_kwargs"] = dict(UNET_RESFU_WIDTHS)
    return out


def _lacks_recorded(kwargs: Mapping[str, Any], recorded: Mapping[str, Any]) -> bool:
    """Whether ``kwargs`` lack a recorded key, or a key of a recorded mapping (ReSFU's widths in
    ``upsampler_kwargs``)."""
    for key, value in recorded.items():
        have = kwargs.get(key)
        if key not in kwargs or (isinstance(value, Mapping) and not (isinstance(have, Mapping) and set(value) <= set(have))):
            return True
    return False


def _register_builtins() -> None:
    from resfu_med.networks.basic_unet import BasicUNet
    from resfu_med.networks.guided_up import legacy_unet_kwargs
    from resfu_med.networks.transunet import TransUNet, legacy_transunet_kwargs

    register_model("transunet", TransUNet, description="TransUNet R50-ViT-B/16, 2D slices (the paper's network)",
                   classes_key="num_classes", upsampler_key="upsampler",
                   img_size_key="img_size", target="resfu_med.networks.TransUNet", pretrained=_transunet_pretrained,
                   min_img_size=16, recorded={"final_upsampler": "bilinear"}, legacy_kwargs=legacy_transunet_kwargs)
    # BasicUNet halves its input 4 times: 3D patches are multiples of 16; below 32 its deepest 2D feature is 1x1,
    # which instance norm cannot train on.
    unet = {"classes_key": "out_channels", "upsampler_key": "upsampler", "in_channels_key": "in_channels",
            "target": "resfu_med.networks.BasicUNet", "recorded": _recorded_unet,
            "legacy_kwargs": legacy_unet_kwargs(("upcat_1.",))}
    register_model("unet", BasicUNet, description="MONAI BasicUNet, 2D slices (small and CPU-friendly)",
                   spatial_dims=2, fixed={"spatial_dims": 2}, min_img_size=32, **unet)
    register_model("unet3d", BasicUNet, description="MONAI BasicUNet, 3D patches", spatial_dims=3,
                   fixed={"spatial_dims": 3}, patch_divisor=16, **unet)
    # MONAI's 3D networks with registry upsamplers (docs/networks.md). DynUNet's kernels and strides default to
    # nnU-Net's plan for the patch; SwinUNETR halves 5 times, UNETR's ViT takes 16-voxel patches.
    from resfu_med.networks.dynunet import DynUNet, dynunet_plan
    from resfu_med.networks.swin_unetr import SwinUNETR
    from resfu_med.networks.unetr import UNETR

    monai3d = {"classes_key": "out_channels", "upsampler_key": "upsampler", "in_channels_key": "in_channels",
               "spatial_dims": 3, "fixed": {"spatial_dims": 3}, "recorded": _recorded_unet}
    # legacy_kwargs: the module path of each network's last (full-resolution) decoder step
    register_model("dynunet", DynUNet, description="MONAI DynUNet with nnU-Net's plan for the patch, 3D patches",
                   target="resfu_med.networks.DynUNet", patch_divisor=16, patch_kwargs=dynunet_plan,
                   legacy_kwargs=legacy_unet_kwargs(("skip_layers.upsample.",)), **monai3d)
    register_model("swinunetr", SwinUNETR, description="MONAI SwinUNETR (Swin transformer encoder), 3D patches",
                   target="resfu_med.networks.SwinUNETR", patch_divisor=32,
                   legacy_kwargs=legacy_unet_kwargs(("decoder1.",)), **monai3d)
    register_model("unetr", UNETR, description="MONAI UNETR (ViT encoder), 3D patches",
                   target="resfu_med.networks.UNETR", patch_divisor=16, patch_kwargs=_img_size_is_patch,
                   legacy_kwargs=legacy_unet_kwargs(("decoder2.",)), **monai3d)


_register_builtins()
