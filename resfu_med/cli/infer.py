"""Segment images (NIfTI, MetaImage, NRRD, DICOM series) with a trained checkpoint (file or folder in, folder out).

Every input gets <name>_seg.<ext> in the output folder, in the input's format (a DICOM series: .nii.gz) unless
--output-format says otherwise: the dataset's own label values (see docs/evaluation.md) in the input's voxel grid and
geometry (NIfTI: affine, qform/sform codes, header). Entries of an input folder that are not an image are reported,
one line each, and counted. 2D models run slice by slice at their training size (zoomed, as trained, then zoomed back); 3D models
run Gaussian-blended 3D sliding windows. A file that fails is reported in one line and the others still run; the
exit status is 1 if any failed.

examples:
  resfu-med infer -i scans/ -o segs/ --checkpoint runs/demo/best.pt
  resfu-med infer -i case01.nii.gz -o segs/ --checkpoint best.pt --tta --save-probabilities
  resfu-med infer -i dicom/series1/ -o segs/ --checkpoint best.pt --output-format nrrd
  resfu-med infer -i scans/ -o segs/ --checkpoint best.pt --continue-prediction   # resume a folder
  resfu-med infer -i scans/ -o segs/ --checkpoint best.pt --shard 0/4   # job 1 of 4 (scheduler array jobs)
  torchrun --nproc_per_node 4 -m resfu_med infer -i scans/ -o segs/ --checkpoint best.pt   # one shard per rank

A folder can be split into N disjoint shards (--shard I/N, I = 0..N-1; under torchrun each rank takes shard
RANK/WORLD_SIZE): the union of the shards' outputs equals a single-process run, file for file. A sharded run skips
inputs whose outputs exist, so a re-started shard resumes.
"""

from __future__ import annotations

import argparse
import sys

from resfu_med.cli._options import add_device, add_no_progress, add_output, add_sw_batch_size, deprecated_alias, fraction, positive


__all__ = ["COMMAND", "add_arguments", "run"]

COMMAND = "infer"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``infer`` flags (nnU-Net-like names)."""
    parser.add_argument("-i", "--input", required=True,
                        help="an image (.nii, .nii.gz, .mha, .mhd, .nrrd, .nhdr), a folder of them, or a folder of "
                             "one DICOM series")
    parser.add_argument("--output-format", choices=("nii.gz", "mha", "nrrd"), default=None,
                        help="format of the outputs; default: the input's (a DICOM series: nii.gz)")
    parser.add_argument("--raw-labels", action="store_true",
                        help="write the raw release's label values (Synapse: BTCV numbering) instead of the "
                             "dataset's default (Synapse: TransUNet's 0..8; MSD: its own values already)")
    add_output(parser, "output folder (created)", required=True, old=None)
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (best.pt / last.pt)")
    parser.add_argument("--roi-size", type=positive, nargs="+", default=None, metavar="N",
                        help="sliding-window size (1 value, or 2 for 2D / 3 for 3D models); "
                             "default: the checkpoint's img_size (2D) or roi_size (3D)")
    deprecated_alias(parser, "--roi", "--roi-size", "roi_size", type=positive, nargs="+")
    parser.add_argument("--overlap", type=fraction, default=0.25, help="window overlap fraction in [0, 1)")
    add_sw_batch_size(parser)
    add_device(parser)
    parser.add_argument("--tta", action="store_true", help="mirror test-time augmentation (4 flips 2D, 8 flips 3D)")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write <name>_prob.<ext> (float32, one value per class)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--continue-prediction", action="store_true", help="skip inputs whose outputs exist")
    parser.add_argument("--no-resample", action="store_true",
                        help="2D models: run windows on the native slice grid instead of zooming slices to img_size")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="segment only shard I of N of a folder (0-based; default: the torchrun rank's shard, "
                             "else all); finished outputs are skipped")
    add_no_progress(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``resfu-med infer``; returns 0 if every file was segmented (or skipped), 1 if any failed."""
    from resfu_med.engine.predictor import run_inference  # heavy (torch, MONAI): imported only when the command runs

    files, summary = run_inference(
        args.input, args.output, args.checkpoint, args.roi_size, args.device, shard=args.shard, overlap=args.overlap,
        batch_size=args.sw_batch_size, tta=args.tta, save_probabilities=args.save_probabilities,
        overwrite=args.overwrite, continue_prediction=args.continue_prediction, resample=not args.no_resample,
        progress=not args.no_progress, output_format=args.output_format, raw_labels=args.raw_labels,
    )
    print(f"resfu-med infer: {len(files)} input(s): {len(files) - len(summary.failed) - len(summary.skipped)} "
          f"segmented, {len(summary.skipped)} skipped, {len(summary.failed)} failed, "
          f"{len(summary.unsupported)} unsupported file(s) -> {args.output}", file=sys.stderr)
    return 1 if summary.failed else 0
