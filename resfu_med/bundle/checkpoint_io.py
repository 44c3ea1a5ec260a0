"""Read a resfu-med checkpoint and rebuild its network from ``network_def`` (validated plain data, never evaluated)."""

from __future__ import annotations

import os
from typing import Any

import torch

from resfu_med.bundle.configs import NETWORK_TARGETS, spatial_dims_of
from resfu_med.errors import CheckpointError

__all__ = ["read_checkpoint", "build_network", "network_from_def", "img_size_of", "default_roi_size", "example_input"]

_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / torch.compile wrappers


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Read a resfu-med training checkpoint.

    Args:
        path: a checkpoint written by ``resfu-med train``.

    Returns:
        ``(state_dict, config, info)`` — the model weights (wrapper prefixes removed), the run config and
        ``{"epoch", "iteration", "best_metric"}``.

    Raises:
        CheckpointError: unreadable file, or ``model`` / ``config.model`` / ``config.data`` missing.
    """
    from resfu_med.engine.checkpoint import load_checkpoint  # validates the file and its format tag

    source = str(path)
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{source}: not a resfu-med checkpoint (no 'model' state dict)")
    config = ckpt.get("config")
    for field in ("model", "data"):
        if not isinstance(config, dict) or not isinstance(config.get(field), dict):
            raise CheckpointError(f"{source}: checkpoint has no 'config.{field}' (was it written by resfu-med train?)")
    for field in ("num_classes", "intensity"):
        if field not in config["data"]:
            raise CheckpointError(f"{source}: checkpoint config lacks 'config.data.{field}'")
    state = dict(ckpt["model"])
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    info = {k: ckpt.get(k) for k in ("epoch", "iteration", "best_metric")}
    return state, config, info


def network_from_def(net_def: Any, source: str = "checkpoint") -> torch.nn.Module:
    """Instantiate a ``network_def`` item without MONAI's ``ConfigParser``: its ``_target_`` must be a resfu-med
    network (:data:`NETWORK_TARGETS`) and every other entry plain data the class's constructor accepts.

    With plain arguments this is exactly what ``ConfigParser`` builds, but nothing in the file is evaluated.

    Raises:
        CheckpointError: another ``_target_``, an expression, an unknown argument, or a constructor failure.
    """
    import importlib

    from resfu_med.safety import check_constructor_kwargs

    if not isinstance(net_def, dict):
        raise CheckpointError(f"{source}: network_def must be a mapping, got {type(net_def).__name__}")
    target = net_def.get("_target_")
    allowed = {t for t, _ in NETWORK_TARGETS.values()}
    if target not in allowed:
        raise CheckpointError(f"{source}: config value network_def._target_ is {target!r}, not a resfu-med network "
                              f"({', '.join(sorted(allowed))}); refusing")
    module, _, cls_name = target.rpartition(".")
    cls = getattr(importlib.import_module(module), cls_name)
    kwargs = {k: v for k, v in net_def.items() if k != "_target_"}
    check_constructor_kwargs(kwargs, cls, source, "network_def", error=CheckpointError)
    try:
        return cls(**kwargs)
    except Exception as err:  # noqa: BLE001 - any failure to build is the file's config
        raise CheckpointError(f"{source}: cannot build {target} from its config: {err}".splitlines()[0]) from None


def build_network(net_def: dict[str, Any], state: dict[str, torch.Tensor] | None = None,
                  source: str = "checkpoint") -> torch.nn.Module:
    """Instantiate ``network_def`` (:func:`network_from_def`, as the bundle's ``ConfigParser`` will) and load
    ``state`` strictly.

    Raises:
        CheckpointError: the architecture cannot be built or is not plain data, or the weights belong to another
            architecture (names the missing, unexpected and mis-shaped parameters).
    """
    target = net_def.get("_target_") if isinstance(net_def, dict) else None
    net = network_from_def(net_def, source)
    if state is None:
        return net.eval()
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def few(items: list[str]) -> str:
            return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")

        parts = [f"{len(missing)} missing ({few(missing)})" if missing else "",
                 f"{len(unexpected)} unexpected ({few(unexpected)})" if unexpected else "",
                 f"{len(shapes)} of another shape ({few(shapes)})" if shapes else ""]
        raise CheckpointError(
            f"{source}: weights do not fit {target}: " + "; ".join(p for p in parts if p)
            + " — the checkpoint is from another architecture or its config.model was edited"
        )
    net.load_state_dict(state, strict=True)
    return net.eval()


def img_size_of(config: dict[str, Any]) -> int:
    """The training slice size (``config.data.img_size``, 224 when absent as in ``resfu-med infer``)."""
    return int(config["data"].get("img_size") or 224)


def default_roi_size(config: dict[str, Any]) -> list[int]:
    """The window ``resfu-med infer`` uses by default: ``img_size`` squared for 2D models; for 3D models
    ``data.roi_size``, else ``data.patch_size``, else ``img_size`` cubed."""
    data = config["data"]
    if spatial_dims_of(config["model"]) == 2:
        return [img_size_of(config)] * 2
    window = data.get("roi_size", data.get("patch_size", img_size_of(config)))
    window = [int(window)] * 3 if isinstance(window, (int, float)) else [int(w) for w in window]
    return window * 3 if len(window) == 1 else window


def example_input(config: dict[str, Any], roi_size: list[int] | None = None) -> torch.Tensor:
    """A fixed pseudo-random ``(1, 1, *roi)`` batch in the model's input range, for checking exports."""
    roi = list(roi_size) if roi_size else default_roi_size(config)
    return torch.rand(1, 1, *roi, generator=torch.Generator().manual_seed(0))
