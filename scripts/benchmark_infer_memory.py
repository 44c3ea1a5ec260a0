"""Peak memory of ``resfu-med infer`` on a large CT volume (issue 10: bounded memory, no full-volume float64 copies).

Writes a synthetic int16 CT volume (default 512×512×300, scaled with scl_slope so a naive reader would make a float64
copy), then segments it in a fresh subprocess with a tiny stand-in network (the pipeline's memory, not the network's,
is what is measured) and prints peak RSS (``ru_maxrss``) next to the sizes of the volume in float32 and float64.

    python scripts/benchmark_infer_memory.py                       # 2D model, 512x512x300
    python scripts/benchmark_infer_memory.py --dims 3 --roi-size 96     # 3D model, streamed 3D sliding windows
    python scripts/benchmark_infer_memory.py --dims 3 --net conv1x1 --shape 512 512 100   # peak does not grow with Z
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[5]))
from monai.networks.nets import BasicUNet
from resfu_med.engine.predictor import InferOptions, infer_file
dims, roi = int(sys.argv[3]), int(sys.argv[4])
if sys.argv[6] == "conv1x1":  # no compute to speak of: measures the pipeline alone
    net = (torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d)(1, 9, 1).eval()
else:
    net = BasicUNet(spatial_dims=dims, in_channels=1, out_channels=9, features=(4, 4, 4, 4, 4, 4)).eval()
cfg = {"model": {"name": "unet3d" if dims == 3 else "unet", "kwargs": {"spatial_dims": dims}},
       "data": {"num_classes": 9, "img_size": 224, "roi_size": [roi] * 3,
                "intensity": {"kind": "ct", "a_min": -125, "a_max": 275}}}
try:
    from resfu_med.data import make_intensity_transform  # noqa: F401
except ImportError:  # data layer absent: same CT window by hand
    import resfu_med.engine.predictor as inf
    inf._intensity = lambda c: (lambda a: (a.clip(-125, 275) + 125) / 400, True)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.time()
infer_file(sys.argv[1], sys.argv[2], net, cfg, InferOptions(batch_size=8, overwrite=True, progress=False))
print(json.dumps({"seconds": time.time() - t, "base_rss_mib": base, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300], help="X Y Z")
    ap.add_argument("--dims", type=int, choices=[2, 3], default=2, help="2D (slice-wise) or 3D model")
    ap.add_argument("--roi-size", type=int, default=96, help="3D window size (resfu-med infer --roi-size)")
    ap.add_argument("--roi", dest="roi_size", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # the earlier spelling, one release
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--net", choices=["tiny-unet", "conv1x1"], default="tiny-unet",
                    help="stand-in network: a tiny BasicUNet, or a 1x1 convolution (pipeline memory/time only)")
    args = ap.parse_args()
    import nibabel as nib

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "ct.nii.gz"
        rng = np.random.default_rng(0)
        data = rng.integers(-1000, 1500, size=tuple(args.shape), dtype=np.int16)
        img = nib.Nifti1Image(data, np.diag([0.7, 0.7, 2.5, 1.0]))
        img.header.set_slope_inter(1.0, -0.0)
        img.set_data_dtype(np.int16)
        nib.save(img, str(src))
        del data, img
        t = time.time()
        proc = subprocess.run([sys.executable, "-c", CHILD, str(src), tmp, str(args.dims), str(args.roi_size),
                               str(args.threads), args.net], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    n = int(np.prod(args.shape))
    print(f"volume {tuple(args.shape)} ({args.dims}D model, {args.net}, roi {args.roi_size}): peak RSS {res['peak_rss_mib']:.0f} MiB "
          f"({res['peak_rss_mib'] - res['base_rss_mib']:.0f} MiB above the {res['base_rss_mib']:.0f} MiB of the "
          f"loaded libraries and model), "
          f"{res['seconds']:.1f} s inference+I/O; float32 volume {n * 4 / 2**20:.0f} MiB, "
          f"float64 volume {n * 8 / 2**20:.0f} MiB (wall {time.time() - t:.1f} s)")


if __name__ == "__main__":
    main()
