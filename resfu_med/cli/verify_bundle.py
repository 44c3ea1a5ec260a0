"""Check a MONAI bundle folder: required files, metadata against the shipped schema, weights against network_def.

Offline counterpart of `python -m monai.bundle verify_metadata` (no schema download) that also rebuilds the network
with MONAI's ConfigParser and loads models/model.pt into it.

examples:
  resfu-med verify-bundle bundles/demo_unet_resfu
"""

from __future__ import annotations

import argparse

COMMAND = "verify-bundle"

__all__ = ["COMMAND", "add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``resfu-med verify-bundle``."""
    parser.add_argument("bundle", help="bundle folder (holds configs/ and models/)")


def run(args: argparse.Namespace) -> int:
    """Verify and report."""
    from resfu_med.bundle import verify_bundle

    v = verify_bundle(args.bundle)
    print(f"{args.bundle}: valid bundle '{v['name']}' {v['version']} ({v['network']}, {v['parameters']} parameters)")
    return 0
