"""Read a resfu-med checkpoint and rebuild its network the way a bundle does (``ConfigParser`` on ``network_def``)."""

from __future__ import annotations

import os
from typing import Any

import torch

from resfu_med.errors import CheckpointError
from resfu_med.networks.model_registry import get_model_spec, load_state_strict

__all__ = ["read_checkpoint", "build_network", "network_from_def", "default_roi_size", "example_input"]

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
    """Instantiate a ``network_def`` item without MONAI's ``ConfigParser``: its ``_target_`` must be the target of a
    registered model (:mod:`resfu_med.networks.model_registry`) and every other entry plain data its constructor
    accepts.

    With plain arguments this builds exactly what ``ConfigParser`` would, but nothing in the file is evaluated.

    Raises:
        CheckpointError: another ``_target_``, an expression, an unknown argument, or a constructor failure.
    """
    from resfu_med.networks.model_registry import MODELS
    from resfu_med.safety import check_kwargs

    if not isinstance(net_def, dict):
        raise CheckpointError(f"{source}: network_def must be a mapping, got {type(net_def).__name__}")
    target = net_def.get("_target_")
    specs = {spec.target: spec for spec in MODELS.values()}
    if target not in specs:
        raise CheckpointError(f"{source}: config value network_def._target_ is {target!r}, not a registered "
                              f"network ({', '.join(sorted(specs))}); refusing")
    spec = specs[target]
    kwargs = {k: v for k, v in net_def.items() if k != "_target_"}
    check_kwargs(kwargs, spec.accepted_keys, target, source, "network_def", error=CheckpointError)
    try:
        return spec.constructor(**kwargs)
    except Exception as err:  # noqa: BLE001 - any failure to build is the file's config
        raise CheckpointError(f"{source}: cannot build {target} from its config: {err}".splitlines()[0]) from None


def build_network(net_def: dict[str, Any], state: dict[str, torch.Tensor] | None = None,
                  source: str = "checkpoint") -> torch.nn.Module:
    """Instantiate ``network_def`` (:func:`network_from_def`: what the bundle's ``ConfigParser`` builds, from
    validated values) and load ``state`` strictly.

    Raises:
        CheckpointError: the architecture cannot be built or is not plain data, or the weights belong to another
            architecture (names the missing, unexpected and mis-shaped parameters).
    """
    target = net_def.get("_target_") if isinstance(net_def, dict) else None
    net = network_from_def(net_def, source)
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
