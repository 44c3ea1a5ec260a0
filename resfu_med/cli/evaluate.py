"""Evaluate a checkpoint on a dataset split: Dice and HD95 per class, TransUNet protocol and spacing-aware.

Each test volume is predicted slice by slice at the training size and zoomed back (docs/evaluation.md), then scored per
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

from resfu_med.cli._options import (
    add_device,
    add_no_progress,
    add_output,
    add_sw_batch_size,
    dataset_help,
    deprecated_alias,
)

__all__ = ["COMMAND", "add_arguments", "run"]

COMMAND = "evaluate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``evaluate`` flags."""
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (best.pt / last.pt)")
    parser.add_argument("--dataset", default=None, metavar="NAME",
                        help=dataset_help("dataset (default: the checkpoint's)"))
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
    from resfu_med.engine.evaluator import run_evaluation  # heavy imports only when the command runs
    from resfu_med.metrics import format_table

    result, paths = run_evaluation(
        args.checkpoint, args.dataset, args.data_root, args.split, args.output, args.class_names,
        args.save_predictions, args.sw_batch_size, args.device, args.overwrite, progress=not args.no_progress,
        output_format=args.output_format, raw_labels=args.raw_labels,
    )
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
