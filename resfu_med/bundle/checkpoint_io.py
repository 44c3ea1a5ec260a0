"""Read a resfu-med checkpoint and rebuild its network the way a bundle does (``ConfigParser`` on ``network_def``)."""

from __future__ import annotations

import os
from typing import Any

import torch

from resfu_med.errors import CheckpointError
from resfu_med.networks.model_registry import get_model_spec, load_state_strict

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
    load_state_strict(net, state, f"{source}: weights do not fit {target}",
                      hint="the checkpoint is from another architecture or its config.model was edited")
    return net.eval()


def default_roi_size(config: dict[str, Any]) -> list[int]:
    """The window ``resfu-med infer`` uses by default (:meth:`resfu_med.networks.ModelSpec.default_roi`)."""
    return get_model_spec(config["model"].get("name")).default_roi(config["data"])


def example_input(config: dict[str, Any], roi_size: list[int] | None = None) -> torch.Tensor:
    """A fixed pseudo-random ``(1, 1, *roi)`` batch in the model's input range, for checking exports."""
    roi = list(roi_size) if roi_size else default_roi_size(config)
    return torch.rand(1, 1, *roi, generator=torch.Generator().manual_seed(0))
