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

from resfu_med.cli._options import add_no_progress, name_lines

__all__ = ["COMMAND", "add_arguments", "run", "flag_overrides"]

COMMAND = "train"

#: argparse group of each config section's flags
_GROUPS = {"data": "data and model", "model": "data and model", "train": "schedule", "": "run"}


def _default(key: str) -> str:
    """``default: X``, then ``; NAME: Y`` for each dataset preset and ``--preset`` recipe that sets another value of a
    dotted config key (read from PRESETS and RECIPES, so the help cannot disagree with them)."""
    from resfu_med.engine.config import OPTIONS, PRESETS, RECIPES, flatten

    paper = OPTIONS[key].default
    shown = "null" if paper is None else paper
    layers = [(name, layer) for name, layer in PRESETS.items()]
    layers += [(f"--preset {name}", layer) for name, layer in RECIPES.items()]
    others = [(name, flatten(layer).get(key)) for name, layer in layers]
    return f"default: {shown}" + "".join(f"; {name}: {value}" for name, value in others
                                         if value is not None and value != paper)


def _help(opt) -> str:
    """A flag's help from its schema option: the text, every accepted value with one line each, the default."""
    text = _default(opt.key)
    default = f" ({text})" if opt.default not in (None, False) or ";" in text else ""
    if opt.described is not None:
        return f"{opt.help}:\n{name_lines(opt.described())}\n{default.strip()}"
    return opt.help + default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` options: one flag per schema option that declares one (absent flags leave the config
    untouched, hence ``SUPPRESS`` defaults), then the command's own options."""
    from resfu_med.engine.config import OPTIONS, RECIPES, recipe_summary

    s = argparse.SUPPRESS
    groups = {title: parser.add_argument_group(title) for title in dict.fromkeys(_GROUPS.values())}
    for key, opt in OPTIONS.items():
        if opt.flag is None:
            continue
        group = groups[_GROUPS[key.split(".")[0] if "." in key else ""]]
        kw = _flag_type(opt)
        group.add_argument(opt.flag, dest=_dest(opt), default=s, help=kw.pop("help", None) or _help(opt), **kw)
    g = groups["data and model"]
    g.add_argument("--config", default=s, metavar="FILE", help="YAML/JSON file of config overrides (docs/training.md)")
    g.add_argument("--preset", default=s, metavar="NAME",
                   help="training recipe on top of the dataset's (docs/training.md):\n"
                        + name_lines({n: recipe_summary(n) for n in RECIPES}))
    g = groups["run"]
    g.add_argument("-o", "--output", default=s, metavar="DIR", help="run folder (default: runs/<dataset>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --output from its last.pt")
    g.add_argument("--overwrite", action="store_true", help="replace the run files of an existing --output folder")
    add_no_progress(g)


def _flag_type(opt) -> dict[str, Any]:
    """argparse arguments of an option's flag: its declared ones, else a ``type`` from the option's types."""
    kw = dict(opt.flag_kwargs)
    if "action" in kw or "type" in kw:
        return kw
    for t in (int, float):
        if t in opt.types and bool not in opt.types and str not in opt.types:
            kw["type"] = float if float in opt.types else int
            break
    return kw


def _dest(opt) -> str:
    """The flag's argparse destination (``--data-root`` → ``data_root``), as every other command spells it."""
    return opt.flag.lstrip("-").replace("-", "_")


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The nested config overrides given by flags (only flags actually passed)."""
    from resfu_med.engine.config import OPTIONS

    out: dict[str, Any] = {}
    for key, opt in OPTIONS.items():
        if opt.flag is None or not hasattr(args, _dest(opt)):
            continue
        section, _, leaf = key.rpartition(".")
        (out.setdefault(section, {}) if section else out)[leaf] = getattr(args, _dest(opt))
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
