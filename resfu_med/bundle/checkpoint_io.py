"""A checkpoint's network for a bundle (through the engine's one checkpoint→model path), and a bundle's ``network_def``
built without MONAI's ``ConfigParser``."""

from __future__ import annotations

import os
from typing import Any

import torch

from resfu_med.errors import CheckpointError
from resfu_med.networks.model_registry import MODELS, get_model_spec, load_state_strict, saved_model_config

__all__ = ["load_for_bundle", "read_checkpoint", "build_network", "network_from_def", "default_roi_size",
           "example_input"]


def load_for_bundle(path: str | os.PathLike) -> Any:
    """A checkpoint's trained network and config (:func:`resfu_med.engine.checkpoint.load_trained`), checked for what a
    bundle also needs (``config.data.intensity``, the normalisation the bundle reproduces).

    Returns:
        A :class:`~resfu_med.engine.checkpoint.TrainedModel`.

    Raises:
        CheckpointError: what :func:`~resfu_med.engine.checkpoint.load_trained` raises, or no ``config.data.intensity``.
    """
    from resfu_med.engine.checkpoint import load_trained  # the one checkpoint→model path

    trained = load_trained(path)
    if "intensity" not in trained.config["data"]:
        raise CheckpointError(f"{path}: checkpoint config lacks 'config.data.intensity'")
    return trained


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """``(state_dict, config, info)`` of a training checkpoint: the weights as the rebuilt network holds them (wrapper
    prefixes removed), the run config and ``{"epoch", "iteration", "best_metric"}`` (:func:`load_for_bundle`)."""
    trained = load_for_bundle(path)
    return trained.model.state_dict(), trained.config, trained.info


def network_from_def(net_def: Any, source: str = "checkpoint") -> torch.nn.Module:
    """Instantiate a ``network_def`` item without MONAI's ``ConfigParser``: its ``_target_`` must be the target of a
    registered model (:mod:`resfu_med.networks.model_registry`) and every other entry plain data its constructor
    accepts.

    With plain arguments this builds exactly what ``ConfigParser`` would, but nothing in the file is evaluated.

    Raises:
        CheckpointError: another ``_target_``, an expression, an unknown argument, or a constructor failure.
    """
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
    specs = {spec.target: spec for spec in MODELS.values()}
    if state is not None and target in specs:  # a bundle of an earlier release keeps its architecture
        kwargs = {k: v for k, v in net_def.items() if k != "_target_"}
        net_def = {"_target_": target, **saved_model_config({"name": specs[target].name, "kwargs": kwargs}, state)["kwargs"]}
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
