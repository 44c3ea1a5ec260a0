"""Evaluate a checkpoint on a dataset split: Dice and HD95 per class, TransUNet protocol and spacing-aware.

Each test volume is predicted slice by slice at the training size and zoomed back (SPEC 5), then scored per
foreground class with medpy in two reports: "TransUNet protocol (voxel units)" (comparable with the paper: HD95
without spacing, empty-mask rules (1, 0) / (0, 0)) and "spacing-aware (mm)" (HD95 in mm, empty-mask cases NaN and
counted). Both tables are printed and saved as metrics.json, metrics_transunet_voxel.csv and metrics_spacing_mm.csv.
A volume that fails is reported in one line and the others still run; the exit status is 1 if any failed.

examples:
  resfu-med evaluate --checkpoint runs/demo/best.pt --dataset demo
  resfu-med evaluate --checkpoint runs/synapse/best.pt --dataset synapse --data-root data/Synapse --save-predictions
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from resfu_med.cli._options import add_device, add_no_progress, add_output, add_sw_batch_size, deprecated_alias
from resfu_med.errors import CheckpointError, InputError
from resfu_med.outputs import output_folder

__all__ = ["COMMAND", "add_arguments", "run"]

COMMAND = "evaluate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``evaluate`` flags."""
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (best.pt / last.pt)")
    parser.add_argument("--dataset", default=None, help="synapse, acdc, msd or demo; default: the checkpoint's")
    parser.add_argument("--data-root", default=None,
                        help="dataset folder; default: the one recorded in the checkpoint (when --dataset is its dataset)")
    parser.add_argument("--split", default="test", help="evaluation split (test or val)")
    parser.add_argument("--class-names", nargs="+", default=None, metavar="NAME",
                        help="foreground class names 1..K-1 in label order for the tables (default: the names the "
                             "checkpoint was trained with via --class-names, else the dataset's)")
    add_output(parser, "folder for metrics.json and the CSVs; default: <checkpoint folder>/eval-<dataset>-<split>",
               old=None)
    parser.add_argument("--save-predictions", action="store_true",
                        help="also write predictions/<case>_pred.<ext> with the dataset's own label values")
    parser.add_argument("--output-format", choices=("nii.gz", "mha", "nrrd"), default="nii.gz",
                        help="format of --save-predictions files")
    parser.add_argument("--raw-labels", action="store_true",
                        help="--save-predictions with the raw release's label values (Synapse: BTCV numbering)")
    deprecated_alias(parser, "--save-nifti", "--save-predictions", "save_predictions", flag=True)
    add_sw_batch_size(parser)
    add_device(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace the results of an earlier evaluation")
    add_no_progress(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``resfu-med evaluate``; returns 0 when every volume was evaluated, 1 if any failed."""
    from resfu_med.data import dataset_info, get_dataset  # heavy imports only when the command runs
    from resfu_med.engine import inferer
    from resfu_med.engine.device import resolve_device
    from resfu_med.engine.evaluator import evaluate_model
    from resfu_med.metrics import format_table, report_paths, write_reports

    device = resolve_device(args.device)
    model, config = inferer.load_for_inference(args.checkpoint, device)
    data_cfg = dict(config.get("data") or {})
    name = args.dataset or data_cfg.get("dataset")
    if not name:
        raise InputError("--dataset: not given and the checkpoint's config names no dataset")
    if args.data_root is None and name == data_cfg.get("dataset") and data_cfg.get("root") and name != "demo":
        args.data_root = str(data_cfg["root"])
        if not Path(args.data_root).exists():
            raise InputError(f"the checkpoint's data root {args.data_root} does not exist (moved or deleted?); "
                             "pass --data-root")
        print(f"resfu-med evaluate: --data-root not given; using the checkpoint's {args.data_root}", file=sys.stderr)
    try:
        info = dataset_info(name, args.data_root)
    except InputError:
        raise
    except ValueError as err:  # unknown dataset name: the message lists the valid ones
        raise InputError(f"--dataset: {err}") from None
    if int(info.num_classes) != int(data_cfg["num_classes"]):
        raise CheckpointError(
            f"checkpoint {args.checkpoint}: trained for {data_cfg['num_classes']} classes, "
            f"dataset {name!r} has {info.num_classes}"
        )
    # names given at training (--class-names, a copy labelled in another order) stay unless overridden here
    names = args.class_names or data_cfg.get("class_names") or list(info.label_names)
    if len(names) != int(data_cfg["num_classes"]) - 1:
        raise InputError(f"--class-names: {len(names)} name(s) given, the checkpoint has "
                         f"{int(data_cfg['num_classes']) - 1} foreground classes")
    data_cfg["label_names"] = list(names)
    if getattr(info, "ignore_index", None) is not None:  # nnU-Net "ignore" voxels are not scored
        data_cfg.setdefault("ignore_index", int(info.ignore_index))
    config = {**config, "data": data_cfg}
    out = Path(args.output) if args.output else Path(args.checkpoint).resolve().parent / f"eval-{name}-{args.split}"
    existing = [p for p in report_paths(out).values() if p.exists()]
    if existing and not args.overwrite:
        raise InputError(f"{existing[0]} exists; pass --overwrite to replace it or choose another --output")
    with output_folder(out, COMMAND, inputs=[info.root or args.data_root], overwrite=args.overwrite):
        dataset = get_dataset(name, args.data_root, args.split)
        if len(dataset) == 0:
            raise InputError(f"dataset {name!r} split {args.split!r}: no volumes found")
        result = evaluate_model(
            model, dataset, config, device=device, batch_size=args.sw_batch_size,
            save_dir=(out / "predictions") if args.save_predictions else None, progress=not args.no_progress,
            save_suffix=f".{args.output_format}", raw_labels=args.raw_labels,
        )
        meta = {
            "checkpoint": str(args.checkpoint), "dataset": name, "data_root": str(info.root) if info.root else None,
            "split": args.split, "img_size": data_cfg.get("img_size"), "model": config.get("model"),
            "failures": [{"case": c, "error": m} for c, m in result.failures], "no_spacing": result.no_spacing,
        }
        paths = write_reports(out, [result.transunet, result.spacing], meta)
    print(format_table(result.transunet))
    print()
    if result.spacing.cases:
        print(format_table(result.spacing))
    else:
        print("spacing-aware (mm): no case has a known voxel spacing; report empty")
    if result.no_spacing and result.spacing.cases:
        print(f"spacing-aware (mm): {len(result.no_spacing)} case(s) without voxel spacing left out")
    print(f"\nresults: {', '.join(str(p) for p in paths.values())}")
    if result.failures:
        print(f"resfu-med evaluate: {len(result.failures)} case(s) failed: "
              f"{', '.join(c for c, _ in result.failures)}", file=sys.stderr)
        return 1
    return 0
