"""Checkpoints: atomic save, validated load, and the one path from a checkpoint file to a trained model.

Every command that reads a trained model — ``evaluate``, ``infer``, ``export``, ``export-bundle`` (and, for a bundle's
``model.pt``, ``verify-bundle``) — and the Python API go through :func:`load_trained` (or its short forms
:func:`load_model` and :func:`resfu_med.bundle.read_checkpoint`): the file is read once (:func:`read_torch_file`,
``weights_only=True``), validated once (:func:`load_checkpoint`: format tag, plain-data config, a registered model
whose arguments its constructor takes), the wrapper prefixes of DistributedDataParallel (``module.``) and
``torch.compile`` (``_orig_mod.``) are removed once (:func:`unwrap_state_dict`), and the network is built by the model
registry and receives the weights strictly (every name and shape must match).

A checkpoint is a dict saved with ``torch.save`` (through :mod:`resfu_med.atomic`, so a kill while saving never
leaves a torn file under the final name) with the keys of :data:`REQUIRED_KEYS`:
``model`` (state dict), ``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``iteration``, ``rng``,
``best_metric`` and ``config`` (the resolved run config; ``config["model"] = {"name", "kwargs"}``,
``config["data"] = {"dataset", "num_classes", "label_names", "intensity", "img_size", "modality", ...}``), plus
``format``/``version`` and the training position (``position``). RNG states are stored as tensors and plain lists so
the file loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import random
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from resfu_med.atomic import atomic_torch_save
from resfu_med.errors import CheckpointError, InputError
from resfu_med.safety import check_kwargs, check_plain_data

__all__ = [
    "FORMAT",
    "VERSION",
    "REQUIRED_KEYS",
    "save_checkpoint",
    "load_checkpoint",
    "read_torch_file",
    "unwrap_state_dict",
    "WRAPPER_PREFIXES",
    "TrainedModel",
    "load_trained",
    "load_model",
    "capture_rng",
    "restore_rng",
    "check_model_config",
]

FORMAT = "resfu-med-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "iteration", "rng", "best_metric", "config")

#: Prefixes a wrapped model adds to every weight name: DistributedDataParallel / DataParallel, ``torch.compile``.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def capture_rng() -> dict[str, Any]:
    """The torch, CUDA, numpy and Python RNG states, in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss_next": py_state[2]},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore the RNG states captured by :func:`capture_rng` (CUDA states only where the device count matches)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temporary file + rename).

    Args:
        path: destination, e.g. ``runs/demo/last.pt``.
        state: a dict with at least :data:`REQUIRED_KEYS`; ``format`` and ``version`` are added.

    Raises:
        ValueError: ``state`` lacks required keys.
    """
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"state: checkpoint lacks keys {missing}")
    atomic_torch_save({"format": FORMAT, "version": VERSION, **state}, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the checkpoint file.
        map_location: where tensors are loaded.

    Returns:
        The checkpoint dict.

    Raises:
        CheckpointError: the file is missing, unreadable/corrupt/truncated, or not a resfu-med checkpoint; the message
            names the file.
    """
    path = Path(path)
    ckpt = read_torch_file(path, "checkpoint", map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a resfu-med checkpoint (no format tag {FORMAT!r})")
    if int(ckpt.get("version", 0)) > VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {ckpt.get('version')}; this resfu-med reads up to {VERSION}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    if isinstance(ckpt["config"], dict):  # a checkpoint of an earlier release: today's keys
        from resfu_med.engine.config import migrate_config

        ckpt["config"] = migrate_config(ckpt["config"])
    cfg = ckpt["config"]
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or "name" not in cfg["model"]:
        raise CheckpointError(f"checkpoint {path} has no model description (config['model'])")
    # A shared checkpoint is data: its config reaches constructors and MONAI bundle configs only as plain values and
    # the model's own arguments.
    check_plain_data(cfg, str(path), error=CheckpointError)
    check_model_config(cfg["model"], str(path), error=CheckpointError)
    return ckpt


def read_torch_file(path: str | Path, what: str = "checkpoint", map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain values only, never code.

    Raises:
        CheckpointError: ``"<what> <path> not found"``, not a file, or unreadable, in the user's terms (never the
            advice to load with ``weights_only=False``).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} not found")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is not a file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle/zip errors of all kinds mean the same thing to the user
        raise CheckpointError(f"{what} {path} {_unreadable_reason(path, err)}") from err


def unwrap_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` without the prefixes of the wrappers it was saved from (:data:`WRAPPER_PREFIXES`, in any order and
    nesting, e.g. ``_orig_mod.module.`` from ``torch.compile(DistributedDataParallel(net))``): a prefix is removed
    only when every key has it."""
    out = dict(state)
    while out:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in out)), None)
        if prefix is None:
            break
        out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def check_model_config(model_cfg: Any, source: str = "model config", error: type[Exception] = InputError) -> None:
    """Check a ``{"name", "kwargs"}`` model description read from a file before anything is built from it.

    The name must be registered (:mod:`resfu_med.networks.model_registry`), ``kwargs`` plain data
    (:func:`resfu_med.safety.check_plain_data`) whose keys the model's constructor accepts.

    Raises:
        error: the message names ``source`` and the offending value (``model.kwargs.in_channels``).
    """
    from resfu_med.networks.model_registry import MODELS, model_names

    if not isinstance(model_cfg, dict):
        raise error(f"{source}: config value model must be a mapping, got {type(model_cfg).__name__}")
    check_plain_data(model_cfg, source, "model", error=error)
    spec = MODELS.get(model_cfg.get("name"))
    if spec is None:
        raise error(f"{source}: config value model.name is {model_cfg.get('name')!r}; known models: "
                    f"{', '.join(model_names())}")
    check_kwargs(model_cfg.get("kwargs") or {}, spec.accepted_keys, getattr(spec.constructor, "__name__", spec.name),
                 source, error=error)


def _unreadable_reason(path: Path, err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in the user's terms.

    torch's own message advises re-loading with ``weights_only=False``, which would run any code in the file; it is
    never passed on.
    """
    with open(path, "rb") as fh:
        head = fh.read(352)
    if head[:2] == b"\x1f\x8b" or head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] == b"n+2\x00":
        return "is a NIfTI image (or another gzip file), not a checkpoint"
    text = str(err)
    if not zipfile.is_zipfile(path):
        return "is corrupt or not a checkpoint (not a complete PyTorch archive: truncated, damaged or another format)"
    if "weights_only" in text.lower() or "weights only" in text.lower():
        return ("holds Python objects other than tensors and plain values; resfu-med reads checkpoints as data only "
                "and refuses it")
    detail = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"is corrupt or not a checkpoint ({detail[:200]})"


@dataclasses.dataclass
class TrainedModel:
    """A network rebuilt from a checkpoint by :func:`load_trained`.

    Attributes:
        model: the network with the trained weights, in eval mode.
        config: the run's resolved config (``config["model"]``, ``config["data"]``, ...).
        info: ``{"epoch", "iteration", "best_metric"}`` of the checkpoint.
        source: the checkpoint file, for messages.
    """

    model: nn.Module
    config: dict[str, Any]
    info: dict[str, Any]
    source: str


def load_trained(
    checkpoint_path: str | Path,
    device: str | torch.device = "cpu",
    *,
    num_classes: int | None = None,
    model_name: str | None = None,
) -> TrainedModel:
    """The one checkpoint → model path: read once, validate once, unwrap once, build by the registry, load strictly.

    Args:
        checkpoint_path: a ``last.pt``/``best.pt`` (or any checkpoint of :func:`save_checkpoint`), saved from a plain,
            DDP-wrapped or compiled model.
        device: where to put the model.
        num_classes: if given, the class count (incl. background) the caller expects, e.g. its dataset's; a
            checkpoint trained for another count raises.
        model_name: if given, the architecture the caller expects (``transunet``, ``unet``, ``unet3d``, ...).

    Returns:
        The network (eval mode, on ``device``), the run config and the training position.

    Raises:
        CheckpointError: unreadable checkpoint, a config without ``data.num_classes``, weights that do not match the
            recorded architecture, or a mismatch with the expected ``num_classes``/``model_name``; the message names
            the file and the mismatch.
    """
    from resfu_med.networks.model_registry import build_model, load_state_strict, num_classes_of, saved_model_config

    source = str(checkpoint_path)
    ckpt = load_checkpoint(checkpoint_path)
    config = ckpt["config"]
    mcfg = config["model"]
    if not isinstance(ckpt["model"], Mapping) or not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        raise CheckpointError(f"checkpoint {source}: 'model' is not a state dict of tensors")
    data = config.get("data")
    if not isinstance(data, dict) or "num_classes" not in data:
        raise CheckpointError(f"checkpoint {source}: its config has no data.num_classes (was it written by "
                              "resfu-med train?)")
    recorded = num_classes_of(mcfg)
    data_classes = data["num_classes"]
    if model_name is not None and mcfg["name"] != model_name:
        raise CheckpointError(f"checkpoint {source} holds a {mcfg['name']!r} model, expected {model_name!r}")
    if recorded is not None and data_classes is not None and recorded != int(data_classes):
        raise CheckpointError(f"checkpoint {source} is inconsistent: model has {recorded} classes, its dataset "
                              f"{data.get('dataset')!r} {data_classes}")
    have = recorded if recorded is not None else data_classes
    if num_classes is not None and have is not None and int(have) != int(num_classes):
        raise CheckpointError(f"checkpoint {source} was trained for {have} classes (dataset {data.get('dataset')!r}), "
                              f"expected {num_classes}")
    try:
        # a network saved by an earlier release keeps its architecture (e.g. TransUNet's four-step default)
        mcfg = config["model"] = saved_model_config(mcfg, unwrap_state_dict(ckpt["model"]))
        model = build_model(mcfg)
    except InputError as err:
        raise CheckpointError(f"checkpoint {source}: cannot rebuild its model: {err}") from err
    load_state_strict(model, unwrap_state_dict(ckpt["model"]),
                      f"checkpoint {source} does not match its {mcfg['name']!r} architecture",
                      hint="the checkpoint is from another architecture or its config.model was edited")
    model.to(device).eval()
    info = {k: ckpt.get(k) for k in ("epoch", "iteration", "best_metric")}
    return TrainedModel(model, config, info, source)


def load_model(
    checkpoint_path: str | Path,
    device: str | torch.device = "cpu",
    *,
    num_classes: int | None = None,
    model_name: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained network of a checkpoint: ``(model in eval mode on device, run config)``.

    The short form of :func:`load_trained` (same arguments, same errors).

    Example:
        >>> model, config = load_model("runs/demo/best.pt")
    """
    trained = load_trained(checkpoint_path, device, num_classes=num_classes, model_name=model_name)
    return trained.model, trained.config
