"""Train a segmentation network (TransUNet or U-Net with ReSFU upsampling) on 2D slices, or a 3D U-Net on patches.

Defaults reproduce the paper's protocol (TransUNet R50-ViT-B/16, 224x224 slices, batch 24, SGD lr 0.01 momentum 0.9
weight decay 1e-4, poly decay 0.9, 150 epochs, 0.5 CE + 0.5 Dice, seed 1234); `--dataset demo` switches to a small
ReSFU U-Net that trains on generated demo data in minutes on a CPU. Values come from, in increasing priority: the
defaults, the dataset preset, `--config FILE` (YAML/JSON) and the flags below. The run folder gets config.json,
last.pt, best.pt, history.json and TensorBoard events (tb/). `--model unet3d` trains a 3D BasicUNet (ReSFU in 3D)
on random `--patch-size` patches of the training volumes (RandCropByPosNegLabeld, `--patches-per-volume` per volume,
so a batch of B volumes is B x that many patches) and validates with 3D sliding windows. See docs/training.md.

examples:
  resfu-med train --dataset demo --output runs/demo
  resfu-med train --dataset synapse --data-root data/Synapse --pretrained R50+ViT-B_16.npz --output runs/synapse
  resfu-med train --dataset acdc --data-root data/ACDC --model unet --upsampler bilinear --epochs 100
  resfu-med train --dataset demo --output runs/smoke --max-iters 20 --overwrite
  resfu-med train --dataset demo --model unet3d --patch-size 32 64 64 --batch-size 1 --output runs/demo3d
  resfu-med train --resume --output runs/synapse          continue a stopped or killed run
  torchrun --nproc_per_node 2 -m resfu_med train --dataset synapse --data-root data/Synapse --output runs/ddp
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from resfu_med.cli._options import add_no_progress
from resfu_med.errors import InputError

__all__ = ["COMMAND", "add_arguments", "run", "flag_overrides"]

COMMAND = "train"

# flag destination → dotted config key
_FLAG_KEYS = {
    "dataset": "data.dataset",
    "data_root": "data.root",
    "model": "model.name",
    "upsampler": "model.upsampler",
    "pretrained": "model.pretrained",
    "epochs": "train.epochs",
    "max_iters": "train.max_iters",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "img_size": "data.img_size",
    "patch_size": "data.patch_size",
    "patches_per_volume": "data.patches_per_volume",
    "amp": "amp",
    "device": "device",
    "seed": "seed",
    "deterministic": "deterministic",
    "num_workers": "data.num_workers",
    "class_names": "data.class_names",
    "checkpoint_every": "train.checkpoint_every",
    "no_eval": "train.eval",
}


def _default(key: str) -> str:
    """``default: X`` (and ``; demo: Y`` where the demo preset differs) for a dotted config key."""
    from resfu_med.engine.config import DEFAULTS, PRESETS, flatten

    paper, demo = flatten(DEFAULTS).get(key), flatten(PRESETS["demo"]).get(key)
    return f"default: {paper}" + (f"; demo: {demo}" if demo is not None and demo != paper else "")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` options (absent flags leave the config untouched, hence ``SUPPRESS`` defaults)."""
    s = argparse.SUPPRESS
    g = parser.add_argument_group("data and model")
    g.add_argument("--dataset", default=s, metavar="NAME", help="a dataset of the data registry (docs/datasets.md); demo needs nothing else")
    g.add_argument("--data-root", default=s, metavar="DIR", help="prepared dataset folder (not needed for demo)")
    g.add_argument("--model", default=s, metavar="NAME", help=f"a network of the model registry, docs/networks.md ({_default('model.name')})")
    g.add_argument("--upsampler", default=s, metavar="NAME", help=f"decoder upsampler of the upsampler registry, docs/networks.md ({_default('model.upsampler')})")
    g.add_argument("--class-names", nargs="+", default=s, metavar="NAME",
                   help="names of the foreground classes 1..K-1 in label order, for a copy labelled in another order "
                        "than the dataset's default (stored in the checkpoint; evaluation tables use them)")
    g.add_argument("--pretrained", default=s, metavar="NPZ", help="R50+ViT-B_16.npz ImageNet-21k weights for transunet")
    g.add_argument("--img-size", type=int, default=s, metavar="N", help=f"slice size ({_default('data.img_size')})")
    g.add_argument("--patch-size", type=int, nargs=3, default=s, metavar=("Z", "Y", "X"),
                   help=f"3D models: training patch and inference window, multiples of 16 (swinunetr: 32) ({_default('data.patch_size')})")
    g.add_argument("--patches-per-volume", type=int, default=s, metavar="N",
                   help=f"3D models: patches drawn per volume and batch item ({_default('data.patches_per_volume')})")
    g.add_argument("--config", default=s, metavar="FILE", help="YAML/JSON file of config overrides (docs/training.md)")
    g = parser.add_argument_group("schedule")
    g.add_argument("--epochs", type=int, default=s, metavar="N", help=f"epochs ({_default('train.epochs')})")
    g.add_argument("--max-iters", type=int, default=s, metavar="N",
                   help="stop after N iterations in total, saving last.pt (the lr schedule still spans --epochs)")
    g.add_argument("--batch-size", type=int, default=s, metavar="N", help=f"global batch size ({_default('train.batch_size')})")
    g.add_argument("--lr", type=float, default=s, metavar="LR", help=f"base SGD learning rate ({_default('train.lr')})")
    g.add_argument("--seed", type=int, default=s, metavar="N", help=f"random seed ({_default('seed')})")
    g.add_argument("--deterministic", action="store_true", default=s,
                   help="deterministic algorithms (bit-identical reruns on CPU; slower on GPU)")
    g.add_argument("--no-eval", action="store_true", default=s,
                   help="skip validation during training (best.pt is then the final model)")
    g.add_argument("--checkpoint-every", type=int, default=s, metavar="N",
                   help=f"also save last.pt every N iterations, 0: at epoch ends only ({_default('train.checkpoint_every')})")
    g = parser.add_argument_group("run")
    g.add_argument("-o", "--output", default=s, metavar="DIR", help="run folder (default: runs/<dataset>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --output from its last.pt")
    g.add_argument("--overwrite", action="store_true", help="replace the run files of an existing --output folder")
    g.add_argument("--amp", default=s, metavar="MODE", help=f"mixed precision: none | bf16 | fp16 ({_default('amp')})")
    g.add_argument("--device", default=s, metavar="DEV", help=f"auto | cpu | cuda ({_default('device')})")
    g.add_argument("--num-workers", type=int, default=s, metavar="N", help=f"data loader workers ({_default('data.num_workers')})")
    add_no_progress(g)


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The nested config overrides given by flags (only flags actually passed)."""
    out: dict[str, Any] = {}
    for dest, key in _FLAG_KEYS.items():
        if not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        if dest == "no_eval":
            value = not value
        section, _, leaf = key.rpartition(".")
        (out.setdefault(section, {}) if section else out)[leaf] = value
    return out


def _resume_runtime(saved: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Split resume-time flags into allowed runtime changes; any other flag must agree with the saved run."""
    from resfu_med.engine.config import flatten
    from resfu_med.engine.preparation import RUNTIME_KEYS

    runtime: dict[str, Any] = {"train.max_iters": None}  # a new invocation: the old stop point no longer applies
    flat_saved = flatten(saved)
    for key, value in flatten(overrides).items():
        if key in RUNTIME_KEYS:
            runtime[key] = value
        elif flat_saved.get(key) != value:
            raise InputError(f"{key} cannot change when resuming (the run used {flat_saved.get(key)!r}, got "
                             f"{value!r}); start a new run with --overwrite instead")
    return runtime


def _unit(cfg: dict[str, Any]) -> str:
    from resfu_med.networks.model_registry import spatial_dims_of

    return "volumes" if spatial_dims_of(cfg["model"]) == 3 else "slices"


def run(args: argparse.Namespace) -> int:
    """Run ``resfu-med train``; returns the exit status (errors are raised as ``ResfuMedError``)."""
    import torch

    from resfu_med.engine import distributed as ddp
    from resfu_med.engine.checkpoint import load_checkpoint
    from resfu_med.engine.config import DEFAULTS, merge_config, resolve_config
    from resfu_med.engine.device import resolve_device
    from resfu_med.engine.preparation import complete_config, prepare_run_dir
    from resfu_med.engine.trainer import Trainer

    args.output = getattr(args, "output", None)
    args.config = getattr(args, "config", None)
    overrides = flag_overrides(args)
    dataset = overrides.get("data", {}).get("dataset")
    if args.output is None and dataset is None:
        raise InputError("--output is required (or --dataset, for the default runs/<dataset>)")
    run_dir = Path(args.output if args.output is not None else f"runs/{dataset}")
    if args.resume and args.overwrite:
        raise InputError("--resume and --overwrite contradict each other; pick one")
    if args.resume and args.config:
        raise InputError("--config cannot be combined with --resume (the run's config is fixed)")
    merge_config(DEFAULTS, overrides, source="flags")  # fail fast on bad flag values

    device = resolve_device(overrides.get("device", "auto"), local_rank=0)
    dist = ddp.init_distributed(device.type)
    try:
        if dist.enabled and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
        cfg, runtime, err = None, None, None
        if dist.is_main:
            try:
                prepare_run_dir(run_dir, resume=args.resume, overwrite=args.overwrite, create=False)
                if args.resume:
                    saved = load_checkpoint(run_dir / "last.pt")["config"]
                    runtime = _resume_runtime(saved, overrides)
                else:
                    cfg = complete_config(resolve_config(dataset, args.config, overrides))
                    prepare_run_dir(run_dir, resume=False, overwrite=args.overwrite, create=True,
                                    inputs=[cfg["data"].get("root")])
            except Exception as e:  # re-raised below after telling the other ranks
                err = e
        if dist.enabled:
            import torch.distributed as tdist

            box = [None if err else (cfg, runtime)]
            tdist.broadcast_object_list(box, src=0)
            if box[0] is None:
                if err is not None:
                    raise err
                raise InputError("rank 0 failed to set up the run (see its message)")
            cfg, runtime = box[0]
        elif err is not None:
            raise err
        trainer = Trainer(cfg, run_dir, resume=args.resume, runtime=runtime, device=device, dist=dist,
                          progress=not args.no_progress)
        if dist.is_main:
            what = "resuming" if args.resume else "training"
            c = trainer.cfg
            print(f"resfu-med train: {what} {c['model']['name']} ({c['model'].get('upsampler')}) on "
                  f"{c['data']['dataset']} ({len(trainer.train_data)} {_unit(c)}, {c['data']['num_classes']} classes), "
                  f"{c['train']['epochs']} epochs x {trainer.iters_per_epoch} iterations, device {device}, "
                  f"{dist.world_size} process(es) -> {run_dir}", file=sys.stderr)
        summary = trainer.fit()
        if dist.is_main:
            _report(summary, trainer.cfg, run_dir)
    finally:
        ddp.destroy_distributed()
    return 0


def _report(summary: dict[str, Any], cfg: dict[str, Any], run_dir: Path) -> None:
    state = "finished" if summary["finished"] else f"stopped at iteration {summary['iteration']} (--resume continues)"
    print(f"resfu-med train: {state}; epoch {summary['epoch']}/{cfg['train']['epochs']}, "
          f"iteration {summary['iteration']}")
    last = summary["history"][-1] if summary["history"] else None
    if last:
        width = max(len(n) for n in last["dice"]) if last["dice"] else 5
        print(f"validation Dice at epoch {last['epoch']} (slice-wise prediction, volume Dice):")
        for name, value in last["dice"].items():
            print(f"  {name:<{width}}  {100 * value:6.2f}")
        print(f"  {'mean':<{width}}  {100 * last['mean_dice']:6.2f}")
    if summary["best_metric"] is not None:
        print(f"best mean Dice {100 * summary['best_metric']:.2f} -> {run_dir / 'best.pt'}")
    print(f"checkpoints: {run_dir / 'last.pt'}" + (f", {run_dir / 'best.pt'}" if (run_dir / "best.pt").exists() else ""))
