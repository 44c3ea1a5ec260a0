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
"""

from __future__ import annotations

import argparse
from pathlib import Path

from resfu_med.cli._options import add_no_progress, add_output, deprecated_alias
from resfu_med.errors import InputError
from resfu_med.outputs import output_folder

__all__ = ["COMMAND", "add_arguments", "run"]

COMMAND = "prepare"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``prepare`` options."""
    parser.add_argument("--dataset", required=True, choices=["synapse", "acdc", "msd", "demo"], help="dataset kind")
    parser.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                        help="raw release folder (BTCV with img/ and label/; ACDC database; MSD folder with dataset.json)")
    deprecated_alias(parser, "--raw-root", "--data-root", "data_root", type=Path)
    add_output(parser, "output folder; default: the cache $RESFU_MED_HOME/prepared/<dataset>-<hash of the raw path>, "
                       "which `train --data-root RAW` reuses", type=Path, old="--out")
    parser.add_argument("--split-file", type=Path, default=None,
                        help='JSON {"train": [cases], "test": [cases], ...} overriding the default split')
    parser.add_argument("--seed", type=int, default=None, help="demo: phantom seed (default the fixed demo seed); msd: split seed (default 1234)")
    parser.add_argument("--mri-norm", choices=["minmax", "zscore"], default="minmax", help="per-volume MRI normalisation (acdc, msd MRI)")
    parser.add_argument("--ct-window", type=float, nargs=2, default=[-125.0, 275.0], metavar=("A_MIN", "A_MAX"),
                        help="CT HU window clipped and scaled to [0, 1] (synapse, msd CT)")
    parser.add_argument("--overwrite", action="store_true", help="redo cases that are already prepared")
    add_no_progress(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``prepare``; returns 0. Raises :class:`InputError` for user problems (printed as one line)."""
    from resfu_med import data

    progress = not args.no_progress
    ct = {"kind": "ct", "a_min": args.ct_window[0], "a_max": args.ct_window[1]}
    if args.ct_window[1] <= args.ct_window[0]:
        raise InputError(f"--ct-window: A_MAX must exceed A_MIN, got {args.ct_window}")
    if args.dataset == "demo":
        if args.output is None and args.seed is None:
            out = data.ensure_demo_data(progress=progress)
        else:
            if args.output is None:
                raise InputError("--output is required with --seed for the demo")
            with output_folder(args.output, COMMAND, overwrite=args.overwrite):
                raw = args.output / "raw"
                seed = data.demo.DEMO_SEED if args.seed is None else args.seed
                if args.overwrite or not (raw / "dataset.json").is_file():
                    data.make_demo_dataset(raw, seed=seed)
                out = data.prepare_synapse(raw, args.output / "prepared", name="demo", overwrite=args.overwrite,
                                           progress=progress)
        print(f"demo dataset ready: {out}")
        return 0
    if args.data_root is None:
        raise InputError(f"--data-root is required for --dataset {args.dataset}")
    if not Path(args.data_root).is_dir():
        raise InputError(f"--data-root {args.data_root}: folder not found")
    out = args.output if args.output is not None else data.prepared_cache_dir(args.dataset, args.data_root)
    # The raw release is read-only to us: --output never is, lies inside or contains it (a dataset.json there would
    # be overwritten); a foreign non-empty folder needs --overwrite; the cache folder is ours.
    with output_folder(out, COMMAND, inputs=[args.data_root], overwrite=args.overwrite, reuse=args.output is None):
        out = _prepare(args, data, out, ct, progress)
    print(f"prepared {args.dataset}: {out}")
    return 0


def _prepare(args: argparse.Namespace, data, out: Path, ct: dict, progress: bool) -> Path:
    if args.dataset == "synapse":
        out = data.prepare_synapse(args.data_root, out, split_file=args.split_file, intensity=ct,
                                   overwrite=args.overwrite, progress=progress)  # fmt: skip
    elif args.dataset == "acdc":
        out = data.prepare_acdc(args.data_root, out, split_file=args.split_file, mode=args.mri_norm,
                                overwrite=args.overwrite, progress=progress)  # fmt: skip
    else:
        out = data.prepare_msd(args.data_root, out, split_file=args.split_file, seed=1234 if args.seed is None else args.seed,
                               ct_window=tuple(args.ct_window), mri_mode=args.mri_norm, overwrite=args.overwrite,
                               progress=progress)  # fmt: skip
    return out
