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
from pathlib import Path
from typing import Any

from resfu_med.cli._options import add_no_progress

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
    "fg_oversample": "train.fg_oversample",
}


def _default(key: str) -> str:
    """``default: X`` (and ``; demo: Y`` where the demo preset differs) for a dotted config key."""
    from resfu_med.engine.config import DEFAULTS, PRESETS, flatten

    paper, demo = flatten(DEFAULTS).get(key), flatten(PRESETS["demo"]).get(key)
    return f"default: {paper}" + (f"; demo: {demo}" if demo is not None and demo != paper else "")


def _names(entries: dict[str, str], default_key: str | None = None) -> str:
    """One help line per accepted name (``name  description``), generated from a registry so it cannot go stale."""
    width = max(len(n) for n in entries)
    lines = "\n".join(f"  {n:<{width}}  {d}" for n, d in entries.items())
    return lines + (f"\n({_default(default_key)})" if default_key else "")


def _choices_help() -> dict[str, str]:
    """The help of the options taking a registry name: every accepted name with one line on what it is."""
    from resfu_med.data.registry import DATASETS
    from resfu_med.engine.config import AMP_MODES, RECIPES, recipe_summary
    from resfu_med.networks.model_registry import MODELS
    from resfu_med.networks.upsamplers import UPSAMPLERS

    return {
        "dataset": "dataset (docs/datasets.md):\n" + _names({n: e.description for n, e in DATASETS.items()}),
        "model": "network (docs/networks.md):\n" + _names({n: s.description for n, s in MODELS.items()}, "model.name"),
        "upsampler": "decoder upsampler (docs/networks.md):\n"
                     + _names({n: e.description for n, e in UPSAMPLERS.items()}, "model.upsampler"),
        "preset": "training recipe on top of the dataset's (docs/training.md):\n"
                  + _names({n: recipe_summary(n) for n in RECIPES}),
        "amp": "mixed precision:\n" + _names(dict(AMP_MODES), "amp"),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` options (absent flags leave the config untouched, hence ``SUPPRESS`` defaults)."""
    s = argparse.SUPPRESS
    names = _choices_help()
    g = parser.add_argument_group("data and model")
    g.add_argument("--dataset", default=s, metavar="NAME", help=names["dataset"])
    g.add_argument("--data-root", default=s, metavar="DIR", help="prepared dataset folder (not needed for demo)")
    g.add_argument("--model", default=s, metavar="NAME", help=names["model"])
    g.add_argument("--upsampler", default=s, metavar="NAME", help=names["upsampler"])
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
    g.add_argument("--preset", default=s, metavar="NAME", help=names["preset"])
    g = parser.add_argument_group("schedule")
    g.add_argument("--epochs", type=int, default=s, metavar="N", help=f"epochs ({_default('train.epochs')})")
    g.add_argument("--max-iters", type=int, default=s, metavar="N",
                   help="stop after N iterations in total, saving last.pt (the lr schedule still spans --epochs)")
    g.add_argument("--batch-size", type=int, default=s, metavar="N", help=f"global batch size ({_default('train.batch_size')})")
    g.add_argument("--lr", type=float, default=s, metavar="LR", help=f"base SGD learning rate ({_default('train.lr')})")
    g.add_argument("--seed", type=int, default=s, metavar="N", help=f"random seed ({_default('seed')})")
    g.add_argument("--deterministic", action="store_true", default=s,
                   help="deterministic algorithms (bit-identical reruns on CPU; slower on GPU)")
    g.add_argument("--fg-oversample", type=float, default=s, metavar="P",
                   help="share of every batch drawn from slices holding a foreground class, the class drawn uniformly "
                        "(default: msd 0.33, quick 0.5, others uniform sampling)")
    g.add_argument("--no-eval", action="store_true", default=s,
                   help="skip validation during training (best.pt is then the final model)")
    g.add_argument("--checkpoint-every", type=int, default=s, metavar="N",
                   help=f"also save last.pt every N iterations, 0: at epoch ends only ({_default('train.checkpoint_every')})")
    g = parser.add_argument_group("run")
    g.add_argument("-o", "--output", default=s, metavar="DIR", help="run folder (default: runs/<dataset>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --output from its last.pt")
    g.add_argument("--overwrite", action="store_true", help="replace the run files of an existing --output folder")
    g.add_argument("--amp", default=s, metavar="MODE", help=names["amp"])
    g.add_argument("--device", default=s, metavar="DEV", help=f"auto | cpu | cuda | cuda:N ({_default('device')})")
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


def run(args: argparse.Namespace) -> int:
    """Run ``resfu-med train``; returns the exit status (errors are raised as ``ResfuMedError``)."""
    from resfu_med.engine.train_run import run_training

    done = run_training(flag_overrides(args), getattr(args, "output", None), getattr(args, "config", None),
                        resume=args.resume, preset=getattr(args, "preset", None), overwrite=args.overwrite,
                        progress=not args.no_progress)
    if done is not None:  # the main process reports
        _report(*done)
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
