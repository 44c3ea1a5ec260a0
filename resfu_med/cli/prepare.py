"""Convert a raw dataset (Synapse/BTCV, ACDC, MSD) or the demo phantoms into the TransUNet training layout.

Writes ``train_npz/<case>_sliceZZZ.npz`` (training slices), ``test_vol_h5/<case>.npy.h5`` (evaluation volumes),
``lists/lists_<Name>/*.txt`` and a ``dataset.json`` recording sources, spacings, affines, labels, intensity spec and
split. Re-running skips finished cases (``--overwrite`` redoes them); every file is written atomically.

examples:
  resfu-med prepare --dataset synapse --data-root data/BTCV/RawData/Training --output data/Synapse
  resfu-med prepare --dataset synapse --data-root BTCV --output Synapse --split-file my_split.json
  resfu-med prepare --dataset acdc --data-root data/ACDC/database --output data/ACDC_prepared
  resfu-med prepare --dataset msd --data-root data/Task09_Spleen   # into the cache; train --data-root reuses it
  resfu-med prepare --dataset demo                  # generate + prepare the demo phantoms into the cache
  resfu-med prepare --dataset msd --data-root Task03_Liver --output Liver -np 8   # 8 cases at once

-np N prepares N cases at once, one per worker process (memory: N cases), byte-identical to -np 1. A bad case stops
the run with one line naming its file (cases already running finish; finished cases are kept and skipped on the
next run); --continue-on-error prepares all the others first and lists every failure at the end.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from resfu_med.cli._options import add_no_progress, add_output, dataset_help, deprecated_alias, positive

__all__ = ["COMMAND", "add_arguments", "run"]

COMMAND = "prepare"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``prepare`` options."""
    parser.add_argument("--dataset", required=True, metavar="NAME",
                        help=dataset_help("dataset (docs/datasets.md)"))
    parser.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                        help="raw release folder (BTCV with img/ and label/; ACDC database; MSD folder with dataset.json)")
    deprecated_alias(parser, "--raw-root", "--data-root", "data_root", type=Path)
    add_output(parser, "output folder; default: the cache $RESFU_MED_HOME/prepared/<dataset>-<hash of the raw path>, "
                       "which `train --data-root RAW` reuses", type=Path, old="--out")
    parser.add_argument("--split-file", type=Path, default=None,
                        help='JSON {"train": [cases], "test": [cases], ...} overriding the default split')
    parser.add_argument("--seed", type=int, default=None, help="demo: phantom seed (default the fixed demo seed); msd: split seed (default 1234)")
    parser.add_argument("--mri-norm", choices=["minmax", "zscore", "robust"], default=None,
                        help="per-volume MRI normalisation: robust = z-score of the non-zero voxels clipped to their "
                             "0.5-99.5 percentiles (default for msd MRI), minmax (default for acdc), zscore")
    parser.add_argument("--ct-window", type=float, nargs=2, default=[-125.0, 275.0], metavar=("A_MIN", "A_MAX"),
                        help="CT HU window clipped and scaled to [0, 1] (synapse, msd CT)")
    parser.add_argument("--overwrite", action="store_true", help="redo cases that are already prepared")
    parser.add_argument("-np", "--num-processes", type=positive, default=1, metavar="N",
                        help="cases prepared at once, one per worker process (nnU-Net's -np; default 1)")
    parser.add_argument("--continue-on-error", action="store_true",
                        help="after a bad case, prepare the others and list every failure at the end "
                             "(default: stop at the first)")
    add_no_progress(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``prepare``; returns 0. Raises :class:`InputError` for user problems (printed as one line)."""
    from resfu_med.data import prepare_dataset

    out = prepare_dataset(args.dataset, args.data_root, args.output, split_file=args.split_file, seed=args.seed,
                          ct_window=tuple(args.ct_window), mri_norm=args.mri_norm, overwrite=args.overwrite,
                          progress=not args.no_progress, num_processes=args.num_processes,
                          continue_on_error=args.continue_on_error)
    print(f"demo dataset ready: {out}" if args.dataset == "demo" else f"prepared {args.dataset}: {out}")
    return 0
