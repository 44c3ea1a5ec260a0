"""Export a trained checkpoint as a MONAI bundle (configs, weights, TorchScript, README, LICENSE).

The bundle runs with MONAI's own tools, no resfu-med command needed (resfu-med must be installed for network_def):

  cd BUNDLE && python -m monai.bundle run --config_file configs/inference.json \\
      --dataset_dir scans/ --output_dir segs/

examples:
  resfu-med export-bundle --checkpoint runs/demo/best.pt --output bundles/demo_transunet
  resfu-med export-bundle --checkpoint runs/demo/best.pt --output bundles/demo --onnx --metrics report.json
"""

from __future__ import annotations

import argparse

from resfu_med.cli._options import add_output, add_sw_batch_size, deprecated_alias

COMMAND = "export-bundle"

__all__ = ["COMMAND", "add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``resfu-med export-bundle``."""
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by resfu-med train")
    add_output(parser, "bundle folder to write", required=True, old="--out")
    parser.add_argument("--name", default=None, help="bundle name; default: the folder's name")
    parser.add_argument("--bundle-version", default="0.1.0", help="bundle version in metadata.json")
    deprecated_alias(parser, "--version", "--bundle-version", "bundle_version")
    parser.add_argument("--roi-size", type=int, nargs="+", default=None,
                        help="sliding-window size; default: as resfu-med infer (img_size for 2D, data.roi_size for 3D)")
    parser.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap (as resfu-med infer)")
    parser.add_argument("--mode", choices=("gaussian", "constant"), default="gaussian", help="window blending")
    add_sw_batch_size(parser, old_batch_size=False)
    parser.add_argument("--no-resample", action="store_true",
                        help="2D models: run windows on the native slice grid (as resfu-med infer --no-resample) "
                             "instead of zooming slices to the training size")
    parser.add_argument("--metrics", default=None,
                        help="metrics.json of resfu-med evaluate (or a JSON object of name: number) for the "
                             "metadata's eval_metrics and the README; "
                             "default: the checkpoint's best validation metric")
    parser.add_argument("--no-torchscript", action="store_true", help="do not write models/model.ts")
    parser.add_argument("--onnx", action="store_true", help="also write models/model.onnx (needs onnx, onnxruntime)")
    parser.add_argument("--overwrite", action="store_true", help="replace a bundle already in --output")
    parser.add_argument("--raw-labels", action="store_true",
                        help="the bundle writes the raw release's label values (Synapse: BTCV numbering), as "
                             "resfu-med infer --raw-labels")


def run(args: argparse.Namespace) -> int:
    """Write the bundle and print its folder."""
    from resfu_med.bundle import export_bundle

    out = export_bundle(
        args.checkpoint,
        args.output,
        name=args.name,
        version=args.bundle_version,
        roi_size=args.roi_size,
        overlap=args.overlap,
        mode=args.mode,
        sw_batch_size=args.sw_batch_size,
        resample=not args.no_resample,
        metrics=args.metrics,
        torchscript=not args.no_torchscript,
        onnx=args.onnx,
        overwrite=args.overwrite,
        raw_labels=args.raw_labels,
    )
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    print(f"bundle written to {out}: {', '.join(files)}")
    return 0
