"""Read a resfu-med checkpoint and rebuild its network the way a bundle does (``ConfigParser`` on ``network_def``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from resfu_med.bundle.configs import spatial_dims_of
from resfu_med.errors import CheckpointError

__all__ = ["read_checkpoint", "build_network", "default_roi_size", "example_input"]

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
    source = str(path)
    if not Path(path).is_file():
        raise CheckpointError(f"{source}: checkpoint file not found")
    ckpt = _load_checkpoint(path)
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


def _load_checkpoint(path: str | os.PathLike) -> Any:
    try:
        from resfu_med.engine.checkpoint import load_checkpoint
    except ImportError:  # TEMPORARY until the engine layer lands on main
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"{path}: unreadable checkpoint ({err})".splitlines()[0]) from None
    return load_checkpoint(path)


def build_network(net_def: dict[str, Any], state: dict[str, torch.Tensor] | None = None,
                  source: str = "checkpoint") -> torch.nn.Module:
    """Instantiate ``network_def`` with MONAI's ``ConfigParser`` (as the bundle will) and load ``state`` strictly.

    Raises:
        CheckpointError: the architecture cannot be built, or the weights belong to another architecture (names the
            missing, unexpected and mis-shaped parameters).
    """
    from monai.bundle import ConfigParser

    target = net_def.get("_target_")
    try:
        net = ConfigParser({"network_def": net_def}).get_parsed_content("network_def")
    except Exception as err:  # noqa: BLE001 - any failure to build is the checkpoint's config
        raise CheckpointError(f"{source}: cannot build {target} from the checkpoint's config: {err}".splitlines()[0]) from None
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


def default_roi_size(config: dict[str, Any]) -> list[int]:
    """The patch the inferer feeds: ``img_size`` squared for 2D models, ``roi_size`` (or ``img_size`` cubed) for 3D."""
    data = config["data"]
    dims = spatial_dims_of(config["model"])
    if dims == 3 and data.get("roi_size"):
        return [int(s) for s in data["roi_size"]]
    size = int(data.get("img_size") or config["model"].get("kwargs", {}).get("img_size") or 224)
    return [size] * dims


def example_input(config: dict[str, Any], roi_size: list[int] | None = None) -> torch.Tensor:
    """A fixed pseudo-random ``(1, 1, *roi)`` batch in the model's input range, for checking exports."""
    roi = list(roi_size) if roi_size else default_roi_size(config)
    return torch.rand(1, 1, *roi, generator=torch.Generator().manual_seed(0))
