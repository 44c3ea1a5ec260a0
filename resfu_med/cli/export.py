"""Export the network of a trained checkpoint to TorchScript or ONNX.

The exported model is checked against the PyTorch model on a test input of the inferer's patch size and the largest
difference is printed. TorchScript is scripted (any input size) or, if the network cannot be scripted, traced at the
patch size; ONNX has a fixed patch size and a dynamic batch axis and needs `pip install resfu-med[onnx]`.

examples:
  resfu-med export --checkpoint runs/demo/best.pt --format torchscript --output model.ts
  resfu-med export --checkpoint runs/demo/best.pt --format onnx --output model.onnx --roi-size 224 224
"""

from __future__ import annotations

import argparse

from resfu_med.cli._options import add_output

COMMAND = "export"

__all__ = ["COMMAND", "add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``resfu-med export``."""
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by resfu-med train")
    parser.add_argument("--format", dest="fmt", choices=("torchscript", "onnx"), default="torchscript",
                        help="export format")
    add_output(parser, "file to write", required=True, old="--out")
    parser.add_argument("--roi-size", type=int, nargs="+", default=None,
                        help="spatial size of the test input and ONNX graph; default: the training img_size")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")


def run(args: argparse.Namespace) -> int:
    """Export, verify and report."""
    from resfu_med.bundle.export import export_model
    info = export_model(args.checkpoint, args.output, args.fmt, args.roi_size, overwrite=args.overwrite)
    print(f"{args.fmt} ({info['method']}) written to {info['path']}; max |exported - pytorch| = {info['max_abs_diff']:.3g}")
    return 0
