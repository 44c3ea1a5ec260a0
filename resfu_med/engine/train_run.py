"""One training run from command-line settings: validation, run-folder policy, resume policy, DDP set-up and the loop.

``resfu-med train`` parses its flags into config overrides and calls :func:`run_training`; everything else — which
flags may change on ``--resume``, rank 0 preparing the run folder and the config and broadcasting them to the other
DDP processes, building the :class:`~resfu_med.engine.trainer.Trainer` — happens here, so it is the same whichever
front end starts a run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NamedTuple

import torch

from resfu_med.engine import distributed as ddp
from resfu_med.engine.checkpoint import load_checkpoint
from resfu_med.engine.config import DEFAULTS, describe_sources, merge_config, resolve_layers
from resfu_med.engine.device import resolve_device
from resfu_med.engine.preparation import complete_config, prepare_run_dir, resume_runtime
from resfu_med.errors import InputError
from resfu_med.outputs import discard_unused, missing_folders
from resfu_med.networks.model_registry import spatial_dims_of

__all__ = ["TrainingRun", "run_training"]


class TrainingRun(NamedTuple):
    """What :func:`run_training` returns on the main process: the loop's summary, the resolved config, the folder."""

    summary: dict[str, Any]
    config: dict[str, Any]
    run_dir: Path


def _setup(run_dir: Path, overrides: dict[str, Any], config_file: str | None, resume: bool,
           overwrite: bool, preset: str | None = None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Rank 0's part: check and prepare the run folder; the new run's config, or the runtime changes of a resume."""
    prepare_run_dir(run_dir, resume=resume, overwrite=overwrite, create=False)
    if resume:
        return None, resume_runtime(load_checkpoint(run_dir / "last.pt")["config"], overrides)
    cfg, sources = resolve_layers(None, config_file, overrides, preset=preset)
    cfg = complete_config(cfg)
    cfg["sources"] = sources  # recorded in config.json and every checkpoint
    if sources:
        print("resfu-med train: settings other than the defaults (and the layer that set each):\n"
              + describe_sources(cfg, sources), file=sys.stderr)
    prepare_run_dir(run_dir, resume=False, overwrite=overwrite, create=True, inputs=[cfg["data"].get("root")])
    return cfg, None


def _share(dist: ddp.DistInfo, result: tuple | None, err: Exception | None) -> tuple:
    """Rank 0's ``(config, runtime)`` on every process; rank 0's error raised on all of them."""
    if not dist.enabled:
        if err is not None:
            raise err
        return result
    import torch.distributed as tdist

    box = [None if err else result]
    tdist.broadcast_object_list(box, src=0)
    if box[0] is None:
        if err is not None:
            raise err
        raise InputError("rank 0 failed to set up the run (see its message)")
    return box[0]


def run_training(overrides: dict[str, Any], output: str | Path | None = None, config_file: str | None = None,
                 resume: bool = False, overwrite: bool = False, progress: bool = True,
                 preset: str | None = None) -> TrainingRun | None:
    """Train (or resume) one run, on one process or as one process of a ``torchrun`` DDP job.

    Args:
        overrides: nested config overrides (the flags), e.g. ``{"data": {"dataset": "demo"}}``.
        output: the run folder; default ``runs/<dataset>``.
        config_file: a YAML/JSON config file (not with ``resume``).
        resume: continue the run in ``output`` from its ``last.pt``; only runtime keys
            (:data:`~resfu_med.engine.preparation.RUNTIME_KEYS`) may differ from the saved run.
        overwrite: replace the run files of an existing ``output``.
        progress: show the progress bar.
        preset: a training recipe (``"quick"``, :data:`~resfu_med.engine.config.RECIPES`; not with ``resume``).

    Returns:
        A :class:`TrainingRun` on the main process, ``None`` on the others.

    Raises:
        InputError: contradictory or invalid settings, an output folder the policy refuses, a resume with changed
            settings.
    """
    dataset = overrides.get("data", {}).get("dataset")
    if output is None and dataset is None:
        raise InputError("--output is required (or --dataset, for the default runs/<dataset>)")
    run_dir = Path(output if output is not None else f"runs/{dataset}")
    if resume and overwrite:
        raise InputError("--resume and --overwrite contradict each other; pick one")
    if resume and (config_file or preset):
        raise InputError(f"{'--config' if config_file else '--preset'} cannot be combined with --resume "
                         "(the run's config is fixed)")
    merge_config(DEFAULTS, overrides, source="flags")  # fail fast on bad flag values

    from resfu_med.engine.trainer import Trainer

    device = resolve_device(overrides.get("device", "auto"), local_rank=0)
    dist = ddp.init_distributed(device.type)
    try:
        if dist.enabled and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
        result, err = None, None
        # what creating the run folder adds: removed again if the run fails before it starts
        created = missing_folders(run_dir) if dist.is_main and not resume else []
        if dist.is_main:
            try:
                result = _setup(run_dir, overrides, config_file, resume, overwrite, preset)
            except Exception as e:  # re-raised by _share after telling the other ranks
                err = e
        cfg, runtime = _share(dist, result, err)
        try:
            trainer = Trainer(cfg, run_dir, resume=resume, runtime=runtime, device=device, dist=dist,
                              progress=progress)
        except BaseException:
            if dist.is_main and not resume:
                discard_unused(run_dir, created)  # a run that never started leaves no empty folder
            raise
        if dist.is_main:
            c = trainer.cfg
            unit = "volumes" if spatial_dims_of(c["model"]) == 3 else "slices"
            print(f"resfu-med train: {'resuming' if resume else 'training'} {c['model']['name']} "
                  f"({c['model'].get('upsampler')}) on {c['data']['dataset']} ({len(trainer.train_data)} {unit}, "
                  f"{c['data']['num_classes']} classes), {trainer.max_iterations} iterations ({c['train']['epochs']} "
                  f"epochs of {trainer.iters_per_epoch}), device {device}, {dist.world_size} process(es) -> {run_dir}", file=sys.stderr)
        summary = trainer.fit()
        return TrainingRun(summary, trainer.cfg, run_dir) if dist.is_main else None
    finally:
        ddp.destroy_distributed()
