"""Preparing a training run: complete the config from the dataset, check the run folder.

Kept apart from the loop (:mod:`resfu_med.engine.trainer`) so the command line can fail fast, with one clear line,
before any model is built.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from resfu_med import __version__
from resfu_med.atomic import atomic_write_json
from resfu_med.engine.config import OPTIONS
from resfu_med.errors import InputError
from resfu_med.outputs import MARKER, claim_output
from resfu_med.networks.dynunet import dynunet_plan
from resfu_med.networks.model_registry import get_model_spec, model_kwargs

__all__ = ["native_img_size", "complete_config", "prepare_run_dir", "resume_runtime", "RUN_FILES", "RUNTIME_KEYS"]

#: What a training run writes into its folder (``--overwrite`` removes exactly these).
RUN_FILES = ("last.pt", "best.pt", "config.json", "history.json", "train.log", "progress.png", "tb")

#: Config keys that may change when a run is resumed (they change where or how fast it runs, not its result): the
#: schema's options declared ``runtime``.
RUNTIME_KEYS = tuple(key for key, opt in OPTIONS.items() if opt.runtime)


def complete_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Fill in the dataset facts (``data.num_classes``, ``label_names``, ``intensity``, ``modality``, ``root``) and
    the network's full constructor arguments (``model.kwargs``).

    The demo dataset is generated on first use (:func:`resfu_med.data.ensure_demo_data`). Facts already present in
    ``cfg["data"]`` (a custom dataset passed to the trainer directly) are kept.

    Raises:
        InputError: the data root is missing or does not exist; the dataset or model name is unknown; a 3D model's
            ``data.patch_size`` is not three multiples of 16.
    """
    data = cfg["data"]
    name = data["dataset"]
    spec = get_model_spec(cfg["model"]["name"])
    if spec.spatial_dims == 3:
        from resfu_med.data import check_patch_size

        try:  # the network's total downsampling
            data["patch_size"] = list(check_patch_size(data.get("patch_size") or (), divisor=spec.patch_divisor))
        except ValueError as err:
            raise InputError(f"--patch-size: {err}") from None
    if "num_classes" not in data:
        root = data.get("root")
        if root is None and name != "demo":
            raise InputError(f"--data-root is required for dataset {name!r} (the folder with its prepared data)")
        if root is not None and not Path(root).exists():
            raise InputError(f"data root {root} does not exist")
        if root is None:
            from resfu_med.data import ensure_demo_data

            root = str(ensure_demo_data())
        from resfu_med.data import dataset_info

        info = dataset_info(name, root)
        data.update(
            root=str(Path(info.root) if getattr(info, "root", None) else Path(root)),
            num_classes=int(info.num_classes),
            label_names=list(info.label_names),
            intensity=info.intensity,
            modality=info.modality,
        )
        for key in ("label_values", "raw_label_values"):  # the user's label values travel with the checkpoint
            if getattr(info, key, None) is not None:
                data[key] = [int(v) for v in getattr(info, key)]
        if getattr(info, "ignore_index", None) is not None:  # nnU-Net "ignore": not trained, not predicted, not scored
            data["ignore_index"] = int(info.ignore_index)
        from resfu_med.data import read_plans

        plans = read_plans(data["root"])  # the dataset's fingerprint and plans (plans.json), kept in every checkpoint
        if plans is not None:
            cfg["plan"] = plans
    names = data.get("class_names")
    if names is not None:
        if len(names) != int(data["num_classes"]) - 1 or not all(isinstance(n, str) and n for n in names):
            raise InputError(f"--class-names: {len(names)} name(s) given, the dataset has {int(data['num_classes']) - 1} "
                             f"foreground classes (now named {', '.join(data.get('label_names') or [])})")
        data["label_names"] = list(names)
    if spec.spatial_dims == 2 and data.get("pipeline") == "plan":  # the plan fixes the patch (img_size) and spacing
        if data.get("plan") is None:  # the 2D plan this model trains with (inference applies exactly it)
            data["plan"] = dict(_run_plans(cfg)["plans"]["2d"])
            if spec.name == "transunet":  # its positional embedding needs a square input: the larger side
                data["plan"]["patch_size"] = [max(data["plan"]["patch_size"])] * 2
        data["img_size"] = int(max(data["plan"]["patch_size"]))
    if spec.spatial_dims == 3 and data.get("pipeline") == "plan" and data.get("plan") is None:
        # 3D: volumes resampled to the 3D plan's spacing; the patch stays --patch-size (data.patch_size)
        spacing = list(_run_plans(cfg)["plans"]["3d"]["spacing"])
        data["plan"] = {"spacing": spacing, "patch_size": list(data["patch_size"])}
    if data.get("img_size") is None:
        data["img_size"] = native_img_size(name, data.get("root"))
    model = cfg["model"]
    if spec.spatial_dims == 2 and int(data["img_size"]) < spec.min_img_size:
        raise InputError(f"--img-size {data['img_size']} is too small for model {spec.name!r}: it must be at least "
                         f"{spec.min_img_size}")
    given = set(model.get("kwargs") or {})
    model["kwargs"] = model_kwargs(model["name"], int(data["num_classes"]), int(data["img_size"]),
                                   model.get("upsampler"), model.get("kwargs"),
                                   patch_size=data["patch_size"] if spec.spatial_dims == 3 else None)
    plan3d = ((cfg.get("plan") or {}).get("plans") or {}).get("3d")
    if spec.patch_kwargs is dynunet_plan and plan3d and not given & {"kernel_size", "strides", "upsample_kernel_size"}:
        # DynUNet's kernels and strides from the patch at the dataset's planned spacing (anisotropic data: the coarse
        # axis gets 1-voxel kernels and is halved later), not the isotropic default
        model["kwargs"].update(dynunet_plan(data["patch_size"], plan3d["spacing"]))
    return cfg


def _run_plans(cfg: dict[str, Any]) -> dict[str, Any]:
    """The dataset's plans for a plan-pipeline run, recorded in ``cfg["plan"]`` (so every checkpoint carries the
    fingerprint and plans it was trained with, also for a raw root or a dataset without ``plans.json``)."""
    if not cfg.get("plan"):
        cfg["plan"] = _plans_in_memory(cfg["data"]["dataset"], cfg["data"]["root"])
    return cfg["plan"]


def _plans_in_memory(dataset: str, root: str) -> dict[str, Any]:
    """The plans of a dataset given as a raw folder (its prepared copy's ``plans.json``) or without ``plans.json``
    (the demo, a folder prepared before plans existed, TransUNet's release: made from its training cases in memory,
    the input folder is never written)."""
    from resfu_med.data import get_dataset, read_plans
    from resfu_med.data.layout import read_dataset_json
    from resfu_med.data.plans import case_fingerprint, make_plans

    ds = get_dataset(dataset, root, "train", volumes=True)  # a raw folder: the prepared copy (ds.root)
    prepared = getattr(ds, "root", root)
    plans = read_plans(prepared)
    if plans is not None:
        return plans
    meta = read_dataset_json(prepared) or {}
    cases = meta.get("cases") or {}
    fps = []
    for i in range(len(ds)):
        item = ds[i]
        spacing = (cases.get(str(item.get("case"))) or {}).get("spacing") or item.get("spacing") or (1.0, 1.0, 1.0)
        fps.append(case_fingerprint(np.asarray(item["image"]), np.asarray(item["label"]), spacing))
    return make_plans(fps, meta.get("label_names"), meta.get("modality"))


def native_img_size(dataset: str, root: str | None, cap: int = 128) -> int:
    """The training slices' own size (the larger side) rounded up to a multiple of 16, between 32 and ``cap``.

    Reads one training slice through :func:`resfu_med.data.get_dataset` (which prepares a raw folder on first use,
    as training would).
    """
    from resfu_med.data import get_dataset

    side = max(np.asarray(get_dataset(dataset, root, "train")[0]["image"]).shape[-2:])
    return int(min(cap, max(32, -(-int(side) // 16) * 16)))  # BasicUNet needs at least 32 (4 halvings)


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, create: bool = True,
                    inputs: Iterable[str | Path | None] = ()) -> None:
    """Check the run folder and, with ``create``, clear its old run files (``overwrite``) and create it.

    Call it once with ``create=False`` before any slow work (it has no side effects then) and once with
    ``create=True`` when the config is known to be good, so a bad config never costs the previous run.

    ``inputs`` (the data root) may not be, contain or hold the run folder (:func:`resfu_med.outputs.claim_output`).

    Raises:
        InputError: the folder holds a previous run and neither ``resume`` nor ``overwrite`` is set; ``resume`` with
            no ``last.pt``; the folder cannot be created or written; it is, is inside or contains an input folder.
    """
    # Inputs and writability; whether an existing folder may be used is decided by --resume / --overwrite below.
    claim_output(run_dir, "train", inputs=inputs, reuse=True)
    if resume:
        if not (run_dir / "last.pt").is_file():
            raise InputError(f"nothing to resume: {run_dir / 'last.pt'} not found")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"output {run_dir} exists and is not a folder")
    if run_dir.is_dir() and any(p.name != MARKER for p in run_dir.iterdir()):
        if not overwrite:
            raise InputError(
                f"output folder {run_dir} already exists and is not empty; pass --resume to continue its run or "
                "--overwrite to start over"
            )
    if not create:
        existing = next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists())
        if not os.access(existing, os.W_OK):
            raise InputError(f"output folder {run_dir} is not writable ({existing} is read-only)")
        return
    if run_dir.is_dir() and overwrite:
        for name in RUN_FILES:
            p = run_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / MARKER, {"command": "train", "version": __version__})
    except OSError as err:
        raise InputError(f"output folder {run_dir} is not writable: {err.strerror or err}") from err


def resume_runtime(saved: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The resume policy: settings given when resuming may change only :data:`RUNTIME_KEYS`; any other must agree
    with the saved run's config.

    Args:
        saved: the run's config (from its ``last.pt``).
        overrides: the nested settings given now (the flags).

    Returns:
        The runtime changes (dotted keys); ``train.max_iters`` and ``train.time_budget`` are reset (the old stop points
        no longer apply).

    Raises:
        InputError: a non-runtime setting differs from the saved run (names it and both values).
    """
    from resfu_med.engine.config import flatten

    runtime: dict[str, Any] = {"train.max_iters": None, "train.time_budget": None}
    flat_saved = flatten(saved)
    for key, value in flatten(overrides).items():
        if key in RUNTIME_KEYS:
            runtime[key] = value
        elif flat_saved.get(key) != value:
            raise InputError(f"{key} cannot change when resuming (the run used {flat_saved.get(key)!r}, got "
                             f"{value!r}); start a new run with --overwrite instead")
    return runtime
